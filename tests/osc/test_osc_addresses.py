"""The address table is the one declaration: its examples validate, its README table shows every address,
and what goes on the wire matches it."""

from __future__ import annotations

import shlex
import struct

import pytest
from pythonosc.osc_message import OscMessage

from bridge.common.jobs import JobEvent, JobState
from bridge.osc.addresses import (
    MAX_REPLY_BYTES,
    REPLIES,
    REPLIES_BY_NAME,
    REQUESTS,
    REQUESTS_BY_NAME,
    ArgumentProblem,
    validate_args,
)
from bridge.osc.table import markdown_table
from bridge.osc.wire import Incoming, Undecodable, decode_datagram, encode_reply, event_messages


def example_args(example: str, types: list[str]) -> list[object]:
    words = shlex.split(example)
    return [float(w) if t == "f" else int(w) if t == "i" else w for w, t in zip(words, types, strict=True)]


@pytest.mark.parametrize("request_name", list(REQUESTS_BY_NAME))
def test_every_request_example_is_valid_against_its_own_declaration(request_name: str) -> None:
    request = REQUESTS_BY_NAME[request_name]
    declared = [*request.required, *(a for group in request.optional for a in group)]
    words = shlex.split(request.example)
    values = validate_args(request, example_args(request.example, [a.type for a in declared[: len(words)]]))
    assert len(values) == len(words)


def test_the_issue_address_space_is_declared() -> None:
    assert {r.address() for r in REQUESTS} == {
        "/sam/separate", "/sam/cancel", "/sam/status", "/sam/presets", "/sam/ping", "/sam/reply_to",
        "/sam/subscribe", "/sam/unsubscribe", "/sam/estimate"}
    assert REQUESTS_BY_NAME["separate"].signature == REQUESTS_BY_NAME["estimate"].signature == (
        "s:source_path s:preset_or_prompt [s:tag] [s:project_dir] [f:start f:length] [f:audition] [s:options] "
        "[s:spans]")
    assert REQUESTS_BY_NAME["separate"].arity() == [2, 3, 4, 6, 7, 8, 9]
    assert REPLIES_BY_NAME["progress"].signature == "s:job_id s:state f:fraction s:message f:eta"
    assert REPLIES_BY_NAME["flags"].signature == "s:job_id s:flag..."
    assert REPLIES_BY_NAME["status/job"].signature == "s:job_id s:state f:progress s:message s:tag"
    assert REPLIES_BY_NAME["done"].signature == "s:job_id s:target s:residual s:manifest"
    assert REPLIES_BY_NAME["presets/list"].signature == "s:name..."
    for request in REQUESTS:
        assert set(request.replies) <= set(REPLIES_BY_NAME), request.name


def test_the_readme_table_lists_every_address_with_its_example() -> None:
    table = markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `/")]
    assert len(rows) == len(REQUESTS) + len(REPLIES)
    assert all(line.count(" | ") == 4 for line in rows[: len(REQUESTS)])  # five cells, no stray pipes
    assert "| `/sam/separate` | `s:source_path` full path of the audio file<br>" in table
    assert '`/sam/separate "/Users/me/Music/Guitar 01.wav" piano take-3' in table
    assert "`/sam/ping`" in table and "`/sam/pong 0.2.2 ok`" in table
    assert "first argument of every request" in table  # the token note
    assert "| `/live/sam/ping` |" in markdown_table("/live/sam")


def test_the_table_says_when_an_empty_text_or_a_zero_is_taken_as_the_declaration_checks_it() -> None:
    """A patch author reads the table, not the code: "" (not given) and a bound that refuses 0 are in it."""
    from bridge.docs import README

    table, readme = markdown_table(), README.read_text(encoding="utf-8")
    for request in REQUESTS:
        for arg in (*request.required, *(a for group in request.optional for a in group)):
            shown = f"`{arg.signature}` {arg.description}".replace("|", "\\|")
            assert shown in table and shown in readme, (request.name, arg.name)
            if arg.may_be_empty:
                assert '""' in arg.description, (request.name, arg.name)
            if arg.above is not None:
                assert f"more than {arg.above:g}" in arg.description, (request.name, arg.name)
    length = REQUESTS_BY_NAME["separate"].optional[2][1]
    assert length.name == "length" and 'a positive number' in length.description
    assert '"" = to the end of the file' in length.description


