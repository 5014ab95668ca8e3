"""Serving and reading the metrics (``operators.telemetry`` defines them): /metrics for
Prometheus, and ``RunCounters`` for the run summary, from the same counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, start_http_server

from firstmile.operators import telemetry  # noqa: F401  (every metric, registered)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose the metrics on ``host``:``port`` (0 picks a free port). Every path answers
    with them while the job runs, so ``/healthz`` doubles as a liveness probe."""
    start_http_server(port, addr=host)


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
