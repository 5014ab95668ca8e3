"""The job's Redis clients: every command rides out an outage of up to ``max_outage_s``.

redis-py retries a failed command itself (``Retry`` with exponential backoff, on
connection errors, timeouts and a server still loading its data). Ours adds the bound in
time instead of tries, and one log line when an outage starts and one when it is over;
past the bound the command raises, and the job stops with one line that says so.
Meanwhile the profile writer holds its backlog and the flow waits on it (back-pressure).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = (ConnectionError, TimeoutError, BusyLoadingError)
#: Backoff between tries, seconds: 0.1, 0.2, 0.4 ... up to this.
BACKOFF_CAP_S = 2.0


class OutageRetry(Retry):
    """redis-py's ``Retry``, bounded by the outage's length, saying when it starts and ends."""

    def __init__(self, max_outage_s: float) -> None:
        super().__init__(ExponentialBackoff(cap=BACKOFF_CAP_S, base=0.1), -1, RETRYABLE)
        self.max_outage_s = max_outage_s

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        started: list[float] = []

        def failed(error: Exception, failures: int) -> None:
            if not started:
                started.append(time.monotonic())
                log.warning(
                    "Redis unreachable (%s); retrying for up to %.0f s", error, self.max_outage_s
                )
            fail(error, failures) if with_failure_count else fail(error)

        def retryable(error: Exception) -> bool:
            if is_retryable is not None and not is_retryable(error):
                return False
            return not started or time.monotonic() - started[0] < self.max_outage_s

        try:
            result = super().call_with_retry(do, failed, retryable, with_failure_count=True)
        except RETRYABLE:
            raise  # still away, past the bound
        except Exception:
            self._back(started)  # an answer, even an error (NOSCRIPT after a restart)
            raise
        self._back(started)
        return result

    @staticmethod
    def _back(started: list[float]) -> None:
        if started:
            log.warning("Redis is back after %.1f s", time.monotonic() - started[0])


def connect(url: str, max_outage_s: float) -> redis.Redis:
    """A client whose commands retry through an outage of up to ``max_outage_s``."""
    return redis.Redis.from_url(
        url,
        socket_timeout=10,
        socket_connect_timeout=5,
        retry=OutageRetry(max_outage_s),
        retry_on_error=list(RETRYABLE),
    )
