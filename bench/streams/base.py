"""Shared machinery of the benchmark streams: users, messages, noise and the lazy merge.

A generator subclasses ``Stream`` and supplies its behaviours, devices, daily rhythm,
onboarding names and the per-session logic; everything else lives here once.
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from abc import ABC, abstractmethod
from bisect import bisect
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import accumulate, count
from typing import Any, ClassVar

import orjson

SIM_START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday: weekday 0 at t = 0
DAY = 86_400.0
HOUR = 3_600.0
P_DUPLICATE = 0.005  # resent later with the original timestamp
P_MALFORMED = 0.002  # an extra broken copy: truncated, or with both ids stripped

Item = tuple[int, bytes]  # (emit time, ms since the epoch; the JSON line)
Events = Generator[Item, None, None]

_START_MS = int(SIM_START.timestamp() * 1000)
#: A suiting path's effect: a stalled user's chance to get past the step (per session
#: shown it), a skipper's chance to take a step instead, and the user's remaining life
#: stretched by this factor the first time they see it.
FIT_UNSTALL, FIT_UNSKIP, FIT_STAY = 0.5, 0.6, 1.5

_M = "Mozilla/5.0"
_CHROME = "AppleWebKit/537.36 (KHTML, like Gecko) Chrome"
_SAFARI = "AppleWebKit/605.1.15 (KHTML, like Gecko) Version"
_IOS = "Mobile/15E148 Safari/604.1"
UAS: dict[str, tuple[str, ...]] = {
    "desktop": (
        f"{_M} (Windows NT 10.0; Win64; x64) {_CHROME}/122.0.0.0 Safari/537.36",
        f"{_M} (Macintosh; Intel Mac OS X 10_15_7) {_SAFARI}/17.3 Safari/605.1.15",
        f"{_M} (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 Firefox/123.0",
        f"{_M} (Windows NT 10.0; Win64; x64) {_CHROME}/122.0.0.0 Safari/537.36 Edg/122.0.2365.66",
        f"{_M} (Macintosh; Intel Mac OS X 10_15_7) {_CHROME}/121.0.0.0 Safari/537.36",
        f"{_M} (X11; Linux x86_64) {_CHROME}/121.0.0.0 Safari/537.36",
    ),
    "ios": (
        f"{_M} (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) {_SAFARI}/17.3 {_IOS}",
        f"{_M} (iPhone; CPU iPhone OS 16_6 like Mac OS X) {_SAFARI}/16.6 {_IOS}",
        f"{_M} (iPad; CPU OS 17_2 like Mac OS X) {_SAFARI}/17.2 {_IOS}",
    ),
    "android": (
        f"{_M} (Linux; Android 14; Pixel 8) {_CHROME}/122.0.6261.64 Mobile Safari/537.36",
        f"{_M} (Linux; Android 13; SM-S911B) {_CHROME}/121.0.6167.178 Mobile Safari/537.36",
        f"{_M} (Linux; Android 12; moto g(60)) {_CHROME}/120.0.6099.210 Mobile Safari/537.36",
    ),
}
# locale, UTC offset in hours (drives the local daily rhythm), weight
LOCALES = (
    ("en-US", -5.0, 38), ("en-US", -8.0, 12), ("en-GB", 0.0, 10), ("de-DE", 1.0, 10),
    ("fr-FR", 1.0, 7), ("es-ES", 1.0, 5), ("pt-BR", -3.0, 7), ("en-IN", 5.5, 6),
    ("ja-JP", 9.0, 3), ("en-AU", 10.0, 2),
)  # fmt: skip
_LOCALE_CUM = tuple(accumulate(w for *_, w in LOCALES))
_CONSENT = {"categoryPreferences": {"personalization": True, "analytics": True}}


def iso_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and 'Z', without datetime's per-call cost."""
    minute, rest = divmod(ms, 60_000)
    return f"{_minute(minute)}{rest // 1000:02d}.{rest % 1000:03d}Z"


@lru_cache(maxsize=4096)  # the merge emits in time order, so recent minutes repeat
def _minute(minute: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)).strftime(
        "%Y-%m-%dT%H:%M:"
    )


@dataclass(frozen=True)
class Behaviour:
    """A planted behaviour: the mean of each trait; users vary around it."""

    name: str
    share: float
    rate: float  # sessions per day at signup
    decay_days: float  # e-folding time of the session rate (math.inf: steady)
    length: float  # mean events per session
    gap_s: float  # mean seconds between events in a session
    life_h: float  # median hours from signup until gone for good
    p_stay: float  # share that never leaves
    p_break: float  # per session: chance of a multi-day gap before the next one
    onboarding: tuple[float, float, float]  # P(complete), P(skip), P(stall); rest go slowly
    mix: Mapping[str, float]  # session actions, interpreted by the generator


