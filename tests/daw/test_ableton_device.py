"""The Max for Live device: the patcher is a valid Max patch wired to its JavaScript; the JavaScript's
logic runs under node with stand-ins for Max and the Live Object Model; its OSC goes over real UDP, to a
socket that checks it against the daemon's own argument rules, and (the daemon section) to the real
daemon, which must answer and produce stems that the device places on new tracks."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from pythonosc.osc_message import OscMessage

from bridge.osc.addresses import REQUESTS_BY_NAME, validate_args
from tests.daw.harness import ABLETON_DIR, NODE, MaxDevice, free_udp_port, osc_out, status_texts

pytestmark = pytest.mark.skipif(not NODE, reason="needs node")

PATCH = ABLETON_DIR / "sam-bridge.maxpat"
DEVICE_JS = ABLETON_DIR / "sam_bridge_device.js"
UNICODE = "Stimme – 声 🎤"
PROMPT_ITEM = "Describe it below ↓"


# --- the patcher ----------------------------------------------------------------------------------


def patch_boxes() -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    patcher = json.loads(PATCH.read_text(encoding="utf-8"))["patcher"]
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    lines = [line["patchline"] for line in patcher["lines"]]
    return boxes, lines


def test_patcher_is_valid_json_that_loads_the_device_script() -> None:
    patcher = json.loads(PATCH.read_text(encoding="utf-8"))["patcher"]
    boxes, _ = patch_boxes()
    [js] = [b for b in boxes.values() if b.get("text", "").startswith("js ")]
    assert js["text"] == f"js {DEVICE_JS.name}"
    assert DEVICE_JS.name in [d["name"] for d in patcher["dependency_cache"]]
    declared = re.search(r"^outlets = (\d+);", DEVICE_JS.read_text(encoding="utf-8"), re.M)
    assert declared
    outlets = int(declared.group(1))
    assert js["numoutlets"] == outlets == 7
    texts = {b.get("text", "") for b in boxes.values()}
    assert {"udpsend 127.0.0.1 9010", "udpreceive 9011", "live.thisdevice", "plugin~", "plugout~"} <= texts


def test_patch_lines_connect_existing_boxes_and_ports() -> None:
    boxes, lines = patch_boxes()
    assert lines
    for line in lines:
        (source, outlet), (destination, inlet) = line["source"], line["destination"]
        assert source in boxes and destination in boxes, line
        assert 0 <= outlet < boxes[source]["numoutlets"], line
        assert 0 <= inlet < boxes[destination]["numinlets"], line

    def feeds(src: str, dst: str) -> bool:
        return any(line["source"][0] == src and line["destination"][0] == dst for line in lines)

    by_text = {b.get("text", ""): i for i, b in boxes.items()}
    js = by_text["js sam_bridge_device.js"]
    assert feeds(js, by_text["udpsend 127.0.0.1 9010"])
    assert feeds(by_text["udpreceive 9011"], by_text["deferlow"]) and feeds(by_text["deferlow"], js)
    assert feeds(by_text["plugin~"], by_text["plugout~"])  # the track's audio passes through untouched
    assert feeds(by_text["live.thisdevice"], js)


def test_every_message_the_patch_sends_the_script_has_a_function_for() -> None:
    boxes, lines = patch_boxes()
    js_id = next(i for i, b in boxes.items() if b.get("text", "").startswith("js "))
    selectors = set()
    for line in lines:
        if line["destination"][0] != js_id:
            continue
        box = boxes[line["source"][0]]
        text = box.get("text", "")
        if box["maxclass"] == "message":
            selectors.add(text.split()[0])
        elif text.startswith("prepend "):
            selectors.add(text.split()[1])
    assert selectors == {"separate", "audition", "cancel", "refresh", "port", "sendport", "presetindex", "deactivate"}
    source = DEVICE_JS.read_text(encoding="utf-8")
    for selector in selectors | {"bang", "text", "anything", "notifydeleted"}:
        assert re.search(rf"^function {selector}\(", source, re.M), selector


def test_the_device_script_is_es5_for_maxs_js_object() -> None:
    probe = subprocess.run([NODE or "node", "-e", "require('acorn')"], capture_output=True,
                           env={"NODE_PATH": "/usr/share/nodejs"})
    if probe.returncode != 0:
        pytest.skip("acorn is not installed (apt-get install node-acorn)")
    check = ("const a = require('acorn'); const fs = require('fs');"
             "a.parse(fs.readFileSync(process.argv[1], 'utf8'), {ecmaVersion: 5});")
    done = subprocess.run([NODE or "node", "-e", check, str(DEVICE_JS)], capture_output=True, text=True,
                          env={"NODE_PATH": "/usr/share/nodejs"})
    assert done.returncode == 0, done.stderr
    modern = subprocess.run([NODE or "node", "-e", check, "/dev/stdin"], input="let x = () => 1;",
                            capture_output=True, text=True, env={"NODE_PATH": "/usr/share/nodejs"})
    assert modern.returncode != 0  # the check does catch ES6


def test_timers_first_fire_after_their_interval_in_max() -> None:
    """Max's Task (js reference, "The Task Object"): repeat(number, initialdelay) repeats until cancelled when
    number is negative or absent; initialdelay is the delay until the first iteration. Read strictly, no
    initialdelay is no delay: the stand-in Task runs the first iteration at once then, as Max may."""
    script = """
    global.post = () => {}; global.outlet = () => {}; global.messagename = "";
    global.LiveAPI = function () {};
    const calls = [];
    global.Task = function (fn) { this.fn = fn; this.interval = 500; };
    global.Task.prototype.repeat = function (count, initialdelay) {
      calls.push([count === undefined ? null : count, initialdelay === undefined ? null : initialdelay]);
      if (initialdelay === undefined || initialdelay <= 0) this.fn();  // the first iteration: now
    };
    global.Task.prototype.cancel = function () {};
    const device = require(process.argv[1]);
    let fired = 0;
    device.maxRepeat(1500, () => { fired += 1; });
    console.log(JSON.stringify({ fired, calls }));
    """
    done = subprocess.run([NODE or "node", "-e", script, str(DEVICE_JS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["fired"] == 0  # the port probe's 1.5 s timeout did not go off before any answer could come
    [[count, delay]] = result["calls"]
    assert (count is None or count < 0) and delay == 1500


def test_readme_explains_saving_as_amxd_and_where_answers_go() -> None:
    readme = (ABLETON_DIR / "README.md").read_text(encoding="utf-8")
    for words in ("sam-bridge.amxd", "sam-bridge ableton install", "build_amxd.py", "/sam/reply_to",
                  "sam_bridge_device.js", "sam-bridge allow"):
        assert words in readme


def test_readme_and_script_say_where_an_audition_comes_from_as_the_daemon_does_it() -> None:
    """sam-bridge auditions the loudest window of the part (bridge/osc/addresses.py's `audition`) and the device
    places the stems from /sam/part (stemRegion), as the main README's Live section says: not the clip's first
    seconds at the clip's position."""
    readme = " ".join((ABLETON_DIR / "README.md").read_text(encoding="utf-8").split())
    audition = readme[readme.index("**Audition** does"):]
    audition = audition[:audition.index("4. ")]
    assert "loudest" in audition and "/sam/part" in audition and "from its start" not in audition
    assert "at the clip's position" not in audition
    source = DEVICE_JS.read_text(encoding="utf-8")
    comment = source[source.rindex("/**", 0, source.index("function audition(")):source.index("function audition(")]
    assert "loudest" in comment and "/sam/part" in comment and "clip's start" not in comment


# --- the device logic on stand-ins ----------------------------------------------------------------


def clip(**fields: Any) -> dict[str, Any]:
    """A clip as the LOM shows it: one that does not loop has its start and end in loop_start/loop_end
    (its end_marker may be anything)."""
    return {"name": "Lead Vox", "file_path": "/nowhere/vox.wav", "warping": 0, "looping": 0, "start_marker": 1.25,
            "end_marker": 9.0, "loop_start": 1.25, "loop_end": 5.75, "start_time": 16.0, "sample_rate": 48000,
            "seconds_per_beat": 0.5, **fields}


def live_set(detail_clip: dict[str, Any] | None = None, session: bool = False,
             capabilities: dict[str, bool] | None = None) -> dict[str, Any]:
    tracks: list[dict[str, Any]] = [
        {"name": "Drums", "clip_slots": [None, None, None, None]},
        {"name": "Vox", "clip_slots": [None, None, None, None], "arrangement_clips": []},
        {"name": "Bass", "clip_slots": [None, None, None, None]},
    ]
    detail: dict[str, Any] = {}
    if detail_clip is not None:
        if session:
            tracks[1]["clip_slots"][2] = detail_clip
            detail = {"track": 1, "slot": 2}
        else:
            tracks[1]["arrangement_clips"] = [detail_clip]
            detail = {"track": 1, "arrangement": 0}
    live: dict[str, Any] = {"tracks": tracks, "detail": detail or None}
    if capabilities:
        live["capabilities"] = capabilities
    return {"live": live}


class Devices:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[MaxDevice] = []

    def __call__(self, scenario: dict[str, Any]) -> MaxDevice:
        device = MaxDevice(scenario, self.tmp_path)
        self.started.append(device)
        return device


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[Devices]:
    d = Devices(tmp_path)
    yield d
    for device in d.started:
        device.close()


def with_presets(device: MaxDevice, *names: str) -> list[list[Any]]:
    device.msg("/sam/presets/list", *names[:2])
    device.msg("/sam/presets/list", *names[2:])
    return device.msg("/sam/presets/end", len(names))


def separate_now(device: MaxDevice, cost: float = 0.0075) -> list[list[Any]]:
    """Separate, and sam-bridge's answer to the /sam/estimate the device asks first (below confirm_above):
    everything the device put out."""
    outlets = device.msg("separate")
    asked = osc_out(outlets)[-1]
    assert asked[0] == "/sam/estimate", asked
    return outlets + device.msg("/sam/estimate/ok", asked[3], 4.5, 1, cost, "USD", 1.0, 0, -1.0)


def live_project(root: Path, name: str = f"My Set {UNICODE} Project") -> Path:
    project = root / name
    (project / "Ableton Project Info").mkdir(parents=True)
    (project / "Samples" / "Recorded").mkdir(parents=True)
    (project / "My Set.als").write_bytes(b"")
    return project


def test_init_subscribes_and_asks_for_presets(devices: Devices) -> None:
    device = devices(live_set())
    outlets = device.msg("bang")
    assert osc_out(outlets) == [["/sam/reply_to", 9011], ["/sam/subscribe", 9011], ["/sam/presets"], ["/sam/ping"]]
    assert status_texts(outlets) == ["Looking for sam-bridge…"]


def test_preset_list_fills_the_menu_and_keeps_the_choice(devices: Devices) -> None:
    device = devices(live_set())
    device.msg("/sam/pong", "0.1.0")
    outlets = with_presets(device, "piano", "lead vocal", "drums")
    menu = [o[1:] for o in outlets if o[0] == 1]
    assert menu == [["clear"], ["append", PROMPT_ITEM], ["append", "piano"], ["append", "lead vocal"],
                    ["append", "drums"], ["set", 0]]
    assert status_texts(outlets) == ["Connected to sam-bridge 0.1.0: 3 presets."]
    device.msg("presetindex", 3)
    outlets = with_presets(device, "bass", "drums")  # refreshed: "drums" moved but stays chosen
    assert [o[1:] for o in outlets if o[0] == 1][-1] == ["set", 2]
    assert device.state()["device"]["presetIndex"] == 2


def test_the_menu_lists_the_selected_clips_live_project_presets_and_follows_the_selection(
        devices: Devices, tmp_path: Path) -> None:
    """The daemon lists a Live Set's own presets for its project folder, the same folder /sam/separate
    names: the device asks for the selected clip's, and again when a clip of another project is selected."""
    first, second = live_project(tmp_path / "a", "First Project"), live_project(tmp_path / "b", "Second Project")
    files = [first / "Samples" / "Recorded" / "one.wav", first / "Samples" / "Recorded" / "two.wav",
             second / "Samples" / "Recorded" / "three.wav", tmp_path / "loose.wav"]
    slots = [clip(name=f.stem, file_path=str(f)) for f in files]
    scenario = {"live": {"tracks": [{"name": "Vox", "clip_slots": slots},
                                    {"name": "Keys", "clip_slots": [clip(is_audio_clip=0), None, None, None]}],
                         "detail": {"track": 0, "slot": 0}}}
    device = devices(scenario)
    device.msg("/sam/pong", "0.1.0")
    asked = osc_out(device.msg("bang"))
    assert ["/sam/presets", str(first / "Samples" / "Processed")] in asked
    outlets = with_presets(device, "piano", "Gig Whistle")
    assert status_texts(outlets) == ["Connected to sam-bridge 0.1.0: 2 presets for First Project."]
    assert device.state()["device"]["observers"] == ["live_set view detail_clip"]

    def select(**where: Any) -> list[list[Any]]:
        return osc_out(device.send(cmd="select", **where)["outlets"])

    assert select(track=0, slot=1) == []  # the same project: the menu stands
    assert select(track=0, slot=2) == [["/sam/presets", str(second / "Samples" / "Processed")]]
    assert select(none=True) == [] and select(track=1, slot=0) == []  # no clip, a MIDI clip: it stands
    assert select(track=0, slot=3) == [["/sam/presets"]]  # outside any project: the shared presets
    outlets = with_presets(device, "piano")
    assert status_texts(outlets) == ["Connected to sam-bridge 0.1.0: 1 preset."]
    assert osc_out(device.msg("refresh"))[2] == ["/sam/presets"]  # the same selection, asked afresh
    assert device.state()["device"]["observers"] == ["live_set view detail_clip"]  # still one observer
    device.msg("notifydeleted")
    assert device.state()["device"]["observers"] == []
    assert select(track=0, slot=0) == []


def test_a_project_sam_bridge_refused_is_not_said_to_have_its_presets_listed(
        devices: Devices, tmp_path: Path) -> None:
    """The daemon lists the shared presets for a project outside its allowed folders and says so with
    /sam/presets/refused (before /sam/presets/end): the device says the menu holds the shared ones only, why,
    and how to allow the project, never "N presets for <project>"."""
    project = live_project(tmp_path / "SSD", "Gig Project")
    take = project / "Samples" / "Recorded" / "take.wav"
    device = devices({"live": {"tracks": [{"name": "Vox", "clip_slots": [clip(file_path=str(take))]}],
                               "detail": {"track": 0, "slot": 0}}})
    device.msg("/sam/pong", "0.1.0")
    processed = str(project / "Samples" / "Processed")
    assert ["/sam/presets", processed] in osc_out(device.msg("bang"))
    why = (f"Its own presets were not read: The project folder {processed} is outside the folders sam-bridge may "
           f"write stems to (~). Use a project folder inside one of those, or allow this one:  "
           f'sam-bridge allow "{project}"')
    device.msg("/sam/presets/refused", processed, why)
    outlets = with_presets(device, "piano", "drums")
    assert status_texts(outlets) == [f"Connected to sam-bridge 0.1.0: 2 presets, the shared ones only — Gig Project: "
                                     f"{why}, then restart sam-bridge."]
    assert device.state()["posts"][-1] == f"sam-bridge: {why}"
    outlets = with_presets(device, "piano", "drums")  # asked again, and read this time (allowed meanwhile)
    assert status_texts(outlets) == ["Connected to sam-bridge 0.1.0: 2 presets for Gig Project."]


def test_the_device_says_what_is_wrong_when_sam_bridge_answers_but_is_not_well(devices: Devices) -> None:
    """/sam/pong's health word (bridge/osc/addresses.py): when it is not `ok` the device does not say
    "Connected" but what sam-bridge reports, once when it changes (the pings come every second), and that it
    is well again when it is."""
    device = devices(live_set())
    device.msg("bang")
    assert status_texts(device.msg("/sam/pong", "0.2.0", "ok")) == []
    damaged = "sam-bridge 0.2.0 is running but not well: journal damaged (its log says more)."
    assert status_texts(device.msg("/sam/pong", "0.2.0", "journal-damaged")) == [damaged]
    assert status_texts(device.msg("/sam/pong", "0.2.0", "journal-damaged")) == []  # said once
    assert status_texts(with_presets(device, "piano")) == [f"{damaged} 1 preset."]  # not "Connected"
    unreachable = "sam-bridge 0.2.0 is running but not well: requests folder unreachable (its log says more)."
    assert status_texts(device.msg("/sam/pong", "0.2.0", "requests-folder-unreachable")) == [unreachable]
    assert status_texts(device.msg("/sam/pong", "0.2.0", "ok")) == ["sam-bridge 0.2.0 is well again."]
    assert status_texts(with_presets(device, "piano")) == ["Connected to sam-bridge 0.2.0: 1 preset."]


def test_separate_sends_the_clip_region_and_the_projects_stems_folder(devices: Devices, tmp_path: Path) -> None:
    project = live_project(tmp_path)
    source = project / "Samples" / "Recorded" / f"{UNICODE} take 1.wav"
    source.write_bytes(b"")
    device = devices(live_set(clip(file_path=str(source))))
    with_presets(device, "piano", "vocals")
    device.msg("presetindex", 2)
    outlets = separate_now(device)
    reply_to, subscribe, estimate, separate = osc_out(outlets)
    assert (reply_to, subscribe) == (["/sam/reply_to", 9011], ["/sam/subscribe", 9011])
    assert separate == ["/sam/separate", str(source), "vocals", "live-1700000000000-1",
                        str(project / "Samples" / "Processed"), "1.25", "4.5"]
    assert estimate == ["/sam/estimate", *separate[1:]]  # the cost of exactly that, first
    assert [o for o in outlets if o[0] == 2] == [[2, 0]]
    assert status_texts(outlets) == ["Asking sam-bridge what Lead Vox · vocals would cost…",
                                     "Sent Lead Vox · vocals to sam-bridge (about $0.01)…"]


def test_a_clip_outside_any_project_gets_its_stems_beside_the_source(devices: Devices, tmp_path: Path) -> None:
    device = devices(live_set(clip(file_path=str(tmp_path / "loose.wav"))))
    device.msg("text", "breathy", "vocal")
    separate = osc_out(separate_now(device))[-1]
    assert separate[2] == "breathy vocal" and separate[4] == ""


def test_prompt_arrives_with_or_without_the_text_selector(devices: Devices) -> None:
    device = devices(live_set(clip()))
    device.msg("distorted", "guitar,", "loud")  # [textedit] output without "text": Max calls anything()
    assert device.state()["device"]["prompt"] == "distorted guitar, loud"
    device.msg("text")
    assert device.state()["device"]["prompt"] == ""
    outlets = device.msg("separate")
    assert osc_out(outlets) == []
    assert "Pick a preset" in status_texts(outlets)[0]


@pytest.mark.parametrize(("scenario", "expected"), [
    (live_set(None), "Select an audio clip first"),
    (live_set(clip(is_audio_clip=0)), "That is a MIDI clip"),
    (live_set(clip(file_path="")), "no audio file on disk"),
    (live_set(clip(loop_start=3.0, loop_end=3.0, end_marker=3.0)), "Could not read where this clip starts"),
])
def test_separate_explains_what_is_missing(devices: Devices, scenario: dict[str, Any], expected: str) -> None:
    device = devices(scenario)
    device.msg("text", "piano")
    outlets = device.msg("separate")
    assert osc_out(outlets) == []
    assert expected in status_texts(outlets)[0]


def test_a_warped_clip_is_separated_at_once_from_its_file_region(devices: Devices) -> None:
    device = devices(live_set(clip(warping=1, loop_start=4.0, loop_end=12.0, seconds_per_beat=0.4)))
    device.msg("text", "piano")
    separate = osc_out(separate_now(device))[-1]
    assert separate[5:] == ["1.6", "3.2"]  # beats -> seconds via beat_to_sample_time


def test_a_looping_clip_sends_start_marker_to_loop_end(devices: Devices) -> None:
    device = devices(live_set(clip(looping=1, start_marker=2.0, loop_start=1.0, loop_end=6.0, end_marker=9.0)))
    device.msg("text", "piano")
    separate = osc_out(separate_now(device))[-1]
    assert separate[5:] == ["2", "4"]


def test_start_and_length_keep_every_digit_far_into_a_long_file(devices: Devices) -> None:
    """As OSC float32, 754.123456789 s would arrive as 754.1234741 s: 0.9 samples late at 48 kHz."""
    device = devices(live_set(clip(loop_start=754.123456789, loop_end=760.5)))
    device.msg("text", "piano")
    separate = osc_out(separate_now(device))[-1]
    assert separate[5:] == ["754.123456789", "6.376543211"]
    values = validate_args(REQUESTS_BY_NAME["separate"], separate[1:])
    assert values["start"] == 754.123456789 and values["length"] == 6.376543211
    assert abs(float(np.float32(754.123456789)) - 754.123456789) * 48000 > 0.5  # what a float would do


def test_folders_are_listed_in_maxs_path_syntax(devices: Devices) -> None:
    device = devices(live_set())
    to_max = "return device.maxPath({!r})"
    assert device.send(cmd="eval", code=to_max.format("C:\\Users\\me\\Music\\Set Project"))["value"] \
        == "C:/Users/me/Music/Set Project"
    assert device.send(cmd="eval", code=to_max.format("/Users/me/Music"))["value"] == "/Users/me/Music"


def start_job(device: MaxDevice) -> str:
    device.msg("text", "piano")
    separate = osc_out(separate_now(device))[-1]
    tag = str(separate[3])
    device.msg("/sam/accepted", tag, "job-7")
    return tag


def test_progress_events_update_the_bar_and_status_and_ignore_other_jobs(devices: Devices) -> None:
    device = devices(live_set(clip()))
    start_job(device)
    outlets = device.msg("/sam/progress", "job-7", "running", 0.45, "separating on fal")
    assert [o for o in outlets if o[0] == 2] == [[2, 0.45]]
    assert status_texts(outlets) == ["Lead Vox: separating 45% — separating on fal"]
    assert device.msg("/sam/progress", "someone-elses-job", "running", 0.9, "") == []
    assert device.msg("/sam/unknown", 1) == [] and device.msg("/other/progress", "job-7") == []


def test_while_a_job_is_open_the_device_says_again_where_to_answer(devices: Devices) -> None:
    """A daemon restart forgets the reply port and the subscription but resumes the job: announcing
    again every few seconds lets its later events reach the device."""
    device = devices(live_set(clip()))
    idle = device.send(cmd="tick", ms=5000)
    assert idle["timers"] == 0 and osc_out(idle["outlets"]) == []
    start_job(device)
    for _ in range(2):
        tick = device.send(cmd="tick", ms=5000)
        assert osc_out(tick["outlets"]) == [["/sam/reply_to", 9011], ["/sam/subscribe", 9011]]
        assert tick["timers"] == 1
    device.msg("/sam/error", "job-7", "The service failed.")  # the job ends
    after = device.send(cmd="tick", ms=5000)
    assert after["timers"] == 0 and osc_out(after["outlets"]) == []


def test_done_puts_stems_on_new_tracks_next_to_the_source(devices: Devices) -> None:
    device = devices(live_set(clip()))
    start_job(device)
    for label in ("vocals", "drums", "bass", "other"):
        device.msg("/sam/stem", "job-7", label, f"/stems/Lead - {label}.wav")
    outlets = device.msg("/sam/done", "job-7", "/stems/Lead - vocals.wav", "/stems/Lead - other.wav", "/m.json")
    assert [o for o in outlets if o[0] == 2] == [[2, 1]]
    assert status_texts(outlets) == ["Stems of Lead Vox are on 4 new tracks."]
    state = device.state()
    tracks = state["live"]["tracks"]
    assert [t["name"] for t in tracks] == ["Drums", "Vox", 'Vox · "piano" (vocals)', 'Vox · "piano" (drums)',
                                           'Vox · "piano" (bass)', 'Vox · "piano" (other)', "Bass"]
    for track, label in zip(tracks[2:6], ("vocals", "drums", "bass", "other"), strict=True):
        [placed] = track["arrangement_clips"]
        assert placed["file_path"] == f"/stems/Lead - {label}.wav"
        assert placed["start_time"] == 16.0 and placed["warping"] == 0 and placed["name"] == label
    assert tracks[1]["arrangement_clips"][0]["muted"] == 1  # the source clip is deactivated
    assert state["device"]["openJobs"] == [] and state["live"]["errors"] == []


def test_done_in_session_view_fills_the_same_scene(devices: Devices) -> None:
    device = devices(live_set(clip(), session=True))
    device.msg("deactivate", 0)
    start_job(device)
    device.msg("/sam/done", "job-7", "/s/t.wav", "/s/r.wav", "")
    tracks = device.state()["live"]["tracks"]
    assert [t["name"] for t in tracks][2:4] == ['Vox · "piano" (target)', 'Vox · "piano" (residual)']
    assert [s and s["file_path"] for s in tracks[2]["clip_slots"]] == [None, None, "/s/t.wav", None]
    assert tracks[3]["clip_slots"][2]["file_path"] == "/s/r.wav"
    assert tracks[1]["clip_slots"][2]["muted"] == 0  # deactivation switched off


def test_stems_follow_the_source_track_when_tracks_moved_meanwhile(devices: Devices) -> None:
    device = devices(live_set(clip()))
    start_job(device)
    device.send(cmd="delete_track", index=0)  # the source track is now the first
    device.msg("/sam/done", "job-7", "/s/t.wav", "/s/r.wav", "")
    names = [t["name"] for t in device.state()["live"]["tracks"]]
    assert names == ["Vox", 'Vox · "piano" (target)', 'Vox · "piano" (residual)', "Bass"]


def test_older_live_shows_where_the_stems_are(devices: Devices) -> None:
    device = devices(live_set(clip(), capabilities={"track_create_audio_clip": False}))
    start_job(device)
    outlets = device.msg("/sam/done", "job-7", "/s/Lead - piano.target.wav", "/s/Lead - piano.residual.wav", "")
    assert "Stems ready in /s" in status_texts(outlets)[0]
    state = device.state()
    assert len(state["live"]["tracks"]) == 3  # no empty tracks left behind
    assert "/s/Lead - piano.residual.wav" in state["posts"][0]


def test_errors_reach_the_status_line(devices: Devices) -> None:
    device = devices(live_set(clip()))
    tag = start_job(device)
    outlets = device.msg("/sam/error", "job-7", "The audio file could not be read.")
    assert status_texts(outlets) == ["Lead Vox: The audio file could not be read."]
    assert [o for o in outlets if o[0] == 2] == [[2, 0]]
    device.msg("text", "piano")
    separate = osc_out(separate_now(device))[-1]
    outlets = device.msg("/sam/error", separate[3], "/sam/separate: outside the allowed folders")
    assert status_texts(outlets) == ["Lead Vox: /sam/separate: outside the allowed folders"]
    assert device.state()["device"]["openTags"] == [] and tag != separate[3]


def test_cancel_sends_the_job_id(devices: Devices) -> None:
    device = devices(live_set(clip()))
    start_job(device)
    outlets = device.msg("cancel")
    assert osc_out(outlets) == [["/sam/cancel", "job-7"]]
    assert status_texts(device.msg("/sam/error", "job-7", "Cancelled."))[0] == "Lead Vox: Cancelled."
    assert status_texts(device.msg("cancel")) == ["Nothing to cancel."]


def test_changing_the_reply_port_moves_udpreceive_and_the_subscription(devices: Devices) -> None:
    device = devices(live_set())
    outlets = device.msg("port", 9100)
    assert [o for o in outlets if o[0] == 4] == [[4, "port", 9100]]  # [udpreceive] moves
    assert next(o[1:] for o in outlets if o[0] == 5) == ["port", 9100]  # and is probed there
    assert osc_out(outlets) == [["/sam/reply_to", 9100], ["/sam/subscribe", 9100]]
    assert osc_out(device.msg("port", 0)) == []
    assert osc_out(device.msg("notifydeleted")) == [["/sam/unsubscribe", 9100]]


def test_udp_messages_are_what_the_daemon_accepts(devices: Devices, tmp_path: Path) -> None:
    """Max's [udpsend] turns a whole number into an int: the daemon's argument check must still pass."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon:
        daemon.bind(("127.0.0.1", 0))
        daemon.settimeout(5)
        device = devices(live_set(clip(loop_start=0.0, loop_end=4.0, file_path=str(tmp_path / "a b.wav"))))
        device.send(cmd="osc_connect", daemon_port=daemon.getsockname()[1], listen_port=free_udp_port())
        device.msg("text", "piano")
        separate_now(device)
        messages = [OscMessage(daemon.recvfrom(65536)[0]) for _ in range(4)]
    assert [m.address for m in messages] == ["/sam/reply_to", "/sam/subscribe", "/sam/estimate", "/sam/separate"]
    assert validate_args(REQUESTS_BY_NAME["estimate"], messages[2].params) == validate_args(
        REQUESTS_BY_NAME["separate"], messages[3].params)
    separate = messages[3]
    assert separate.params == [str(tmp_path / "a b.wav"), "piano", "live-1700000000000-1", "", "0", "4"]
    values = validate_args(REQUESTS_BY_NAME["separate"], separate.params)
    assert values["start"] == 0.0 and values["length"] == 4.0 and "project_dir" not in values
    assert validate_args(REQUESTS_BY_NAME["reply_to"], messages[0].params) == {"port": 9011}
    assert validate_args(REQUESTS_BY_NAME["subscribe"], messages[1].params) == {"port": 9011}


# --- with the real daemon -------------------------------------------------------------------------


@pytest.mark.daemon
@pytest.mark.timeout(180)
def test_the_daemon_answers_the_device_and_its_stems_land_on_new_tracks(
    devices: Devices, user_dirs: dict[str, Path], service: Any, daemon_factory: Any
) -> None:
    pytest.importorskip("bridge.daemon")
    listen_port = free_udp_port()
    project = live_project(user_dirs["home"])
    rate = 48000
    t = np.arange(rate * 6) / rate
    audio = np.stack([0.3 * np.sin(2 * math.pi * 330 * t), 0.3 * np.sin(2 * math.pi * 5000 * t)], axis=1)
    source = project / "Samples" / "Recorded" / f"{UNICODE}.wav"
    sf.write(source, audio, rate, subtype="FLOAT")
    (project / "sam-bridge" / "presets").mkdir(parents=True)  # the set's own, beside its .als
    (project / "sam-bridge" / "presets" / "set.yaml").write_text("name: Set Whistle\nprompt: high whistle\n")
    info = daemon_factory(service.url).start()  # no reply port in the config: the device says where it listens
    device = devices(live_set(clip(file_path=str(source), loop_start=1.5, loop_end=4.0)))
    device.send(cmd="osc_connect", daemon_port=int(info["osc"]["port"]), listen_port=listen_port)
    device.msg("port", listen_port)  # the "reply port" box, set to where [udpreceive] listens
    device.msg("bang")
    assert device.send(cmd="wait", address="/sam/presets/end", timeout=20)["found"]
    assert device.send(cmd="wait", address="/sam/pong", timeout=20)["found"]
    presets = device.state()["device"]["presets"]
    assert "piano" in presets and "Set Whistle" in presets  # the shared ones and the set's own
    device.msg("presetindex", presets.index("Set Whistle") + 1)
    device.msg("separate")
    assert device.send(cmd="wait", address="/sam/accepted", timeout=20)["found"]
    assert device.send(cmd="wait", address="/sam/done", timeout=120)["found"], device.state()["received"]
    state = device.state()
    addresses = [m["address"] for m in state["received"]]
    assert "/sam/progress" in addresses and "/sam/error" not in addresses, state["received"]
    assert addresses.index("/sam/estimate/ok") < addresses.index("/sam/accepted")  # the cost came first
    tracks = state["live"]["tracks"]
    assert [t["name"] for t in tracks][1:4] == ["Vox", "Vox · Set Whistle (target)", "Vox · Set Whistle (residual)"]
    stems_dir = project / "Samples" / "Processed" / "Stems"
    placed = []
    for track in tracks[2:4]:
        [clip_info] = track["arrangement_clips"]
        path = Path(clip_info["file_path"])
        assert path.parent == stems_dir  # inside the Live project: "Collect All and Save" keeps them
        data, stem_rate = sf.read(path, always_2d=True)
        assert stem_rate == rate and data.shape == (int(2.5 * rate), 2)
        placed.append(data)
    segment = audio[int(1.5 * rate): int(4.0 * rate)]
    assert np.allclose(placed[0] + placed[1], segment, atol=1e-4)
    assert tracks[1]["arrangement_clips"][0]["muted"] == 1
