"""The stateful steps (consent gate, identity, timers, profile) on decoded events.

1. Throughput: a simulated stream, decoded up front, through the real dataflow steps
   (``firstmile.flows.dataflow.personalize``) in Bytewax on one worker; decode is not counted.
   Twice: as file mode runs it, and with the profile updates Kafka mode sends to Redis.
2. State per user at scale: a larger stream through the same logic classes, then every
   key's snapshot pickled as Bytewax recovery would (profile + identity + timer shards),
   timed for a profile and for the learner (pickled at every epoch's end: a stall).

    .venv/bin/python -m bench.bench_profile --users 3000 --state-users 100000
"""

from __future__ import annotations

import argparse
import gc
import pickle
import resource
import time
from collections.abc import Iterator
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main
from rich.progress import Progress

from bench.drive import Driver
from bench.machine import describe
from firstmile.flows.config import load_config
from firstmile.flows.dataflow import FlowSettings, personalize
from firstmile.flows.run import flow_settings
from firstmile.flows.simulator import Simulation
from firstmile.operators.events import Event
from firstmile.operators.outputs import Output


class _Count(StatelessSinkPartition[Output]):
    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    def write_batch(self, items: list[Output]) -> None:
        self.counts[0] += len(items)


class CountSink(DynamicSink[Output]):
    def __init__(self) -> None:
        self.counts = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
        return _Count(self.counts)


def decoded(users: int, days: float, seed: int) -> Iterator[Event]:
    decoder = flow_settings(load_config(None), profile_updates="none").decoder
    for line in Simulation(users=users, days=days, seed=seed).lines():
        event = decoder(line)
        if isinstance(event, Event):
            yield event


def bench_throughput(events: list[Event], settings: FlowSettings) -> tuple[float, int]:
    """Seconds to run ``events`` through the stateful steps; the outputs they made."""
    flow = Dataflow("bench_profile")
    stream = op.input("events", flow, TestingSource(events, batch_size=1000))
    sink = CountSink()
    op.output("count", personalize(stream, settings), sink)
    gc.collect()
    started = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - started, sink.counts[0]


def bench_state(users: int, days: float, seed: int) -> dict[str, Any]:
    """Drive the flow's logic as it routes events; pickle every key's snapshot."""
    driver = Driver(flow_settings(load_config(None), profile_updates="none"))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = 0
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{users:,} users", total=None)
        for event in decoded(users, days, seed):
            count += 1
            if count % 50_000 == 0:
                progress.update(task, completed=count, description=f"{count:,} events")
            driver.feed(event)
            driver.outputs.clear()  # only the state is measured here
            driver.samples.clear()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    known = [p for p in driver.profiles.values() if p.step.profile is not None]
    started = time.perf_counter()
    sizes = sorted(len(pickle.dumps(p.snapshot())) for p in known)
    profile_s = time.perf_counter() - started
    # The learner is touched every epoch: Bytewax pickles it at every epoch's end.
    started = time.perf_counter()
    learner_bytes = len(pickle.dumps(driver.learner.snapshot()))
    learner_s = time.perf_counter() - started
    identity = sum(len(pickle.dumps(v.snapshot())) for v in driver.visitors.values())
    timer_bytes = sum(len(pickle.dumps(t.snapshot())) for t in driver.timers.values())
    n = len(known)
    return {
        "events": count,
        "users": n,
        "profile_mean": sum(sizes) / n,
        "profile_p99": sizes[int(0.99 * (n - 1))],
        "profile_max": sizes[-1],
        "identity_per_user": identity / n,
        "timers_per_user": timer_bytes / n,
        "rss_per_user": (rss_after - rss_before) * 1024 / n,
        "profile_pickle_us": profile_s / n * 1e6,
        "learner_bytes": learner_bytes,
        "learner_pickle_ms": learner_s * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3000, help="throughput stream's users")
    parser.add_argument("--state-users", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=14)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    events = list(decoded(args.users, args.days, args.seed))
    for updates, what in (
        ("none", "file mode: no store updates"),
        ("whole", "Kafka mode: store updates"),
    ):
        settings = flow_settings(load_config(None), profile_updates=updates)
        seconds, outputs = bench_throughput(events, settings)
        print(
            f"identity+timers+profile+scoring+learner, Bytewax, 1 worker, {what}: "
            f"{len(events):,} events of {args.users:,} users in {seconds:.2f} s = "
            f"{len(events) / seconds:,.0f} events/s ({outputs:,} outputs)"
        )
    if args.state_users:
        state = bench_state(args.state_users, args.days, args.seed)
        total = state["profile_mean"] + state["identity_per_user"] + state["timers_per_user"]
        print(
            f"state at {state['users']:,} users ({state['events']:,} events, {args.days:g} days):"
            f" {total:,.0f} B/user pickled = profile {state['profile_mean']:,.0f} "
            f"(p99 {state['profile_p99']:,}, max {state['profile_max']:,}) + identity "
            f"{state['identity_per_user']:,.0f} + timers {state['timers_per_user']:,.0f}; "
            f"process memory {state['rss_per_user']:,.0f} B/user"
        )
        print(
            f"at an epoch's end: a touched profile pickles in {state['profile_pickle_us']:.1f} "
            f"us; the learner ({state['learner_bytes'] / 1e6:.1f} MB) in "
            f"{state['learner_pickle_ms']:.0f} ms"
        )


if __name__ == "__main__":
    main()
