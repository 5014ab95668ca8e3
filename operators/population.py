"""What the population looks like, learned online: fills users' gaps and clips outliers.

Numeric traits are imputed with their running mean, categorical traits with their
running mode (River's bounded ``Mode``), and durations are clipped at a running upper
quantile (River's P² ``Quantile``, a few floats of state). A ``Population`` belongs to
one worker's profile step and learns from the users that worker sees.

>>> pop = Population()
>>> for size in (10, 20, 30):
...     pop.observe_traits({"company_size": size, "role": "admin"})
>>> pop.impute("company_size"), pop.impute("role"), pop.impute("plan")
(20.0, 'admin', None)
>>> pop.clip("session_s", 120.0)  # too few observations to know an outlier: unchanged
120.0
"""

from __future__ import annotations

from river import stats

#: Traits with a numeric meaning; every other trait is categorical.
NUMERIC_TRAITS = frozenset({"company_size", "team_size", "seats", "age_days"})
#: Observations needed before clipping starts (P² is unstable before that).
MIN_FOR_CLIPPING = 50
CLIP_QUANTILE = 0.99


class Population:
    """Running mean/mode per trait and upper quantiles per duration kind (bounded)."""

    def __init__(self, max_traits: int = 32) -> None:
        self.max_traits = max_traits
        self._means: dict[str, stats.Mean] = {}
        self._modes: dict[str, stats.Mode] = {}
        self._quantiles: dict[str, tuple[stats.Quantile, stats.Count]] = {}

    def observe_traits(self, traits: dict[str, str | float]) -> None:
        for name, value in traits.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                mean = self._means.get(name)
                if mean is None and len(self._means) < self.max_traits:
                    mean = self._means[name] = stats.Mean()
                if mean is not None:
                    mean.update(float(value))
            elif isinstance(value, str):
                mode = self._modes.get(name)
                if mode is None and len(self._modes) < self.max_traits:
                    mode = self._modes[name] = stats.Mode(k=50)
                if mode is not None:
                    mode.update(value)

    def impute(self, name: str) -> float | str | None:
        """The value to assume for a missing trait, or None if nothing was seen yet."""
        mean = self._means.get(name)
        if mean is not None and mean.n:
            return float(mean.get())
        mode = self._modes.get(name)
        value = mode.get() if mode is not None else None
        return value if isinstance(value, str) else None

    def observe_duration(self, kind: str, seconds: float) -> None:
        held = self._quantiles.get(kind)
        if held is None:
            held = self._quantiles[kind] = (stats.Quantile(CLIP_QUANTILE), stats.Count())
        held[0].update(seconds)
        held[1].update()

    def clip(self, kind: str, seconds: float) -> float:
        """``seconds``, capped at the population's upper quantile once it is known."""
        held = self._quantiles.get(kind)
        if held is None or held[1].get() < MIN_FOR_CLIPPING:
            return seconds
        ceiling = held[0].get()
        return min(seconds, ceiling) if ceiling is not None else seconds
