"""The ``firstmile`` command: run, simulate, profile, explain, report, check-config."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from firstmile.flows import report
from firstmile.flows.config import FirstmileConfig, load_config
from firstmile.flows.readout import print_readouts
from firstmile.flows.run import ClusterOptions, check_cluster, execute, load_rules
from firstmile.flows.simulator import Simulation
from firstmile.operators.errors import ConfigError, FirstmileError, InputError, ServerError
from firstmile.operators.experiments import Experiments
from firstmile.operators.kinds import EventKinds
from firstmile.operators.paths import PathMap
from firstmile.operators.privacy import Privacy

DEFAULT_USERS = 3000
DEFAULT_DAYS = 14.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _add_simulation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulator")
    group.add_argument(
        "--users",
        type=_positive_int,
        default=DEFAULT_USERS,
        help="simulated users (default %(default)s)",
    )
    group.add_argument(
        "--days",
        type=_positive_float,
        default=DEFAULT_DAYS,
        help="days of event time (default %(default)s)",
    )
    group.add_argument("--seed", type=int, default=42, help="random seed (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="firstmile",
        description="Real-time onboarding personalization over Segment-Spec events.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run the job (default: the built-in simulator, into ./out)",
        description="Run the job. With no --input and no --config it runs the built-in "
        "simulator into ./out; with --input it reads a JSONL file (- for stdin); "
        "with --config and no --input it runs in Kafka mode (Kafka + Redis).",
    )
    run.add_argument("--input", metavar="FILE", help="JSONL file of Segment events, - for stdin")
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config; Kafka mode unless --input is given",
    )
    run.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write segments/triggers/deadletter/profiles JSONL and summary.json "
        "here (default ./out in embedded runs; none in Kafka mode)",
    )
    run.add_argument(
        "--stop-at-end",
        action="store_true",
        help="Kafka mode: stop once the offsets current at start are consumed",
    )
    run.add_argument("--no-progress", action="store_true", help="no live progress on stderr")
    cluster = run.add_argument_group("cluster (Kafka mode)")
    cluster.add_argument("--workers", type=int, default=1, help="worker threads per process")
    cluster.add_argument("-i", "--process-id", type=int, help="this process's index")
    cluster.add_argument("-a", "--addresses", help="all processes' host:port, ';'-separated")
    _add_simulation_options(run)

    simulate = commands.add_parser(
        "simulate",
        help="write the simulator's stream to JSONL",
        description="Write the built-in simulator's Segment-Spec stream as JSONL.",
    )
    simulate.add_argument("--out", required=True, metavar="FILE", help="output file, - for stdout")
    _add_simulation_options(simulate)

    profile = commands.add_parser(
        "profile",
        help="print a user's current profile from Redis",
        description="Print the current profile of USER_ID as stored in Redis (JSON).",
    )
    profile.add_argument("user_id", metavar="USER_ID", help="the product's user id")
    profile.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    profile.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML config (Redis URL and key prefix)"
    )

    readout = commands.add_parser(
        "report",
        help="experiment readout: per-arm conversion, lift, anytime-valid verdict",
        description="Read out the experiments: per arm, activation and retention, the "
        "lift over the control with a 95%% interval and a sequential (anytime-valid) "
        "verdict. From Redis (Kafka mode, live) or from a run's summary.json.",
    )
    readout.add_argument("--summary", type=Path, metavar="FILE", help="a run's summary.json")
    readout.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    readout.add_argument("--config", type=Path, metavar="FILE", help="TOML config")
    readout.add_argument("--json", action="store_true", help="print JSON instead of tables")

    explain = commands.add_parser(
        "explain",
        help="why a user has their segment, churn risk and onboarding path",
        description="Explain USER_ID's current decision from Redis: segment distances, "
        "the features behind the churn risk, which path rule matched.",
    )
    explain.add_argument("user_id", metavar="USER_ID", help="the product's user id")
    explain.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    explain.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML config (Redis, model key, paths)"
    )

    erase = commands.add_parser(
        "erase",
        help="ask the running job to forget a user; print a receipt",
        description="Send USER_ID's erasure request to the events topic (as a User Deleted "
        "event) and wait until Redis and the output topics show it; print a receipt "
        "listing each store. Exit 1 if not everything was confirmed within --wait.",
    )
    erase.add_argument("user_id", metavar="USER_ID", help="the product's user id")
    erase.add_argument("--config", type=Path, required=True, metavar="FILE", help="TOML config")
    erase.add_argument("--wait", type=float, default=60.0, metavar="S", help="seconds to wait")
    erase.add_argument("--json", action="store_true", help="print the receipt as JSON")

    check = commands.add_parser(
        "check-config",
        help="validate a config file and the data files it names",
        description="Validate the config (and FIRSTMILE_* overrides) and the event mapping.",
    )
    check.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML config (default: built-in defaults)"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    show_progress = not args.no_progress
    extra: dict[str, Any] = {}
    if args.input is None and args.config is not None:
        return _run_kafka(args, config, show_progress)
    from firstmile.state.files import JsonlSource, LinesSource

    out_dir = args.out or Path("out")
    sinks: list[Any] = []
    profile_updates = False
    if args.input is not None:
        source: Any = JsonlSource(args.input)
        mode = "file"
        extra["input"] = args.input
    else:
        # The simulated product reads each user's current path from the in-process store,
        # as a product reads Redis; written through, every change at once, so a seed
        # gives the same run.
        from firstmile.state.profile_sink import ProfileStoreSink
        from firstmile.state.profile_store import MemoryProfileStore

        store = MemoryProfileStore()

        def advisor(user_id: str) -> str | None:
            found = store.get(user_id)
            return found.get("onboarding_path") if found else None

        sim = Simulation(users=args.users, days=args.days, seed=args.seed, advisor=advisor)
        source = LinesSource("simulator", sim.lines)
        sinks.append(ProfileStoreSink(lambda: store, write_behind=False))
        config = config.model_copy(
            update={"redis": config.redis.model_copy(update={"update_every_ms": 0})}
        )
        profile_updates = True
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


def _run_kafka(args: argparse.Namespace, config: FirstmileConfig, show_progress: bool) -> int:
    from firstmile.online_models.channel import Models
    from firstmile.state import redis_client
    from firstmile.state.experiment_store import RedisExperimentStore
    from firstmile.state.kafka import KafkaEventSource, KafkaOutputSink
    from firstmile.state.model_store import RedisModelStore
    from firstmile.state.profile_sink import ProfileStoreSink
    from firstmile.state.profile_store import RedisProfileStore

    redis_settings = config.redis

    def open_store() -> RedisProfileStore:
        return RedisProfileStore.connect(
            redis_settings.url,
            redis_settings.key_prefix,
            redis_settings.profile_ttl_s,
            max_outage_s=redis_settings.max_outage_s,
        )

    model_config = config.models
    if model_config.signing_key is None:
        raise ConfigError(
            "models.signing_key",
            "required in Kafka mode: every process must share it "
            "(set it in the file or FIRSTMILE_MODELS__SIGNING_KEY)",
        )
    open_store().close()  # fail now, with a clear message, if Redis is not there
    shared = redis_client.connect(redis_settings.url, redis_settings.max_outage_s)
    model_store = RedisModelStore(shared, redis_settings.key_prefix)
    models = Models(
        model_store,
        model_config.signing_key.get_secret_value().encode("utf-8"),
        model_config.signing_key_id,
        margin=model_config.hysteresis,
        poll_s=model_config.poll_s,
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
        profile_updates=True,
        models=models,
        experiment_store=RedisExperimentStore(shared, redis_settings.key_prefix),
        show_progress=show_progress,
        out_dir=args.out,
        cluster=cluster,
        extra={"topics": config.topics.model_dump()},
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


def _stored(args: argparse.Namespace, config: FirstmileConfig) -> tuple[Any, Any] | None:
    """The user's profile and the newest model envelope in Redis; None (said) if no profile."""
    from firstmile.state.model_store import RedisModelStore
    from firstmile.state.profile_store import RedisProfileStore

    url = args.redis or config.redis.url
    store = RedisProfileStore.connect(url, config.redis.key_prefix)
    try:
        found = store.get(args.user_id)
        held = RedisModelStore(store.client, config.redis.key_prefix).latest() if found else None
    finally:
        store.close()
    if found is None:
        print(f"firstmile: no profile for user {args.user_id!r} in {url}", file=sys.stderr)
        return None
    return found, held


