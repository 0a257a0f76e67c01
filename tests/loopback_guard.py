"""The suite's network rule, enforced in its own process: every socket it connects or sends to, and every
name it looks up, is on 127.0.0.0/8 (or ::1, or a local socket file). Anything else raises at once, so a
test can never reach fal or any other host, by design or by mistake. (Subprocesses are the daemon and the
stand-in, started by the tests with 127.0.0.1 addresses.)"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: object) -> bool:
    """True for a loopback address or name, and for "any" (binding a server is no outgoing traffic)."""
    if host in (None, "", b""):
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    text = text.split("%", 1)[0]  # an IPv6 scope
    if text.lower() in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _checked(address: Any) -> None:
    if isinstance(address, tuple) and not is_loopback(address[0]):
        raise OSError(f"the tests talk only to 127.0.0.0/8: refused a connection to {address[0]!r}")


@contextmanager
def loopback_only() -> Iterator[None]:
    real = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto, socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        _checked(address)
        real[0](self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _checked(address)
        return real[1](self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        _checked(args[-1])
        return real[2](self, data, *args)  # type: ignore[arg-type]

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"the tests talk only to 127.0.0.0/8: refused to look up "
                                                     f"{host!r}")
        return real[3](host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
    socket.socket.sendto, socket.getaddrinfo = sendto, getaddrinfo  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto, socket.getaddrinfo = real  # type: ignore[method-assign,assignment]
