"""``firstmile report --html``: the page renders in headless Chromium without console
errors, with every chart drawn; its screenshot is kept in .artifacts/."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from tests.test_cli import ROOT, firstmile

ARTIFACTS = ROOT / ".artifacts"
OUTCOMES = ("activation", "retention")


@pytest.fixture(scope="module")
def chromium() -> str:
    done = subprocess.run(
        ["bash", str(ROOT / "tests" / "chromium.sh")], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"cannot get chromium: {done.stderr}"
    return done.stdout.strip()


#: Headless, and quiet on a closed network (no background connections, no updates).
QUIET = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
)  # fmt: skip


def _browse(chromium: str, page: Path, *options: str) -> subprocess.CompletedProcess[str]:
    profile = page.parent / f"chromium-profile-{len(options)}"  # a new, empty one
    return subprocess.run(
        [chromium, *QUIET, f"--user-data-dir={profile}", *options, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_report_page_renders_every_chart_without_console_errors(
    chromium: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = firstmile("run", "--users", "400", "--days", "8", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    page = tmp_path / "report.html"
    done = firstmile("report", "--summary", str(out / "summary.json"), "--html", str(page))
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    charts = [
        "Segment sizes over time",
        "Onboarding paths per segment",
        "Triggers by rule",
        *(f"Experiment {key}: {m}" for key in summary["experiments"] for m in OUTCOMES),
        "Churn model calibration",
    ]
    assert summary["models"]["segments"] and summary["models"]["churn"]["reliability"]

    rendered = _browse(chromium, page, "--dump-dom")
    assert rendered.returncode == 0, rendered.stderr
    console = [line for line in rendered.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    dom = rendered.stdout
    assert dom.count('class="plot-container plotly"') == len(charts)
    for title in charts:
        assert f"<h2>{title}</h2>" in dom, title
    for segment in summary["models"]["segments"]:
        assert segment["label"] in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_page.png"
    shot.unlink(missing_ok=True)
    taken = _browse(chromium, page, "--window-size=1280,4200", f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_without_a_summary_is_one_clear_line(tmp_path: Path) -> None:
    done = firstmile("report", "--html", str(tmp_path / "page.html"))
    assert done.returncode == 2
    assert "--html needs --summary" in done.stderr and "Traceback" not in done.stderr
