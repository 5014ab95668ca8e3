"""The Prometheus endpoint serves firstmile's metrics, and the summary reads the same counters."""

from __future__ import annotations

import socket
import urllib.request

from firstmile.flows import metrics
from firstmile.flows.metrics import RunCounters
from firstmile.operators import telemetry
from tests.helpers import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_metrics_endpoint_and_run_counters() -> None:
    before = RunCounters.read()
    telemetry.EVENTS_IN.inc(3)
    telemetry.DEAD_LETTERS.labels("bad_timestamp").inc()
    telemetry.OUTPUTS.labels("segment").inc(2)
    telemetry.STITCHED.inc()
    telemetry.TIMERS.labels("session_end").inc(4)
    telemetry.ERASURES.inc()
    telemetry.SUPPRESSED.labels("no_consent").inc(2)
    telemetry.REDIS_BACKLOG.set(7)
    numbers = RunCounters.read().since(before)
    assert numbers["events_in"] == 3
    assert numbers["dead_letters"] == {"bad_timestamp": 1}
    assert numbers["outputs"] == {"segment": 2}
    assert numbers["stitched"] == 1 and numbers["erasures"] == 1
    assert numbers["timers_fired"] == {"session_end": 4}
    assert numbers["suppressed"] == {"no_consent": 2}

    port = free_port()
    metrics.serve(port, host="127.0.0.1")

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                return str(reply.read().decode())
        except OSError:
            return ""

    body = wait_for(scrape, timeout=10, what="the metrics endpoint")
    assert "firstmile_events_in_total" in body
    assert 'firstmile_dead_letters_total{reason="bad_timestamp"}' in body
    for name in (
        "firstmile_identities_stitched_total",
        'firstmile_timers_fired_total{kind="session_end"}',
        "firstmile_erasures_total",
        'firstmile_suppressed_total{why="no_consent"}',
        "firstmile_redis_backlog 7.0",
        "firstmile_redis_write_seconds_bucket",
    ):
        assert name in body, name
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
        assert reply.status == 200  # a liveness probe's path answers too
