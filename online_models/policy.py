"""Learned onboarding paths: a contextual bandit beside the rules, judged by experiments.

The choice (``snapshot.choose``, on every worker: no River there): a user in an
experiment's ``policy = "learned"`` arm gets their path at their first decision
point. The newest published ``PathPolicy`` rates each path (the chance this user
activates with it); the best gets
``1 - e + e/K`` of the probability and every other ``e/K`` (``exploration`` e, K paths:
each path keeps a share, and a path the rules or consent forbid is never among them),
and a hash of the user and the experiment draws from that, so a replay draws the same.
Before a policy is published: uniform. The path is kept until the outcome; its
propensity is logged with it.

Learning (``PolicyLearner``, in the learner): every experiment user's choice (context,
path, propensity, the path the rules would have chosen) waits for their activation
outcome (``Reward``: delayed, days later), then the chosen path's logistic model learns
(context, outcome). Choices of every arm count: a fixed path's and the rules' choices
are observations of those paths too.

Off-policy evaluation (``estimates``): on the newest logged outcomes, what the learned
policy (its probabilities now) and the rules (all on the rules' path) would have
achieved: inverse propensity scoring and doubly robust (the path models as the direct
estimate), each with a 95 % normal interval.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from statistics import fmean, pstdev

from river import linear_model, optim, preprocessing

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


class PolicyLearner:
    def __init__(self, lr: float = 0.05) -> None:
        self.lr = lr
        self.scaler = preprocessing.StandardScaler()
        self.models: dict[str, linear_model.LogisticRegression] = {}
        self.waiting: dict[tuple[str, str], Choice] = {}  # (user, experiment) -> choice
        self.logged: deque[tuple[dict[str, float], str, float, str, bool]] = deque(maxlen=LOGGED)
        self.rewards = 0
        self.versions = 0
        self.exploration: dict[str, float] = {}  # experiment -> its learned arm's share

    def chose(self, choice: Choice) -> None:
        self.waiting[(choice.user_id, choice.experiment)] = choice

    def rewarded(self, reward: Reward) -> None:
        """A choice's outcome: the chosen path learns it; the estimates log it."""
        choice = self.waiting.pop((reward.user_id, reward.experiment), None)
        if choice is None:
            return
        x = {name: choice.features.get(name, 0.0) for name in POLICY_FEATURES}
        self.scaler.learn_one(x)
        z = self.scaler.transform_one(x)
        model = self.models.get(choice.path)
        if model is None:
            model = self.models[choice.path] = linear_model.LogisticRegression(
                optimizer=optim.SGD(self.lr), l2=1e-4
            )
        model.learn_one(z, reward.success)
        self.logged.append((x, choice.path, choice.logged, choice.rules_path, reward.success))
        self.rewards += 1

    def model(self, paths: Sequence[str], exploration: float) -> PathPolicy | None:
        """The policy to publish (None until every path has outcomes to rate it by)."""
        if not self.rewards or any(p not in self.models for p in paths):
            return None
        names = POLICY_FEATURES
        scaler = Scaler.learned(self.scaler, names)
        self.versions += 1
        policy = PathPolicy(
            version=f"policy-v{self.versions}",
            features=names,
            scaler=scaler,
            paths=list(paths),
            weights=[[float(self.models[p].weights.get(n, 0.0)) for n in names] for p in paths],
            intercepts=[float(self.models[p].intercept) for p in paths],
            rewards=self.rewards,
            estimates={},
        )
        return PathPolicy(**{**policy.__dict__, "estimates": self.estimates(policy, exploration)})

    def estimates(self, policy: PathPolicy, exploration: float) -> dict[str, dict[str, float]]:
        """IPS and doubly robust estimates of each policy's activation rate on the logged
        outcomes, with 95 % intervals; and the logging policies' own rate."""
        paths = policy.paths
        rows = [row for row in self.logged if row[1] in paths]
        if len(rows) < 30:
            return {}
        ips: dict[str, list[float]] = {"learned": [], "rules": []}
        dr: dict[str, list[float]] = {"learned": [], "rules": []}
        for x, path, propensity, rules_path, success in rows:
            values = policy.values(x)
            targets = {
                "learned": probabilities(values, paths, exploration),
                "rules": {p: 1.0 if p == rules_path else 0.0 for p in paths},
            }
            reward = 1.0 if success else 0.0
            for name, chances in targets.items():
                weight = chances[path] / propensity
                ips[name].append(weight * reward)
                direct = sum(chances[p] * values[p] for p in paths)
                dr[name].append(direct + weight * (reward - values[path]))
        out: dict[str, dict[str, float]] = {}
        for name in ("learned", "rules"):
            out[name] = {
                **_mean_interval("ips", ips[name]),
                **_mean_interval("dr", dr[name]),
                "n": float(len(rows)),
            }
        out["logged"] = {"rate": round(fmean(1.0 if r[4] else 0.0 for r in rows), 4)}
        return out


def _mean_interval(name: str, terms: list[float]) -> dict[str, float]:
    mean = fmean(terms)
    half = _Z * pstdev(terms) / math.sqrt(len(terms))
    return {
        name: round(mean, 4),
        f"{name}_low": round(mean - half, 4),
        f"{name}_high": round(mean + half, 4),
    }
