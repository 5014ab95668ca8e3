"""The ``firstmile`` command as a user types it (subprocesses, no servers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from firstmile.operators.decode import decode
from firstmile.operators.events import DeadLetter, Event
from tests.helpers import read_jsonl, validator, wait_for

FIRSTMILE = [sys.executable, "-m", "firstmile.flows.cli"]
ROOT = Path(__file__).resolve().parents[1]


def firstmile(
    *args: str,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FIRSTMILE, *args],
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "stream.jsonl"
    done = firstmile("simulate", "--users", "120", "--days", "6", "--seed", "9", "--out", str(path))
    assert done.returncode == 0, done.stderr
    return path


def test_simulate_is_reproducible(stream: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.jsonl"
    done = firstmile(
        "simulate", "--users", "120", "--days", "6", "--seed", "9", "--out", str(again)
    )
    assert done.returncode == 0
    assert again.read_bytes() == stream.read_bytes()
    assert "wrote" in done.stderr


def test_run_input_writes_valid_outputs_that_match_the_input(stream: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = firstmile("run", "--input", str(stream), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "firstmile run summary" in done.stdout

    files = {
        name: read_jsonl(out / f"{name}.jsonl")
        for name in ("segments", "triggers", "deadletter", "profiles")
    }
    for name, schema in (
        ("segments", "segment"),
        ("triggers", "trigger"),
        ("deadletter", "deadletter"),
        ("profiles", "profile"),
    ):
        check = validator(schema)
        for record in files[name]:
            check(record)

    # An independent reading of the same input: decode, stitch anonymous ids to the user
    # they identify as (the simulator stays far below the buffer caps), dedup per user.
    lines = [line for line in stream.read_bytes().splitlines() if line.strip()]
    results = [decode(line) for line in lines]
    dead = [r for r in results if isinstance(r, DeadLetter)]
    events = [r for r in results if isinstance(r, Event)]
    owner = {e.anonymous_id: e.user_id for e in events if e.user_id and e.anonymous_id}
    seen: dict[str, set[str]] = defaultdict(set)
    duplicates = never_identified = 0
    for event in events:
        user = event.user_id or owner.get(event.anonymous_id)
        if user is None:
            never_identified += 1
            continue
        if event.message_id in seen[user]:
            duplicates += 1
        seen[user].add(event.message_id)

    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["events_in"] == len(lines)
    assert summary["accepted"] + summary["duplicates"] + sum(
        summary["dead_letters"].values()
    ) + never_identified == len(lines)
    assert summary["stitched"] == len(owner)
    assert sum(summary["dead_letters"].values()) == len(dead) == len(files["deadletter"])
    assert summary["duplicates"] >= duplicates > 0
    assert summary["users"] == len(seen) == len(files["profiles"])
    profiles = {p["user_id"]: p for p in files["profiles"]}
    for user_id, ids in seen.items():
        assert profiles[user_id]["events_total"] == len(ids)
    signups = {s["user_id"] for s in files["segments"] if s["reason"] == "signup"}
    assert signups <= set(profiles) and len(signups) > 100
    assert summary["events_per_s"] > 0 and summary["wall_time_s"] > 0


def test_run_reads_stdin(stream: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = firstmile(
        "run", "--input", "-", "--out", str(out), "--no-progress", stdin=stream.read_bytes()
    )
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["events_in"] == len(stream.read_bytes().splitlines())


def test_default_run_is_the_simulator_into_out(tmp_path: Path) -> None:
    done = firstmile("run", "--users", "60", "--days", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["mode"] == "simulator"
    assert summary["users"] > 50
    assert "throughput" in done.stdout
    assert "progress:" in done.stderr or summary["wall_time_s"] < 5  # plain progress off a TTY


def test_a_seed_gives_the_same_run_model_decisions_included(tmp_path: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        done = firstmile(
            "run", "--users", "1000", "--days", "10", "--seed", "6", cwd=tmp_path / run
        )
        assert done.returncode == 0, done.stderr
        outputs.append(
            {
                name: [
                    {k: v for k, v in line.items() if k not in ("processed_at", "updated_at")}
                    for line in read_jsonl(tmp_path / run / "out" / f"{name}.jsonl")
                ]
                for name in ("segments", "triggers", "profiles")
            }
        )
    learned = [d for d in outputs[0]["segments"] if d["model_versions"]["segments"] != "none"]
    assert learned and outputs[0]["triggers"]  # the models and the rules had their say
    assert outputs[0] == outputs[1]


def test_the_simulated_run_ends_with_a_readout_that_matches_the_profiles(tmp_path: Path) -> None:
    done = firstmile("run", "--users", "300", "--days", "8", "--seed", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "personalized-onboarding: activation (control: control)" in done.stdout
    assert "anytime CI" in done.stdout
    out = tmp_path / "out"
    summary = orjson.loads((out / "summary.json").read_bytes())
    arms = summary["experiments"]["personalized-onboarding"]["arms"]
    profiles = read_jsonl(out / "profiles.jsonl")

    # An independent reading of the profiles: each user's arm, and activation (onboarding
    # completed within 3 days of signup) for those whose 3 days ended before the input did.
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text)

    end = max(at(p["last_seen"]) for p in profiles)
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for p in profiles:
        arm = p["experiment_arms"]["personalized-onboarding"]
        expected[arm][0] += 1
        if arm == "control":
            assert p["onboarding_path"] == "standard_tour"  # the arm imposes it
        signed_up = at(p["signed_up_at"])
        if signed_up + timedelta(days=3) <= end:
            expected[arm][1] += 1
            done_at = p["onboarding"]["completed_at"]
            expected[arm][2] += bool(done_at and at(done_at) <= signed_up + timedelta(days=3))
    got = {
        arm: [row["users"], row["activation"]["measured"], row["activation"]["converted"]]
        for arm, row in arms.items()
    }
    assert got == dict(expected) and set(got) == {"control", "personalized"}
    assert summary["triggers"]["engaged-newcomer"]["sent"] > 0
    # The same readout, as `firstmile report` prints it from the summary.
    again = firstmile("report", "--summary", str(out / "summary.json"), "--json")
    assert orjson.loads(again.stdout) == summary["experiments"]


def test_ctrl_c_stops_gracefully_with_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = subprocess.Popen(
        [*FIRSTMILE, "run", "--users", "50000", "--out", str(out), "--no-progress"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for(
            lambda: (
                (out / "segments.jsonl").exists() and (out / "segments.jsonl").stat().st_size > 0
            ),
            120,
            "first outputs",
        )
        job.send_signal(signal.SIGINT)
        stdout, stderr = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 130, stderr
    assert "stopping after the current batch" in stderr and "Traceback" not in stderr
    assert "stopped early" in stdout
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["interrupted"] is True
    assert 0 < summary["users"] == len(read_jsonl(out / "profiles.jsonl")) < 50000


def test_bad_config_is_one_line_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbatch_size = -3\n")
    done = firstmile("run", "--config", str(bad))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "kafka.batch_size" in done.stderr and "Traceback" not in done.stderr

    done = firstmile("check-config", env={"FIRSTMILE_REDIS__URL": "nope"})
    assert done.returncode == 2 and "redis.url" in done.stderr


def test_check_config_names_a_bad_geo_database(tmp_path: Path) -> None:
    config = tmp_path / "firstmile.toml"
    config.write_text('[privacy]\ngeo_db = "missing.mmdb"\n')
    done = firstmile("check-config", "--config", str(config))
    assert done.returncode == 2 and "config OK" not in done.stdout
    assert "privacy.geo_db: cannot open" in done.stderr and str(tmp_path) in done.stderr


def test_kafka_mode_needs_a_model_signing_key_before_touching_servers(tmp_path: Path) -> None:
    config = tmp_path / "firstmile.toml"
    config.write_text('[redis]\nurl = "redis://127.0.0.1:1/0"\n')  # nothing listens there
    done = firstmile("run", "--config", str(config), "--stop-at-end")
    assert done.returncode == 2
    assert "models.signing_key: required in Kafka mode" in done.stderr


def test_check_config_accepts_the_defaults() -> None:
    done = firstmile("check-config")
    assert done.returncode == 0, done.stderr
    assert "config OK" in done.stdout


def config_with_rules(directory: Path, rules: str) -> Path:
    """A config whose rule book is ``rules`` (TOML), beside it."""
    (directory / "rules.toml").write_text(rules)
    config = directory / "firstmile.toml"
    config.write_text('rules = "rules.toml"\n')
    return config


def test_check_config_names_a_bad_rule_by_id(tmp_path: Path) -> None:
    config = config_with_rules(
        tmp_path,
        '[[rules]]\nid = "welcome"\nwhen = "signup"\nthen = { action = "a" }\n'
        '[[rules]]\nid = "welcome-pro"\nwhen = "signup"\nif = { "trait.plan" = "pro" }\n'
        'then = { action = "b" }\n',
    )
    done = firstmile("check-config", "--config", str(config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "rules.toml: rule welcome-pro: never fires, rule welcome (priority 0)" in done.stderr
    run = firstmile("run", "--config", str(config), "--input", "-", stdin=b"")
    assert run.returncode == 2 and "rule welcome-pro: never fires" in run.stderr


def test_missing_input_file_is_a_clear_error(tmp_path: Path) -> None:
    done = firstmile("run", "--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path))
    assert done.returncode == 2
    assert "input file not found" in done.stderr and "Traceback" not in done.stderr


def test_help_everywhere() -> None:
    for args in ([], ["run"], ["simulate"], ["check-config"], ["report"], ["explain"]):
        done = firstmile(*args, "--help")
        assert done.returncode == 0 and "usage: firstmile" in done.stdout


def test_help_and_a_mistyped_option_load_none_of_the_jobs_libraries() -> None:
    heavy = {"river", "bytewax", "scipy", "numpy", "redis", "kafka", "pydantic", "rich"}
    probe = (
        "import sys\n"
        "from firstmile.flows.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['run', '--no-such-option']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(heavy)!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_second_job_on_the_same_recovery_directory_is_refused(tmp_path: Path) -> None:
    """Two jobs resuming from the same snapshots would send everything twice and diverge:
    the second is refused with one line while the first runs on."""
    config = tmp_path / "firstmile.toml"
    config.write_text(f'[recovery]\ndir = "{tmp_path / "recovery"}"\n')
    lock = tmp_path / "recovery" / "firstmile-0.lock"
    events = tmp_path / "events.jsonl"
    made = firstmile("simulate", "--users", "2000", "--days", "14", "--out", str(events))
    assert made.returncode == 0, made.stderr
    run = ("run", "--config", str(config), "--input", str(events), "--no-progress")
    first = subprocess.Popen(
        [*FIRSTMILE, *run],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: lock.exists() and lock.read_text().strip(), 60, "the first job's lock")
        second = firstmile(*run)
        assert first.poll() is None, "the first job ended before the second one started"
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"firstmile: config error: recovery.dir: another firstmile job (pid {first.pid}) "
            f"is running on {tmp_path / 'recovery'}; one job per recovery directory"
        ]
    finally:
        first.kill()
        first.wait(timeout=30)
    again = firstmile(*run)
    assert again.returncode == 0, again.stderr  # a killed job leaves no stale lock


def test_mistakes_get_one_clear_line_and_a_failing_status(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n[1]\n")
    done = firstmile("run", "--input", str(bad), "--out", str(tmp_path / "o"), "--no-progress")
    assert done.returncode == 1
    assert "every one of the 2 records was dead-lettered" in done.stderr

    done = firstmile("run", "--input", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"firstmile: input is a directory, not a file: {tmp_path} (give one JSONL file)"
    ]

    env = {"FIRSTMILE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092"}  # not a JSON list
    done = firstmile("check-config", env=env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "FIRSTMILE_* variables are JSON" in done.stderr

    config = config_with_rules(
        tmp_path,
        '[[rules]]\nid = "r"\nwhen = ["signup"]\nif = { "trait.plna" = "pro" }\n'
        'then = { action = "a" }\n',
    )
    done = firstmile("check-config", "--config", str(config))
    assert done.returncode == 2 and "config OK" not in done.stdout
    assert "unknown trait 'plna'" in done.stderr


def test_a_wrong_kafka_address_is_one_line_within_the_connect_timeout(tmp_path: Path) -> None:
    """kafka-python's connection chatter (24 lines over 36 s) is not the user's business:
    one line naming the address, after ``connect_timeout_s``."""
    from tests.integration.conftest import REDIS_URL, _start

    _start("deploy/redis/start.sh")
    config = tmp_path / "firstmile.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = ["127.0.0.1:1"]\nconnect_timeout_s = 2\n'
        f'[redis]\nurl = "{REDIS_URL}"\n[models]\nsigning_key = "k"\n'
    )
    done = firstmile("run", "--config", str(config), "--stop-at-end", "--no-progress")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "firstmile: cannot connect to Kafka at 127.0.0.1:1: KafkaTimeoutError: "
        "Unable to bootstrap from ['127.0.0.1:1']"
    ]
