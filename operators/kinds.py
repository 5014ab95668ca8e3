"""Track event names to canonical kinds (config/events.toml).

>>> kinds = EventKinds({"signup": ["Signed Up"]})
>>> kinds.kind_of("track", "  signed UP ")
'signup'
>>> kinds.kind_of("track", "Rocket Launched"), kinds.kind_of("screen", None)
('custom', 'page_view')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from firstmile.operators.errors import MappingError
from firstmile.operators.events import CANONICAL_KINDS
from firstmile.operators.resources import read_toml

_CALL_KINDS = {
    "page": "page_view",
    "screen": "page_view",
    "identify": "identify",
    "alias": "alias",
    "group": "group",
}

#: Kinds a track name may map to (identify, alias and group are calls of their own).
TRACK_KINDS = CANONICAL_KINDS - {"identify", "alias", "group"}


class EventKinds:
    """Case-insensitive lookup from a track event name to its canonical kind."""

    def __init__(self, kinds: Mapping[str, Sequence[str]]) -> None:
        self._by_name: dict[str, str] = {}
        for kind, names in kinds.items():
            if kind not in TRACK_KINDS:
                raise MappingError(
                    f"events mapping: unknown kind {kind!r} "
                    f"(known: {', '.join(sorted(TRACK_KINDS))})"
                )
            if isinstance(names, str) or not isinstance(names, Sequence):
                raise MappingError(f"events mapping: kinds.{kind} must be a list of event names")
            for name in names:
                if not isinstance(name, str) or not name.strip():
                    raise MappingError(
                        f"events mapping: kinds.{kind} has an empty or non-text name"
                    )
                folded = _fold(name)
                other = self._by_name.get(folded)
                if other is not None and other != kind:
                    raise MappingError(
                        f"events mapping: {name!r} is listed under both "
                        f"kinds.{other} and kinds.{kind}"
                    )
                self._by_name[folded] = kind

    @classmethod
    def load(cls, path: Path) -> EventKinds:
        try:
            data = read_toml(path)
        except MappingError as exc:
            raise MappingError(f"events mapping {exc}") from exc
        unknown = set(data) - {"kinds"}
        if unknown:
            raise MappingError(f"events mapping {path}: unknown section(s) {sorted(unknown)}")
        kinds = data.get("kinds")
        if not isinstance(kinds, dict):
            raise MappingError(f"events mapping {path}: missing [kinds] table")
        return cls(kinds)

    def kind_of(self, call_type: str, event_name: str | None) -> str:
        if call_type != "track":
            return _CALL_KINDS[call_type]
        if event_name is None:
            return "custom"
        return self._by_name.get(_fold(event_name), "custom")

    def __len__(self) -> int:
        return len(self._by_name)


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()
