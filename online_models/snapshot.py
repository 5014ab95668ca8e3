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

import numpy as np
import orjson

from firstmile.operators.errors import ModelError
from firstmile.operators.jsonbytes import kept
from firstmile.operators.population import PopulationStats

FORMAT = 3  # 2: churn as a staged hazard; 3: scalers name their log-transformed features
#: Formats this code reads (a 2 is a 3 without transforms). Older code refuses a 3 with a
#: ``ModelError`` and keeps its models, as it does any snapshot it cannot read.
READABLE = frozenset({2, 3})


@dataclass(frozen=True)
class Scaler:
    """Standardization learned online: z = (x - mean) / scale (scale 1 where unknown), of
    log(1 + x) for the features in ``log1p`` (heavy-tailed counts and rates)."""

    means: dict[str, float]
    scales: dict[str, float]
    log1p: tuple[str, ...] = ()

    @classmethod
    def learned(cls, scaler: Any, names: Sequence[str], log1p: tuple[str, ...] = ()) -> Scaler:
        """The published form of a River ``StandardScaler`` (its ``means`` and ``vars``)
        over ``names``, which learned from values already taken through ``log1p``."""
        means = {n: float(scaler.means.get(n, 0.0)) for n in names}
        scales = {
            n: math.sqrt(v) if (v := float(scaler.vars.get(n, 0.0))) > 1e-12 else 1.0 for n in names
        }
        return cls(means, scales, tuple(log1p))

    def z(self, x: dict[str, float], names: tuple[str, ...]) -> list[float]:
        means, scales, logs = self.means, self.scales, self.log1p
        if not logs:  # churn's and the policy's scalers, on every scoring
            return [(x.get(n, 0.0) - means.get(n, 0.0)) / scales.get(n, 1.0) for n in names]
        return [
            ((log1p(x.get(n, 0.0)) if n in logs else x.get(n, 0.0)) - means.get(n, 0.0))
            / scales.get(n, 1.0)
            for n in names
        ]

    def raw(self, z: Sequence[float], names: tuple[str, ...]) -> list[float]:
        """The point in the features' own units whose standardized form is ``z``."""
        means, scales, logs = self.means, self.scales, self.log1p
        values = (c * scales[n] + means[n] for c, n in zip(z, names, strict=True))
        return [math.expm1(v) if n in logs else v for v, n in zip(values, names, strict=True)]


