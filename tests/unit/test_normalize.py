"""The normalization helpers: event-name mapping, event time, country, device, dedup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firstmile.operators.dedup import RecentIds
from firstmile.operators.device import device_class
from firstmile.operators.errors import MappingError
from firstmile.operators.eventtime import parse_event_time
from firstmile.operators.geo import country_code, country_from_locale
from firstmile.operators.kinds import EventKinds
from firstmile.operators.resources import CONFIG_DIR

NOW = datetime(2026, 3, 10, tzinfo=UTC)


def test_shipped_mapping_covers_segment_semantic_and_onboarding_names() -> None:
    kinds = EventKinds.load(CONFIG_DIR / "events.toml")
    expected = {
        "Signed Up": "signup",
        "Application Opened": "session_start",
        "Order Completed": "purchase",
        "Invite Sent": "feature_used",
        "Onboarding Step Viewed": "onboarding_step_viewed",
        "Onboarding Step Completed": "onboarding_step_completed",
        "Onboarding Step Skipped": "onboarding_step_skipped",
        "Onboarding Completed": "onboarding_completed",
        "Feature Used": "feature_used",
        "Support Ticket Created": "support_ticket",
        "Products Searched": "feature_used",
        "Checkout Started": "purchase",
    }
    for name, kind in expected.items():
        assert kinds.kind_of("track", name) == kind, name
        assert kinds.kind_of("track", name.upper()) == kind, name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[kinds]\nsignup = ['A']\nsignin = ['B']\n", "unknown kind 'signin'"),
        ("[kinds]\nsignup = ['A']\npurchase = ['a']\n", "both kinds.signup and kinds.purchase"),
        ("[kinds]\nsignup = 'A'\n", "kinds.signup must be a list"),
        ("[kinds]\nsignup = ['']\n", "kinds.signup has an empty"),
        ("[kinds]\nidentify = ['Who']\n", "unknown kind 'identify'"),
        ("[names]\n", "unknown section"),
        ("[kinds\n", "events mapping"),
    ],
)
def test_bad_mapping_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "events.toml"
    path.write_text(text)
    with pytest.raises(MappingError, match=message.replace("[", r"\[")):
        EventKinds.load(path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-02T10:00:00Z", datetime(2026, 3, 2, 10, tzinfo=UTC)),
        ("2026-03-02T10:00:00.123456+00:00", datetime(2026, 3, 2, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-03-02T12:00:00+02:00", datetime(2026, 3, 2, 10, tzinfo=UTC)),
        ("2026-03-02T10:00:00", datetime(2026, 3, 2, 10, tzinfo=UTC)),
        (1772445600000, datetime(2026, 3, 2, 10, tzinfo=UTC)),
        (1772445600000.0, datetime(2026, 3, 2, 10, tzinfo=UTC)),
    ],
)
def test_event_time_parses(value: object, expected: datetime) -> None:
    assert parse_event_time(value, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "soon",
        "2026-13-01T00:00:00Z",
        True,
        None,
        [1],
        float("inf"),
        1e300,
        10,
        "1999-01-01T00:00:00Z",
    ],
)
def test_event_time_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_event_time(value, now=NOW)


def test_future_skew_limit() -> None:
    ahead = (NOW + timedelta(hours=30)).isoformat()
    with pytest.raises(ValueError, match="future"):
        parse_event_time(ahead, now=NOW)
    assert parse_event_time(ahead, now=NOW, max_future=timedelta(days=2))


@pytest.mark.parametrize(
    ("text", "code"),
    [("US", "US"), ("us", "US"), ("Germany", "DE"), ("DEU", "DE"), ("", None), ("Atlantis", None)],
)
def test_country_code(text: str, code: str | None) -> None:
    assert country_code(text) == code


@pytest.mark.parametrize(
    ("locale", "code"),
    [("en-US", "US"), ("en_GB.UTF-8", "GB"), ("zh-Hant-TW", "TW"), ("de", None), ("xx-ZZ", None)],
)
def test_country_from_locale(locale: str, code: str | None) -> None:
    assert country_from_locale(locale) == code


@pytest.mark.parametrize(
    ("device_type", "user_agent", "expected"),
    [
        ("ios", None, "mobile"),
        ("Android", None, "mobile"),
        ("tablet", None, "tablet"),
        (
            None,
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
            "desktop",
        ),
        (
            None,
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 "
            "Mobile Safari/537.36",
            "mobile",
        ),
        (
            None,
            "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 Chrome/126.0 "
            "Safari/537.36",
            "tablet",
        ),
        (None, "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
        ("unknown-thing", None, None),
        (None, None, None),
    ],
)
def test_device_class(
    device_type: str | None, user_agent: str | None, expected: str | None
) -> None:
    assert device_class(device_type, user_agent) == expected


def test_recent_ids_are_bounded_in_count_and_time() -> None:
    seen = RecentIds(capacity=3, window=timedelta(minutes=10))
    start = datetime(2026, 3, 2, tzinfo=UTC)
    for i in range(10):
        assert seen.add(f"m{i}", start + timedelta(seconds=i))
    assert len(seen) == 3
    assert not seen.add("m9", start + timedelta(seconds=20))
    assert seen.add("m0", start + timedelta(seconds=21))  # evicted by the cap: accepted again
    assert seen.add("late", start + timedelta(hours=1))
    assert len(seen) == 1  # everything older than the window is gone
