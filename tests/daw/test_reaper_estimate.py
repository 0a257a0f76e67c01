"""Know before you pay, in REAPER (issue 23): the Separate action asks the daemon for the cost first
(`"estimate_only"` request files, read in the defer loop), asks above `confirm_above`, and only then sends;
"Audition prompt on selection" sends a 10 s window and places its stems where the daemon took it; the
progress window shows the daemon's ETA and the quality flags. Under lua5.4 and lua5.3 on the strict
stand-in host (tests/daw/fake_reaper.lua)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from bridge.common.flags import FLAG_TEXT, NOTES
from tests.daw.harness import (
    AUDITION_SCRIPT,
    LUA_VERSIONS,
    SEPARATE_SCRIPT,
    answer_estimates,
    estimate,
    lua_eval,
    write_heartbeat,
    write_status,
)
from tests.daw.test_reaper_scripts import Setup, only_request

pytestmark = pytest.mark.skipif(not LUA_VERSIONS, reason="needs lua5.4 or lua5.3")

MB_YESNO, YES, NO = 4, 6, 7


def only_estimate_request(setup: Setup) -> dict[str, Any]:
    [path] = setup.estimate_requests()
    request: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return request


def test_separate_asks_for_the_cost_first_and_sends_nothing_until_it_comes(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(), lua=lua, estimates=False)
    host.run(SEPARATE_SCRIPT)
    asked = only_estimate_request(setup)
    assert asked == {"source": str(setup.source), "preset": "piano", "start": 2.5, "length": 4.0,
                     "project_dir": str(setup.project_dir), "tag": "reaper:{ITEM-1}", "estimate_only": True}
    host.tick(n=10)
    state = host.state()
    assert setup.requests() == [] and not state["proj_ext"].get("sam-bridge-jobs")  # nothing sent, nothing to re-attach
    assert state["pending"] == 1 and state["longest_cycle"] <= 0.1  # waiting in the defer loop
    assert answer_estimates(setup.requests_dir, estimate(cost=0.0667, seconds=4.0))
    host.tick()
    name, request = only_request(setup)
    assert request == {k: v for k, v in asked.items() if k != "estimate_only"}  # the same request, for real
    state = host.state()
    assert state["messages"] == []  # below confirm_above: no question
    assert state["last_frame"][-1] == "Estimated cost: $0.07 for 1 item (4.0 s, 1 request)"
    assert name in state["proj_ext"]["sam-bridge-jobs"]


@pytest.mark.parametrize(("answer", "sent"), [(YES, True), (NO, False)])
def test_above_confirm_above_the_user_is_asked(setup: Setup, lua: str, answer: int, sent: bool) -> None:
    host = setup.host(setup.scenario(answers={"menu": [1], "dialogs": [answer]}), lua=lua, estimates=False)
    host.run(SEPARATE_SCRIPT)
    answer_estimates(setup.requests_dir, estimate(cost=1.5, seconds=900.0, requests=1, confirm_above=1.0))
    host.tick()
    state = host.state()
    [dialog] = state["messages"]
    assert dialog["kind"] == MB_YESNO
    assert "$1.50" in dialog["text"] and "$1.00" in dialog["text"] and "confirm_above" in dialog["text"]
    assert (len(setup.requests()) == 1) is sent
    if not sent:
        assert not state["proj_ext"].get("sam-bridge-jobs") and state["pending"] == 0  # nothing paid, the script ended


def test_the_total_of_several_items_counts_against_confirm_above(setup: Setup) -> None:
    scenario = setup.scenario(answers={"menu": [1], "dialogs": [NO]})
    second = json.loads(json.dumps(scenario["tracks"][1]["items"][0]))
    second.update(guid="{ITEM-2}", position=20.0)
    scenario["tracks"][2]["items"] = [second]
    host = setup.host(scenario, estimates=False)
    host.run(SEPARATE_SCRIPT)
    answer_estimates(setup.requests_dir, estimate(cost=0.6, confirm_above=1.0))  # each below, $1.20 together
    host.tick()
    [dialog] = host.state()["messages"]
    assert "$1.20 for 2 items" in dialog["text"]
    assert setup.requests() == []


def test_an_item_the_daemon_cannot_estimate_is_not_sent_and_says_why(setup: Setup) -> None:
    host = setup.host(setup.scenario(), estimates=False)
    host.run(SEPARATE_SCRIPT)
    [path] = setup.estimate_requests()
    write_status(setup.requests_dir, path.name.removesuffix(".json"), job_id=None, state="failed",
                 error="The source is not readable: take.wav")
    host.tick()
    state = host.state()
    assert setup.requests() == []
    [message] = state["messages"]
    assert "Guitar 01: The source is not readable: take.wav" in message["text"]


def test_no_estimate_because_the_daemon_stopped_sends_nothing(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(), lua=lua, estimates=False)
    host.run(SEPARATE_SCRIPT)
    write_heartbeat(setup.state_dir, age=3600)  # it died after the menu
    host.tick(n=40, dt=0.05)
    state = host.state()
    assert setup.requests() == [] and state["pending"] == 0
    [message] = state["messages"]
    assert "isn't running" in message["text"] and "Nothing was sent" in message["text"]


def test_no_estimate_from_a_live_daemon_gives_up_without_sending(setup: Setup) -> None:
    host = setup.host(setup.scenario(), estimates=False)
    host.run(SEPARATE_SCRIPT)
    host.tick(n=20, dt=1.0)
    state = host.state()
    assert setup.requests() == [] and state["pending"] == 0
    assert "did not answer with the cost" in state["messages"][0]["text"]


def write_manifest(setup: Setup, start_frame: int, frames: int, rate: int = 48000) -> str:
    path = setup.project_dir / "Stems" / "take.audition.sam.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "source": {"path": str(setup.source), "samplerate": rate},
                                "part": {"start_frame": start_frame, "frames": frames,
                                         "start_seconds": start_frame / rate}}), encoding="utf-8")
    return str(path)


def test_audition_sends_ten_seconds_and_places_the_stems_at_the_window(setup: Setup, lua: str) -> None:
    scenario = setup.scenario(item={"length": 20.0}, ext_state={"sam-bridge/mute_source": "1"},
                              answers={"menu": [1]})
    host = setup.host(scenario, lua=lua, estimates=False)
    host.run(AUDITION_SCRIPT)
    asked = only_estimate_request(setup)
    assert asked["audition"] == 10 and asked["start"] == 2.5 and asked["length"] == 20.0
    answer_estimates(setup.requests_dir, estimate(cost=0.0167, seconds=10.0, whole_cost=0.0333, whole_seconds=20.0))
    host.tick()
    name, request = only_request(setup)
    assert request["audition"] == 10 and "estimate_only" not in request
    assert host.state()["last_frame"][-1] == ("Estimated cost: $0.02 for 1 item (10.0 s, 1 request); "
                                             "the whole part would cost $0.03")
    # the daemon took the loudest 10 s from 7.5 s into the source: 5 s into the item (it starts at 2.5 s)
    stems = setup.stems(["target", "residual"], seconds=10.0)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=stems, flags=["audition"],
                 manifest=write_manifest(setup, start_frame=48000 * 15 // 2, frames=480000))
    host.tick()
    state = host.state()
    assert state["messages"] == []
    assert [t["name"] for t in state["tracks"]][2:4] == ["Guitar · piano (audition target)",
                                                         "Guitar · piano (audition residual)"]
    for track in state["tracks"][2:4]:
        [item] = track["items"]
        assert item["values"]["D_POSITION"] == pytest.approx(15.0)  # 10 s + 5 s
        assert item["values"]["D_LENGTH"] == pytest.approx(10.0)
        assert "D_FADEINLEN" not in item["values"]  # the item's fades belong to its edges
    assert state["tracks"][1]["items"][0]["values"].get("B_MUTE", 0) == 0  # a trial never mutes the source
    assert "check:" not in state["last_frame"][0]  # "audition" is no warning


def test_audition_without_a_readable_manifest_says_so(setup: Setup) -> None:
    host = setup.host(setup.scenario(answers={"menu": [1]}))
    host.run(AUDITION_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]),
                 manifest=str(setup.root / "nowhere.sam.json"))
    host.tick()
    state = host.state()
    assert len(state["tracks"]) == 3
    assert "does not say where the audition is" in state["messages"][0]["text"]


def test_the_window_shows_the_daemons_eta(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="running", progress=0.3, message="Separating chunk 3/11",
                 eta_seconds=95.0)
    host.tick()
    assert host.state()["last_frame"][0] == "Guitar 01 — separating 30%, about 2 min left — Separating chunk 3/11"
    write_status(setup.requests_dir, name, state="uploading", progress=0.1, eta_seconds=12.4,
                 message="Uploading 1.2 of 4.5 MB at 3.1 MB/s")
    host.tick()
    assert host.state()["last_frame"][0] == ("Guitar 01 — uploading 10%, about 13 s left — "
                                             "Uploading 1.2 of 4.5 MB at 3.1 MB/s")


def test_quality_flags_are_shown_and_the_window_waits_to_be_read(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]),
                 flags=["target-unlikely", "drift"])
    host.tick(n=100, dt=0.1)  # long past the usual close delay
    state = host.state()
    assert state["last_frame"][0] == ("Guitar 01 — done — stems inserted — check: "
                                      f"{FLAG_TEXT['target-unlikely']}; {FLAG_TEXT['drift']}")
    assert state["window_open"] is True and state["pending"] == 1
    assert host.send(cmd="close_window")["ok"]
    host.tick()
    assert host.state()["pending"] == 0


def test_notes_are_no_warnings_and_do_not_keep_the_window_open(setup: Setup, lua: str) -> None:
    """`drift-corrected` and `span-cut-at-end` say the stems are right: they were shown as "check:
    drift-corrected; span-cut-at-end" and kept the window up as if something were wrong."""
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]),
                 flags=["drift-corrected", "span-cut-at-end"])
    host.tick()
    assert host.state()["last_frame"][0] == "Guitar 01 — done — stems inserted"
    host.tick(n=100, dt=0.1)
    state = host.state()
    assert state["window_open"] is False and state["pending"] == 0


