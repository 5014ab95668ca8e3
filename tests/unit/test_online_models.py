"""Model wrappers, stable segment ids, hysteresis, delayed labels, signed snapshots."""

from __future__ import annotations

import math
import pickle
import random
import tracemalloc
from array import array
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest

from firstmile.online_models.channel import RESERVE_S, Models
from firstmile.online_models.churn import ChurnLearner
from firstmile.online_models.forecast import SegmentForecast, inputs
from firstmile.online_models.learner import Learner, LearnerSettings
from firstmile.online_models.risk import CHURN_FEATURES, prior_risk
from firstmile.online_models.scoring import Scorer
from firstmile.online_models.segments import (
    LOG_FEATURES,
    SEGMENT_FEATURES,
    SegmentLearner,
    _lloyd,
    _row,
    describe,
)
from firstmile.online_models.snapshot import ModelSnapshot, sign, verify
from firstmile.operators import telemetry
from firstmile.operators.decisions import band, decide, label_on_return, remember_decision
from firstmile.operators.errors import ModelError
from firstmile.operators.features import FEATURE_NAMES, MIX_FEATURES, features
from firstmile.operators.profile import UserProfile, mix_bucket
from firstmile.operators.samples import Observation, Return, Sample
from firstmile.operators.timers import TimerSettings, TimerShard
from firstmile.state.model_store import MemoryModelStore

T0 = datetime(2026, 3, 2, tzinfo=UTC)
BLOBS = {  # three kinds of users, far apart on a few features
    "mobile": {"is_mobile": 1.0, "skip_share": 0.8, "sessions_per_day": 4.0},
    "power": {"events_per_session": 40.0, "features_distinct": 8.0, "active_days_7d": 6.0},
    "admin": {"role_admin": 1.0, "support_tickets": 6.0, "company_size_log": 7.0},
}


def sample_of(kind: str, rng: random.Random, shift: float = 0.0) -> dict[str, float]:
    x = {name: rng.gauss(0, 0.05) for name in FEATURE_NAMES}
    for name, value in BLOBS[kind].items():
        x[name] = value * (1 + shift) + rng.gauss(0, 0.05 * value)
    return x


def stream(n: int, seed: int, kinds: tuple[str, ...] = tuple(BLOBS), shift: float = 0.0):
    rng = random.Random(seed)
    return [(kind, sample_of(kind, rng, shift)) for kind in rng.choices(kinds, k=n)]


def trained_segments(seed: int = 1, n: int = 1500) -> SegmentLearner:
    learner = SegmentLearner(3, seed=seed, warmup=100)
    for i, (_, x) in enumerate(stream(n, seed)):
        learner.learn(x, f"u{i}")
    return learner


def test_segment_learner_contract_pickle_missing_features_and_seeds() -> None:
    learner = trained_segments()
    again = pickle.loads(pickle.dumps(learner))
    assert again.model() == trained_segments().model()  # seeded: the same model twice
    learner.learn({}, "u0")  # every feature missing: learned as zeros, no error
    model = learner.model()
    assert model is not None and 2 <= len(model.segments) <= 3
    top = max(model.importance, key=model.importance.get)  # type: ignore[arg-type]
    assert top in {name for blob in BLOBS.values() for name in blob}  # what sets them apart
    assert abs(sum(model.importance.values()) - 1) < 0.01
    assert SegmentLearner(3, warmup=100).model() is None  # warm-up: nothing to publish


def test_segment_ids_stay_put_as_centers_drift_and_new_ones_get_new_ids() -> None:
    learner = trained_segments()
    first = learner.model()
    assert first is not None
    scorer = Scorer(ModelSnapshot(1, "t", first))
    rng = random.Random(9)
    before = {kind: scorer.segment(sample_of(kind, rng), None).id for kind in BLOBS}  # type: ignore[union-attr]
    assert len(set(before.values())) == 3
    for i, (_, x) in enumerate(stream(1500, 2, shift=0.15)):  # every behaviour drifts a little
        learner.learn(x, f"v{i}")
    second = learner.model()
    assert second is not None
    scorer = Scorer(ModelSnapshot(2, "t", second))
    after = {kind: scorer.segment(sample_of(kind, rng, 0.15), None).id for kind in BLOBS}  # type: ignore[union-attr]
    assert after == before  # same ids for the same behaviours
    # A center far from every published one gets a new id; the one it replaced retires.
    learner.published[before["admin"]] = [1e6] * len(SEGMENT_FEATURES)
    third = learner.model()
    assert third is not None
    ids = {s.id for s in third.segments}
    assert before["admin"] not in ids and before["admin"] in third.retired
    assert len(ids - set(before.values())) == 1


def test_a_publication_pulls_wandering_centers_back_onto_the_newest_samples() -> None:
    """Each publication refines the centers by Lloyd rounds on the newest samples, from
    where they are: a center that wandered off returns to its users, ids kept."""
    learner = trained_segments()
    first = learner.model()
    assert first is not None
    slot = next(iter(learner.kmeans.centers))
    true = dict(learner.kmeans.centers[slot])
    learner.kmeans.centers[slot].update({n: v + 0.4 for n, v in true.items()})  # wandered
    second = learner.model()
    assert second is not None
    back = learner.kmeans.centers[slot]
    assert max(abs(back[n] - true[n]) for n in true) < 0.05
    assert [s.id for s in second.segments] == [s.id for s in first.segments]
    learner.owners.clear()  # without its users' samples the centers could not return
    learner.rows.clear()
    learner.kmeans.centers[slot].update({n: v + 0.4 for n, v in true.items()})
    learner.model()
    assert min(abs(learner.kmeans.centers[slot][n] - true[n]) for n in true) > 0.3


