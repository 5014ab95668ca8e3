"""``firstmile collect`` as a product's backend would use it: Segment's own Python SDK
(``segment-analytics-python``) pointed at a real collector process over a real Kafka, and
what reaches the events topic decodes as firstmile events."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from firstmile.operators.decode import decode
from firstmile.operators.events import Event
from tests.helpers import free_port, running_server, wait_for

FIRSTMILE = (sys.executable, "-m", "firstmile.flows.cli")
WRITE_KEY = "test-write-key"


def write_config(tmp_path: Path, bootstrap: str, topics: dict[str, str]) -> Path:
    config = tmp_path / "firstmile.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = ["{bootstrap}"]\nconnect_timeout_s = 3\n[topics]\n'
        + "".join(f'{k} = "{v}"\n' for k, v in topics.items())
        + f'[collect]\nwrite_keys = ["{WRITE_KEY}"]\n'
    )
    return config


@pytest.fixture
def collector(kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path) -> Iterator[str]:
    config = write_config(tmp_path, kafka_bootstrap, topics)
    with running_server("collect", "--config", str(config)) as base:
        yield base


def events_on(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, dict[str, Any]]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in range(4)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records: list[tuple[bytes, dict[str, Any]]] = []

    def drained() -> bool:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend((r.key, orjson.loads(r.value)) for r in batch)
        return len(records) >= expected

    try:
        wait_for(drained, 30, f"{expected} records on {topic}")
    finally:
        consumer.close()
    return records


def test_segments_python_sdk_sends_into_the_events_topic(
    collector: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    from segment.analytics.client import Client

    errors: list[Any] = []
    client = Client(
        write_key=WRITE_KEY,
        host=collector,
        gzip=True,
        sync_mode=True,
        on_error=lambda error, batch: errors.append(error),
    )
    client.identify("u-1", {"role": "admin"}, anonymous_id="a-1")
    client.track("u-1", "Signed Up", {"plan": "pro"})
    client.page(anonymous_id="a-2", name="Pricing", properties={"path": "/pricing"})
    client.flush()
    assert errors == []

    records = events_on(kafka_bootstrap, topics["events"], 3)
    assert sorted(key for key, _ in records) == [b"a-2", b"u-1", b"u-1"]
    by_type = {value["type"]: value for _, value in records}
    assert set(by_type) == {"identify", "track", "page"}
    for _, value in records:
        assert value["receivedAt"].endswith("Z") and value["sentAt"]
        assert "writeKey" not in value
        event = decode(orjson.dumps(value))  # what the job will make of it
        assert isinstance(event, Event), event
    signup = decode(orjson.dumps(by_type["track"]))
    assert isinstance(signup, Event) and (signup.kind, signup.user_id) == ("signup", "u-1")


def test_a_wrong_write_key_and_bad_bodies_are_refused_as_segment_does(collector: str) -> None:
    message = {"userId": "u", "event": "x"}
    wrong = httpx.post(f"{collector}/v1/track", json=message, auth=("nope", ""))
    assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"
    right = httpx.post(f"{collector}/v1/track", json=message, auth=(WRITE_KEY, ""))
    assert right.status_code == 200 and right.json() == {"success": True}
    no_id = httpx.post(f"{collector}/v1/track", json={"event": "x"}, auth=(WRITE_KEY, ""))
    assert no_id.status_code == 400 and "userId" in no_id.json()["message"]
    garbage = httpx.post(f"{collector}/v1/batch", content=b"{", auth=(WRITE_KEY, ""))
    assert garbage.status_code == 400 and garbage.json()["code"] == "invalid_request"
    unknown = httpx.post(f"{collector}/v1/teleport", json=message, auth=(WRITE_KEY, ""))
    assert unknown.status_code == 404


def test_without_kafka_the_collector_says_so_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path, dead, {"events": "e"})
    done = subprocess.run(
        [*FIRSTMILE, "collect", "--config", str(config), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Kafka" in lines[0] and dead in lines[0], done.stderr
