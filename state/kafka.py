"""Kafka source and sink on kafka-python.

The source has one Bytewax partition per Kafka partition, read through one consumer per
worker (``_SharedConsumer``). It never joins a consumer group's rebalancing: it assigns
each partition, seeks to the offset from the recovery snapshot (or the configured
start), and reports the offset after the last record it emitted as its snapshot, so
offsets and state are saved together. It also commits that offset to the configured
group (once an epoch, through a consumer of its own that never reads), only so the usual
lag tooling can see how far behind the job is; recovery never reads it back. Its own lag
(records behind each partition's high watermark, from the fetch responses) is the
``firstmile_consumer_lag`` gauge.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata

from firstmile.operators import telemetry
from firstmile.operators.errors import ServerError
from firstmile.operators.events import DeadLetter, RawRecord, SourceRef
from firstmile.operators.eventtime import utc_now
from firstmile.operators.jsonbytes import kept
from firstmile.operators.outputs import Output, dead_letter_message
from firstmile.state.shutdown import STOP, fatal_on_server_error

log = logging.getLogger(__name__)


class KafkaOptions(Protocol):
    """What the source and sink read of the ``[kafka]`` config section."""

    @property
    def bootstrap_servers(self) -> list[str]: ...
    @property
    def group_id(self) -> str: ...
    @property
    def start_from(self) -> str: ...
    @property
    def batch_size(self) -> int: ...
    def client_options(self) -> dict[str, Any]: ...


class Topics(Protocol):
    @property
    def events(self) -> str: ...
    @property
    def segments(self) -> str: ...
    @property
    def triggers(self) -> str: ...
    @property
    def deadletter(self) -> str: ...


class KafkaConfig(Protocol):
    """What this module reads of the job's config (``flows.config.KafkaConfig``)."""

    @property
    def kafka(self) -> KafkaOptions: ...
    @property
    def topics(self) -> Topics: ...


_MAX_UNACKED = 10_000  # sends between acks, at most (memory, and a late error's reach)
#: Refusals that no retry cures: the message goes to the dead letter, not the epoch.
_REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)
#: How much of a refused output the dead letter keeps.
_REFUSED_KEPT = 4096


class IdleBackoff:
    """How long a partition that had nothing to read waits before it looks again: 1 ms,
    then twice as long after each empty look, up to 8 ms (an idle job stays off the
    CPU: a look while the fetch is out costs microseconds, ``_SharedConsumer.take``);
    back to 1 ms once records come. A fixed 50 ms had held a record arriving during the
    wait for 25 ms on average (the job's p50 event -> decision was 30 ms live, the bare
    loop's 5 ms).

    >>> idle = IdleBackoff()
    >>> [idle.wait().total_seconds() * 1000 for _ in range(6)]
    [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    >>> idle.reset(); idle.wait().total_seconds() * 1000
    1.0
    """

    FIRST = timedelta(milliseconds=1)
    LONGEST = timedelta(milliseconds=8)

    def __init__(self) -> None:
        self._next = self.FIRST

    def wait(self) -> timedelta:
        wait, self._next = self._next, min(self._next * 2, self.LONGEST)
        return wait

    def reset(self) -> None:
        self._next = self.FIRST


def _consumer(config: KafkaConfig, group: bool) -> KafkaConsumer:
    try:
        return KafkaConsumer(
            **config.kafka.client_options(),
            group_id=config.kafka.group_id if group else None,
            enable_auto_commit=False,
            auto_offset_reset=config.kafka.start_from,
            max_poll_records=config.kafka.batch_size,
        )
    except KafkaError as exc:
        servers = ",".join(config.kafka.bootstrap_servers)
        raise ServerError(f"cannot connect to Kafka at {servers}: {exc}") from exc


#: A poll's ``max_records`` that takes whatever the consumer has fetched.
_ALL_FETCHED = 1_000_000