def test_the_refine_window_holds_users_each_as_they_are_now() -> None:
    """The window the centers are refined on is a sample of users, not of samples: a user
    who sent a hundred snapshots holds one row (their newest), users who left early keep
    theirs, and as new users arrive it renews towards the newest ``renewal`` window-fuls."""
    learner = SegmentLearner(3, seed=1, warmup=100, window=50, renewal=5)
    rng = random.Random(3)
    for i in range(30):  # early leavers: one snapshot each
        learner.learn(sample_of("admin", rng), f"early{i}")
    busy = [f"busy{i}" for i in range(20)]
    last: dict[str, dict[str, float]] = {}
    for _ in range(100):
        for user in busy:
            last[user] = sample_of("power", rng)
            learner.learn(last[user], user)
    assert sorted(learner.rows) == sorted([f"early{i}" for i in range(30)] + busy)
    assert all(learner.owners[row] == user for user, row in learner.rows.items())
    row = learner.window[learner.rows["busy7"]]
    assert np.allclose(row, list(_row(last["busy7"], learner.logged).values()), rtol=1e-5)
    for i in range(1000):
        learner.learn(sample_of("mobile", rng), f"new{i}")
    assert len(learner.owners) == 50 and len(learner.rows) == 50
    assert all(learner.owners[row] == user for user, row in learner.rows.items())
    newest = sum(int(user[3:]) >= 750 for user in learner.rows if user.startswith("new"))
    assert sum(not user.startswith("new") for user in learner.rows) <= 3 and newest >= 20


def test_centers_stuck_in_a_poor_basin_are_re_seeded_from_the_window() -> None:
    """Lloyd rounds keep the basin the warm-up chose; every ``reseed_every`` publications
    a few k-means++ starts on the window replace centers that sit clearly worse."""

    def stuck(gain: float) -> SegmentLearner:
        learner = SegmentLearner(3, seed=1, warmup=100, reseed_every=1, reseed_gain=gain)
        for i, (_, x) in enumerate(stream(600, 1)):
            learner.learn(x, f"u{i}")
        learner.model()
        a, b, c = (learner.kmeans.centers[slot] for slot in sorted(learner.kmeans.centers))
        between = {n: (b[n] + c[n]) / 2 for n in b}
        b.update({n: v + 0.01 for n, v in a.items()})  # two centers on one behaviour ...
        c.update(between)  # ... and one between the other two
        learner.refines = 0
        return learner

    def kinds_apart(learner: SegmentLearner) -> int:
        model = learner.model()
        assert model is not None
        scorer = Scorer(ModelSnapshot(1, "t", model))
        rng = random.Random(5)
        return len({scorer.segment(sample_of(kind, rng), None).id for kind in BLOBS})  # type: ignore[union-attr]

    kept = stuck(gain=1.0)  # a start must be 100 % better: never
    assert kinds_apart(kept) == 2 and kept.reseeds == 0
    reseeded = stuck(gain=0.03)
    assert kinds_apart(reseeded) == 3 and reseeded.reseeds == 1


def test_labels_say_what_distinguishes_a_center() -> None:
    center = [0.0] * len(SEGMENT_FEATURES)
    center[SEGMENT_FEATURES.index("is_mobile")] = 2.0
    center[SEGMENT_FEATURES.index("skip_share")] = 1.5
    label, description = describe(center, SEGMENT_FEATURES)
    assert label == "mobile, skips onboarding"
    assert "is_mobile +2.0 sd" in description
    assert describe([0.1] * len(SEGMENT_FEATURES), SEGMENT_FEATURES)[0] == "typical"
    names = (*SEGMENT_FEATURES, "onboarding_completed")
    center = [*center, 2.5]  # the same trait as onboarding_progress, again
    center[names.index("onboarding_progress")] = 3.0
    assert describe(center, names)[0] == "mobile, onboarded"


def test_hysteresis_keeps_a_user_until_another_segment_is_clearly_closer() -> None:
    model = trained_segments().model()
    assert model is not None
    scorer = Scorer(ModelSnapshot(1, "t", model), margin=0.5)
    rng = random.Random(4)
    mobile, power = sample_of("mobile", rng), sample_of("power", rng)
    mobile_id = scorer.segment(mobile, None).id  # type: ignore[union-attr]
    power_id = scorer.segment(power, None).id  # type: ignore[union-attr]
    between = {k: 0.45 * mobile[k] + 0.55 * power[k] for k in mobile}  # a bit closer to power
    assert scorer.segment(between, None).id == power_id  # type: ignore[union-attr]
    assert scorer.segment(between, mobile_id).id == mobile_id  # type: ignore[union-attr]
    assert scorer.segment(power, mobile_id).id == power_id  # type: ignore[union-attr]
    assert band(0.31, "low") == "low" and band(0.36, "low") == "medium"


def churn_user(rng: random.Random) -> tuple[dict[str, float], float]:
    """A user at a decision point, and hours until they come back (inf: never)."""
    engaged = rng.random() < 0.5
    x = {name: 0.0 for name in CHURN_FEATURES}
    x["active_days_7d"] = max(0.0, rng.gauss(5 if engaged else 1, 1))
    x["onboarding_progress"] = rng.random()  # says nothing here: the prior cannot tell
    leaves = rng.random() < (0.1 if engaged else 0.7)
    back = float("inf") if leaves else rng.expovariate(1 / (10 if engaged else 40))
    return x, back


def train(churn: ChurnLearner, rng: random.Random, n: int) -> None:
    """Decisions then their stage labels, as the learner resolves them."""
    for _ in range(n):
        x, back = churn_user(rng)
        published = churn.decided(x)
        for stage, horizon in enumerate(churn.horizons):
            away = back > horizon
            churn.learn_stage(stage, x, away)
            if not away:
                break
        churn.validate(back > churn.horizons[-1], published, x)


