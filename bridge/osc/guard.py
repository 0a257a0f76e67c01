"""Who may talk to the OSC server, and how much.

UDP carries no sender authentication, so the server stays on loopback unless an explicit allowlist of
client addresses is configured; a shared token can be required on top, and a per-client rate limit keeps
a runaway patch from queueing thousands of paid jobs.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from bridge.common.errors import ConfigError
from bridge.common.loopback import is_loopback_host

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenProblem(Exception):
    """The shared token is missing or wrong (the message never contains it)."""


class ClientGuard:
    """Allowlist of client addresses (IPs or networks like 192.168.1.0/24) and the optional token."""

    def __init__(self, host: str, allow_clients: Sequence[str], token: str | None) -> None:
        if not is_loopback_host(host) and not allow_clients:
            raise ConfigError(
                f"The OSC server is set to listen on {host}, beyond this computer, but no client "
                "addresses are allowed.",
                hint="List the addresses of the machines that may send requests (osc allow_clients, "
                "e.g. 192.168.1.20), or listen on 127.0.0.1 only.",
            )
        if not is_loopback_host(host) and not token:  # the config template says it is required there
            raise ConfigError(
                f"The OSC server is set to listen on {host}, beyond this computer, but no shared token is set.",
                hint="Set a token (osc token in the sam-bridge config, e.g. token: a-long-random-word) and send "
                "it as the first argument of every message, or listen on 127.0.0.1 only.",
            )
        self._networks: list[IpNetwork] = []
        for entry in allow_clients:
            try:
                self._networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(
                    f"{entry!r} in the OSC client allowlist is not an IP address.",
                    hint="Use addresses like 192.168.1.20 or networks like 192.168.1.0/24.") from exc
        self._token = token.encode() if token else None

    @property
    def allowlist_active(self) -> bool:
        return bool(self._networks)

    @property
    def token_required(self) -> bool:
        return self._token is not None

    def admits(self, client_host: str) -> bool:
        if not self._networks:
            return True  # loopback binding without allowlist: every local program may ask
        try:
            address = ipaddress.ip_address(client_host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)

    def strip_token(self, args: list[Any]) -> list[Any]:
        """The arguments after the token; raises TokenProblem when it is required and not right."""
        if self._token is None:
            return args
        if not args or not isinstance(args[0], str):
            raise TokenProblem("this bridge needs the shared token as the first argument of every message")
        if not hmac.compare_digest(args[0].encode("utf-8", "replace"), self._token):
            raise TokenProblem("the shared token (first argument) is wrong")
        return args[1:]


def host_key(client_host: str) -> str:
    """The key a client is counted under: its host, not its port; every loopback address is one host
    (127.0.0.2 is the same machine as 127.0.0.1), an IPv4-mapped IPv6 address is its IPv4 address, and an
    IPv6 host is its /64 (one machine may pick any address in it)."""
    try:
        address = ipaddress.ip_address(client_host.split("%", 1)[0])
    except ValueError:
        return client_host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class RateLimiter:
    """At most `limit` events per key within a sliding `window` of seconds. Thread-safe; the table holds
    at most `max_keys` keys (the least recently counted go first), and only looking never adds one."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        if limit < 1 or window <= 0:
            raise ConfigError(f"A rate limit of {limit} per {window} s is not usable.",
                              hint="Use at least 1 request per a positive number of seconds.")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._events)

    def allows(self, key: str) -> bool:
        """Would one more event for `key` be within the limit? (Does not count it.)"""
        with self._lock:
            return len(self._recent(key, self._clock())) < self.limit

    def record(self, key: str) -> None:
        with self._lock:
            now = self._clock()
            self._count(key, self._recent(key, now), now)

    def try_acquire(self, key: str) -> bool:
        """Count one event for `key` if it is within the limit."""
        with self._lock:
            now = self._clock()
            recent = self._recent(key, now)
            if len(recent) >= self.limit:
                return False
            self._count(key, recent, now)
            return True

    def seconds_until_free(self, key: str) -> float:
        with self._lock:
            now = self._clock()
            recent = self._recent(key, now)
            if len(recent) < self.limit:
                return 0.0
            return max(0.0, recent[0] + self.window - now)

    def _recent(self, key: str, now: float) -> deque[float]:
        """The key's events within the window (a fresh, untracked deque for an unknown key)."""
        events = self._events.get(key)
        if events is None:
            return deque()
        while events and events[0] <= now - self.window:
            events.popleft()
        return events

    def _count(self, key: str, recent: deque[float], now: float) -> None:
        recent.append(now)
        self._events[key] = recent
        self._events.move_to_end(key)
        while len(self._events) > self._max_keys:
            self._events.popitem(last=False)


class ThrottledLog:
    """Log lines about misbehaving clients, at most `limit` per client per `window`: a flood of junk
    must not become a flood of log lines. Suppressed lines are counted and mentioned in the next one."""

    def __init__(self, logger: logging.Logger, limit: int = 10, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._limiter = RateLimiter(limit, window, clock)
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, client: str, message: str, *args: object) -> None:
        if not self._limiter.try_acquire(client):
            with self._lock:
                if len(self._suppressed) > 1024:
                    self._suppressed.clear()
                self._suppressed[client] = self._suppressed.get(client, 0) + 1
            return
        with self._lock:
            skipped = self._suppressed.pop(client, 0)
        if skipped:
            message += " (%d similar lines from this client suppressed)"
            args = (*args, skipped)
        self._logger.warning(message, *args)
