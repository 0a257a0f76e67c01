"""The device in a working day: its parameters as Live takes them, sam-bridge not running, a reply port in
use, a project sam-bridge may not read, warped clips and one undo step, the project from the Live Set.
node runs the device's JavaScript with the Max and LOM stand-ins of max_harness.js (which refuse what Live
refuses); the parameter rules are Cycling '74's (tests/daw/live_parameters.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from pythonosc.osc_message import OscMessage

from tests.daw.harness import NODE, free_udp_port, osc_out, status_texts
from tests.daw.live_parameters import HIDDEN, INT, LiveParameter, ParameterError, live_parameters
from tests.daw.test_ableton_device import PATCH, Devices, clip, devices, live_project, live_set, start_job

__all__ = ["devices"]  # the fixture, for pytest

needs_node = pytest.mark.skipif(not NODE, reason="needs node")


# --- item 2 and 6: parameters ------------------------------------------------------------------------


def test_every_parameter_is_one_live_accepts_and_the_ports_hold_any_port() -> None:
    patcher = json.loads(PATCH.read_text(encoding="utf-8"))["patcher"]
    parameters = live_parameters(patcher)
    ports = [p for p in parameters.values() if "port" in p.name.lower()]
    assert {p.name for p in ports} == {"Reply port", "sam-bridge port"}
    for port in ports:
        assert port.hold(65535) == 65535 and port.hold(9011.4) == 9011 and port.hold(80) == 1024
        assert not port.automatable  # stored with the set, never automated


def test_the_parameter_stand_in_refuses_an_int_beyond_255() -> None:
    box = {"id": "obj-port", "maxclass": "live.numbox", "parameter_enable": 1, "saved_attribute_attributes": {
        "valueof": {"parameter_longname": "Listen port", "parameter_type": INT, "parameter_mmin": 1024,
                    "parameter_mmax": 65535}}}
    with pytest.raises(ParameterError, match="0–255"):
        LiveParameter.from_box(box)


def test_buttons_that_start_or_stop_work_cannot_be_automated_or_mapped() -> None:
    patcher = json.loads(PATCH.read_text(encoding="utf-8"))["patcher"]
    parameters = live_parameters(patcher)
    for button in ("obj-separate", "obj-audition", "obj-cancel", "obj-refresh"):
        assert parameters[button].visibility == HIDDEN and not parameters[button].automatable


# --- item 3: sam-bridge not running -----------------------------------------------------------------


@needs_node
def test_without_sam_bridge_the_device_says_so_within_two_seconds_and_when_it_is_back(devices: Devices) -> None:
    device = devices(live_set())
    assert status_texts(device.msg("bang")) == ["Looking for sam-bridge…"]
    first = device.send(cmd="tick", ms=1000)  # 1 s: no answer yet
    assert status_texts(first["outlets"]) == [] and ["/sam/ping"] in osc_out(first["outlets"])
    second = device.send(cmd="tick", ms=1000)  # 2 s
    [down] = status_texts(second["outlets"])
    assert down.startswith("sam-bridge isn't running — start it with  sam-bridge run")
    for _ in range(3):  # it keeps asking, announcing where to answer (a new daemon knows nothing)
        again = osc_out(device.send(cmd="tick", ms=1000)["outlets"])
        assert again[-1] == ["/sam/ping"] and ["/sam/reply_to", 9011] in again
    back = device.msg("/sam/pong", "0.2.0")
    assert status_texts(back) == ["sam-bridge is back (0.2.0)."]
    assert ["/sam/presets"] in osc_out(back)  # and the menu is filled again
    quiet = device.send(cmd="tick", ms=1000)
    assert status_texts(quiet["outlets"]) == [] and osc_out(quiet["outlets"]) == [["/sam/ping"]]


# --- item 4: ports ----------------------------------------------------------------------------------


def _taken_port_with_a_free_neighbour() -> tuple[socket.socket, int]:
    for _ in range(50):
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind(("127.0.0.1", 0))
        port = int(squatter.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                squatter.close()
                continue
        return squatter, port
    raise AssertionError("no free port pair")


@needs_node
def test_a_reply_port_in_use_gives_way_to_the_next_and_the_send_port_is_a_setting(devices: Devices) -> None:
    """A second device (or any program) holds the reply port: [udpreceive] cannot bind it and says nothing.
    The device's probe does not come back, so it listens on the next port and announces that one."""
    squatter, taken = _taken_port_with_a_free_neighbour()
    with squatter, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon:
        daemon.bind(("127.0.0.1", 0))
        daemon.settimeout(5)
        device = devices(live_set())
        device.send(cmd="osc_connect", daemon_port=0, listen_port=free_udp_port())
        device.msg("sendport", daemon.getsockname()[1])  # the "sam-bridge port" box: where sam-bridge listens
        device.msg("port", taken)
        device.send(cmd="settle")
        assert OscMessage(squatter.recvfrom(65536)[0]).address == "/sam/probe"  # the other program got it
        moved = device.send(cmd="tick", ms=500)  # the probe did not come back in time
        assert [o for o in moved["outlets"] if o[0] == 4] == [[4, "port", taken + 1]]
        assert device.send(cmd="wait", address="/sam/probe", timeout=5)["found"]
        seen = []
        while ["/sam/reply_to", [taken + 1]] not in seen:
            message = OscMessage(daemon.recvfrom(65536)[0])
            seen.append([message.address, message.params])
        assert ["/sam/reply_to", [taken]] in seen  # first announced optimistically, then corrected
    state = device.state()
    assert state["device"]["listenPort"] == taken + 1
    assert any(f"unable to bind to port {taken}" in p for p in state["posts"])  # what Max's window shows
    texts = [str(o[2]) for o in device.send(cmd="settle")["outlets"] if o[0] == 3]
    assert texts == [] or "listening on" in texts[-1]


