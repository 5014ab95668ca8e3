"""The simulator: reproducible, ordered, realistic, with a little noise."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from firstmile.flows.simulator import PERSONAS, Simulation
from firstmile.operators.decode import decode
from firstmile.operators.events import CANONICAL_KINDS, DeadLetter, Event


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a = list(Simulation(users=30, days=3, seed=1).lines())
    assert a == list(Simulation(users=30, days=3, seed=1).lines())
    assert a != list(Simulation(users=30, days=3, seed=2).lines())


def test_stream_is_realistic() -> None:
    sim = Simulation(users=300, days=10, seed=5)
    results = [decode(line) for line in sim.lines()]
    events = [r for r in results if isinstance(r, Event)]
    dead = [r for r in results if isinstance(r, DeadLetter)]
    # ordered by event time (resent duplicates arrive late, as they do in real pipelines)
    times = [e.timestamp for e in events]
    assert sum(a > b for a, b in pairwise(times)) < len(times) * 0.02
    kinds = Counter(e.kind for e in events)
    # every kind a product's onboarding stream has (the simulator sends no alias, group,
    # consent or erasure calls, and no unmapped names)
    for kind in CANONICAL_KINDS - {"alias", "group", "consent_updated", "user_erased", "custom"}:
        assert kinds[kind] > 0, kind
    assert kinds["signup"] <= 300
    # anonymous visits before signup, and the devices the personas use
    assert any(e.user_id is None and e.anonymous_id for e in events)
    assert {e.device for e in events} >= {"desktop", "mobile"}
    # noise: malformed lines and resent duplicates
    assert 0 < len(dead) < len(results) * 0.02
    ids = Counter(e.message_id for e in events)
    assert any(count > 1 for count in ids.values())
    # every planted behaviour is present
    assert {sim.persona_of(i) for i in range(300)} == set(PERSONAS)


def test_some_users_go_quiet() -> None:
    sim = Simulation(users=200, days=14, seed=3)
    last_seen: dict[str, object] = {}
    for line in sim.lines():
        event = decode(line)
        if isinstance(event, Event) and event.user_id:
            last_seen[event.user_id] = event.timestamp
    end = sim.end
    quiet = [u for u, t in last_seen.items() if (end - t).days >= 5]  # type: ignore[operator]
    assert len(quiet) > 20
