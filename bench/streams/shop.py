"""E-commerce store: few long browsing sessions, carts, coupons, orders, wishlists.

Mixed devices (desktop, mobile web, apps), lunch and evening peaks, busier weekends.
"""

from __future__ import annotations

import math
from typing import ClassVar

from bench.streams.base import Behaviour, Events, Onboarding, Stream, User

CATEGORIES = ("shoes", "dresses", "jackets", "home", "beauty", "toys", "electronics", "sport")
COUPONS = ("SPRING10", "WELCOME15", "FLASH20", "FREESHIP")
# fmt: off
SPEC = (
    Behaviour("bargain_hunter", 0.22, rate=0.9, decay_days=30.0, length=18.0, gap_s=40.0,
              life_h=150.0, p_stay=0.25, p_break=0.12, onboarding=(0.3, 0.4, 0.1),
              mix={"search": 3, "list": 3, "product": 5, "filter": 2, "promo": 3, "coupon": 2,
                   "cart_add": 1.5, "checkout": 0.6, "wishlist": 1}),
    Behaviour("loyal_buyer", 0.15, rate=0.6, decay_days=math.inf, length=10.0, gap_s=35.0,
              life_h=400.0, p_stay=0.7, p_break=0.05, onboarding=(0.7, 0.1, 0.05),
              mix={"product": 3, "cart_add": 3, "checkout": 2, "review": 1, "search": 1,
                   "reorder": 1}),
    Behaviour("window_browser", 0.25, rate=0.7, decay_days=8.0, length=22.0, gap_s=50.0,
              life_h=80.0, p_stay=0.15, p_break=0.1, onboarding=(0.2, 0.4, 0.2),
              mix={"list": 4, "product": 7, "wishlist": 2, "search": 2, "share": 0.5,
                   "cart_add": 0.4}),
    Behaviour("gift_shopper", 0.15, rate=2.0, decay_days=0.5, length=16.0, gap_s=40.0, life_h=20.0,
              p_stay=0.0, p_break=0.15, onboarding=(0.05, 0.7, 0.1),
              mix={"search": 3, "product": 4, "gift_guide": 2, "cart_add": 2, "checkout": 1.5}),
    Behaviour("cart_abandoner", 0.23, rate=0.8, decay_days=6.0, length=14.0, gap_s=45.0,
              life_h=90.0, p_stay=0.1, p_break=0.15, onboarding=(0.25, 0.35, 0.2),
              mix={"product": 4, "cart_add": 3, "cart_view": 2, "abandon": 1.5, "email": 1,
                   "coupon": 0.6, "support": 0.2}),
)
# fmt: on


