"""Learned onboarding paths: a contextual bandit beside the rules, judged by experiments.

The choice (``snapshot.choose``, on every worker: no River there): a user in an
experiment's ``policy = "learned"`` arm gets their path at their first decision
point. The newest published ``PathPolicy`` rates each path (the chance this user
activates with it, given their features and the path the rules choose for them); the
best gets ``1 - e + e/K`` of the probability and every other ``e/K`` (``exploration`` e,
K paths: each path keeps a share, and a path the rules or consent forbid is never among
them), and a hash of the user and the experiment draws from that, so a replay draws the
same. Before a policy is published, the rules' path takes the best's share: the bandit
starts from what the rules know. The path is kept until the outcome; its propensity is
logged with it.

Learning (``PolicyLearner``, in the learner): every experiment user's choice (context,
path, propensity, the path the rules would have chosen) waits for their activation
outcome (``Reward``: delayed, days later). Choices of every arm count: a fixed path's
and the rules' choices are observations of those paths too. Each path's model is a
ridge logistic regression refitted on that path's logged outcomes every ``REFIT_EVERY``
outcomes (SciPy's L-BFGS; inputs standardized by River's running scaler), its intercept
held towards the pooled rate by ``PRIOR_ROWS`` pseudo-outcomes: one pass of SGD over a
few hundred delayed rewards per path (the first design, River's logistic regression)
had not converged within a two-week stream, and rated a path seen a few times by luck.

Off-policy evaluation (``estimates``): on the newest logged outcomes, what the learned
policy and the rules (all on the rules' path) would have achieved: inverse propensity
scoring and doubly robust (the path models as the direct estimate), each with a 95 %
normal interval, cross-fitted on two halves (each half judged by what the other fits).
Two learned policies are judged: the newest (``learned``: what it would achieve from
now on) and the one that ran (``ran``: each choice's chances under the policy published
at that moment, logged with it whatever the user's arm), which must agree with the
learned arm's online rate: a check of the logged propensities and of the estimators.
Each estimate carries its mean importance weight (``weight_mean``): near 1 when the
arms logged what the judged policy chooses; well below, it chooses what was almost
never logged for such users, and its IPS reads low (its doubly robust estimate leans
on the path models there).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from statistics import fmean, pstdev
from typing import Any

import numpy as np
from river import preprocessing
from scipy.optimize import minimize

from firstmile.online_models.snapshot import PathPolicy, Scaler, probabilities
from firstmile.operators.samples import Choice, Reward

#: What the policy reads of a user at their first decision point.
POLICY_FEATURES: tuple[str, ...] = (
    "events_24h",
    "sessions",
    "session_mean_min",
    "onboarding_progress",
    "steps_skipped",
    "steps_stuck",
    "features_distinct",
    "feature_use_share",
    "skip_share",
    "page_view_share",
    "is_mobile",
    "role_admin",
    "company_size_log",
)
#: Logged outcomes the estimates read (the newest).
LOGGED = 20_000
_Z = 1.959964


#: Outcomes between refits of the path models.
REFIT_EVERY = 100
#: Pseudo-outcomes at the pooled rate behind each path's intercept.
PRIOR_ROWS = 30.0


#: A logged outcome: (features, path, logged propensity, the rules' path, activated, each
#: path's chance under the learned policy then running; absent in older snapshots).
Logged = tuple[dict[str, float], str, float, str, bool, dict[str, float] | None]
#: Each path's fitted model: (weights, intercept, the weight of "the rules chose it").
Fitted = dict[str, tuple[list[float], float, float]]


class PolicyLearner:
    def __init__(self) -> None:
        self.scaler = preprocessing.StandardScaler()
        self.waiting: dict[tuple[str, str], Choice] = {}  # (user, experiment) -> choice
        self.logged: deque[Logged] = deque(maxlen=LOGGED)
        self.rewards = 0
        self.versions = 0
        self.fitted: Fitted = {}  # path -> w, b, rules
        self.fitted_at = 0  # rewards at the last refit
        self.covariances: dict[str, list[list[float]]] = {}  # path -> of (w..., rules, b)
        self.published: PathPolicy | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # Outcomes logged before the running chances were: the same rows, without them.
        self.logged = deque(
            (row if len(row) == 6 else (*row, None) for row in self.logged), maxlen=LOGGED
        )

    def chose(self, choice: Choice) -> None:
        self.waiting[(choice.user_id, choice.experiment)] = choice

    def rewarded(self, reward: Reward) -> None:
        """A choice's outcome, logged for the path models and the estimates."""
        choice = self.waiting.pop((reward.user_id, reward.experiment), None)
        if choice is None:
            return
        x = {name: choice.features.get(name, 0.0) for name in POLICY_FEATURES}
        self.scaler.learn_one(x)
        # A choice pickled before ``running`` existed has no such slot.
        running = getattr(choice, "running", None)
        self.logged.append(
            (x, choice.path, choice.logged, choice.rules_path, reward.success, running)
        )
        self.rewards += 1

    def refit(self, paths: Sequence[str]) -> None:
        """Each path's model on its logged outcomes (from its last fit)."""
        self.fitted, self.covariances = self._fit(list(self.logged), paths, self.fitted)
        self.fitted_at = self.rewards

    def _fit(
        self,
        rows: list[Logged],
        paths: Sequence[str],
        start: Fitted,
    ) -> tuple[Fitted, dict[str, list[list[float]]]]:
        """Each path's model on ``rows`` (from ``start``): (w, b, rules) and covariance."""
        pooled = fmean(1.0 if r[4] else 0.0 for r in rows)
        prior = math.log(max(pooled, 1e-3) / max(1 - pooled, 1e-3))
        names = POLICY_FEATURES
        fitted, covariances = dict(start), {}
        for path in paths:
            mine = [r for r in rows if r[1] == path]
            if not mine:
                continue
            x = np.array(
                [
                    [*self.scaler.transform_one(r[0]).values(), 1.0 if r[3] == path else 0.0]
                    for r in mine
                ]
            )
            y = np.array([1.0 if r[4] else 0.0 for r in mine])
            w, b, r = fitted.get(path, ([0.0] * len(names), prior, 0.0))
            fit = minimize(
                _loss, np.array([*w, r, b]), args=(x, y, prior), jac=True, method="L-BFGS-B"
            )
            weights = [float(v) for v in fit.x]
            fitted[path] = (weights[: len(names)], weights[-1], weights[-2])
            covariances[path] = _covariance(fit.x, x).tolist()
        return fitted, covariances

    def _policy(
        self,
        paths: Sequence[str],
        fitted: Fitted,
        covariances: dict[str, list[list[float]]],
        version: str = "",
    ) -> PathPolicy:
        return PathPolicy(
            version=version,
            features=POLICY_FEATURES,
            scaler=Scaler.learned(self.scaler, POLICY_FEATURES),
            paths=list(paths),
            weights=[fitted[p][0] for p in paths],
            intercepts=[fitted[p][1] for p in paths],
            rewards=self.rewards,
            estimates={},
            rules=[fitted[p][2] for p in paths],
            covariances=[covariances[p] for p in paths],
        )

    def model(self, paths: Sequence[str], exploration: float) -> PathPolicy | None:
        """The policy to publish (None until every path has outcomes to rate it by)."""
        if not self.rewards:
            return None
        due = self.rewards - self.fitted_at >= REFIT_EVERY
        if self.rewards > self.fitted_at and (due or any(p not in self.fitted for p in paths)):
            self.refit(paths)
        elif self.published is not None and self.published.paths == list(paths):
            return self.published  # nothing refitted: the same policy, the same estimates
        if any(p not in self.fitted for p in paths):
            return None
        self.versions += 1
        policy = self._policy(paths, self.fitted, self.covariances, f"policy-v{self.versions}")
        self.published = replace(policy, estimates=self.estimates(paths, exploration))
        return self.published

    def estimates(self, paths: Sequence[str], exploration: float) -> dict[str, dict[str, float]]:
        """IPS and doubly robust estimates of each policy's activation rate on the logged
        outcomes, with 95 % intervals; and the logging policies' own rate. Cross-fitted:
        each half of the outcomes is judged by the policy and path models fitted on the
        other half, so a policy never grades the outcomes it was fitted to (in-sample,
        the learned policy's doubly robust estimate read 64 % where its users activated
        at 49 %, on ``sim/1`` of ``bench/bench_paths``)."""
        rows = [row for row in self.logged if row[1] in paths]
        if len(rows) < 60:
            return {}
        ips: dict[str, list[float]] = {"learned": [], "rules": [], "ran": []}
        dr: dict[str, list[float]] = {"learned": [], "rules": [], "ran": []}
        weights: dict[str, list[float]] = {"learned": [], "rules": [], "ran": []}
        for fold in (0, 1):
            judged, fitting = rows[fold::2], rows[1 - fold :: 2]
            fitted, covariances = self._fit(fitting, paths, {})  # nothing of the judged
            if any(p not in covariances for p in paths):
                return {}
            policy = self._policy(paths, fitted, covariances)
            xs, rules_paths = [r[0] for r in judged], [r[3] for r in judged]
            margins, errors = policy.margins(xs, rules_paths)
            values = policy.chances(margins)
            learned = policy.pick(margins, errors, rules_paths)
            for i, (_, path, propensity, rules_path, success, ran) in enumerate(judged):
                targets = {
                    "learned": probabilities(learned[i], paths, exploration),
                    "rules": {p: 1.0 if p == rules_path else 0.0 for p in paths},
                }
                if ran:
                    targets["ran"] = ran
                reward = 1.0 if success else 0.0
                value = values[i]
                for name, chances in targets.items():
                    weight = chances.get(path, 0.0) / propensity
                    weights[name].append(weight)
                    ips[name].append(weight * reward)
                    direct = sum(chances.get(p, 0.0) * value[p] for p in paths)
                    dr[name].append(direct + weight * (reward - value[path]))
        out: dict[str, dict[str, float]] = {}
        for name in ("learned", "rules", "ran"):
            if len(ips[name]) >= 60:
                out[name] = {
                    **_mean_interval("ips", ips[name]),
                    **_mean_interval("dr", dr[name]),
                    "n": float(len(ips[name])),
                    "weight_mean": _weight_mean(weights[name]),
                }
        out["logged"] = {"rate": round(fmean(1.0 if r[4] else 0.0 for r in rows), 4)}
        return out


