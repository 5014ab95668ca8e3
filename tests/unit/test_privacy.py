"""Privacy on the pure steps: pseudonyms, dropping, consent, IP to geo."""

from __future__ import annotations

import orjson
import pytest

from firstmile.operators.decode import Decoder
from firstmile.operators.errors import ConfigError
from firstmile.operators.events import Event
from firstmile.operators.kinds import EventKinds
from firstmile.operators.privacy import Privacy, PrivacyPolicy
from firstmile.operators.resources import CONFIG_DIR
from tests.helpers import SHARED

GEO_DB = SHARED / "geo" / "GeoLite2-City-Test.mmdb"


def decoder(**policy: object) -> Decoder:
    return Decoder(
        EventKinds.load(CONFIG_DIR / "events.toml"), privacy=Privacy(PrivacyPolicy(**policy))
    )  # type: ignore[arg-type]


def raw(**fields: object) -> bytes:
    message = {"type": "identify", "userId": "u1", "timestamp": "2026-03-02T10:00:00Z", **fields}
    return orjson.dumps(message)


def test_pii_is_pseudonymized_with_the_key_id_and_never_kept_raw() -> None:
    decode = decoder(key=b"secret", key_id="k7")
    event = decode(
        raw(
            traits={"email": "Ann@Example.com", "role": "admin", "address": {"city": "Oslo"}},
            properties={"form": {"phone": "+47 1234"}, "items": [{"name": "Ann"}]},
            context={"ip": "81.2.69.142"},
        )
    )
    assert isinstance(event, Event)
    text = orjson.dumps([event.traits, event.properties]).decode()
    for secret in ("Ann@Example.com", "ann@example.com", "Oslo", "+47 1234", "81.2.69.142"):
        assert secret not in text
    assert event.traits["role"] == "admin"
    assert event.traits["email"].startswith("k7:") and len(event.traits["email"]) == 3 + 32
    assert event.properties["form"]["phone"].startswith("k7:")
    assert event.properties["items"][0]["name"].startswith("k7:")
    # The same value gives the same pseudonym; another key gives another one.
    again = decode(raw(traits={"email": "ann@example.com "}))
    assert isinstance(again, Event) and again.traits["email"] == event.traits["email"]
    other = decoder(key=b"rotated", key_id="k8")(raw(traits={"email": "ann@example.com"}))
    assert isinstance(other, Event) and other.traits["email"][3:] != event.traits["email"][3:]


def test_without_a_key_or_with_drop_pii_is_dropped() -> None:
    for decode in (decoder(), decoder(key=b"secret", action="drop")):
        event = decode(raw(traits={"email": "a@b.c", "Phone": "1", "role": "x"}))
        assert isinstance(event, Event) and event.traits == {"role": "x"}


def test_ip_becomes_country_and_region_then_is_gone() -> None:
    decode = decoder(geo_db=GEO_DB)
    cases = {
        "81.2.69.142": ("GB", "GB-ENG"),
        "89.160.20.115": ("SE", "SE-E"),
        "216.160.83.57": ("US", "US-WA"),
        "2001:218::1": ("JP", None),
        "10.0.0.1": (None, None),
        "not an ip": (None, None),
    }
    for ip, (country, region) in cases.items():
        event = decode(raw(context={"ip": ip}))
        assert isinstance(event, Event)
        assert (event.country, event.region) == (country, region), ip
    # An explicit location wins over the IP; the locale is the fallback.
    event = decode(raw(context={"ip": "81.2.69.142", "location": {"country": "France"}}))
    assert isinstance(event, Event) and (event.country, event.region) == ("FR", None)
    event = decoder()(raw(context={"ip": "81.2.69.142", "locale": "sv-SE"}))
    assert isinstance(event, Event) and event.country == "SE"  # no database: locale only


def test_a_bad_geo_database_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bogus = tmp_path / "bogus.mmdb"
    bogus.write_bytes(b"not a database")
    with pytest.raises(ConfigError, match=r"privacy\.geo_db"):
        Privacy(PrivacyPolicy(geo_db=bogus))
    with pytest.raises(ConfigError, match=r"privacy\.geo_db"):
        Privacy(PrivacyPolicy(geo_db=tmp_path / "missing.mmdb"))


def test_consent_gate() -> None:
    gate = Privacy(PrivacyPolicy(required_consent="personalization"))
    assert gate.allowed({"personalization": True, "ads": False})
    assert not gate.allowed({"personalization": False})
    assert gate.allowed({"ads": False}) and gate.allowed(None)  # not stated: the default
    strict = Privacy(PrivacyPolicy(consent_default=False))
    assert not strict.allowed(None) and not strict.allowed({"ads": True})
    assert Privacy(PrivacyPolicy(required_consent=None)).allowed({"personalization": False})


@pytest.mark.parametrize(
    ("preferences", "allowed"),
    [
        ({"Personalization": False}, False),  # Segment's consent docs capitalize categories
        ({"PERSONALIZATION": True, "Advertising": False}, True),
        ({"personalization": "false"}, False),  # consent managers that send strings
        ({"Personalization": "yes"}, True),
        ({"personalization": True, "Personalization": False}, False),  # any denial wins
        ({"C0003": False, "Analytics": True}, True),  # OneTrust ids: not the category asked
    ],
)
def test_consent_categories_match_whatever_their_spelling(
    preferences: dict[str, object], allowed: bool
) -> None:
    assert (
        Privacy(PrivacyPolicy(required_consent="personalization")).allowed(preferences) is allowed
    )


def test_consent_by_onetrust_category_id() -> None:
    gate = Privacy(PrivacyPolicy(required_consent="C0003"))  # OneTrust's "functional" id
    assert not gate.allowed({"C0001": True, "c0003": False})
    assert gate.allowed({"C0003": True})


@pytest.mark.parametrize(
    "data",
    [
        {"emailAddress": "ann"},
        {"user_email": "ann"},
        {"Email-Address": "ann"},
        {"client_ip": "81.2.69.142"},
        {"firstName": "Ann"},
        {"contact": {"PhoneNumber": "n/a"}},
        {"cc": ["Ann.Example@Example.com"]},  # a value shaped like an email, in a list
        {"note": "ann@example.co.uk"},
        {"callback": "+44 (20) 7946-0958"},  # shaped like a phone number
        {"people": [{"email": "a@b.co"}]},
    ],
)
def test_pii_is_found_by_name_shape_and_value_shape(data: dict[str, object]) -> None:
    dropped = Privacy(PrivacyPolicy()).scrub(data)
    text = orjson.dumps(dropped).decode()
    assert not any(s in text for s in ("ann", "Ann", "81.2", "7946", "a@b"))
    hashed = Privacy(PrivacyPolicy(key=b"k", key_id="k1")).scrub(data)
    assert "k1:" in orjson.dumps(hashed).decode()  # pseudonyms keep the join key


def test_what_is_not_pii_stays() -> None:
    data = {
        "plan_name": "pro",  # "name" is a person's only as the whole field name
        "zip_code_length": 5,
        "feature": "dashboards",
        "when": "2026-03-02T10:00:00Z",
        "order": "2026-03-02",
        "ips": 3,
    }
    assert Privacy(PrivacyPolicy()).scrub(data) == data
