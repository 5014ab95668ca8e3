"""The report page (``firstmile report --html FILE``): segments with their labels, sizes
over time and what distinguishes them; onboarding paths per segment; triggers by rule;
each experiment's arms with rates and intervals; the churn model's calibration.

Read from a run's output directory (``summary.json`` beside ``segments.jsonl`` and
``profiles.jsonl``). Charts are Plotly's, its script inlined once, so the page works
offline, as a file or from a server.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from firstmile.operators.errors import InputError


@dataclass
class PageData:
    title: str
    segments: list[dict[str, Any]] = field(default_factory=list)  # id, label, size, description
    #: Time (ISO) -> segment label -> users in it then.
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    sizes_note: str = "users per segment at each day's end"
    paths: dict[str, dict[str, int]] = field(default_factory=dict)  # segment -> path -> users
    triggers: dict[str, dict[str, int]] = field(default_factory=dict)  # rule -> sent/held out
    triggers_note: str = "sent, and held out (the rule's control)"
    experiments: dict[str, Any] = field(default_factory=dict)  # readouts
    churn: dict[str, Any] = field(default_factory=dict)  # version, metrics, reliability


def from_run(summary_path: Path) -> PageData:
    """The page's data from a run's ``summary.json`` and the JSONL files beside it."""
    try:
        summary = orjson.loads(summary_path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"{summary_path}: not a run summary: {exc}") from exc
    where = summary_path.parent
    models = summary.get("models") or {}
    segments = models.get("segments") or []
    labels = {s["id"]: s["label"] for s in segments}
    return PageData(
        title=f"firstmile: {summary.get('mode', 'run')} run, {summary.get('users', 0):,} users",
        segments=segments,
        sizes=_sizes(where / "segments.jsonl", labels),
        paths=_paths(where / "profiles.jsonl", labels),
        triggers=summary.get("triggers") or {},
        experiments=summary.get("experiments") or {},
        churn=models.get("churn") or {},
    )


def from_live(
    profiles: Iterable[dict[str, Any]],
    models: dict[str, Any],
    history: list[dict[str, Any]],
    experiments: dict[str, Any],
    title: str,
) -> PageData:
    """The page's data from the stores a running job keeps: its users' current profiles,
    the newest models (``report.models_summary``), each model version's segment sizes
    (``history``) and the experiments' readouts."""
    segments = models.get("segments") or []
    labels = {s["id"]: s["label"] for s in segments}
    paths: dict[str, Counter[str]] = defaultdict(Counter)
    triggers: Counter[str] = Counter()
    users = 0
    for profile in profiles:
        users += 1
        paths[_label(profile, labels)][profile.get("onboarding_path") or "none"] += 1
        triggers.update({t["rule_id"] for t in profile.get("last_triggers") or ()})
    sizes = {
        entry["created_at"]: {s["label"]: s["size"] for s in entry["segments"].values()}
        for entry in history
        if entry.get("segments")
    }
    return PageData(
        title=f"{title}: {users:,} users",
        segments=segments,
        sizes=sizes,
        sizes_note="users per segment as each model version published them",
        paths={segment: dict(counts) for segment, counts in sorted(paths.items())},
        triggers={rule: {"users": n} for rule, n in sorted(triggers.items())},
        triggers_note="users with the rule among their last triggers",
        experiments=experiments,
        churn=models.get("churn") or {},
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        return [orjson.loads(line) for line in handle if line.strip()]


def _label(message: dict[str, Any], labels: dict[str, str]) -> str:
    segment = message.get("segment_id") or message.get("segment") or "new"
    return labels.get(segment) or message.get("segment_label") or segment


def _sizes(path: Path, labels: dict[str, str]) -> dict[str, dict[str, int]]:
    """Each user's segment replayed in event time, counted at the end of each day."""
    changes = sorted(_lines(path), key=lambda m: m["event_time"])
    held: dict[str, str] = {}
    sizes: dict[str, dict[str, int]] = {}
    day = None
    for message in changes:
        if day is not None and message["event_time"][:10] != day:
            sizes[day] = dict(Counter(held.values()))  # the day is over: count once
        day = message["event_time"][:10]
        held[message["user_id"]] = _label(message, labels)
    if day is not None:
        sizes[day] = dict(Counter(held.values()))
    return sizes


def _paths(path: Path, labels: dict[str, str]) -> dict[str, dict[str, int]]:
    paths: dict[str, Counter[str]] = defaultdict(Counter)
    for profile in _lines(path):
        paths[_label(profile, labels)][profile.get("onboarding_path") or "none"] += 1
    return {segment: dict(counts) for segment, counts in sorted(paths.items())}


def render(data: PageData) -> str:
    """The page: one self-contained HTML document."""
    import plotly.graph_objects as go
    import plotly.io as pio

    figures: list[tuple[str, str, Any]] = []  # section title, note, figure
    if data.sizes:
        days = list(data.sizes)
        names = sorted({label for counts in data.sizes.values() for label in counts})
        sizes = go.Figure(
            [
                go.Scatter(
                    x=days, y=[data.sizes[d].get(n, 0) for d in days], name=n, stackgroup="s"
                )
                for n in names
            ]
        )
        figures.append(("Segment sizes over time", data.sizes_note, sizes))
    if data.paths:
        segments = list(data.paths)
        path_names = sorted({p for counts in data.paths.values() for p in counts})
        paths = go.Figure(
            [
                go.Bar(
                    y=segments,
                    x=[data.paths[s].get(p, 0) for s in segments],
                    name=p,
                    orientation="h",
                )
                for p in path_names
            ],
            layout={"barmode": "stack"},
        )
        figures.append(("Onboarding paths per segment", "users, by current path", paths))
    if data.triggers:
        rules = sorted(data.triggers)
        kinds = sorted({k for counts in data.triggers.values() for k in counts}, reverse=True)
        triggers = go.Figure(
            [
                go.Bar(
                    x=rules, y=[data.triggers[r].get(k, 0) for r in rules], name=k.replace("_", " ")
                )
                for k in kinds  # sent, held out (a run); users (the live store)
            ],
            layout={"barmode": "stack"},
        )
        figures.append(("Triggers by rule", data.triggers_note, triggers))
    for key, readout in data.experiments.items():
        for metric in ("activation", "retention"):
            arms = list(readout.get("arms", {}))
            cells = [readout["arms"][arm].get(metric) or {} for arm in arms]
            rates = [c.get("rate") or 0.0 for c in cells]
            errors = [_half_width(c.get("rate"), c.get("measured", 0)) for c in cells]
            figure = go.Figure(
                [go.Bar(x=arms, y=rates, error_y={"type": "data", "array": errors})],
                layout={"yaxis": {"tickformat": ".0%"}},
            )
            note = "rate per arm, 95 % interval; " + _verdicts(readout, metric)
            figures.append((f"Experiment {key}: {metric}", note, figure))
    reliability = data.churn.get("reliability") or []
    if reliability:
        predicted = [row[0] for row in reliability]
        seen = [row[1] for row in reliability]
        calibration = go.Figure(
            [
                go.Scatter(
                    x=[0, 1],
                    y=[0, 1],
                    name="perfect",
                    mode="lines",
                    line={"dash": "dot", "color": "grey"},
                ),
                go.Scatter(
                    x=predicted,
                    y=seen,
                    name=data.churn.get("version", "churn"),
                    mode="lines+markers",
                    text=[f"{int(r[2]):,} decisions" for r in reliability],
                ),
            ],
            layout={
                "xaxis": {"title": {"text": "risk published"}, "range": [0, 1]},
                "yaxis": {"title": {"text": "churn rate seen"}, "range": [0, 1]},
            },
        )
        metrics = ", ".join(
            f"{name} {data.churn[name]:.3f}"
            for name in ("roc_auc", "ece", "log_loss")
            if isinstance(data.churn.get(name), int | float)
        )
        figures.append(("Churn model calibration", metrics, calibration))

    sections = []
    for index, (title, note, figure) in enumerate(figures):
        figure.update_layout(height=360, margin={"l": 40, "r": 20, "t": 20, "b": 40})
        chart = pio.to_html(
            figure,
            full_html=False,
            include_plotlyjs="inline" if index == 0 else False,
            config={"displaylogo": False, "responsive": True},
        )
        sections.append(f"<section><h2>{_e(title)}</h2><p>{_e(note)}</p>{chart}</section>")
    if not figures:
        sections.append("<p>Nothing to show yet: no segments, paths, triggers or experiments.</p>")
    return _PAGE.format(
        title=_e(data.title), segments=_segment_table(data.segments), sections="\n".join(sections)
    )


def _half_width(rate: float | None, n: int) -> float:
    return 1.96 * math.sqrt(rate * (1 - rate) / n) if rate is not None and n else 0.0


def _verdicts(readout: dict[str, Any], metric: str) -> str:
    parts = []
    for arm, row in readout.get("arms", {}).items():
        cell = row.get(metric) or {}
        if cell.get("verdict"):
            lift = cell.get("lift")
            shown = f"{lift:+.1%}" if isinstance(lift, int | float) else "-"
            parts.append(f"{arm}: lift {shown}, {cell['verdict']}")
    check = readout.get("sample_ratio") or {}
    if check.get("flagged"):
        parts.append("SAMPLE RATIO MISMATCH: do not trust this readout")
    return "; ".join(parts) or f"control: {readout.get('control')}"


def _segment_table(segments: list[dict[str, Any]]) -> str:
    if not segments:
        return "<p>No segment model published yet.</p>"
    rows = "".join(
        f"<tr><td>{_e(s['id'])}</td><td>{_e(s['label'])}</td><td class=n>{s.get('size', 0):,}</td>"
        f"<td>{_e(s.get('description', ''))}</td></tr>"
        for s in segments
    )
    return (
        "<table><thead><tr><th>id</th><th>label</th><th>users</th>"
        "<th>what distinguishes it (vs the population)</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _e(text: Any) -> str:
    return html.escape(str(text))


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #ddd; }}
td.n {{ text-align: right; }}
section {{ margin-top: 2rem; }}
p {{ color: #555; }}
</style>
</head>
<body>
<h1>{title}</h1>
<section><h2>Segments</h2>{segments}</section>
{sections}
</body>
</html>
"""