class ShopStream(Stream):
    name: ClassVar[str] = "shop"
    spec = SPEC
    fitting: ClassVar = {  # bargain hunters answer offers; browsers a guide; abandoners a nudge
        "bargain_hunter": frozenset({"retention_offer"}),
        "loyal_buyer": frozenset({"short_tour"}),
        "window_browser": frozenset({"guided_walkthrough"}),
        "gift_shopper": frozenset({"short_tour"}),
        "cart_abandoner": frozenset({"re_engagement"}),
    }
    onboarding = Onboarding(
        ("style_quiz", "pick_sizes", "newsletter_opt_in"),
        viewed="Onboarding Step Viewed",
        completed="Onboarding Step Completed",
        skipped="Onboarding Step Skipped",
        done="Onboarding Completed",
    )
    device_mix: ClassVar = {"desktop": 0.45, "mweb": 0.33, "ios": 0.12, "android": 0.10}
    second_device = 0.3

    def activity(self, hour: float, weekday: int) -> float:
        if 19 <= hour < 23:
            level = 1.0
        elif 12 <= hour < 14:
            level = 0.7
        elif 9 <= hour < 19:
            level = 0.45
        elif 7 <= hour < 9 or hour >= 23:
            level = 0.25
        else:
            level = 0.04
        return level * (1.0 if weekday >= 5 else 0.8)

    def setup(self, u: User) -> None:
        rng = u.rng
        # Session length: per-user luck, and engaged users do more per session.
        u.plan["len"] = rng.gammavariate(3.0, 1 / 3) * u.engagement**0.4
        u.plan["likes"] = rng.sample(CATEGORIES, 2)
        u.plan["budget"] = 60.0 * rng.lognormvariate(0.0, 0.6)
        u.plan["cart"] = []
        u.plan["orders"] = 0

    def _start(self, u: User, t: float) -> Events:
        assert u.device is not None
        app = u.device.kind in ("ios", "android")
        yield u.track(
            t,
            "Application Opened" if app else "Session Started",
            referrer=u.rng.choice(("direct", "google", "instagram", "email")),
        )

    def visit(self, u: User) -> Events:
        yield from self._start(u, u.after(5.0))
        yield u.view(u.after(10.0), "Home")
        for _ in range(u.rng.randint(1, 5)):
            yield from self._product(u, u.rng.choice(u.plan["likes"]))

    def sign_up(self, u: User) -> Events:
        rng, name = u.rng, u.behaviour.name
        traits: dict[str, object] = {
            "role": "customer",
            "company_size": 1,
            "plan": rng.choice(("standard", "standard", "member_plus")),
            "gender": rng.choice(("f", "m", "x")),
            "favorite_category": u.plan["likes"][0],
        }
        for key in ("role", "company_size", "plan", "gender"):
            if rng.random() < 0.2:
                del traits[key]
        if name == "gift_shopper":  # signs up because checkout asks for it
            yield u.view(u.after(20.0), "Checkout Login")
            yield from u.signup("Account Created", traits, method="checkout")
        else:
            yield from self._start(u, u.after(20.0))
            yield u.view(u.after(15.0), "Register")
            yield from u.signup("Signup Completed", traits, method=rng.choice(("email", "google")))

    def session(self, u: User, n: int) -> Events:
        if n > 0:
            yield from self._start(u, u.now)
            yield u.view(u.after(5.0), "Home")
        if n < 4:
            yield from self.onboard(u)
        for _ in range(u.count(u.behaviour.length * u.plan["len"])):
            yield from self._act(u, u.action())

    def _product(self, u: User, category: str) -> Events:
        rng = u.rng
        pid = f"{category[:3]}-{rng.randrange(500):03d}"
        price = round(u.plan["budget"] * rng.lognormvariate(0.0, 0.5), 2)
        u.plan["last"] = (pid, price, category)
        yield u.track(
            u.after(u.behaviour.gap_s),
            "Product Viewed",
            feature="product",
            product_id=pid,
            category=category,
            price=price,
        )

    def _act(self, u: User, act: str) -> Events:
        rng, gap, plan = u.rng, u.behaviour.gap_s, u.plan
        category = rng.choice(plan["likes"]) if rng.random() < 0.7 else rng.choice(CATEGORIES)
        if act in ("product", "gift_guide", "reorder"):
            if act == "gift_guide":
                yield u.view(u.after(gap), "Gift Guide", occasion=rng.choice(("birthday", "mom")))
            yield from self._product(u, category)
        elif act == "list":
            yield u.track(u.after(gap), "Product List Viewed", feature="browse", category=category)
        elif act == "search":
            yield u.track(u.after(gap), "Products Searched", feature="search", query=category)
        elif act == "filter":
            yield u.track(u.after(gap), "Filter Applied", sort="price_asc", max_price=30)  # custom
        elif act == "promo":
            yield u.view(u.after(gap), "Sale", campaign=rng.choice(COUPONS))
        elif act == "wishlist" and "last" in plan:
            yield u.track(
                u.after(gap),
                "Product Added to Wishlist",
                feature="wishlist",
                product_id=plan["last"][0],
            )
        elif act == "share" and "last" in plan:
            yield u.track(
                u.after(gap), "Product Shared", feature="share", product_id=plan["last"][0]
            )
        elif act == "review" and plan["orders"]:
            yield u.track(
                u.after(gap), "Product Reviewed", feature="reviews", rating=rng.choice((4, 5, 5, 3))
            )
        elif act == "cart_add":
            if "last" not in plan:
                yield from self._product(u, category)
            pid, price, _ = plan["last"]
            plan["cart"].append(price)
            yield u.track(
                u.after(gap),
                "Product Added",
                feature="cart",
                product_id=pid,
                price=price,
                quantity=1,
            )
        elif act == "cart_view":
            yield u.track(u.after(gap), "Cart Viewed", feature="cart", items=len(plan["cart"]))
        elif act == "coupon":
            code = rng.choice(COUPONS)
            yield u.track(u.after(gap), "Coupon Entered", coupon=code)  # custom
            if rng.random() < 0.6:
                plan["coupon"] = code
                yield u.track(u.after(5.0), "Coupon Applied", feature="coupon", coupon=code)
        elif act in ("checkout", "abandon") and plan["cart"]:
            total = round(sum(plan["cart"]), 2)
            yield u.track(u.after(gap), "Checkout Started", value=total, currency="USD")
            if act == "abandon" or rng.random() < 0.15:
                return  # leaves the cart behind
            yield u.track(u.after(60.0), "Payment Info Entered", payment=rng.choice(("card", "pp")))
            plan["orders"] += 1
            yield u.track(
                u.after(20.0),
                "Order Completed",
                order_id=f"{u.id}-{plan['orders']}",
                revenue=total,
                currency="USD",
                products=len(plan["cart"]),
                coupon=plan.pop("coupon", None),
                gift_wrap=u.behaviour.name == "gift_shopper",
            )
            plan["cart"] = []
        elif act == "email":
            yield u.track(
                u.after(gap), "Email Link Clicked", feature="email", campaign="cart_reminder"
            )
        elif act == "support":
            yield u.track(u.after(gap), "Ticket Created", topic=rng.choice(("shipping", "sizes")))
        else:
            yield u.view(u.after(gap), "Category", category=category)
