"""Run modes: embedded (simulator or a JSONL file, in this process) and Kafka (long-running)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from bytewax.inputs import Source
from bytewax.outputs import Sink
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from firstmile.flows import metrics, report
from firstmile.flows.config import FirstmileConfig
from firstmile.flows.dataflow import FlowSettings, build_flow
from firstmile.flows.metrics import RunCounters
from firstmile.online_models.channel import Models
from firstmile.operators.decode import Decoder
from firstmile.operators.errors import ConfigError, FirstmileError, ServerError
from firstmile.operators.events import RawRecord
from firstmile.operators.kinds import EventKinds
from firstmile.operators.playbook import Playbook, Playbooks
from firstmile.operators.privacy import Privacy
from firstmile.operators.user_step import ProfileUpdates
from firstmile.state.experiment_store import ExperimentStore, MemoryExperimentStore
from firstmile.state.files import JsonlDirSink, LinesSource
from firstmile.state.playbook_store import POLL_S, PlaybookStore
from firstmile.state.profile_sink import ProfileStoreSink
from firstmile.state.profile_store import MemoryProfileStore
from firstmile.state.recovery_lock import recovery_lock
from firstmile.state.shutdown import FLOW_RUNNING, graceful_stop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterOptions:
    """Bytewax execution: threads per process, and this process's place in a cluster."""

    workers: int = 1
    process_id: int | None = None
    addresses: list[str] | None = None


def flow_settings(
    config: FirstmileConfig,
    *,
    profile_updates: ProfileUpdates,
    live: bool = False,
    models: Models | None = None,
    experiment_store: ExperimentStore | None = None,
    playbooks: Playbooks | None = None,
) -> FlowSettings:
    """The steps' settings from the config; ``live`` is Kafka mode (the clock moves timers);
    ``models`` the model channel, ``experiment_store`` where tallies go (default: in
    memory, for embedded runs) and ``playbooks`` the published configs (default: the
    config's rules, paths and experiments only)."""
    kinds = EventKinds.load(config.events_mapping)
    privacy = Privacy(config.privacy.policy())
    model_config = config.models
    return FlowSettings(
        decoder=Decoder(kinds, config.limits.decode_limits(), privacy=privacy),
        dedup_capacity=config.dedup.capacity,
        dedup_window=timedelta(seconds=config.dedup.window_s),
        profile_updates=profile_updates,
        profile=config.profile.settings(),
        identity=config.identity.settings(),
        timers=config.timers.settings(
            live=live,
            session_gap_s=config.profile.session_gap_s,
            churn_horizon_h=model_config.churn_horizon_h,
            decision_every_h=model_config.decision_every_h,
            decision_early_h=tuple(model_config.decision_early_h),
        ),
        # Embedded: the learner is in this process; its versions take force by event
        # time (``online_models.channel``), in stream order (a seed gives the same run).
        models=models or Models(margin=model_config.hysteresis, reserve_s=model_config.reserve_s),
        learner=model_config.learner(),
        rescore_every=timedelta(minutes=model_config.rescore_every_min),
        update_every=timedelta(milliseconds=config.redis.update_every_ms),
        playbooks=playbooks or Playbooks(load_playbook(config)),
        experiment_store=experiment_store or MemoryExperimentStore(),
    )


def playbook_files(config: FirstmileConfig) -> dict[str, Path]:
    return {"rules": config.rules, "paths": config.paths, "experiments": config.experiments}


def candidate_config(
    config: FirstmileConfig,
    candidate: FirstmileConfig | None,
    *,
    rules: Path | None = None,
    paths: Path | None = None,
    experiments: Path | None = None,
) -> FirstmileConfig:
    """The candidate: ``candidate``'s rules, paths and experiments (default: the current
    config's), each overridden by a file given; everything else is the current config's."""
    base = candidate or config
    chosen = {
        "rules": rules or base.rules,
        "paths": paths or base.paths,
        "experiments": experiments or base.experiments,
    }
    for name, path in chosen.items():
        if not Path(path).is_file():
            raise ConfigError(f"candidate {name}", f"file not found: {path}")
    return config.model_copy(update=chosen)