class _SharedConsumer:
    """One consumer for every partition a worker thread reads; a partition's records
    wait here until its ``next_batch`` takes them. A consumer per partition ran a
    network thread each (~7 % of a core apiece at 250 records/s) and every partition's
    poll was a hand-off to its thread and back (450 us, most of them empty). A poll
    takes all that was fetched, for every partition, since kafka-python hands out one
    partition's whole fetch before the next one's (polled a batch at a time, the last
    partitions went days of event time behind); none while four batches a partition
    wait here (``pause`` would bound it per partition, but kafka-python 3.0 stopped
    fetching after a ``resume``)."""

    def __init__(self, config: KafkaConfig) -> None:
        # Reads without the group: a consumer with a group id asks kafka-python's network
        # thread for the group's coordinator on every poll (a third of the polls' time,
        # live); offsets reach the group through each partition's committer.
        self.consumer = _consumer(config, group=False)
        self.batch_size = config.kafka.batch_size
        self.buffers: dict[TopicPartition, deque[ConsumerRecord]] = {}
        self.held = 0  # records in the buffers
        self.idle = IdleBackoff()

    def add(self, tp: TopicPartition) -> None:
        self.buffers[tp] = deque()
        self.consumer.assign(list(self.buffers))  # the others keep their positions

    def take(self, tp: TopicPartition) -> list[ConsumerRecord]:
        """Up to a batch of ``tp``'s records (polling for all if it has none)."""
        buffer = self.buffers[tp]
        if not buffer and self.held < 4 * self.batch_size * len(self.buffers):
            if self._awaiting_fetch():
                return []
            fetched = self.consumer.poll(timeout_ms=0, max_records=_ALL_FETCHED)
            for fetched_tp, records in fetched.items():
                held = self.buffers.get(fetched_tp)
                if held is not None:  # (not one removed since)
                    held.extend(records)
                    self.held += len(records)
        taken = [buffer.popleft() for _ in range(min(self.batch_size, len(buffer)))]
        self.held -= len(taken)
        return taken

    def _awaiting_fetch(self) -> bool:
        """A fetch is out and nothing has come back: a poll now would be two hand-offs
        to the network thread for nothing. (kafka-python has no public way to ask; on a
        version without these attributes every look polls, as before.)"""
        fetcher = getattr(self.consumer, "_fetcher", None)
        try:
            return bool(
                fetcher.in_flight_fetches()  # type: ignore[union-attr]
                and not fetcher._completed_fetches  # type: ignore[union-attr]
                and not fetcher._next_partition_records  # type: ignore[union-attr]
            )
        except AttributeError:
            return False

    def remove(self, tp: TopicPartition) -> bool:
        """``tp`` is done with; True once no partition is left (the consumer is closed)."""
        self.held -= len(self.buffers.pop(tp))
        if self.buffers:
            self.consumer.assign(list(self.buffers))
            return False
        self.consumer.close()
        return True


