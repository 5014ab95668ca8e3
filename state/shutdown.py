"""Graceful stop: SIGINT/SIGTERM ask every source to end as if its input were over, so the
flow drains, writes final profiles and snapshots, and the run prints its summary. A second
signal stops at once."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from firstmile.operators.errors import ServerError

#: Set when a stop was asked for; sources check it before each batch.
STOP = threading.Event()


@contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """Within the block, the first SIGINT/SIGTERM sets ``STOP``; a second one exits (130)."""
    STOP.clear()

    def handle(signum: int, frame: FrameType | None) -> None:
        if STOP.is_set():
            print("firstmile: stopping now", file=sys.stderr, flush=True)
            os._exit(130)
        STOP.set()
        print(
            "firstmile: stopping after the current batch (again to stop now)",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield STOP
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


#: Set while a flow runs (``firstmile.flows.run.execute``): what ``fatal_on_server_error`` looks at.
FLOW_RUNNING = threading.Event()

#: The exit status of a job stopped by a server it cannot work without (Redis, Kafka).
EXIT_SERVER = 3


@contextmanager
def fatal_on_server_error() -> Iterator[None]:
    """Inside the running flow, a ``ServerError`` (an outage past its bound, a broker that
    refuses writes) ends the job with one line: raised there, Bytewax would panic with a
    Rust backtrace. Exiting at once is a crash the recovery snapshots are made for: the
    last completed epoch's outputs are all written, a restart resumes from it."""
    try:
        yield
    except ServerError as exc:
        if not FLOW_RUNNING.is_set():
            raise  # outside a running flow (a command, a test) it is an error like any
        print(
            f"firstmile: {exc}; stopping (a restart resumes from the last snapshot)",
            file=sys.stderr,
            flush=True,
        )
        logging.shutdown()
        os._exit(EXIT_SERVER)
