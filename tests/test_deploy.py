"""deploy/: the Prometheus scrape config and alert rules pass promtool (alerts_test.yml
shows each alert firing), the Grafana dashboard's queries parse, and every metric they
name is one firstmile exports."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
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
    assert "SUCCESS: 10 rules found" in promtool
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


CONTAINER = ROOT / "deploy" / "container"
K8S = ROOT / "deploy" / "k8s"


def firstmile_commands(argv: list[str]) -> str | None:
    """The firstmile subcommand ``argv`` runs (after the image's entrypoint), checked by
    the real parser; None for what is not a firstmile command."""
    from firstmile.flows.cli import build_parser

    if not argv or argv[0] not in {"run", "serve", "collect", "report", "check-config"}:
        return None
    build_parser().parse_args(argv)  # raises SystemExit on an option it does not know
    return argv[0]


def test_the_image_runs_firstmile_as_a_non_root_user() -> None:
    lines = (CONTAINER / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["firstmile"]' in lines
    assert any("FIRSTMILE_METRICS__HOST=0.0.0.0" in line for line in lines)


def test_the_image_builds_and_runs_the_job_as_its_non_root_user() -> None:
    """The image for real: Debian's podman and buildah, a base from Debian's packages
    (mmdebstrap), the Dockerfile, then the image's firstmile runs the simulator."""
    done = subprocess.run(
        ["bash", str(CONTAINER / "build.sh")], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "firstmile"  # `id -un` in the image
    assert any(line.startswith("usage: firstmile") for line in out)
    assert any("users" in line and "200" in line for line in out), done.stdout
    assert out[-1] == "built localhost/firstmile:dev"


def test_the_compose_stack_runs_the_job_serve_and_collect_with_real_options() -> None:
    import yaml

    stack = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    services = stack["services"]
    assert {"kafka", "redis", "prometheus", "grafana", "job", "serve", "collect"} <= set(services)
    ran = {firstmile_commands(services[name]["command"]) for name in ("job", "serve", "collect")}
    assert ran == {"run", "serve", "collect"}
    assert services["serve"]["ports"] == ["8080:8080"]  # [serve] port's default
    assert services["collect"]["ports"] == ["8081:8081"]  # [collect] port's default
    assert "--appendonly" in services["redis"]["command"]  # profiles outlive a restart
    for mounted in ("../prometheus/alerts.yml", "../grafana/firstmile.json"):
        assert (CONTAINER / mounted.split(":")[0]).exists()
    from firstmile.flows.config import load_config

    load_config(CONTAINER / "firstmile.toml")  # the stack's config is a valid one


def test_the_kubernetes_manifests_run_a_cluster_and_the_api() -> None:
    import yaml

    docs = [
        doc
        for name in ("job.yaml", "serve.yaml")
        for doc in yaml.safe_load_all((K8S / name).read_text())
    ]
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    assert ("StatefulSet", "firstmile-job") in kinds and ("Deployment", "firstmile-serve") in kinds
    job = next(doc for doc in docs if doc["kind"] == "StatefulSet")
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    assert "-i" in script and "-a" in script and "firstmile run" in script
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROCESSES"] == str(job["spec"]["replicas"])
    serve = next(doc for doc in docs if doc["kind"] == "Deployment")
    api = serve["spec"]["template"]["spec"]["containers"][0]
    assert firstmile_commands(api["args"]) == "serve"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for workload in (job, serve):
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    config = next(doc for doc in docs if doc["kind"] == "ConfigMap")["data"]["firstmile.toml"]
    from firstmile.flows.config import load_config

    path = Path(tempfile.mkdtemp()) / "firstmile.toml"
    path.write_text(config)
    load_config(path)