class _KafkaPartition(StatefulSourcePartition[RawRecord, int]):
    def __init__(
        self,
        config: KafkaConfig,
        shared: _SharedConsumer,
        topic: str,
        partition: int,
        resume_offset: int | None,
        stop_at_end: bool,
        window: tuple[float | None, float | None] | None = None,
        release: Callable[[], object] = lambda: None,
    ) -> None:
        self._tp = TopicPartition(topic, partition)
        self._key = f"{topic}#{partition}"
        self._config = config
        self._shared, self._release = shared, release
        self._consumer = shared.consumer
        shared.add(self._tp)
        self._lag_commits = window is None  # a window (a backtest's) leaves the group alone
        self._committer: KafkaConsumer | None = None
        self._end: int | None = None
        if window is not None:
            self._seek_window(*window)
        elif resume_offset is not None:
            self._consumer.seek(self._tp, resume_offset)
        elif config.kafka.start_from == "earliest":
            self._consumer.seek_to_beginning(self._tp)
        else:
            self._consumer.seek_to_end(self._tp)
        self._next_offset: int = self._consumer.position(self._tp)
        if stop_at_end and self._end is None:
            self._end = self._consumer.end_offsets([self._tp])[self._tp]
        self._awake: datetime | None = None
        self._committed = self._next_offset

    def next_batch(self) -> list[RawRecord]:
        if STOP.is_set() or (self._end is not None and self._next_offset >= self._end):
            raise StopIteration
        records = self._shared.take(self._tp)
        if not records:
            self._awake = datetime.now(UTC) + self._shared.idle.wait()
            return []
        self._awake = None
        self._shared.idle.reset()
        batch = []
        topic, partition = self._tp.topic, self._tp.partition
        for record in records:
            if self._end is not None and record.offset >= self._end:
                break
            batch.append(
                RawRecord(
                    record.value if record.value is not None else b"",
                    SourceRef(topic, partition, record.offset, record.timestamp / 1000),
                    record.key,
                )
            )
            self._next_offset = record.offset + 1
        highwater = self._consumer.highwater(self._tp)  # from the fetch: no extra request
        if highwater is not None:
            telemetry.child(telemetry.CONSUMER_LAG, self._key).set(highwater - self._next_offset)
        return batch

    def _seek_window(self, since: float | None, until: float | None) -> None:
        """Read the records the broker stamped from ``since`` to before ``until`` (epoch
        seconds; None: the beginning, the end as of now)."""
        tp, consumer = self._tp, self._consumer
        end = consumer.end_offsets([tp])[tp]
        if until is not None:
            found = consumer.offsets_for_times({tp: int(until * 1000)})[tp]
            end = found.offset if found is not None else end
        self._end = end
        if since is None:
            consumer.seek_to_beginning(tp)
            return
        found = consumer.offsets_for_times({tp: int(since * 1000)})[tp]
        consumer.seek(tp, found.offset if found is not None else end)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        if self._lag_commits and self._next_offset != self._committed:
            self._committed = self._next_offset
            self._commit_lag(wait=False)
        return self._next_offset

    def close(self) -> None:
        if self._shared.remove(self._tp):
            self._release()
        if self._committer is not None:
            # The last offset too: an async commit would go with the consumer's close.
            self._commit_lag(wait=True)
            self._committer.close()

    def _commit_lag(self, *, wait: bool) -> None:
        """The offset of the last snapshot to the group, for lag dashboards only (see the
        module docstring), by a consumer that never reads: no polls to slow down."""
        try:
            if self._committer is None:
                self._committer = _consumer(self._config, group=True)
            offsets = {self._tp: OffsetAndMetadata(self._committed, "", -1)}
            if wait:
                self._committer.commit(offsets)
            else:
                self._committer.commit_async(offsets)
        except (KafkaError, ServerError) as exc:
            log.warning("could not commit offset for lag reporting: %s", exc)


class KafkaEventSource(FixedPartitionedSource[RawRecord, int]):
    """The events topic; with ``stop_at_end`` it ends at the offsets current at start."""

    def __init__(
        self,
        config: KafkaConfig,
        stop_at_end: bool = False,
        window: tuple[float | None, float | None] | None = None,
    ) -> None:
        """``window``: (since, until) of the broker's timestamps, epoch seconds (None: the
        beginning; the end as of now): read that slice and stop, outside the job's group."""
        self.config = config
        self.topic = config.topics.events
        self.stop_at_end = stop_at_end or window is not None
        self.window = window
        self._shared: dict[int, _SharedConsumer] = {}  # per worker thread

    def list_parts(self) -> list[str]:
        consumer = _consumer(self.config, group=False)
        try:
            partitions = consumer.partitions_for_topic(self.topic)
        finally:
            consumer.close()
        if not partitions:
            raise ServerError(
                f"Kafka topic {self.topic!r} does not exist (create it, or set topics.events)"
            )
        return [f"{self.topic}#{p}" for p in sorted(partitions)]

    def partition_keys(self) -> list[str]:
        """Every partition, named as ``SourceRef.partition_key`` names them."""
        return self.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        partition = int(for_part.rsplit("#", 1)[1])
        thread = threading.get_ident()
        shared = self._shared.get(thread)
        if shared is None:
            shared = self._shared[thread] = _SharedConsumer(self.config)
        return _KafkaPartition(
            self.config,
            shared,
            self.topic,
            partition,
            resume_state,
            self.stop_at_end,
            self.window,
            release=lambda: self._shared.pop(thread, None),
        )