def test_churn_hazard_learns_each_stage_and_publishes_their_product() -> None:
    rng = random.Random(3)
    churn = ChurnLearner(min_labels=100)
    assert churn.horizons == (24, 72, 168)
    assert churn.model() is None  # the prior rules until the model has earned its place
    train(churn, rng, 3000)
    model = churn.model()
    assert model is not None and [s.horizon_h for s in model.stages] == [24, 72, 168]
    assert all(s.constant is None for s in model.stages)
    quality = churn.quality()
    assert quality["roc_auc"] > 0.75 and quality["labels"] == 3000
    assert max(model.importance, key=model.importance.get) == "active_days_7d"  # type: ignore[arg-type]
    scorer = Scorer(ModelSnapshot(1, "t", None, model))
    low, _, _ = scorer.churn({"active_days_7d": 6.0, "onboarding_progress": 0.5})
    high, version, top = scorer.churn({"active_days_7d": 0.0, "onboarding_progress": 0.5})
    assert low < 0.3 < 0.5 < high and version == model.version
    assert top[0]["name"] == "active_days_7d"
    assert pickle.loads(pickle.dumps(churn)).model().stages == churn.model().stages  # type: ignore[union-attr]
    again = ChurnLearner(min_labels=100)
    train(again, random.Random(3), 3000)
    assert again.model().stages == model.stages  # type: ignore[union-attr]  # repeatable


def test_churn_risk_is_calibrated_on_users_it_has_not_seen() -> None:
    def user(rng: random.Random) -> tuple[dict[str, float], float]:
        """Leaving gets likelier the fewer days a user was active (a logistic hazard)."""
        x = {"active_days_7d": rng.uniform(0, 7)}
        leaves = rng.random() < 1 / (1 + math.exp(-(1.5 - 1.5 * math.log1p(x["active_days_7d"]))))
        return x, float("inf") if leaves else rng.expovariate(1 / 30)

    churn, rng = ChurnLearner(min_labels=100), random.Random(11)
    for _ in range(4000):
        x, back = user(rng)
        published = churn.decided(x)
        for stage, horizon in enumerate(churn.horizons):
            churn.learn_stage(stage, x, back > horizon)
            if back <= horizon:
                break
        churn.validate(back > churn.horizons[-1], published, x)
    model = churn.model()
    assert model is not None and model.calibration[0][1:] != [1.0, 0.0]  # Platt was fitted
    scorer = Scorer(ModelSnapshot(1, "t", None, model))
    bins: dict[int, list[tuple[float, bool]]] = {}
    for _ in range(4000):
        x, back = user(rng)
        risk = scorer.churn(x)[0]
        bins.setdefault(int(risk * 5), []).append((risk, back > 168))
    error = sum(abs(sum(r for r, _ in b) - sum(y for _, y in b)) for b in bins.values()) / 4000
    assert error < 0.03  # expected calibration error, five bins


def test_the_last_stage_stands_at_a_shrunk_rate_until_it_has_labels() -> None:
    churn = ChurnLearner(min_labels=100)
    rng = random.Random(4)
    for _ in range(1500):  # a stream's first days: only the 24 h and 72 h labels matured
        x, back = churn_user(rng)
        churn.decided(x)
        churn.learn_stage(0, x, back > 24)
        if back > 24:
            churn.learn_stage(1, x, back > 72)
    assert churn.earned()  # the early stages are enough to hand over
    model = churn.model()
    assert model is not None and model.stages[-1].constant == 0.8  # QUIET_STAYS_AWAY


def test_hand_over_happens_once_and_never_flips_back() -> None:
    churn = ChurnLearner(min_labels=100)
    rng = random.Random(5)
    train(churn, rng, 1000)
    assert churn.earned()
    for _ in range(2000):  # labels turn to noise: the prior would now rank as well
        x, _ = churn_user(rng)
        churn.decided(x)
        churn.learn_stage(0, x, rng.random() < 0.5)
        assert churn.earned()


def test_a_drift_in_the_labels_is_detected_and_a_challenger_takes_over() -> None:
    rng = random.Random(5)
    churn = ChurnLearner(min_labels=100, trial=200)
    for _ in range(1500):  # users who rarely come back leave
        x, _ = churn_user(rng)
        churn.decided(x)
        churn.learn_stage(0, x, x["active_days_7d"] < 3)
    settled = churn.drifts
    for _ in range(1500):  # the world turns: now the regulars leave
        x, _ = churn_user(rng)
        churn.decided(x)
        churn.learn_stage(0, x, x["active_days_7d"] >= 3)
    assert churn.drifts > settled and churn.swaps >= 1
    assert churn.stage_auc.get() > 0.9  # it recovered


def test_feature_drift_is_detected_on_the_snapshots() -> None:
    learner = Learner(LearnerSettings(segments=3, segment_warmup=50))
    for _, x in stream(1500, 6, kinds=("mobile",)):
        learner.observe(Sample("u", T0, x))
    calm = learner.feature_drifts
    for _, x in stream(1500, 7, kinds=("power",)):  # a different crowd arrives
        learner.observe(Sample("u", T0, x))
    assert learner.feature_drifts > calm


def test_a_small_product_gets_segments_after_the_warmup_days_not_never() -> None:
    learner = Learner(LearnerSettings(segments=3, segment_warmup=10_000, segment_warmup_days=2))
    rows = stream(300, 8)
    for i, (_, x) in enumerate(rows):  # 300 first-day snapshots over three days
        at = T0 + timedelta(days=3 * i / len(rows))
        learner.observe(Sample(f"u{i}", at, {**x, "days_since_signup": 1.0}))
        if at < T0 + timedelta(days=2):
            assert learner.segments.model() is None  # still warming up
    model = learner.segments.model()
    assert model is not None and len(model.segments) == 3
    scorer = Scorer(ModelSnapshot(1, "t", model))
    rng = random.Random(5)
    ids = {scorer.segment(sample_of(kind, rng), None).id for kind in BLOBS}  # type: ignore[union-attr]
    assert len(ids) == 3  # the three behaviours, from what came in


