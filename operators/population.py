"""What the population looks like, as published with the models: fills users' gaps and
clips outliers. Plain numbers, no River: every worker reads the same ``PopulationStats``
from the newest model snapshot, so features do not depend on which worker holds a user,
and a replay after a restart reads what the original run read at that point (the
learner's recovered state republishes it). ``online_models.population`` learns them.

>>> stats = PopulationStats({"company_size": 20.0}, {"role": "admin"}, {"session_s": 90.0})
>>> stats.impute("company_size"), stats.impute("role"), stats.impute("plan")
(20.0, 'admin', None)
>>> stats.clip("session_s", 120.0), stats.clip("onboarding_s", 1e6)
(90.0, 1000000.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PopulationStats:
    """Per trait its mean (numeric) or mode (categorical); per duration kind the
    ceiling it is clipped at (an upper quantile, once enough were seen)."""

    means: dict[str, float] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    ceilings: dict[str, float] = field(default_factory=dict)

    def impute(self, name: str) -> float | str | None:
        """The value to assume for a missing trait, or None if nothing was seen yet."""
        mean = self.means.get(name)
        return mean if mean is not None else self.modes.get(name)

    def clip(self, kind: str, seconds: float) -> float:
        """``seconds``, capped at the population's ceiling once it is known."""
        ceiling = self.ceilings.get(kind)
        return min(seconds, ceiling) if ceiling is not None else seconds


NOBODY = PopulationStats()  # before the first snapshot: nothing imputed, nothing clipped
