"""Privacy before anything is kept: consent gate, PII pseudonymization, IP to geo.

Configured PII fields, at any depth of ``traits``, ``properties`` and ``context.traits``
(lists too), are replaced by a keyed HMAC-SHA256 pseudonym,
``<key id>:<32 hex>``, so the same value maps to the same pseudonym under one key and
keys can rotate; or dropped, when the action is ``drop`` or no key is configured. String
values are trimmed and lower-cased first, so ``Ann@X.com`` and ``ann@x.com`` agree. The
raw IP is looked up in a MaxMind database (country and region) and never stored.

Names match whatever their case and separators (``firstName`` is ``first_name``); the
words in ``WORDS`` also match inside longer names (``user_email``, ``emailAddress``,
``client_ip``), ``name`` only whole (``plan_name`` is not a person's). Whatever its
field, a string shaped like an email address or a phone number is PII too.

>>> p = Privacy(PrivacyPolicy(pii_fields=("email",), key=b"k", key_id="k1"))
>>> p.scrub({"email": "Ann@X.com"}) == p.scrub({"email": " ann@x.com"})
True
>>> p.scrub({"email": "ann@x.com"})["email"][:3]
'k1:'
>>> Privacy(PrivacyPolicy(pii_fields=("email",))).scrub({"user": {"Email": "a@b.c"}})
{'user': {}}
>>> Privacy().scrub({"emailAddress": "x", "plan_name": "pro", "cc": ["a@b.co", "ok"]})
{'plan_name': 'pro', 'cc': ['ok']}
>>> p.allowed({"personalization": False}), p.allowed(None)
(False, True)
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import maxminddb
import orjson

from firstmile.operators.errors import ConfigError

DEFAULT_PII_FIELDS = (
    "email",
    "phone",
    "name",
    "first_name",
    "last_name",
    "firstname",
    "lastname",
    "username",
    "address",
    "street",
    "ip",
    "birthday",
    "avatar",
    "full_name",
    "display_name",
)
#: Words that say PII wherever they stand in a field's name, when configured.
WORDS = frozenset({"email", "phone", "ip", "address", "street", "birthday", "avatar", "ssn"})
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+?[\d\s().-]{9,24}")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


@dataclass(frozen=True, slots=True)
class PrivacyPolicy:
    pii_fields: tuple[str, ...] = DEFAULT_PII_FIELDS
    action: Literal["hash", "drop"] = "hash"
    key: bytes | None = None  # HMAC key; without one, PII is dropped
    key_id: str = "k1"
    required_consent: str | None = "personalization"  # None: no gate
    consent_default: bool = True  # events that state no consent at all
    geo_db: Path | None = None


class Privacy:
    def __init__(self, policy: PrivacyPolicy = PrivacyPolicy()) -> None:
        self.policy = policy
        self._fields = frozenset(_normalized(name) for name in policy.pii_fields)
        self._words = WORDS & self._fields
        self._hash = policy.action == "hash" and bool(policy.key)
        self._geo: maxminddb.Reader | None = None
        if policy.geo_db is not None:
            try:
                self._geo = maxminddb.open_database(str(policy.geo_db))
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                raise ConfigError("privacy.geo_db", f"cannot open {policy.geo_db}: {exc}") from exc

    def allowed(self, consent: Mapping[str, Any] | None) -> bool:
        """Whether an event with this ``categoryPreferences`` may change decisions.

        Category names match whatever their case and separators ("Personalization",
        "personalization", "data_sharing" ~ "DataSharing"): consent managers spell them
        their own way. A stated preference is granted only by true (or "true"/"yes").
        """
        category = self.policy.required_consent
        if category is None:
            return True
        wanted = _category(category)
        stated = [v for k, v in (consent or {}).items() if _category(k) == wanted]
        if not stated:
            return self.policy.consent_default
        return all(_granted(value) for value in stated)

    def scrub(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` without PII: PII fields and values pseudonymized or dropped, at any depth."""
        clean: dict[str, Any] = {}
        for name, value in data.items():
            if self._is_pii_name(name):
                if self._hash and value is not None:
                    clean[name] = self.pseudonym(value)
                continue
            kept = self._scrub_value(value)
            if kept is not _DROPPED:
                clean[name] = kept
        return clean

    def _scrub_value(self, value: Any) -> Any:
        if isinstance(value, str):
            if _looks_personal(value):
                return self.pseudonym(value) if self._hash else _DROPPED
            return value
        if isinstance(value, dict):
            return self.scrub(value)
        if isinstance(value, list):
            items = (self._scrub_value(item) for item in value)
            return [item for item in items if item is not _DROPPED]
        return value

    @functools.lru_cache(maxsize=4096)  # noqa: B019  # field names repeat; one Privacy per run
    def _is_pii_name(self, name: str) -> bool:
        if _normalized(name) in self._fields:
            return True
        words = self._words
        return bool(words) and any(w.lower() in words for w in _WORD.findall(name))

    def pseudonym(self, value: object) -> str:
        assert self.policy.key is not None
        text = (
            value.strip().lower()
            if isinstance(value, str)
            else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        )
        digest = hmac.new(self.policy.key, text.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{self.policy.key_id}:{digest[:32]}"

    def geo(self, ip: object) -> tuple[str | None, str | None]:
        """(ISO country, ISO region) of ``ip`` from the MaxMind DB; (None, None) if unknown."""
        if self._geo is None or not isinstance(ip, str):
            return None, None
        try:
            ipaddress.ip_address(ip.strip())
            record = self._geo.get(ip.strip())
        except ValueError:
            return None, None
        if not isinstance(record, dict):
            return None, None
        found: dict[str, Any] = record
        country = (found.get("country") or {}).get("iso_code")
        regions = found.get("subdivisions") or [{}]
        region = regions[0].get("iso_code")
        return (
            country if isinstance(country, str) else None,
            f"{country}-{region}" if isinstance(country, str) and isinstance(region, str) else None,
        )


@functools.lru_cache(maxsize=4096)  # per event, the same few category names
def _category(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def _granted(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().casefold() in ("true", "yes", "1", "granted")
    return value is True


_DROPPED = object()


def _normalized(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def _looks_personal(text: str) -> bool:
    """An email address or a phone number (9 to 15 digits, in the usual separators)."""
    if "@" in text and _EMAIL.fullmatch(text.strip()):
        return True
    stripped = text.strip()
    if stripped[:1].isdigit() or stripped[:1] in "+(":
        return bool(_PHONE.fullmatch(stripped)) and 9 <= sum(c.isdigit() for c in stripped) <= 15
    return False