@dataclass(frozen=True)
class Onboarding:
    steps: tuple[str, ...]
    viewed: str
    completed: str
    skipped: str
    done: str


@dataclass
class Device:
    kind: str  # desktop | mweb | ios | android (the last two are native apps)
    anonymous_id: str
    context: dict[str, Any]


@dataclass
class User:
    """One user's random state and message builder; times are seconds from SIM_START."""

    id: str
    index: int
    rng: random.Random
    behaviour: Behaviour
    t0: float  # first contact
    prefix: str = ""  # of messageIds
    offset_h: float = 0.0  # local time zone
    devices: list[Device] = field(default_factory=list)
    device: Device | None = None
    user_id: str | None = None
    now: float = 0.0
    signup_t: float = 0.0
    engagement: float = 1.0  # drives rate and lifetime together: early activity predicts churn
    life: float = math.inf
    actions: tuple[str, ...] = ()
    cum: tuple[float, ...] = ()
    onb_style: str = "slow"
    onb_next: int = 0
    onb_over: bool = False
    stall_at: int = 0
    skip_steps: frozenset[str] = frozenset()
    skipped: bool = False  # skipped a step of the tour: it never counts as completed
    fits: bool = False  # the path the app shows this session suits the user
    plan: dict[str, Any] = field(default_factory=dict)  # generator-specific state
    n: int = 0

    def after(self, mean_s: float) -> float:
        """A time one exponential gap (at least a second) after the last event."""
        return self.now + 1.0 + self.rng.expovariate(1.0 / mean_s)

    def count(self, mean: float) -> int:
        return max(1, round(self.rng.gammavariate(2.0, mean / 2.0)))

    def action(self) -> str:
        return self.actions[bisect(self.cum, self.rng.random() * self.cum[-1])]

    def _emit(self, t: float, body: dict[str, Any]) -> Item:
        assert self.device is not None
        self.now = t
        self.n += 1
        ms = _START_MS + int(t * 1000)
        body["messageId"] = f"{self.prefix}{self.n:x}"
        body["anonymousId"] = self.device.anonymous_id
        if self.user_id is not None:
            body["userId"] = self.user_id
        body["timestamp"] = iso_ms(ms)
        body["context"] = self.device.context
        return ms, orjson.dumps(body)

    def track(self, t: float, event: str, **props: Any) -> Item:
        return self._emit(t, {"type": "track", "event": event, "properties": props})

    def view(self, t: float, name: str, **props: Any) -> Item:
        """A page call on the web, a screen call in a native app."""
        assert self.device is not None
        kind = "screen" if self.device.kind in ("ios", "android") else "page"
        return self._emit(t, {"type": kind, "name": name, "properties": props})

    def signup(self, event: str, traits: dict[str, Any], **props: Any) -> Events:
        """The signup track, then its identify within a second."""
        self.user_id = self.id
        self.signup_t = self.now
        yield self.track(self.now + self.rng.uniform(0.05, 3.0), event, **props)
        yield self._emit(
            self.now + self.rng.uniform(0.02, 0.9), {"type": "identify", "traits": traits}
        )


