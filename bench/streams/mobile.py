"""Consumer mobile app (short-form audio and articles): many short sessions, push-driven.

Native apps mostly (screen calls), evening peaks every day of the week.
"""

from __future__ import annotations

import math
from typing import ClassVar

from bench.streams.base import Behaviour, Events, Onboarding, Stream, User

TOPICS = ("news", "sleep", "focus", "fitness", "cooking", "finance", "travel", "comedy")
SCREENS = ("Home", "Discover", "Library", "Profile", "Topic")
CAMPAIGNS = ("daily_pick", "streak_reminder", "new_episode", "win_back", "weekly_digest")
# fmt: off
SPEC = (
    Behaviour("daily_habit", 0.28, rate=3.0, decay_days=math.inf, length=6.0, gap_s=25.0,
              life_h=120.0, p_stay=0.45, p_break=0.006, onboarding=(0.7, 0.1, 0.05),
              mix={"content": 5, "audio": 2, "like": 2, "streak": 1, "bookmark": 1, "screen": 3,
                   "share": 0.5, "premium": 0.3}),
    Behaviour("binge_then_drop", 0.24, rate=9.0, decay_days=1.3, length=10.0, gap_s=30.0,
              life_h=40.0, p_stay=0.05, p_break=0.03, onboarding=(0.5, 0.35, 0.05),
              mix={"content": 6, "audio": 4, "screen": 3, "like": 1, "search": 2, "premium": 0.2}),
    Behaviour("notification_driven", 0.26, rate=1.3, decay_days=12.0, length=4.0, gap_s=20.0,
              life_h=70.0, p_stay=0.2, p_break=0.12, onboarding=(0.2, 0.3, 0.2),
              mix={"content": 4, "screen": 2, "like": 1, "settings": 0.4}),
    Behaviour("one_session_tourist", 0.22, rate=0.6, decay_days=1.0, length=4.0, gap_s=25.0,
              life_h=5.0, p_stay=0.0, p_break=0.15, onboarding=(0.05, 0.45, 0.45),
              mix={"screen": 5, "content": 2, "paywall": 1, "crash": 0.2}),
)
# fmt: on


