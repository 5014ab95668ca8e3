"""A developer API platform: evaluators run the quickstart and go, integrators ship to
production, tinkerers come back on weekends, team leads manage, some never get past setup.

Desktop and terminal mostly; weekday working hours, evenings and weekends for hobbyists.
Much of the stream is the product's own custom events (requests, deploys, CLI commands).
"""

from __future__ import annotations

import math
from typing import ClassVar

from bench.streams.base import Behaviour, Events, Onboarding, Stream, User

LANGUAGES = ("python", "node", "go", "java", "ruby")
ENDPOINTS = ("/v1/messages", "/v1/search", "/v1/files", "/v1/events", "/v1/users")
COMMANDS = ("login", "init", "deploy", "logs", "env pull", "run")
ARTICLES = ("quickstart", "authentication", "rate-limits", "webhooks", "errors", "sdks")
ROLES = {
    "quickstart_evaluator": ("developer", "student", "architect"),
    "weekend_tinkerer": ("developer", "student", "hobbyist"),
    "production_integrator": ("developer", "backend", "devops"),
    "team_lead": ("cto", "engineering_manager", "founder"),
    "setup_blocked": ("developer", "data_scientist", "analyst"),
}
# fmt: off
SPEC = (
    Behaviour("quickstart_evaluator", 0.24, rate=4.0, decay_days=1.0, length=9.0, gap_s=35.0,
              life_h=18.0, p_stay=0.03, p_break=0.2, onboarding=(0.35, 0.4, 0.1),
              mix={"docs": 4, "request": 3, "key": 1, "sample": 2, "page": 1, "error": 1}),
    Behaviour("weekend_tinkerer", 0.20, rate=0.7, decay_days=25.0, length=14.0, gap_s=40.0,
              life_h=200.0, p_stay=0.4, p_break=0.25, onboarding=(0.4, 0.2, 0.1),
              mix={"request": 4, "sample": 2, "docs": 2, "cli": 2, "error": 1, "page": 1}),
    Behaviour("production_integrator", 0.22, rate=2.5, decay_days=math.inf, length=20.0,
              gap_s=20.0, life_h=150.0, p_stay=0.7, p_break=0.02, onboarding=(0.85, 0.05, 0.0),
              mix={"request": 8, "webhook": 2, "deploy": 2, "logs": 3, "key": 0.5, "cli": 2,
                   "usage": 1}),
    Behaviour("team_lead", 0.14, rate=1.2, decay_days=30.0, length=7.0, gap_s=60.0,
              life_h=120.0, p_stay=0.6, p_break=0.05, onboarding=(0.6, 0.0, 0.05),
              mix={"invite": 3, "billing": 1.5, "usage": 3, "settings": 2, "page": 3, "logs": 1}),
    Behaviour("setup_blocked", 0.20, rate=2.0, decay_days=2.0, length=8.0, gap_s=50.0,
              life_h=55.0, p_stay=0.05, p_break=0.1, onboarding=(0.05, 0.05, 0.6),
              mix={"error": 4, "docs": 3, "support": 2, "search": 2, "page": 1, "request": 0.5}),
)
# fmt: on


