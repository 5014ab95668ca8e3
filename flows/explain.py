"""``firstmile explain USER_ID``: a user's current decision and why, in plain lines.

Reads what the job keeps (the profile in Redis, the newest signed model snapshot, the
path mapping, rules and experiments) and re-derives the reasons: the segment's label and
description and how far the user is from each segment, the churn risk with the features
that drove it, the user's experiment arms, which path rule matched (and which did not
before it), the triggers sent last, and how each trigger rule reads the user now.
"""

from __future__ import annotations

import math
from typing import Any

from firstmile.online_models.scoring import Scorer
from firstmile.online_models.snapshot import ModelSnapshot
from firstmile.operators.conditions import evaluate_condition, get_path
from firstmile.operators.experiments import Experiments
from firstmile.operators.paths import PathMap
from firstmile.operators.rules import RuleBook


def explain(
    profile: dict[str, Any],
    snapshot: ModelSnapshot | None,
    paths: PathMap,
    rules: RuleBook | None = None,
    experiments: Experiments | None = None,
) -> list[str]:
    vector: dict[str, float] = profile["features"]
    lines = [
        f"user {profile['user_id']}: profile seq {profile['seq']}, as of {profile['as_of']}, "
        f"{profile['events_total']} events, engagement {profile['engagement']}",
    ]
    segments = snapshot.segments if snapshot else None
    lines.append(f"segment {profile['segment']} ({profile['segment_label']})")
    if segments is not None:
        z = segments.scaler.z(vector, segments.features)
        for segment in sorted(segments.segments, key=lambda s: math.dist(z, s.center)):
            mark = "*" if segment.id == profile["segment"] else " "
            lines.append(
                f"  {mark} {segment.id} {segment.label!r}: distance "
                f"{math.dist(z, segment.center):.2f} ({segment.description})"
            )
        lines.append(f"  model {segments.version}; a user moves only when clearly closer")
    else:
        lines.append("  no segment model published yet")
    risk, version, top = Scorer(snapshot).churn(vector)
    lines.append(
        f"churn risk {profile['churn_risk']} ({profile['churn_band']}); now {risk:.4f} "
        f"from {version}" + (" (prior: too few matured labels)" if version == "prior" else "")
    )
    for item in top:
        lines.append(f"  {item['name']} = {vector.get(item['name'])}: {item['weight']:+.4f}")
    attributes = {
        **vector,
        "user_id": profile["user_id"],
        "segment": profile["segment"],
        "segment_label": profile["segment_label"],
        "churn_band": profile["churn_band"],
        "churn_risk": profile["churn_risk"],
        "churn_rank": profile.get("churn_rank"),  # (a profile written before it: none)
        "path": profile["onboarding_path"],
        "country": profile["country"],
        "device": profile["device"],
        "trait": profile["traits"],
        "arms": profile.get("experiment_arms", {}),
    }
    arms: dict[str, str] = attributes["arms"]
    imposed = experiments.path(arms) if experiments is not None else None
    for key, arm in arms.items():
        lines.append(f"experiment {key}: arm {arm} (sticky since signup)")
    lines.append(f"onboarding path {profile['onboarding_path']}")
    chosen = profile.get("path_choices") or {}
    learned = next((c for c in chosen.values() if c["policy"] in ("learned", "deferred")), None)
    if imposed is None and learned is not None:
        lines.append(
            f"  chosen by the learned policy at the first decision point (propensity "
            f"{learned['propensity']:.3f}): {learned['path']}"
            + (
                ", the rules' choice: the rules adapt it since"
                if learned["policy"] == "deferred"
                else ""
            )
        )
        policy = snapshot.policy if snapshot else None
        if policy is not None:
            values = policy.values(vector, paths.choose(attributes))
            for path, value in sorted(values.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {path}: estimated activation {value:.1%} ({policy.version})")
    elif imposed is not None:
        lines.append(f"  imposed by the experiment arm (the mapping is not consulted): {imposed}")
    else:
        for i, (path, condition) in enumerate(paths.rules, start=1):
            matched = evaluate_condition(condition, attributes)
            verdict = "matches" if matched else "no"
            lines.append(f"  paths[{i}] {path}: {verdict} {dict(condition)}")
            if matched:
                break
        else:
            lines.append(f"  no rule matched: default {paths.default}")
    triggers = profile.get("last_triggers", [])
    lines.append(f"last triggers: {len(triggers) or 'none'}")
    for trigger in triggers:
        lines.append(f"  {trigger['at']} {trigger['rule_id']} -> {trigger['action']}")
    if rules is not None:
        lines.append("trigger rules now (the highest priority that holds wins per trigger):")
        for rule in sorted(rules.rules, key=lambda r: r.precedence):
            holds = evaluate_condition(rule.condition, attributes)
            reads = ", ".join(f"{n}={get_path(attributes, n)}" for n in rule.reads) or "always"
            lines.append(
                f"  {rule.id} (priority {rule.priority}, on {', '.join(rule.triggers)}): "
                f"{'holds' if holds else 'does not hold'} ({reads}) -> {rule.action}"
            )
    return lines
