"""Experiment readouts: per-arm conversion, relative lift with a 95 % interval, and a
verdict that stays valid however often the experiment is looked at.

A running experiment gets looked at every day, so a fixed-horizon test would cry wolf:
the verdict uses an asymptotic confidence sequence (Waudby-Smith et al., "Time-uniform
central limit theory and asymptotic confidence sequences", 2023; the normal-mixture
boundary, as GrowthBook's sequential testing uses), tuned for ``TUNING`` users. The
fixed-horizon 95 % interval is shown beside it, for the final look only.

>>> c = compare((4000, 800), (4000, 1040))
>>> round(c.lift, 3), c.verdict
(0.3, 'better')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table

from firstmile.operators.experiments import HOLDOUT, METRICS

ALPHA = 0.05
#: A sample ratio mismatch is flagged below this p-value (GrowthBook's default): with
#: a daily look over months, a looser one would flag fair experiments.
SRM_P = 0.001
#: Users the sequential boundary is tightest for (GrowthBook's default tuning).
TUNING = 5000
OUTCOMES = tuple(m for m in METRICS if m != "exposed")


@dataclass(frozen=True)
class Comparison:
    """One arm against the control on one outcome."""

    rate: float
    lift: float  # relative: rate / control rate - 1
    interval: tuple[float, float]  # fixed-horizon 95 %
    sequential: tuple[float, float]  # valid at any look
    verdict: str  # better | worse | inconclusive | too few users


def compare(control: tuple[int, int], arm: tuple[int, int], alpha: float = ALPHA) -> Comparison:
    """(users, successes) of the control and of an arm: the arm's relative lift."""
    (n_c, k_c), (n_t, k_t) = control, arm
    rate = k_t / n_t if n_t else math.nan
    if n_c < 2 or n_t < 2 or k_c == 0:
        nan = (math.nan, math.nan)
        return Comparison(rate, math.nan, nan, nan, "too few users")
    p_c, p_t = k_c / n_c, k_t / n_t
    lift = p_t / p_c - 1
    # Delta method: the variance of p_t / p_c.
    variance = p_t * (1 - p_t) / n_t / p_c**2 + p_t**2 * p_c * (1 - p_c) / n_c / p_c**4
    se = math.sqrt(variance)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    interval = (lift - z * se, lift + z * se)
    width = se * sequential_multiplier(n_c + n_t, alpha)
    sequential = (lift - width, lift + width)
    if se == 0:
        verdict = "too few users"
    elif sequential[0] > 0:
        verdict = "better"
    elif sequential[1] < 0:
        verdict = "worse"
    else:
        verdict = "inconclusive"
    return Comparison(rate, lift, interval, sequential, verdict)


def sequential_multiplier(n: int, alpha: float) -> float:
    """What replaces the normal quantile in a two-sided confidence sequence at ``n`` users."""
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / TUNING
    return math.sqrt(2 * (n * rho2 + 1) / (n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha))


def sample_ratio(exposed: dict[str, int], expected: dict[str, float]) -> dict[str, Any]:
    """Chi-square test of the arms' exposures against their designed shares: a mismatch
    (``flagged``) means assignment or logging is broken and the readout cannot be trusted.

    >>> sample_ratio({"a": 5000, "b": 5000}, {"a": 0.5, "b": 0.5})["flagged"]
    False
    >>> sample_ratio({"a": 5200, "b": 4800}, {"a": 0.5, "b": 0.5})["flagged"]
    True
    """
    from scipy.stats import chisquare  # here: only readouts pay for importing SciPy

    arms = [arm for arm, share in expected.items() if share > 0]
    observed = [exposed.get(arm, 0) for arm in arms]
    total = sum(observed)
    result: dict[str, Any] = {
        "expected": expected,
        "observed": dict(zip(arms, observed, strict=True)),
    }
    shares = sum(expected[arm] for arm in arms)
    wanted = [total * expected[arm] / shares for arm in arms]
    if len(arms) < 2 or min(wanted) < 5:  # the test needs 5 users expected per arm
        return result | {"p_value": None, "flagged": False}
    p_value = float(chisquare(observed, wanted).pvalue)
    return result | {"p_value": round(p_value, 6), "flagged": p_value < SRM_P}