class _KafkaSinkPartition(StatefulSinkPartition[Output, None]):
    """Sends outputs as they come and waits for the broker's acks once an epoch (in
    ``snapshot``, which Bytewax calls before it commits the epoch: nothing unacked is
    ever committed) or every ``_MAX_UNACKED`` sends. A flush per batch held the flow's
    thread for a broker round trip on every batch."""

    def __init__(self, config: KafkaConfig) -> None:
        topics = config.topics
        self._topics = {
            "segment": topics.segments,
            "trigger": topics.triggers,
            "deadletter": topics.deadletter,
        }
        self._sent: list[tuple[Output, bytes | None, Any]] = []
        self._refused: list[tuple[Output, bytes | None, KafkaError]] = []
        try:
            self._producer = KafkaProducer(
                **config.kafka.client_options(), acks="all", linger_ms=5, retries=5
            )
        except KafkaError as exc:
            raise ServerError(f"cannot connect to Kafka producer: {exc}") from exc

    def write_batch(self, items: list[Output]) -> None:
        for item in items:
            topic = self._topics.get(item.kind)
            if topic is None:
                continue  # profiles go to Redis, not Kafka
            key = item.key.encode("utf-8") if item.key is not None else None
            # Kept until the epoch's acks (a refusal goes to the dead letter with it).
            value = kept(item.value) if item.value is not None else None
            try:
                self._sent.append((item, value, self._producer.send(topic, value=value, key=key)))
            except _REFUSED as exc:  # kafka-python checks the size before sending
                self._refused.append((item, value, exc))
            except KafkaError as exc:  # no broker within max_block_ms: stop, replay the epoch
                with fatal_on_server_error():
                    raise ServerError(f"Kafka did not take an output message: {exc}") from exc
        if len(self._sent) >= _MAX_UNACKED:
            self._settle()

    def snapshot(self) -> None:
        self._settle()

    def _settle(self) -> None:
        """Wait for every send's ack; dead-letter what the broker will never take."""
        sent, refused = self._sent, self._refused
        self._sent, self._refused = [], []
        if not sent and not refused:
            return
        self._producer.flush()
        for item, value, future in sent:
            try:
                future.get(timeout=0)
            except _REFUSED as exc:
                refused.append((item, value, exc))
            except KafkaError as exc:  # stop: recovery replays the epoch (at-least-once)
                with fatal_on_server_error():
                    raise ServerError(f"Kafka did not accept an output message: {exc}") from exc
        if refused:
            self._dead_letter(refused)

    def _dead_letter(self, refused: list[tuple[Output, bytes | None, KafkaError]]) -> None:
        """Outputs the broker will never take: a dead letter each, so a restart does not
        send them again and again (a crash loop); one log line per output."""
        futures = []
        for item, value, exc in refused:
            what = f"{item.kind} {(item.value or {}).get('id')} for user {item.key}"
            size = len(value or b"")
            log.error("Kafka refused the %s (%d bytes): %s; dead-lettered", what, size, exc)
            telemetry.child(telemetry.DEAD_LETTERS, "output_refused").inc()
            dead = DeadLetter(
                "output_refused",
                f"{what}: {size} bytes refused by Kafka ({type(exc).__name__})",
                (value or b"")[:_REFUSED_KEPT],
            )
            letter = dead_letter_message(dead, utc_now())
            body = orjson.dumps(letter.value)
            futures.append(self._producer.send(self._topics["deadletter"], value=body))
        self._producer.flush()
        for future in futures:
            try:
                future.get(timeout=0)
            except KafkaError as exc:
                with fatal_on_server_error():
                    raise ServerError(f"Kafka did not accept a dead letter: {exc}") from exc

    def close(self) -> None:
        try:
            self._settle()
        finally:
            self._producer.close()


class KafkaOutputSink(FixedPartitionedSink[Output, None]):
    """Segments, triggers and dead letters to their topics, keyed by user id (acks=all).
    One partition (as the profile store's): its ``snapshot`` is the epoch's end."""

    #: The outputs it sends (``build_flow`` routes only these to its part).
    kinds = frozenset({"segment", "trigger", "deadletter"})

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config

    def list_parts(self) -> list[str]:
        return ["kafka"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _KafkaSinkPartition:
        return _KafkaSinkPartition(self.config)
