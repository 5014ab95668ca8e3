"""End to end on real servers: a simulated stream produced into Kafka, the job in Kafka
mode until it has consumed it, outputs read back from Kafka and Redis, and compared with
the same stream run through ``--input``."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from bench.kafka_io import consume_to_end, produce
from bench.replays import replay_conflicts, stitched
from firstmile.flows.simulator import Simulation
from firstmile.online_models.snapshot import verify
from firstmile.operators.features import POPULATION_FEATURES
from firstmile.state.profile_store import RedisProfileStore
from tests.helpers import read_jsonl, validator, wait_for

ROOT = Path(__file__).resolve().parents[2]


def consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, Any]]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records: list[tuple[bytes | None, Any]] = []

    def drained() -> bool:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend((r.key, orjson.loads(r.value) if r.value else None) for r in batch)
        return len(records) >= expected

    wait_for(drained, timeout=60, what=f"{expected} records on {topic}")
    consumer.close()
    return records


def consume_keyed(bootstrap: str, topic: str, expected: int, schema: str) -> list[Any]:
    """An output topic's records: each valid against ``schema`` and keyed by its user."""
    check = validator(schema)
    values = []
    for key, value in consume_all(bootstrap, topic, expected):
        check(value)
        assert key == value["user_id"].encode()
        values.append(value)
    return values


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firstmile.flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def start_cli(*args: str) -> subprocess.Popen[str]:
    """``firstmile`` running in the background; stderr kept for the failure message."""
    return subprocess.Popen(
        [sys.executable, "-m", "firstmile.flows.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def write_config(
    tmp_path: Path, bootstrap: str, redis_url: str, topics: dict[str, str], batch_size: int
) -> tuple[Path, str]:
    """A Kafka-mode config on the test's own topics, Redis prefix and recovery directory."""
    config = tmp_path / "firstmile.toml"
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    config.write_text(
        f'[kafka]\nbootstrap_servers = ["{bootstrap}"]\nbatch_size = {batch_size}\n'
        "[topics]\n"
        + "".join(f'{k} = "{v}"\n' for k, v in topics.items())
        + f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{prefix}"\n'
        f'[recovery]\ndir = "{tmp_path / "recovery"}"\nsnapshot_interval_s = 0.2\n'
        '[models]\nsigning_key = "test-signing-key"\n'
    )
    return config, prefix


def run_cluster(config: Path, tmp_path: Path, *options: str) -> list[str]:
    """Kafka mode on two Bytewax processes to the end of the topic (outputs in p0/, p1/
    under ``tmp_path``); each process's log."""
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    runs = [
        start_cli(
            *options,
            "run",
            "--config",
            str(config),
            "--stop-at-end",
            "--no-progress",
            "--out",
            str(tmp_path / f"p{i}"),
            "-i",
            str(i),
            "-a",
            addresses,
        )
        for i in range(2)
    ]
    logs = []
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        logs.append(err)
    return logs


def file_run(lines: list[bytes], out: Path) -> Path:
    """The same stream through ``firstmile run --input``: the reference; its output dir."""
    stream = out.with_suffix(".jsonl")
    stream.write_bytes(b"\n".join(lines) + b"\n")
    done = run_cli("run", "--input", str(stream), "--out", str(out), "--no-progress", env={})
    assert done.returncode == 0, done.stderr
    return out


def run_to_end(config: Path, out: Path) -> dict[str, Any]:
    """Kafka mode until the events present at start are consumed; its summary."""
    done = run_cli(
        "run", "--config", str(config), "--stop-at-end", "--out", str(out), "--no-progress", env={}
    )
    assert done.returncode == 0, done.stderr
    return orjson.loads((out / "summary.json").read_bytes())  # type: ignore[no-any-return]


#: What the newest model says: which version a scorer had depends on timing, not data.
MODEL_FIELDS = (
    "segment",
    "segment_label",
    "segment_version",
    "churn_risk",
    "churn_band",
    "churn_rank",
    "onboarding_path",
)


def decision_key(record: dict[str, Any]) -> tuple[Any, ...] | None:
    """What a signup or decision-point event must agree on across runs (model-free)."""
    reasons = set(record["reason"].split("+")) & {"signup", "decision_point"}
    if not reasons:
        return None  # a segment or band change: depends on the model versions seen
    cause = record["cause"]
    return (record["user_id"], record["event_time"], cause["event_id"], sorted(reasons))


def comparable(record: dict[str, Any]) -> bytes:
    """The record without what depends on wall clock or on interleaving, as canonical JSON.

    ``seq`` counts the timers applied too, and timers superseded by a user's next event
    depend on how partitions interleave; population-learned features depend on the model
    snapshot in force. Everything else must not depend on either.
    """
    drop = ("processed_at", "updated_at", "source", "seq", "last_triggers", *MODEL_FIELDS)
    kept = {k: v for k, v in record.items() if k not in drop}
    if "features" in kept:
        kept["features"] = {
            k: v for k, v in kept["features"].items() if k not in POPULATION_FEATURES
        }
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def test_kafka_mode_matches_file_mode(
    kafka_bootstrap: str,
    redis_client: redis.Redis,
    redis_url: str,
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    lines = list(Simulation(users=150, days=5, seed=11).lines())
    produce(kafka_bootstrap, topics["events"], lines)

    config, prefix = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=250)
    kafka_summary = run_to_end(config, tmp_path / "kafka-out")
    file_out = file_run(lines, tmp_path / "file-out")

    file_summary = orjson.loads((file_out / "summary.json").read_bytes())
    for field in ("events_in", "accepted", "duplicates", "dead_letters", "users"):
        assert kafka_summary[field] == file_summary[field], field
    updates = kafka_summary["outputs"].pop("profile_update")
    for kind in ("deadletter", "profile"):
        assert kafka_summary["outputs"][kind] == file_summary["outputs"][kind], kind
    assert updates >= file_summary["users"]
    assert kafka_summary["events_in"] == len(lines)
    # Every accepted event's latency from Kafka to its decision was measured; at the end
    # nothing is left behind on any partition.
    latency = kafka_summary["end_to_end_latency_s"]
    assert latency["events"] == kafka_summary["accepted"] and 0 < latency["p50"] <= 60
    assert len(kafka_summary["consumer_lag"]) == 4
    assert set(kafka_summary["consumer_lag"].values()) == {0}
    # The group's offsets, for the usual lag tooling, are at the end too.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        parts = [TopicPartition(topics["events"], p) for p in range(4)]
        group = admin.list_group_offsets({"firstmile": parts})["firstmile"]
    finally:
        admin.close()
    ends = end_offsets(kafka_bootstrap, parts)
    assert {tp: meta.offset for tp, meta in group.items()} == ends and sum(ends.values()) > 0

    # Decision events on the topic: every signup and decision point of the file run (model
    # fields aside), keyed by user; segment/band changes depend on model timing.
    expected_segments = read_jsonl(file_out / "segments.jsonl")
    count = kafka_summary["outputs"]["segment"]
    segments = consume_keyed(kafka_bootstrap, topics["segments"], count, "segment")
    got_keys = sorted(k for v in segments if (k := decision_key(v)) is not None)
    want_keys = sorted(k for v in expected_segments if (k := decision_key(v)) is not None)
    assert got_keys == want_keys and len(want_keys) > 150

    # Path changes are on the topic, and for every user the newest decision event (the
    # highest seq) names the path Redis holds: a consumer applying them converges.
    assert any("path_changed" in v["reason"] for v in segments)
    newest: dict[str, dict[str, Any]] = {}
    for value in segments:
        held = newest.get(value["user_id"])
        if held is None or value["seq"] > held["seq"]:
            newest[value["user_id"]] = value
    store = RedisProfileStore(redis_client, prefix)
    for user_id, value in newest.items():
        stored = store.get(user_id)
        assert stored is not None and stored["onboarding_path"] == value["onboarding_path"]
        assert stored["experiment_arms"] == value["experiment_arms"]

    # Dead letters: same reasons and bytes; Kafka coordinates instead of file lines.
    expected_dead = read_jsonl(file_out / "deadletter.jsonl")
    dead = consume_all(kafka_bootstrap, topics["deadletter"], len(expected_dead))
    assert sorted((v["reason"], v["raw_b64"]) for _, v in dead) == sorted(
        (v["reason"], v["raw_b64"]) for v in expected_dead
    )
    assert all(v["source"]["topic"] == topics["events"] for _, v in dead)

    # Redis holds every known user's final profile, equal to the file run's.
    profiles = read_jsonl(file_out / "profiles.jsonl")
    assert len(profiles) == file_summary["users"] > 100
    check = validator("profile")
    for expected in profiles:
        stored = RedisProfileStore(redis_client, prefix).get(expected["user_id"])
        assert stored is not None, expected["user_id"]
        check(stored)
        assert comparable(stored) == comparable(expected)

    # Triggers on their topic: the rules that read no model output fire exactly as in the
    # file run (same ids: same cause); each user's last triggers in Redis were sent.
    count = kafka_summary["outputs"]["trigger"]
    triggers = consume_keyed(kafka_bootstrap, topics["triggers"], count, "trigger")
    model_free = {
        "engaged-newcomer",
        "stalled-step",
        "first-feature-nudge",
        "viewed-not-used",
    }
    got = sorted(v["id"] for v in triggers if v["rule_id"] in model_free)
    want = sorted(
        v["id"] for v in read_jsonl(file_out / "triggers.jsonl") if v["rule_id"] in model_free
    )
    assert got == want and len(want) > 50
    assert {v["rule_id"] for v in triggers} >= {
        "stalled-step",
        "first-feature-nudge",
        "viewed-not-used",
    }
    sent = {(v["user_id"], v["rule_id"], v["event_time"]) for v in triggers}
    stored_triggers = 0
    for expected in profiles:
        stored = RedisProfileStore(redis_client, prefix).get(expected["user_id"])
        assert stored is not None
        for last in stored["last_triggers"]:
            assert (expected["user_id"], last["rule_id"], last["at"]) in sent
            stored_triggers += 1
    assert stored_triggers > 50

    # The experiment readout from Redis, as a user asks for it: arms and outcomes depend
    # on the stream alone, so they equal the file run's.
    readout = run_cli("report", "--config", str(config), "--json", env={})
    assert readout.returncode == 0, readout.stderr
    assert orjson.loads(readout.stdout) == file_summary["experiments"]
    assert file_summary["experiments"]["personalized-onboarding"]["arms"]["control"]["users"] > 50
    table = run_cli("report", "--config", str(config), env={})
    assert "personalized-onboarding: activation (control: control)" in table.stdout

    # What a user types to look one up.
    someone = profiles[0]["user_id"]
    shown = run_cli("profile", someone, "--config", str(config), env={})
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout) == RedisProfileStore(redis_client, prefix).get(someone)
    missing = run_cli("profile", "no-such-user", "--redis", redis_url, env={})
    assert missing.returncode == 1 and "no profile for user 'no-such-user'" in missing.stderr
    down = run_cli("profile", someone, "--redis", "redis://127.0.0.1:1/0", env={})
    assert down.returncode == 2 and "cannot reach Redis" in down.stderr

    # And why: segment distances, the features behind the risk, the path rule that matched.
    why = run_cli("explain", someone, "--config", str(config), env={})
    assert why.returncode == 0, why.stderr
    stored = RedisProfileStore(redis_client, prefix).get(someone)
    assert stored is not None
    text = why.stdout
    assert f"user {someone}: profile seq {stored['seq']}" in text
    assert f"segment {stored['segment']} ({stored['segment_label']})" in text
    assert f"onboarding path {stored['onboarding_path']}" in text
    chosen = [
        line
        for line in text.splitlines()
        if ": matches " in line or "default" in line or "imposed by the experiment" in line
    ]
    assert chosen and stored["onboarding_path"] in chosen[-1]
    assert "trigger rules now" in text and "stalled-step (priority 30" in text
    assert "churn risk" in text and ("from churn-v" in text or "from prior" in text)


