"""Allowlist, token, rate limit and log throttling, with a hand-driven clock (no sleeping, no timing)."""

from __future__ import annotations

import logging

import pytest

from bridge.common.errors import ConfigError
from bridge.common.loopback import is_loopback_host
from bridge.osc.guard import ClientGuard, RateLimiter, ThrottledLog, TokenProblem, host_key


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("192.168.1.20", False), ("studio.local", False), ("::", False),
])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_without_an_allowlist_on_loopback_everyone_local_is_admitted() -> None:
    guard = ClientGuard("127.0.0.1", (), None)
    assert not guard.allowlist_active and guard.admits("127.0.0.1")


def test_an_allowlist_admits_listed_addresses_and_networks_only() -> None:
    guard = ClientGuard("0.0.0.0", ("192.168.1.20", "10.0.0.0/24"), "a-token")
    assert guard.allowlist_active
    assert guard.admits("192.168.1.20") and guard.admits("10.0.0.77") and guard.admits("::ffff:10.0.0.3")
    assert not guard.admits("192.168.1.21") and not guard.admits("10.0.1.1") and not guard.admits("nonsense")


def test_binding_beyond_loopback_without_an_allowlist_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"192\.168\.1\.5, beyond this computer"):
        ClientGuard("192.168.1.5", (), "token")


def test_the_token_is_stripped_when_right_and_refused_otherwise() -> None:
    guard = ClientGuard("127.0.0.1", (), "s3cret")
    assert guard.strip_token(["s3cret", "/a.wav", "piano"]) == ["/a.wav", "piano"]
    for args in ([], [42], ["S3CRET"], ["s3cre"], ["/a.wav", "s3cret"]):
        with pytest.raises(TokenProblem) as caught:
            guard.strip_token(list(args))
        assert "s3cret" not in str(caught.value)
    assert ClientGuard("127.0.0.1", (), None).strip_token(["x"]) == ["x"]


def test_the_rate_limit_is_a_sliding_window_per_client() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, 60.0, clock)
    assert [limiter.try_acquire("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.try_acquire("b")  # another client has its own allowance
    assert limiter.seconds_until_free("a") == 60.0
    clock.now += 30
    assert not limiter.allows("a") and limiter.seconds_until_free("a") == 30.0
    clock.now += 30
    assert limiter.allows("a") and limiter.seconds_until_free("a") == 0.0


def test_allows_does_not_count_and_record_does() -> None:
    limiter = RateLimiter(1, 10.0, FakeClock())
    assert limiter.allows("a") and limiter.allows("a")
    limiter.record("a")
    assert not limiter.allows("a")


def test_the_rate_limiter_forgets_the_stalest_client_beyond_its_size() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 3600.0, clock, max_keys=3)
    for client in "abcd":
        clock.now += 1
        limiter.record(client)
    assert limiter.allows("a")  # "a" was evicted: memory stays bounded under a flood of senders
    assert not limiter.allows("d")


def test_unusable_rate_limits_are_refused() -> None:
    with pytest.raises(ConfigError):
        RateLimiter(0, 60.0)


def test_a_flood_becomes_a_few_log_lines_that_count_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = ThrottledLog(logging.getLogger("test.osc"), limit=2, window=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.osc"):
        for n in range(100):
            log.warning("10.0.0.9", "junk %d", n)
        clock.now += 10
        log.warning("10.0.0.9", "junk %d", 100)
    assert [r.getMessage() for r in caplog.records] == [
        "junk 0", "junk 1", "junk 100 (98 similar lines from this client suppressed)"]


def test_binding_beyond_loopback_without_a_token_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"beyond this computer, but no shared token") as caught:
        ClientGuard("0.0.0.0", ("192.168.1.20",), None)
    assert "osc token" in caught.value.hint
    assert ClientGuard("127.0.0.1", (), None).admits("127.0.0.1")  # loopback needs none


def test_only_looking_adds_no_key_and_the_table_stays_bounded() -> None:
    """100,000 distinct senders whose requests are refused before they are counted (a bad path) or that
    are counted: the table never holds more than max_keys (before: every `allows` added a key for good)."""
    limiter = RateLimiter(20, 60.0, FakeClock(), max_keys=1024)
    for n in range(100_000):
        limiter.allows(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(limiter) == 0
    for n in range(100_000):
        limiter.record(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(limiter) == 1024


@pytest.mark.parametrize(("a", "b"), [
    ("127.0.0.1", "127.0.0.2"), ("127.0.0.1", "::1"), ("10.0.0.5", "::ffff:10.0.0.5"),
    ("2001:db8::1", "2001:db8::dead:beef"),
])
def test_a_host_counts_as_one_whatever_address_it_picks(a: str, b: str) -> None:
    assert host_key(a) == host_key(b)
    assert host_key("10.0.0.5") != host_key("10.0.0.6")
