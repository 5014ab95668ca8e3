"""The command a user runs, timed as a whole process (CPU and wall), beside its floor in
the same run, in turn, so a noisy machine moves both:

- the default ``firstmile run`` (the built-in simulator) next to a bare Bytewax
  passthrough of the same simulated stream (decode with orjson, a sink that drops it);
- ``firstmile run --input FILE`` next to a bare Bytewax job over the same file: orjson
  decode, key by user, one stateful counter per user (the floor of any keyed job).
  ``--events N`` writes the file first with ``firstmile simulate`` (about N events).

    .venv/bin/python -m bench.bench_command --runs 3
    .venv/bin/python -m bench.bench_command --input /tmp/stream.jsonl --events 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import describe

#: The floor of the default run: any Bytewax job over this stream (simulator included).
PASSTHROUGH = """
import orjson, bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from firstmile.flows.simulator import Simulation
def decode(line):
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
flow = Dataflow("passthrough")
lines = op.input("in", flow, TestingSource(Simulation(users=3000, days=14, seed=42).lines(), 500))
dropped = op.filter("drop", op.map("decode", lines, decode), lambda _: False)
op.output("out", dropped, TestingSink([]))
run_main(flow)
"""

#: The floor of an --input run: read the file, decode, key by user, count per user.
KEYED = """
import sys, orjson, bytewax.operators as op
from bytewax.connectors.files import FileSource
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
def key(line):
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "bad"
    return str(event.get("userId") or event.get("anonymousId") or "none")
def count(seen, _):
    seen = (seen or 0) + 1
    return seen, seen
flow = Dataflow("keyed")
lines = op.input("in", flow, FileSource(sys.argv[1], batch_size=500))
counts = op.stateful_map("count", op.key_on("user", lines, key), count)
op.output("out", op.filter("drop", counts, lambda _: False), TestingSink([]))
run_main(flow)
"""


def timed(command: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of ``command``, children included."""
    before = os.times()
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--input", type=Path, help="time `firstmile run --input` on this file")
    parser.add_argument("--events", type=int, help="write --input first: about N events")
    args = parser.parse_args()
    print(f"machine: {describe()}")
    firstmile = str(Path(sys.executable).with_name("firstmile"))
    with tempfile.TemporaryDirectory() as out:
        if args.input is None:
            commands = {
                "firstmile run": [firstmile, "run", "--no-progress", "--out", out],
                "bare passthrough": [sys.executable, "-c", PASSTHROUGH],
            }
        else:
            if args.events:
                users = max(10, args.events // 110)  # the simulator: ~110 events a user
                subprocess.run(
                    [firstmile, "simulate", "--users", str(users), "--out", str(args.input)],
                    check=True,
                )
            events = sum(1 for _ in args.input.open("rb"))
            print(f"input: {args.input} ({events:,} lines)")
            commands = {
                "firstmile run --input": [
                    *(firstmile, "run", "--input", str(args.input)),
                    *("--no-progress", "--out", out),
                ],
                "bare keyed count": [sys.executable, "-c", KEYED, str(args.input)],
            }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name].append(timed(command))
    (ours, ours_runs), (floor, floor_runs) = times.items()
    for name, runs in times.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{name}: median {cpu:.1f} s CPU, {wall:.1f} s wall ({len(runs)} runs)")
    cpu_ratio = statistics.median(c for c, _ in floor_runs) / statistics.median(
        c for c, _ in ours_runs
    )
    print(f"{ours} runs at {cpu_ratio:.1%} of the {floor}'s speed (CPU time)")


if __name__ == "__main__":
    main()