def load_playbook(config: FirstmileConfig, texts: dict[str, str] | None = None) -> Playbook:
    """The config's rules (checked against the inactivity timers it sets), paths and
    experiments; ``texts``: published contents instead of the files'."""
    hours = (*config.timers.inactivity_hours, config.models.churn_horizon_h)
    return Playbook.load(
        playbook_files(config), texts=texts, inactivity_hours=hours, traits=config.profile.traits
    )


def published(
    config: FirstmileConfig, entries: list[dict[str, Any]]
) -> list[tuple[float, Playbook | None]]:
    """Each published entry's playbook, from the time it takes effect; None (logged) for
    one that does not load here (``publish`` checked it: a different version's files)."""
    found: list[tuple[float, Playbook | None]] = []
    for entry in entries:
        try:
            book: Playbook | None = load_playbook(config, entry["texts"])
        except (FirstmileError, KeyError, TypeError) as exc:
            log.error("published config %s refused: %s", entry.get("version"), exc)
            book = None  # skipped: the version before stays in force
        found.append((float(entry.get("effective_at", 0)), book))
    return found


def published_playbooks(config: FirstmileConfig, store: PlaybookStore) -> Playbooks:
    """The config's playbook, then each version ``firstmile publish`` put in ``store``,
    read as the job runs."""

    def poll(known: int) -> list[tuple[float, Playbook | None]]:
        try:
            found = published(config, store.since(known))
        except ServerError as exc:
            log.error("%s; asking again in %.0f s", exc, POLL_S)
            return []
        for _, book in found:
            if book is not None:
                for warning in newest[0].experiments.rebucketing(book.experiments):
                    log.warning("config %s: %s", book.version, warning)
                newest[0] = book
        return found

    first = load_playbook(config)
    newest = [first]  # what the next version is compared with
    return Playbooks(first, poll, poll_s=POLL_S)


def _recovery(config: FirstmileConfig) -> tuple[RecoveryConfig | None, bool]:
    """The recovery config, and whether the run resumes (the directory was there)."""
    settings = config.recovery
    if settings.dir is None:
        return None, False
    directory = Path(settings.dir)
    resuming = directory.exists() and any(directory.glob("part-*.sqlite3"))
    if not resuming:
        directory.mkdir(parents=True, exist_ok=True)
        init_db_dir(directory, settings.partitions)
        log.info(
            "initialized recovery directory %s (%d partitions)", directory, settings.partitions
        )
    backup = timedelta(seconds=settings.backup_interval_s)
    return RecoveryConfig(str(directory), backup), resuming


