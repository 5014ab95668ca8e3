"""Where ``firstmile publish`` leaves playbook versions for the running job: in Redis, the
list ``<prefix>:config:log``, one JSON entry per publish (append-only):
``{version, effective_at (epoch s), published_at, files, texts}``, where ``files`` and
``texts`` hold the rules, paths and experiments files' names and contents. A Lua script
appends only an entry whose ``effective_at`` is later than the last one's, so versions
take effect in the order they were published, and two publishers cannot interleave.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from firstmile.operators.errors import ConfigError, ServerError

#: How often the job asks for new versions (seconds of wall clock).
POLL_S = 2.0

_APPEND_IF_LATER = """
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
  local held = cjson.decode(last)['effective_at']
  if tonumber(held) >= tonumber(ARGV[2]) then return {0, tostring(held)} end
end
return {redis.call('RPUSH', KEYS[1], ARGV[1]), ''}
"""


class PlaybookStore:
    def __init__(self, client: redis.Redis, prefix: str = "firstmile") -> None:
        self.client = client
        self.key = f"{prefix}:config:log"
        self._append = client.register_script(_APPEND_IF_LATER)

    def append(self, entry: dict[str, Any]) -> int:
        """Publish ``entry``; its position in the log. ``ConfigError`` if a version already
        published takes effect at or after it."""
        try:
            done, held = self._append(
                keys=[self.key], args=[orjson.dumps(entry), entry["effective_at"]]
            )
        except redis.RedisError as exc:
            raise ServerError(f"cannot publish to Redis: {exc}") from exc
        if not done:
            raise ConfigError(
                "--at",
                f"a version already published takes effect at {float(held):.3f} (epoch s), "
                "not before this one: versions take effect in the order they are published",
            )
        return int(done)

    def last(self) -> dict[str, Any] | None:
        """The newest entry, if any."""
        try:
            raw = self.client.lindex(self.key, -1)
        except redis.RedisError as exc:
            raise ServerError(f"cannot read published configs from Redis: {exc}") from exc
        return orjson.loads(raw) if raw is not None else None

    def since(self, known: int) -> list[dict[str, Any]]:
        """Entries after the first ``known``."""
        try:
            raw = self.client.lrange(self.key, known, -1)
        except redis.RedisError as exc:
            raise ServerError(f"cannot read published configs from Redis: {exc}") from exc
        return [orjson.loads(item) for item in raw]
