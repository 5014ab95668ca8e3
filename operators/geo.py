"""Country of an event as an ISO-3166 alpha-2 code, from ``context.location`` or the locale.

>>> country_code("United Kingdom"), country_code("se"), country_code("Narnia")
('GB', 'SE', None)
>>> country_from_locale("pt_BR"), country_from_locale("en-US"), country_from_locale("fr")
('BR', 'US', None)
"""

from __future__ import annotations

from functools import lru_cache

import pycountry


@lru_cache(maxsize=4096)
def country_code(text: str) -> str | None:
    """ISO-3166 alpha-2 for a code or a country name; ``None`` when it is not a country."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    try:
        country = pycountry.countries.lookup(text)
    except LookupError:
        return None
    return str(country.alpha_2)


@lru_cache(maxsize=1024)
def country_from_locale(locale: str) -> str | None:
    """The region of a BCP-47 / POSIX locale (``en-US``, ``pt_BR``, ``zh-Hant-TW``)."""
    parts = locale.replace("_", "-").split(".")[0].split("-")
    for part in parts[1:]:
        if len(part) == 2 and part.isalpha():
            return country_code(part)
    return None
