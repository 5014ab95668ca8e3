"""Putting a stream on a topic and reading a topic back: shared by the benches and the
integration tests (a product's producer, a consumer that reads to the end)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def produce(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    """``lines`` onto ``topic``, keyed as a product would: by user (or anonymous) id."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for line in lines:
        try:
            message = orjson.loads(line)
            key = str(message.get("userId") or message.get("anonymousId") or "").encode() or None
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        producer.send(topic, value=line, key=key)
    producer.flush()
    producer.close()


def consume_to_end(
    bootstrap: str, topic: str, timeout_s: float = 60.0
) -> list[tuple[bytes | None, Any]]:
    """Every record of a one-partition topic up to its end offset now, as (key, value)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    records: list[tuple[bytes | None, Any]] = []
    deadline = time.monotonic() + timeout_s
    while consumer.position(tp) < end:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}: read {consumer.position(tp)} of {end} records")
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend((r.key, orjson.loads(r.value) if r.value else None) for r in batch)
    consumer.close()
    return records
