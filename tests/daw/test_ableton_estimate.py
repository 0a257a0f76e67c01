"""Know before you pay, on the Live device (issue 23): Separate and Audition ask /sam/estimate first; above
confirm_above the Separate button turns into "Confirm $x.xx" for a few seconds and only a click on it sends
the job; Audition sends 10 s; /sam/progress's ETA and /sam/flags' warnings (in the daemon's words, from
/sam/flag) show in the status line. The device's JavaScript runs under node with the strict Max/LOM stand-ins
(tests/daw/max_harness.js)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.common.flags import FLAG_TEXT, NOTES
from bridge.common.jobs import JobEvent, JobState
from bridge.osc.wire import event_messages
from tests.daw.harness import NODE, MaxDevice, osc_out, status_texts
from tests.daw.test_ableton_device import Devices, clip, live_set, separate_now

pytestmark = pytest.mark.skipif(not NODE, reason="needs node")

CONFIRM_MS = 8000


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[Devices]:
    d = Devices(tmp_path)
    yield d
    for device in d.started:
        device.close()


def labels(outlets: list[list[Any]]) -> list[str]:
    """What the Separate button was told to show (outlet 6, `text <label>`)."""
    return [str(o[2]) for o in outlets if o[0] == 6 and o[1] == "text"]


def daemon_done(device: MaxDevice, job_id: str, flags: tuple[str, ...] = (), part: tuple[float, float] | None = None,
                stems: dict[str, str] | None = None) -> list[list[Any]]:
    """The messages the daemon sends when a job ends (bridge.osc.wire.event_messages: progress, part, flags,
    each flag in words, stems, done), to the device; what it put out at /sam/done."""
    event = JobEvent(job_id, "", JobState.done, 1.0, "done", manifest="/s/m.json", flags=flags, part=part,
                     stems=stems or {"target": "/s/t.wav", "residual": "/s/r.wav"})
    outlets: list[list[Any]] = []
    for name, args in event_messages(event):
        outlets = device.msg(f"/sam/{name}", *args)
    return outlets


def costly(device: MaxDevice, button: str = "separate", cost: float = 1.5, whole: float = -1.0) -> list[list[Any]]:
    outlets = device.msg(button)
    asked = osc_out(outlets)[-1]
    assert asked[0] == "/sam/estimate"
    return outlets + device.msg("/sam/estimate/ok", asked[3], 900.0, 1, cost, "USD", 1.0, 1, whole)


def test_above_confirm_above_separate_becomes_confirm_and_a_click_sends(devices: Devices) -> None:
    device = devices(live_set(clip()))
    device.msg("text", "piano")
    outlets = costly(device)
    sent = [m[0] for m in osc_out(outlets)]
    assert sent == ["/sam/reply_to", "/sam/subscribe", "/sam/estimate"]  # nothing paid yet
    assert labels(outlets) == ["Confirm $1.50"]
    assert status_texts(outlets)[-1] == ('Lead Vox · "piano" would cost about $1.50, more than $1.00: click Confirm '
                                         'within 8 s to send it.')
    outlets = device.msg("separate")  # the click on "Confirm $1.50"
    [separate] = [m for m in osc_out(outlets) if m[0] == "/sam/separate"]
    assert separate[3] == "live-1700000000000-1" and len(separate) == 7  # the estimated job, no audition
    assert labels(outlets) == ["Separate"]
    assert status_texts(outlets)[-1] == 'Sent Lead Vox · "piano" to sam-bridge (about $1.50)…'


def test_an_unconfirmed_job_is_dropped_after_a_few_seconds(devices: Devices) -> None:
    device = devices(live_set(clip()))
    device.msg("text", "piano")
    costly(device)
    tick = device.send(cmd="tick", ms=CONFIRM_MS)
    assert labels(tick["outlets"]) == ["Separate"]
    assert status_texts(tick["outlets"]) == ["Not sent: Lead Vox was not confirmed."]
    assert osc_out(tick["outlets"]) == []
    assert device.state()["device"]["openTags"] == []
    outlets = device.msg("separate")  # a later click asks again, it does not send the dropped job
    assert [m[0] for m in osc_out(outlets)][-1] == "/sam/estimate"
    assert device.send(cmd="tick", ms=CONFIRM_MS)["timers"] == 0  # the confirmation timer is gone


def test_cancel_while_confirm_waits_sends_nothing(devices: Devices) -> None:
    device = devices(live_set(clip()))
    device.msg("text", "piano")
    costly(device)
    outlets = device.msg("cancel")
    assert labels(outlets) == ["Separate"] and osc_out(outlets) == []
    assert [m[0] for m in osc_out(device.msg("separate"))][-1] == "/sam/estimate"


def test_below_confirm_above_it_is_sent_at_once(devices: Devices) -> None:
    device = devices(live_set(clip()))
    device.msg("text", "piano")
    outlets = separate_now(device, cost=0.2)
    assert [m[0] for m in osc_out(outlets)][-1] == "/sam/separate" and labels(outlets) == []


def test_an_estimate_sam_bridge_refuses_shows_why_and_sends_nothing(devices: Devices) -> None:
    device = devices(live_set(clip()))
    device.msg("text", "piano")
    asked = osc_out(device.msg("separate"))[-1]
    outlets = device.msg("/sam/error", asked[3], "/sam/estimate: The file /nowhere/vox.wav does not exist.")
    assert status_texts(outlets) == ["Lead Vox: /sam/estimate: The file /nowhere/vox.wav does not exist."]
    assert device.msg("/sam/estimate/ok", asked[3], 4.5, 1, 0.01, "USD", 1.0, 0, -1.0) == []  # too late: ignored


def test_audition_sends_ten_seconds_and_says_what_the_whole_would_cost(devices: Devices) -> None:
    device = devices(live_set(clip()))
    device.msg("text", "piano")
    outlets = device.msg("audition")
    asked = osc_out(outlets)[-1]
    assert asked[0] == "/sam/estimate" and asked[7] == 10
    assert status_texts(outlets) == ['Asking sam-bridge what an audition of Lead Vox · "piano" would cost…']
    outlets = device.msg("/sam/estimate/ok", asked[3], 10.0, 1, 0.0167, "USD", 1.0, 0, 0.4)
    [separate] = osc_out(outlets)
    assert separate == ["/sam/separate", *asked[1:]]
    assert status_texts(outlets) == [
        'Sent an audition of Lead Vox · "piano" to sam-bridge (about $0.02; the whole clip: $0.40)…']
    device.msg("/sam/accepted", asked[3], "job-7")
    outlets = daemon_done(device, "job-7", flags=("audition",), stems={
        "target": "/s/vox.audition.target.wav", "residual": "/s/vox.audition.residual.wav"})
    assert status_texts(outlets) == ["Stems of Lead Vox are on 2 new tracks."]  # "audition" is no warning
    tracks = device.state()["live"]["tracks"]
    assert [t["name"] for t in tracks][2:4] == ['Vox · "piano" (audition target)', 'Vox · "piano" (audition residual)']
    assert tracks[1]["arrangement_clips"][0]["muted"] == 0  # a trial never deactivates the source


def test_audition_while_confirm_waits_drops_the_waiting_job(devices: Devices) -> None:
    device = devices(live_set(clip()))
    device.msg("text", "piano")
    costly(device)
    outlets = device.msg("audition")
    assert labels(outlets) == ["Separate"]
    assert [m[0] for m in osc_out(outlets)] == ["/sam/reply_to", "/sam/subscribe", "/sam/estimate"]
    assert len(device.state()["device"]["openTags"]) == 1  # only the audition's


def start(device: MaxDevice) -> str:
    device.msg("text", "piano")
    tag = str(osc_out(separate_now(device))[-1][3])
    device.msg("/sam/accepted", tag, "job-7")
    return tag


def test_progress_shows_the_eta_and_the_message(devices: Devices) -> None:
    device = devices(live_set(clip()))
    start(device)
    outlets = device.msg("/sam/progress", "job-7", "running", 0.3, "Separating chunk 3/11", 95.0)
    assert status_texts(outlets) == ["Lead Vox: separating 30%, about 2 min left — Separating chunk 3/11"]
    outlets = device.msg("/sam/progress", "job-7", "uploading", 0.1, "Uploading 1.2 of 4.5 MB at 3.1 MB/s", -1.0)
    assert status_texts(outlets) == ["Lead Vox: uploading 10% — Uploading 1.2 of 4.5 MB at 3.1 MB/s"]
    outlets = device.msg("/sam/progress", "job-7", "running", 0.5, "", 12.2)
    assert status_texts(outlets) == ["Lead Vox: separating 50%, about 13 s left"]


def test_warnings_are_shown_with_the_result_in_the_daemons_words(devices: Devices) -> None:
    """Every warning in sam-bridge's words (no code like `drift` left bare), a flag it has no words for as its
    code, the notes (the stems are right) not at all."""
    device = devices(live_set(clip()))
    start(device)
    device.msg("/sam/flags", "someone-elses-job", "target-silent")
    device.msg("/sam/flag", "someone-elses-job", "target-silent", "warning", FLAG_TEXT["target-silent"])
    outlets = daemon_done(device, "job-7", flags=("target-unlikely", "drift-corrected", "drift", "span-cut-at-end",
                                                  "some-new-flag"))
    assert status_texts(outlets) == ["Stems of Lead Vox are on 2 new tracks. — check: "
                                     f"{FLAG_TEXT['target-unlikely']}; {FLAG_TEXT['drift']}; some-new-flag"]


@pytest.mark.parametrize("note", ["drift-corrected", "span-cut-at-end", "audition"])
def test_a_note_is_no_warning(devices: Devices, note: str) -> None:
    device = devices(live_set(clip()))
    start(device)
    assert status_texts(daemon_done(device, "job-7", flags=(note,))) == ["Stems of Lead Vox are on 2 new tracks."]


@pytest.mark.parametrize("note", sorted(NOTES))
def test_a_note_from_a_daemon_before_flag_words_is_no_warning_either(devices: Devices, note: str) -> None:
    """sam-bridge 0.2.0 sends no /sam/flag: the device (upgraded while the old service still runs) showed
    an audition as "check: audition"."""
    device = devices(live_set(clip()))
    start(device)
    event = JobEvent("job-7", "", JobState.done, 1.0, "done", manifest="/s/m.json", flags=(note,),
                     stems={"target": "/s/t.wav", "residual": "/s/r.wav"})
    outlets: list[list[Any]] = []
    for name, args in event_messages(event):
        if name != "flag":  # what an older daemon sends
            outlets = device.msg(f"/sam/{name}", *args)
    assert status_texts(outlets) == ["Stems of Lead Vox are on 2 new tracks."]


def test_the_devices_notes_for_older_daemons_are_the_daemons_notes() -> None:
    script = (Path(__file__).resolve().parents[2] / "scripts" / "ableton" / "sam_bridge_device.js").read_text()
    listed = re.search(r"var NOTES_OF_OLDER_DAEMONS = \[([^\]]*)\]", script)
    assert listed is not None and set(re.findall(r'"([^"]+)"', listed.group(1))) == set(NOTES)


def test_the_audition_message_is_what_the_daemon_accepts(devices: Devices) -> None:
    """Max sends the whole number 10 as an OSC int: /sam/estimate's and /sam/separate's check must take it."""
    from bridge.osc.addresses import REQUESTS_BY_NAME, validate_args

    device = devices(live_set(clip()))
    device.msg("text", "piano")
    asked = osc_out(device.msg("audition"))[-1]
    for name in ("estimate", "separate"):
        values = validate_args(REQUESTS_BY_NAME[name], asked[1:])
        assert values["audition"] == 10 and values["start"] == 1.25 and values["length"] == 4.5


def audition_done(device: MaxDevice, part: tuple[float, float] | None) -> list[dict[str, Any]]:
    """Audition the selected clip; the daemon answers (with /sam/part when `part` is given) and finishes."""
    device.msg("text", "piano")
    asked = osc_out(device.msg("audition"))[-1]
    device.msg("/sam/estimate/ok", asked[3], 2.0, 1, 0.0033, "USD", 1.0, 0, 0.4)
    device.msg("/sam/accepted", asked[3], "job-9")
    daemon_done(device, "job-9", flags=("audition",), part=part, stems={
        "target": "/s/vox.audition.target.wav", "residual": "/s/vox.audition.residual.wav"})
    state = device.state()["live"]
    assert state["errors"] == []
    return [t["arrangement_clips"][0] for t in state["tracks"][2:4]]


def test_audition_stems_land_at_the_window_the_daemon_chose_not_at_the_clip_start(devices: Devices) -> None:
    """The clip plays 1.25 s..5.75 s of its file from beat 16; the daemon's loudest 2 s start 3.25 s into the
    file: 2 s into the clip, 4 beats at 120 BPM (an unwarped clip plays at its own speed)."""
    device = devices(live_set(clip()))
    stems = audition_done(device, (3.25, 2.0))
    assert [c["start_time"] for c in stems] == [20.0, 20.0]


def test_a_warped_clips_audition_lands_through_its_warping(devices: Devices) -> None:
    """Warped: beats 4..12 at 0.4 s a beat are 1.6 s..4.8 s of the file; a window from 3.2 s is beat 8 of
    the clip, 4 beats after its start; the stems' warp markers move with the window."""
    markers = [{"beat_time": 4.0, "sample_time": 1.6}, {"beat_time": 9.0, "sample_time": 3.6},
               {"beat_time": 12.0, "sample_time": 4.8}]
    device = devices(live_set(clip(warping=1, loop_start=4.0, loop_end=12.0, seconds_per_beat=0.4,
                                   markers=markers)))
    stems = audition_done(device, (3.2, 1.0))
    assert [c["start_time"] for c in stems] == [20.0, 20.0]
    for stem in stems:
        assert stem["markers"] == [{"beat_time": 9.0, "sample_time": pytest.approx(0.4)}]


def test_without_part_an_audition_lands_at_the_clip_start(devices: Devices) -> None:
    """A daemon that sends no /sam/part (older) auditioned from the part's start."""
    device = devices(live_set(clip()))
    assert [c["start_time"] for c in audition_done(device, None)] == [16.0, 16.0]
