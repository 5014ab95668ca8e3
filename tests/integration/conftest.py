"""Real Kafka and Redis, started by the project's own deploy/ scripts.

If a server cannot be started the tests fail with the script's output; they never skip.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka.admin import KafkaAdminClient

ROOT = Path(__file__).resolve().parents[2]
KAFKA_PORT = os.environ.get("FIRSTMILE_KAFKA_PORT", "19092")
REDIS_PORT = os.environ.get("FIRSTMILE_REDIS_PORT", "16379")
BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"


def _start(script: str) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / script)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    if done.returncode != 0:
        pytest.fail(
            f"{script} could not start its server:\n{done.stdout}\n{done.stderr}", pytrace=False
        )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    _start("deploy/kafka/start.sh")
    return BOOTSTRAP


@pytest.fixture(scope="session")
def redis_url() -> str:
    _start("deploy/redis/start.sh")
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[dict[str, str]]:
    """A fresh set of firstmile topics for one test (events with 4 partitions)."""
    tag = uuid.uuid4().hex[:10]
    names = {
        kind: f"test-{tag}.{kind}" for kind in ("events", "segments", "triggers", "deadletter")
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics(
        {
            name: {
                "num_partitions": 4 if kind == "events" else 1,
                "replication_factor": 1,
                # as deploy/kafka/topics.py makes them: outputs keyed by user are compacted
                "configs": {"cleanup.policy": "compact"}
                if kind in ("segments", "triggers")
                else {},
            }
            for kind, name in names.items()
        }
    )
    try:
        yield names
    finally:
        admin.delete_topics(list(names.values()))
        admin.close()
