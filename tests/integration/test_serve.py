"""``firstmile serve`` as an app would call it: a real server process over real Redis, an
HTTP client (httpx), the profiles a file run of the job wrote."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import read_jsonl, running_server

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-api-key"
FIRSTMILE = (sys.executable, "-m", "firstmile.flows.cli")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A product's event export (JSONL): a small simulated stream."""
    path = tmp_path_factory.mktemp("export") / "events.jsonl"
    done = subprocess.run(
        [*FIRSTMILE, "simulate", "--users", "60", "--days", "3", "--out", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def backfill(redis_url: str, tmp_path: Path, export: Path) -> tuple[Path, list[dict[str, object]]]:
    """``firstmile run --input`` with a Redis configured: the profiles go there too (a
    backfill from an export). The config, and the profiles the run wrote to its files."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "firstmile.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{prefix}"\n'
        f'[serve]\napi_keys = ["{KEY}"]\ncors_origins = ["https://app.example"]\n'
    )
    out = str(tmp_path / "out")
    done = subprocess.run(
        [
            *FIRSTMILE,
            "run",
            "--input",
            str(export),
            "--config",
            str(config),
            *("--out", out, "--no-progress"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return config, read_jsonl(Path(out) / "profiles.jsonl")


@pytest.fixture
def profiles(backfill: tuple[Path, list[dict[str, object]]]) -> list[dict[str, object]]:
    return backfill[1]


@pytest.fixture
def api(backfill: tuple[Path, list[dict[str, object]]]) -> Iterator[str]:
    with running_server("serve", "--config", str(backfill[0])) as base:
        yield base


def test_an_app_gets_the_decision_the_job_keeps(
    api: str, profiles: list[dict[str, object]]
) -> None:
    user = next(p for p in profiles if p["experiment_arms"])
    auth = {"Authorization": f"Bearer {KEY}"}
    got = httpx.get(f"{api}/v1/users/{user['user_id']}/decision", headers=auth)
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    decision = got.json()
    assert decision["known"] is True
    for field in ("segment", "segment_label", "churn_band", "onboarding_path", "seq"):
        assert decision[field] == user[field], field
    assert decision["experiment_arms"] == user["experiment_arms"]
    assert decision["model_versions"] == {"segments": user["segment_version"]}
    assert got.headers["etag"] == f'"{user["seq"]}"'
    assert "max-age" in got.headers["cache-control"]
    again = httpx.get(
        f"{api}/v1/users/{user['user_id']}/decision",
        headers={**auth, "If-None-Match": got.headers["etag"]},
    )
    assert again.status_code == 304 and again.content == b""

    whole = httpx.get(f"{api}/v1/users/{user['user_id']}/profile", headers=auth).json()
    assert whole == user


def test_an_unknown_visitor_gets_the_default_and_the_arm_they_will_keep(api: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    decision = httpx.get(f"{api}/v1/users/nobody-yet/decision", headers=auth).json()
    assert decision["known"] is False and decision["segment"] is None
    assert set(decision["experiment_arms"]) == {"personalized-onboarding"}
    arm = decision["experiment_arms"]["personalized-onboarding"]
    expected_path = "standard_tour" if arm == "control" else decision["onboarding_path"]
    assert decision["onboarding_path"] == expected_path
    missing = httpx.get(f"{api}/v1/users/nobody-yet/profile", headers=auth)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["status"] == 404 and "nobody-yet" in missing.json()["detail"]


def test_keys_problems_health_cors_and_metrics(api: str) -> None:
    no_key = httpx.get(f"{api}/v1/users/u/decision")
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    assert no_key.json()["title"] == "Unauthorized"
    wrong = httpx.get(f"{api}/v1/users/u/decision", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    nowhere = httpx.get(f"{api}/v2/elsewhere")
    assert nowhere.status_code == 404
    assert nowhere.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{api}/readyz").json() == {"status": "ready"}
    preflight = httpx.options(
        f"{api}/v1/users/u/decision",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    metrics = httpx.get(f"{api}/metrics/").text
    assert (
        'firstmile_api_requests_total{route="/v1/users/{user_id:str}/decision",status="401"}'
        in (metrics)
    )


def test_openfeature_sdks_read_the_decision_as_flags(
    api: str, profiles: list[dict[str, object]]
) -> None:
    """OpenFeature's own Python SDK and its OFREP provider, pointed at the server."""
    from openfeature import api as openfeature
    from openfeature.contrib.provider.ofrep import OFREPProvider
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.exception import ErrorCode

    provider = OFREPProvider(api, headers_factory=lambda: {"Authorization": f"Bearer {KEY}"})
    openfeature.set_provider(provider)
    client = openfeature.get_client()
    user = next(p for p in profiles if p["experiment_arms"])
    context = EvaluationContext(targeting_key=str(user["user_id"]))
    path = client.get_string_value("onboarding-path", "standard_tour", context)
    assert path == user["onboarding_path"]
    segment = client.get_string_details("segment", "none", context)
    assert segment.value == user["segment"] and segment.reason == "TARGETING_MATCH"
    assert segment.flag_metadata["label"] == user["segment_label"]
    assert client.get_string_value("churn-band", "low", context) == user["churn_band"]
    arms = user["experiment_arms"]
    assert isinstance(arms, dict)
    arm = client.get_string_details("personalized-onboarding", "control", context)
    assert arm.value == arms["personalized-onboarding"] and arm.reason == "SPLIT"
    missing = client.get_string_details("no-such-flag", "fallback", context)
    assert missing.value == "fallback" and missing.error_code == ErrorCode.FLAG_NOT_FOUND
    anonymous = client.get_string_details("segment", "x", EvaluationContext())
    assert anonymous.error_code == ErrorCode.TARGETING_KEY_MISSING
    newcomer = client.get_string_details("onboarding-path", "x", EvaluationContext("new-1"))
    assert newcomer.reason == "DEFAULT" and newcomer.value != "x"

    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"context": {"targetingKey": user["user_id"]}}
    bulk = httpx.post(f"{api}/ofrep/v1/evaluate/flags", json=body, headers=auth)
    assert bulk.status_code == 200
    keys = {flag["key"] for flag in bulk.json()["flags"]}
    assert keys == {"onboarding-path", "segment", "churn-band", "personalized-onboarding"}
    cached = httpx.post(
        f"{api}/ofrep/v1/evaluate/flags",
        json=body,
        headers={**auth, "If-None-Match": bulk.headers["etag"]},
    )
    assert cached.status_code == 304
    bad = httpx.post(f"{api}/ofrep/v1/evaluate/flags/segment", content=b"{", headers=auth)
    assert bad.status_code == 400 and bad.json()["errorCode"] == "PARSE_ERROR"


def test_the_report_page_shows_what_the_store_holds(
    api: str, profiles: list[dict[str, object]]
) -> None:
    assert httpx.get(f"{api}/").status_code == 401  # keys set: the page needs one too
    got = httpx.get(f"{api}/", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
    page = got.text
    assert f"{len(profiles):,} users" in page
    for title in ("Onboarding paths per segment", "Triggers by rule"):
        assert f"<h2>{title}</h2>" in page
    assert page.count("Plotly.newPlot(") == 2  # no models or experiments in a backfill's store
    paths = {str(p["onboarding_path"]) for p in profiles}
    assert all(f'"{path}"' in page for path in paths)