def test_a_new_deployments_first_signups_hold_a_segment_by_their_48_hours() -> None:
    # Segments learn from users at least a day old, so the first snapshots they may learn
    # from come a day in; the first day's signups reach 48 h a day later, and must find
    # segments published by then (the default warm-up days), not "none".
    learner = Learner(LearnerSettings(segments=3))
    rows = stream(600, 9)
    first_48h = T0 + timedelta(hours=6 + 48)  # a signup 6 h into the deployment
    published_by_then = None
    for i, (_, x) in enumerate(rows):  # signups over three days, each seen a day later
        at = T0 + timedelta(days=1 + 3 * i / len(rows))
        if at > first_48h and published_by_then is None:
            published_by_then = learner.segments.started  # (model() would publish)
        learner.observe(Sample(f"u{i}", at, {**x, "days_since_signup": 1.0}))
    assert published_by_then is True


def test_prior_risk_is_documented_and_does_not_start_new_users_high() -> None:
    assert prior_risk({}) == 0.3  # PRIOR_BASE: a typical 7-day churn rate
    assert prior_risk({"engagement": 100.0, "onboarding_progress": 1.0}) < 0.05
    assert prior_risk({"engagement": 50.0}) < 0.3
    # Not seen for a while raises it, saturating at two days.
    assert prior_risk({"engagement": 20.0, "hours_since_last_seen": 48.0}) > 0.6
    assert prior_risk({"hours_since_last_seen": 480.0}) == prior_risk({"hours_since_last_seen": 48})
    signup = features(UserProfile("u1", known=True, signed_up_at=T0, as_of=T0))
    assert band(prior_risk(signup), None) != "high"
    assert Scorer(None).churn({})[1] == "prior"


def test_decision_points_early_then_daily_on_a_fake_clock() -> None:
    settings = TimerSettings(allowed_lateness=timedelta(0), inactivity_hours=(168,))
    shard = TimerShard(settings)
    shard.observe("u1", T0, signup=True)
    ticks = shard.observe("u1", T0 + timedelta(hours=20))  # passes the +6 h point
    ticks += shard.observe("u2", T0 + timedelta(hours=50))  # time passes (another user)
    decisions = [t.due for t in ticks if t.kind == "decision"]
    # +6 h and +24 h always; +48 h because u1 was active in the day before +24 h; not +72 h
    assert decisions == [T0 + timedelta(hours=h) for h in (6, 24, 48)]


def _as_written_before(learner: Learner) -> Learner:
    """``learner`` in the shapes recovery snapshots had before: features as arrays, each
    return time in a list, the forecast's early snapshots as arrays."""
    learner.held = {
        key: (array("f", values), published, [returned])  # type: ignore[misc]
        for key, (values, published, returned) in learner.held.items()
    }
    for held in learner.forecast.early.values():
        held[:] = [(age, array("d", values)) for age, values in held]
    return learner


@pytest.mark.parametrize("written_before", [False, True])
def test_returns_date_every_open_decision_and_labels_mature_per_stage(
    written_before: bool,
) -> None:
    profile = UserProfile("u1", known=True, signed_up_at=T0)
    vector = features(profile)
    first = remember_decision(profile, T0 + timedelta(hours=6), vector)
    assert first.decision and profile.pending == (T0 + timedelta(hours=6)).timestamp()
    remember_decision(profile, T0 + timedelta(hours=24), vector)  # still away: both open
    assert label_on_return(profile, T0 + timedelta(hours=5)) is None  # before the decisions
    back = label_on_return(profile, T0 + timedelta(hours=40))
    assert back is not None and back.decided_at == T0 + timedelta(hours=6)
    assert profile.pending is None and label_on_return(profile, T0 + timedelta(hours=41)) is None

    learner = Learner(LearnerSettings())

    def clock(hours: float) -> None:  # another user's snapshot moves the learner's clock
        learner.observe(Sample("other", T0 + timedelta(hours=hours), {}))

    learner.observe(remember_decision(UserProfile("u1"), T0 + timedelta(hours=6), vector))
    learner.observe(remember_decision(UserProfile("u1"), T0 + timedelta(hours=24), vector))
    learner.observe(back)
    stages = learner.churn.stages
    clock(6 + 24)
    assert stages[0].labels == 0  # not yet a horizon and the slack old
    clock(6 + 24 + 1)
    assert (stages[0].labels, stages[0].away) == (1, 1)  # +6 h: away 24 h (back at +40 h)
    if written_before:
        learner = _as_written_before(learner)
    learner = pickle.loads(pickle.dumps(learner))  # held decisions survive recovery
    stages = learner.churn.stages
    clock(24 + 24 + 1)
    assert (stages[0].labels, stages[0].away) == (2, 1)  # +24 h: back within 24 h
    clock(6 + 72 + 1)
    assert (stages[1].labels, stages[1].away) == (1, 0)  # +6 h: back within 72 h
    assert learner.churn.labels == 0  # outcomes known, validated at the horizon: in order
    clock(24 + 168 + 1)
    assert learner.churn.labels == 2 and learner.churn.churned == 0
    assert not learner.held  # nothing left waiting


def test_decide_emits_on_reasons_and_changes_only() -> None:
    profile = UserProfile("u1", known=True, signed_up_at=T0, as_of=T0)
    vector = features(profile)
    scorer = Scorer(None)
    first, reasons = decide(
        profile,
        vector,
        scorer,
        reasons=["signup"],
        event_time=T0,
        processed_at=T0,
        cause_event="m1",
    )
    assert first is not None and first.value is not None and reasons == ["signup"]
    assert first.value["churn_risk"] == prior_risk(vector)
    assert first.value["churn_band"] == band(prior_risk(vector), None)
    quiet = decide(profile, vector, scorer, reasons=[], event_time=T0, processed_at=T0)
    assert quiet == (None, [])
    worse = {**vector, "hours_since_last_seen": 48.0}
    changed, reasons = decide(profile, worse, scorer, reasons=[], event_time=T0, processed_at=T0)
    assert changed is not None and reasons == ["risk_band_changed"]
    better = {**vector, "engagement": 100.0, "onboarding_progress": 1.0}
    changed, reasons = decide(profile, better, scorer, reasons=[], event_time=T0, processed_at=T0)
    assert changed is not None and changed.value["reason"] == "risk_band_changed"  # type: ignore[index]
    assert reasons == ["risk_band_changed"]


