"""Property-based fuzzing: whatever arrives, the server stays up and still answers /sam/ping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonosc.parsing import osc_types

from bridge.osc.addresses import REQUESTS
from bridge.osc.server import OscServer
from tests.osc_helpers import TEST_VERSION, OscClient, RecordingSink, running_server

KNOWN = [r.address() for r in REQUESTS]

addresses = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(KNOWN).map(lambda a: a + "/x"),
    st.text(min_size=0, max_size=40).map(lambda t: "/" + t),
)
arguments = st.lists(st.one_of(
    st.text(max_size=300),
    st.text(alphabet="/.ab ", max_size=30),  # path-like
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.floats(width=32),
    st.binary(min_size=1, max_size=64),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=0, max_value=9), max_size=3),
), max_size=8)


def encode(address: str, args: list[object]) -> bytes:
    """Like python-osc's builder, minus its re-parse of the result (which rejects text with NULs)."""
    tags, body = "", b""
    for arg in args:
        if isinstance(arg, bool):
            tags += "T" if arg else "F"
        elif arg is None:
            tags += "N"
        elif isinstance(arg, int):
            tags, body = tags + "i", body + osc_types.write_int(arg)
        elif isinstance(arg, float):
            tags, body = tags + "f", body + osc_types.write_float(arg)
        elif isinstance(arg, bytes):
            tags, body = tags + "b", body + osc_types.write_blob(arg)
        elif isinstance(arg, list):
            tags += "[" + "i" * len(arg) + "]"
            body += b"".join(osc_types.write_int(n) for n in arg)
        else:
            tags, body = tags + "s", body + osc_types.write_string(str(arg))
    return osc_types.write_string(address) + osc_types.write_string("," + tags) + body


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["message", "raw", "mutated", "bundle"]))
    if kind == "raw":
        return draw(st.binary(max_size=600))
    message = encode(draw(addresses), draw(arguments))
    if kind == "mutated":  # a valid message with bytes overwritten or cut off
        data = bytearray(message)
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "bundle":
        size = draw(st.sampled_from([len(message), len(message) + 4, 0, -1, 2**31 - 1]))
        timetag = draw(st.binary(min_size=8, max_size=8))
        nested = draw(st.booleans())
        body = size.to_bytes(4, "big", signed=True) + message
        head = b"#bundle\x00" + timetag
        return head + (len(head + body).to_bytes(4, "big") + head + body if nested else body)
    return message


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OscServer, OscClient]]:
    music = tmp_path_factory.mktemp("music")
    with running_server(RecordingSink(), source_roots=(Path(music),), output_roots=(Path(music),)) as server:
        client = OscClient(server.address)
        yield server, client
        client.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=datagrams())
def test_the_server_survives_anything(fuzzed: tuple[OscServer, OscClient], data: bytes) -> None:
    _, client = fuzzed
    client.send_raw(data)
    client.send("/sam/ping")
    while (got := client.receive()).address != "/sam/pong":  # answers to the junk come first, if any
        assert got.address.startswith("/sam/"), got.address
    assert got.args == [TEST_VERSION, "ok"]