def log1p(x: float) -> float:
    """log(1 + x) of a count or rate (never negative; a bad value reads as 0)."""
    return math.log1p(x) if x > 0 else 0.0


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
    logistic model of activation over the standardized ``features`` and whether the rules
    chose that path for the user (``rules``: the rules are context, so the policy follows
    them where they are right and learns where they are not), with the covariance of its
    parameters; and the off-policy estimates of the learned and the rules' policies on
    the logged choices."""

    version: str
    features: tuple[str, ...]
    scaler: Scaler
    paths: list[str]
    weights: list[list[float]]  # per path, in ``features`` order
    intercepts: list[float]
    rewards: int  # outcomes learned from
    estimates: dict[str, dict[str, float]]  # policy -> ips, dr, their 95 % intervals, n
    rules: list[float] = field(default_factory=list)  # per path: "the rules chose it"
    #: Per path, the covariance of (weights..., rules, intercept): the fit's inverse Hessian.
    covariances: list[list[list[float]]] = field(default_factory=list)

    def margins(
        self, rows: Sequence[dict[str, float]], rules_paths: Sequence[str | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per user (row) and path (column): the log-odds of activation and its standard
        error (``rules_paths``: the path the rules choose for each user)."""
        z = np.array([self.scaler.z(x, self.features) for x in rows]).reshape(len(rows), -1)
        chosen = np.array([[1.0 if p == r else 0.0 for p in self.paths] for r in rules_paths])
        rules = np.array(self.rules or [0.0] * len(self.paths))
        m = z @ np.array(self.weights).T + np.array(self.intercepts) + chosen * rules
        se = np.zeros_like(m)
        for k, cov in enumerate(self.covariances):
            v = np.hstack([z, chosen[:, k : k + 1], np.ones((len(rows), 1))])
            se[:, k] = np.sqrt(np.maximum(0.0, np.einsum("ij,jk,ik->i", v, np.array(cov), v)))
        return m, se

    def values(self, x: dict[str, float], rules_path: str | None = None) -> dict[str, float]:
        """Each path's estimated chance that this user activates."""
        m, _ = self.margins([x], [rules_path])
        return self.chances(m)[0]

    def chances(self, margins: np.ndarray) -> list[dict[str, float]]:
        """Per user, each path's chance of activation from its log-odds (``margins``)."""
        return [
            dict(zip(self.paths, row.tolist(), strict=True)) for row in 1 / (1 + np.exp(-margins))
        ]

    def best(
        self, rows: Sequence[dict[str, float]], rules_paths: Sequence[str | None]
    ) -> list[str]:
        """The path to give each user (``pick``)."""
        return self.pick(*self.margins(rows, rules_paths), rules_paths)

    def pick(self, m: np.ndarray, se: np.ndarray, rules_paths: Sequence[str | None]) -> list[str]:
        """From ``margins``: the best rated path per user, unless the rules' path is within
        ``CAUTION`` standard errors of it (then the rules': a policy that leaves them only
        where it knows better is at least as good as they are, however little it saw)."""
        top = np.argmax(m, axis=1)
        out = []
        for i, rules_path in enumerate(rules_paths):
            best = self.paths[top[i]]
            if rules_path in self.paths and best != rules_path:
                k, r = top[i], self.paths.index(rules_path)
                if m[i, k] - m[i, r] < CAUTION * math.hypot(se[i, k], se[i, r]):
                    best = rules_path
            out.append(best)
        return out


#: How sure (standard errors) the policy must be that a path beats the rules' to choose it.
CAUTION = 1.0


def probabilities(best: str | None, paths: Sequence[str], exploration: float) -> dict[str, float]:
    """Each path's probability: ``exploration / K`` each, the rest to ``best`` (uniform
    without one).

    >>> probabilities("b", ["a", "b"], 0.2)
    {'a': 0.1, 'b': 0.9}
    >>> probabilities(None, ["a", "b"], 0.2)
    {'a': 0.5, 'b': 0.5}
    """
    k = len(paths)
    if best not in paths:
        return dict.fromkeys(paths, 1 / k)
    return {p: exploration / k + (1 - exploration if p == best else 0.0) for p in paths}


def choose(
    policy: PathPolicy | None,
    x: dict[str, float],
    paths: Sequence[str],
    exploration: float,
    draw_key: str,
    rules_path: str | None = None,
) -> tuple[str, dict[str, float], dict[str, float]]:
    """(path, each path's chance, each path's rating) for the user ``x`` (the rules
    choose ``rules_path`` for them; before a policy rates every path, the learned arm
    follows the rules, exploring); ``draw_key`` names the draw (user and experiment), the
    same on every worker and in a replay."""
    if policy is not None and list(paths) == policy.paths:
        m, se = policy.margins([x], [rules_path])
        best: str | None = policy.pick(m, se, [rules_path])[0]
        values = policy.chances(m)[0]
    else:
        best, values = rules_path, {}
    chances = probabilities(best, paths, exploration)
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
        if data.get("format") not in READABLE:
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
                scaler=_scaler(segments["scaler"]),
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
                    "scaler": _scaler(churn["scaler"]),
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
                    "scaler": _scaler(policy["scaler"]),
                }
            )
            if policy
            else None,
        )


def _scaler(data: dict[str, Any]) -> Scaler:
    return Scaler(data["means"], data["scales"], tuple(data.get("log1p", ())))


def sign(snapshot: ModelSnapshot, key: bytes, key_id: str) -> bytes:
    body = snapshot.to_json()
    signature = hmac.new(key, body, hashlib.sha256).hexdigest()
    return kept({"key_id": key_id, "signature": signature, "body": body.decode()})


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