def _loss(
    params: np.ndarray, x: np.ndarray, y: np.ndarray, prior: float
) -> tuple[float, np.ndarray]:
    """Log-loss summed over the rows, ``|w|^2 / 2`` on the inputs' weights and
    ``PRIOR_ROWS`` pseudo-outcomes' worth of pull of the intercept (last) towards
    ``prior``; and its gradient."""
    w, b = params[:-1], params[-1]
    margin = x @ w + b
    p = 1.0 / (1.0 + np.exp(-np.clip(margin, -30.0, 30.0)))
    pull = 0.25 * PRIOR_ROWS  # the log-loss's curvature at p = 1/2, times the rows
    loss = np.sum(np.logaddexp(0.0, margin) - y * margin) + 0.5 * w @ w
    loss += 0.5 * pull * (b - prior) ** 2
    residual = p - y
    grad = np.append(x.T @ residual + w, residual.sum() + pull * (b - prior))
    return float(loss), grad


def _covariance(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The inverse Hessian of ``_loss`` at ``params``: the parameters' covariance."""
    margin = x @ params[:-1] + params[-1]
    p = 1.0 / (1.0 + np.exp(-np.clip(margin, -30.0, 30.0)))
    design = np.hstack([x, np.ones((len(x), 1))])
    hessian = design.T @ (design * (p * (1 - p))[:, None])
    hessian += np.diag([*([1.0] * x.shape[1]), 0.25 * PRIOR_ROWS])
    return np.linalg.inv(hessian)


def _weight_mean(weights: list[float]) -> float:
    """The mean importance weight, 1 in expectation when the logged choices cover what
    the judged policy would choose: below it, the policy puts its chances on choices the
    arms almost never logged for such users (a mixture propensity near 0.2 / 5 / 3 with
    a few hundred outcomes: the rows that would carry the weight never came), so its IPS
    reads low and its intervals know nothing of it.

    >>> _weight_mean([2.0, 0.0] * 50), _weight_mean([0.5] * 10)
    (1.0, 0.5)
    """
    return round(fmean(weights), 3) if weights else 0.0


def _mean_interval(name: str, terms: list[float]) -> dict[str, float]:
    mean = fmean(terms)
    half = _Z * pstdev(terms) / math.sqrt(len(terms))
    return {
        name: round(mean, 4),
        f"{name}_low": round(mean - half, 4),
        f"{name}_high": round(mean + half, 4),
    }