# --- item 5: a project sam-bridge may not read -----------------------------------------------------


@needs_node
def test_a_refused_project_folder_shows_the_exact_fix(devices: Devices, tmp_path: Path) -> None:
    project = live_project(tmp_path / "Volumes" / "Studio SSD")
    source = project / "Samples" / "Recorded" / "take.wav"
    device = devices(live_set(clip(file_path=str(source))))
    device.msg("text", "piano")
    [_, _, separate] = osc_out(device.msg("separate"))
    refusal = (f"/sam/separate: The file {source} is outside the folders sam-bridge may read "
               f"({Path.home()}).")
    [text] = status_texts(device.msg("/sam/error", separate[3], refusal))
    assert text == (f'Lead Vox: sam-bridge may not use this project\'s folder. To allow it, run in a terminal:  '
                    f'sam-bridge allow "{project}"  then restart sam-bridge.')
    assert refusal in device.state()["posts"][-1]  # the daemon's own words go to the Max window


# --- item 7: clip settings and one undo step --------------------------------------------------------

MARKERS = [{"beat_time": 0.0, "sample_time": 0.2}, {"beat_time": 4.0, "sample_time": 1.8},
           {"beat_time": 8.0, "sample_time": 3.5}, {"beat_time": 16.0, "sample_time": 7.1}]


@needs_node
def test_stems_get_the_source_clips_gain_pitch_and_warp_in_one_undo_step(devices: Devices) -> None:
    source = clip(warping=1, loop_start=4.0, loop_end=12.0, seconds_per_beat=0.4, gain=0.7, pitch_coarse=-3,
                  pitch_fine=12.5, warp_mode=4, markers=MARKERS)
    device = devices(live_set(source))
    start_job(device)  # region: 1.6 s to 4.8 s of the file
    device.msg("/sam/done", "job-7", "/s/t.wav", "/s/r.wav", "")
    live = device.state()["live"]
    assert live["errors"] == []
    for track in live["tracks"][2:4]:
        [stem] = track["arrangement_clips"]
        assert (stem["gain"], stem["pitch_coarse"], stem["pitch_fine"]) == (0.7, -3, 12.5)
        assert stem["warping"] == 1 and stem["warp_mode"] == 4
        shifted = [(m["beat_time"], round(m["sample_time"], 9)) for m in stem["markers"]]
        assert shifted == [(4.0, 0.2), (8.0, 1.9)]  # in the stem's own file time; the others fall outside
    assert live["undo_steps"] == 1  # one Cmd-Z takes it all back
    edits = [c["fn"] for c in live["calls"] if c["fn"] != "beat_to_sample_time"]
    assert edits[0] == "begin_undo_step" and edits[-1] == "end_undo_step"


@needs_node
def test_without_undo_grouping_in_this_live_stems_are_still_placed(devices: Devices) -> None:
    device = devices(live_set(clip(), capabilities={"undo_steps": False}))
    start_job(device)
    device.msg("/sam/done", "job-7", "/s/t.wav", "/s/r.wav", "")
    live = device.state()["live"]
    assert live["errors"] == [] and live["undo_steps"] > 1
    assert [t["name"] for t in live["tracks"]][2:4] == ['Vox · "piano" (target)', 'Vox · "piano" (residual)']


@needs_node
def test_the_lom_stand_in_refuses_what_live_refuses(devices: Devices) -> None:
    device = devices(live_set(clip()))
    code = """
      const clip = new LiveAPI("live_set view detail_clip");
      clip.set("file_path", "/elsewhere.wav");   // read-only
      clip.set("gain", 1.5);                      // beyond 0..1
      clip.set("warp_mode", 5);                   // REX: not settable
      clip.call("add_warp_marker", {beat_time: 1}); // the clip is not warped
      new LiveAPI("live_set").call("create_audio_track");  // its index is missing
      clip.call("sample_to_beat_time", 48000);    // the clip is not warped
      new LiveAPI("live_set").set("tempo", 1200); // beyond 20..999
      return live.errors;
    """
    errors = device.send(cmd="eval", code=code)["value"]
    assert len(errors) == 7, errors
    assert "read-only" in errors[0] and "above 1" in errors[1]
    assert "not warped" in errors[5] and "above 999" in errors[6]


