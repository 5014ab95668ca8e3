"""Profiles through ``firstmile run`` as typed: stitching, consent, pseudonymization,
erasure, event-time timers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from firstmile.operators.experiments import Experiments
from tests.helpers import SHARED, read_jsonl, validator
from tests.test_cli import ROOT, firstmile

EMAIL = "Ann.Example@Example.com"
IP = "81.2.69.142"


def message(minute: int, call: str = "track", **fields: Any) -> dict[str, Any]:
    return {
        "type": call,
        "messageId": f"m-{minute}-{fields.get('event', call)}-{fields.get('userId', '')}",
        "timestamp": f"2026-03-02T10:{minute:02d}:00Z",
        **fields,
    }


def test_identity_privacy_and_erasure_end_to_end(tmp_path: Path) -> None:
    no_consent = {"consent": {"categoryPreferences": {"personalization": False}}}
    stream = [
        message(0, "page", anonymousId="a1", name="Pricing", context={"ip": IP}),
        message(1, userId="u1", anonymousId="a1", event="Signed Up", properties={"email": EMAIL}),
        message(
            2, "identify", userId="u1", anonymousId="a1", traits={"email": EMAIL, "role": "Admin"}
        ),
        message(3, userId="u1", event="Feature Used", context=no_consent),
        message(4, "page", anonymousId="a1", name="Docs"),  # after linking: attributed to u1
        message(5, userId="u2", event="Signed Up"),
        message(6, userId="u2", event="Feature Used", properties={"feature": "reports"}),
        message(7, userId="u2", event="User Deleted"),
        message(8, userId="u2", event="Feature Used"),  # erased: ignored
        message(9, userId="u2", event="Signed Up"),  # a new signup starts afresh
        message(10, "page", anonymousId="a9", name="Home"),  # never identifies
    ]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(m) for m in stream) + b"\n")
    config = tmp_path / "firstmile.toml"
    config.write_text(
        '[privacy]\nhmac_key = "test-key"\nhmac_key_id = "k9"\n'
        f'geo_db = "{SHARED / "geo" / "GeoLite2-City-Test.mmdb"}"\n'
        '[profile]\ntraits = ["role", "email"]\n'
    )
    out = tmp_path / "out"
    done = firstmile("run", "--input", str(events), "--config", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr

    everything = b"".join(path.read_bytes() for path in out.iterdir()) + done.stdout.encode()
    for secret in (EMAIL, EMAIL.lower(), IP):
        assert secret.encode() not in everything

    profiles = {p["user_id"]: p for p in read_jsonl(out / "profiles.jsonl")}
    assert set(profiles) == {"u1", "u2"}  # a9 never identified: counted, no profile
    check = validator("profile")
    for profile in profiles.values():
        check(profile)
    u1 = profiles["u1"]
    assert u1["events_total"] == 4  # the anonymous pages, signup, identify; not the no-consent one
    assert u1["first_seen"] == "2026-03-02T10:00:00.000Z"
    assert (u1["country"], u1["region"]) == ("GB", "GB-ENG")
    assert u1["traits"]["role"] == "admin" and u1["traits"]["email"].startswith("k9:")
    u2 = profiles["u2"]
    assert u2["events_total"] == 1 and u2["counts"] == {"signup": 1}
    assert read_jsonl(out / "tombstones.jsonl") == [
        {"user_id": "u2", "topic": "segments"},
        {"user_id": "u2", "topic": "triggers"},
    ]
    segments = read_jsonl(out / "segments.jsonl")
    u2_seqs = [s["seq"] for s in segments if s["user_id"] == "u2"]
    assert len(u2_seqs) == 2 and u2_seqs[1] > u2_seqs[0] and u2["seq"] >= u2_seqs[1]

    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["erasures"] == 1 and summary["stitched"] == 1
    assert summary["suppressed"] == {"erased": 1, "no_consent": 1}
    assert summary["anonymous_visitors"] == 2 and summary["users"] == 2
    assert summary["never_identified"] == 1  # a9


def test_an_erasure_forgets_the_link_of_every_device(tmp_path: Path) -> None:
    """Erased from one device, a user's other device is a stranger afterwards."""
    stream = [
        message(0, userId="u3", anonymousId="laptop", event="Signed Up"),
        message(1, "identify", userId="u3", anonymousId="phone"),
        message(2, "page", anonymousId="phone", name="Docs"),  # attributed to u3
        message(3, userId="u3", anonymousId="laptop", event="User Deleted"),
        message(4, userId="u3", anonymousId="laptop", event="Signed Up"),  # starts afresh
        message(5, "page", anonymousId="phone", name="Pricing"),  # no longer u3's
    ]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(m) for m in stream) + b"\n")
    out = tmp_path / "out"
    done = firstmile("run", "--input", str(events), "--out", str(out))
    assert done.returncode == 0, done.stderr

    (u3,) = read_jsonl(out / "profiles.jsonl")
    assert u3["user_id"] == "u3"
    assert u3["counts"] == {"signup": 1}  # the phone's later page is not theirs
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["erasures"] == 1 and summary["never_identified"] == 1  # the phone, now


