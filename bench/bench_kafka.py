"""Kafka mode beside its floor: a bare kafka-python loop that consumes the events topic
and produces one message per event to another topic (acks=all, flushed after each
polled batch, as the job's sink does), on the same broker.

    # topics, a Kafka-mode config, the stream on the events topic
    python -m bench.bench_kafka topics --bootstrap 127.0.0.1:29192 --tag b1
    python -m bench.bench_kafka config --bootstrap 127.0.0.1:29192 --tag b1 \\
        --redis redis://127.0.0.1:26579/0 --out /tmp/b1.toml
    python -m bench.bench_kafka produce --bootstrap 127.0.0.1:29192 --topic b1.events \\
        --file stream.jsonl
    # the floor of `firstmile run --config /tmp/b1.toml --stop-at-end` (time both as processes)
    python -m bench.bench_kafka pipe --bootstrap 127.0.0.1:29192 --source b1.events \\
        --sink b1.copy --stop-at-end
    # event -> decision latency at a steady rate, the job and the floor in turn
    python -m bench.bench_kafka live --bootstrap 127.0.0.1:29192 \\
        --redis redis://127.0.0.1:26579/0 --file stream.jsonl --rate 1000 --seconds 60

Latency is read from the topics: an output's broker record timestamp (stamped by the
job's producer when it sends) minus that of the event that caused it (``cause.event_id``;
the floor copies the event, so its ``messageId``), both stamped on this machine's clock.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from bench.kafka_io import produce
from bench.machine import describe

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("segments", "triggers", "deadletter")


def create_topics(bootstrap: str, tag: str, partitions: int = 4) -> dict[str, str]:
    """``{tag}.events`` (``partitions``), the job's three outputs and ``{tag}.copy``."""
    names = {kind: f"{tag}.{kind}" for kind in ("events", *OUTPUTS, "copy")}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {
                name: {
                    "num_partitions": partitions if kind == "events" else 1,
                    "replication_factor": 1,
                    "configs": {"cleanup.policy": "compact"}
                    if kind in ("segments", "triggers")
                    else {},
                }
                for kind, name in names.items()
            }
        )
    finally:
        admin.close()
    return names


def write_config(
    path: Path,
    bootstrap: str,
    tag: str,
    redis_url: str,
    recovery: Path | None,
    metrics_port: int | None = None,
    snapshot_interval_s: float | None = None,
) -> Path:
    """A Kafka-mode config on ``tag``'s topics and Redis prefix (defaults elsewhere)."""
    text = (
        f'[kafka]\nbootstrap_servers = ["{bootstrap}"]\ngroup_id = "{tag}"\n'
        "[topics]\n"
        + "".join(f'{kind} = "{tag}.{kind}"\n' for kind in ("events", *OUTPUTS))
        + f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{tag}"\n'
        + (f'[recovery]\ndir = "{recovery}"\n' if recovery is not None else "")
        + (
            f"snapshot_interval_s = {snapshot_interval_s}\n"
            if recovery is not None and snapshot_interval_s is not None
            else ""
        )
        + '[models]\nsigning_key = "bench-signing-key"\n'
        + (f"[metrics]\nport = {metrics_port}\n" if metrics_port is not None else "")
    )
    path.write_text(text)
    return path


def pipe(bootstrap: str, source: str, sink: str, stop_at_end: bool, batch: int = 500) -> int:
    """Copy ``source`` (every partition, from its start) to ``sink``, one message per
    record, keyed as it came; until the end offsets at start (``stop_at_end``) or SIGTERM.
    The number of messages copied."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=batch
    )
    parts = [TopicPartition(source, p) for p in sorted(consumer.partitions_for_topic(source))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts) if stop_at_end else None
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    copied = 0
    while not stop.is_set():
        if end is not None and all(consumer.position(tp) >= end[tp] for tp in parts):
            break
        fetched = consumer.poll(timeout_ms=50, max_records=batch)
        for tp, records in fetched.items():
            for record in records:
                if end is not None and record.offset >= end[tp]:
                    break
                producer.send(sink, value=record.value, key=record.key)
                copied += 1
        if fetched:
            producer.flush()
    producer.close()
    consumer.close()
    return copied


def user_key(line: bytes) -> bytes | None:
    """The key a product's producer would give ``line``: its user (or anonymous) id."""
    try:
        message = orjson.loads(line)
        return str(message.get("userId") or message.get("anonymousId") or "").encode() or None
    except (orjson.JSONDecodeError, AttributeError):
        return None


def loads(value: bytes | None) -> Any:
    try:
        return orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None  # the stream's malformed events (dead letters to be)


def stamped_now(line: bytes) -> bytes:
    """``line`` with its ``timestamp`` set to this moment, as a tracking SDK would send it."""
    event = loads(line)
    if not isinstance(event, dict):
        return line
    now = datetime.now(UTC)
    event["timestamp"] = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return orjson.dumps(event)


