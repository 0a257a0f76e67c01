"""Whether a host or URL stays on this computer: the one test behind every "127.0.0.1 only" rule (the
local service's listen address, the OSC allowlist, where a real FAL_KEY may be sent)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False  # a host name: treat as beyond loopback, the safe side


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")
