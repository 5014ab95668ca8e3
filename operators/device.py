"""Device class (desktop, mobile, tablet, tv, bot, other) from context.device or the user agent.

>>> device_class("ios", None), device_class(None, "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)")
('mobile', 'tablet')
>>> device_class(None, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36")
'desktop'
"""

from __future__ import annotations

from functools import lru_cache

import ua_parser

DEVICE_CLASSES = ("desktop", "mobile", "tablet", "tv", "bot", "other")

# Segment's context.device.type holds a platform ("ios", "android") or a class.
_DEVICE_TYPES = {
    "ios": "mobile",
    "android": "mobile",
    "mobile": "mobile",
    "phone": "mobile",
    "smartphone": "mobile",
    "tablet": "tablet",
    "ipad": "tablet",
    "desktop": "desktop",
    "web": "desktop",
    "macos": "desktop",
    "windows": "desktop",
    "linux": "desktop",
    "tv": "tv",
    "tvos": "tv",
    "smarttv": "tv",
    "bot": "bot",
}
_MOBILE_OS = {"ios", "android", "windows phone", "blackberry os", "kaios", "harmonyos"}
_DESKTOP_OS = {
    "windows",
    "mac os x",
    "macos",
    "linux",
    "ubuntu",
    "chrome os",
    "fedora",
    "debian",
    "freebsd",
}
_TABLET_HINTS = ("ipad", "tablet", "kindle", "galaxy tab", "nexus 7", "nexus 9", "nexus 10")


def device_class(device_type: str | None, user_agent: str | None) -> str | None:
    """Prefer the SDK's own device type; fall back to parsing the user agent."""
    if device_type:
        known = _DEVICE_TYPES.get(device_type.strip().lower())
        if known:
            return known
    if user_agent:
        return _from_user_agent(user_agent[:1024])
    return None


@lru_cache(maxsize=8192)
def _from_user_agent(user_agent: str) -> str:
    parsed = ua_parser.parse(user_agent)
    device = parsed.device.family.lower() if parsed.device else "other"
    os_family = parsed.os.family.lower() if parsed.os else "other"
    if device == "spider":
        return "bot"
    if any(hint in device for hint in _TABLET_HINTS):
        return "tablet"
    if os_family == "android" and "mobile" not in user_agent.lower():
        return "tablet"  # Android tablets' browsers leave out "Mobile"
    if os_family in _MOBILE_OS:
        return "mobile"
    if "tv" in device or "smart-tv" in user_agent.lower():
        return "tv"
    if os_family in _DESKTOP_OS:
        return "desktop"
    return "other"
