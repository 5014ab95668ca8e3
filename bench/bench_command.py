"""The command a user runs, timed as a whole process, beside its floor: a bare Bytewax
passthrough of the same simulated stream (decode with orjson, then a sink that drops
everything), in turn, in the same run, so a noisy machine moves both.

    .venv/bin/python -m bench.bench_command --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import describe

#: The floor: what any Bytewax job over this stream costs (the simulator included).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory() as out:
        commands = {
            "firstmile run": [
                str(Path(sys.executable).with_name("firstmile")),
                "run",
                "--no-progress",
                "--out",
                out,
            ],
            "bare passthrough": [sys.executable, "-c", PASSTHROUGH],
        }
        walls: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                started = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                walls[name].append(time.perf_counter() - started)
    run, floor = (statistics.median(walls[name]) for name in commands)
    for name, times in walls.items():
        print(f"{name}: median {statistics.median(times):.1f} s wall ({len(times)} runs)")
    print(f"firstmile run / passthrough: {run / floor:.2f}x")


if __name__ == "__main__":
    main()
