"""deploy/: the Prometheus scrape config and alert rules pass promtool (alerts_test.yml
shows each alert firing), the Grafana dashboard's queries parse, and every metric they
name is one firstmile exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import firstmile.flows.metrics  # noqa: F401  (registers every firstmile metric)

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "firstmile.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool, installed by the check script if missing; the check's own output."""
    done = subprocess.run(
        ["bash", str(PROMETHEUS / "check.sh")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_scrape_config_and_alerts_pass_promtool_and_each_alert_fires(promtool: str) -> None:
    assert "prometheus.yml is valid" in promtool
    assert "SUCCESS: 9 rules found" in promtool
    assert promtool.rstrip().endswith("SUCCESS")  # promtool test rules alerts_test.yml


def test_the_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 16
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(
        json.dumps(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:query_{i}", "expr": q}
                            for i, q in enumerate(queries)
                        ],
                    }
                ]
            }
        )
    )
    done = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_named_is_exported() -> None:
    exported: set[str] = {"up"}
    for family in REGISTRY.collect():
        exported |= {family.name + suffix for suffix in ("", "_total", "_bucket", "_count")}
    text = (PROMETHEUS / "alerts.yml").read_text() + "\n".join(dashboard_queries())
    named = set(re.findall(r"\bfirstmile_[a-z0-9_]+", text))
    assert len(named) >= 15
    assert named <= exported, sorted(named - exported)