def test_warnings_are_shown_in_the_daemons_words(setup: Setup, lua: str) -> None:
    """Only three flags had words in the script: `clipped`, `weak-correlation`, … were shown as codes."""
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]),
                 flags=["clipped", "drift-corrected", "weak-correlation"])
    host.tick(n=100, dt=0.1)
    state = host.state()
    assert state["last_frame"][0] == ("Guitar 01 — done — stems inserted — check: "
                                      f"{FLAG_TEXT['clipped']}; {FLAG_TEXT['weak-correlation']}")
    assert state["window_open"] is True and state["pending"] == 1


def test_flags_from_a_daemon_without_warnings_or_words() -> None:
    """A daemon from before `warnings`/`flag_words`: its notes are still no warnings, its flags shown as
    they are; words the daemon sends are used as they are, and a flag it has none for is shown as it is."""
    old = lua_eval("return core.flags_text({flags = {'drift-corrected', 'drift', 'audition', 'clipped'}})")
    assert old == "check: drift; clipped"
    new = lua_eval("return core.flags_text({flags = {'x', 'y'}, warnings = {'x', 'y'}, "
                   "flag_words = {x = 'the x in words'}})")
    assert new == "check: the x in words; y"
    assert lua_eval("return core.flags_text({flags = {'drift'}, warnings = {}, flag_words = {}})") == ""


