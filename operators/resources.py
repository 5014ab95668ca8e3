"""Where the repository's data files live (schemas/, config/), next to the packages."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from firstmile.operators.errors import MappingError

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = ROOT / "schemas"
CONFIG_DIR = ROOT / "config"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``schemas/<name>.schema.json`` as a dict."""
    data: dict[str, Any] = orjson.loads((SCHEMAS_DIR / f"{name}.schema.json").read_bytes())
    return data


def read_text(file: Path) -> str:
    """A data file's text: ``MappingError`` naming it if it cannot be read."""
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise MappingError(f"{file}: not valid UTF-8: {exc}") from exc


def read_toml(file: Path, text: str | None = None) -> dict[str, Any]:
    """A data file of config/ (or the user's own): ``MappingError`` naming it if it cannot
    be read or is not TOML. ``text``: the file's content, already read (a published
    version of it)."""
    try:
        return tomllib.loads(read_text(file) if text is None else text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{file}: not valid TOML: {exc}") from exc
