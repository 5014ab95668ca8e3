"""Prometheus metrics of the flow, defined once here; labels are step ids and reasons.

The run summary reads the same counters (``RunCounters``), so what a dashboard shows and
what ``summary.json`` says cannot disagree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

EVENTS_IN = Counter("firstmile_events_in", "Raw records read from the source")
EVENTS = Counter("firstmile_events", "Accepted, deduplicated events by canonical kind", ["kind"])
DEAD_LETTERS = Counter("firstmile_dead_letters", "Records dead-lettered, by reason", ["reason"])
DUPLICATES = Counter("firstmile_duplicates", "Events dropped as resent duplicates (messageId)")
USERS = Counter("firstmile_users", "Distinct keys that got state", ["identity"])
OUTPUTS = Counter("firstmile_outputs", "Output messages produced, by kind", ["kind"])
REDIS_WRITE = Histogram("firstmile_redis_write_seconds", "Redis pipeline write latency")
REDIS_BACKLOG = Gauge("firstmile_redis_backlog", "Profiles waiting to be written to Redis")
STITCHED = Counter("firstmile_identities_stitched", "Anonymous ids linked to a known user")
UNIDENTIFIED = Counter(
    "firstmile_anonymous_unidentified", "Anonymous visitors not identified by the end of input"
)
STITCH_DROPPED = Counter(
    "firstmile_identity_buffer_dropped", "Pre-identify events dropped by the buffer caps"
)
TIMERS = Counter("firstmile_timers_fired", "Event-time timers fired, by kind", ["kind"])
ERASURES = Counter("firstmile_erasures", "Users erased on request (user_erased)")
MODEL_VERSION = Gauge("firstmile_model_version", "Newest published model snapshot version")
MODELS_REFUSED = Counter("firstmile_models_refused", "Model snapshots refused (bad signature)")
SAMPLES = Counter("firstmile_model_samples", "Samples the learner got", ["kind"])
CHURN_QUALITY = Gauge("firstmile_churn_quality", "Churn model, progressive validation", ["metric"])
DRIFTS = Counter(
    "firstmile_drift_detections", "Drift detected: churn model errors or a feature", ["what"]
)
TRIGGERS = Counter(
    "firstmile_triggers", "Rules that won, by rule: sent, or held out", ["rule", "outcome"]
)
EXPERIMENT = Gauge(
    "firstmile_experiment_users",
    "Experiment users per arm and outcome: measured, and converted",
    ["experiment", "arm", "metric", "count"],
)
CONSUMER_LAG = Gauge(
    "firstmile_consumer_lag", "Records behind the partition's high watermark", ["partition"]
)
LATENCY = Histogram(
    "firstmile_end_to_end_latency_seconds",
    "From an event's arrival in Kafka to its decision (the decide step), Kafka mode",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
DECISIONS = Counter("firstmile_decisions", "Decision events emitted, by reason", ["reason"])
SEGMENT_SIZE = Gauge("firstmile_segment_size", "Recent learning samples per segment", ["segment"])
TRANSITIONS = Counter(
    "firstmile_segment_transitions", "Users moving between segments", ["from_segment", "to_segment"]
)
SUPPRESSED = Counter("firstmile_suppressed", "Events ignored: erased user, or no consent", ["why"])


@functools.cache
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: per event, the lookup was measurable.
    (Label values here come from bounded sets: kinds, reasons, rule ids.)"""
    return metric.labels(*labels)


def serve(port: int) -> None:
    """Expose /metrics on 127.0.0.1:``port`` (0 picks a free port)."""
    start_http_server(port, addr="127.0.0.1")


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    values: dict[tuple[tuple[str, str], ...], float] = {}
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == name:
                values[tuple(sorted(sample.labels.items()))] = sample.value
    return values


@dataclass(frozen=True)
class RunCounters:
    """A reading of the counters; the difference of two readings is one run's numbers."""

    values: dict[str, dict[tuple[tuple[str, str], ...], float]]

    @classmethod
    def read(cls) -> RunCounters:
        names = (
            "firstmile_events_in_total",
            "firstmile_events_total",
            "firstmile_dead_letters_total",
            "firstmile_duplicates_total",
            "firstmile_users_total",
            "firstmile_outputs_total",
            "firstmile_identities_stitched_total",
            "firstmile_anonymous_unidentified_total",
            "firstmile_timers_fired_total",
            "firstmile_erasures_total",
            "firstmile_suppressed_total",
            "firstmile_triggers_total",
        )
        return cls({name: _samples(name) for name in names})

    def since(self, before: RunCounters) -> dict[str, Any]:
        def delta(name: str) -> dict[tuple[tuple[str, str], ...], float]:
            old = before.values.get(name, {})
            return {k: v - old.get(k, 0.0) for k, v in self.values.get(name, {}).items()}

        def by(name: str, label: str) -> dict[str, int]:
            out: dict[str, int] = {}
            for labels, value in delta(name).items():
                key = dict(labels)[label]
                out[key] = out.get(key, 0) + int(value)
            return {k: v for k, v in sorted(out.items()) if v}

        def triggers() -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for labels, value in sorted(delta("firstmile_triggers_total").items()):
                named = dict(labels)
                if value:
                    out.setdefault(named["rule"], {})[named["outcome"]] = int(value)
            return out

        def total(name: str) -> int:
            return int(sum(delta(name).values()))

        return {
            "events_in": total("firstmile_events_in_total"),
            "accepted": total("firstmile_events_total"),
            "duplicates": total("firstmile_duplicates_total"),
            "dead_letters": by("firstmile_dead_letters_total", "reason"),
            "events_by_kind": by("firstmile_events_total", "kind"),
            "users": by("firstmile_users_total", "identity").get("known", 0),
            "anonymous_visitors": by("firstmile_users_total", "identity").get("anonymous", 0),
            "outputs": by("firstmile_outputs_total", "kind"),
            "stitched": total("firstmile_identities_stitched_total"),
            "never_identified": total("firstmile_anonymous_unidentified_total"),
            "timers_fired": by("firstmile_timers_fired_total", "kind"),
            "erasures": total("firstmile_erasures_total"),
            "suppressed": by("firstmile_suppressed_total", "why"),
            "triggers": triggers(),
        }


def latency_quantiles() -> dict[str, float] | None:
    """Events measured and the 50th/99th percentile end-to-end latency (bucket upper
    bounds, as Prometheus' ``histogram_quantile`` would bracket them); None if none."""
    buckets = sorted(
        (float(labels[0][1]), value)
        for labels, value in _samples("firstmile_end_to_end_latency_seconds_bucket").items()
        if labels
    )
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None

    def quantile(q: float) -> float:
        return next(bound for bound, count in buckets if count >= q * total)

    return {"events": int(total), "p50": quantile(0.5), "p99": quantile(0.99)}


def consumer_lag() -> dict[str, int]:
    """Each source partition's last known lag (Kafka mode)."""
    return {dict(k)["partition"]: int(v) for k, v in _samples("firstmile_consumer_lag").items()}
