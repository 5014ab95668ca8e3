"""The built-in simulator: seeded, realistic Segment-Spec onboarding streams.

Each simulated user follows one planted behaviour (a persona), arrives at a random time,
may browse anonymously first, signs up, and then lives through sessions in event time
until they go quiet or the simulated period ends. Users are generated lazily and merged
by event time, so memory grows with users, not with events. A little noise is mixed in
like a real pipeline has: resent duplicates and malformed lines.

Every user draws from their own seeded generator, so the stream is identical for the
same (seed, users, days), whatever the interleaving.

The simulated product listens to firstmile: given an ``advisor`` (the user's current
onboarding path, read from the job's profile store), each user asks it when their next
session comes due in the stream, and a path that fits their persona (``FITTING``) makes
them likelier to finish onboarding steps (and skip fewer) and keeps them around longer.
The standard tour fits nobody in particular. So an experiment's lift in a simulated run
comes from the job's real decisions. Without an advisor (``firstmile simulate``), nobody
is shown anything and the stream is what the seed alone makes it.

>>> sim = Simulation(users=3, days=2, seed=7)
>>> lines = list(sim.lines())
>>> lines == list(Simulation(users=3, days=2, seed=7).lines())
True
>>> sorted(sim.persona_of(i) in PERSONAS for i in range(3))
[True, True, True]
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from firstmile.operators.eventtime import iso

#: Event time of the simulation's first moment (fixed, so runs are reproducible).
SIM_START = datetime(2026, 3, 2, tzinfo=UTC)


@dataclass(frozen=True)
class Persona:
    """A planted behaviour: how often a user comes back and what they do in a session."""

    name: str
    share: float
    device: str  # "desktop" | "mobile" | "tablet"
    sessions_per_day: float  # mean, while the user is active
    events_per_session: float  # mean
    onboarding_completion: float  # chance to finish each onboarding step they view
    onboarding_skip: float  # chance to skip a step instead
    feature_breadth: int  # how many distinct features they touch
    quiet_after_days: float  # mean days until they go quiet for good
    invites: float  # chance per session to invite a teammate
    support: float  # chance per session to open a support ticket
    purchase: float  # chance per session to upgrade


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona("fast_adopter", 0.25, "desktop", 1.6, 14, 0.95, 0.02, 8, 40.0, 0.10, 0.01, 0.04),
        Persona("mobile_skimmer", 0.25, "mobile", 2.2, 5, 0.25, 0.60, 3, 20.0, 0.00, 0.00, 0.01),
        Persona("team_admin", 0.15, "desktop", 1.2, 18, 0.85, 0.05, 10, 45.0, 0.45, 0.05, 0.06),
        Persona("stalled_starter", 0.20, "desktop", 0.8, 6, 0.30, 0.10, 2, 4.0, 0.00, 0.10, 0.00),
        Persona("one_and_done", 0.15, "mobile", 0.4, 4, 0.15, 0.30, 1, 1.0, 0.00, 0.02, 0.00),
    )
}

#: Onboarding paths that suit each persona (the simulated product's ground truth).
FITTING: dict[str, frozenset[str]] = {
    "fast_adopter": frozenset({"short_tour"}),
    "team_admin": frozenset({"short_tour"}),
    "mobile_skimmer": frozenset({"short_tour", "guided_walkthrough"}),
    "stalled_starter": frozenset({"guided_walkthrough", "re_engagement"}),
    "one_and_done": frozenset({"re_engagement", "retention_offer"}),
}
#: A fitting path's effect: odds of completing a viewed step (x), of skipping it (x),
#: and days of staying active added per session shown a fitting path (x quiet_after_days).
FIT_COMPLETION, FIT_SKIP, FIT_STAY = 1.6, 0.5, 0.25

ONBOARDING_STEPS = ("welcome", "profile", "connect_data", "invite_team", "first_report")
FEATURES = (
    "reports",
    "dashboards",
    "search",
    "export",
    "alerts",
    "integrations",
    "comments",
    "templates",
    "api_keys",
    "sharing",
    "automation",
    "calendar",
)
PAGES = ("Home", "Pricing", "Docs", "Settings", "Billing", "Blog", "Changelog")
FEATURE_VIEWS = 0.15  # share of page views that show a feature: one of theirs, or any
LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "pt-BR", "es-ES", "sv-SE", "ja-JP", "nl-NL")
ROLES = ("engineer", "product_manager", "designer", "marketer", "founder", "analyst")
USER_AGENTS = {
    "desktop": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Safari/605.1.15",
    ),
    "mobile": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Mobile Safari/537.36",
    ),
}


class Simulation:
    """A reproducible stream of ``users`` users over ``days`` days of event time."""

    def __init__(
        self,
        users: int = 2000,
        days: float = 14.0,
        seed: int = 42,
        duplicate_rate: float = 0.005,
        malformed_rate: float = 0.002,
        advisor: Callable[[str], str | None] | None = None,
        fitting: Mapping[str, frozenset[str]] = FITTING,
    ) -> None:
        if users < 0 or days <= 0:
            raise ValueError("users must be >= 0 and days > 0")
        self.users = users
        self.days = days
        self.seed = seed
        self.duplicate_rate = duplicate_rate
        self.malformed_rate = malformed_rate
        self.end = SIM_START + timedelta(days=days)
        self.advisor = advisor  # user id -> the onboarding path the job chose for them
        self.fitting = fitting  # persona -> the paths that suit it

    def persona_of(self, index: int) -> str:
        """The planted behaviour of user ``index`` (ground truth for quality benchmarks)."""
        draw = random.Random(f"{self.seed}:persona:{index}").random()
        for persona in PERSONAS.values():
            draw -= persona.share
            if draw < 0:
                return persona.name
        return next(reversed(PERSONAS))

    @staticmethod
    def user_id(index: int) -> str:
        return f"user-{index:07d}"

    def lines(self) -> Iterator[bytes]:
        """Every raw line of the stream (JSON, or noise), ordered by event time."""
        heap: list[tuple[datetime, int, int, bytes, Iterator[tuple[datetime, bytes]]]] = []
        order = 0
        for index in range(self.users):
            events = self._user_stream(index)
            first = next(events, None)
            if first is not None:
                heapq.heappush(heap, (first[0], index, order, first[1], events))
                order += 1
        while heap:
            _when, index, _, line, events = heap[0]
            if line:  # empty: a user's session comes due (they consult the advisor next)
                yield line
            following = next(events, None)
            if following is None:
                heapq.heappop(heap)
            else:
                order += 1
                heapq.heapreplace(heap, (following[0], index, order, following[1], events))

    def _user_stream(self, index: int) -> Iterator[tuple[datetime, bytes]]:
        rng = random.Random(f"{self.seed}:user:{index}")
        user = _SimUser(self, index, rng, PERSONAS[self.persona_of(index)])
        pending: list[tuple[datetime, int, bytes]] = []  # resent duplicates, due later
        n = 0
        for when, message in user.events():
            while pending and pending[0][0] <= when:
                due, _, line = heapq.heappop(pending)
                yield due, line
            if message is None:
                yield when, b""
                continue
            line = orjson.dumps(message)
            if rng.random() < self.malformed_rate:
                line = _corrupt(line, rng)
            elif rng.random() < self.duplicate_rate:
                n += 1
                heapq.heappush(pending, (when + timedelta(seconds=rng.uniform(1, 600)), n, line))
            yield when, line
        while pending:
            due, _, line = heapq.heappop(pending)
            yield due, line


class _SimUser:
    def __init__(self, sim: Simulation, index: int, rng: random.Random, persona: Persona) -> None:
        self.sim, self.index, self.rng, self.persona = sim, index, rng, persona
        self.user_id = Simulation.user_id(index)
        self.anonymous_id = str(uuid.UUID(int=rng.getrandbits(128)))
        self.device = persona.device
        self.user_agent = rng.choice(
            USER_AGENTS["mobile" if self.device != "desktop" else "desktop"]
        )
        self.locale = rng.choice(LOCALES)
        self.app_version = f"{rng.randint(3, 4)}.{rng.randint(0, 9)}.{rng.randint(0, 20)}"
        self.features = rng.sample(FEATURES, min(persona.feature_breadth, len(FEATURES)))
        # Which pages show a feature (viewed, maybe never used): apart from ``rng``.
        self.browse = random.Random(f"{sim.seed}:browse:{index}")
        self.step = 0
        self.fits = False  # the path the app shows this session suits the user

    def events(self) -> Iterator[tuple[datetime, dict[str, Any] | None]]:
        rng, persona, sim = self.rng, self.persona, self.sim
        signup = SIM_START + timedelta(days=rng.uniform(0, sim.days * 0.7))
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):  # anonymous visits before signup
            when = signup - timedelta(hours=rng.uniform(0.2, 72))
            if when >= SIM_START:
                yield when, self._message(when, "page", known=False, name=rng.choice(PAGES))
        yield from sorted(self._pre_signup_order(signup), key=lambda pair: pair[0])
        quiet_at = signup + timedelta(days=rng.expovariate(1 / persona.quiet_after_days))
        now = signup + timedelta(minutes=rng.uniform(1, 5))
        while now < min(quiet_at, sim.end):
            if sim.advisor is not None:
                yield now, None  # the stream has reached this session: what does the app show?
                self.fits = sim.advisor(self.user_id) in sim.fitting[persona.name]
                if self.fits:
                    quiet_at += timedelta(days=FIT_STAY * persona.quiet_after_days)
            yield from self._session(now)
            gap_days = rng.expovariate(persona.sessions_per_day)
            now += timedelta(days=gap_days, minutes=30)

    def _pre_signup_order(self, signup: datetime) -> list[tuple[datetime, dict[str, Any]]]:
        traits = {
            "role": self.rng.choice(ROLES),
            "company_size": self.rng.choice((1, 5, 20, 80, 400, 2000)),
            "plan": "trial",
        }
        if self.persona.name == "team_admin":
            traits["role"] = "admin"
            traits["company_size"] = self.rng.choice((80, 400, 2000))
        return [
            (
                signup,
                self._message(
                    signup,
                    "track",
                    event="Signed Up",
                    properties={"method": self.rng.choice(("email", "google"))},
                ),
            ),
            (
                signup + timedelta(milliseconds=50),
                self._message(signup + timedelta(milliseconds=50), "identify", traits=traits),
            ),
        ]

    def _session(self, start: datetime) -> Iterator[tuple[datetime, dict[str, Any]]]:
        rng, persona = self.rng, self.persona
        when = start
        opened = "Application Opened" if self.device != "desktop" else "Session Started"
        yield when, self._message(when, "track", event=opened)
        count = max(1, int(rng.expovariate(1 / persona.events_per_session)))
        for _ in range(count):
            when += timedelta(seconds=rng.expovariate(1 / 45))
            yield when, self._action(when)

    def _action(self, when: datetime) -> dict[str, Any]:
        rng, persona = self.rng, self.persona
        if self.step < len(ONBOARDING_STEPS) and rng.random() < 0.5:
            step = ONBOARDING_STEPS[self.step]
            draw = rng.random()
            skip, completion = persona.onboarding_skip, persona.onboarding_completion
            if self.fits:
                skip, completion = (
                    skip * FIT_SKIP,
                    min(0.97 - skip * FIT_SKIP, completion * FIT_COMPLETION),
                )
            if draw < skip:
                self.step += 1
                return self._message(
                    when,
                    "track",
                    event="Onboarding Step Skipped",
                    properties={"step": step, "step_index": self.step},
                )
            if draw < skip + completion:
                self.step += 1
                name = (
                    "Onboarding Completed"
                    if self.step == len(ONBOARDING_STEPS)
                    else "Onboarding Step Completed"
                )
                return self._message(
                    when, "track", event=name, properties={"step": step, "step_index": self.step}
                )
            return self._message(
                when,
                "track",
                event="Onboarding Step Viewed",
                properties={"step": step, "step_index": self.step + 1},
            )
        draw = rng.random()
        if draw < persona.invites:
            return self._message(
                when, "track", event="Invite Sent", properties={"invitee_role": rng.choice(ROLES)}
            )
        if draw < persona.invites + persona.support:
            return self._message(
                when,
                "track",
                event="Support Ticket Created",
                properties={"topic": rng.choice(("billing", "bug", "how_to"))},
            )
        if draw < persona.invites + persona.support + persona.purchase:
            return self._message(
                when,
                "track",
                event="Order Completed",
                properties={"plan": "pro", "revenue": rng.choice((29, 99, 299)), "currency": "USD"},
            )
        if rng.random() < 0.6 and self.features:
            return self._message(
                when,
                "track",
                event="Feature Used",
                properties={"feature": rng.choice(self.features)},
            )
        kind = "screen" if self.device != "desktop" else "page"
        page = rng.choice(PAGES)
        if self.browse.random() < FEATURE_VIEWS:  # its own generator: the rest stays as it was
            known = self.features and self.browse.random() < 0.5
            feature = self.browse.choice(self.features if known else FEATURES)
            return self._message(
                when, "track", event="Feature Viewed", properties={"feature": feature}
            )
        return self._message(when, kind, name=page)

    def _message(
        self,
        when: datetime,
        call: str,
        *,
        known: bool = True,
        event: str | None = None,
        name: str | None = None,
        properties: dict[str, Any] | None = None,
        traits: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": call,
            "messageId": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "anonymousId": self.anonymous_id,
            "timestamp": iso(when),
            "context": {
                "locale": self.locale,
                "userAgent": self.user_agent,
                "app": {"version": self.app_version},
                "consent": {"categoryPreferences": {"personalization": True, "analytics": True}},
            },
        }
        if known:
            message["userId"] = self.user_id
        if event is not None:
            message["event"] = event
        if name is not None:
            message["name"] = name
        if properties:
            message["properties"] = properties
        if traits:
            message["traits"] = traits
        if self.device != "desktop":
            message["context"]["device"] = {
                "type": "ios" if "iPhone" in self.user_agent else "android"
            }
        return message


def _corrupt(line: bytes, rng: random.Random) -> bytes:
    """One of the ways real pipelines mangle a message."""
    kind = rng.randrange(4)
    if kind == 0:
        return line[: rng.randrange(1, max(2, len(line) - 1))]  # truncated
    message = orjson.loads(line)
    if kind == 1:
        message.pop("userId", None)
        message.pop("anonymousId", None)
    elif kind == 2:
        message["timestamp"] = "not-a-time"
    else:
        message["type"] = "teleport"
    return orjson.dumps(message)