class Stream(ABC):
    """A deterministic synthetic stream with planted behaviours (ground truth)."""

    name: ClassVar[str]
    spec: ClassVar[tuple[Behaviour, ...]]
    onboarding: ClassVar[Onboarding]
    device_mix: ClassVar[Mapping[str, float]]
    second_device: ClassVar[float] = 0.0  # share of users with a second device
    #: The onboarding paths that suit each behaviour: ground truth for a product that
    #: listens (an ``advisor``), written per generator, apart from the simulator's.
    fitting: ClassVar[Mapping[str, frozenset[str]]] = {}

    def __init__(self, users: int, days: float, seed: int) -> None:
        self.users, self.days, self.seed = users, days, seed
        #: User id -> the onboarding path the job chose (its profile); None: the product
        #: shows nothing and the stream is what the seed alone makes it.
        self.advisor: Callable[[str], str | None] | None = None
        self.end = days * DAY
        self._cum = tuple(accumulate(b.share for b in self.spec))
        week = [self.activity(h / 4.0, d) for d in range(7) for h in range(96)]
        self._mean_activity = sum(week) / len(week)

    # -- what a generator supplies ------------------------------------------------------------
    @abstractmethod
    def activity(self, hour: float, weekday: int) -> float:
        """Relative chance in [0, 1] of starting a session at this local time."""

    @abstractmethod
    def visit(self, u: User) -> Events:
        """An anonymous visit before signup, starting at ``u.now``."""

    @abstractmethod
    def sign_up(self, u: User) -> Events:
        """The signup session up to and including the identify."""

    @abstractmethod
    def session(self, u: User, n: int) -> Events:
        """Session ``n`` (0: the rest of the signup session), starting at ``u.now``."""

    @abstractmethod
    def setup(self, u: User) -> None:
        """Per-user plans beyond the common ones: ``u.plan``, ``u.skip_steps``."""

    def browse(self, u: User, pages: tuple[str, ...], gap_s: float) -> Events:
        """A look around the website before signing up: "Home", then two of ``pages``."""
        for page in ("Home", *u.rng.sample(pages, 2)):
            yield u.view(u.after(gap_s), page, path=f"/{page.lower()}")

    def rate(self, u: User, age_days: float) -> float:
        b = u.behaviour
        return b.rate * u.engagement * math.exp(-age_days / b.decay_days)

    # -- the interface -------------------------------------------------------------------------
    def behaviours(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.spec)

    def behaviour_of(self, user_id: str) -> str:
        prefix, _, index = user_id.rpartition("-")
        if prefix != self.name or not index.isdigit() or int(index) >= self.users:
            raise KeyError(user_id)
        return self._head(self._rng(int(index)))[0].name

    def lines(self) -> Iterator[bytes]:
        # Users join the heap only when the stream reaches their first contact.
        joins = sorted((self._head(self._rng(i))[1], i) for i in range(self.users))
        heap: list[tuple[int, int, bytes, Iterator[Item]]] = []
        seq = count()
        k = 0
        while heap or k < len(joins):
            if k < len(joins) and (not heap or _START_MS + joins[k][0] * 1000 <= heap[0][0]):
                gen = self._noisy(joins[k][1])
                k += 1
                first = next(gen, None)
                if first is not None:
                    heapq.heappush(heap, (first[0], next(seq), first[1], gen))
                continue
            _, _, line, gen = heap[0]
            nxt = next(gen, None)
            if nxt is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (nxt[0], next(seq), nxt[1], gen))
            if line:  # empty: a user's session comes due (they consult the advisor next)
                yield line

    # -- machinery -----------------------------------------------------------------------------
    def _rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.name}:{index}")

    def _head(self, rng: random.Random) -> tuple[Behaviour, float]:
        """The first two draws of a user's generator: behaviour, then first contact."""
        behaviour = self.spec[bisect(self._cum, rng.random() * self._cum[-1])]
        return behaviour, rng.random() * 0.7 * self.end

    def _device(self, u: User, kind: str) -> Device:
        rng = u.rng
        ua_kind = rng.choice(("ios", "android")) if kind == "mweb" else kind
        ctx: dict[str, Any] = {"userAgent": rng.choice(UAS[ua_kind]), "locale": u.plan["locale"]}
        if kind in ("ios", "android"):
            ctx["device"] = {"type": kind}
        if not u.plan["no_consent"]:  # a few users' SDKs send no consent at all
            ctx["consent"] = _CONSENT
        return Device(kind, str(uuid.UUID(int=rng.getrandbits(128), version=4)), ctx)

    def _user(self, index: int) -> User:
        rng = self._rng(index)
        behaviour, t0 = self._head(rng)
        uid = f"{self.name}-{index:06d}"
        u = User(uid, index, rng, behaviour, t0, prefix=f"{self.seed}.{uid}.")
        locale, u.offset_h, _ = LOCALES[bisect(_LOCALE_CUM, rng.random() * _LOCALE_CUM[-1])]
        u.plan.update(locale=locale, no_consent=rng.random() < 0.03)
        kinds, weights = zip(*self.device_mix.items(), strict=True)
        u.devices = [self._device(u, rng.choices(kinds, weights)[0])]
        if rng.random() < self.second_device:
            u.devices.append(self._device(u, rng.choices(kinds, weights)[0]))
        u.device = u.devices[0]
        u.engagement = rng.lognormvariate(0.0, 0.45)
        b = behaviour
        # Lifetime: part behaviour, part engagement (visible early), part plain luck.
        if rng.random() >= b.p_stay:
            u.life = b.life_h * HOUR * u.engagement**0.8 * rng.lognormvariate(0.0, 0.7)
        # Each user leans on the behaviour's actions in their own proportions.
        u.actions = tuple(b.mix)
        u.cum = tuple(accumulate(w * rng.lognormvariate(0.0, 0.4) for w in b.mix.values()))
        styles = (*b.onboarding, max(0.0, 1.0 - sum(b.onboarding)))
        u.onb_style = rng.choices(("complete", "skip", "stall", "slow"), styles)[0]
        u.stall_at = rng.randrange(len(self.onboarding.steps))
        self.setup(u)
        return u

    def next_start(self, u: User, t: float, per_day: float) -> float:
        """Next session start after ``t``: a Poisson process thinned by the daily rhythm."""
        lam = per_day / (DAY * self._mean_activity)
        if lam <= 1e-9:
            return math.inf
        while t < self.end:
            t += u.rng.expovariate(lam)
            local = t + u.offset_h * HOUR
            if u.rng.random() < self.activity(local % DAY / HOUR, int(local // DAY) % 7):
                return t
        return math.inf

    def _life(self, u: User) -> Events:
        rng = u.rng
        u.now = self.next_start(u, u.t0, 4.0)  # first contact follows the daily rhythm too
        for _ in range(rng.choices((0, 1, 2, 3), (45, 30, 15, 10))[0]):
            if u.now >= self.end:
                return
            yield from self.visit(u)
            u.now = self.next_start(u, u.now + 600.0, 2.0)
        if u.now >= self.end:
            return
        yield from self.sign_up(u)
        yield from self.session(u, 0)
        end = min(self.end, u.signup_t + u.life)
        n, b = 0, u.behaviour
        comeback = rng.random() < b.p_break  # gone, then back once after days for a short spell
        while True:
            t = self.next_start(u, u.now + 300.0, self.rate(u, (u.now - u.signup_t) / DAY))
            if rng.random() < b.p_break:  # away for days, then back
                away = DAY * (1.5 + rng.gammavariate(2.0, 1.2))
                t, end = t + away, min(self.end, end + away)  # life counts active time
            if t >= end and comeback:
                comeback = False
                t = u.now + DAY * (2.0 + rng.gammavariate(2.0, 1.5))
                end = min(self.end, t + b.life_h * HOUR * rng.lognormvariate(-1.0, 0.7))
            if t >= end:
                return
            n += 1
            u.now = t
            if self.advisor is not None:
                yield _START_MS + int(t * 1000), b""  # the stream is here: what does the app show?
                fitted = u.fits
                u.fits = self.advisor(u.user_id or u.id) in self.fitting.get(b.name, ())
                if u.fits and not fitted:  # a path that suits them keeps them around longer
                    end = min(self.end, t + FIT_STAY * (end - t))
            u.device = rng.choice(u.devices)
            yield from self.session(u, n)

    def _noisy(self, index: int) -> Iterator[Item]:
        rng = random.Random(f"{self.seed}:{self.name}:{index}:noise")
        end_ms = _START_MS + int(self.end * 1000)
        pending: list[Item] = []
        for ms, line in self._life(self._user(index)):
            while pending and pending[0][0] <= ms:
                yield heapq.heappop(pending)
            if ms >= end_ms:
                break
            yield ms, line
            if not line:  # a session comes due: no noise
                continue
            r = rng.random()
            if r < P_DUPLICATE:
                heapq.heappush(pending, (ms + rng.randint(2_000, 300_000), line))
            elif r < P_DUPLICATE + P_MALFORMED:
                yield ms, _malformed(rng, line)
        while pending:
            yield heapq.heappop(pending)

    def onboard(self, u: User) -> Events:
        """Onboarding steps in this session, as the user's style has it."""
        ob, rng = self.onboarding, u.rng
        fits = u.fits  # a path that suits them: they stall, skip and put it off less
        if u.onb_over or (u.onb_style == "slow" and rng.random() < (0.2 if fits else 0.5)):
            return
        while u.onb_next < len(ob.steps):
            step = ob.steps[u.onb_next]
            yield u.track(u.after(6.0), ob.viewed, step=step, step_index=u.onb_next + 1)
            if u.onb_style == "stall" and u.onb_next == u.stall_at:
                if fits and rng.random() < FIT_UNSTALL:
                    u.onb_style = "slow"  # helped past the step that stopped them
                else:
                    u.onb_over = rng.random() < 0.3  # stuck here; eventually stops looking
                    return
            skips = u.onb_style == "skip" and not (fits and rng.random() < FIT_UNSKIP)
            if skips or step in u.skip_steps:
                u.skipped = True
                yield u.track(u.after(4.0), ob.skipped, step=step, step_index=u.onb_next + 1)
                if skips and rng.random() < 0.6:
                    u.onb_over = True  # one skip and the whole tour is gone
                    return
            else:
                yield u.track(u.after(35.0), ob.completed, step=step, step_index=u.onb_next + 1)
            u.onb_next += 1
            if u.onb_style == "slow" or rng.random() < 0.15:
                break  # the rest another time
        if u.onb_next >= len(ob.steps):
            u.onb_over = True
            if not u.skipped:
                yield u.track(u.after(3.0), ob.done, steps=len(ob.steps))


def _malformed(rng: random.Random, line: bytes) -> bytes:
    if rng.random() < 0.5:
        return line[: rng.randrange(8, len(line) - 2)]
    body = orjson.loads(line)
    body.pop("userId", None)
    body.pop("anonymousId", None)
    body["messageId"] = f"{body['messageId']}.x"
    return orjson.dumps(body)