def test_the_scripts_notes_for_older_daemons_are_the_daemons_notes() -> None:
    notes = lua_eval("local list = {} for flag in pairs(core.NOTES_OF_OLDER_DAEMONS) do list[#list + 1] = flag end "
                     "table.sort(list) return list")
    assert notes == sorted(NOTES)


def test_estimate_summary_in_words() -> None:
    text, total, ask, limit = lua_eval(
        "return {core.estimate_summary({{estimated_cost = 0.4, seconds = 240, requests = 2, currency = 'EUR'}}, 0.5)}")
    assert (text, total, ask, limit) == ("Estimated cost: 0.40 EUR for 1 item (240.0 s, 2 requests)", 0.4, False,
                                         "0.50 EUR")
    assert lua_eval("return {core.estimate_summary({{estimated_cost = 0.2, needs_confirmation = true}})}")[2] is True
    assert lua_eval("return {core.estimate_summary({{estimated_cost = 1.01}})}")[2] is True  # default $1.00


def test_the_fake_host_wants_an_answer_for_a_question(setup: Setup) -> None:
    """A Yes/No box without a scripted answer is a test mistake, and an answer the box cannot give is refused."""
    host = setup.host(setup.scenario(answers={"menu": [1], "dialogs": [1]}), estimates=False)
    host.run(SEPARATE_SCRIPT)
    answer_estimates(setup.requests_dir, estimate(cost=5.0))
    answer = host.send(cmd="tick", n=1, dt=0.05)
    assert not answer["ok"] and "not one a type 4 message box gives" in answer["error"]


