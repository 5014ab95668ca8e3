"""The Kafka source's partitions on a real broker, driven as Bytewax drives them: each
partition's ``next_batch`` in turn, round after round."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from bench.kafka_io import produce
from firstmile.flows.config import load_config
from firstmile.state.kafka import KafkaEventSource

BATCH = 25


def source_on(bootstrap: str, topic: str, tmp_path: Path) -> KafkaEventSource:
    config_file = tmp_path / "firstmile.toml"
    config_file.write_text(
        f'[kafka]\nbootstrap_servers = ["{bootstrap}"]\nbatch_size = {BATCH}\n'
        f'[topics]\nevents = "{topic}"\n'
    )
    return KafkaEventSource(load_config(config_file), stop_at_end=True)


def read_all(bootstrap: str, topic: str, tmp_path: Path, slow_every: int) -> dict[str, list[int]]:
    """Every partition to its end; the first one is read only every ``slow_every`` rounds.
    Checks along the way that no partition read every round falls far behind another
    (kafka-python hands out one partition's fetch before the next one's)."""
    source = source_on(bootstrap, topic, tmp_path)
    names = source.list_parts()
    parts = {name: source.build_part("input", name, None) for name in names}
    assert len(names) == 4 and len({id(part._shared) for part in parts.values()}) == 1
    read: dict[str, list[int]] = {name: [] for name in names}
    rounds = 0
    while parts and rounds < 100_000:
        rounds += 1
        for name, part in list(parts.items()):
            if name == names[0] and rounds % slow_every:
                continue
            try:
                batch = part.next_batch()
            except StopIteration:
                part.close()
                del parts[name]
                continue
            read[name] += [record.source.offset for record in batch if record.source]
        regular = [len(read[name]) for name in names[1:] if name in parts]
        assert not regular or max(regular) - min(regular) <= 1000  # no partition starves
    assert not parts, "the partitions did not all reach their end"
    assert source._shared == {}  # the last partition closed the consumer
    return read


def test_partitions_share_one_consumer_and_read_everything_once_in_step(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path
) -> None:
    lines = [orjson.dumps({"n": n, "userId": f"u{n % 97}"}) for n in range(20_000)]
    produce(kafka_bootstrap, topics["events"], lines)
    for slow_every in (1, 10):
        read = read_all(kafka_bootstrap, topics["events"], tmp_path, slow_every)
        assert sum(len(offsets) for offsets in read.values()) == len(lines)
        for offsets in read.values():
            assert offsets == list(range(len(offsets)))  # in order, each once


def test_a_look_while_the_fetch_is_out_does_not_poll(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path
) -> None:
    """Live, most looks find nothing new; each poll is a hand-off to kafka-python's
    network thread. This also fails if kafka-python no longer has what the check reads."""
    source = source_on(kafka_bootstrap, topics["events"], tmp_path)
    source.stop_at_end = False
    part = source.build_part("input", source.list_parts()[0], None)
    shared = part._shared
    polls = 0
    poll = shared.consumer.poll

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal polls
        polls += 1
        return poll(*args, **kwargs)

    shared.consumer.poll = counted
    deadline = time.monotonic() + 30
    while not shared._awaiting_fetch():  # the broker holds an empty fetch for 500 ms
        assert time.monotonic() < deadline, "no fetch was ever out"
        assert part.next_batch() == []
    before = polls
    assert part.next_batch() == []
    assert polls == before
    part.close()
    assert source._shared == {}
