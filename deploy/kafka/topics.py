"""Create firstmile's topics on a broker; existing topics are left as they are.

Names and the events topic's partition count come from FIRSTMILE_TOPIC_* and
FIRSTMILE_EVENTS_PARTITIONS (see start.sh).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError


def wanted_topics() -> dict[str, int]:
    events_parts = int(os.environ.get("FIRSTMILE_EVENTS_PARTITIONS", "4"))
    return {
        os.environ.get("FIRSTMILE_TOPIC_EVENTS", "firstmile.events"): events_parts,
        os.environ.get("FIRSTMILE_TOPIC_SEGMENTS", "firstmile.segments"): 1,
        os.environ.get("FIRSTMILE_TOPIC_TRIGGERS", "firstmile.triggers"): 1,
        os.environ.get("FIRSTMILE_TOPIC_DEADLETTER", "firstmile.deadletter"): 1,
    }


def connect(bootstrap: str, wait_s: float) -> KafkaAdminClient:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        except KafkaError as exc:
            if time.monotonic() > deadline:
                sys.exit(f"deploy/kafka/topics.py: cannot reach Kafka at {bootstrap}: {exc}")
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the broker")
    args = parser.parse_args()
    admin = connect(args.bootstrap, args.wait)
    try:
        existing = set(admin.list_topics())
        for name, parts in wanted_topics().items():
            if name in existing:
                continue
            try:
                admin.create_topics({name: {"num_partitions": parts, "replication_factor": 1}})
                print(f"created topic {name} ({parts} partitions)")
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


if __name__ == "__main__":
    main()
