"""The built-in simulator behind the generators' interface (``lines``, ``behaviour_of``),
for the benches that judge against planted behaviours."""

from __future__ import annotations

from collections.abc import Iterator

from firstmile.flows.simulator import Simulation


class SimulatorStream:
    name = "sim"

    def __init__(self, users: int, days: float, seed: int) -> None:
        self.sim = Simulation(users=users, days=days, seed=seed)

    def lines(self) -> Iterator[bytes]:
        return self.sim.lines()

    def behaviour_of(self, user_id: str) -> str:
        """The planted persona (it depends on the seed alone, not on which paths suit it)."""
        return self.sim.persona_of(int(user_id.split("-")[1]))
