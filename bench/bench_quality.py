"""Model quality on simulator streams with planted behaviours, next to batch references
fitted after the fact on the same data (scikit-learn, a bench-only dependency).

- Segments: adjusted Rand index of each user's final segment against the planted
  persona; reference: scikit-learn KMeans (same k, 10 restarts) on the users' final
  standardized segment features.
- Churn: ROC-AUC of the risk firstmile knew 48 h after signup (its latest decision
  point by then), for users whose next 7 days are in the stream; label: no activity in
  those 7 days. Reference: gradient boosting on the same features at the same moment,
  5-fold cross-validated predictions.

    .venv/bin/python -m bench.bench_quality --users 3000 --days 14
"""

from __future__ import annotations

import argparse
import bisect
import time
from collections import defaultdict
from datetime import datetime, timedelta

import numpy as np
from sklearn.cluster import KMeans
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.model_selection import cross_val_predict

from bench.drive import Driver
from bench.machine import describe
from flows.config import load_config
from flows.run import flow_settings
from flows.simulator import Simulation
from online_models.channel import Models
from online_models.churn import CHURN_FEATURES
from online_models.segments import SEGMENT_FEATURES
from operators.events import Event
from operators.eventtime import iso

HORIZON = timedelta(days=7)
KNOWN_AT = timedelta(hours=48)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=float, default=14)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--hysteresis", type=float, default=None, help="override the config's")
    args = parser.parse_args()
    print(f"machine: {describe()}")
    sim = Simulation(users=args.users, days=args.days, seed=args.seed)
    # Scorers look for a new model version on every call: the run is deterministic.
    config = load_config(None)
    margin = config.models.hysteresis if args.hysteresis is None else args.hysteresis
    settings = flow_settings(config, profile_updates=False, models=Models(poll_s=0, margin=margin))
    driver = Driver(settings)
    active: dict[str, list[float]] = defaultdict(list)
    end = float("-inf")
    started = time.perf_counter()
    for line in sim.lines():
        event = settings.decoder(line)
        if not isinstance(event, Event):
            continue
        driver.feed(event)
        if event.user_id:
            active[event.user_id].append(event.timestamp.timestamp())
        end = max(end, event.timestamp.timestamp())
    driver.finish()
    print(
        f"stream: {args.users:,} users, {args.days:g} days, {time.perf_counter() - started:.0f} s"
    )

    finals = {o.key: o.value for o in driver.outputs if o.kind == "profile" and o.final and o.value}
    users = sorted(u for u in finals if u is not None)
    truth = [sim.persona_of(int(u.split("-")[1])) for u in users]
    ours = [finals[u]["segment"] for u in users]
    x = np.array([[finals[u]["features"][n] for n in SEGMENT_FEATURES] for u in users])
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    k = settings.learner.segments
    batch = KMeans(n_clusters=k, n_init=10, random_state=args.seed).fit_predict(x)
    ari, ari_batch = adjusted_rand_score(truth, ours), adjusted_rand_score(truth, batch)
    print(
        f"segments: ARI {ari:.3f} (online, {len(set(ours))} segments) vs {ari_batch:.3f} "
        f"(batch KMeans k={k}) = {ari / ari_batch:.3f}x (target >= 0.90x)"
    )

    risks: dict[tuple[str, str], float] = {}
    for output in driver.outputs:
        value = output.value
        if output.kind == "segment" and value and "decision_point" in value["reason"]:
            risks[(value["user_id"], value["event_time"])] = value["churn_risk"]
    known: dict[str, tuple[datetime, dict[str, float], float]] = {}
    for sample in driver.samples:
        if sample.label is not None:
            continue
        signed_up = finals.get(sample.user_id, {}).get("signed_up_at")
        if signed_up is None:
            continue
        cutoff = _utc(signed_up) + KNOWN_AT
        held = known.get(sample.user_id)
        if sample.at <= cutoff and (held is None or sample.at > held[0]):
            risk = risks.get((sample.user_id, iso(sample.at)))
            if risk is not None:
                known[sample.user_id] = (sample.at, sample.features, risk)
    rows, labels, scores = [], [], []
    for user, (_at, features, risk) in sorted(known.items()):
        t48 = _utc(finals[user]["signed_up_at"]) + KNOWN_AT
        if (t48 + HORIZON).timestamp() > end:
            continue  # its outcome is not in the stream
        times = sorted(active[user])
        i = bisect.bisect_right(times, t48.timestamp())
        churned = not (i < len(times) and times[i] <= (t48 + HORIZON).timestamp())
        rows.append([features[n] for n in CHURN_FEATURES])
        labels.append(churned)
        scores.append(risk)
    reference = GradientBoostingClassifier(random_state=args.seed)
    batch_scores = cross_val_predict(
        reference, np.array(rows), np.array(labels), cv=5, method="predict_proba"
    )[:, 1]
    auc, auc_batch = roc_auc_score(labels, scores), roc_auc_score(labels, batch_scores)
    print(
        f"churn risk known 48 h after signup: ROC-AUC {auc:.3f} (online, {len(labels):,} users, "
        f"{sum(labels) / len(labels):.0%} churned) vs {auc_batch:.3f} (batch gradient "
        f"boosting, 5-fold) = {auc / auc_batch:.3f}x (target >= 0.97x)"
    )


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


if __name__ == "__main__":
    main()
