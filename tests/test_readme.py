"""The README's output examples are real messages: each validates against its schema."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from tests.helpers import validator

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_json_example_in_the_readme_validates() -> None:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    kinds = []
    for block in blocks:
        example = orjson.loads(block)
        if example.get("type") == "segment_change":
            kind = "segment"
        elif example.get("type") == "trigger":
            kind = "trigger"
        elif "raw_b64" in example:
            kind = "deadletter"
        else:
            kind = "profile"
        validator(kind)(example)
        kinds.append(kind)
    assert sorted(kinds) == ["deadletter", "profile", "segment", "trigger"]
