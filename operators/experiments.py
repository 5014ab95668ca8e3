"""GrowthBook-compatible experiment assignment: the same user lands in the same arm here
as in a product that evaluates the experiment with a GrowthBook SDK.

>>> gb_hash("onboarding-path", "user-1", 2) == gb_hash("onboarding-path", "user-1", 2)
True
>>> ranges = get_bucket_ranges(2, 1.0, None)
>>> ranges, choose_variation(0.7, ranges)
([(0.0, 0.5), (0.5, 1.0)], 1)
"""

from __future__ import annotations

from collections.abc import Sequence

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193

BucketRange = tuple[float, float]


def _fnv1a32(text: str) -> int:
    value = _FNV_OFFSET
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def gb_hash(seed: str, value: str, version: int) -> float | None:
    """A number in [0, 1) for ``value`` under ``seed``; ``None`` for an unknown version."""
    if version == 2:
        return (_fnv1a32(str(_fnv1a32(seed + value))) % 10000) / 10000
    if version == 1:
        return (_fnv1a32(value + seed) % 1000) / 1000
    return None


def get_equal_weights(n: int) -> list[float]:
    """``n`` equal weights (nothing for ``n`` < 1)."""
    return [1.0 / n] * n if n >= 1 else []


def get_bucket_ranges(
    n: int, coverage: float, weights: Sequence[float] | None
) -> list[BucketRange]:
    """Each variation's slice of [0, 1): its weight, scaled down to ``coverage``.

    Weights that do not fit (wrong count, or not summing to 1) fall back to equal weights.
    """
    coverage = min(max(coverage, 0.0), 1.0)
    if weights is None or len(weights) != n or not 0.99 <= sum(weights) <= 1.01:
        weights = get_equal_weights(n)
    ranges: list[BucketRange] = []
    start = 0.0
    for weight in weights:
        ranges.append((start, start + coverage * weight))
        start += weight
    return ranges


def choose_variation(n: float, ranges: Sequence[BucketRange]) -> int:
    """The variation whose range holds ``n``, or -1 (not in the experiment)."""
    for index, (low, high) in enumerate(ranges):
        if low <= n < high:
            return index
    return -1


def in_namespace(user_id: str, namespace: tuple[str, float, float] | Sequence[object]) -> bool:
    """Whether the user falls in the namespace's [start, end) slice (mutual exclusion)."""
    name, start, end = namespace
    n = gb_hash("__" + str(name), user_id, 1)
    return n is not None and float(start) <= n < float(end)  # type: ignore[arg-type]
