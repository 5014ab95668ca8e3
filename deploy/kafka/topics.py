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

#: Outputs keyed by user are compacted: a user's newest message stays, and an erasure's
#: tombstone (null value) removes the user's messages.
COMPACTED = {"cleanup.policy": "compact"}


def wanted_topics() -> dict[str, dict[str, object]]:
    events_parts = int(os.environ.get("FIRSTMILE_EVENTS_PARTITIONS", "4"))
    env = os.environ.get
    return {
        env("FIRSTMILE_TOPIC_EVENTS", "firstmile.events"): {"num_partitions": events_parts},
        env("FIRSTMILE_TOPIC_SEGMENTS", "firstmile.segments"): {"configs": COMPACTED},
        env("FIRSTMILE_TOPIC_TRIGGERS", "firstmile.triggers"): {"configs": COMPACTED},
        env("FIRSTMILE_TOPIC_DEADLETTER", "firstmile.deadletter"): {},
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
        for name, options in wanted_topics().items():
            if name in existing:
                continue
            spec = {"num_partitions": 1, "replication_factor": 1, **options}
            try:
                admin.create_topics({name: spec})
                print(f"created topic {name} ({spec['num_partitions']} partitions)")
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


if __name__ == "__main__":
    main()