def _profile(args: argparse.Namespace) -> int:
    import orjson

    stored = _stored(args, load_config(args.config))
    if stored is None:
        return 1
    sys.stdout.write(orjson.dumps(stored[0], option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from firstmile.flows.explain import explain
    from firstmile.online_models.snapshot import ModelSnapshot, verify
    from firstmile.operators.errors import ModelError

    config = load_config(args.config)
    stored = _stored(args, config)
    if stored is None:
        return 1
    found, held = stored
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
    rules, experiments = load_rules(config), Experiments.load(config.experiments)
    for line in explain(found, snapshot, PathMap.load(config.paths), rules, experiments):
        print(line)
    return 0


def _report(args: argparse.Namespace) -> int:
    """The experiments' readout: from a run's summary.json, or live from Redis."""
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
    if args.json:
        sys.stdout.write(orjson.dumps(readouts, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_readouts(readouts)
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
    paths = PathMap.load(config.paths)
    privacy = config.privacy
    Privacy(privacy.policy())  # opens the geo database: a bad one fails here
    rules = load_rules(config)
    experiments = Experiments.load(config.experiments)
    where = args.config or "built-in defaults"
    print(f"config OK: {where}")  # only once everything it names has loaded
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


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now: the progress display redirects it, so a
    log line prints above the progress line instead of over it."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[_CurrentStderr()],
    )
    if not args.verbose:  # its connection chatter; firstmile says what failed, in one line
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    handlers = {
        "run": _run,
        "report": _report,
        "simulate": _simulate,
        "profile": _profile,
        "explain": _explain,
        "check-config": _check_config,
        "erase": _erase,
    }
    try:
        return handlers[args.command](args)
    except FirstmileError as exc:
        print(f"firstmile: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("firstmile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