def snapshot_for_tests() -> ModelSnapshot:
    rng = random.Random(8)
    learner = Learner(
        LearnerSettings(segments=3, segment_warmup=50, churn_min_labels=50, segment_min_age_days=0)
    )
    for i, (kind, x) in enumerate(stream(1200, 8)):  # a decision every 10 minutes
        at = T0 + timedelta(minutes=10 * i)
        learner.observe(Sample(f"u{i}", at, x, decision=True))
        stays = kind != "mobile" if rng.random() < 0.9 else kind == "mobile"
        if stays:
            learner.observe(Return(f"u{i}", at, at + timedelta(hours=rng.choice((2, 30)))))
    snapshot = learner.publish(T0)
    assert snapshot is not None and snapshot.segments and snapshot.churn
    return snapshot


def test_a_kept_envelope_holds_memory_of_its_own_length() -> None:
    # The store keeps every recent version's envelope: orjson's untrimmed write buffer
    # had held 260 KB for each 22 KB one.
    snapshot = snapshot_for_tests()
    sign(snapshot, b"key", "m1")  # whatever a first call caches is not what is kept
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        envelopes = [sign(snapshot, b"key", "m1") for _ in range(20)]
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert held < 1.25 * sum(len(e) for e in envelopes)  # untrimmed: over 10x


def test_snapshots_round_trip_signed_and_refuse_tampering() -> None:
    snapshot = snapshot_for_tests()
    envelope = sign(snapshot, b"key", "m1")
    assert verify(envelope, {"m1": b"key"}) == snapshot
    with pytest.raises(ModelError, match="does not match"):
        verify(envelope.replace(b"seg-1", b"seg-9"), {"m1": b"key"})
    with pytest.raises(ModelError, match="unknown key"):
        verify(envelope, {"m2": b"key"})
    with pytest.raises(ModelError, match="unsigned"):
        verify(
            envelope.replace(envelope[envelope.index(b'"signature":"') + 13 :].split(b'"')[0], b""),
            {"m1": b"key"},
        )
    with pytest.raises(ModelError, match="not a signed envelope"):
        verify(b"\x80\x04pickle", {"m1": b"key"})


def test_scorers_pick_up_new_versions_and_keep_theirs_on_a_bad_one() -> None:
    store = MemoryModelStore()
    at = datetime(2026, 3, 2, tzinfo=UTC)
    learner_side = Models(store, b"key", "m1")
    scorer_side = Models(store, b"key", "m1")
    assert scorer_side.scorer(at).versions == {"segments": "none", "churn": "prior"}
    snapshot = snapshot_for_tests()
    assert learner_side.publish(snapshot)
    assert not learner_side.publish(replace(snapshot, version=snapshot.version - 1))
    # Reserved when ``at`` was scored: the new version is in force after that only.
    assert scorer_side.scorer(at + timedelta(seconds=RESERVE_S)).versions["churn"] == "prior"
    assert scorer_side.scorer(at + timedelta(seconds=RESERVE_S + 1)).versions == {
        "segments": snapshot.segments.version,  # type: ignore[union-attr]
        "churn": snapshot.churn.version,  # type: ignore[union-attr]
    }
    before = telemetry.MODELS_REFUSED._value.get()
    store.publish(snapshot.version + 1, sign(snapshot, b"stolen", "m1"))  # not our key
    later = at + timedelta(seconds=3 * RESERVE_S)
    assert scorer_side.scorer(later).versions["churn"] == snapshot.churn.version  # type: ignore[union-attr]
    assert telemetry.MODELS_REFUSED._value.get() == before + 1
    scorer_side.scorer(later + timedelta(seconds=2 * RESERVE_S))  # reserves again
    assert telemetry.MODELS_REFUSED._value.get() == before + 1  # refused once, not again
    # Nothing scored yet in a process: its first version is in force from the start.
    embedded = Models(MemoryModelStore(), b"key", "m1")
    embedded.publish(snapshot)
    assert embedded.scorer(at).versions["churn"] == snapshot.churn.version  # type: ignore[union-attr]


def test_a_version_is_in_force_after_what_was_reserved_and_replays_agree() -> None:
    """A replay, with the scorers restored after a crash, scores each event time with the
    version the first pass had, whatever order the events and versions come in again."""
    day = [T0 + timedelta(minutes=10 * n) for n in range(7)]  # moments, 10 minutes apart
    v1, v2, v3 = (churn_named(snapshot_for_tests(), n) for n in (1, 2, 3))

    def churn(models: Models, at: datetime) -> str:
        return models.scorer(at).versions["churn"]

    store = MemoryModelStore()
    first = Models(store, b"key", "m1", reserve_s=0)
    assert churn(first, day[2]) == "prior"
    first.publish(v1)  # in force after the third moment, the newest scored
    assert [churn(first, day[1]), churn(first, day[3])] == ["prior", "churn-v1"]
    assert churn(first, day[5]) == "churn-v1"
    first.publish(v2)  # in force after the sixth
    said = {at: churn(first, at) for at in day}  # the last scored (reserved); a crash
    assert said[day[5]] == "churn-v1" and said[day[6]] == "churn-v2"

    replay = Models(store, b"key", "m1", reserve_s=0)
    replay.begin(resuming=True)
    # The restored learner publishes before the replay gets far: in force only after
    # what the crashed run had reserved, not after the newest version's point.
    replay.publish(v3)
    assert {at: churn(replay, at) for at in reversed(day)} == said
    assert [after for after, _, _ in store.since(2)] == [day[6].timestamp()]

    # Another process (its own scorers, the same store) agrees on every time it scores.
    other = Models(store, b"key", "m1", reserve_s=0)
    assert {at: churn(other, at) for at in day} == said
    assert churn(other, day[6] + timedelta(seconds=1)) == "churn-v3"

    # A fresh run (not resuming): the newest version is in force from the start.
    fresh = Models(store, b"key", "m1")
    fresh.begin(resuming=False)
    assert churn(fresh, day[0]) == "churn-v3"
    assert [(after, version) for after, version, _ in store.since(0)] == [(-math.inf, 3)]