class MobileStream(Stream):
    name: ClassVar[str] = "mobile"
    spec = SPEC
    fitting: ClassVar = {  # bingers need pulling back; tourists a hand; notified users a short tour
        "daily_habit": frozenset({"standard_tour"}),
        "binge_then_drop": frozenset({"re_engagement"}),
        "notification_driven": frozenset({"short_tour"}),
        "one_session_tourist": frozenset({"guided_walkthrough"}),
    }
    onboarding = Onboarding(
        ("pick_interests", "enable_notifications", "set_daily_goal", "follow_topics"),
        viewed="Tour Step Viewed",
        completed="Tour Step Completed",
        skipped="Tour Step Skipped",
        done="Tour Completed",
    )
    device_mix: ClassVar = {"ios": 0.52, "android": 0.40, "mweb": 0.05, "desktop": 0.03}
    second_device = 0.05

    def activity(self, hour: float, weekday: int) -> float:
        if 19 <= hour < 23:
            level = 1.0
        elif 7 <= hour < 9 or 12 <= hour < 14 or hour >= 23:
            level = 0.5
        elif 9 <= hour < 19:
            level = 0.3
        else:
            level = 0.04
        return level * (1.0 if weekday >= 5 else 0.9)

    def setup(self, u: User) -> None:
        rng, name = u.rng, u.behaviour.name
        # Session length: per-user luck, and engaged users do more per session.
        u.plan["len"] = rng.gammavariate(3.0, 1 / 3) * u.engagement**0.4
        u.plan["topics"] = rng.sample(TOPICS, rng.randint(1, 3))
        # Push-driven users are those who opened the app from a push; others rarely do.
        u.plan["p_push"] = 0.8 if name == "notification_driven" else rng.uniform(0.02, 0.2)
        if name == "notification_driven":
            u.skip_steps = frozenset({"set_daily_goal", "follow_topics"})
        u.plan["streak"] = 0

    def _open(self, u: User, t: float, installed: bool) -> Events:
        if not installed and not u.plan.get("installed"):
            u.plan["installed"] = True
            yield u.track(t, "Application Installed", version="5.4.1")
            t = u.after(2.0)
        yield u.track(t, "Application Opened", from_background=u.rng.random() < 0.6)

    def visit(self, u: User) -> Events:
        yield from self._open(u, u.after(10.0), False)
        for screen in ("Welcome", *u.rng.sample(("Paywall", "Sample", "Discover"), 2)):
            yield u.view(u.after(15.0), screen)

    def sign_up(self, u: User) -> Events:
        rng = u.rng
        if not u.plan.get("installed"):
            yield from self._open(u, u.after(10.0), False)
        yield u.view(u.after(15.0), "Create Account")
        traits: dict[str, object] = {
            "role": rng.choice(("listener", "reader", "creator")),
            "company_size": rng.choice((1, 1, 1, 2, 5)),
            "plan": "free",
            "age_band": rng.choice(("18-24", "25-34", "35-44", "45+")),
            "interests": u.plan["topics"],
        }
        for key in ("role", "company_size", "age_band"):
            if rng.random() < 0.25:  # mobile signups ask little
                del traits[key]
        method = rng.choice(("apple", "google", "email"))
        yield from u.signup("User Registered", traits, method=method)

    def session(self, u: User, n: int) -> Events:
        rng = u.rng
        if n > 0:
            if rng.random() < u.plan["p_push"]:
                campaign = rng.choice(CAMPAIGNS)
                yield u.track(
                    u.now, "Push Notification Received", feature="push", campaign=campaign
                )
                yield u.track(u.after(240.0), "Push Notification Tapped", campaign=campaign)
            yield from self._open(u, u.after(1.0), True)
        yield u.view(u.after(3.0), "Home")
        if n < 10:
            yield from self.onboard(u)
        for _ in range(u.count(u.behaviour.length * u.plan["len"])):
            yield from self._act(u, u.action())

    def _act(self, u: User, act: str) -> Events:
        rng = u.rng
        t = u.after(u.behaviour.gap_s)
        topic = rng.choice(u.plan["topics"]) if rng.random() < 0.8 else rng.choice(TOPICS)
        item = f"{topic}-{rng.randrange(300)}"
        if act == "content":
            yield u.track(t, "Content Viewed", feature="content", content_id=item, topic=topic)
            if rng.random() < 0.5:
                yield u.track(u.after(90.0), "Content Completed", content_id=item)  # custom
        elif act == "audio":
            yield u.track(
                t,
                "Video Playback Started",
                feature="player",
                content_id=item,
                kind="audio",
                position=0,
            )
        elif act == "like":
            yield u.track(t, "Feature Used", feature="like", content_id=item)
        elif act == "bookmark":
            yield u.track(t, "Feature Used", feature="bookmark", content_id=item)
        elif act == "share":
            yield u.track(t, "Feature Used", feature="share", channel=rng.choice(("sms", "wa")))
        elif act == "streak":
            u.plan["streak"] += 1
            yield u.track(t, "Streak Extended", days=u.plan["streak"])  # custom
        elif act == "search":
            yield u.track(t, "Search Performed", feature="search", query=topic)
        elif act == "settings":
            yield u.view(t, "Notification Settings")
            yield u.track(u.after(10.0), "Feature Viewed", feature="quiet_hours")
        elif act in ("premium", "paywall"):
            yield u.view(t, "Paywall", source=act)
            if act == "premium" and not u.plan.get("paid") and rng.random() < 0.3:
                u.plan["paid"] = True
                yield u.track(
                    u.after(40.0),
                    "Subscription Started",
                    plan="premium_monthly",
                    price=7.99,
                    currency="USD",
                )
        elif act == "crash":
            yield u.track(t, "Application Crashed", feature="player", error="OOM")
            if rng.random() < 0.5:
                yield u.track(u.after(60.0), "Feedback Submitted", rating=rng.randint(1, 2))
        else:
            yield u.view(t, rng.choice(SCREENS), topic=topic)
