"""What each ``firstmile`` command does, given its parsed arguments (``cli``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from firstmile.flows import report
from firstmile.flows.config import FirstmileConfig, load_config
from firstmile.flows.readout import print_estimates, print_readouts
from firstmile.flows.run import ClusterOptions, check_cluster, execute, load_playbook
from firstmile.flows.simulator import Simulation
from firstmile.operators.errors import ConfigError, InputError, ServerError
from firstmile.operators.eventtime import iso, parse_event_time, utc_now
from firstmile.operators.experiments import Experiments
from firstmile.operators.kinds import EventKinds
from firstmile.operators.privacy import Privacy
from firstmile.operators.user_step import ProfileUpdates


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    show_progress = not args.no_progress
    extra: dict[str, Any] = {}
    if args.input is None and args.config is not None:
        return _run_kafka(args, config, show_progress)
    from firstmile.state.files import JsonlSource, count_lines

    out_dir = args.out or Path("out")
    sinks: list[Any] = []
    profile_updates: ProfileUpdates = "none"
    total = None
    if args.input is not None:
        total = count_lines(args.input)
        source: Any = JsonlSource(args.input)
        mode = "file"
        extra["input"] = args.input
        if "redis" in config.model_fields_set:  # a backfill: the profiles go to Redis too
            from firstmile.state.profile_sink import ProfileStoreSink

            open_store = _redis_store(config)
            sinks.append(ProfileStoreSink(open_store, config.redis.max_backlog))
            profile_updates = "whole"
            extra["redis"] = f"{config.redis.url} (prefix {config.redis.key_prefix})"
    else:
        from firstmile.flows.run import simulated

        source, sink, config = simulated(
            config, Simulation(users=args.users, days=args.days, seed=args.seed)
        )
        sinks.append(sink)
        profile_updates = "path"
        mode = "simulator"
        extra["simulation"] = {"users": args.users, "days": args.days, "seed": args.seed}
    summary = execute(
        source,
        sinks,
        config,
        mode=mode,
        profile_updates=profile_updates,
        show_progress=show_progress,
        out_dir=out_dir,
        extra=extra,
        total=total,
    )
    report.print_summary(summary)
    return _exit_status(summary)


def _exit_status(summary: dict[str, Any], *, finite: bool = True) -> int:
    """130 if a finite run (a file, the simulator, Kafka up to the end) was stopped before
    its end (a live job stops on a signal by design: 0); 1, with a warning, if records
    came in and none was an event."""
    if summary["interrupted"] and finite:
        return 130
    read, dead = summary["events_in"], sum(summary["dead_letters"].values())
    if read and dead == read:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["dead_letters"].items()))
        print(
            f"firstmile: warning: every one of the {read:,} records was dead-lettered "
            f"({reasons}); is the input Segment Spec JSON, one message per line?",
            file=sys.stderr,
        )
        return 1
    return 0


def _redis_store(config: FirstmileConfig) -> Callable[[], Any]:
    """Opens the Redis profile store the config names; it answers now, or a clear error."""
    from firstmile.state.profile_store import RedisProfileStore

    settings = config.redis

    def open_store() -> RedisProfileStore:
        return RedisProfileStore.connect(
            settings.url,
            settings.key_prefix,
            settings.profile_ttl_s,
            max_outage_s=settings.max_outage_s,
        )

    open_store().close()  # fail now, with a clear message, if Redis is not there
    return open_store


def _run_kafka(args: argparse.Namespace, config: FirstmileConfig, show_progress: bool) -> int:
    from firstmile.flows.run import published_playbooks
    from firstmile.online_models.channel import Models
    from firstmile.state import redis_client
    from firstmile.state.experiment_store import RedisExperimentStore
    from firstmile.state.kafka import KafkaEventSource, KafkaOutputSink
    from firstmile.state.model_store import RedisModelStore
    from firstmile.state.playbook_store import PlaybookStore
    from firstmile.state.profile_sink import ProfileStoreSink

    redis_settings = config.redis

    model_config = config.models
    if model_config.signing_key is None:
        raise ConfigError(
            "models.signing_key",
            "required in Kafka mode: every process must share it "
            "(set it in the file or FIRSTMILE_MODELS__SIGNING_KEY)",
        )
    open_store = _redis_store(config)
    shared = redis_client.connect(redis_settings.url, redis_settings.max_outage_s)
    model_store = RedisModelStore(shared, redis_settings.key_prefix)
    models = Models(
        model_store,
        model_config.signing_key.get_secret_value().encode("utf-8"),
        model_config.signing_key_id,
        margin=model_config.hysteresis,
        reserve_s=model_config.reserve_s,
    )

    addresses = args.addresses.split(";") if args.addresses else None
    cluster = ClusterOptions(args.workers, args.process_id, addresses)
    check_cluster(cluster)
    summary = execute(
        KafkaEventSource(config, stop_at_end=args.stop_at_end),
        [
            KafkaOutputSink(config),
            ProfileStoreSink(open_store, redis_settings.max_backlog),
        ],
        config,
        mode="kafka",
        profile_updates="whole",
        models=models,
        experiment_store=RedisExperimentStore(shared, redis_settings.key_prefix),
        show_progress=show_progress,
        out_dir=args.out,
        cluster=cluster,
        extra={"topics": config.topics.model_dump()},
        playbooks=published_playbooks(config, PlaybookStore(shared, redis_settings.key_prefix)),
    )
    report.print_summary(summary)
    return _exit_status(summary, finite=args.stop_at_end)


def _simulate(args: argparse.Namespace) -> int:
    from firstmile.state.files import write_jsonl

    sim = Simulation(users=args.users, days=args.days, seed=args.seed)
    count = write_jsonl(Path(args.out), sim.lines())
    if args.out != "-":
        Console(stderr=True).print(
            f"wrote {count:,} events for {args.users:,} users over {args.days:g} days to {args.out}"
        )
    return 0


def _stored(args: argparse.Namespace, config: FirstmileConfig) -> tuple[Any, Any, Any] | None:
    """The user's profile, the newest model envelope and the published configs in Redis;
    None (said) if no profile."""
    from firstmile.state.model_store import RedisModelStore
    from firstmile.state.playbook_store import PlaybookStore
    from firstmile.state.profile_store import RedisProfileStore

    url = args.redis or config.redis.url
    store = RedisProfileStore.connect(url, config.redis.key_prefix)
    try:
        found = store.get(args.user_id)
        held = RedisModelStore(store.client, config.redis.key_prefix).latest() if found else None
        published = PlaybookStore(store.client, config.redis.key_prefix).since(0) if found else []
    finally:
        store.close()
    if found is None:
        print(f"firstmile: no profile for user {args.user_id!r} in {url}", file=sys.stderr)
        return None
    return found, held, published


def _profile(args: argparse.Namespace) -> int:
    import orjson

    stored = _stored(args, load_config(args.config))
    if stored is None:
        return 1
    sys.stdout.write(orjson.dumps(stored[0], option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from firstmile.flows.explain import explain
    from firstmile.flows.run import published
    from firstmile.online_models.snapshot import ModelSnapshot, verify
    from firstmile.operators.errors import ModelError
    from firstmile.operators.playbook import Playbooks

    config = load_config(args.config)
    stored = _stored(args, config)
    if stored is None:
        return 1
    found, held, entries = stored
    snapshot: ModelSnapshot | None = None
    key = config.models.signing_key
    if held is not None and key is not None:
        try:
            snapshot = verify(
                held[1], {config.models.signing_key_id: key.get_secret_value().encode()}
            )
        except ModelError as exc:
            print(f"firstmile: {exc}; explaining without the models", file=sys.stderr)
    elif held is not None:
        print(
            "firstmile: models.signing_key not set: explaining without the models", file=sys.stderr
        )
    # The rules, paths and experiments in force at the profile's time: what decided it.
    playbooks = Playbooks(load_playbook(config))
    for when, book in published(config, entries):
        if book is not None:
            playbooks.add(book, when)
    as_of = found.get("as_of")
    when = parse_event_time(as_of, now=utc_now(), max_future=None).timestamp() if as_of else 0.0
    play = playbooks.at(when)
    print(f"config {play.version} (rules, paths and experiments in force at {as_of})")
    for line in explain(found, snapshot, play.paths, play.rules, play.experiments):
        print(line)
    return 0


def _report(args: argparse.Namespace) -> int:
    """The experiments' readout: from a run's summary.json, or live from Redis."""
    if args.html is not None:
        from firstmile.flows.page import from_run, render

        if args.summary is None:
            raise InputError("--html needs --summary (a run's summary.json)")
        try:
            args.html.write_text(render(from_run(args.summary)), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {args.html}: {exc.strerror}") from exc
        print(f"wrote {args.html}")
        return 0
    config = load_config(args.config)
    experiments = Experiments.load(config.experiments)
    if args.summary is not None:
        try:
            summary = orjson.loads(Path(args.summary).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InputError(f"{args.summary}: not a run summary: {exc}") from exc
        readouts = summary.get("experiments") or {}
    else:
        import redis

        from firstmile.state.experiment_store import RedisExperimentStore

        url = args.redis or config.redis.url
        client = redis.Redis.from_url(url, socket_timeout=10)
        store = RedisExperimentStore(client, config.redis.key_prefix)
        try:
            readouts = report.experiments_summary(experiments, store)
        except ServerError as exc:
            raise ServerError(f"cannot read experiments from Redis at {url}: {exc}") from exc
    policy = (summary.get("models") or {}).get("policy") if args.summary is not None else None
    if args.json:
        body = {**readouts, **({"learned_paths": policy} if policy else {})}
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_readouts(readouts)
        if policy:
            print_estimates(policy)
    return 0


def _erase(args: argparse.Namespace) -> int:
    from firstmile.flows.erase import erase_user, receipt_json

    receipt = erase_user(load_config(args.config), args.user_id, args.wait)
    if args.json:
        print(orjson.dumps(receipt_json(receipt), option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(receipt.lines()))
    return 0 if receipt.complete else 1


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    kinds = EventKinds.load(config.events_mapping)
    privacy = config.privacy
    Privacy(privacy.policy())  # opens the geo database: a bad one fails here
    play = load_playbook(config)
    paths, rules, experiments = play.paths, play.rules, play.experiments
    where = args.config or "built-in defaults"
    print(f"config OK: {where} (rules, paths and experiments: version {play.version})")
    print(f"  events mapping: {config.events_mapping} ({len(kinds)} event names)")
    print(f"  onboarding paths: {config.paths} ({len(paths.rules)} rules, default {paths.default})")
    absences = len(rules.absences())
    print(
        f"  trigger rules: {config.rules} ({len(rules.rules)} rules, {absences} absence "
        f"patterns; triggers: {', '.join(sorted(rules.triggers))})"
    )
    for experiment in experiments.experiments:
        arms = ", ".join(
            f"{v.name}" + (f" -> {v.path}" if v.path else "") for v in experiment.variations
        )
        print(
            f"  experiment {experiment.key}: {arms}; coverage {experiment.coverage:g}"
            + ("" if experiment.active else " (inactive)")
        )
    if not experiments.experiments:
        print(f"  experiments: {config.experiments} (none)")
    print(
        f"  kafka: {','.join(config.kafka.bootstrap_servers)} topics: "
        f"{', '.join(config.topics.model_dump().values())}"
    )
    print(f"  redis: {config.redis.url}")
    pii = (
        f"pseudonymized (HMAC key id {privacy.hmac_key_id})"
        if privacy.action == "hash" and privacy.hmac_key
        else "dropped" + ("" if privacy.action == "drop" else " (no hmac_key set)")
    )
    print(
        f"  privacy: {len(privacy.pii_fields)} PII fields {pii}; consent gate: "
        f"{privacy.required_consent or 'off'}; geo: {privacy.geo_db or 'locale only'}"
    )
    models = config.models
    print(
        f"  models: {models.segments} segments, churn horizon {models.churn_horizon_days:g} d, "
        f"signing key {'set' if models.signing_key else 'not set (required in Kafka mode)'}"
    )
    timers = config.timers
    print(
        f"  timers: {timers.shards} shards, inactivity {timers.inactivity_hours} h, "
        f"idle after {timers.idle_after_days:g} days"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from firstmile.flows.serve import serve

    config = load_config(args.config)
    serve(config, args.host or config.serve.host, args.port or config.serve.port)
    return 0


def _collect(args: argparse.Namespace) -> int:
    from firstmile.flows.collect import collect

    config = load_config(args.config)
    collect(config, args.host or config.collect.host, args.port or config.collect.port)
    return 0


def _backtest(args: argparse.Namespace) -> int:
    from firstmile.flows.backtest import backtest, lines
    from firstmile.flows.run import candidate_config

    if not (args.candidate or args.rules or args.paths or args.experiments):
        raise ConfigError("--candidate", "give a candidate config or --rules/--paths/--experiments")
    config = load_config(args.config)
    candidate = candidate_config(
        config,
        load_config(args.candidate) if args.candidate else None,
        rules=args.rules,
        paths=args.paths,
        experiments=args.experiments,
    )
    window = None
    if args.since is not None:
        until = _instant("--until", args.until) if args.until else None
        window = (_instant("--since", args.since), until)
    elif args.until is not None:
        raise ConfigError("--until", "goes with --since (a range of the events topic)")
    history = args.input or f"{config.topics.events} from {args.since} to {args.until or 'now'}"
    result = backtest(
        config,
        candidate,
        history,
        window=window,
        max_share=args.max_user_share,
        show_progress=not args.no_progress,
    )
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print("\n".join(lines(result)))
    return 1 if result["gate"]["failed"] else 0


def _publish(args: argparse.Namespace) -> int:
    import time

    import redis

    from firstmile.flows.run import candidate_config, playbook_files
    from firstmile.operators.resources import read_text
    from firstmile.state.playbook_store import PlaybookStore

    config = load_config(args.config)
    chosen = candidate_config(
        config, None, rules=args.rules, paths=args.paths, experiments=args.experiments
    )
    files = playbook_files(chosen)
    texts = {part: read_text(path) for part, path in files.items()}  # read once: what is hashed
    play = load_playbook(chosen, texts)  # a bad file is refused here, before anything is written
    effective = _instant("--at", args.at) if args.at else time.time() + args.lead
    entry = {
        "version": play.version,
        "effective_at": round(effective, 3),
        "published_at": iso(utc_now()),
        "files": {part: str(path) for part, path in files.items()},
        "texts": texts,
    }
    client = redis.Redis.from_url(config.redis.url, socket_timeout=10, socket_connect_timeout=5)
    store = PlaybookStore(client, config.redis.key_prefix)
    held = store.last()
    in_force = load_playbook(config, held["texts"]) if held else load_playbook(config)
    for warning in in_force.experiments.rebucketing(play.experiments):
        print(f"firstmile: warning: {warning}", file=sys.stderr)
    position = store.append(entry)
    when = iso(datetime.fromtimestamp(effective, UTC))
    if args.json:
        shown = {k: v for k, v in entry.items() if k != "texts"} | {"position": position}
        sys.stdout.buffer.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(f"published {play.version} (config log entry {position}): in force for events "
              f"from {when} on, on every worker and process")  # fmt: skip
        for part, path in files.items():
            print(f"  {part}: {path}")
    return 0


def _instant(option: str, text: str) -> float:
    try:
        return parse_event_time(text, now=utc_now(), max_future=None).timestamp()
    except ValueError as exc:
        raise ConfigError(option, str(exc)) from None


HANDLERS = {
    "run": _run,
    "report": _report,
    "simulate": _simulate,
    "profile": _profile,
    "explain": _explain,
    "check-config": _check_config,
    "erase": _erase,
    "serve": _serve,
    "collect": _collect,
    "backtest": _backtest,
    "publish": _publish,
}
