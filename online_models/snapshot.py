"""Published models: a plain-JSON snapshot, HMAC-signed, that scorers load without River.

A snapshot holds only numbers (scaler means and scales, cluster centers, logistic
weights), so loading one runs no code from the store: nothing is unpickled. The envelope
is ``{"key_id", "signature", "body"}`` with ``signature = HMAC-SHA256(key, body)``;
``verify`` refuses a snapshot whose signature does not match, or that is unsigned, with
a ``ModelError`` that says which.

>>> snap = ModelSnapshot(version=3, created_at="2026-03-02T00:00:00.000Z")
>>> envelope = sign(snap, b"k", "m1")
>>> verify(envelope, {"m1": b"k"}).version
3
>>> verify(envelope.replace(b"created_at", b"created_by"), {"m1": b"k"})
Traceback (most recent call last):
...
firstmile.operators.errors.ModelError: model snapshot refused: signature does not match (key m1)
"""

from __future__ import annotations

import hashlib
import hmac
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from firstmile.operators.errors import ModelError
from firstmile.operators.population import PopulationStats

FORMAT = 2  # 2: churn as a staged hazard


@dataclass(frozen=True)
class Scaler:
    """Standardization learned online: z = (x - mean) / scale (scale 1 where unknown)."""

    means: dict[str, float]
    scales: dict[str, float]

    @classmethod
    def learned(cls, scaler: Any, names: Sequence[str]) -> Scaler:
        """The published form of a River ``StandardScaler`` (its ``means`` and ``vars``)
        over ``names``."""
        means = {n: float(scaler.means.get(n, 0.0)) for n in names}
        scales = {
            n: math.sqrt(v) if (v := float(scaler.vars.get(n, 0.0))) > 1e-12 else 1.0 for n in names
        }
        return cls(means, scales)

    def z(self, x: dict[str, float], names: tuple[str, ...]) -> list[float]:
        means, scales = self.means, self.scales
        return [(x.get(n, 0.0) - means.get(n, 0.0)) / scales.get(n, 1.0) for n in names]


@dataclass(frozen=True)
class Segment:
    id: str
    label: str
    description: str
    center: list[float]  # in the snapshot's standardized space, in ``features`` order
    size: int  # learning samples it won, recently weighted


@dataclass(frozen=True)
class Forecast:
    """Young users' segment (``firstmile.online_models.forecast``): a softmax over the segments, per
    segment id the weights of the standardized features, then one per age bucket (below
    each of ``age_edges``, then older), then the bias."""

    until_days: float  # older users get the nearest center
    age_edges: list[float]
    weights: dict[str, list[float]]
    labels: int
    agreement: float  # with the mature segment, decayed running share
    nearest_agreement: float  # the nearest center's, on the same snapshots

    def scores(self, z: list[float], age_days: float) -> dict[str, float]:
        """Each segment's logit for standardized features ``z`` at ``age_days``."""
        x = forecast_inputs(z, age_days, self.age_edges)
        return {
            sid: sum(w * v for w, v in zip(ws, x, strict=True)) for sid, ws in self.weights.items()
        }


def forecast_inputs(z: list[float], age_days: float, edges: list[float]) -> list[float]:
    """The forecast's inputs: ``z``, a one-hot age bucket, a constant 1 (the bias)."""
    bucket = [0.0] * (len(edges) + 1)
    bucket[sum(age_days >= edge for edge in edges)] = 1.0
    return [*z, *bucket, 1.0]


@dataclass(frozen=True)
class SegmentModel:
    version: str
    features: tuple[str, ...]
    scaler: Scaler
    segments: list[Segment]
    retired: list[str] = field(default_factory=list)
    #: How much each feature separates the segments: the spread of the centers along it,
    #: as a share of the total (standardized units).
    importance: dict[str, float] = field(default_factory=dict)
    forecast: Forecast | None = None


@dataclass(frozen=True)
class ChurnStage:
    """One step of the churn hazard: P(still away at ``horizon_h`` | away at the one before),
    a logistic regression over the standardized inputs, or a ``constant`` rate while it
    has too few labels."""

    horizon_h: int
    weights: list[float]  # per standardized input, in ``ChurnModel.features`` order
    intercept: float
    constant: float | None = None
    calibration: list[float] = field(default_factory=lambda: [1.0, 0.0])  # Platt's [a, b]


@dataclass(frozen=True)
class ChurnModel:
    version: str
    features: tuple[str, ...]
    scaler: Scaler  # over ``firstmile.online_models.risk.churn_inputs``
    stages: list[ChurnStage]  # risk = calibrated(the product of their probabilities)
    #: Platt maps per age band: [[upper days since signup, a, b], ...], in order; the
    #: risk is sigmoid(a * logit(product) + b) of the user's band.
    calibration: list[list[float]]
    labels: int  # first-stage labels learned from
    metrics: dict[str, float]  # progressive validation: roc_auc, log_loss, ece
    importance: dict[str, float]  # |weight| share per feature
    #: The reliability diagram behind ``ece``: [mean risk published, churn rate seen,
    #: decisions] per tenth of the risk scale that has decisions.
    reliability: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class PathPolicy:
    """A learned onboarding-path policy (``firstmile.online_models.policy``): per path, a
    logistic model of activation over the standardized ``features``; and the off-policy
    estimates of the learned and the rules' policies on the logged choices."""

    version: str
    features: tuple[str, ...]
    scaler: Scaler
    paths: list[str]
    weights: list[list[float]]  # per path, in ``features`` order
    intercepts: list[float]
    rewards: int  # outcomes learned from
    estimates: dict[str, dict[str, float]]  # policy -> ips, dr, their 95 % intervals, n

    def values(self, x: dict[str, float]) -> dict[str, float]:
        """Each path's estimated chance that this user activates."""
        z = self.scaler.z(x, self.features)
        return {
            path: 1
            / (
                1
                + math.exp(
                    -max(-30.0, min(30.0, b + sum(w * v for w, v in zip(ws, z, strict=True))))
                )
            )
            for path, ws, b in zip(self.paths, self.weights, self.intercepts, strict=True)
        }


