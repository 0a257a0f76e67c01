"""Every OSC address and every reply, over real UDP on loopback, with a stand-in for the job engine."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import BlockingOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

from bridge.common.errors import ConfigError
from bridge.common.flags import FLAG_TEXT
from bridge.common.jobs import JobEvent, JobState
from bridge.common.request import Origin, SeparationRequest
from bridge.osc.addresses import MAX_REPLY_BYTES, STATUS_LIMIT
from bridge.osc.server import OscServer, OscSettings
from tests.osc_helpers import TEST_VERSION, WAIT, OscClient, RecordingSink, done_event, running_server, write_wav


def message(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)  # type: ignore[arg-type]
    return builder.build().dgram


def submit(client: OscClient, source: Path, what: str = "piano", tag: str = "t") -> str:
    tag_back, job_id = client.request("/sam/separate", str(source), what, tag, reply="/sam/accepted")
    assert tag_back == tag
    return str(job_id)


# --- requests and their replies ---

def test_ping_answers_with_the_version_from_the_server_port(server: OscServer, client: OscClient) -> None:
    client.send("/sam/ping")
    pong = client.expect("/sam/pong")
    assert pong.args == [TEST_VERSION, "ok"]
    assert pong.sender[1] == server.address[1]


def test_separate_with_a_preset_name_in_any_case(client: OscClient, sink: RecordingSink, music: Path) -> None:
    source = write_wav(music / "Guitar 01.wav")
    assert client.request("/sam/separate", str(source), "VOCALS", "take-3", reply="/sam/accepted") == \
        ["take-3", "job-1"]
    (request,) = sink.requests
    assert (request.preset, request.prompt) == ("Vocals", None)
    assert request.source == source.resolve()
    assert request.tag == "take-3" and request.origin is Origin.osc
    assert request.project_dir is None and request.start is None and request.length is None


def test_separate_with_a_prompt_project_and_part(client: OscClient, sink: RecordingSink, music: Path) -> None:
    source = write_wav(music / "mix.wav")
    project = music / "Song"  # need not exist yet
    args = client.request("/sam/separate", str(source), "distorted guitar", "x", str(project), 1.5, 2.0,
                          reply="/sam/accepted")
    assert args == ["x", "job-1"]
    (request,) = sink.requests
    assert (request.preset, request.prompt) == (None, "distorted guitar")
    assert request.project_dir == project.resolve()
    assert (request.start, request.length) == (1.5, 2.0)


def test_separate_takes_seconds_as_text_with_more_digits_than_a_float32(
        client: OscClient, sink: RecordingSink, music: Path) -> None:
    source = write_wav(music / "mix.wav")
    client.request("/sam/separate", str(source), "piano", "x", "", "754.123456789", " 0.25 ", reply="/sam/accepted")
    (request,) = sink.requests
    assert (request.start, request.length) == (754.123456789, 0.25)


def test_separate_takes_whole_numbers_for_seconds_and_empty_strings_as_not_given(
        client: OscClient, sink: RecordingSink, music: Path) -> None:
    source = write_wav(music / "mix.wav")
    assert client.request("/sam/separate", str(source), "piano", "", "", 3, 4,
                          reply="/sam/accepted") == ["", "job-1"]
    (request,) = sink.requests
    assert request.tag == "" and request.project_dir is None
    assert (request.start, request.length) == (3.0, 4.0)
    assert isinstance(request.start, float)


def test_an_empty_audition_is_not_given_like_an_empty_start_or_length(
        client: OscClient, sink: RecordingSink, music: Path) -> None:
    """A patch that sends options or spans must fill the audition slot: "" leaves it out, as for start/length."""
    source = write_wav(music / "mix.wav")
    assert client.request("/sam/separate", str(source), "piano", "t", "", "", "", "", "reranking_candidates=2",
                          reply="/sam/accepted") == ["t", "job-1"]
    (request,) = sink.requests
    assert request.audition is None and request.start is None and request.length is None
    assert request.options == {"reranking_candidates": 2}


def test_cancel_known_and_unknown_jobs(client: OscClient, sink: RecordingSink, music: Path) -> None:
    job_id = submit(client, write_wav(music / "a.wav"))
    assert client.request("/sam/cancel", job_id, reply="/sam/cancel/ok") == [job_id]
    assert sink.cancelled == [job_id]
    key, text = client.request("/sam/cancel", "job-404", reply="/sam/error")
    assert key == "job-404"
    assert text.startswith("/sam/cancel: ") and "no queued or running job" in text


def test_status_of_one_job_of_all_jobs_and_of_an_unknown_job(
        client: OscClient, music: Path) -> None:
    first = submit(client, write_wav(music / "a.wav"), tag="one")
    second = submit(client, write_wav(music / "b.wav"), tag="two")
    assert client.request("/sam/status", first, reply="/sam/status/job") == \
        [first, "queued", 0.0, "queued", "one"]
    assert client.expect("/sam/status/end").args == [1, 0]

    client.send("/sam/status")
    listed = {client.expect("/sam/status/job").args[0], client.expect("/sam/status/job").args[0]}
    assert listed == {first, second}
    assert client.expect("/sam/status/end").args == [2, 0]

    key, text = client.request("/sam/status", "job-404", reply="/sam/error")
    assert key == "job-404" and "no job" in text


def test_status_without_an_id_is_capped_with_a_count_of_the_rest(client: OscClient, sink: RecordingSink,
                                                                  music: Path) -> None:
    """One datagram in, at most STATUS_LIMIT + 1 out (before: one reply per job, 26 for 26 jobs)."""
    source = write_wav(music / "a.wav")
    ids = [sink.submit(SeparationRequest(source=source, prompt="piano", tag=f"t{n}")) for n in range(26)]
    client.send("/sam/status")
    replies = []
    while (got := client.receive()).address != "/sam/status/end":
        replies.append(got.args[0])
    assert len(replies) == STATUS_LIMIT == 10 and set(replies) <= set(ids)
    assert got.args == [10, 16]
    assert client.nothing_waiting()


def test_presets_are_split_over_small_messages_and_end_with_the_count(
        client: OscClient, sink: RecordingSink) -> None:
    sink.presets = [f"preset number {i:03d} with a long name" for i in range(300)]
    client.send("/sam/presets")
    names: list[str] = []
    sizes: list[int] = []
    while (got := client.receive()).address == "/sam/presets/list":
        names += got.args
        sizes.append(got.size)
    assert got.address == "/sam/presets/end" and got.args == [300]
    assert names == sink.presets
    assert len(sizes) > 5 and max(sizes) <= 1100


def test_no_presets_is_just_the_end(client: OscClient, sink: RecordingSink) -> None:
    sink.presets = []
    assert client.request("/sam/presets", reply="/sam/presets/end") == [0]


def test_a_project_outside_the_allowed_folders_gets_the_shared_presets_and_is_told_why(
        client: OscClient, sink: RecordingSink, music: Path, tmp_path: Path) -> None:
    """The menu still fills, but a device must not say the list is that project's: /sam/presets/refused
    says its own presets were not read, why, and the `sam-bridge allow` command."""
    outside = tmp_path / "SSD" / "Song Project"
    outside.mkdir(parents=True)
    client.send("/sam/presets", str(outside))
    project, message = client.expect("/sam/presets/refused").args
    assert project == str(outside)
    assert message.startswith("Its own presets were not read: ") and "outside the folders" in message
    assert f'sam-bridge allow "{outside}"' in message
    assert client.expect("/sam/presets/list").args == sink.presets
    assert client.expect("/sam/presets/end").args == [3]
    client.send("/sam/presets", str(music))  # an allowed project: no refusal
    assert client.expect("/sam/presets/list").args == sink.presets
    assert client.expect("/sam/presets/end").args == [3]


def test_reply_port_sends_answers_to_the_configured_port(sink: RecordingSink) -> None:
    receiver = OscClient(("127.0.0.1", 0))  # Max's [udpreceive] on a fixed port; it never sends
    with running_server(sink, reply_port=receiver.port) as server:
        sender = OscClient(server.address)
        sender.send("/sam/ping")
        assert receiver.expect("/sam/pong").args == [TEST_VERSION, "ok"]
        assert sender.nothing_waiting()
        sender.close()
    receiver.close()


def test_reply_to_sends_this_clients_answers_and_job_events_to_the_port_it_names(
        server: OscServer, sink: RecordingSink, music: Path) -> None:
    """Max's [udpsend] sends from a random port and [udpreceive] listens on a fixed one: the device says
    where it listens, no config needed; other clients are still answered on their own port."""
    listener = OscClient(server.address)  # the [udpreceive]
    device = OscClient(server.address)  # the [udpsend]
    other = OscClient(server.address)
    device.send("/sam/reply_to", listener.port)
    assert listener.expect("/sam/reply_to/ok").args == [listener.port]
    device.send("/sam/ping")
    assert listener.expect("/sam/pong").args == [TEST_VERSION, "ok"]
    device.send("/sam/separate", str(write_wav(music / "a.wav")), "piano", "take-1")
    tag, job_id = listener.expect("/sam/accepted").args
    sink.emit(JobEvent(job_id, "take-1", JobState.running, 0.5, "separating"))
    assert listener.expect("/sam/progress").args[:2] == [job_id, "running"]
    device.send("/sam/reply_to", 0)
    assert "port" in listener.expect("/sam/error").args[1]
    assert tag == "take-1" and device.nothing_waiting()

    other.send("/sam/ping")
    assert other.expect("/sam/pong").args == [TEST_VERSION, "ok"] and listener.nothing_waiting()
    for client in (listener, device, other):
        client.close()


def test_a_named_reply_port_wins_over_the_configured_one(sink: RecordingSink) -> None:
    configured, named = OscClient(("127.0.0.1", 0)), OscClient(("127.0.0.1", 0))
    with running_server(sink, reply_port=configured.port) as server:
        sender = OscClient(server.address)
        sender.send("/sam/reply_to", named.port)
        named.expect("/sam/reply_to/ok")
        sender.send("/sam/ping")
        assert named.expect("/sam/pong").args == [TEST_VERSION, "ok"]
        assert configured.nothing_waiting()
        sender.close()
    configured.close()
    named.close()


# --- job events ---

def test_events_reach_the_submitter_stems_before_done(
        client: OscClient, sink: RecordingSink, music: Path) -> None:
    job_id = submit(client, write_wav(music / "Guitar 01.wav"))
    sink.emit(JobEvent(job_id, "t", JobState.running, 0.4, "separating on fal"))
    progress = client.expect("/sam/progress").args
    assert progress[:2] == [job_id, "running"] and progress[2] == pytest.approx(0.4) and progress[3] == \
        "separating on fal"

    stems = {"target": str(music / "Stems/g.target.wav"), "residual": str(music / "Stems/g.residual.wav")}
    sink.emit(done_event(job_id, stems, str(music / "Stems/g.sam.json")))
    assert client.expect("/sam/progress").args[:3] == [job_id, "done", 1.0]
    assert client.expect("/sam/stem").args == [job_id, "target", stems["target"]]
    assert client.expect("/sam/stem").args == [job_id, "residual", stems["residual"]]
    assert client.expect("/sam/done").args == [job_id, stems["target"], stems["residual"],
                                               str(music / "Stems/g.sam.json")]


def test_flags_come_each_in_words_saying_whether_it_is_a_warning_or_a_note(
        client: OscClient, sink: RecordingSink, music: Path) -> None:
    """The words are the daemon's (bridge.common.flags, as the CLI prints them): a device shows the warnings'
    words and leaves the notes out, and declares none of them itself."""
    job_id = submit(client, write_wav(music / "a.wav"))
    flags = ("drift", "drift-corrected", "target-unlikely", "some-new-flag")
    sink.emit(JobEvent(job_id, "t", JobState.done, 1.0, "done", stems={"target": "/s/t.wav"}, manifest="/s/m.json",
                       flags=flags))
    client.expect("/sam/progress")
    assert client.expect("/sam/flags").args == [job_id, *flags]  # as before: older devices read the codes
    assert [client.expect("/sam/flag").args for _ in flags] == [
        [job_id, "drift", "warning", FLAG_TEXT["drift"]],
        [job_id, "drift-corrected", "note", FLAG_TEXT["drift-corrected"]],
        [job_id, "target-unlikely", "warning", FLAG_TEXT["target-unlikely"]],
        [job_id, "some-new-flag", "warning", ""]]  # no words: a device shows the code
    client.expect("/sam/stem")
    client.expect("/sam/done")


def test_a_stem_set_is_done_with_the_first_stem_and_other(
        client: OscClient, sink: RecordingSink, music: Path) -> None:
    job_id = submit(client, write_wav(music / "mix.wav"), what="band")
    stems = {"vocals": "/s/v.wav", "drums": "/s/d.wav", "other": "/s/o.wav"}
    sink.emit(done_event(job_id, stems, "/s/mix.sam.json"))
    client.expect("/sam/progress")
    assert [client.expect("/sam/stem").args[1] for _ in stems] == ["vocals", "drums", "other"]
    assert client.expect("/sam/done").args == [job_id, "/s/v.wav", "/s/o.wav", "/s/mix.sam.json"]


@pytest.mark.parametrize("state", [JobState.failed, JobState.cancelled])
def test_failed_and_cancelled_jobs_end_with_an_error(
        state: JobState, client: OscClient, sink: RecordingSink, music: Path) -> None:
    job_id = submit(client, write_wav(music / "a.wav"))
    error = "fal refused the key. Check FAL_KEY." if state is JobState.failed else None
    sink.emit(JobEvent(job_id, "t", state, 0.3, "Job cancelled.", error=error))
    assert client.expect("/sam/progress").args[:2] == [job_id, state.value]
    assert client.expect("/sam/error").args == [job_id, error or "Job cancelled."]


def test_events_of_other_clients_jobs_are_not_sent_to_me(
        server: OscServer, client: OscClient, sink: RecordingSink, music: Path) -> None:
    other = OscClient(server.address)
    mine = submit(client, write_wav(music / "a.wav"))
    theirs = submit(other, write_wav(music / "b.wav"))
    sink.emit(JobEvent(theirs, "t", JobState.running, 0.1, "theirs"))
    sink.emit(JobEvent(mine, "t", JobState.running, 0.2, "mine"))
    assert other.expect("/sam/progress").args[0] == theirs
    assert client.expect("/sam/progress").args[0] == mine  # theirs would have arrived first
    other.close()


def test_subscribers_get_every_job_until_they_unsubscribe(
        server: OscServer, client: OscClient, sink: RecordingSink, music: Path) -> None:
    watcher = OscClient(server.address)
    assert watcher.request("/sam/subscribe", float(watcher.port), reply="/sam/subscribe/ok") == [watcher.port]
    job_id = submit(client, write_wav(music / "a.wav"))
    sink.emit(JobEvent(job_id, "t", JobState.uploading, 0.1, "uploading"))
    assert watcher.expect("/sam/progress").args[:2] == [job_id, "uploading"]
    assert client.expect("/sam/progress").args[:2] == [job_id, "uploading"]

    assert watcher.request("/sam/unsubscribe", watcher.port, reply="/sam/unsubscribe/ok") == [watcher.port]
    sink.emit(JobEvent(job_id, "t", JobState.running, 0.5, "running"))
    sink.emit(JobEvent(job_id, "t", JobState.running, 0.6, "still running"))
    client.expect("/sam/progress")
    client.expect("/sam/progress")  # the forwarder has finished the first event, watcher included
    assert watcher.nothing_waiting()
    watcher.close()


class EagerSink(RecordingSink):
    """An engine that reports the new job before `submit` even returns."""

    def submit(self, request: SeparationRequest) -> str:
        job_id = super().submit(request)
        self.emit(JobEvent(job_id, request.tag, JobState.queued, 0.0, "queued"))
        return job_id


def test_accepted_comes_before_the_jobs_first_event(music: Path) -> None:
    sink = EagerSink()
    with running_server(sink, source_roots=(music,), output_roots=(music,)) as server:
        client = OscClient(server.address)
        job_id = submit(client, write_wav(music / "a.wav"))
        assert client.expect("/sam/progress").args[:2] == [job_id, "queued"]
        client.close()


def test_a_burst_of_events_does_not_block_the_engine(client: OscClient, sink: RecordingSink) -> None:
    for i in range(20_000):  # more than the event queue holds: extra ones are dropped, never waited for
        sink.emit(JobEvent(f"nobody-{i}", "", JobState.running, 0.5, "x"))
    assert client.request("/sam/ping", reply="/sam/pong") == [TEST_VERSION, "ok"]


# --- bundles ---

def bundle(*contents: bytes, timetag: float = IMMEDIATELY) -> bytes:
    builder = OscBundleBuilder(timetag)  # type: ignore[arg-type]  # python-osc takes float seconds
    built = b"#bundle\x00" + builder.build().dgram[8:16]
    for content in contents:
        built += len(content).to_bytes(4, "big") + content
    return built


def test_a_bundle_runs_its_messages_in_order(client: OscClient) -> None:
    client.send_raw(bundle(message("/sam/ping"), message("/sam/presets")))
    client.expect("/sam/pong")
    assert client.expect("/sam/presets/list").args == ["piano", "Vocals", "drums"]
    assert client.expect("/sam/presets/end").args == [3]


def test_a_future_timetag_does_not_stall_the_server(client: OscClient) -> None:
    client.send_raw(bundle(message("/sam/ping"), timetag=time.time() + 3600))
    assert client.expect("/sam/pong").args == [TEST_VERSION, "ok"]


def test_a_nested_bundle_is_refused_and_its_messages_not_run(client: OscClient) -> None:
    client.send_raw(bundle(message("/sam/ping"), bundle(message("/sam/presets"))))
    client.expect("/sam/pong")
    key, text = client.expect("/sam/error").args
    assert key == "" and text.startswith("#bundle: bundles inside bundles are not supported")
    client.send("/sam/ping")
    client.expect("/sam/pong")  # no /sam/presets/list came in between


# --- life cycle ---

def test_stop_releases_the_port(sink: RecordingSink) -> None:
    with running_server(sink) as server:
        host, port = server.address
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    again.bind((host, port))  # raises EADDRINUSE if the server still held it
    assert again.getsockname() == (host, port)
    again.close()


def test_a_busy_port_is_a_clear_error(sink: RecordingSink) -> None:
    with running_server(sink) as server:
        second = OscServer(sink, OscSettings(port=server.address[1]), TEST_VERSION)
        with pytest.raises(ConfigError, match="cannot listen") as caught:
            second.start()
        assert "another OSC port" in caught.value.hint


def test_every_reply_fits_python_oscs_buffer(client: OscClient, sink: RecordingSink, music: Path) -> None:
    job_id = submit(client, write_wav(music / "a.wav"))
    long_path = "/" + "deep folder/" * 500 + "stem.wav"  # 6 KB each: three of them cannot all fit
    sink.emit(done_event(job_id, {"target": long_path, "residual": long_path}, long_path))
    client.expect("/sam/progress")
    assert client.expect("/sam/stem").args[2] == long_path  # one fits whole
    client.expect("/sam/stem")
    done = client.expect("/sam/done")
    assert done.size <= MAX_REPLY_BYTES
    assert done.args[0] == job_id and all(a.endswith("…") or a == long_path for a in done.args[1:])


class PythonOscDevice(BlockingOSCUDPServer):
    def handle_timeout(self) -> None:
        raise AssertionError("no datagram arrived within the wait")


def test_python_oscs_own_client_and_server_understand_everything(sink: RecordingSink, music: Path) -> None:
    """A device built on python-osc: SimpleUDPClient sends, a BlockingOSCUDPServer (8 KB buffer,
    drops anything longer) receives on a fixed reply port."""
    received: list[tuple[str, list[Any]]] = []
    dispatcher = Dispatcher()
    dispatcher.set_default_handler(lambda address, *args: received.append((address, list(args))))
    device = PythonOscDevice(("127.0.0.1", 0), dispatcher)
    device.timeout = WAIT
    sink.presets = [f"a rather long preset name number {i}" for i in range(200)]
    source = write_wav(music / "a.wav")
    try:
        with running_server(sink, reply_port=device.server_address[1], source_roots=(music,),
                            output_roots=(music,)) as server:
            sender = SimpleUDPClient(*server.address)
            sender.send_message("/sam/presets", [])
            while not received or received[-1][0] != "/sam/presets/end":
                device.handle_request()
            sender.send_message("/sam/separate", [str(source), "piano", "tag"])
            device.handle_request()
            job_id = received[-1][1][1]
            long_path = "/" + "deep folder/" * 500 + "stem.wav"
            sink.emit(done_event(job_id, {"target": long_path, "residual": long_path}, long_path))
            while received[-1][0] != "/sam/done":
                device.handle_request()
    finally:
        device.server_close()
    names = [name for address, args in received if address == "/sam/presets/list" for name in args]
    assert names == sink.presets
    assert ("/sam/presets/end", [200]) in received
    assert ("/sam/accepted", ["tag", job_id]) in received
    assert [a for a, _ in received[-4:]] == ["/sam/progress", "/sam/stem", "/sam/stem", "/sam/done"]