def feed(
    bootstrap: str,
    topic: str,
    lines: list[bytes],
    rate: float,
    seconds: float,
    clock: str = "stream",
) -> tuple[float, int]:
    """``lines`` onto ``topic`` at ``rate`` a second for ``seconds`` (in order, keyed by
    user; with ``clock="send"`` each stamped with the moment it is sent); (start time,
    messages sent)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    count = min(len(lines), int(rate * seconds))
    started = time.time()
    for i, line in enumerate(lines[:count]):
        delay = started + i / rate - time.time()
        if delay > 0.001:
            time.sleep(delay)
        value = stamped_now(line) if clock == "send" else line
        producer.send(topic, value=value, key=user_key(line))
    producer.flush()
    producer.close()
    return started, count


def read_topic(bootstrap: str, topic: str) -> list[tuple[int, Any]]:
    """(broker timestamp ms, decoded value) of every record of every partition now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    out: list[tuple[int, Any]] = []
    while any(consumer.position(tp) < end[tp] for tp in parts):
        for records in consumer.poll(timeout_ms=200).values():
            out.extend((r.timestamp, loads(r.value)) for r in records)
    consumer.close()
    return out


def output_count(bootstrap: str, topics: list[str]) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t)]
    total = sum(consumer.end_offsets(parts).values())
    consumer.close()
    return total


def latencies(bootstrap: str, events: str, outputs: list[str], since_ms: float) -> list[float]:
    """Seconds from each event (sent after ``since_ms``) to its first output."""
    sent: dict[str, int] = {}
    for stamp, value in read_topic(bootstrap, events):
        if isinstance(value, dict) and value.get("messageId") and stamp >= since_ms:
            sent.setdefault(value["messageId"], stamp)
    first: dict[str, int] = {}
    for topic in outputs:
        for stamp, value in read_topic(bootstrap, topic):
            if not isinstance(value, dict):
                continue
            cause = value.get("cause") or {}
            event_id = cause.get("event_id") if "cause" in value else value.get("messageId")
            if event_id in sent and stamp < first.get(event_id, sys.maxsize):
                first[event_id] = stamp
    return sorted((first[e] - sent[e]) / 1000 for e in first)


def quantiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": values[-1]}


def cpu_seconds(pid: int) -> float:
    """User + system seconds of a running process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def histogram(port: int) -> dict[float, float]:
    """The job's own end-to-end latency histogram (cumulative counts by upper bound)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("firstmile_end_to_end_latency_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def bucket_quantile(buckets: dict[float, float], q: float) -> float:
    total = buckets[float("inf")]
    return next(b for b, count in sorted(buckets.items()) if count >= q * total)


