"""``firstmile publish``: a rule book published to Redis takes effect at the same point of
event time on every process of a running cluster, and every decision and trigger names
the version that made it; a bad one is refused and changes nothing."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path

import orjson
import redis

from bench.kafka_io import consume_to_end, produce
from firstmile.flows.simulator import Simulation
from firstmile.operators.playbook import PARTS, version_of
from firstmile.operators.resources import CONFIG_DIR
from tests.helpers import read_jsonl, wait_for
from tests.integration.test_kafka_e2e import run_cli, run_cluster, start_cli, write_config

SWITCH = "2026-03-04T00:00:00Z"
WELCOME = (
    '\n[[rules]]\nid = "welcome-back"\nwhen = ["timer:session_end"]\n'
    'then = { action = "welcome_tip" }\npriority = 5\nmax_fires = 1\n'
)


def _versions(output: dict) -> str:
    versions = (
        output["cause"]["model_versions"]
        if output["type"] == "trigger"
        else output["model_versions"]
    )
    return str(versions["config"])


def test_a_published_rule_book_switches_every_process_at_one_point_of_the_stream(
    kafka_bootstrap: str,
    redis_client: redis.Redis,
    redis_url: str,
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    produce(kafka_bootstrap, topics["events"], list(Simulation(users=200, days=4, seed=8).lines()))
    config, prefix = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=100)
    config.write_text(
        config.read_text().replace(f'[recovery]\ndir = "{tmp_path / "recovery"}"\n', "[recovery]\n")
    )
    rules = tmp_path / "rules.toml"
    rules.write_text((CONFIG_DIR / "rules.toml").read_text() + WELCOME)
    texts = [(CONFIG_DIR / f"{part}.toml").read_text() for part in PARTS]
    before = version_of(texts)
    after = version_of([rules.read_text(), *texts[1:]])

    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nid = "x"\nwhen = ["no_such_kind"]\nthen = { action = "a" }\n')
    refused = run_cli("publish", "--config", str(config), "--rules", str(bad), env={})
    assert refused.returncode == 2 and "no_such_kind" in refused.stderr, refused.stderr
    assert redis_client.llen(f"{prefix}:config:log") == 0

    done = run_cli(
        "publish", "--config", str(config), "--rules", str(rules), "--at", SWITCH, env={}
    )
    assert done.returncode == 0, done.stderr
    assert f"published {after}" in done.stdout
    early = run_cli("publish", "--config", str(config), "--at", "2026-03-03T00:00:00Z", env={})
    assert early.returncode == 2 and "in the order they are published" in early.stderr
    reweighted = tmp_path / "experiments.toml"
    reweighted.write_text(texts[2].replace("[0.5, 0.5]", "[0.2, 0.8]"))
    later = run_cli(
        "publish", "--config", str(config), "--rules", str(rules), "--experiments",
        str(reweighted), "--at", "2026-04-01T00:00:00Z", env={},
    )  # fmt: skip
    assert later.returncode == 0 and "re-buckets users" in later.stderr, later.stderr

    logs = run_cluster(config, tmp_path)

    switch = datetime.fromisoformat(SWITCH.replace("Z", "+00:00"))
    for i, log in enumerate(logs):
        assert f"config {after} published" in log, log
        assert "weights [0.5, 0.5] -> [0.2, 0.8] re-buckets users" in log
        outputs = read_jsonl(tmp_path / f"p{i}" / "segments.jsonl") + read_jsonl(
            tmp_path / f"p{i}" / "triggers.jsonl"
        )
        sides = {False: 0, True: 0}
        for output in outputs:
            late = datetime.fromisoformat(output["event_time"].replace("Z", "+00:00")) >= switch
            sides[late] += 1
            assert _versions(output) == (after if late else before), output
            if output.get("rule_id") == "welcome-back":
                assert late, output  # the new rule decides only from the switch on
        assert sides[False] > 50 and sides[True] > 50, sides
    welcomed = [
        t for i in range(2) for t in read_jsonl(tmp_path / f"p{i}" / "triggers.jsonl")
        if t["rule_id"] == "welcome-back"
    ]  # fmt: skip
    assert len(welcomed) > 20
    someone = welcomed[0]["user_id"]  # their profile is from after the switch
    why = run_cli("explain", someone, "--config", str(config), env={})
    assert why.returncode == 0, why.stderr
    assert why.stdout.startswith(f"config {after} (rules, paths and experiments in force at")
    assert datetime.now(UTC) > switch  # (the switch is in event time, not the wall clock)


def test_a_backtest_of_a_range_of_the_events_topic_is_the_file_backtest(
    kafka_bootstrap: str, redis_url: str, topics: dict[str, str], tmp_path: Path
) -> None:
    lines = list(Simulation(users=120, days=3, seed=4).lines())
    produce(kafka_bootstrap, topics["events"], lines)
    config, _ = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=100)
    rules = tmp_path / "rules.toml"
    rules.write_text((CONFIG_DIR / "rules.toml").read_text() + WELCOME)
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"\n".join(lines) + b"\n")
    common = ("backtest", "--config", str(config), "--rules", str(rules), "--json", "--no-progress")

    from_file = run_cli(*common, "--input", str(export), env={})
    from_topic = run_cli(*common, "--since", "2000-01-01T00:00:00Z", env={})
    before = run_cli(*common, "--since", "2000-01-01T00:00:00Z", "--until", "2001-01-01", env={})
    for done in (from_file, from_topic, before):
        assert done.returncode == 0, done.stderr
    file_report, topic_report = orjson.loads(from_file.stdout), orjson.loads(from_topic.stdout)
    assert topic_report["events"] == file_report["events"] == len(lines)

    def counts(report: dict) -> list[dict]:  # (example users depend on partitions' order)
        return [
            {k: v for k, v in r.items() if not k.startswith("examples")} for r in report["rules"]
        ]

    assert counts(topic_report) == counts(file_report)
    assert orjson.loads(before.stdout)["events"] == 0  # nothing was produced before 2001


def test_a_restarted_job_decides_with_the_version_in_force_where_it_resumes(
    kafka_bootstrap: str,
    redis_client: redis.Redis,
    redis_url: str,
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    """Killed mid-stream and restarted from its recovery snapshot, the job reads the
    published versions again: every trigger on the topic, replays included, carries the
    version in force at its event time."""
    produce(kafka_bootstrap, topics["events"], list(Simulation(users=300, days=4, seed=6).lines()))
    config, prefix = write_config(tmp_path, kafka_bootstrap, redis_url, topics, batch_size=20)
    rules = tmp_path / "rules.toml"
    rules.write_text((CONFIG_DIR / "rules.toml").read_text() + WELCOME)
    texts = [(CONFIG_DIR / f"{part}.toml").read_text() for part in PARTS]
    before, after = version_of(texts), version_of([rules.read_text(), *texts[1:]])
    done = run_cli(
        "publish", "--config", str(config), "--rules", str(rules), "--at", SWITCH, env={}
    )
    assert done.returncode == 0, done.stderr

    job = start_cli("run", "--config", str(config), "--stop-at-end")
    try:
        wait_for(
            lambda: len(redis_client.keys(f"{prefix}:profile:*")) >= 150 or job.poll() is not None,
            timeout=120,
            what="a run to write 150 profiles",
        )
        assert job.poll() is None, "the run ended before it could be killed"
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    resumed = run_cli("run", "--config", str(config), "--stop-at-end", "--no-progress", env={})
    assert resumed.returncode == 0, resumed.stderr

    switch = datetime.fromisoformat(SWITCH.replace("Z", "+00:00"))
    triggers = [value for _, value in consume_to_end(kafka_bootstrap, topics["triggers"]) if value]
    late = 0
    for trigger in triggers:
        after_switch = (
            datetime.fromisoformat(trigger["event_time"].replace("Z", "+00:00")) >= switch
        )
        late += after_switch
        assert _versions(trigger) == (after if after_switch else before), trigger
    assert late > 50 and len(triggers) - late > 50
    assert any(t["rule_id"] == "welcome-back" for t in triggers)
