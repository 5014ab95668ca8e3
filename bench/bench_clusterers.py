"""Which River clusterer for segments: KMeans vs STREAMKMeans vs DBSTREAM on the
simulator's users (final profiles, standardized segment features, shuffled, one pass),
scored by the adjusted Rand index against the planted personas, next to scikit-learn's
batch KMeans. Why ``firstmile.online_models.segments`` uses KMeans with seeded centers.

    .venv/bin/python -m bench.bench_clusterers --users 3000
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import numpy as np
from river import cluster, preprocessing
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from bench.drive import Driver
from bench.machine import describe
from firstmile.flows.config import load_config
from firstmile.flows.run import flow_settings
from firstmile.flows.simulator import Simulation
from firstmile.online_models.segments import SEGMENT_FEATURES, SegmentLearner
from firstmile.operators.events import Event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    sim = Simulation(users=args.users, days=14, seed=args.seed)
    settings = flow_settings(load_config(None), profile_updates="none")
    driver = Driver(settings)
    for line in sim.lines():
        event = settings.decoder(line)
        if isinstance(event, Event):
            driver.feed(event)
    driver.finish()
    finals = {o.key: o.value for o in driver.outputs if o.kind == "profile" and o.final and o.value}
    users = sorted(u for u in finals if u)
    truth = [sim.persona_of(int(u.split("-")[1])) for u in users]
    rows = [{n: finals[u]["features"][n] for n in SEGMENT_FEATURES} for u in users]
    order = list(range(len(rows)))
    random.Random(args.seed).shuffle(order)

    def online(model: Any) -> tuple[float, int]:
        scaler = preprocessing.StandardScaler()
        for i in order:
            scaler.learn_one(rows[i])
        for i in order:
            model.learn_one(scaler.transform_one(rows[i]))
        labels = [model.predict_one(scaler.transform_one(r)) for r in rows]
        return adjusted_rand_score(truth, labels), len(set(labels))

    def ours() -> tuple[float, int]:
        learner = SegmentLearner(6, seed=args.seed)
        for i in order:
            learner.learn(rows[i], str(i))
        model = learner.model()
        assert model is not None
        labels = []
        for r in rows:
            z = model.scaler.z(r, model.features)
            labels.append(
                min(model.segments, key=lambda s: np.linalg.norm(np.subtract(z, s.center))).id
            )
        return adjusted_rand_score(truth, labels), len(set(labels))

    candidates = {
        "firstmile SegmentLearner (River KMeans k=6, k-means++ seeded)": ours,
        "River KMeans k=6, halflife 0.05, sigma 0.1": lambda: online(
            cluster.KMeans(n_clusters=6, halflife=0.05, sigma=0.1, seed=args.seed)
        ),
        "River KMeans k=6, defaults": lambda: online(cluster.KMeans(n_clusters=6, seed=args.seed)),
        "River STREAMKMeans k=6": lambda: online(
            cluster.STREAMKMeans(chunk_size=50, n_clusters=6, seed=args.seed)
        ),
        "River DBSTREAM threshold 1": lambda: online(cluster.DBSTREAM(clustering_threshold=1.0)),
        "River DBSTREAM threshold 2": lambda: online(cluster.DBSTREAM(clustering_threshold=2.0)),
    }
    for name, run in candidates.items():
        ari, k = run()
        print(f"{name}: ARI {ari:.3f} ({k} clusters)")
    x = np.array([[r[n] for n in SEGMENT_FEATURES] for r in rows])
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    batch = KMeans(n_clusters=6, n_init=10, random_state=args.seed).fit_predict(x)
    print(f"scikit-learn KMeans k=6 (batch reference): ARI {adjusted_rand_score(truth, batch):.3f}")


if __name__ == "__main__":
    main()
