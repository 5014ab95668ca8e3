"""Shared test helpers: schema validators, bounded waits, reading outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
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
