"""The bench's generators as products that listen (``Stream.advisor``): the held-out
streams of the learned-path bench (bench/bench_paths.py)."""

from __future__ import annotations

import orjson
import pytest

from bench.streams import STREAMS, Stream


def _completed(stream: Stream) -> tuple[list[bytes], set[str]]:
    lines = list(stream.lines())
    done = set()
    for line in lines:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if message.get("event") == stream.onboarding.done and message.get("userId"):
            done.add(message["userId"])
    return lines, done


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_a_suiting_path_helps_and_any_other_leaves_the_stream_as_it_was(name: str) -> None:
    plain = STREAMS[name](users=600, days=7, seed=4)
    lines, done = _completed(plain)
    asked: list[str] = []

    def unsuited(user_id: str) -> str:
        asked.append(user_id)
        return "no_such_path"

    ignored = STREAMS[name](users=600, days=7, seed=4)
    ignored.advisor = unsuited
    assert _completed(ignored)[0] == lines  # consulting draws nothing
    assert len(asked) > 600  # at every session after the signup one

    suited = STREAMS[name](users=600, days=7, seed=4)
    suited.advisor = lambda user_id: min(suited.fitting[suited.behaviour_of(user_id)])
    assert set(suited.fitting) == set(suited.behaviours())
    assert len(_completed(suited)[1]) > len(done) * 1.04
