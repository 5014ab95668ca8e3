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
>>> ranked = PopulationStats(risk_ranks=[[1.5, *(i / 100 for i in range(1, 100))], [1e9]])
>>> ranked.risk_rank(0.855, 0.5), ranked.risk_rank(0.5, 2.0), NOBODY.risk_rank(0.5, 0.5)
(0.85, None, None)
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PopulationStats:
    """Per trait its mean (numeric) or mode (categorical); per duration kind the
    ceiling it is clipped at (an upper quantile, once enough were seen); per age band
    where a churn risk ranks among recent decision points'."""

    means: dict[str, float] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    ceilings: dict[str, float] = field(default_factory=dict)
    #: Churn risks published at recent decision points, per age band: [[upper bound of
    #: the band in days since signup, the 1st to 99th percentile of their risks], ...],
    #: in order; a band not yet seen enough has its bound alone.
    risk_ranks: list[list[float]] = field(default_factory=list)

    def impute(self, name: str) -> float | str | None:
        """The value to assume for a missing trait, or None if nothing was seen yet."""
        mean = self.means.get(name)
        return mean if mean is not None else self.modes.get(name)

    def clip(self, kind: str, seconds: float) -> float:
        """``seconds``, capped at the population's ceiling once it is known."""
        ceiling = self.ceilings.get(kind)
        return min(seconds, ceiling) if ceiling is not None else seconds

    def risk_rank(self, risk: float, age_days: float) -> float | None:
        """The share of recent decision points at the user's age (``age_days`` since
        signup) whose risk was lower, in hundredths; None until enough were seen."""
        for band in self.risk_ranks:  # [upper, cut, ...]: read in place, on every scoring
            if age_days < band[0]:
                return (
                    (bisect.bisect_left(band, risk, 1) - 1) / len(band) if len(band) > 1 else None
                )
        return None


NOBODY = PopulationStats()  # before the first snapshot: nothing imputed, nothing clipped