@pytest.mark.daemon
@pytest.mark.timeout(180)
def test_the_daemon_estimates_and_auditions_what_the_script_asks_for(
    user_dirs: dict[str, Path], service: Any, daemon_factory: Any
) -> None:
    """The real daemon answers the estimate, then separates the loudest 10 s window of the item's part (late
    in it); the stems land in REAPER at that window's position and null against the source there."""
    import math

    import numpy as np

    from tests.daw.harness import ReaperHost
    from tests.daw.test_reaper_scripts import run_until_finished, wait_for_request

    rate = 44100
    project = user_dirs["home"] / "Song"
    project.mkdir()
    t = np.arange(rate * 30) / rate
    audio = np.stack([0.01 * np.sin(2 * math.pi * 220 * t)] * 2, axis=1)
    loud = (t >= 18) & (t < 26)
    audio[loud] += 0.5 * np.sin(2 * math.pi * 440 * t[loud])[:, None]
    source = project / "take.wav"
    sf.write(source, audio, rate, subtype="FLOAT")
    info = daemon_factory(service.url).start()
    presets = json.loads(Path(str(info["presets_file"])).read_text(encoding="utf-8"))["presets"]
    scenario = {
        "os": "linux-x86_64", "project_file": str(project / "Song.rpp"),
        "tracks": [{"name": "Mix", "items": [{
            "position": 5.0, "length": 28.0, "selected": True, "guid": "{MIX}",
            "take": {"name": "mix", "file": str(source), "source_length": 30.0, "channels": 2,
                     "samplerate": rate, "values": {"D_STARTOFFS": 1.0}}}]}],
        "answers": {"menu": [len(presets) + 1], "inputs": [[True, "a high tone"]]},
    }
    host = ReaperHost(scenario, user_dirs["home"], {})
    try:
        host.run(AUDITION_SCRIPT)
        request = json.loads(wait_for_request(host, Path(str(info["requests_dir"]))).read_text(encoding="utf-8"))
        assert request["audition"] == 10 and request["start"] == 1.0
        summary = host.state()["last_frame"][-1]
        assert summary.startswith("Estimated cost: $") and "the whole part would cost" in summary
        state = run_until_finished(host)
    finally:
        host.close()
    assert state["messages"] == [], state["messages"]
    stems = state["tracks"][1:]
    assert [t["name"] for t in stems] == ['Mix · "a high tone" (audition target)',
                                          'Mix · "a high tone" (audition residual)']
    positions = {t["items"][0]["values"]["D_POSITION"] for t in stems}
    [position] = positions
    window_start = position - 5.0 + 1.0  # seconds into the source
    # REAPER sends the item's start and length: the daemon takes the loudest 10 s inside that part (the loud
    # 18 s..26 s, late in the part 1 s..29 s), not its first 10 s, and the stems must sit exactly there
    assert 16.0 - 0.1 <= window_start <= 18.0 + 0.1
    first = round(window_start * rate)
    target, _ = sf.read(stems[0]["items"][0]["takes"][0]["source"], always_2d=True)
    residual, _ = sf.read(stems[1]["items"][0]["takes"][0]["source"], always_2d=True)
    assert target.shape == (rate * 10, 2)
    assert stems[0]["items"][0]["values"]["D_LENGTH"] == pytest.approx(10.0)
    assert np.allclose(target + residual, audio[first:first + rate * 10], atol=1e-4)
