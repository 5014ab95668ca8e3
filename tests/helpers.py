"""Shared test helpers: schema validators, bounded waits, reading outputs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import fastjsonschema
import orjson

from firstmile.operators.resources import load_schema

T = TypeVar("T")

SHARED = Path(__file__).resolve().parents[2] / "shared"


def validator(name: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(load_schema(name))  # type: ignore[no-any-return]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(*args: str) -> Iterator[str]:
    """``firstmile <args> --port <free port>`` as a process, once its ``/healthz``
    answers: its base URL. Stopped (SIGTERM) at the end."""
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "firstmile.flows.cli", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 30, f"firstmile {args[0]} to answer")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)
