"""Sources and sinks on local files: a JSONL input (or stdin), the simulator, a JSONL
output directory. Sources resume from the line after the last one read."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from firstmile.operators.errors import InputError
from firstmile.operators.events import RawRecord, SourceRef
from firstmile.operators.outputs import OUTPUT_KINDS, Output
from firstmile.state.shutdown import STOP

BATCH_SIZE = 1000

#: File name of each output kind in an output directory.
OUTPUT_FILES = {
    "segment": "segments.jsonl",
    "trigger": "triggers.jsonl",
    "deadletter": "deadletter.jsonl",
    "profile": "profiles.jsonl",  # final profiles only: each user's state at the end
}
#: Erasures: one line per tombstone an output topic got (the user's key, value null).
TOMBSTONES_FILE = "tombstones.jsonl"


class _LinePartition(StatefulSourcePartition[RawRecord, int]):
    """Emits lines as ``RawRecord``s in batches; its state is the count of lines read."""

    def __init__(
        self,
        name: str,
        lines: Iterator[bytes],
        start: int,
        on_read: Callable[[int], None] | None,
        closer: Callable[[], None],
    ) -> None:
        self._name = name
        self._lines = lines
        self._position = start
        self._on_read = on_read
        self._close = closer
        for _ in islice(lines, start):  # resume: skip what a snapshot says was read
            pass

    def next_batch(self) -> list[RawRecord]:
        if STOP.is_set():
            raise StopIteration
        batch = [
            RawRecord(line.rstrip(b"\r\n"), SourceRef(self._name, 0, self._position + i))
            for i, line in enumerate(islice(self._lines, BATCH_SIZE))
        ]
        if not batch:
            raise StopIteration
        self._position += len(batch)
        if self._on_read is not None:
            self._on_read(len(batch))
        return batch

    def snapshot(self) -> int:
        return self._position

    def close(self) -> None:
        self._close()


def count_lines(path: str) -> int | None:
    """Lines in the file (for progress); None for stdin or what cannot be read."""
    if path == "-":
        return None
    try:
        with Path(path).open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return None


class JsonlSource(FixedPartitionedSource[RawRecord, int]):
    """Lines of a JSONL file, or of stdin when the path is ``-``. Blank lines are skipped."""

    def __init__(self, path: str, on_read: Callable[[int], None] | None = None) -> None:
        self.path = path
        self.on_read = on_read
        if path != "-" and Path(path).is_dir():
            raise InputError(f"input is a directory, not a file: {path} (give one JSONL file)")
        if path != "-" and not Path(path).is_file():
            raise InputError(f"input file not found: {path}")

    def list_parts(self) -> list[str]:
        return ["file"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LinePartition:
        handle: IO[bytes]
        if self.path == "-":
            handle = sys.stdin.buffer
        else:
            try:
                handle = Path(self.path).open("rb")  # noqa: SIM115 (closed by the partition)
            except OSError as exc:
                raise InputError(f"cannot open input {self.path}: {exc.strerror}") from exc
        lines = (line for line in handle if line.strip())
        name = "stdin" if self.path == "-" else Path(self.path).name
        return _LinePartition(name, lines, resume_state or 0, self.on_read, handle.close)


class LinesSource(FixedPartitionedSource[RawRecord, int]):
    """Lines from a replayable generator factory (the simulator); resumes by skipping."""

    def __init__(
        self,
        name: str,
        lines: Callable[[], Iterator[bytes]],
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.lines = lines
        self.on_read = on_read

    def list_parts(self) -> list[str]:
        return [self.name]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LinePartition:
        return _LinePartition(
            self.name, self.lines(), resume_state or 0, self.on_read, lambda: None
        )


class _JsonlDirPartition(StatelessSinkPartition[Output]):
    def __init__(self, directory: Path) -> None:
        self._files = {kind: (directory / OUTPUT_FILES[kind]).open("ab") for kind in OUTPUT_KINDS}
        self._tombstones = (directory / TOMBSTONES_FILE).open("ab")

    def write_batch(self, items: list[Output]) -> None:
        for item in items:
            if item.value is None:
                if item.kind in ("segment", "trigger"):
                    line = {"user_id": item.key, "topic": f"{item.kind}s"}
                    self._tombstones.write(orjson.dumps(line) + b"\n")
            elif item.kind != "profile" or item.final:
                self._files[item.kind].write(orjson.dumps(item.value) + b"\n")
        for handle in (*self._files.values(), self._tombstones):
            handle.flush()

    def close(self) -> None:
        for handle in (*self._files.values(), self._tombstones):
            handle.close()


class JsonlDirSink(DynamicSink[Output]):
    """Writes each output kind to its own JSONL file in ``directory`` (appending)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def prepare(directory: Path) -> None:
        """Create ``directory`` with empty output files (a fresh run starts clean)."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in (*OUTPUT_FILES.values(), TOMBSTONES_FILE):
            (directory / name).write_bytes(b"")

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlDirPartition:
        return _JsonlDirPartition(self.directory)


def write_jsonl(path: Path, lines: Iterable[bytes]) -> int:
    """Write raw lines to ``path`` (``-`` for stdout); the count written."""
    count = 0
    out = sys.stdout.buffer if str(path) == "-" else path.open("wb")
    try:
        for line in lines:
            out.write(line + b"\n")
            count += 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    return count
