"""Throughput of decode+validate+normalize (one core, no dataflow) and of a whole
``firstmile run --input`` on a simulated stream.

    .venv/bin/python -m bench.bench_ingest --events 100000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import orjson

from bench.machine import describe
from firstmile.flows.simulator import Simulation
from firstmile.operators.decode import default_decoder


def stream(events: int, seed: int) -> list[bytes]:
    users = max(1, events // 100)
    lines = list(islice(Simulation(users=users, days=14, seed=seed).lines(), events))
    while len(lines) < events:  # a short simulation: top up with a larger one
        users *= 2
        lines = list(islice(Simulation(users=users, days=14, seed=seed).lines(), events))
    return lines


def bench_decode(lines: list[bytes], repeats: int) -> float:
    decode = default_decoder()
    for line in lines[:1000]:
        decode(line)  # warm the caches (country, user agents)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for line in lines:
            decode(line)
        best = min(best, time.perf_counter() - started)
    return len(lines) / best


def bench_run(lines: list[bytes]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "firstmile.flows.cli",
                "run",
                "--input",
                str(path),
                "--out",
                str(Path(tmp) / "out"),
                "--no-progress",
            ],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - started
        summary = orjson.loads((Path(tmp) / "out" / "summary.json").read_bytes())
    return {"process_wall_s": wall, "flow_events_per_s": summary["events_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    lines = stream(args.events, args.seed)
    print(f"machine: {describe()}")
    print(
        f"stream: {len(lines):,} simulated events, mean {sum(map(len, lines)) / len(lines):.0f} B"
    )
    rate = bench_decode(lines, args.repeats)
    print(f"decode+validate+normalize: {rate:,.0f} events/s (best of {args.repeats}, one core)")
    run = bench_run(lines)
    print(
        f"firstmile run --input: {run['flow_events_per_s']:,.0f} events/s in the flow, "
        f"{len(lines) / run['process_wall_s']:,.0f} events/s including start-up "
        f"({run['process_wall_s']:.1f} s)"
    )


if __name__ == "__main__":
    main()
