"""Learned onboarding paths against the rules, on reactive streams: the built-in
simulator (``sim``: the shipped config/paths.toml was written for it), the same
users reacting to paths otherwise (``shifted``: each persona suits other paths, so the
rules are wrong and a policy cannot win by one memorised mapping), and the bench's
generators written apart from the simulator (``b2b``, ``devtool``, ``mobile``, ``shop``), each
behaviour suited by its own paths (``Stream.fitting``). Designed and tuned on ``sim``
and ``shifted``; the generators are held out. One experiment, three
arms: ``control`` (standard tour), ``rules`` (the path mapping), ``learned`` (the bandit).
Prints each arm's activation, the learned arm's lift over the rules arm with its
anytime-valid interval, the off-policy estimates (the learned policy as it ran, the
newest, the rules; whether each interval holds its arm's online rate), and the paired
counterfactual only a simulation has: the same run again with the learned arm's users
on the rules (the arms are different users, and a one-arm gap of a few points between
them is mostly who they are; the same users under both policies are not).

    .venv/bin/python -m bench.bench_paths --users 3000 --days 14 --seeds 42
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.machine import describe
from bench.streams import STREAMS
from bench.streams.simulator import SimulatorStream
from firstmile.flows.config import load_config
from firstmile.flows.readout import ALPHA, compare, sequential_multiplier
from firstmile.flows.run import Reactive, execute, simulated
from firstmile.flows.simulator import FITTING, Simulation
from firstmile.operators.experiments import Experiments
from firstmile.operators.paths import PathMap

EXPERIMENT = """[[experiments]]
key = "paths"
variations = [
  { name = "control", path = "standard_tour" },
  { name = "rules" },
  { name = "learned", policy = "learned" },
]
"""
#: Each persona suits other paths than in the simulator.
SHIFTED = {
    "fast_adopter": frozenset({"guided_walkthrough"}),
    "team_admin": frozenset({"re_engagement"}),
    "mobile_skimmer": frozenset({"standard_tour"}),
    "stalled_starter": frozenset({"short_tour"}),
    "one_and_done": frozenset({"short_tour", "guided_walkthrough"}),
}
SIMULATED = {"sim": FITTING, "shifted": SHIFTED}
#: Activation: onboarding completed within this many days (EXPERIMENT keeps the default).
ACTIVATION_DAYS = Experiments().activation_days


def _arms(
    stream: str, users: int, days: float, seed: int, experiments: Path, out: Path
) -> dict[str, Any]:
    """One run's summary, its experiment ``paths`` as ``experiments`` has it; its
    outputs in ``out``."""
    config = load_config(None).model_copy(update={"experiments": experiments})
    sim: Reactive = (
        Simulation(users=users, days=days, seed=seed, fitting=SIMULATED[stream])
        if stream in SIMULATED
        else STREAMS[stream](users=users, days=days, seed=seed)
    )
    source, sink, config = simulated(config, sim)
    return execute(
        source,
        [sink],
        config,
        mode="simulator",
        profile_updates="path",
        show_progress=False,
        out_dir=out,
    )


def oracle(stream: str, users: int, days: float, seed: int, where: Path) -> str:
    """Every path as a fixed arm: activation per behaviour and path, the rules' activation
    on the same run (their arm), and the best fixed path per behaviour."""
    paths = PathMap.load().names()
    arms = "".join(f'  {{ name = "{p}", path = "{p}" }},\n' for p in paths)
    experiments = where / "oracle.toml"
    experiments.write_text(
        f'[[experiments]]\nkey = "paths"\nvariations = [\n{arms}  {{ name = "rules" }},\n]\n'
    )
    _arms(stream, users, days, seed, experiments, where / "oracle")
    maker = SimulatorStream if stream in SIMULATED else STREAMS[stream]
    behaviour = maker(users=users, days=days, seed=seed).behaviour_of
    cells: dict[tuple[str, str], list[int]] = {}
    for arm in (*paths, "rules"):
        for user, done in _activated(where / "oracle", arm).items():
            cell = cells.setdefault((behaviour(user), arm), [0, 0])
            cell[0], cell[1] = cell[0] + 1, cell[1] + done
    kinds = sorted({kind for kind, _ in cells})
    rate = {key: k / n for key, (n, k) in cells.items()}
    share = {kind: sum(cells.get((kind, a), [0])[0] for a in (*paths, "rules")) for kind in kinds}
    total = sum(share.values())
    lines = [f"{stream}/{seed} oracle: activation by behaviour and path (users in the cell)"]
    for kind in kinds:
        row = "  ".join(
            f"{a} {rate.get((kind, a), 0.0):.0%} ({cells.get((kind, a), [0])[0]})"
            for a in (*paths, "rules")
        )
        lines.append(f"    {kind}: {row}")
    best = sum(share[k] * max(rate.get((k, a), 0.0) for a in paths) for k in kinds) / total
    rules = sum(share[k] * rate.get((k, "rules"), 0.0) for k in kinds) / total
    lines.append(f"    best fixed path per behaviour {best:.1%}; the rules {rules:.1%}")
    return "\n".join(lines)


def _activated(out: Path, arm: str, since: float = 0.0) -> dict[str, bool]:
    """Users of ``arm`` whose activation is known (signed up ``ACTIVATION_DAYS`` before
    the stream's end; ``since`` days after its start or later): whether they activated."""
    profiles = [orjson.loads(line) for line in (out / "profiles.jsonl").read_bytes().splitlines()]
    start = min(_time(p["signed_up_at"]) for p in profiles if p.get("signed_up_at"))
    end = max(p["as_of"] for p in profiles if p.get("as_of"))
    found = {}
    for profile in profiles:
        signed_up = profile.get("signed_up_at")
        if profile.get("experiment_arms", {}).get("paths") != arm or not signed_up:
            continue
        deadline = _time(signed_up) + timedelta(days=ACTIVATION_DAYS)
        if deadline > _time(end) or _time(signed_up) < start + timedelta(days=since):
            continue
        done = profile["onboarding"].get("completed_at")
        found[profile["user_id"]] = done is not None and _time(done) <= deadline
    return found


def _paired(where: Path, since: float) -> str:
    """The learned arm's users signed up ``since`` days in or later, learned against the
    rules, per user."""
    mine = _activated(where / "learned", "learned", since)
    n, diff, half = paired(mine, _activated(where / "rules", "learned", since))
    low, high = (diff - half) * 100, (diff + half) * 100
    return f"{diff * 100:+.1f} points (anytime CI {low:+.1f}..{high:+.1f}, {n:,} users)"


def paired(ours: dict[str, bool], theirs: dict[str, bool]) -> tuple[int, float, float]:
    """The same users under two policies: (users, mean difference in activation, the
    half width of its anytime-valid 95 % interval: the readout's normal mixture on the
    per-user differences)."""
    users = sorted(ours.keys() & theirs.keys())
    diffs = [float(ours[u]) - float(theirs[u]) for u in users]
    n = len(diffs)
    if n < 2:
        return n, math.nan, math.nan
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return n, mean, sd / math.sqrt(n) * sequential_multiplier(n, ALPHA)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def run(stream: str, users: int, days: float, seed: int, where: Path) -> str:
    experiments = where / "experiments.toml"
    experiments.write_text(EXPERIMENT)
    started = time.monotonic()
    summary = _arms(stream, users, days, seed, experiments, where / "learned")
    experiments.write_text(EXPERIMENT.replace('policy = "learned"', 'policy = "rules"'))
    same = _arms(stream, users, days, seed, experiments, where / "rules")
    same = same["experiments"]["paths"]["arms"]
    arms = summary["experiments"]["paths"]["arms"]
    cells = {arm: (row["activation"]["measured"], row["activation"]["converted"])
             for arm, row in arms.items()}  # fmt: skip
    versus = compare(cells["rules"], cells["learned"])
    estimates = summary["models"].get("policy", {}).get("estimates", {})
    rates = "  ".join(f"{arm} {k / n:.1%} ({n:,})" for arm, (n, k) in sorted(cells.items()))
    line = (
        f"{stream}/{seed}: activation {rates}; learned vs rules {versus.lift:+.1%} "
        f"(anytime CI {versus.sequential[0]:+.0%}..{versus.sequential[1]:+.0%}, {versus.verdict})"
    )
    learned, under_rules = (a["learned"]["activation"] for a in (arms, same))
    ours, theirs = (row["converted"] / row["measured"] for row in (learned, under_rules))
    line += (
        f"\n    the learned arm's users: learned {ours:.1%}, the same users under the rules "
        f"{theirs:.1%}; paired, per user: {_paired(where, 0.0)}; signed up in the second "
        f"half: {_paired(where, days / 2)}"
    )
    online = {"ran": ours, "rules": cells["rules"][1] / cells["rules"][0]}
    for name, label in (("ran", "learned as it ran"), ("learned", "newest learned"),
                        ("rules", "rules")):  # fmt: skip
        row = estimates.get(name)
        if row:
            line += (
                f"\n    off-policy {label}: IPS {row['ips']:.1%} ({row['ips_low']:.1%}.."
                f"{row['ips_high']:.1%}), DR {row['dr']:.1%} ({row['dr_low']:.1%}.."
                f"{row['dr_high']:.1%}), mean weight {row.get('weight_mean', math.nan):.2f}"
            )
            if name in online:
                held = [
                    kind.upper()
                    for kind in ("ips", "dr")
                    if row[f"{kind}_low"] <= online[name] <= row[f"{kind}_high"]
                ]
                inside = ", ".join(held) or "neither"
                line += f"; the arm's online {online[name]:.1%} inside: {inside}"
    return line + f"  [{time.monotonic() - started:.0f} s]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=float, default=14)
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--streams", default="sim,shifted")
    parser.add_argument("--oracle", action="store_true", help="also every path as a fixed arm")
    args = parser.parse_args()
    print(f"machine: {describe()}")
    for stream in args.streams.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as where:
                print(run(stream, args.users, args.days, seed, Path(where)), flush=True)
                if args.oracle:
                    print(oracle(stream, args.users, args.days, seed, Path(where)), flush=True)


if __name__ == "__main__":
    main()
