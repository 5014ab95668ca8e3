"""``firstmile erase USER_ID``: ask the running job to forget a user, and a receipt.

The request is an event like any (``User Deleted``) on the events topic, keyed by the user,
so the job forgets the user in order with their other events: profile, pending timers,
every device's link to the user, then tombstones. The command waits (bounded) until
each store shows it: Redis holds the erasure marker instead of the profile, and the
segments and triggers topics have the user's tombstone (compaction then removes the
user's messages). The receipt lists each store and what was found there.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from firstmile.flows.config import FirstmileConfig
from firstmile.operators.errors import ServerError
from firstmile.operators.eventtime import iso, utc_now


@dataclass
class Receipt:
    user_id: str
    request: str = ""  # where the request went (topic, partition, offset)
    stores: dict[str, str] = field(default_factory=dict)  # store -> what was found

    @property
    def complete(self) -> bool:
        return all(not found.startswith("not yet") for found in self.stores.values())

    def lines(self) -> list[str]:
        head = "erased" if self.complete else "erasure requested, not confirmed everywhere"
        return [
            f"{head}: {self.user_id}",
            f"  request: {self.request}",
            *(f"  {store}: {found}" for store, found in self.stores.items()),
        ]


def erase_user(config: FirstmileConfig, user_id: str, wait_s: float) -> Receipt:
    receipt = Receipt(user_id)
    options = config.kafka.client_options()
    topics = config.topics
    outputs = {"segments topic": topics.segments, "triggers topic": topics.triggers}
    try:
        consumer = KafkaConsumer(**options, enable_auto_commit=False)
        parts = [TopicPartition(topic, p) for topic in outputs.values()
                 for p in consumer.partitions_for_topic(topic) or ()]  # fmt: skip
        consumer.assign(parts)
        start = consumer.end_offsets(parts)  # tombstones come after the request
        for part, offset in start.items():
            consumer.seek(part, offset)
        producer = KafkaProducer(**options, acks="all")
        message = {
            "type": "track",
            "event": "User Deleted",
            "userId": user_id,
            "messageId": f"firstmile-erase-{uuid.uuid4()}",
            "timestamp": iso(utc_now()),
            "context": {"library": {"name": "firstmile erase"}},
        }
        sent = producer.send(topics.events, orjson.dumps(message), key=user_id.encode())
        meta = sent.get(timeout=30)
        producer.close()
        receipt.request = f"{topics.events} partition {meta.partition} offset {meta.offset}"
    except KafkaError as exc:
        raise ServerError(f"cannot send the erasure request to Kafka: {exc}") from exc
    deadline = time.monotonic() + wait_s
    store = redis.Redis.from_url(config.redis.url, socket_timeout=10)
    key = f"{config.redis.key_prefix}:profile:{user_id}"
    tombstones: dict[str, str] = {}
    try:
        while time.monotonic() < deadline:
            held = store.hgetall(key)
            if held.get(b"erased") == b"1" and b"profile" not in held:
                seq = held.get(b"seq", b"?")
                seq = seq.decode() if isinstance(seq, bytes) else seq
                receipt.stores["redis"] = f"profile removed; erasure marker {key} (seq {seq})"
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    if record.key == user_id.encode() and record.value is None:
                        tombstones[record.topic] = f"tombstone at offset {record.offset}"
            if "redis" in receipt.stores and len(tombstones) == len(outputs):
                break
    except redis.RedisError as exc:
        raise ServerError(f"cannot read Redis at {config.redis.url}: {exc}") from exc
    finally:
        consumer.close()
        store.close()
    receipt.stores.setdefault("redis", f"not yet: {key} still holds the profile")
    for name, topic in outputs.items():
        receipt.stores[name] = tombstones.get(topic, f"not yet: no tombstone on {topic}")
    receipt.stores["job state"] = (
        "profile, pending timers and each device's link to the user dropped"
        if receipt.complete
        else "not yet: the job has not processed the request"
    )
    return receipt


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    return {"user_id": receipt.user_id, "complete": receipt.complete,
            "request": receipt.request, "stores": receipt.stores}  # fmt: skip