def test_one_event_far_ahead_does_not_hold_back_every_later_version() -> None:
    """A wrong clock stamps an event months ahead: the mark moves an hour at most, so a
    version published next is in force for the stream's own times."""
    store, t0 = MemoryModelStore(), datetime(2026, 3, 2, tzinfo=UTC)
    models = Models(store, b"key", "m1")
    models.scorer(t0)
    models.scorer(t0 + timedelta(days=200))
    assert store.reserved() == t0.timestamp() + 2 * RESERVE_S + 3600
    models.publish(churn_named(snapshot_for_tests(), 1))
    assert models.scorer(t0 + timedelta(hours=2)).versions["churn"] == "churn-v1"


def churn_named(snapshot: ModelSnapshot, n: int) -> ModelSnapshot:
    """``snapshot`` as version ``n``, its churn model named ``churn-v<n>``."""
    assert snapshot.churn is not None
    return replace(snapshot, version=n, churn=replace(snapshot.churn, version=f"churn-v{n}"))


def test_a_fresh_learner_adopts_the_published_snapshot() -> None:
    snapshot = snapshot_for_tests()
    fresh = Learner(
        LearnerSettings(segments=3, segment_warmup=50, churn_min_labels=50, segment_min_age_days=0)
    )
    fresh.adopt(snapshot)
    assert fresh.version == snapshot.version
    assert set(fresh.segments.published) == {s.id for s in snapshot.segments.segments}  # type: ignore[union-attr]
    assert fresh.churn.earned()
    learned = [s for s in snapshot.churn.stages if s.constant is None]  # type: ignore[union-attr]
    assert learned and all(s in fresh.churn.model().stages for s in learned)  # type: ignore[union-attr]


def test_young_users_get_the_segment_they_are_forecast_to_settle_in() -> None:
    """Early snapshots that look like another segment (here each kind starts out looking
    like the next one) mislead the nearest center; the forecast learns from users who
    matured which segment such a start leads to, and is published only once it has its
    labels and agrees with the mature segment more often than the nearest center does."""
    learner = Learner(LearnerSettings(segments=3, segment_warmup=60))
    looks_like = dict(zip(BLOBS, [*list(BLOBS)[1:], next(iter(BLOBS))], strict=True))
    rng = random.Random(5)
    published: list[ModelSnapshot] = []
    for i, (kind, mature) in enumerate(stream(900, 5)):
        at = T0 + timedelta(minutes=10 * i)
        early = {**sample_of(looks_like[kind], rng), "days_since_signup": 0.5}
        learner.observe(Sample(f"u{i}", at, early, decision=True))
        learner.observe(Sample(f"u{i}", at, {**mature, "days_since_signup": 7.0}))
        if i % 50 == 49 and (snapshot := learner.publish(at)) is not None and snapshot.segments:
            published.append(snapshot)
    assert published[0].segments is not None and published[0].segments.forecast is None
    latest = published[-1].segments
    assert latest is not None and latest.forecast is not None
    assert latest.forecast.agreement > 0.9 > 0.1 > latest.forecast.nearest_agreement
    scorer = Scorer(published[-1])
    settled = {
        kind: scorer.segment({**sample_of(kind, rng), "days_since_signup": 7.0}, None).id  # type: ignore[union-attr]
        for kind in BLOBS
    }
    assert len(set(settled.values())) == 3
    for kind in BLOBS:
        start = {**sample_of(looks_like[kind], rng), "days_since_signup": 0.5}
        assert scorer.segment(start, None).id == settled[kind]  # type: ignore[union-attr]
        older = {**start, "days_since_signup": 3.5}  # past the forecast: the nearest center
        assert scorer.segment(older, None).id == settled[looks_like[kind]]  # type: ignore[union-attr]
    assert verify(sign(published[-1], b"k", "m1"), {"m1": b"k"}) == published[-1]


def test_a_user_four_days_old_labels_their_first_days_for_the_forecast() -> None:
    """The forecast's labels come from a user's snapshot at 4 days (not a week): a new
    deployment's forecast can take over around its fifth day."""
    forecast = SegmentForecast()

    def settle(raw: list[float]) -> tuple[list[float], str]:
        return raw, "s1" if raw[0] > 0 else "s0"

    for user in ("early", "late"):
        forecast.observe(user, 0.5, [1.0] * 14, settle)
        forecast.observe(user, 1.5, [1.0] * 14, settle)
    forecast.observe("early", 3.5, [1.0] * 14, settle)  # between: neither early nor settled
    assert forecast.labels == 0
    forecast.observe("early", 4.0, [1.0] * 14, settle)
    assert forecast.labels == 2 and "early" not in forecast.early and "late" in forecast.early
    assert forecast.model.predict_one(inputs([1.0] * 14, 0.5)) == "s1"


def test_lloyd_rounds_stop_where_the_centers_no_longer_move() -> None:
    """Refining stops once an assignment repeats: what it returns is a fixed point (one
    more round moves nothing) with the inertia of those centers."""
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(m, 0.3, (200, 2)) for m in (0.0, 3.0, 6.0)])
    inertia, centers = _lloyd(points, points[[0, 1, 200]], rounds=50)
    again = _lloyd(points, centers, rounds=1)
    assert np.array_equal(again[1], centers)
    assert inertia == again[0] == ((points[:, None] - centers[None]) ** 2).sum(-1).min(1).sum()


