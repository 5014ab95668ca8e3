"""B2B SaaS with workspaces: admins set up and invite, teammates follow, evaluators compare.

Desktop web mostly, office hours on weekdays, quiet weekends; few long sessions.
"""

from __future__ import annotations

from typing import ClassVar

from bench.streams.base import Behaviour, Events, Onboarding, Stream, User

FEATURES = ("reports", "dashboards", "integrations", "alerts", "export", "api", "sso", "audit_log")
INTEGRATIONS = ("slack", "salesforce", "hubspot", "jira", "google_drive", "snowflake")
PAGES = ("Dashboard", "Reports", "Projects", "Team", "Integrations", "Settings")
COMPETITORS = ("Metricly", "Chartbase", "Panelkit")
ROLES = {
    "champion_admin": ("admin", "owner", "ops_lead"),
    "evaluator": ("manager", "director", "it", "procurement"),
    "invited_teammate": ("analyst", "member", "sales", "ops", "engineer"),
    "solo_power_user": ("founder", "analyst", "engineer", "consultant"),
    "tourist": ("student", "member", "marketing", "other"),
}
# fmt: off
SPEC = (
    Behaviour("champion_admin", 0.20, rate=2.0, decay_days=40.0, length=11.0, gap_s=50.0,
              life_h=90.0, p_stay=0.55, p_break=0.03, onboarding=(0.75, 0.0, 0.05),
              mix={"invite": 3, "integration": 2, "report": 3, "dashboard": 2, "settings": 1,
                   "feature_view": 1, "billing": 0.6, "page": 3}),
    Behaviour("evaluator", 0.18, rate=3.0, decay_days=3.0, length=12.0, gap_s=40.0, life_h=40.0,
              p_stay=0.05, p_break=0.15, onboarding=(0.15, 0.35, 0.3),
              mix={"pricing": 3, "compare": 3, "feature_view": 4, "docs": 2, "report": 0.5,
                   "page": 2, "support": 0.5}),
    Behaviour("invited_teammate", 0.27, rate=1.3, decay_days=20.0, length=8.0, gap_s=60.0,
              life_h=90.0, p_stay=0.35, p_break=0.06, onboarding=(0.3, 0.45, 0.1),
              mix={"report_view": 4, "comment": 2, "page": 3, "report": 1, "feature_view": 1}),
    Behaviour("solo_power_user", 0.15, rate=2.2, decay_days=60.0, length=16.0, gap_s=30.0,
              life_h=110.0, p_stay=0.45, p_break=0.04, onboarding=(0.8, 0.1, 0.0),
              mix={"report": 4, "export": 3, "api": 2, "dashboard": 2, "integration": 1, "page": 2,
                   "feature_view": 1}),
    Behaviour("tourist", 0.20, rate=1.0, decay_days=2.0, length=5.0, gap_s=45.0, life_h=8.0,
              p_stay=0.0, p_break=0.15, onboarding=(0.05, 0.35, 0.45),
              mix={"page": 5, "pricing": 1, "feature_view": 2, "docs": 1}),
)
# fmt: on


