"""``firstmile explain USER_ID``: a user's current decision and why, in plain lines.

Reads what the job keeps (the profile in Redis, the newest signed model snapshot, the
path mapping) and re-derives the reasons: the segment's label and description and how
far the user is from each segment, the churn risk with the features that drove it, and
which path rule matched (and which did not before it).
"""

from __future__ import annotations

import math
from typing import Any

from online_models.scoring import Scorer
from online_models.snapshot import ModelSnapshot
from operators.conditions import evaluate_condition
from operators.paths import PathMap


def explain(profile: dict[str, Any], snapshot: ModelSnapshot | None, paths: PathMap) -> list[str]:
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
        "segment": profile["segment"],
        "segment_label": profile["segment_label"],
        "churn_band": profile["churn_band"],
        "churn_risk": profile["churn_risk"],
        "trait": profile["traits"],
    }
    lines.append(f"onboarding path {profile['onboarding_path']}")
    for i, (path, condition) in enumerate(paths.rules, start=1):
        matched = evaluate_condition(condition, attributes)
        lines.append(f"  paths[{i}] {path}: {'matches' if matched else 'no'} {dict(condition)}")
        if matched:
            break
    else:
        lines.append(f"  no rule matched: default {paths.default}")
    return lines
