"""The suite cannot reach any host but this one: not fal, not a resolver (tests/loopback_guard.py)."""

from __future__ import annotations

import socket

import httpx
import pytest


@pytest.mark.parametrize("url", ["https://queue.fal.run/fal-ai/sam-audio", "https://rest.fal.ai/storage",
                                 "http://93.184.216.34/"])
def test_no_request_leaves_this_machine(url: str) -> None:
    with httpx.Client(timeout=2) as http, pytest.raises(httpx.TransportError, match=r"127\.0\.0\.0/8"):
        http.get(url)


def test_udp_goes_to_loopback_only() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError, match=r"127\.0\.0\.0/8"):
            sock.sendto(b"/sam/ping", ("10.0.0.1", 9010))
        sock.sendto(b"/sam/ping", ("127.0.0.1", 9))  # loopback: allowed (nothing listens, nothing breaks)
