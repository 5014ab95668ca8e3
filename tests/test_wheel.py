"""The built wheel is the product: installed into a fresh virtualenv, away from the
checkout, it runs the demo with its own config/ and schemas/ (package data)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_a_wheel_in_a_fresh_venv_runs_the_demo_outside_the_checkout(tmp_path: Path) -> None:
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path, ROOT, cwd=tmp_path)
    wheel = next(tmp_path.glob("firstmile-*.whl"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    # The dependencies come from this environment's site-packages (a path entry: its own
    # .pth files, such as the editable checkout's import hook, are not read from there).
    site = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
    )
    Path(site.stdout.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path)

    where = run(python, "-c", "import firstmile.flows.cli as m; print(m.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's copy, not ours
    work = tmp_path / "elsewhere"
    work.mkdir()
    run(venv / "bin" / "firstmile", "check-config", cwd=work)
    run(
        venv / "bin" / "firstmile", "run", "--users", "40", "--days", "2", "--no-progress", cwd=work
    )
    summary = orjson.loads((work / "out" / "summary.json").read_bytes())
    assert summary["accepted"] > 0 and (work / "out" / "profiles.jsonl").stat().st_size > 0