def test_restart_resumes_from_recovered_offsets(
    kafka_bootstrap: str, redis_url: str, topics: dict[str, str], tmp_path: Path
) -> None:
    lines = list(Simulation(users=60, days=4, seed=5).lines())
    first, second = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    config, _prefix = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=100)
    produce(kafka_bootstrap, topics["events"], first)
    assert run_to_end(config, tmp_path / "one")["events_in"] == len(first)
    produce(kafka_bootstrap, topics["events"], second)
    resumed = run_to_end(config, tmp_path / "two")
    assert resumed["events_in"] == len(second)  # nothing read twice, nothing skipped

    # State carried over too: final profiles equal one uninterrupted file run's.
    file_out = file_run(lines, tmp_path / "file")
    expected = {p["user_id"]: p["events_total"] for p in read_jsonl(file_out / "profiles.jsonl")}
    got = {p["user_id"]: p["events_total"] for p in read_jsonl(tmp_path / "two" / "profiles.jsonl")}
    assert got == expected and len(got) > 40


def test_sigkill_mid_stream_then_restart_loses_nothing(
    kafka_bootstrap: str,
    redis_client: redis.Redis,
    redis_url: str,
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    """Kill -9 three times at different points, restart from the recovery directory each
    time: final profiles (in profiles.jsonl and in Redis) equal an uninterrupted run's,
    and every user's newest decision on the topic agrees with Redis."""
    lines = list(Simulation(users=400, days=6, seed=23).lines())
    produce(kafka_bootstrap, topics["events"], lines)
    config, prefix = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=20)
    # Models early, versions often, snapshots seldom: a replay crosses versions.
    config.write_text(
        config.read_text().replace("snapshot_interval_s = 0.2", "snapshot_interval_s = 1")
        + "publish_every = 50\nsegment_warmup = 100\nchurn_min_labels = 20\n"
    )
    store = RedisProfileStore(redis_client, prefix)

    def written() -> int:
        return len(redis_client.keys(f"{prefix}:profile:*"))

    recovery = tmp_path / "recovery"
    for profiles in (50, 150, 250):
        job = start_cli("run", "--config", str(config), "--stop-at-end")
        before = committed(recovery)
        try:
            # Mid-stream, between snapshots: one taken, then more profiles written (a
            # replay goes over them), and the run goes on.
            wait_for(
                lambda j=job, e=before: committed(recovery) > e or j.poll() is not None,
                timeout=120,
                what="a run to take a snapshot",
            )
            after = max(profiles, written() + 40)
            wait_for(
                lambda n=after, j=job: written() >= n or j.poll() is not None,
                timeout=120,
                what=f"a run to write {after} profiles",
            )
            assert job.poll() is None, "the run ended before it could be killed"
            job.send_signal(signal.SIGKILL)
            job.wait(timeout=30)
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode == -signal.SIGKILL

    resumed = run_to_end(config, tmp_path / "resumed")
    assert 0 < resumed["events_in"] < len(lines)  # it went on from a snapshot, not from zero

    file_out = file_run(lines, tmp_path / "file")
    expected = {p["user_id"]: p for p in read_jsonl(file_out / "profiles.jsonl")}
    got = {p["user_id"]: p for p in read_jsonl(tmp_path / "resumed" / "profiles.jsonl")}
    assert set(got) == set(expected) and len(got) > 300
    for user_id, profile in expected.items():
        assert comparable(got[user_id]) == comparable(profile), user_id
        stored = store.get(user_id)
        assert stored is not None and comparable(stored) == comparable(profile), user_id

    # A replay sends what the first pass sent: same cause, same id, same content (each
    # position is scored with the model version in force at its event time). Not for
    # users with anonymous events before they were known: those are keyed by the
    # anonymous id, so they reach the job on another partition, and a replay may stitch
    # them in at another point of the user's own events (as a live run may).
    decisions = consume_to_end(kafka_bootstrap, topics["segments"])
    triggers = consume_to_end(kafka_bootstrap, topics["triggers"])
    skip = stitched(lines)
    messages = [v for _, v in decisions + triggers if v is not None]
    assert len(messages) > len({m["id"] for m in messages}), "no replay: the kills came too late"
    conflicts = replay_conflicts([m for m in messages if m["user_id"] not in skip])
    assert not conflicts, f"{len(conflicts)} replayed messages differ: {conflicts[:5]}"
    newest: dict[str, Any] = {}
    for key, value in decisions:
        user = key.decode() if key else ""
        if value is not None and value["seq"] >= newest.get(user, {"seq": -1})["seq"]:
            newest[user] = value
    assert len(newest) > 300
    for user_id, decision in newest.items():
        stored = store.get(user_id)
        assert stored is not None
        said = (decision["segment_id"], decision["churn_band"], decision["onboarding_path"])
        held = (stored["segment"], stored["churn_band"], stored["onboarding_path"])
        assert said == held, user_id


