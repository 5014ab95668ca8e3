"""Faults on real Kafka and Redis: SIGKILLs, a Redis outage and a broker restart during
one Kafka-mode run, compared with an uninterrupted file-mode run of the same stream.

Its own servers (deploy/ scripts on the ports below, their own run directory), its own
topics. The job runs as a supervisor would run it: ``firstmile run --stop-at-end`` again
after each kill or each exit on a lost server (status 3), until it reaches the end.

Reports: events lost (users whose final event count in Redis is below the reference's,
and by how many events); outputs missing and extra after dedup by id (triggers that read
no model output, and decision events of signups and decision points: what must not
depend on timing); replayed messages that differ from their first sending (same id or
user and seq, other content: ``bench.replays``); users whose newest decision on the
segments topic differs from their profile in Redis. The reference's wall time is
printed beside the faulty run's.

    .venv/bin/python -m bench.bench_faults --users 5500 --days 14 --kills 20 --outage-s 60
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.kafka_io import consume_to_end, produce
from bench.machine import describe
from bench.replays import replay_conflicts, stitched
from firstmile.flows.simulator import Simulation

ROOT = Path(__file__).resolve().parents[1]
PORTS = {
    "FIRSTMILE_KAFKA_PORT": "29092",
    "FIRSTMILE_KAFKA_CTL_PORT": "29093",
    "FIRSTMILE_REDIS_PORT": "26379",
}
MODEL_FREE = {"engaged-newcomer", "stalled-step", "first-feature-nudge", "viewed-not-used"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=5500)
    parser.add_argument("--days", type=float, default=14)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--outage-s", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / ".run" / "bench-faults")
    args = parser.parse_args()
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in PORTS.items()}}
    env["FIRSTMILE_KAFKA_RUN_DIR"] = str(args.work / "kafka")
    env["FIRSTMILE_REDIS_RUN_DIR"] = str(args.work / "redis")
    env["PYTHON"] = sys.executable
    bootstrap = f"127.0.0.1:{env['FIRSTMILE_KAFKA_PORT']}"
    redis_url = f"redis://127.0.0.1:{env['FIRSTMILE_REDIS_PORT']}/0"
    print(f"machine: {describe()}")
    for script in ("kafka/start.sh", "redis/start.sh"):
        _script(script, env)
    tag = uuid.uuid4().hex[:8]
    topics = {
        kind: f"faults-{tag}.{kind}" for kind in ("events", "segments", "triggers", "deadletter")
    }
    topic_env = {**env, **{f"FIRSTMILE_TOPIC_{k.upper()}": v for k, v in topics.items()}}
    subprocess.run(
        [sys.executable, str(ROOT / "deploy/kafka/topics.py"), "--bootstrap", bootstrap],
        env=topic_env,
        check=True,
        capture_output=True,
    )
    lines = list(Simulation(users=args.users, days=args.days, seed=args.seed).lines())
    produce(bootstrap, topics["events"], lines)
    print(f"stream: {len(lines):,} events, {args.users:,} users, {args.days:g} days")

    work = args.work / tag
    work.mkdir(parents=True, exist_ok=True)
    (work / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    started = time.monotonic()
    _firstmile("run", "--input", str(work / "events.jsonl"), "--out", str(work / "reference"))
    reference_s = time.monotonic() - started

    prefix = f"faults-{tag}"
    config = work / "firstmile.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = ["{bootstrap}"]\n[topics]\n'
        + "".join(f'{k} = "{v}"\n' for k, v in topics.items())
        + f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{prefix}"\nmax_outage_s = 600\n'
        f'[recovery]\ndir = "{work / "recovery"}"\nsnapshot_interval_s = 1\n'
        '[models]\nsigning_key = "bench-faults"\n'
    )
    rng = random.Random(args.seed)
    faults = ["kill"] * args.kills
    faults.insert(args.kills // 3, "redis")  # early: the stream must outlast every fault
    faults.insert(2 * args.kills // 3, "broker")
    log = (work / "job.log").open("ab")
    command = [sys.executable, "-m", "firstmile.flows.cli", "run", "--config", str(config)]
    command += ["--stop-at-end", "--no-progress"]

    def start() -> subprocess.Popen[bytes]:
        job_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.Popen(command, cwd=ROOT, env=job_env, stdout=log, stderr=log)

    started, exits, applied = time.monotonic(), [], []
    job = start()
    for fault in faults:
        try:
            job.wait(timeout=rng.uniform(3, 12))
        except subprocess.TimeoutExpired:
            applied.append(fault)
            if fault == "kill":
                job.send_signal(signal.SIGKILL)
                job.wait()
            elif fault == "redis":  # the job rides it out (or stops with 3: restarted)
                _script("redis/stop.sh", env)
                time.sleep(args.outage_s)  # the outage itself: its length is the test
                _script("redis/start.sh", env)
            else:
                _script("kafka/stop.sh", env)
                _script("kafka/start.sh", env)
        if job.poll() is not None:
            exits.append(job.returncode)
            if job.returncode == 0:
                break  # the stream ended before the remaining faults
            job = start()  # as a supervisor restarts it
    while True:  # then to the end, restarted if a fault still ends it
        exits.append(job.wait())
        if exits[-1] == 0:
            break
        job = start()
    faulty_s = time.monotonic() - started

    store = redis.Redis.from_url(redis_url)
    expected = {p["user_id"]: p for p in _jsonl(work / "reference" / "profiles.jsonl")}
    short = {}
    for user_id, profile in expected.items():
        raw = store.hget(f"{prefix}:profile:{user_id}", "profile")
        got = orjson.loads(raw)["events_total"] if raw else 0
        if got < profile["events_total"]:
            short[user_id] = profile["events_total"] - got
    triggers = [v for _, v in consume_to_end(bootstrap, topics["triggers"]) if v]
    decisions = consume_to_end(bootstrap, topics["segments"])
    reference = _jsonl(work / "reference" / "triggers.jsonl")
    want = {v["id"]: v["user_id"] for v in reference if v["rule_id"] in MODEL_FREE}
    reference = _jsonl(work / "reference" / "segments.jsonl")
    want |= {_decision(v): v["user_id"] for v in reference if _decision(v)}
    got_ids = {v["id"]: v["user_id"] for v in triggers if v["rule_id"] in MODEL_FREE}
    got_ids |= {_decision(v): v["user_id"] for _, v in decisions if v and _decision(v)}
    sent = [v for _, v in decisions if v] + triggers
    skip = stitched(lines)
    conflicts = replay_conflicts([m for m in sent if m["user_id"] not in skip])
    stitched_conflicts = replay_conflicts([m for m in sent if m["user_id"] in skip])
    newest: dict[str, Any] = {}
    for key, value in decisions:
        if value and key and value["seq"] >= newest.get(key.decode(), {"seq": -1})["seq"]:
            newest[key.decode()] = value
    differ = 0
    for user_id, decision in newest.items():
        raw = store.hget(f"{prefix}:profile:{user_id}", "profile")
        held = orjson.loads(raw) if raw else {}
        said = (decision["segment_id"], decision["churn_band"], decision["onboarding_path"])
        differ += said != (held.get("segment"), held.get("churn_band"), held.get("onboarding_path"))
    outage = f"a {args.outage_s:g} s Redis outage" if "redis" in applied else "no Redis outage"
    broker = "a broker restart" if "broker" in applied else "no broker restart"
    print(f"faults: {applied.count('kill')} SIGKILLs, {outage}, {broker}; job exits {exits}")
    print(f"events lost: {sum(short.values())} (users short: {len(short)})")
    missing = [want[k] for k in want.keys() - got_ids.keys()]
    extra = [got_ids[k] for k in got_ids.keys() - want.keys()]
    print(
        f"outputs missing / extra after dedup by id: {len(missing)} / {len(extra)} of "
        f"{len(want):,} (of which on users with anonymous events stitched in: "
        f"{sum(u in skip for u in missing)} / {sum(u in skip for u in extra)})"
    )
    print(
        f"replayed messages that differ from their first sending: {len(conflicts)} of "
        f"{len(sent) - len({m['id'] for m in sent}):,} replayed "
        f"(users with anonymous events stitched in: {len(stitched_conflicts)} more)"
    )
    print(f"users whose newest topic decision differs from Redis: {differ} of {len(newest):,}")
    print(f"wall: faulty Kafka run {faulty_s:.0f} s; reference file run {reference_s:.0f} s")
    for script in ("kafka/stop.sh", "redis/stop.sh"):
        _script(script, env)


def _decision(value: dict[str, Any]) -> str | None:
    reasons = set(value["reason"].split("+"))
    if reasons & {"signup", "decision_point"}:
        kinds = sorted(reasons & {"signup", "decision_point"})
        return f"{value['user_id']}|{value['event_time']}|{kinds}"
    return None


def _script(name: str, env: dict[str, str]) -> None:
    subprocess.run(["bash", str(ROOT / "deploy" / name)], env=env, check=True, capture_output=True)


def _firstmile(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "firstmile.flows.cli", *args, "--no-progress"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