class B2BStream(Stream):
    name: ClassVar[str] = "b2b"
    spec = SPEC
    fitting: ClassVar = {  # admins set up with a guide; evaluators, power users: short
        "champion_admin": frozenset({"guided_walkthrough"}),
        "evaluator": frozenset({"short_tour"}),
        "invited_teammate": frozenset({"standard_tour"}),
        "solo_power_user": frozenset({"short_tour"}),
        "tourist": frozenset({"re_engagement"}),
    }
    onboarding = Onboarding(
        ("create_workspace", "invite_team", "connect_integration", "build_report", "set_alerts"),
        viewed="Onboarding Step Viewed",
        completed="Checklist Item Completed",
        skipped="Onboarding Step Skipped",
        done="Checklist Completed",
    )
    device_mix: ClassVar = {"desktop": 0.88, "mweb": 0.07, "ios": 0.03, "android": 0.02}
    second_device = 0.12

    def activity(self, hour: float, weekday: int) -> float:
        office = 1.0 if 8.5 <= hour < 18 else 0.4 if 7 <= hour < 22 else 0.04
        return office * (0.22 if weekday >= 5 else 1.0)

    def setup(self, u: User) -> None:
        rng, name = u.rng, u.behaviour.name
        # Session length: per-user luck, and engaged users do more per session.
        u.plan["len"] = rng.gammavariate(4.0, 0.25) * u.engagement**0.4
        u.plan["workspace"] = f"ws-{u.index:06d}"
        if name == "invited_teammate":
            # Joins the workspace of the nearest earlier champion admin (the inviter).
            for j in range(u.index - 1, max(-1, u.index - 60), -1):
                if self._head(self._rng(j))[0].name == "champion_admin":
                    u.plan.update(workspace=f"ws-{j:06d}", invited_by=f"{self.name}-{j:06d}")
                    break
            u.skip_steps = frozenset({"create_workspace"})
        elif name == "solo_power_user":
            u.skip_steps = frozenset({"invite_team"})
        u.plan["invites"] = rng.randint(2, 7) if name == "champion_admin" else rng.randint(0, 1)
        size = {"champion_admin": 80, "evaluator": 400, "solo_power_user": 4}.get(name, 50)
        u.plan["size"] = max(1, round(size * rng.lognormvariate(0.0, 1.0)))

    def visit(self, u: User) -> Events:
        yield from self.browse(u, ("Pricing", "Features", "Customers", "Blog"), 40.0)

    def sign_up(self, u: User) -> Events:
        rng, name = u.rng, u.behaviour.name
        traits: dict[str, object] = {
            "role": rng.choice(ROLES[name]),
            "company_size": u.plan["size"],
            "plan": "team"
            if name == "invited_teammate"
            else rng.choice(("trial", "trial", "free")),
            "workspace_id": u.plan["workspace"],
            "industry": rng.choice(("software", "finance", "retail", "health", "education")),
        }
        for key in ("role", "company_size", "plan", "industry"):
            if rng.random() < 0.1:  # forms are not always filled in
                del traits[key]
        yield u.view(u.after(20.0), "Sign Up", path="/signup")
        if "invited_by" in u.plan:
            yield from u.signup(
                "Account Created", traits, method="invite", invited_by=u.plan["invited_by"]
            )
        else:
            event = rng.choice(("Trial Started", "Signed Up"))
            yield from u.signup(event, traits, method=rng.choice(("email", "google", "sso")))

    def session(self, u: User, n: int) -> Events:
        rng = u.rng
        if n > 0:
            yield u.track(u.now, "Signed In", method=rng.choice(("password", "google", "sso")))
        yield u.view(u.after(4.0), "Dashboard", workspace_id=u.plan["workspace"])
        if n < 8:
            yield from self.onboard(u)
        for _ in range(u.count(u.behaviour.length * u.plan["len"])):
            yield from self._act(u, u.action())

    def _act(self, u: User, act: str) -> Events:
        rng, gap, ws = u.rng, u.behaviour.gap_s, u.plan["workspace"]
        t = u.after(gap)
        if act == "invite" and u.plan["invites"] > 0:
            u.plan["invites"] -= 1
            yield u.view(t, "Team")
            yield u.track(
                u.after(20.0),
                "Invite Sent",
                feature="invite",
                workspace_id=ws,
                invitee_role=rng.choice(ROLES["invited_teammate"]),
            )
        elif act == "integration":
            yield u.view(t, "Integrations")
            yield u.track(
                u.after(60.0),
                "Integration Connected",
                feature="integrations",
                integration=rng.choice(INTEGRATIONS),
                workspace_id=ws,
            )
        elif act in ("report", "dashboard"):
            event = "Report Created" if act == "report" else "Dashboard Created"
            yield u.track(t, event, feature=f"{act}s", workspace_id=ws, widgets=rng.randint(1, 9))
        elif act == "report_view":
            yield u.view(t, "Report", report_id=f"r{rng.randrange(40)}", workspace_id=ws)
            yield u.track(u.after(gap), "Report Viewed", shared=rng.random() < 0.5)  # custom
        elif act == "comment":
            yield u.track(t, "Feature Used", feature="comments", workspace_id=ws)
        elif act == "export":
            yield u.track(t, "Feature Used", feature="export", format=rng.choice(("csv", "pdf")))
            yield u.track(u.after(5.0), "Report Exported", rows=rng.randint(10, 50_000))  # custom
        elif act == "api":
            yield u.view(t, "API Keys")
            yield u.track(u.after(30.0), "Feature Used", feature="api", calls=rng.randint(1, 500))
        elif act == "feature_view":
            yield u.track(t, "Feature Viewed", feature=rng.choice(FEATURES))
        elif act in ("pricing", "billing"):
            yield u.view(t, "Pricing" if act == "pricing" else "Billing")
            if act == "billing" and not u.plan.get("paid") and rng.random() < 0.25:
                u.plan["paid"] = True
                yield u.track(
                    u.after(90.0),
                    "Subscription Started",
                    workspace_id=ws,
                    plan=rng.choice(("team", "business")),
                    seats=u.plan["size"] // 5 + 1,
                )
        elif act == "compare":
            yield u.view(t, "Compare", competitor=rng.choice(COMPETITORS))
            yield u.track(u.after(30.0), "Plan Compared", plans=2)  # custom
        elif act == "docs":
            yield u.view(t, "Docs", article=rng.choice(("getting-started", "sso", "api", "limits")))
        elif act == "support":
            yield u.track(t, "Support Chat Started", topic=rng.choice(("pricing", "security")))
        elif act == "settings":
            yield u.view(t, "Settings")
        else:
            yield u.view(t, rng.choice(PAGES), workspace_id=ws)
