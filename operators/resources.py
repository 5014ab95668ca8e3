"""Where the repository's data files live (schemas/, config/), next to the packages."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = ROOT / "schemas"
CONFIG_DIR = ROOT / "config"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``schemas/<name>.schema.json`` as a dict."""
    data: dict[str, Any] = orjson.loads((SCHEMAS_DIR / f"{name}.schema.json").read_bytes())
    return data
