"""``firstmile backtest`` against what two full runs of the same history write."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import read_jsonl
from tests.test_cli import ROOT, firstmile

CONFIG = ROOT / "config"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "events.jsonl"
    done = firstmile("simulate", "--users", "250", "--days", "5", "--seed", "3", "--out", str(path))
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A candidate rule book (a threshold moved, a rule for everyone, a rule gone), paths
    without re-engagement and experiment weights that re-bucket users."""
    where = tmp_path_factory.mktemp("candidate")
    rules = (CONFIG / "rules.toml").read_text()
    assert '"$gte" = 0.9' in rules and 'id = "quiet-three-days"' in rules
    rules = rules.replace('"$gte" = 0.9', '"$gte" = 0.97')
    rules = rules.replace('id = "quiet-three-days"', 'id = "quiet-three-days-renamed"')
    rules += (
        '\n[[rules]]\nid = "welcome-all"\nwhen = ["timer:session_end"]\n'
        'then = { action = "welcome_tip" }\npriority = 5\nmax_fires = 1\n'
    )
    (where / "rules.toml").write_text(rules)
    paths = (CONFIG / "paths.toml").read_text()
    gone = '[[paths]]\npath = "re_engagement"\nif = { churn_band = "high" }\n'
    assert gone in paths
    (where / "paths.toml").write_text(paths.replace(gone, ""))
    experiments = (CONFIG / "experiments.toml").read_text()
    assert "weights = [0.5, 0.5]" in experiments
    (where / "experiments.toml").write_text(experiments.replace("[0.5, 0.5]", "[0.2, 0.8]"))
    config = where / "candidate.toml"
    config.write_text(
        "".join(f'{name} = "{where / name}.toml"\n' for name in ("rules", "paths", "experiments"))
    )
    return config


def _run(history: Path, out: Path, config: Path | None = None) -> dict[str, list[dict]]:
    args = ["run", "--input", str(history), "--out", str(out), "--no-progress"]
    done = firstmile(*args, *(["--config", str(config)] if config else []))
    assert done.returncode == 0, done.stderr
    return {name: read_jsonl(out / f"{name}.jsonl") for name in ("triggers", "profiles")}


def _against_full_runs(history: Path, candidate: Path, tmp_path: Path) -> dict[str, Any]:
    """The backtest's report, its triggers checked against two full runs'; the runs."""
    done = firstmile(
        "backtest", "--input", str(history), "--candidate", str(candidate), "--json",
        "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = orjson.loads(done.stdout)
    current, changed = _run(history, tmp_path / "a"), _run(history, tmp_path / "b", candidate)

    ids: list[dict[str, set[str]]] = [defaultdict(set), defaultdict(set)]
    users: list[dict[str, set[str]]] = [defaultdict(set), defaultdict(set)]
    for side, run in enumerate((current, changed)):
        for trigger in run["triggers"]:
            ids[side][trigger["rule_id"]].add(trigger["id"])
            users[side][trigger["rule_id"]].add(trigger["user_id"])
    rules = {rule["rule_id"]: rule for rule in report["rules"]}
    assert set(rules) >= set(ids[0]) | set(ids[1])
    for rule_id, rule in rules.items():
        a, b = ids[0][rule_id], ids[1][rule_id]
        assert rule["current"]["triggers"] == len(a), rule_id
        assert rule["candidate"]["triggers"] == len(b), rule_id
        assert (rule["added"], rule["removed"]) == (len(b - a), len(a - b)), rule_id
        assert rule["candidate"]["users"] == len(users[1][rule_id]), rule_id
    return report | {"runs": (current, changed)}


def test_a_backtest_reports_what_two_full_runs_write(
    history: Path, candidate: Path, tmp_path: Path
) -> None:
    report = _against_full_runs(history, candidate, tmp_path)
    assert report["mode"] == "one pass, shared profiles"
    rules = {rule["rule_id"]: rule for rule in report["rules"]}
    current, changed = report["runs"]
    assert rules["retention-offer"]["removed"] > 0
    assert "new" in rules["welcome-all"]["flags"]
    assert "fires for nearly everyone" in rules["welcome-all"]["flags"]
    assert "removed" in rules["quiet-three-days"]["flags"]
    assert rules["welcome-all"]["examples_added"]

    finals = [{p["user_id"]: p for p in run["profiles"]} for run in (current, changed)]
    assert report["users"] == len(finals[0]) == len(finals[1])
    paths = Counter(
        (p["onboarding_path"], finals[1][user]["onboarding_path"])
        for user, p in finals[0].items()
        if p["onboarding_path"] != finals[1][user]["onboarding_path"]
    )
    assert report["paths"]["users_changed"] == sum(paths.values()) > 0
    assert {(m["from"], m["to"]): m["users"] for m in report["paths"]["moves"]} == paths
    arms = [{user: p["experiment_arms"] for user, p in final.items()} for final in finals]
    rearmed = [user for user, held in arms[0].items() if held != arms[1][user]]
    assert report["experiment_arms"]["users_changed"] == len(rearmed) > 0
    assert set(report["experiments"]) == {"current", "candidate"}
    (warning,) = report["warnings"]  # the weights moved: users are split otherwise
    assert "personalized-onboarding: weights [0.5, 0.5] -> [0.2, 0.8] re-buckets" in warning


def test_a_change_to_the_timers_is_backtested_on_profiles_of_its_own(
    history: Path, tmp_path: Path
) -> None:
    """An absence rule's window moved: the timers differ, so each side keeps its own
    profiles (slower), and the report is still what two full runs write."""
    rules = (CONFIG / "rules.toml").read_text()
    moved = 'within = "24h" }\nif = { onboarding_completed = 0 }'
    assert moved in rules
    (tmp_path / "rules.toml").write_text(rules.replace(moved, moved.replace("24h", "12h")))
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(f'rules = "{tmp_path / "rules.toml"}"\n')
    report = _against_full_runs(history, candidate, tmp_path)
    assert report["mode"] == "one pass, separate profiles"
    stalled = next(rule for rule in report["rules"] if rule["rule_id"] == "stalled-step")
    assert stalled["added"] + stalled["removed"] > 0


def test_a_backtest_gates_on_a_rule_that_fires_for_too_many(history: Path, candidate: Path) -> None:
    done = firstmile(
        "backtest", "--input", str(history), "--candidate", str(candidate),
        "--max-user-share", "50", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "gate FAILED: welcome-all" in done.stdout
    assert "welcome-all" in done.stdout and "retention-offer" in done.stdout


def test_a_candidate_that_does_not_load_is_refused_by_name(history: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nid = "a"\nwhen = ["signup"]\nthen = { action = "x" }\n'
        '[[rules]]\nid = "b"\nwhen = ["signup"]\nthen = { action = "y" }\n'
    )
    done = firstmile("backtest", "--input", str(history), "--rules", str(rules), "--no-progress")
    assert done.returncode == 2
    assert "candidate config" in done.stderr and "rule b" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
