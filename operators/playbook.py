"""The playbook: the rule book, onboarding paths and experiments a decision is made with,
versioned by content, and which version is in force at each moment of event time.

A published version takes effect at an event time (``firstmile publish``): every item
of the stream (an event at its timestamp, a timer at its due time) is decided with the
version in force at its time. So the switch happens at the same stream position on every
worker and process, and a replay after a crash decides each item as the first pass did,
whenever each process learned of the version (as long as it learned before the stream
reached that time: ``publish`` leaves a lead for that).

>>> first = Playbook("cfg-a", None, None, None)  # type: ignore[arg-type]
>>> book = Playbooks(first)
>>> book.add(Playbook("cfg-b", None, None, None), effective_s=100.0)  # type: ignore[arg-type]
True
>>> book.at(99.9).version, book.at(100.0).version, book.latest.version
('cfg-a', 'cfg-b', 'cfg-b')
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from firstmile.operators.eventtime import iso
from firstmile.operators.experiments import Experiments
from firstmile.operators.paths import PathMap
from firstmile.operators.resources import CONFIG_DIR, read_text
from firstmile.operators.rules import RuleBook

log = logging.getLogger(__name__)

#: The files a playbook is made of, in the order their contents are hashed.
PARTS = ("rules", "paths", "experiments")


def version_of(texts: Iterable[str]) -> str:
    """A playbook's version: the hash of its files' contents (``PARTS`` order).

    >>> version_of(["a", "b", "c"]) == version_of(["a", "b", "c"]) != version_of(["a", "bc", ""])
    True
    """
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return "cfg-" + digest.hexdigest()[:12]


@dataclass(frozen=True, eq=False)
class Playbook:
    version: str
    rules: RuleBook
    paths: PathMap
    experiments: Experiments

    @classmethod
    def load(
        cls,
        files: dict[str, Path],
        *,
        texts: dict[str, str] | None = None,
        inactivity_hours: Iterable[int] = (24, 72, 168),
        traits: Iterable[str] | None = None,
    ) -> Playbook:
        """The playbook of ``files`` (``PARTS`` -> path), or of their ``texts`` (published
        contents; the paths then only name them in errors). ``MappingError`` names every
        problem, by file."""
        if texts is None:
            texts = {part: read_text(files[part]) for part in PARTS}
        return cls(
            version_of(texts[part] for part in PARTS),
            RuleBook.load(
                files["rules"],
                inactivity_hours=inactivity_hours,
                traits=traits,
                text=texts["rules"],
            ),
            PathMap.load(files["paths"], texts["paths"]),
            Experiments.load(files["experiments"], texts["experiments"]),
        )


#: The shipped config's files.
SHIPPED = {part: CONFIG_DIR / f"{part}.toml" for part in PARTS}


class Playbooks:
    """Every known version by the event time it takes effect (epoch seconds); the first
    is in force from the beginning. ``poll``, when given, returns versions published since
    the ``n`` already known (as (effective_s, playbook)); it is asked at most every
    ``poll_s`` seconds of ``clock``."""

    @classmethod
    def shipped(cls) -> Playbooks:
        """The shipped rules, paths and experiments, and nothing published."""
        return cls(Playbook.load(SHIPPED))

    def __init__(
        self,
        first: Playbook,
        poll: Callable[[int], list[tuple[float, Playbook | None]]] | None = None,
        *,
        poll_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: (times, books), replaced whole: worker threads read it while one polls.
        self._table: tuple[tuple[float, ...], tuple[Playbook, ...]] = ((float("-inf"),), (first,))
        self._known = 0  # published versions read (by ``poll``)
        self._poll, self._poll_s = poll, poll_s
        self._clock = clock
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._announced: set[str] = {first.version}

    @property
    def latest(self) -> Playbook:
        return self._table[1][-1]

    @property
    def versions(self) -> list[tuple[float, str]]:
        times, books = self._table
        return [(t, b.version) for t, b in zip(times, books, strict=True)]

    def add(self, book: Playbook, effective_s: float) -> bool:
        """Add a version in force from ``effective_s``; refused (False) unless it is later
        than every version known (versions only move forward)."""
        times, books = self._table
        if effective_s <= times[-1]:
            return False
        self._table = ((*times, effective_s), (*books, book))
        return True

    def at(self, seconds: float) -> Playbook:
        """The version in force at ``seconds`` of event time."""
        self.refresh()
        times, books = self._table
        newest = seconds >= times[-1]  # the common case: no search
        book = books[-1] if newest else books[bisect.bisect_right(times, seconds) - 1]
        if book.version not in self._announced:  # the first item it decides: say so once
            self._announced.add(book.version)
            log.warning("config %s in force from this point of the stream", book.version)
        return book

    def refresh(self) -> None:
        """Read versions published since, at most every ``poll_s`` seconds."""
        if self._poll is None:
            return
        now = self._clock()
        if now - self._checked < self._poll_s:
            return
        with self._lock:
            if now - self._checked < self._poll_s:
                return
            self._checked = now
            for effective_s, book in self._poll(self._known):
                self._known += 1  # None: one the job cannot load (logged by ``poll``)
                if book is not None and self.add(book, effective_s):
                    log.warning(
                        "config %s published: in force for events from %s",
                        book.version,
                        iso(datetime.fromtimestamp(effective_s, UTC)),
                    )
