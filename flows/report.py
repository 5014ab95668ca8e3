"""Live progress while a run goes, and the summary when it ends (also as summary.json)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from firstmile.flows.metrics import RunCounters
from firstmile.flows.readout import print_estimates, print_readouts, readout
from firstmile.online_models.channel import Models
from firstmile.online_models.snapshot import ModelSnapshot
from firstmile.operators.errors import ModelError
from firstmile.operators.experiments import Experiments
from firstmile.state.experiment_store import ExperimentStore

PLAIN_INTERVAL_S = 5.0  # progress lines when stderr is not a terminal


def _progress_line(numbers: dict[str, Any], elapsed: float, total: int | None = None) -> str:
    """One line of progress; with the input's lines, the share done and the time left.

    >>> _progress_line({"events_in": 250, "users": 9, "dead_letters": {}}, 5.0, 1000)[-17:]
    ' 25%  ETA    15 s'
    """
    done = numbers["events_in"]
    rate = done / elapsed if elapsed > 0 else 0.0
    dead = sum(numbers["dead_letters"].values())
    line = (
        f"{done:>10,} events  {rate:>9,.0f} ev/s  "
        f"{numbers['users']:>7,} users  {dead:>6,} dead letters  {elapsed:6.1f} s"
    )
    if total and rate > 0:  # lines of the input: a batch envelope makes events run ahead
        line += f"  {min(1.0, done / total):4.0%}  ETA {max(0.0, (total - done) / rate):5.0f} s"
    return line


@contextmanager
def progress(enabled: bool, before: RunCounters, total: int | None = None) -> Iterator[None]:
    """Show events, events/s, users and dead letters on stderr until the block ends; with
    ``total`` (the input's lines), the share done and the time left."""
    if not enabled:
        yield
        return
    console = Console(stderr=True)
    started = time.monotonic()
    stop = threading.Event()

    def numbers() -> dict[str, Any]:
        return RunCounters.read().since(before)

    def refresh_live() -> None:
        while not stop.wait(0.25):
            assert live is not None
            live.update(_progress_line(numbers(), time.monotonic() - started, total))

    def refresh_plain() -> None:
        while not stop.wait(PLAIN_INTERVAL_S):
            print(
                "progress:",
                _progress_line(numbers(), time.monotonic() - started, total),
                file=sys.stderr,
                flush=True,
            )

    live = Live("starting ...", console=console, transient=True) if console.is_terminal else None
    worker = threading.Thread(target=refresh_live if live else refresh_plain, daemon=True)
    with live or nullcontext():
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join()


def build_summary(
    before: RunCounters, wall_s: float, mode: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    numbers = RunCounters.read().since(before)
    summary: dict[str, Any] = {"mode": mode, **numbers}
    summary["wall_time_s"] = round(wall_s, 3)
    summary["events_per_s"] = round(numbers["events_in"] / wall_s, 1) if wall_s > 0 else 0.0
    summary.update(extra or {})
    return summary


def models_summary(models: Models) -> dict[str, Any]:
    """The newest published models: segments with labels and sizes, churn quality."""
    try:
        snapshot = models.latest()
    except ModelError as exc:
        return {"error": str(exc)}
    return snapshot_summary(snapshot)


def snapshot_summary(snapshot: ModelSnapshot | None) -> dict[str, Any]:
    if snapshot is None:
        return {"version": 0}
    out: dict[str, Any] = {"version": snapshot.version}
    if snapshot.segments is not None:
        out["segments"] = [
            {"id": s.id, "label": s.label, "size": s.size, "description": s.description}
            for s in snapshot.segments.segments
        ]
        out["segment_features"] = _top(snapshot.segments.importance)
    churn = snapshot.churn
    out["churn"] = (
        {
            "version": churn.version,
            **churn.metrics,
            "top_features": _top(churn.importance),
            "reliability": churn.reliability,
        }
        if churn
        else {"version": "prior"}
    )
    if snapshot.policy is not None:
        policy = snapshot.policy
        out["policy"] = {
            "version": policy.version,
            "paths": policy.paths,
            "rewards": policy.rewards,
            "estimates": policy.estimates,
        }
    return out


def experiments_summary(experiments: Experiments, store: ExperimentStore) -> dict[str, Any]:
    """Each configured experiment's readout from its tally (those with users)."""
    tallies = store.all()
    return {
        experiment.key: readout(
            tallies[experiment.key], experiment.control, experiment.expected_shares()
        )
        for experiment in experiments.experiments
        if experiment.key in tallies
    }


def _top(importance: dict[str, float], n: int = 5) -> list[str]:
    return [name for name, _ in sorted(importance.items(), key=lambda kv: -kv[1])[:n]]


def write_summary(summary: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "summary.json"
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(
        title=f"firstmile run summary ({summary['mode']})", show_header=False, title_justify="left"
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("events in", f"{summary['events_in']:,}")
    table.add_row("accepted", f"{summary['accepted']:,}")
    table.add_row("duplicates dropped", f"{summary['duplicates']:,}")
    dead = summary["dead_letters"]
    table.add_row("dead letters", f"{sum(dead.values()):,}")
    for reason, count in dead.items():
        table.add_row(f"  {reason}", f"{count:,}")
    table.add_row("users", f"{summary['users']:,}")
    table.add_row("anonymous visitors", f"{summary['anonymous_visitors']:,}")
    table.add_row("  identified (stitched)", f"{summary['stitched']:,}")
    if summary["never_identified"]:
        table.add_row("  never identified", f"{summary['never_identified']:,}")
    timers = summary["timers_fired"]
    if timers:
        table.add_row("timers fired", ", ".join(f"{k} {v:,}" for k, v in timers.items()))
    if summary["erasures"]:
        table.add_row("users erased", f"{summary['erasures']:,}")
    for why, count in summary["suppressed"].items():
        table.add_row(f"events ignored: {why.replace('_', ' ')}", f"{count:,}")
    for kind, count in summary["outputs"].items():
        table.add_row(f"{kind} messages", f"{count:,}")
    for rule, counts in summary.get("triggers", {}).items():
        held = f", {counts['held_out']:,} held out" if counts.get("held_out") else ""
        table.add_row(f"  rule {rule}", f"{counts.get('sent', 0):,} sent{held}")
    models = summary.get("models") or {}
    for segment in models.get("segments", []):
        table.add_row(f"segment {segment['id']}", f"{segment['label']} ({segment['size']:,})")
    churn = models.get("churn")
    if churn and churn.get("version") != "prior":
        table.add_row(
            "churn model",
            f"{churn['version']}: ROC-AUC {churn['roc_auc']:.3f}, log-loss "
            f"{churn['log_loss']:.3f}, ECE {churn['ece']:.3f} ({churn['labels']:,.0f} labels)",
        )
    elif churn:
        table.add_row("churn model", "prior (too few matured labels yet)")
    latency = summary.get("end_to_end_latency_s")
    if latency:
        table.add_row(
            "end-to-end latency",
            f"p50 <= {latency['p50']:g} s, p99 <= {latency['p99']:g} s ({latency['events']:,})",
        )
    lag = summary.get("consumer_lag")
    if lag is not None:
        table.add_row("consumer lag", f"{sum(lag.values()):,} records")
    table.add_row("wall time", f"{summary['wall_time_s']:.1f} s")
    table.add_row("throughput", f"{summary['events_per_s']:,.0f} events/s")
    if summary.get("interrupted"):
        table.add_row("stopped early", "yes (signal): outputs cover what was read")
    if "out_dir" in summary:
        table.add_row("outputs in", str(summary["out_dir"]))
    console.print(table)
    if summary.get("experiments"):
        print_readouts(summary["experiments"], console)
    policy = (summary.get("models") or {}).get("policy")
    if policy:
        print_estimates(policy, console)