def execute(
    source: Source[RawRecord],
    sinks: list[Sink[Any]],
    config: FirstmileConfig,
    *,
    mode: str,
    profile_updates: ProfileUpdates,
    models: Models | None = None,
    experiment_store: ExperimentStore | None = None,
    show_progress: bool,
    out_dir: Path | None = None,
    cluster: ClusterOptions | None = None,
    extra: dict[str, Any] | None = None,
    total: int | None = None,
    playbooks: Playbooks | None = None,
) -> dict[str, Any]:
    """Build and run the flow to its end; the run's summary (also written to ``out_dir``).
    ``total``: the input's lines, when known (progress shows the time left)."""
    # A bad mapping or geo database fails here, before any output is touched.
    settings = flow_settings(
        config,
        profile_updates=profile_updates,
        live=mode == "kafka",
        models=models,
        experiment_store=experiment_store,
        playbooks=playbooks,
    )
    partition_keys = getattr(source, "partition_keys", None)  # multi-partition sources
    if partition_keys is not None:
        settings = replace(settings, source_partitions=tuple(partition_keys()))
    if out_dir is not None:
        JsonlDirSink.prepare(out_dir)
        sinks = [*sinks, JsonlDirSink(out_dir)]
    flow = build_flow(source, sinks, settings)
    if config.metrics.port is not None:
        metrics.serve(config.metrics.port, config.metrics.host)
    cluster = cluster or ClusterOptions()
    recovery, resuming = _recovery(config)
    locked: AbstractContextManager[None] = (
        recovery_lock(Path(recovery.db_dir), cluster.process_id or 0) if recovery else nullcontext()
    )
    before = RunCounters.read()
    started = time.monotonic()
    with locked, graceful_stop() as stop, report.progress(show_progress, before, total):
        # A replay scores with the versions the first pass had (``online_models.channel``).
        settings.models.begin(resuming=resuming, owner=not cluster.process_id)
        FLOW_RUNNING.set()
        # Everything loaded so far (the libraries, the config, the models) lives as long as
        # the job: out of the collector's reach, a full collection no longer walks it.
        # Full collections had stalled the flow up to 176 ms (336k events, ~130k objects
        # frozen here); 70 ms with them frozen. The same for what survives each full
        # collection while the job runs (``_freeze_survivors``).
        gc.collect()
        gc.freeze()
        gc.callbacks.append(_freeze_survivors)
        try:
            cli_main(
                flow,
                workers_per_process=cluster.workers,
                process_id=cluster.process_id,
                addresses=cluster.addresses,
                epoch_interval=timedelta(seconds=config.recovery.snapshot_interval_s),
                recovery_config=recovery,
            )
        finally:
            FLOW_RUNNING.clear()
            gc.callbacks.remove(_freeze_survivors)
            gc.unfreeze()  # a caller running jobs in turn (tests, benches) collects again
    summary = report.build_summary(before, time.monotonic() - started, mode, extra)
    summary["models"] = report.models_summary(settings.models)
    summary["experiments"] = report.experiments_summary(
        settings.playbooks.latest.experiments, settings.experiment_store
    )
    summary["interrupted"] = stop.is_set()
    if mode == "kafka":
        summary["end_to_end_latency_s"] = metrics.latency_quantiles()
        summary["consumer_lag"] = metrics.consumer_lag()
    if out_dir is not None:
        summary["out_dir"] = str(out_dir)
        report.write_summary(summary, out_dir)
    return summary


class Reactive(Protocol):
    """A simulated product that listens: each user asks ``advisor`` for their onboarding
    path when a session comes due (the built-in simulator; the bench's generators)."""

    advisor: Callable[[str], str | None] | None

    def lines(self) -> Iterator[bytes]: ...


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    """After a full collection, freeze what survived it: the next one walks only what came
    since. Full collections in the flow freed nothing (22 of them over 336k events) but
    walked every profile and held decision each time, a stall of the flow that grows
    with the users (up to 77 ms at 3,000; 12 ms frozen). Cycles that die among frozen
    objects are not freed until the job ends; young ones are, as before."""
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def simulated(
    config: FirstmileConfig, sim: Reactive
) -> tuple[Source[RawRecord], Sink[Any], FirstmileConfig]:
    """A simulated product's stream as a source, the sink it reads each
    user's path from (an in-process store, as a product reads Redis; written through at
    every change, so a seed gives the same run: run it with ``profile_updates="path"``),
    and the config for it."""
    store = MemoryProfileStore()

    def advisor(user_id: str) -> str | None:
        found = store.get(user_id)
        return found.get("onboarding_path") if found else None

    sim.advisor = advisor
    config = config.model_copy(
        update={"redis": config.redis.model_copy(update={"update_every_ms": 0})}
    )
    return (
        LinesSource("simulator", sim.lines),
        ProfileStoreSink(lambda: store, write_behind=False),
        config,
    )


def check_cluster(cluster: ClusterOptions) -> None:
    if (cluster.process_id is None) != (cluster.addresses is None):
        raise ConfigError("--process-id/--addresses", "give both or neither")
    if (
        cluster.addresses is not None
        and cluster.process_id is not None
        and not (0 <= cluster.process_id < len(cluster.addresses))
    ):
        raise ConfigError("--process-id", f"must be below the {len(cluster.addresses)} addresses")