def wait_for_output(bootstrap: str, topics: list[str], at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while output_count(bootstrap, topics) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no output on {topics} within {timeout:.0f} s")
        time.sleep(0.2)


def wait_quiet(bootstrap: str, topics: list[str], quiet_s: float, timeout: float) -> None:
    """Until the outputs stop growing for ``quiet_s`` (the consumer has drained)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = output_count(bootstrap, topics)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.25)


WARM_UP = orjson.dumps(
    {
        "type": "track",
        "messageId": "bench-warm-up",
        "userId": "bench-warm-up",
        "event": "Signed Up",
        "timestamp": "2026-03-01T23:00:00Z",
    }
)


def live_run(args: argparse.Namespace, target: str, lines: list[bytes], work: Path) -> dict:
    """One live run of ``target`` ("firstmile" or "floor") on fresh topics."""
    tag = f"live-{uuid.uuid4().hex[:8]}"
    topics = create_topics(args.bootstrap, tag)
    port = 29300 + int(uuid.uuid4().int % 500)
    log = (work / f"{tag}-{target}.log").open("wb")
    if target == "firstmile":
        recovery = work / f"{tag}-rec" if args.snapshot_interval_s > 0 else None
        config = write_config(
            work / f"{tag}.toml",
            args.bootstrap,
            tag,
            args.redis,
            recovery,
            port,
            args.snapshot_interval_s,
        )
        command = [sys.executable, "-m", "firstmile.flows.cli", "run", "--config", str(config)]
        outputs = [topics[k] for k in OUTPUTS]
    else:
        command = [sys.executable, "-m", "bench.bench_kafka", "pipe", "--bootstrap"]
        command += [args.bootstrap, "--source", topics["events"], "--sink", topics["copy"]]
        outputs = [topics["copy"]]
    job = subprocess.Popen([*command, "--no-progress"] if target == "firstmile" else command,
                           stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    try:
        warm_up = stamped_now(WARM_UP) if args.clock == "send" else WARM_UP
        produce(args.bootstrap, topics["events"], [warm_up])
        wait_for_output(args.bootstrap, outputs, 1, timeout=120)
        cpu_before = cpu_seconds(job.pid)
        started, sent = feed(
            args.bootstrap, topics["events"], lines, args.rate, args.seconds, args.clock
        )
        fed_s = time.time() - started
        wait_quiet(args.bootstrap, outputs, quiet_s=3, timeout=120)
        cpu = cpu_seconds(job.pid) - cpu_before
        own = histogram(port) if target == "firstmile" else None
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=120)
        log.close()
    values = latencies(args.bootstrap, topics["events"], outputs, (started + args.skip) * 1000)
    result = {"target": target, "sent": sent, "fed_s": fed_s, "cpu_s": cpu, **quantiles(values)}
    if own:
        result["own"] = {f"p{q:.0%}"[:-1]: bucket_quantile(own, q) for q in (0.5, 0.95, 0.99)}
        result["own_n"] = own[float("inf")]
    return result


def speed(lines: list[bytes], args: argparse.Namespace) -> float:
    """How much faster than the wall clock the fed part of the file's event time runs."""
    fed = lines[: int(args.rate * args.seconds)]
    times = [
        datetime.fromisoformat(event["timestamp"]).timestamp()
        for line in (fed[0], fed[-1])
        if isinstance(event := loads(line), dict) and "timestamp" in event
    ]
    return (max(times) - min(times)) / args.seconds if len(times) == 2 else float("nan")


def live(args: argparse.Namespace) -> None:
    lines = args.file.read_bytes().splitlines()
    print(f"machine: {describe()}")
    print(
        f"live: {args.rate:,.0f} events/s for {args.seconds:.0f} s from {args.file}, "
        f"the first {args.skip:.0f} s left out; "
        + (
            f"the job snapshots every {args.snapshot_interval_s:g} s"
            if args.snapshot_interval_s > 0
            else "the job without recovery"
        )
        + (
            "; events stamped when sent (event time moves with the wall clock)"
            if args.clock == "send"
            else f"; the file's own times (event time at {speed(lines, args):,.0f}x the wall clock)"
        )
    )
    results: dict[str, list[dict]] = {"firstmile": [], "floor": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for target in results:
                result = live_run(args, target, lines, Path(tmp))
                results[target].append(result)
                print(orjson.dumps(result).decode(), flush=True)
    for target, runs in results.items():
        line = ", ".join(
            f"{q} {statistics.median(r[q] for r in runs) * 1000:.0f} ms "
            f"({min(r[q] for r in runs) * 1000:.0f}-{max(r[q] for r in runs) * 1000:.0f})"
            for q in ("p50", "p95", "p99")
        )
        cpu = statistics.median(r["cpu_s"] / r["fed_s"] for r in runs)
        print(f"{target}: {line}; {cpu:.0%} of a core; median of {len(runs)} runs (range)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    topics = commands.add_parser("topics", help="create {tag}.events/.segments/... topics")
    topics.add_argument("--partitions", type=int, default=4)
    config = commands.add_parser("config", help="write a Kafka-mode config on {tag}'s topics")
    config.add_argument("--redis", required=True)
    config.add_argument("--recovery", type=Path)
    config.add_argument("--out", type=Path, required=True)
    for command in (topics, config):
        command.add_argument("--tag", required=True)
    to_topic = commands.add_parser("produce", help="a JSONL file onto a topic, keyed by user")
    to_topic.add_argument("--topic", required=True)
    to_topic.add_argument("--file", type=Path, required=True)
    copy = commands.add_parser("pipe", help="the floor: consume one topic, produce to another")
    copy.add_argument("--source", required=True)
    copy.add_argument("--sink", required=True)
    copy.add_argument("--stop-at-end", action="store_true")
    steady = commands.add_parser("live", help="latency at a steady rate: job and floor in turn")
    steady.add_argument("--redis", required=True)
    steady.add_argument("--file", type=Path, required=True)
    steady.add_argument("--rate", type=float, default=1000.0)
    steady.add_argument("--seconds", type=float, default=60.0)
    steady.add_argument("--skip", type=float, default=10.0, help="leave out the first seconds")
    steady.add_argument("--runs", type=int, default=2)
    steady.add_argument(
        "--snapshot-interval-s",
        type=float,
        default=5.0,
        help="the job's recovery snapshot interval (0: no recovery); each epoch's end is a "
        "stall that the p99 reads",
    )
    steady.add_argument(
        "--clock",
        choices=("stream", "send"),
        default="stream",
        help="event times: the file's own (a replay: 2.5 simulated days a minute, every "
        "timer shard hears a heartbeat each simulated minute), or the moment each is sent "
        "(a live stream's clock; the users' days are squeezed into the run)",
    )
    for command in (topics, config, to_topic, copy, steady):
        command.add_argument("--bootstrap", default="127.0.0.1:19092")
    args = parser.parse_args()
    if args.command == "topics":
        print(create_topics(args.bootstrap, args.tag, args.partitions))
    elif args.command == "config":
        write_config(args.out, args.bootstrap, args.tag, args.redis, args.recovery)
    elif args.command == "produce":
        lines = args.file.read_bytes().splitlines()
        started = time.perf_counter()
        produce(args.bootstrap, args.topic, lines)
        print(f"produced {len(lines):,} messages in {time.perf_counter() - started:.1f} s")
    elif args.command == "pipe":
        started = time.perf_counter()
        copied = pipe(args.bootstrap, args.source, args.sink, args.stop_at_end)
        wall = time.perf_counter() - started
        print(f"copied {copied:,} messages in {wall:.1f} s ({copied / wall:,.0f}/s)")
    else:
        live(args)


if __name__ == "__main__":
    main()