def end_offsets(bootstrap: str, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return dict(consumer.end_offsets(parts))
    finally:
        consumer.close()


def committed(recovery: Path) -> int:
    """The newest epoch Bytewax has committed snapshots of (0: none yet)."""
    epochs = [0]
    for part in recovery.glob("part-*.sqlite3"):
        with closing(sqlite3.connect(part)) as db:
            epochs += [epoch for (epoch,) in db.execute("SELECT commit_epoch FROM commits")]
    return max(epochs)


def test_live_timers_fire_by_the_wall_clock_for_a_quiet_user(
    kafka_bootstrap: str,
    redis_client: redis.Redis,
    redis_url: str,
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    """Live Kafka mode: a user goes quiet, no other event comes, and the session still
    ends once the wall clock passes the gap (the timers' wall-clock watermark)."""
    config, prefix = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=50)
    with config.open("a") as handle:
        handle.write("[profile]\nsession_gap_s = 2\n[timers]\nallowed_lateness_s = 5\n")

    def events(user: str) -> list[bytes]:
        now = datetime.now(UTC)
        return [
            orjson.dumps(
                {
                    "type": "track",
                    "messageId": f"{user}-{i}",
                    "userId": user,
                    "event": name,
                    "timestamp": (now + timedelta(milliseconds=10 * i)).isoformat(),
                }
            )
            for i, name in enumerate(("Signed Up", "Feature Used"))
        ]

    job = start_cli("run", "--config", str(config), "--no-progress")
    store = RedisProfileStore(redis_client, prefix)
    try:
        # Once the job is consuming (a first user shows up), events arrive as they happen.
        produce(kafka_bootstrap, topics["events"], events("warm-up"))
        wait_for(lambda: store.get("warm-up"), timeout=60, what="the job to consume")
        produce(kafka_bootstrap, topics["events"], events("live-user"))
        seen = wait_for(
            lambda: store.get("live-user"), timeout=60, what="the live user's first profile"
        )
        assert seen["events_total"] == 2
        ended = wait_for(
            lambda: (p := store.get("live-user")) is not None and not p["sessions"]["open"] and p,
            timeout=30,
            what="the session to end by the wall clock",
        )
        assert ended["sessions"] == {"count": 1, "closed": 1, "open": False, "mean_minutes": 0.0}
        assert ended["events_total"] == 2  # nothing else arrived: the clock did it
    finally:
        job.send_signal(signal.SIGTERM)
        try:
            job.wait(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
    assert job.returncode == 0, job.stderr.read() if job.stderr else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_processes_share_one_learner_through_the_redis_model_store(
    kafka_bootstrap: str,
    redis_client: redis.Redis,
    redis_url: str,
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    """Bytewax cluster mode, two processes: one learner publishes signed snapshots to
    Redis, and the scorers of both processes score with them."""
    lines = list(Simulation(users=300, days=5, seed=3).lines())
    produce(kafka_bootstrap, topics["events"], lines)
    config, prefix = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=100)
    text = config.read_text().replace(
        f'[recovery]\ndir = "{tmp_path / "recovery"}"\n', "[recovery]\n"
    )
    config.write_text(
        text + "segment_warmup = 50\nchurn_min_labels = 50\npublish_every = 50\nreserve_s = 60\n"
    )
    logs = run_cluster(config, tmp_path, "-v")

    # One learner in the cluster: only one process published.
    publishers = [log.count("published model") for log in logs]
    assert sorted(publishers)[0] == 0 and sorted(publishers)[1] > 3, publishers
    held = redis_client.get(f"{prefix}:model:snapshot")
    assert held is not None
    snapshot = verify(held, {"m1": b"test-signing-key"})
    # (churn may still be the prior here: the learned model must first beat it)
    assert snapshot.version == max(publishers) and snapshot.segments
    history = [orjson.loads(e) for e in redis_client.lrange(f"{prefix}:model:history", 0, -1)]
    assert [entry["version"] for entry in history] == list(range(1, snapshot.version + 1))
    assert history[-1]["segments"] == {
        s.id: {"label": s.label, "size": s.size} for s in snapshot.segments.segments
    }

    # Each process holds its own users, and scored them with the published models.
    users = [
        {p["user_id"] for p in read_jsonl(tmp_path / f"p{i}" / "profiles.jsonl")} for i in range(2)
    ]
    assert not users[0] & users[1] and len(users[0] | users[1]) == 300
    for i in range(2):
        decisions = read_jsonl(tmp_path / f"p{i}" / "segments.jsonl")
        learned = [d for d in decisions if d["model_versions"]["segments"] != "none"]
        assert len(learned) > 100, i


def test_an_output_the_broker_refuses_is_dead_lettered_not_a_crash_loop(
    kafka_bootstrap: str, redis_url: str, topics: dict[str, str], tmp_path: Path
) -> None:
    """A message over the broker's size limit would fail every replay of its epoch: it goes
    to the dead letter with the output's id and the reason; the batch's others go out."""
    from firstmile.flows.config import load_config
    from firstmile.operators.outputs import Output
    from firstmile.state.kafka import KafkaOutputSink

    config, _ = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=10)
    sink = KafkaOutputSink(load_config(config)).build_part("out", "kafka", None)
    huge = {"id": "a" * 32, "user_id": "u1", "payload": "x" * 2_000_000}
    small = {"id": "b" * 32, "user_id": "u2", "payload": "ok"}
    try:
        sink.write_batch([Output("trigger", "u1", huge), Output("trigger", "u2", small)])
    finally:
        sink.close()
    assert [value for _, value in consume_all(kafka_bootstrap, topics["triggers"], 1)] == [small]
    (letter,) = [value for _, value in consume_all(kafka_bootstrap, topics["deadletter"], 1)]
    validator("deadletter")(letter)
    assert letter["reason"] == "output_refused"
    assert letter["detail"].startswith(f"trigger {'a' * 32} for user u1: 20000")


def _own_redis(tmp_path: Path) -> tuple[dict[str, str], str]:
    """A Redis of the test's own (deploy/redis on a free port), to stop and start."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "FIRSTMILE_REDIS_PORT": str(port)}
    env["FIRSTMILE_REDIS_RUN_DIR"] = str(tmp_path / "redis")
    return env, f"redis://127.0.0.1:{port}/0"


def _redis_script(env: dict[str, str], script: str) -> None:
    done = subprocess.run(["bash", str(ROOT / "deploy" / "redis" / script)], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_redis_outage_is_ridden_out_and_nothing_is_lost(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path
) -> None:
    """Redis stops mid-run and comes back: the job retries (one line when the outage
    starts, one when it ends), loses nothing, and every final profile is in Redis (kept
    across the restart: the deploy script runs Redis with AOF)."""
    env, url = _own_redis(tmp_path)
    _redis_script(env, "start.sh")
    try:
        lines = list(Simulation(users=300, days=6, seed=31).lines())
        produce(kafka_bootstrap, topics["events"], lines)
        config, prefix = write_config(tmp_path, kafka_bootstrap, url, topics, batch_size=20)
        client = redis.Redis.from_url(url)
        log = tmp_path / "job.log"
        with log.open("w") as sink:
            job = subprocess.Popen(
                [sys.executable, "-m", "firstmile.flows.cli", "run", "--config", str(config),
                 "--stop-at-end", "--out", str(tmp_path / "out"), "--no-progress"],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=sink,
                stdout=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            try:
                wait_for(lambda: len(client.keys(f"{prefix}:profile:*")) >= 20, 120, "profiles")
                _redis_script(env, "stop.sh")
                wait_for(lambda: "Redis unreachable" in log.read_text(), 60, "the outage noticed")
                assert job.poll() is None, log.read_text()
                _redis_script(env, "start.sh")
                assert job.wait(timeout=300) == 0, log.read_text()
            finally:
                if job.poll() is None:
                    job.kill()
        text = log.read_text()
        assert "Redis is back after" in text and "Traceback" not in text, text
        expected = {p["user_id"]: p for p in read_jsonl(tmp_path / "out" / "profiles.jsonl")}
        store = RedisProfileStore(client, prefix)
        assert len(expected) > 250
        for user_id, profile in expected.items():
            stored = store.get(user_id)
            assert stored is not None and comparable(stored) == comparable(profile), user_id
    finally:
        _redis_script(env, "stop.sh")


def test_an_outage_past_the_bound_stops_the_job_with_one_line(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path
) -> None:
    env, url = _own_redis(tmp_path)
    _redis_script(env, "start.sh")
    try:
        produce(kafka_bootstrap, topics["events"], list(Simulation(users=200, days=4).lines()))
        config, prefix = write_config(tmp_path, kafka_bootstrap, url, topics, batch_size=20)
        with config.open("a") as handle:
            handle.write("max_outage_s = 2\n")  # the [models] table is last: move to [redis]
        text = config.read_text().replace("max_outage_s = 2\n", "")
        config.write_text(text.replace("[redis]\n", "[redis]\nmax_outage_s = 2\n"))
        client = redis.Redis.from_url(url)
        job = start_cli("run", "--config", str(config), "--stop-at-end", "--no-progress")
        try:
            wait_for(lambda: len(client.keys(f"{prefix}:profile:*")) >= 10, 120, "profiles")
            _redis_script(env, "stop.sh")
            _, stderr = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode != 0
        assert "Traceback" not in stderr, stderr
        final = [line for line in stderr.splitlines() if line.startswith("firstmile:")]
        assert len(final) == 1 and "Redis" in final[0], stderr
    finally:
        _redis_script(env, "stop.sh")


def test_firstmile_erase_forgets_a_user_and_prints_a_receipt(
    kafka_bootstrap: str,
    redis_client: redis.Redis,
    redis_url: str,
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    """The live job forgets the user (profile, topics' keys) and the command shows where."""
    config, prefix = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=50)
    lines = list(Simulation(users=40, days=3, seed=5).lines())
    produce(kafka_bootstrap, topics["events"], lines)
    store = RedisProfileStore(redis_client, prefix)
    job = start_cli("run", "--config", str(config), "--no-progress")
    try:
        wait_for(lambda: store.get("user-0000001"), timeout=120, what="user-0000001's profile")
        done = run_cli("erase", "user-0000001", "--config", str(config), "--json", env={})
        assert done.returncode == 0, done.stderr
        receipt = orjson.loads(done.stdout)
        assert receipt["complete"] and receipt["request"].startswith(topics["events"])
        stores = receipt["stores"]
        assert stores["redis"].startswith("profile removed")
        assert stores["segments topic"].startswith("tombstone at offset")
        assert stores["triggers topic"].startswith("tombstone at offset")
        assert store.get("user-0000001") is None and store.get("user-0000002") is not None
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)
