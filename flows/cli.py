"""The ``firstmile`` command: its arguments and the entry point. The commands themselves
(``commands``) are imported only once the arguments parse: ``firstmile --help`` and a
mistyped option answer without loading the job's libraries."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

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


def _add_server(
    commands: Any, name: str, summary: str, description: str, reads: str, port: int
) -> None:
    """A command that runs an HTTP server: its config, address and port."""
    server = commands.add_parser(name, help=summary, description=description)
    server.add_argument("--config", type=Path, metavar="FILE", help=f"TOML config ({reads})")
    server.add_argument("--host", help=f"address to listen on (default: [{name}] host, 127.0.0.1)")
    server.add_argument("--port", type=int, help=f"port (default: [{name}] port, {port})")


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
    readout.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write the report page (segments, paths, triggers, experiments, calibration; "
        "needs --summary)",
    )

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

    _add_server(
        commands,
        "serve",
        "serve decisions to the app over HTTP (reads Redis)",
        "The decision API: GET /v1/users/{id}/decision and .../profile, OFREP flags, "
        "/healthz, /readyz, /metrics; reads the profiles the job keeps in Redis.",
        "Redis, API keys",
        8080,
    )
    _add_server(
        commands,
        "collect",
        "take events from Segment SDKs (HTTP Tracking API) into Kafka",
        "Segment's HTTP Tracking API (/v1/track, identify, page, screen, group, "
        "alias, batch, import) in front of the events topic; answers once Kafka acked.",
        "Kafka, write keys",
        8081,
    )

    backtest = commands.add_parser(
        "backtest",
        help="what a rule, path or experiment change would have done on a history",
        description="Replay a JSONL history through the current config and a candidate "
        "(--candidate, or --rules/--paths/--experiments files) in one pass; report triggers "
        "added and removed per rule, users whose path or experiment arm would change, rules "
        "that never fire or fire for nearly everyone, and both experiment readouts. Exit 1 "
        "when --max-user-share is given and a candidate rule fires for more users than that.",
    )
    history = backtest.add_mutually_exclusive_group(required=True)
    history.add_argument("--input", metavar="FILE", help="JSONL history")
    history.add_argument(
        "--since",
        metavar="TIME",
        help="or the config's events topic from this time (ISO-8601, the broker's timestamps) ...",
    )
    backtest.add_argument("--until", metavar="TIME", help="... to this time (default: now)")
    backtest.add_argument("--config", type=Path, metavar="FILE", help="current TOML config")
    backtest.add_argument(
        "--candidate",
        type=Path,
        metavar="FILE",
        help="candidate TOML config (its rules, paths and experiments files are what is compared)",
    )
    backtest.add_argument("--rules", type=Path, metavar="FILE", help="candidate rules.toml")
    backtest.add_argument("--paths", type=Path, metavar="FILE", help="candidate paths.toml")
    backtest.add_argument(
        "--experiments", type=Path, metavar="FILE", help="candidate experiments.toml"
    )
    backtest.add_argument(
        "--max-user-share",
        type=_positive_float,
        metavar="PCT",
        help="fail (exit 1) if a candidate rule fires for more than PCT %% of users",
    )
    backtest.add_argument("--json", action="store_true", help="print the report as JSON")
    backtest.add_argument("--no-progress", action="store_true", help="no live progress")
    publish = commands.add_parser(
        "publish",
        help="publish rules, paths and experiments to the running job (hot reload)",
        description="Validate the config's rules, paths and experiments (or the --rules, "
        "--paths, --experiments files given) as check-config does, version them by content "
        "and store them in Redis, where the running job reads them. They take effect for "
        "events from --at on (event time; default: now + --lead), at the same point of the "
        "stream on every worker and process. A file that does not load is refused (exit 2) "
        "and nothing is published.",
    )
    publish.add_argument("--config", type=Path, metavar="FILE", help="TOML config")
    publish.add_argument("--rules", type=Path, metavar="FILE", help="rules.toml to publish")
    publish.add_argument("--paths", type=Path, metavar="FILE", help="paths.toml to publish")
    publish.add_argument(
        "--experiments", type=Path, metavar="FILE", help="experiments.toml to publish"
    )
    publish.add_argument("--at", metavar="TIME", help="ISO-8601 event time it takes effect")
    publish.add_argument(
        "--lead",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="without --at: take effect this many seconds from now (default %(default)s)",
    )
    publish.add_argument("--json", action="store_true", help="print what was published as JSON")
    check = commands.add_parser(
        "check-config",
        help="validate a config file and the data files it names",
        description="Validate the config (and FIRSTMILE_* overrides) and the event mapping.",
    )
    check.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML config (default: built-in defaults)"
    )
    return parser


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
    from firstmile.flows import commands  # here, not above: see the module's docstring
    from firstmile.operators.errors import FirstmileError

    try:
        return commands.HANDLERS[args.command](args)
    except FirstmileError as exc:
        print(f"firstmile: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("firstmile: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`| head`): no traceback, and none at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