def test_a_learner_restored_from_before_the_events_mix_forgets_its_forecast() -> None:
    """Segments still warming up in the old space (no mix of event names) warm up in the
    new one; the forecast's early snapshots, in the old space, are dropped."""
    learner = Learner(LearnerSettings(segments=3))
    old = learner.segments
    for i, (_, x) in enumerate(stream(50, 1)):  # fewer than the warm-up: not started
        old.learn(x, f"u{i}")
    del old.__dict__["names"], old.__dict__["respaced"]  # what the code before pickled
    learner.forecast.observe("u1", 0.5, [0.0] * 14, old.settle)
    restored = pickle.loads(pickle.dumps(learner))
    assert not restored.forecast.early and not restored.segments.respaced
    assert restored.segments.names == SEGMENT_FEATURES and restored.segments.seen == 0
    x = {**next(iter(stream(1, 2)))[1], "mix_03": 0.5}
    restored.segments.learn(x, "u0")
    assert restored.segments.buffer[-1]["mix_03"] == 0.5


def test_a_restored_learner_republishes_the_models_of_its_snapshot() -> None:
    """After a crash the store holds versions published after the recovery snapshot;
    replayed events must be scored with the snapshot's models, so the restored learner
    publishes them again, numbered above whatever the store holds."""
    from firstmile.flows.config import load_config
    from firstmile.flows.dataflow import LearnerLogic
    from firstmile.flows.run import flow_settings

    settings = flow_settings(load_config(None), profile_updates="none")
    logic = LearnerLogic(settings, None)
    rng = random.Random(3)
    for i, (_, x) in enumerate(stream(600, 3)):
        sample = Sample(f"u{i}", T0 + timedelta(minutes=10 * i), {**x, "days_since_signup": 2.0})
        logic.on_batch([sample])
    logic.on_eof()
    restored = pickle.loads(pickle.dumps(logic.snapshot()))  # the recovery snapshot
    at_snapshot = settings.models.latest()
    assert at_snapshot is not None and at_snapshot.segments is not None
    for i in range(400):  # the crashed run learned on and published more
        logic.on_batch(
            [Sample(f"v{i}", T0 + timedelta(days=5, minutes=i), sample_of("admin", rng))]
        )
    logic.on_eof()
    crashed = settings.models.latest()
    assert crashed is not None and crashed.version > at_snapshot.version

    LearnerLogic(settings, restored)
    again = settings.models.latest()
    assert again is not None and again.version > crashed.version
    assert again.segments is not None
    assert [s.center for s in again.segments.segments] == [
        s.center for s in at_snapshot.segments.segments
    ]


def test_the_population_is_learned_by_the_learner_and_published_with_the_models() -> None:
    """Imputation and clipping read the population from the snapshot in force: the same
    on every worker, and in a replay the same as the first time (the learner's state is
    in recovery). The profile steps only send what they observe."""
    learner = Learner(LearnerSettings(segments=3, segment_warmup=50))
    for size in (10.0, 30.0):
        learner.observe(Observation(traits={"company_size": size, "role": "admin"}))
    for i in range(60):
        learner.observe(Observation(kind="session_s", seconds=float(60 + i % 10)))
    learner.observe(Sample("u1", T0, {"days_since_signup": 0.5}, decision=True))
    snapshot = learner.publish(T0)
    assert snapshot is not None and snapshot.population is not None
    again = verify(sign(snapshot, b"k", "m1"), {"m1": b"k"})  # plain JSON, signed
    scorer = Scorer(again)
    assert scorer.population.impute("company_size") == 20.0
    assert scorer.population.impute("role") == "admin"
    assert scorer.population.clip("session_s", 10_000.0) < 100
    profile = UserProfile("u2")
    assert features(profile, scorer.population)["company_size_log"] == round(math.log1p(20), 4)
    assert Scorer(None).population.impute("company_size") is None  # before any snapshot
    restored = pickle.loads(pickle.dumps(learner))
    assert restored.publish(T0, force=True).population == snapshot.population  # type: ignore[union-attr]


def test_a_long_tail_of_busy_users_does_not_take_the_segments() -> None:
    # Three kinds of users; everyone's events per session, sessions per day and session
    # length are lognormal with a long tail. Standardized as they are, the tail takes centers of its
    # own and splits no kind from another; logged (``LOG_FEATURES``) the kinds come back.
    rng = random.Random(3)
    learner = SegmentLearner(3, seed=1, warmup=200)
    kinds = {"mobile": (1.0, 0.8, 0.0), "admin": (0.0, 0.1, 1.0), "desktop": (0.0, 0.1, 0.0)}

    def user(kind: str) -> dict[str, float]:
        mobile, skips, admin = kinds[kind]
        return {
            "is_mobile": mobile,
            "skip_share": skips + rng.gauss(0, 0.05),
            "role_admin": admin,
            "events_per_session": rng.lognormvariate(2.0, 2.0),
            "sessions_per_day": rng.lognormvariate(0.0, 2.0),
            "session_mean_min": rng.lognormvariate(1.0, 2.0),
        }

    for i, kind in enumerate(rng.choices(list(kinds), k=3000)):
        learner.learn(user(kind), f"u{i}")
    model = learner.model()
    assert model is not None and set(model.scaler.log1p) >= {"events_per_session"}
    held: dict[str, set[str | None]] = {kind: set() for kind in kinds}
    for kind in rng.choices(list(kinds), k=600):
        raw = [user(kind).get(name, 0.0) for name in SEGMENT_FEATURES]
        _, segment = learner.settle(raw)
        held[kind].add(segment)
    # Each kind in one segment, a segment of its own.
    assert {kind: len(segments) for kind, segments in held.items()} == dict.fromkeys(kinds, 1)
    assert len(set().union(*held.values())) == 3, held
    z = model.scaler.z({"events_per_session": 99.0}, ("events_per_session",))
    assert model.scaler.raw(z, ("events_per_session",)) == pytest.approx([99.0])
    # A snapshot published before the transform (format 2) reads as one without it.
    body = orjson.loads(ModelSnapshot(1, "t", model).to_json())
    del body["segments"]["scaler"]["log1p"]
    body["format"] = 2
    assert ModelSnapshot.from_json(orjson.dumps(body)).segments.scaler.log1p == ()  # type: ignore[union-attr]