class DevToolStream(Stream):
    name: ClassVar[str] = "devtool"
    spec = SPEC
    fitting: ClassVar = {  # evaluators want speed; blocked users a hand; tinkerers a nudge
        "quickstart_evaluator": frozenset({"short_tour"}),
        "weekend_tinkerer": frozenset({"re_engagement"}),
        "production_integrator": frozenset({"standard_tour"}),
        "team_lead": frozenset({"guided_walkthrough"}),
        "setup_blocked": frozenset({"guided_walkthrough", "retention_offer"}),
    }
    onboarding = Onboarding(
        ("create_project", "generate_api_key", "first_request", "install_sdk", "add_webhook"),
        viewed="Onboarding Step Viewed",
        completed="Onboarding Step Completed",
        skipped="Onboarding Skipped",
        done="Activation Completed",
    )
    device_mix: ClassVar = {"desktop": 0.95, "mweb": 0.04, "ios": 0.01}
    second_device = 0.05

    def activity(self, hour: float, weekday: int) -> float:
        if weekday >= 5:
            return 0.5 if 10 <= hour < 24 else 0.05
        return 1.0 if 9.5 <= hour < 19 else 0.6 if 19 <= hour < 24 else 0.05

    def setup(self, u: User) -> None:
        rng, name = u.rng, u.behaviour.name
        u.plan["len"] = rng.gammavariate(3.0, 1 / 3) * u.engagement**0.5
        u.plan["project"] = f"prj-{u.index:06d}"
        u.plan["language"] = rng.choice(LANGUAGES)
        if name == "team_lead":
            u.skip_steps = frozenset({"install_sdk", "add_webhook"})
        elif name == "quickstart_evaluator":
            u.skip_steps = frozenset({"add_webhook"})
        size = {"team_lead": 120, "production_integrator": 60, "weekend_tinkerer": 1}.get(name, 15)
        u.plan["size"] = max(1, round(size * rng.lognormvariate(0.0, 1.2)))

    def visit(self, u: User) -> Events:
        yield from self.browse(u, ("Docs", "Pricing", "Changelog", "Status"), 30.0)

    def sign_up(self, u: User) -> Events:
        rng, name = u.rng, u.behaviour.name
        traits: dict[str, object] = {
            "role": rng.choice(ROLES[name]),
            "company_size": u.plan["size"],
            "plan": "hobby" if name == "weekend_tinkerer" else rng.choice(("free", "free", "pro")),
            "language": u.plan["language"],
        }
        for key in ("role", "company_size"):
            if rng.random() < 0.3:  # a GitHub signup fills little in
                del traits[key]
        yield u.view(u.after(15.0), "Sign Up", path="/signup")
        yield from u.signup("Signed Up", traits, method=rng.choice(("github", "github", "email")))

    def session(self, u: User, n: int) -> Events:
        rng = u.rng
        if n > 0:
            via = rng.choice(("browser", "cli")) if u.behaviour.name != "team_lead" else "browser"
            yield u.track(u.now, "Signed In", method=via)
        yield u.view(u.after(3.0), "Console", project_id=u.plan["project"])
        if n < 6:
            yield from self.onboard(u)
        for _ in range(u.count(u.behaviour.length * u.plan["len"])):
            yield from self._act(u, u.action())

    def _act(self, u: User, act: str) -> Events:
        rng, gap, project = u.rng, u.behaviour.gap_s, u.plan["project"]
        t = u.after(gap)
        if act == "request":
            for _ in range(rng.randint(1, 4)):
                yield u.track(
                    t,
                    "API Request Sent",  # custom
                    feature="api",
                    endpoint=rng.choice(ENDPOINTS),
                    status=200,
                    sdk=u.plan["language"],
                )
                t = u.after(gap / 4)
        elif act == "error":
            yield u.track(
                t,
                "API Request Failed",  # custom
                endpoint=rng.choice(ENDPOINTS),
                status=rng.choice((400, 401, 401, 429, 500)),
            )
        elif act == "key":
            yield u.track(t, "API Key Created", feature="api_keys", project_id=project)  # custom
        elif act == "sample":
            yield u.track(t, "Feature Used", feature="samples", repo=f"sample-{u.plan['language']}")
        elif act == "cli":
            yield u.track(t, "CLI Command Run", command=rng.choice(COMMANDS))  # custom
        elif act == "webhook":
            yield u.track(t, "Feature Used", feature="webhooks", project_id=project)
        elif act == "deploy":
            yield u.track(
                t, "Deployment Created", environment=rng.choice(("staging", "production"))
            )  # custom
        elif act == "logs":
            yield u.view(t, "Logs", project_id=project)
        elif act == "usage":
            yield u.view(t, "Usage", project_id=project)
        elif act == "invite":
            yield u.track(t, "Invite Sent", feature="team", role=rng.choice(("member", "admin")))
        elif act == "billing":
            yield u.view(t, "Billing")
            if not u.plan.get("paid") and rng.random() < 0.2:
                u.plan["paid"] = True
                seats = u.plan["size"] // 4 + 1
                yield u.track(u.after(60.0), "Subscription Started", plan="team", seats=seats)
        elif act == "settings":
            yield u.view(t, "Settings")
        elif act == "docs":
            yield u.view(t, "Docs", article=rng.choice(ARTICLES))
        elif act == "search":
            yield u.track(t, "Search Performed", feature="docs_search", query="error")
        elif act == "support":
            yield u.track(t, "Support Ticket Created", topic=rng.choice(("auth", "billing", "sdk")))
        else:
            yield u.view(t, rng.choice(("Console", "Projects", "API Keys", "Changelog")))
