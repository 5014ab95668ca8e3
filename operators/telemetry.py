"""The Prometheus metrics, defined once, at the bottom of the package: every layer counts
without importing the flow. Labels are step ids and reasons. ``flows.metrics`` serves
them and reads them back for the run summary (``RunCounters``), so what a dashboard
shows and what ``summary.json`` says cannot disagree.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("firstmile_events_in", "Raw records read from the source")
EVENTS = Counter("firstmile_events", "Accepted, deduplicated events by canonical kind", ["kind"])
DEAD_LETTERS = Counter("firstmile_dead_letters", "Records dead-lettered, by reason", ["reason"])
DUPLICATES = Counter("firstmile_duplicates", "Events dropped as resent duplicates (messageId)")
USERS = Counter("firstmile_users", "Distinct keys that got state", ["identity"])
OUTPUTS = Counter("firstmile_outputs", "Output messages produced, by kind", ["kind"])
REDIS_WRITE = Histogram("firstmile_redis_write_seconds", "Redis pipeline write latency")
REDIS_BACKLOG = Gauge("firstmile_redis_backlog", "Profiles waiting to be written to Redis")
STITCHED = Counter("firstmile_identities_stitched", "Anonymous ids linked to a known user")
LINKS_FORGOTTEN = Counter(
    "firstmile_identity_links_forgotten", "Anonymous ids' links to an erased user dropped"
)
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
EXPERIMENT_SRM = Gauge(
    "firstmile_experiment_sample_ratio_p_value",
    "Chi-square p-value of the arms' exposures against their designed shares (low: mismatch)",
    ["experiment"],
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