@pytest.mark.parametrize(("args", "expected"), [
    (["/a.wav", "piano"], {"source_path": "/a.wav", "preset_or_prompt": "piano"}),
    (["/a.wav", " piano ", "", "", 0, 2], {"source_path": "/a.wav", "preset_or_prompt": "piano",
                                           "start": 0.0, "length": 2.0}),
    (["/a.wav", "piano", "t", "/p", 1.5, 0.25],
     {"source_path": "/a.wav", "preset_or_prompt": "piano", "tag": "t", "project_dir": "/p", "start": 1.5,
      "length": 0.25}),
])
def test_validation_returns_named_converted_values(args: list[object], expected: dict[str, object]) -> None:
    values = validate_args(REQUESTS_BY_NAME["separate"], args)
    assert values == expected
    assert all(type(values[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize(("name", "args", "message"), [
    ("subscribe", [9011.0], None),
    ("subscribe", [0], "argument 1 (port) must be at least 1, got 0"),
    ("subscribe", [float("inf")], "should be a finite number"),
    ("separate", ["/a.wav", "piano", "", "", -1.0, 1.0], "argument 5 (start) must be at least 0, got -1"),
    ("separate", ["/a.wav", "piano", "x" * 201], "argument 3 (tag) is 201 characters long; at most 200"),
    ("status", ["a", "b"], "/sam/status expects [s:job_id], but got 2 argument(s) (it takes 0 or 1)"),
    ("separate", ["/a.wav", None], "should be text (s), got nil (N)"),
])
def test_validation_messages(name: str, args: list[object], message: str | None) -> None:
    if message is None:
        assert validate_args(REQUESTS_BY_NAME[name], args) == {"port": 9011}
        return
    with pytest.raises(ArgumentProblem) as caught:
        validate_args(REQUESTS_BY_NAME[name], args)
    assert message in str(caught.value)


# --- the wire ---

def test_replies_are_typed_as_declared_and_read_back_by_python_osc() -> None:
    data = encode_reply("/sam", "status/job", ["job-1", "running", 0.5, "half way", "t"])
    message = OscMessage(data)
    assert message.address == "/sam/status/job"
    assert message.params == ["job-1", "running", 0.5, "half way", "t"]
    assert data[len(b"/sam/status/job\x00"):].startswith(b",sssfss"[0:1] + b"ssfss\x00")
    with pytest.raises(ValueError, match="takes s:job_id"):
        encode_reply("/sam", "cancel/ok", [])


def test_a_reply_too_big_for_the_buffer_is_shortened_not_dropped() -> None:
    message = "é" * 6000  # 12,000 bytes of UTF-8
    data = encode_reply("/sam", "error", ["tag", message])
    assert len(data) <= MAX_REPLY_BYTES
    key, text = OscMessage(data).params
    assert key == "tag" and text.endswith("…") and text.startswith("é" * 3000)


def test_long_lists_repeat_their_last_argument() -> None:
    names = ["a", "b", "c"]
    assert OscMessage(encode_reply("/sam", "presets/list", names)).params == names


def test_decoding_takes_bundles_apart_and_refuses_nested_ones() -> None:
    ping = b"/sam/ping\x00\x00\x00,\x00\x00\x00"
    inner = b"#bundle\x00" + b"\x00" * 7 + b"\x01" + struct.pack(">i", len(ping)) + ping
    outer = (b"#bundle\x00" + b"\xff" * 8 + struct.pack(">i", len(ping)) + ping
             + struct.pack(">i", len(inner)) + inner)
    first, second = decode_datagram(outer)
    assert first == Incoming("/sam/ping", [])
    assert isinstance(second, Undecodable) and "bundles inside bundles" in second.reason


def test_a_bundle_of_many_messages_is_capped() -> None:
    ping = b"/sam/ping\x00\x00\x00,\x00\x00\x00"
    many = b"#bundle\x00" + b"\x00" * 8 + (struct.pack(">i", len(ping)) + ping) * 100
    items = decode_datagram(many)
    assert sum(isinstance(i, Incoming) for i in items) == 64
    assert isinstance(items[-1], Undecodable) and "at most 64 messages" in items[-1].reason


def test_a_done_event_becomes_progress_stems_and_done() -> None:
    event = JobEvent("j", "t", JobState.done, 1.0, "done", stems={"target": "/t.wav", "residual": "/r.wav"},
                     manifest="/m.json")
    assert event_messages(event) == [
        ("progress", ["j", "done", 1.0, "done", -1.0]),
        ("stem", ["j", "target", "/t.wav"]),
        ("stem", ["j", "residual", "/r.wav"]),
        ("done", ["j", "/t.wav", "/r.wav", "/m.json"]),
    ]
    odd = JobEvent("j", "t", JobState.running, float("nan"), "?")
    assert event_messages(odd) == [("progress", ["j", "running", 0.0, "?", -1.0])]
    flagged = JobEvent("j", "t", JobState.done, 1.0, "done", stems={"target": "/t.wav"}, manifest="/m.json",
                       flags=("target-unlikely", "drift"), eta=0.0)
    assert event_messages(flagged)[:2] == [("progress", ["j", "done", 1.0, "done", 0.0]),
                                           ("flags", ["j", "target-unlikely", "drift"])]
    placed = JobEvent("j", "t", JobState.done, 1.0, "done", stems={"target": "/t.wav"}, manifest="/m.json",
                      flags=("audition",), part=(17.5, 10.0))
    assert [name for name, _ in event_messages(placed)] == ["progress", "part", "flags", "flag", "stem", "done"]
    assert event_messages(placed)[1] == ("part", ["j", 17.5, 10.0])
    assert REPLIES_BY_NAME["part"].signature == "s:job_id f:start_seconds f:length_seconds"
