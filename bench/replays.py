"""What a replay after a crash must send again unchanged, and whom it may not.

A message sent twice (a replay from the last recovery snapshot) is the same message:
one content per id (but the wall-clock ``processed_at``) and one id per user and seq.
Users with events sent under their anonymous id alone are the documented exception:
a product keys those by the anonymous id, so they reach the job on another partition,
and a replay may stitch them in at another point of the user's own events.
"""

from __future__ import annotations

from typing import Any

import orjson


def stitched(lines: list[bytes]) -> set[str]:
    """Users with events sent under their anonymous id alone."""
    known: dict[str, str] = {}
    anonymous: set[str] = set()
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict) or not isinstance(event.get("anonymousId"), str):
            continue
        if event.get("userId"):
            known[event["anonymousId"]] = str(event["userId"])
        else:
            anonymous.add(event["anonymousId"])
    return {user for anonymous_id, user in known.items() if anonymous_id in anonymous}


def replay_conflicts(messages: list[dict[str, Any]]) -> list[tuple[str, int, str, dict[str, Any]]]:
    """Messages that differ from the first one sent with their id or their user and seq:
    (user, seq, the first id, each differing field as (first, again))."""
    by_id: dict[str, dict[str, Any]] = {}
    by_seq: dict[tuple[str, int], str] = {}
    conflicts = []
    for message in messages:
        content = {k: v for k, v in message.items() if k != "processed_at"}
        first = by_id.setdefault(message["id"], content)
        seen = by_seq.setdefault((message["user_id"], message["seq"]), message["id"])
        if first != content or seen != message["id"]:
            differ = {k: (first.get(k), v) for k, v in content.items() if first.get(k) != v}
            conflicts.append((message["user_id"], message["seq"], seen, differ))
    return conflicts
