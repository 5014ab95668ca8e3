"""Learns what the population looks like from the profile steps' observations (traits,
durations), for the learner to publish with the models (``PopulationStats``).

Numeric traits: running mean; categorical traits: running mode (River's bounded
``Mode``); durations: a running upper quantile (River's P² ``Quantile``, a few floats of
state), published once ``MIN_FOR_CLIPPING`` were seen (P² is unstable before that).

>>> pop = PopulationLearner()
>>> for size in (10, 20, 30):
...     pop.observe_traits({"company_size": size, "role": "admin"})
>>> stats = pop.stats()
>>> stats.impute("company_size"), stats.impute("role"), stats.clip("session_s", 120.0)
(20.0, 'admin', 120.0)
"""

from __future__ import annotations

from collections import deque

import numpy as np
from river import stats

from firstmile.online_models.risk import AGE_BANDS, age_band
from firstmile.operators.features import MIX_FEATURES
from firstmile.operators.population import PopulationStats
from firstmile.operators.profile import mix_bucket
from firstmile.operators.samples import Observation

MIN_FOR_CLIPPING = 50
CLIP_QUANTILE = 0.99
NAMES_PER_BUCKET = 8  # event names counted per mix bucket (the first ones seen)
#: Churn risks ranked against, per age band: the newest decision points', once this many.
RISK_WINDOW, MIN_FOR_RANKS = 1000, 200


class PopulationLearner:
    """Running mean/mode per trait and upper quantiles per duration kind (bounded)."""

    def __setstate__(self, state: dict[str, object]) -> None:
        # (pickled before the event names, or before the risks)
        self.__dict__.update({"_names": {}, "_risks": _risk_windows()} | state)

    def __init__(self, max_traits: int = 32) -> None:
        self.max_traits = max_traits
        self._means: dict[str, stats.Mean] = {}
        self._modes: dict[str, stats.Mode] = {}
        self._quantiles: dict[str, tuple[stats.Quantile, stats.Count]] = {}
        #: Mix bucket -> event name -> users whose first event in the bucket it was.
        self._names: dict[int, dict[str, int]] = {}
        self._risks = _risk_windows()  # per age band, the newest decision points' risks

    def observe(self, observation: Observation) -> None:
        if observation.traits is not None:
            self.observe_traits(observation.traits)
        if observation.kind:
            self.observe_duration(observation.kind, observation.seconds)
        if observation.event_name:
            self.observe_name(observation.event_name)

    def observe_name(self, name: str) -> None:
        names = self._names.setdefault(mix_bucket(name), {})
        if name in names or len(names) < NAMES_PER_BUCKET:
            names[name] = names.get(name, 0) + 1

    def bucket_names(self) -> dict[str, str]:
        """Each mix feature's most common event name (by users), for segment labels.

        >>> pop = PopulationLearner()
        >>> for name in ("Report Created", "Report Created", "page"):
        ...     pop.observe_name(name)
        >>> pop.bucket_names()[MIX_FEATURES[mix_bucket("Report Created")]]
        'Report Created'
        """
        return {
            MIX_FEATURES[bucket]: max(names, key=lambda name: (names[name], name))
            for bucket, names in self._names.items()
        }

    def observe_risk(self, features: dict[str, float], risk: float) -> None:
        """A decision point's published churn risk (``features``: the user's then)."""
        self._risks[age_band(features)].append(risk)

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

    def observe_duration(self, kind: str, seconds: float) -> None:
        held = self._quantiles.get(kind)
        if held is None:
            held = self._quantiles[kind] = (stats.Quantile(CLIP_QUANTILE), stats.Count())
        held[0].update(seconds)
        held[1].update()

    def stats(self) -> PopulationStats | None:
        """What to publish; None before anything was observed."""
        ranked = any(len(risks) >= MIN_FOR_RANKS for risks in self._risks)
        if not (self._means or self._modes or self._quantiles or ranked):
            return None
        modes = {name: mode.get() for name, mode in self._modes.items()}
        ceilings = {
            kind: float(ceiling)
            for kind, (quantile, count) in self._quantiles.items()
            if count.get() >= MIN_FOR_CLIPPING and (ceiling := quantile.get()) is not None
        }
        return PopulationStats(
            {name: float(mean.get()) for name, mean in self._means.items() if mean.n},
            {name: value for name, value in modes.items() if isinstance(value, str)},
            ceilings,
            [
                [upper, *(_percentiles(risks) if len(risks) >= MIN_FOR_RANKS else ())]
                for upper, risks in zip(AGE_BANDS, self._risks, strict=True)
            ],
        )


def _risk_windows() -> list[deque[float]]:
    return [deque(maxlen=RISK_WINDOW) for _ in AGE_BANDS]


def _percentiles(values: deque[float]) -> list[float]:
    """The 1st to 99th percentile of ``values``."""
    return [round(float(q), 6) for q in np.quantile(np.array(values), np.arange(1, 100) / 100)]
