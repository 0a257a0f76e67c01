"""Bad input and the security edges: every refusal is a /sam/error naming the address and what was
expected (or, for strangers, silence), a log line, and a server that keeps serving."""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
from pathlib import Path

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.common.errors import ConfigError, InputError
from bridge.common.jobs import RequestRejected
from bridge.osc.addresses import MAX_REPLY_BYTES
from bridge.osc.server import OscServer, OscSettings
from tests.osc_helpers import TEST_VERSION, OscClient, RecordingSink, running_server, write_wav


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    return outside


def osc_string(text: bytes) -> bytes:
    return text + b"\x00" * (4 - len(text) % 4)


def raw(address: bytes, tags: str, *encoded: bytes) -> bytes:
    return osc_string(address) + osc_string(b"," + tags.encode()) + b"".join(encoded)


def built(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)  # type: ignore[arg-type]
    return builder.build().dgram


def assert_still_serving(client: OscClient) -> None:
    assert client.request("/sam/ping", reply="/sam/pong") == [TEST_VERSION, "ok"]


SRC = "/music/a.wav"  # never reached: these requests fail before any path is looked at
BAD_INPUT = {
    "unknown address": (built("/sam/separat", "x"), "/sam/separat is not an address this bridge knows"),
    "another prefix": (built("/live/ping"), "Is the prefix in your patch set to /sam?"),
    "wrong type": (built("/sam/separate", 42, "piano"),
                   "/sam/separate expects s:source_path s:preset_or_prompt [s:tag] [s:project_dir] "
                   "[f:start f:length] [f:audition] [s:options] [s:spans]; argument 1 (source_path) should be "
                   "text (s), got a whole number (i) 42"),
    "too few": (built("/sam/separate", SRC), "but got 1 argument(s) (it takes 2 or 3 or 4 or 6 or 7 or 8 or 9)"),
    "too many": (built("/sam/ping", 1), "/sam/ping expects no arguments, but got 1"),
    "start without length": (built("/sam/separate", SRC, "piano", "t", "", 1.0), "got 5 argument(s)"),
    "empty source": (built("/sam/separate", "", "piano"), "argument 1 (source_path) is empty"),
    "blank prompt": (built("/sam/separate", SRC, "   "), "argument 2 (preset_or_prompt) is empty"),
    "empty job id": (built("/sam/cancel", ""), "/sam/cancel expects s:job_id; argument 1 (job_id) is empty"),
    "non-UTF-8 argument": (raw(b"/sam/cancel", "s", osc_string(b"\xff\xfejob")),
                           "/sam/cancel: an argument is not valid text (UTF-8)"),
    "non-UTF-8 address": (raw(b"/sam/\xffping", ""), "the address is not valid text (UTF-8)"),
    "8 KB prompt": (built("/sam/separate", SRC, "a" * 8192),
                    "argument 2 (preset_or_prompt) is 8192 characters long; at most 500 are allowed"),
    "8 KB path": (built("/sam/separate", "/" + "a" * 8191, "piano"), "is 8192 characters long"),
    "not OSC": (b"hello, bridge", "this is not an OSC message"),
    "binary junk": (bytes(range(256)), "this is not an OSC message"),
    "empty datagram": (b"", "this is not an OSC message"),
    "cut short": (built("/sam/cancel", "job-1")[:-4], "garbled or cut short"),
    "no type tags": (osc_string(b"/sam/cancel") + b"abcd", "the type tag string is missing"),
    "unsupported type": (raw(b"/sam/cancel", "x", b"\x00" * 4), "unsupported argument type(s) x"),
    "blob": (built("/sam/cancel", b"\x01\x02"), "should be text (s), got a blob (b) of 2 bytes"),
    "true/false": (built("/sam/subscribe", True), "should be a whole number (i), got a true/false"),
    "array": (built("/sam/cancel", [1, 2]), "got an array"),
    "NaN": (raw(b"/sam/separate", "ssssff", osc_string(SRC.encode()), osc_string(b"piano"), osc_string(b""),
                osc_string(b""), struct.pack(">f", float("nan")), struct.pack(">f", 1.0)),
            "argument 5 (start) should be a finite number"),
    "negative length": (built("/sam/separate", SRC, "piano", "", "", 0.0, -1.0),
                        "argument 6 (length) must be more than 0"),
    "start as words": (built("/sam/separate", SRC, "piano", "", "", "soon", "2.5"),
                       "argument 5 (start) should be a number (f) or text holding one, got text (s) \"soon\""),
    "start as text NaN": (built("/sam/separate", SRC, "piano", "", "", "nan", "2.5"),
                          "argument 5 (start) should be a finite number"),
    "length as negative text": (built("/sam/separate", SRC, "piano", "", "", "1.5", "-2"),
                                "argument 6 (length) must be more than 0, got -2"),
    "length as huge text": (built("/sam/separate", SRC, "piano", "", "", "0", "1e308"),
                            "argument 6 (length) must be at most 1e+07, got 1e+308"),
    "port out of range": (built("/sam/subscribe", 70000), "argument 1 (port) must be at most 65535"),
    "fractional port": (built("/sam/subscribe", 9011.5),
                        "should be a whole number (i), got a number (f) 9011.5"),
    "bundle cut short": (b"#bundle\x00\x00\x00", "#bundle: the bundle is cut short"),
    "bundle element size": (b"#bundle\x00" + b"\x00" * 7 + b"\x01" + struct.pack(">i", 999) + b"/sam",
                            "#bundle: a bundle element has a wrong size"),
    "bundle of junk": (b"#bundle\x00" + b"\x00" * 7 + b"\x01" + struct.pack(">i", 4) + b"junk",
                       "#bundle: a bundle element is not an OSC message"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_gets_an_error_naming_what_was_expected_and_the_server_goes_on(
        case: str, client: OscClient, sink: RecordingSink, caplog: pytest.LogCaptureFixture) -> None:
    datagram, expected = BAD_INPUT[case]
    with caplog.at_level(logging.WARNING, logger="bridge.osc.server"):
        client.send_raw(datagram)
        error = client.expect("/sam/error")
        assert_still_serving(client)
    assert expected in error.args[1]
    assert error.size <= MAX_REPLY_BYTES and "a" * 100 not in error.args[1]  # 8 KB values never echoed
    assert any(expected in r.getMessage() for r in caplog.records)
    assert sink.requests == []


def test_the_error_carries_the_tag_of_the_refused_request(client: OscClient) -> None:
    key, _ = client.request("/sam/separate", "relative/a.wav", "piano", "take-9", reply="/sam/error")
    assert key == "take-9"


# --- paths ---

def refused(client: OscClient, *args: object) -> str:
    _, text = client.request("/sam/separate", *args, reply="/sam/error")
    return str(text)


def test_a_source_outside_the_allowed_folders_is_refused(
        client: OscClient, sink: RecordingSink, music: Path, elsewhere: Path) -> None:
    secret = write_wav(elsewhere / "secret.wav")
    text = refused(client, str(secret), "piano")
    assert text.startswith(f"/sam/separate: The file {secret} is outside the folders sam-bridge may read ")
    assert str(music.resolve()) in text and f'sam-bridge allow "{secret.parent.resolve()}"' in text
    assert refused(client, "/etc/passwd", "piano").startswith(
        "/sam/separate: The file /etc/passwd is outside")
    assert sink.requests == []


def test_dot_dot_cannot_climb_out(
        client: OscClient, sink: RecordingSink, music: Path, elsewhere: Path) -> None:
    write_wav(elsewhere / "secret.wav")
    sneaky = f"{music}/../elsewhere/secret.wav"
    assert "is outside the folders sam-bridge may read" in refused(client, sneaky, "piano")
    assert sink.requests == []


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_cannot_lead_out(
        client: OscClient, sink: RecordingSink, music: Path, elsewhere: Path) -> None:
    secret = write_wav(elsewhere / "secret.wav")
    (music / "innocent.wav").symlink_to(secret)
    (music / "Samples").symlink_to(elsewhere, target_is_directory=True)
    assert "is outside the folders" in refused(client, str(music / "innocent.wav"), "piano")
    assert "is outside the folders" in refused(client, str(music / "Samples" / "secret.wav"), "piano")
    assert sink.requests == []


def test_a_symlink_within_the_allowed_folders_is_followed(
        client: OscClient, sink: RecordingSink, music: Path) -> None:
    real = write_wav(music / "takes" / "real.wav")
    (music / "alias.wav").symlink_to(real)
    client.request("/sam/separate", str(music / "alias.wav"), "piano", reply="/sam/accepted")
    assert sink.requests[0].source == real.resolve()  # the engine reads what was checked


def test_relative_and_missing_sources(client: OscClient, music: Path) -> None:
    assert "is not a full path" in refused(client, "a.wav", "piano")
    assert f"There is no audio file at {music}/gone.wav" in refused(client, str(music / "gone.wav"), "piano")
    (music / "Session").mkdir()  # a folder is said to be one, as the command line says it
    said = refused(client, str(music / "Session"), "piano")
    assert f"{music}/Session is a folder, not an audio file." in said and "There is no" not in said


def test_stems_only_go_to_allowed_output_folders(
        sink: RecordingSink, music: Path, elsewhere: Path) -> None:
    source_only = elsewhere / "library"
    source = write_wav(source_only / "loop.wav")
    with running_server(sink, source_roots=(music, source_only), output_roots=(music,)) as server:
        client = OscClient(server.address)
        text = refused(client, str(source), "piano", "t", "/etc")
        assert "The project folder /etc is outside the folders sam-bridge may write stems to" in text
        text = refused(client, str(source), "piano")  # stems would go beside the source
        assert "folder of the source (where the stems would go)" in text
        (music / "escape").symlink_to(elsewhere, target_is_directory=True)
        assert "may write stems to" in refused(client, str(source), "piano", "t", str(music / "escape"))
        assert sink.requests == []
        client.request("/sam/separate", str(source), "piano", "t", str(music / "Song"), reply="/sam/accepted")
        assert sink.requests[0].project_dir == (music / "Song").resolve()
        client.close()


# --- who may ask ---

def bind_second_loopback() -> socket.socket:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.2", 0))
    except OSError:
        probe.close()
        pytest.skip("this system has no 127.0.0.2 (macOS needs an alias on lo0)")
    return probe


def test_a_sender_outside_the_allowlist_gets_no_answer_and_a_log_line(
        sink: RecordingSink, music: Path, caplog: pytest.LogCaptureFixture) -> None:
    bind_second_loopback().close()
    source = write_wav(music / "a.wav")
    # Bound to 127.0.0.1 but with an allowlist, the server behaves as on a LAN.
    with caplog.at_level(logging.WARNING), running_server(
            sink, allow_clients=("127.0.0.1",), source_roots=(music,), output_roots=(music,)) as server:
        stranger = OscClient(server.address, host="127.0.0.2")
        friend = OscClient(server.address, host="127.0.0.1")
        stranger.send("/sam/ping")
        stranger.send("/sam/separate", str(source), "piano")
        stranger.send("junk")
        assert friend.request("/sam/ping", reply="/sam/pong") == [TEST_VERSION, "ok"]  # handled after those
        assert stranger.nothing_waiting()
        assert sink.requests == []
        stranger.close()
        friend.close()
    assert "ignored a datagram from 127.0.0.2, which is not in the client allowlist" in caplog.text


def test_an_allowlisted_network_admits_its_members(sink: RecordingSink) -> None:
    bind_second_loopback().close()
    with running_server(sink, allow_clients=("127.0.0.0/30",)) as server:
        member = OscClient(server.address, host="127.0.0.2")
        assert member.request("/sam/ping", reply="/sam/pong") == [TEST_VERSION, "ok"]
        member.close()


def test_listening_beyond_loopback_needs_an_allowlist(sink: RecordingSink) -> None:
    with pytest.raises(ConfigError, match="no client addresses are allowed") as caught:
        OscServer(sink, OscSettings(host="0.0.0.0"), TEST_VERSION)
    assert "allow_clients" in caught.value.hint
    with pytest.raises(ConfigError, match="is not an IP address"):
        OscServer(sink, OscSettings(host="0.0.0.0", allow_clients=("studio-mac.local",), token="t0k"),
                  TEST_VERSION)
    with pytest.raises(ConfigError, match="prefix"):
        OscServer(sink, OscSettings(prefix="/sam/"), TEST_VERSION)


def test_the_token_is_required_checked_and_never_sent_back(
        sink: RecordingSink, music: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = "tok-5f2a9c71"
    source = write_wav(music / "a.wav")
    with caplog.at_level(logging.DEBUG), running_server(
            sink, token=token, source_roots=(music,), output_roots=(music,)) as server:
        client = OscClient(server.address)
        replies = [
            client.request("/sam/ping", reply="/sam/error"),
            client.request("/sam/ping", "tok-wrong", reply="/sam/error"),
            client.request("/sam/ping", token, reply="/sam/pong"),
            client.request("/sam/separate", token, str(source), "piano", "t1", reply="/sam/accepted"),
            client.request("/sam/separate", token, "", "piano", "t2", reply="/sam/error"),
            client.request("/sam/status", token, "nope", reply="/sam/error"),
        ]
        client.close()
    assert "needs the shared token as the first argument" in replies[0][1]
    assert "token (first argument) is wrong" in replies[1][1]
    assert replies[2] == [TEST_VERSION, "ok"] and replies[3] == ["t1", "job-1"]
    assert replies[4][0] == "t2" and "argument 1 (source_path) is empty" in replies[4][1]
    assert replies[5][0] == "nope"
    assert token not in repr(replies) and token not in caplog.text
    assert sink.requests[0].source == source.resolve()


def test_the_rate_limit_stops_a_runaway_patch(sink: RecordingSink, music: Path) -> None:
    source = write_wav(music / "a.wav")
    with running_server(sink, rate_limit=(3, 3600.0), source_roots=(music,), output_roots=(music,)) as server:
        client = OscClient(server.address)
        refused(client, str(music / "typo.wav"), "piano")  # refused requests do not use up the allowance
        for n in range(3):
            client.request("/sam/separate", str(source), "piano", f"t{n}", reply="/sam/accepted")
        key, text = client.request("/sam/separate", str(source), "piano", "t3", reply="/sam/error")
        assert key == "t3"
        assert "Too many separations from 127.0.0.1: at most 3 every 3600 s, so this one was not queued" \
            in text
        assert re.search(r"Try again in 3[0-6]\d\d s", text)  # the window's rest, not a fixed wait
        assert_still_serving(client)
        client.close()
    assert [r.tag for r in sink.requests] == ["t0", "t1", "t2"]


def test_a_new_port_or_loopback_address_does_not_dodge_the_limit(sink: RecordingSink, music: Path) -> None:
    """Before: the limit was per address string, so 127.0.0.2 (or ::1) got a fresh allowance."""
    source = write_wav(music / "a.wav")
    with running_server(sink, rate_limit=(2, 3600.0), source_roots=(music,), output_roots=(music,)) as server:
        clients = [OscClient(server.address), OscClient(server.address), OscClient(server.address, "127.0.0.2")]
        for n, client in enumerate(clients[:2]):  # two source ports
            client.request("/sam/separate", str(source), "piano", f"t{n}", reply="/sam/accepted")
        key, text = clients[2].request("/sam/separate", str(source), "piano", "t2", reply="/sam/error")
        assert key == "t2" and "Too many separations from 127.0.0.2" in text
        for client in clients:
            client.close()
    assert [r.tag for r in sink.requests] == ["t0", "t1"]


def test_paid_jobs_from_all_clients_together_are_capped(sink: RecordingSink, music: Path) -> None:
    source = write_wav(music / "a.wav")
    with running_server(sink, rate_limit=(100, 60.0), total_rate_limit=(3, 60.0), source_roots=(music,),
                        output_roots=(music,)) as server:
        client = OscClient(server.address)
        for n in range(3):
            client.request("/sam/separate", str(source), "piano", f"t{n}", reply="/sam/accepted")
        _key, text = client.request("/sam/separate", str(source), "piano", "t3", reply="/sam/error")
        assert "at most 3 every 60 s from all clients together" in text
        assert_still_serving(client)
        client.close()
    assert len(sink.requests) == 3


# --- the engine says no ---

@pytest.mark.parametrize(("problem", "expected"), [
    (RequestRejected("the daily budget of $5.00 is used up"),
     "/sam/separate: the daily budget of $5.00 is used up"),
    (InputError("Unknown option foo.", hint="See the README."),
     "/sam/separate: Unknown option foo. See the README."),
    (RuntimeError("boom"),
     "/sam/separate: sam-bridge failed on this request (an internal error; see its log)"),
])
def test_the_engines_refusals_and_failures_are_reported(
        problem: Exception, expected: str, music: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink(reject=problem)
    source = write_wav(music / "a.wav")
    with caplog.at_level(logging.WARNING), running_server(
            sink, source_roots=(music,), output_roots=(music,)) as server:
        client = OscClient(server.address)
        key, text = client.request("/sam/separate", str(source), "piano", "tag-1", reply="/sam/error")
        assert_still_serving(client)
        client.close()
    assert text.startswith(expected)
    assert key == "tag-1"
    if isinstance(problem, RuntimeError):
        assert "Traceback" in caplog.text and "boom" not in text  # details go to the log, not the patch


def test_a_looping_client_does_not_silence_the_errors_of_another_on_the_same_machine(server: OscServer) -> None:
    """The error replies were limited per host: one patch looping bad messages (120 in a moment) took all 50
    of 127.0.0.1's error replies for the second, and a DAW device beside it waiting for /sam/error heard
    nothing. The limit is per reply address now, with a larger cap per host."""
    looping, device = OscClient(server.address), OscClient(server.address)
    try:
        for _ in range(120):
            looping.send("/sam/status", "no-such-job")
        reply = device.request("/sam/status", "other-job", reply="/sam/error")
        assert reply[0] == "other-job" and "There is no job" in reply[1], reply
    finally:
        looping.close()
        device.close()