def probabilities(
    values: dict[str, float] | None, paths: Sequence[str], exploration: float
) -> dict[str, float]:
    """Each path's probability: ``exploration / K`` each, the rest to the best rated
    (uniform without ratings).

    >>> probabilities({"a": 0.2, "b": 0.5}, ["a", "b"], 0.2)
    {'a': 0.1, 'b': 0.9}
    """
    k = len(paths)
    if not values:
        return dict.fromkeys(paths, 1 / k)
    best = max(paths, key=lambda p: (values.get(p, 0.0), p))
    return {p: exploration / k + (1 - exploration if p == best else 0.0) for p in paths}


def choose(
    policy: PathPolicy | None,
    x: dict[str, float],
    paths: Sequence[str],
    exploration: float,
    draw_key: str,
) -> tuple[str, dict[str, float], dict[str, float]]:
    """(path, each path's chance, each path's rating) for the user ``x``; ``draw_key``
    names the draw (user and experiment), the same on every worker and in a replay."""
    rated = policy.values(x) if policy is not None else {}
    values = {p: rated[p] for p in paths if p in rated}
    chances = probabilities(values if len(values) == len(paths) else None, paths, exploration)
    u = zlib.crc32(draw_key.encode()) / 2**32
    total = 0.0
    for path in paths:
        total += chances[path]
        if u < total:
            return path, chances, values
    return paths[-1], chances, values


@dataclass(frozen=True)
class ModelSnapshot:
    version: int
    created_at: str
    segments: SegmentModel | None = None
    churn: ChurnModel | None = None
    #: What the population looks like (trait means and modes, duration ceilings): what
    #: features impute and clip with, the same on every worker.
    population: PopulationStats | None = None
    policy: PathPolicy | None = None  # learned onboarding paths, once rewards came

    def to_json(self) -> bytes:
        return orjson.dumps({"format": FORMAT, **asdict(self)}, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, body: bytes) -> ModelSnapshot:
        data = orjson.loads(body)
        if data.get("format") != FORMAT:
            raise ModelError(f"model snapshot refused: unknown format {data.get('format')!r}")
        segments = data.get("segments")
        churn = data.get("churn")
        population = data.get("population")
        policy = data.get("policy")
        return cls(
            version=int(data["version"]),
            created_at=str(data["created_at"]),
            segments=SegmentModel(
                version=segments["version"],
                features=tuple(segments["features"]),
                scaler=Scaler(**segments["scaler"]),
                segments=[Segment(**s) for s in segments["segments"]],
                retired=list(segments["retired"]),
                importance=dict(segments.get("importance", {})),
                forecast=Forecast(**segments["forecast"]) if segments.get("forecast") else None,
            )
            if segments
            else None,
            churn=ChurnModel(
                **{
                    **churn,
                    "features": tuple(churn["features"]),
                    "scaler": Scaler(**churn["scaler"]),
                    "stages": [ChurnStage(**stage) for stage in churn["stages"]],
                }
            )
            if churn
            else None,
            population=PopulationStats(**population) if population else None,
            policy=PathPolicy(
                **{
                    **policy,
                    "features": tuple(policy["features"]),
                    "scaler": Scaler(**policy["scaler"]),
                }
            )
            if policy
            else None,
        )


def sign(snapshot: ModelSnapshot, key: bytes, key_id: str) -> bytes:
    body = snapshot.to_json()
    signature = hmac.new(key, body, hashlib.sha256).hexdigest()
    return orjson.dumps({"key_id": key_id, "signature": signature, "body": body.decode()})


def verify(envelope: bytes, keys: dict[str, bytes]) -> ModelSnapshot:
    """The snapshot in ``envelope`` if one of ``keys`` signed it; else ``ModelError``."""
    try:
        outer: Any = orjson.loads(envelope)
        key_id, signature, body = outer["key_id"], outer["signature"], outer["body"]
    except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
        raise ModelError("model snapshot refused: not a signed envelope") from exc
    if not isinstance(signature, str) or not signature:
        raise ModelError("model snapshot refused: unsigned")
    key = keys.get(key_id)
    if key is None:
        raise ModelError(f"model snapshot refused: signed with unknown key {key_id!r}")
    expected = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise ModelError(f"model snapshot refused: signature does not match (key {key_id})")
    try:
        return ModelSnapshot.from_json(body.encode())
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model snapshot refused: malformed body ({exc})") from exc
