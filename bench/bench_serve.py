"""The decision API under load: ``firstmile serve`` (one process) over a local Redis,
next to its floor, a bare redis-py GET loop on the same keys, measured in the same run.

Clients are separate processes, each sending requests one after another on a kept-alive
connection (``http.client``); latency is per request as a client sees it.

    .venv/bin/python -m bench.bench_serve --users 10000 --seconds 10 --clients 4
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.machine import describe
from firstmile.state.profile_store import RedisProfileStore

ROOT = Path(__file__).resolve().parents[1]
REDIS_PORT = os.environ.get("FIRSTMILE_REDIS_PORT", "26479")
PREFIX = "bench-serve"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def profile(user_id: str, seq: int) -> dict[str, object]:
    return {
        "user_id": user_id,
        "seq": seq,
        "segment": "seg-3",
        "segment_label": "comes back daily, explores features",
        "segment_version": "segments-v41",
        "churn_risk": 0.08,
        "churn_band": "low",
        "onboarding_path": "short_tour",
        "experiment_arms": {"personalized-onboarding": "personalized"},
        "last_triggers": [],
        "as_of": "2026-03-02T10:00:00Z",
        "updated_at": "2026-03-02T10:00:01Z",
        "features": {f"f{i}": 0.5 for i in range(40)},  # a profile's usual bulk
    }


def api_client(port: int, users: int, seconds: float, out: multiprocessing.Queue) -> None:
    rng = random.Random(os.getpid())
    connection = http.client.HTTPConnection("127.0.0.1", port)
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        connection.request("GET", f"/v1/users/user-{rng.randrange(users)}/decision")
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        latencies.append(time.perf_counter() - started)
    out.put(latencies)


def redis_client(users: int, seconds: float, out: multiprocessing.Queue) -> None:
    rng = random.Random(os.getpid())
    client = redis.Redis(port=int(REDIS_PORT))
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        client.hget(f"{PREFIX}:profile:user-{rng.randrange(users)}", "profile")
        latencies.append(time.perf_counter() - started)
    out.put(latencies)


def load(target: object, args: tuple[object, ...], clients: int) -> tuple[float, list[float]]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=target, args=(*args, queue))  # type: ignore[arg-type]
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    latencies = [value for _ in workers for value in queue.get()]
    for worker in workers:
        worker.join()
    return len(latencies) / args[-1], sorted(latencies)  # type: ignore[operator]


def report(name: str, rate: float, latencies: list[float]) -> None:
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000
    print(f"{name}: {rate:,.0f} requests/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    env = {**os.environ, "FIRSTMILE_REDIS_PORT": REDIS_PORT}
    subprocess.run(["bash", str(ROOT / "deploy/redis/start.sh")], check=True, env=env)
    url = f"redis://127.0.0.1:{REDIS_PORT}/0"
    store = RedisProfileStore.connect(url, PREFIX)
    store.put_many([(f"user-{i}", 1, profile(f"user-{i}", 1)) for i in range(args.users)])
    store.close()
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "firstmile.toml"
        config.write_text(f'[redis]\nurl = "{url}"\nkey_prefix = "{PREFIX}"\n')
        firstmile = str(Path(sys.executable).with_name("firstmile"))
        server = subprocess.Popen(
            [firstmile, "serve", "--config", str(config), "--port", str(port)],
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.client.HTTPConnection("127.0.0.1", port).request("GET", "/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            report(
                "firstmile serve, GET /v1/users/{id}/decision",
                *load(api_client, (port, args.users, args.seconds), args.clients),
            )
            report(
                "reference: redis-py HGET of the same profiles",
                *load(redis_client, (args.users, args.seconds), args.clients),
            )
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"{args.clients} client processes, {args.seconds:g} s each; server: one process")


if __name__ == "__main__":
    main()