def test_a_learner_restored_from_before_the_log_transform_warms_up_again_keeping_ids() -> None:
    old = SegmentLearner(3, seed=1, warmup=100)
    old.logged = ()  # as learners were before LOG_FEATURES: raw units throughout
    for i, (_, x) in enumerate(stream(1500, 1)):
        old.learn(x, f"u{i}")
    before = old.model()
    assert before is not None and before.scaler.log1p == ()
    del old.__dict__["logged"], old.__dict__["held"]  # what the code before pickled
    learner = Learner(LearnerSettings(segments=3))
    learner.segments = old
    learner.forecast.labels = 500  # stands for a forecast learned in the old space
    restored = pickle.loads(pickle.dumps(learner))
    assert restored.forecast.labels == 0  # learned again, in the new space
    segments = restored.segments
    held = segments.model()  # warming up: the segments as they were, still published
    assert segments.restarted and held is not None and held.scaler.log1p == ()
    assert [s.center for s in held.segments] == [s.center for s in before.segments]
    for i, (_, x) in enumerate(stream(400, 2)):
        segments.learn(x, f"u{i}")
    after = segments.model()
    assert after is not None and after.scaler.log1p == LOG_FEATURES and not segments.restarted
    assert {s.id for s in after.segments} == {s.id for s in before.segments}  # ids kept


def test_users_alike_in_how_much_they_do_are_told_apart_by_what_they_do() -> None:
    """Two kinds with the same activity, one sending mostly one event name, the other
    another: only the mix of event names tells them apart, and segments do; the labels
    name the events (from the population's observations)."""
    rng = random.Random(5)
    reports = MIX_FEATURES[mix_bucket("Report Exported")]
    invites = MIX_FEATURES[mix_bucket("Invite Sent")]
    assert len({reports, invites, MIX_FEATURES[mix_bucket("page")]}) == 3

    def user(kind: str) -> dict[str, float]:
        x = dict.fromkeys(FEATURE_NAMES, 1.0)  # alike: the same activity
        x |= dict.fromkeys(MIX_FEATURES, 0.0)
        x[reports if kind == "reports" else invites] = 0.7 + rng.gauss(0, 0.05)
        x[MIX_FEATURES[mix_bucket("page")]] = 0.3
        return x

    learner = Learner(LearnerSettings(segments=2, segment_warmup=100))
    for name in ("Report Exported", "Invite Sent", "Invite Sent"):
        learner.observe(Observation(event_name=name))
    for i, kind in enumerate(rng.choices(("reports", "invites"), k=600)):
        x = {**user(kind), "days_since_signup": 5.0}
        learner.observe(Sample(f"u{i}", T0 + timedelta(minutes=i), x))
    snapshot = learner.publish(T0 + timedelta(days=1))
    assert snapshot is not None and snapshot.segments is not None
    scorer = Scorer(snapshot)
    held = {
        kind: {scorer.segment(user(kind), None).id for _ in range(50)}  # type: ignore[union-attr]
        for kind in ("reports", "invites")
    }
    assert len(held["reports"]) == len(held["invites"]) == 1 and held["reports"] != held["invites"]
    labels = " / ".join(s.label for s in snapshot.segments.segments)
    assert "Report Exported" in labels and "Invite Sent" in labels, labels


def test_retention_offers_go_to_the_riskiest_share_of_users_of_the_same_age() -> None:
    """The learner ranks published risks per age band and publishes the ranks with the
    models; a decision ranks the user's risk among users their age, and the shipped
    retention offer reads the rank, not the risk: the riskiest tenth, on any product."""
    from firstmile.online_models.population import MIN_FOR_RANKS
    from firstmile.operators.decisions import attributes
    from firstmile.operators.rules import RuleBook

    learner = Learner(LearnerSettings(segments=3, segment_warmup=50))
    rng = random.Random(3)
    # Day-old users: quiet for 0-48 h, so their prior risks spread over the scale.
    day_old = [
        {"days_since_signup": 1.0, "hours_since_last_seen": rng.uniform(0, 48)}
        for _ in range(MIN_FOR_RANKS)
    ]
    for i, x in enumerate(day_old):
        learner.observe(Sample(f"u{i}", T0, x, decision=True))
    first = learner.publish(T0)
    assert first is not None and first.population is not None
    ranks = verify(sign(first, b"k", "m1"), {"m1": b"k"}).population.risk_ranks  # type: ignore[union-attr]
    assert [len(band) for band in ranks] == [1, 100, 1, 1]  # only day-old users seen enough
    scorer = Scorer(first)
    risks = sorted(prior_risk(x) for x in day_old)
    rules = RuleBook.load()
    offered = []
    for x in day_old:
        profile = UserProfile("u", known=True, signed_up_at=T0, as_of=T0)
        vector = {**features(profile), **x}
        decide(profile, vector, scorer, reasons=[], event_time=T0, processed_at=T0)
        assert profile.churn_rank == pytest.approx(
            sum(r < profile.churn_risk for r in risks) / len(risks),
            abs=0.02,  # type: ignore[operator]
        )
        known = attributes(profile, vector)
        verdicts = rules.evaluate(
            ["decision_point"], lambda known=known: known, {}, at=0.0, user_id="u"
        )
        offered.append(any(v.rule.id == "retention-offer" for v in verdicts))
    assert 0.07 <= sum(offered) / len(offered) <= 0.13  # the riskiest tenth
    young = UserProfile("v", known=True, signed_up_at=T0, as_of=T0)
    decide(young, features(young), scorer, reasons=[], event_time=T0, processed_at=T0)
    assert young.churn_rank is None  # too few users that age yet: no offer on a guess
    restored = pickle.loads(pickle.dumps(learner))
    assert restored.publish(T0, force=True).population == first.population  # type: ignore[union-attr]
