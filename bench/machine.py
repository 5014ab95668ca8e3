"""What machine a benchmark ran on, printed with its numbers."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version


def describe() -> str:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"bytewax {version('bytewax')}, orjson {version('orjson')}, "
        f"msgspec {version('msgspec')}"
    )