@needs_node
def test_the_lom_stand_in_refuses_clips_and_tracks_live_refuses(devices: Devices) -> None:
    """The LOM reference: create_audio_track's index is 0 … len(tracks) or -1 (the end); create_audio_clip wants
    an absolute path, an arrangement position within [0., 1576800.], and an empty slot."""
    device = devices(live_set(clip()))
    code = """
      const song = new LiveAPI("live_set");
      const before = live.song.tracks.length;
      song.call("create_audio_track", 99);                              // beyond the tracks
      song.call("create_audio_track", -2);                              // only -1 means the end
      const track = new LiveAPI("live_set tracks 0");
      track.call("create_audio_clip", "stems/t.wav", 0.0);               // not an absolute path
      track.call("create_audio_clip", "/s/t.wav", -4.0);                 // before the start
      track.call("create_audio_clip", "/s/t.wav", 2000000.0);            // past 1576800
      const slot = new LiveAPI("live_set tracks 0 clip_slots 3");
      slot.call("create_audio_clip", "/s/t.wav");                        // fine: the slot was empty
      slot.call("create_audio_clip", "/s/r.wav");                        // it holds a clip now
      song.call("create_audio_track", -1);                               // fine: at the end
      return {errors: live.errors, added: live.song.tracks.length - before};
    """
    value = device.send(cmd="eval", code=code)["value"]
    errors = value["errors"]
    assert len(errors) == 6, errors
    assert "out of range" in errors[0] and "out of range" in errors[1]
    assert "not absolute" in errors[2] and "1576800" in errors[3] and "1576800" in errors[4]
    assert "not empty" in errors[5]
    assert value["added"] == 1  # only the -1 made a track


@needs_node
def test_the_devices_own_timers_run_on_maxs_task(devices: Devices) -> None:
    """The device's timers (the port probe, the watchdog, the cost confirmation) are made by its own Max code
    (`maxRepeat`: a Task with `interval` and `repeat(-1, initialdelay)`), not by a test shortcut, and the
    stand-in of Task refuses what Max's would not run."""
    device = devices(live_set(clip()))
    device.send(cmd="eval", code="""
      const real = global.Task;
      global.madeTasks = [];
      global.Task = class extends real { constructor(...a) { super(...a); global.madeTasks.push(this); } };
    """)
    device.msg("bang")  # probes the daemon's port: a timer for its answer
    made = device.send(cmd="eval", code="return global.madeTasks.map((t) => [t.interval, t.running]);")["value"]
    assert made and all(interval > 0 and running for interval, running in made), made
    assert device.send(cmd="tick", n=1, dt=0.05)["timers"] >= 1  # Max's scheduler runs them
    refused = device.send(cmd="eval", code="""
      const task = new Task(function () {}, null);
      task.interval = 0;
      try { task.repeat(-1, 0); return "started"; } catch (e) { return String(e.message); }
    """)["value"]
    assert "interval" in refused


# --- item 8: the project from the Live Set ----------------------------------------------------------


def _set_with_an_uncollected_sample(tmp_path: Path, song_path: bool) -> tuple[dict[str, Any], Path, Path]:
    ours, theirs = live_project(tmp_path / "a", "Our Project"), live_project(tmp_path / "b", "Old Project")
    scenario = live_set(clip(file_path=str(theirs / "Samples" / "Recorded" / "loop.wav")),
                        capabilities={"song_file_path": song_path})
    scenario["live"]["set_path"] = str(ours / "My Set.als")
    return scenario, ours, theirs


@needs_node
def test_the_project_comes_from_the_live_set_when_the_lom_gives_it(devices: Devices, tmp_path: Path) -> None:
    scenario, ours, _ = _set_with_an_uncollected_sample(tmp_path, song_path=True)
    device = devices(scenario)
    assert ["/sam/presets", str(ours / "Samples" / "Processed")] in osc_out(device.msg("bang"))
    device.msg("text", "piano")
    separate = osc_out(device.msg("separate"))[-1]
    assert separate[4] == str(ours / "Samples" / "Processed")


@needs_node
def test_without_the_sets_path_the_clips_project_is_the_fallback(devices: Devices, tmp_path: Path) -> None:
    scenario, _, theirs = _set_with_an_uncollected_sample(tmp_path, song_path=False)
    device = devices(scenario)
    assert ["/sam/presets", str(theirs / "Samples" / "Processed")] in osc_out(device.msg("bang"))
    assert device.state()["live"]["errors"] == []  # Song.file_path was not asked where Live has none