def test_a_visitor_keeps_after_signup_the_arm_served_before_it(tmp_path: Path) -> None:
    """Hashing the anonymous id: the arm ``serve`` gives visitor v-<i> is their arm after."""
    experiments = tmp_path / "experiments.toml"
    experiments.write_text(
        '[[experiments]]\nkey = "tour"\nhash_attribute = "anonymous_id"\n'
        'variations = [{ name = "control" }, { name = "short", path = "short_tour" }]\n'
    )
    config = tmp_path / "firstmile.toml"
    config.write_text(f'experiments = "{experiments}"\n')
    stream = [
        message(i % 60, userId=f"u{i}", anonymousId=f"v-{i}", event="Signed Up") for i in range(40)
    ]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(m) for m in stream) + b"\n")
    out = tmp_path / "out"
    done = firstmile("run", "--input", str(events), "--config", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr

    book = Experiments.load(experiments)
    profiles = read_jsonl(out / "profiles.jsonl")
    assert len(profiles) == 40
    for profile in profiles:
        visitor = "v-" + profile["user_id"].removeprefix("u")
        assert profile["experiment_arms"] == book.assign(visitor, {}), profile["user_id"]
    by_user_id = [book.assign(p["user_id"], {}) != p["experiment_arms"] for p in profiles]
    assert any(by_user_id)  # hashing the user id would have given others another arm


def test_timers_fire_in_event_time_for_users_who_go_quiet(tmp_path: Path) -> None:
    def at(day: int, minute: int, user: str, name: str) -> dict[str, Any]:
        return {
            "type": "track",
            "messageId": f"{user}-{day}-{minute}",
            "userId": user,
            "event": name,
            "timestamp": f"2026-03-{2 + day:02d}T10:{minute:02d}:00Z",
        }

    stream = [
        at(0, 0, "u1", "Signed Up"),
        at(0, 10, "u1", "Feature Used"),
        at(3, 0, "u2", "Signed Up"),  # moves time on: u1's timers fire, idle included
        at(3, 5, "u2", "Feature Used"),
        at(4, 0, "u1", "Feature Used"),  # u1 comes back; u2 has been quiet for a day
    ]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(m) for m in stream) + b"\n")
    config = tmp_path / "firstmile.toml"
    (tmp_path / "rules.toml").write_text("")  # the shipped rules listen to a 72 h timer
    config.write_text(
        'rules = "rules.toml"\n'
        "[timers]\ninactivity_hours = [2, 48]\nidle_after_days = 2.5\nallowed_lateness_s = 0\n"
    )
    out = tmp_path / "out"
    done = firstmile("run", "--input", str(events), "--config", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr

    summary = orjson.loads((out / "summary.json").read_bytes())
    # u1: session end, 2 h, 48 h, idle; u2: session end, 2 h (48 h is past the end of input).
    # Decision points: u1 at +6 h, +1 d (and +2 d: it was active in the day before +1 d)
    # and at its return (+4 d); u2 at its +6 h and +1 d. u1's experiment activation is
    # known at +3 d.
    # Both used a feature within a day: the first-feature nudge's deadline was cancelled.
    assert summary["timers_fired"] == {
        "decision": 6,
        "idle": 1,
        "inactive": 3,
        "outcome": 1,
        "session_end": 2,
    }
    profiles = {p["user_id"]: p for p in read_jsonl(out / "profiles.jsonl")}
    u1, u2 = profiles["u1"], profiles["u2"]
    assert u1["events_total"] == 3 and u1["inactive_hours"] == 0  # back, after compaction
    assert u1["sessions"] == {"count": 2, "closed": 1, "open": True, "mean_minutes": 10.0}
    assert u1["windows"]["events_7d"] == 1  # compaction dropped the old buckets: they were empty
    assert u2["inactive_hours"] == 2 and u2["sessions"]["open"] is False
    assert u2["as_of"] == "2026-03-06T10:00:00.000Z"  # its decision point moved it on


@pytest.mark.parametrize(("user", "held_out"), [("u3", False), ("u1", True)])
def test_going_quiet_raises_the_risk_and_the_retention_rule_fires(
    user: str, held_out: bool
) -> None:
    """The profile step, one event per batch as a live stream delivers them, then the
    inactivity timer: a user who went quiet is rescored without any event of theirs.
    (u1 falls in the retention offer's 10 % holdout: the rule wins but sends nothing.)"""
    import copy
    from datetime import datetime, timedelta

    from firstmile.flows.config import load_config
    from firstmile.flows.run import flow_settings
    from firstmile.online_models.channel import Models
    from firstmile.online_models.risk import AGE_BANDS
    from firstmile.online_models.snapshot import ModelSnapshot
    from firstmile.operators.events import Event
    from firstmile.operators.outputs import Output
    from firstmile.operators.population import PopulationStats
    from firstmile.operators.timers import Tick
    from firstmile.operators.user_step import UserStep

    # The population the offer ranks against: most users of every age at lower risk.
    cuts = [i / 200 for i in range(1, 100)]
    ranks = [[upper, *cuts] for upper in AGE_BANDS]
    models = Models()
    models.publish(
        ModelSnapshot(1, "2026-03-01T00:00:00.000Z", population=PopulationStats(risk_ranks=ranks))
    )
    settings = flow_settings(load_config(None), profile_updates="none", models=models)
    logic = UserStep(settings, None)
    t0 = datetime.fromisoformat("2026-03-02T10:00:00+00:00")

    def send(minutes: int, name: str, **properties: str) -> list[Output]:
        raw = {
            "type": "track",
            "messageId": f"m{minutes}-{name}",
            "userId": user,
            "event": name,
            "timestamp": (t0 + timedelta(minutes=minutes)).isoformat(),
            "properties": properties,
        }
        event = settings.decoder(orjson.dumps(raw))
        assert isinstance(event, Event)
        return [o for o in logic.on_batch([event])[0] if isinstance(o, Output)]

    # Signs up, tries five features and comes back to three of them within two hours
    # (no onboarding): a new user does not start "high", and stays below it while active.
    outputs = send(0, "Signed Up")
    for minute, feature in enumerate("abcde", start=3):
        outputs += send(minute, "Feature Used", feature=feature)
    for minute, feature in zip((60, 61, 62, 120), "abca", strict=True):
        outputs += send(minute, "Feature Used", feature=feature)
    bands = [o.value["churn_band"] for o in outputs if o.kind == "segment" and o.value]
    assert bands and "high" not in bands
    branch = UserStep(settings, copy.deepcopy(logic.profile))  # for +48 h, below

    # Then nothing for 72 hours: the inactivity timer rescores them.
    last = t0 + timedelta(minutes=120)
    quiet = Tick(user, "inactive", last + timedelta(hours=72), last, 72)
    outputs = [o for o in logic.on_batch([quiet])[0] if isinstance(o, Output)]
    (decision,) = [o.value for o in outputs if o.kind == "segment" and o.value]
    assert "risk_band_changed" in decision["reason"] and decision["churn_band"] == "high"
    assert decision["cause"] == {"event_id": None, "rule_id": None, "signal": "risk_band_changed"}
    # The 72 h timer's own rule (quiet before finishing onboarding) fires on it. The
    # retention offer does not: it acts at decision points while the user is still
    # active, not once they have gone.
    triggers = {o.value["rule_id"]: o.value for o in outputs if o.kind == "trigger" and o.value}
    assert triggers["quiet-three-days"]["action"] == "re_engagement"
    assert logic.profile is not None and "retention-offer" not in logic.profile.fired

    # Instead, the decision point at +48 h (quiet since +2 h) comes first: the risk ranks
    # among the highest of users that age in the first three days and the offer wins (u1
    # falls in its 10 % holdout: it counts as fired but nothing is sent).
    point = Tick(user, "decision", t0 + timedelta(hours=48), last)
    outputs = [o for o in branch.on_batch([point])[0] if isinstance(o, Output)]
    triggers = {o.value["rule_id"]: o.value for o in outputs if o.kind == "trigger" and o.value}
    assert branch.profile is not None and "retention-offer" in branch.profile.fired
    if held_out:
        assert "retention-offer" not in triggers
        return
    offer = triggers["retention-offer"]
    assert offer["action"] == "retention_offer" and offer["cause"]["signal"] == "decision_point"


def test_every_segment_label_is_the_one_its_model_version_gave(tmp_path: Path) -> None:
    """Labels are recomputed at each publication; a profile or event never pairs a
    segment with another version's label: it names the version that assigned both."""
    out = tmp_path / "out"
    done = firstmile("run", "--users", "600", "--days", "6", "--no-progress", "--out", str(out))
    assert done.returncode == 0, done.stderr
    decisions = read_jsonl(out / "segments.jsonl")
    given: dict[tuple[str, str], set[str]] = {}
    for d in decisions:
        key = (d["model_versions"]["segments"], d["segment_id"])
        given.setdefault(key, set()).add(d["segment_label"])
    assert len({version for version, _ in given}) > 2  # segments were republished
    assert all(len(labels) == 1 for labels in given.values())  # one label per version and id
    profiles = read_jsonl(out / "profiles.jsonl")
    segmented = [p for p in profiles if p["segment"] != "new"]
    assert len(segmented) > len(profiles) / 2
    for p in segmented:
        assert given[(p["segment_version"], p["segment"])] == {p["segment_label"]}


def test_a_few_events_stamped_far_ahead_move_time_for_nobody_else(tmp_path: Path) -> None:
    """Phones with wrong clocks: events stamped today in a replayed March history, some
    scattered and a block of them in the middle, must not fire everyone's timers (before:
    a 20x storm of timers, idle compaction dropping dedup ids, inflated counts)."""
    import random
    from datetime import UTC, datetime

    from firstmile.flows.simulator import Simulation

    lines = list(Simulation(users=300, days=6, seed=11).lines())
    rng = random.Random(3)
    today = datetime.now(UTC).isoformat()

    def ahead(i: int) -> bytes:
        user = f"user-{rng.randrange(300):07d}"
        return orjson.dumps(
            {"type": "track", "event": "Feature Used", "userId": user,
             "messageId": f"ahead-{i}", "timestamp": today}
        )  # fmt: skip

    skewed = list(lines)
    for i in range(32):
        skewed.insert(rng.randrange(len(skewed)), ahead(i))
    middle = len(skewed) // 2
    skewed[middle:middle] = [ahead(100 + i) for i in range(32)]
    wrong = {orjson.loads(line)["userId"] for line in skewed if b'"ahead-' in line}

    def run(name: str, stream: list[bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
        events, out = tmp_path / f"{name}.jsonl", tmp_path / name
        events.write_bytes(b"\n".join(stream) + b"\n")
        done = firstmile("run", "--input", str(events), "--out", str(out), "--no-progress")
        assert done.returncode == 0, done.stderr
        summary = orjson.loads((out / "summary.json").read_bytes())
        return summary, {p["user_id"]: p for p in read_jsonl(out / "profiles.jsonl")}

    clean, clean_profiles = run("clean", lines)
    summary, profiles = run("skewed", skewed)
    fired, expected = summary["timers_fired"], clean["timers_fired"]
    assert fired.get("idle", 0) <= len(wrong)  # only the users whose own clock is wrong
    for kind in ("session_end", "inactive", "decision"):  # a few per wrong clock, no storm
        assert abs(fired[kind] - expected[kind]) <= 4 * len(wrong), kind
    others = [user for user in clean_profiles if user not in wrong]
    assert len(others) > 200
    for user in others:
        got, want = profiles[user], clean_profiles[user]
        assert (got["events_total"], got["windows"], got["sessions"]) == (
            want["events_total"],
            want["windows"],
            want["sessions"],
        ), user


def test_a_learned_arm_chooses_paths_with_propensities_and_the_report_estimates_it(
    tmp_path: Path,
) -> None:
    """control (a fixed path) vs the rules vs a learned policy in the simulator: every
    experiment user's path choice is logged with its propensity, rewards come with the
    activation outcome, and the summary and `firstmile report` estimate both policies."""
    experiments = tmp_path / "experiments.toml"
    experiments.write_text(
        '[[experiments]]\nkey = "paths"\nexploration = 0.2\nvariations = [\n'
        '  { name = "control", path = "standard_tour" },\n  { name = "rules" },\n'
        '  { name = "learned", policy = "learned" },\n]\n'
    )
    shipped = (ROOT / "config" / "paths.toml").read_text()
    stuck = 'path = "guided_walkthrough"\nif = { onboarding_completed = 0, steps_stuck'
    assert stuck in shipped
    paths = tmp_path / "paths.toml"  # stuck users get the walkthrough, whatever the bandit
    paths.write_text(shipped.replace(stuck, "required = true\n" + stuck))
    out = tmp_path / "out"
    env = {"FIRSTMILE_EXPERIMENTS": str(experiments), "FIRSTMILE_PATHS": str(paths)}
    args = ("run", "--users", "900", "--days", "8", "--out", str(out), "--no-progress")
    done = firstmile(*args, env=env)
    assert done.returncode == 0, done.stderr

    summary = orjson.loads((out / "summary.json").read_bytes())
    assert set(summary["experiments"]["paths"]["arms"]) == {"control", "rules", "learned"}
    policy = summary["models"]["policy"]
    estimates = policy["estimates"]
    assert policy["rewards"] > 300 and set(estimates) == {"learned", "rules", "ran", "logged"}
    # the learned arm as it ran: every choice, whatever its arm, logged its running chances
    assert estimates["ran"]["n"] == estimates["learned"]["n"]
    check = validator("profile")
    chosen = Counter()
    for profile in read_jsonl(out / "profiles.jsonl"):
        check(profile)
        arm = profile["experiment_arms"].get("paths")
        choice = (profile.get("path_choices") or {}).get("paths")
        if arm is None or choice is None:
            continue
        chosen[choice["policy"]] += 1
        expected = {
            "control": {"fixed"},
            "rules": {"rules"},
            "learned": {"learned", "deferred", "required"},
        }
        assert choice["policy"] in expected[arm], profile["user_id"]
        if choice["policy"] == "deferred":  # the rules' path then; the rules adapt it since
            assert 0.2 / 5 - 1e-6 <= choice["propensity"] <= 1.0
        elif choice["policy"] == "learned":
            assert 0.2 / 5 - 1e-6 <= choice["propensity"] <= 1.0  # the exploration floor
            # kept since, unless the guard rail took over
            assert profile["onboarding_path"] in {choice["path"], "guided_walkthrough"}
        elif choice["policy"] == "required":
            assert (choice["path"], choice["propensity"]) == ("guided_walkthrough", 1.0)
        else:
            assert choice["propensity"] == 1.0
    assert min(chosen.values()) > 20 and chosen["fixed"] > 200, chosen

    decisions = read_jsonl(out / "segments.jsonl")
    check_decision = validator("segment")
    named = Counter()
    for decision in decisions:
        check_decision(decision)
        for choice in (decision.get("path_choices") or {}).values():
            named[choice["policy"]] += 1
    assert named["deferred"] > 100 and named["rules"] > 100, named  # decisions say who chose

    readout = firstmile("report", "--summary", str(out / "summary.json"))
    assert readout.returncode == 0, readout.stderr
    assert "learned onboarding paths" in readout.stdout and "doubly robust" in readout.stdout
    assert "learned, as it ran" in readout.stdout