def readout(
    counts: dict[str, Any], control: str, expected: dict[str, float] | None = None
) -> dict[str, Any]:
    """An experiment's tally (arm -> metric -> [users, successes]) read out; with the arms'
    designed shares (``expected``), its sample-ratio check."""
    arms: dict[str, Any] = {}
    base = counts.get(control, {})
    for arm, metrics in sorted(counts.items(), key=lambda item: (item[0] != control, item[0])):
        row: dict[str, Any] = {"users": metrics.get("exposed", [0, 0])[0]}
        for metric in OUTCOMES:
            n, k = metrics.get(metric, [0, 0])
            entry: dict[str, Any] = {"measured": n, "converted": k, "rate": _rate(n, k)}
            if arm != control and arm != HOLDOUT:
                c = compare(tuple(base.get(metric, [0, 0])), (n, k))
                entry |= {
                    "lift": _round(c.lift),
                    "ci95": [_round(c.interval[0]), _round(c.interval[1])],
                    "sequential_ci95": [_round(c.sequential[0]), _round(c.sequential[1])],
                    "verdict": c.verdict,
                }
            row[metric] = entry
        arms[arm] = row
    result = {"control": control, "arms": arms}
    if expected is not None:
        exposed = {arm: metrics.get("exposed", [0, 0])[0] for arm, metrics in counts.items()}
        result["sample_ratio"] = sample_ratio(exposed, expected)
    return result


def print_readouts(readouts: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    if not readouts:
        console.print("no experiment has users yet")
        return
    for key, result in readouts.items():
        for metric in OUTCOMES:
            table = Table(
                title=f"{key}: {metric} (control: {result['control']})",
                title_justify="left",
                box=box.SIMPLE_HEAD,
                pad_edge=False,
                collapse_padding=True,
            )
            table.add_column("arm", no_wrap=True)
            for column in ("users", "rate", "lift", "95% CI", "anytime CI"):
                table.add_column(column, justify="right", no_wrap=True)
            table.add_column("verdict", no_wrap=True)
            for arm, row in result["arms"].items():
                entry = row[metric]
                table.add_row(
                    arm,
                    f"{entry['measured']:,}",
                    _percent(entry["rate"]),
                    _percent(entry.get("lift"), signed=True),
                    _interval(entry.get("ci95")),
                    _interval(entry.get("sequential_ci95")),
                    entry.get("verdict", "control" if arm == result["control"] else ""),
                )
            console.print(table)
        check = result.get("sample_ratio")
        if check and check["flagged"]:
            console.print(
                f"[bold red]{key}: sample ratio mismatch[/] (p = {check['p_value']:.2g}): "
                f"users per arm {check['observed']} against the designed shares "
                f"{check['expected']}; assignment or exposure logging is broken, do not "
                "trust this readout"
            )
    console.print(
        "lift: relative to the control. The anytime-valid (sequential) CI and the verdict "
        "hold however often you look; the plain 95% CI only at a planned end."
    )


def _rate(n: int, k: int) -> float | None:
    return round(k / n, 4) if n else None


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1%}" if signed else f"{value:.1%}"


def _interval(bounds: list[float | None] | None) -> str:
    if not bounds or bounds[0] is None or bounds[1] is None:
        return "-"
    return f"{bounds[0]:+.0%}..{bounds[1]:+.0%}"


def print_estimates(policy: dict[str, Any], console: Console | None = None) -> None:
    """Off-policy estimates of the learned path policy and the rules (``models.policy``
    of a summary): what each would have achieved on the same logged users."""
    estimates = policy.get("estimates") or {}
    if not estimates:
        return
    console = console or Console()
    table = Table(
        title=f"learned onboarding paths ({policy['version']}, {policy['rewards']:,} outcomes): "
        "activation each policy would have had on the logged users",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in ("policy", "IPS", "95% CI", "DR", "95% CI", "mean weight"):
        justify: Literal["left", "right"] = "left" if column == "policy" else "right"
        table.add_column(column, justify=justify, no_wrap=True)
    names = {"ran": "learned, as it ran", "learned": "learned, newest", "rules": "rules"}
    for name, label in names.items():
        row = estimates.get(name)
        if row:
            table.add_row(
                label,
                _percent(row["ips"]),
                f"{row['ips_low']:.1%}..{row['ips_high']:.1%}",
                _percent(row["dr"]),
                f"{row['dr_low']:.1%}..{row['dr_high']:.1%}",
                f"{row['weight_mean']:.2f}" if "weight_mean" in row else "-",
            )
    console.print(table)
    console.print(
        "IPS: inverse propensity scoring; DR: doubly robust (the path models, corrected by "
        "the logged outcomes); mean weight: 1 when the arms logged what the policy chooses, "
        "well below when it chooses what was almost never logged for such users (its IPS "
        "then reads low)"
    )
    logged = estimates.get("logged", {}).get("rate")
    if logged is not None:
        console.print(f"logged (all arms as assigned): {logged:.1%}")
