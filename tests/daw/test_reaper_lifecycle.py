"""The REAPER scripts over a script's life and REAPER's: a daemon that is not (or no longer) running, a
second run of an action, REAPER restarting with paid requests in flight, and the UI thread never held.
Each runs under lua5.4 and lua5.3 (REAPER 7 and 6) on the strict stand-in host (tests/daw/fake_reaper.lua)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.daw.harness import (
    CANCEL_SCRIPT,
    COLLECT_SCRIPT,
    DAW_DIR,
    LUA_VERSIONS,
    REAPER_DIR,
    SEPARATE_SCRIPT,
    ReaperHost,
    write_heartbeat,
    write_status,
)
from tests.daw.test_reaper_scripts import Setup, only_request

pytestmark = pytest.mark.skipif(not LUA_VERSIONS, reason="needs lua5.4 or lua5.3")


def stem_tracks(state: dict[str, Any]) -> list[str]:
    return [t["name"] for t in state["tracks"] if "(target)" in t["name"] or "(residual)" in t["name"]]


# --- 1. the daemon is not running -----------------------------------------------------------------


@pytest.mark.parametrize(("os_name", "command"), [
    ("linux-x86_64", "systemctl --user start sam-bridge"), ("Win64", "schtasks /Run /TN sam-bridge"),
    ("macOS-arm64", "launchctl kickstart"),
])
def test_a_stale_heartbeat_is_said_before_anything_is_sent(setup: Setup, lua: str, os_name: str, command: str) -> None:
    write_heartbeat(setup.state_dir, age=60)  # daemon.json left behind by a daemon that died
    host = setup.host(setup.scenario(os=os_name), lua=lua)
    host.run(SEPARATE_SCRIPT)
    state = host.state()
    [message] = [m["text"] for m in state["messages"]]
    assert "sam-bridge isn't running" in message and "sam-bridge run" in message and command in message
    assert setup.requests() == [] and state["menus"] == [] and state["pending"] == 0


def test_the_daemon_dying_while_waiting_is_said_within_seconds_and_the_script_ends(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.tick(n=10)
    assert host.state()["messages"] == []
    write_heartbeat(setup.state_dir, age=30)  # it crashed: the heartbeat stops
    host.tick(n=40, dt=0.05)  # two simulated seconds
    state = host.state()
    [message] = [m["text"] for m in state["messages"]]
    assert "isn't running" in message and "Collect finished stems" in message
    assert state["pending"] == 0 and state["running"] == 0  # no endless defer loop, no relaunch prompt later
    assert name in state["proj_ext"]["sam-bridge-jobs"]  # the paid request is kept for later


def test_a_missing_heartbeat_counts_as_not_running(setup: Setup, lua: str) -> None:
    (setup.state_dir / "heartbeat.json").unlink()
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    assert "isn't running" in host.state()["messages"][0]["text"] and setup.requests() == []


# --- 2. paid requests outlive the script and REAPER ---------------------------------------------------


def test_a_second_run_meets_no_relaunch_prompt_and_keeps_following_the_first_request(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(answers={"menu": [1, 2]}), lua=lua)
    host.run(SEPARATE_SCRIPT)
    host.tick()
    assert host.run(SEPARATE_SCRIPT)["result"] == "ran"
    state = host.state()
    assert state["relaunch_prompts"] == []
    first, second = (p.stem for p in setup.requests())
    stems = setup.stems(["target", "residual"])
    write_status(setup.requests_dir, first, state="done", progress=1.0, stems=stems)
    write_status(setup.requests_dir, second, state="done", progress=1.0, stems=stems)
    host.tick(n=5)
    assert len(stem_tracks(host.state())) == 4  # both requests' stems, each once


def test_without_action_options_reaper_would_ask(setup: Setup, lua: str, tmp_path: Path) -> None:
    """The fake's rule itself: a script that stays deferred and sets no options meets the prompt."""
    script = tmp_path / "loop.lua"
    script.write_text("local function f() reaper.defer(f) end f()\n")
    host = setup.host(setup.scenario(), lua=lua)
    host.run(script)
    assert host.run(script)["result"] == "aborted"
    assert host.state()["relaunch_prompts"] == [str(script)]


def test_stems_of_a_request_from_before_a_restart_come_in_exactly_once(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(ext_state={"sam-bridge/mute_source": "1"}), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    assert host.send(cmd="restart")["ok"]  # REAPER quits (project saved) and opens it again
    state = host.state()
    assert state["running"] == 0 and name in state["proj_ext"]["sam-bridge-jobs"]
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.run(COLLECT_SCRIPT)
    host.tick(n=100)
    state = host.state()
    names = [t["name"] for t in state["tracks"]]
    assert names == ["Drums", "Guitar", "Guitar · piano (target)", "Guitar · piano (residual)", "Bass"]
    for track in state["tracks"][2:4]:
        [item] = track["items"]
        assert item["values"]["D_POSITION"] == 10.0 and item["values"]["D_LENGTH"] == 4.0
    assert state["tracks"][1]["items"][0]["values"]["B_MUTE"] == 1  # the source found again by its GUID
    assert state["proj_ext"].get("sam-bridge-jobs", {}) == {}
    host.run(COLLECT_SCRIPT)  # again, and a Separate run: nothing inserted twice
    host.run(SEPARATE_SCRIPT)
    host.tick(n=100)
    assert len(stem_tracks(host.state())) == 2
    assert host.state()["messages"][0]["text"].startswith("Nothing to collect")


def test_any_later_run_collects_finished_stems(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(answers={"menu": [1, 0]}), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.send(cmd="restart")
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.run(SEPARATE_SCRIPT)  # the menu is dismissed: the earlier stems come in all the same
    assert len(stem_tracks(host.state())) == 2


def test_two_actions_following_one_request_insert_it_once(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.run(COLLECT_SCRIPT)  # a second instance (another action) follows the same request
    assert host.state()["running"] == 2
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.tick(n=100)
    assert len(stem_tracks(host.state())) == 2


def test_cancel_after_a_restart_cancels_the_saved_requests_but_keeps_finished_ones(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(answers={"menu": [1, 2]}), lua=lua)
    host.run(SEPARATE_SCRIPT)
    [running] = [p.stem for p in setup.requests()]
    host.run(SEPARATE_SCRIPT)
    [done] = [p.stem for p in setup.requests() if p.stem != running]
    write_status(setup.requests_dir, done, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.send(cmd="restart")
    host.run(CANCEL_SCRIPT)
    assert (setup.requests_dir / f"{running}.cancel").exists()
    assert not (setup.requests_dir / f"{done}.cancel").exists()
    assert list(host.state()["proj_ext"]["sam-bridge-jobs"]) == [done]  # paid for: Collect still brings it


# --- 3. the UI thread -------------------------------------------------------------------------------


def test_no_cycle_holds_the_ui_thread_over_100_ms(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.tick(n=100)
    state = host.state()
    assert len(stem_tracks(state)) == 2
    assert state["blocks"] == [] and state["longest_cycle"] <= 0.1 and state["executed"] == []


# --- the fake is as strict as REAPER ---------------------------------------------------------------------


def test_the_fake_rejects_what_reaper_rejects(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(), lua=lua)
    code = """
    local results = {}
    local function try(f, ...) local ok, err = pcall(f, ...) results[#results + 1] = ok and "accepted" or err end
    try(reaper.GetTrack, 0, "one")                    -- text where an integer is documented
    try(reaper.EnumProjects, -1, "")                  -- more arguments than documented
    try(reaper.GetMediaTrackInfo_Value, reaper.GetSelectedMediaItem(0, 0), "IP_TRACKNUMBER") -- item for track
    try(reaper.SetExtState, "a", "b", "c")            -- persist is not optional
    results[#results + 1] = tostring(reaper.NoSuchFunction)
    try(gfx.drawstr, {})                              -- gfx.* too
    return results
    """
    answer = host.send(cmd="eval", code=code)
    assert answer["ok"], answer
    results = answer["value"]
    assert "accepted" not in results
    assert "integer expected" in results[0] and "takes 1 argument" in results[1]
    assert "MediaTrack expected, got item" in results[2] and "boolean expected" in results[3]
    assert results[4] == "nil"  # as in REAPER: an unknown name is nil (so scripts can test for new functions)
    assert "gfx.drawstr" in results[5]


def test_every_reaper_function_the_scripts_use_has_a_documented_signature() -> None:
    used = set()
    for path in REAPER_DIR.glob("*.lua"):
        used |= set(re.findall(r"(?<![\w.])reaper\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8")))
    declared = set(re.findall(r"^  ([A-Za-z_][A-Za-z0-9_]*) = \{ \{", (DAW_DIR / "reaper_api.lua").read_text(), re.M))
    assert used and used <= declared, sorted(used - declared)


def test_restart_invalidates_every_pointer(setup: Setup, lua: str) -> None:
    host = ReaperHost(setup.scenario(), setup.root, {"SAM_BRIDGE_STATE_DIR": str(setup.state_dir)}, lua=lua)
    setup.hosts.append(host)
    host.send(cmd="eval", code="KEPT = reaper.GetTrack(0, 1) reaper.SetExtState('s', 'gone', 'x', false) "
                               "reaper.SetExtState('s', 'kept', 'y', true) return true")
    host.send(cmd="restart")
    answer = host.send(cmd="eval", code="local ok, err = pcall(reaper.GetTrackGUID, KEPT) "
                                        "return {ok, reaper.GetExtState('s', 'gone'), reaper.GetExtState('s', 'kept')}")
    assert answer["value"] == [False, "", "y"]


# --- 3b, 5. renders: batched, the item's own signal --------------------------------------------------------


def test_items_needing_a_render_share_one_render_and_keep_their_tracks_fx_out(setup: Setup, lua: str) -> None:
    import json

    fixture = setup.root / "rendered.wav"
    fixture.write_bytes(Path(setup.source).read_bytes())
    scenario = setup.scenario(render_fixture=str(fixture), take={"fx": 1})  # take FX: rendered
    guitar = scenario["tracks"][1]
    guitar["values"] = {"D_VOL": 0.5, "D_PAN": 0.3}
    second = json.loads(json.dumps(guitar["items"][0]))
    second.update(guid="{ITEM-2}", position=20.0)
    second["take"]["name"] = "Guitar 02"
    guitar["items"].append(second)
    scenario["tracks"][0]["items"] = [{"position": 0, "length": 2, "selected": True, "guid": "{MIDI}",
                                       "take": {"name": "Beat", "midi": True}}]
    host = setup.host(scenario, lua=lua)
    before = host.state()
    host.run(SEPARATE_SCRIPT)
    state = host.state()
    assert state["commands"].count(42230) == 2  # audio items together, the MIDI item apart (not one each)
    assert [b["what"] for b in state["blocks"]] == ["render", "render"]  # nothing else held the UI thread
    audio, midi = sorted(state["renders"], key=lambda r: len(r["items"]), reverse=True)
    assert [i["guid"] for i in audio["items"]] == ["{ITEM-1}", "{ITEM-2}"]
    for rendered in audio["items"]:  # the item and its take FX, before the track's FX and fader
        assert not rendered["track_fx"] and rendered["track_volume"] == 1 and rendered["track_pan"] == 0
        assert not rendered["via_master"]
    [beat] = midi["items"]  # its instrument lives on the track: track FX on, no master, fader neutral
    assert beat["track_fx"] and not beat["via_master"] and beat["track_volume"] == 1
    requests = {p.stem: json.loads(p.read_text()) for p in setup.requests()}
    assert len(requests) == 3
    for name, request in requests.items():
        assert Path(request["source"]).stem == name and Path(request["source"]).exists()
    # everything put back: take names, track FX and fader, render settings, selection
    assert [t["values"] for t in state["tracks"]] == [t["values"] for t in before["tracks"]]
    assert [[k["name"] for i in t["items"] for k in i["takes"]] for t in state["tracks"]] == [
        [k["name"] for i in t["items"] for k in i["takes"]] for t in before["tracks"]]
    assert state["project_info"] == before["project_info"] and state["project_strings"] == before["project_strings"]


# --- 4. time selection and razor edits ---------------------------------------------------------------


def finish(setup: Setup, host: ReaperHost, name: str, seconds: float) -> dict[str, Any]:
    write_status(setup.requests_dir, name, state="done", progress=1.0,
                 stems=setup.stems(["target", "residual"], seconds=seconds))
    host.tick(n=5)
    return host.state()


def test_only_the_part_inside_the_time_selection_is_separated_and_placed_there(setup: Setup, lua: str) -> None:
    scenario = setup.scenario(time_selection=[11.0, 12.5])  # the item: 10..14 s, source offset 2.5 s
    scenario["tracks"][2]["items"] = [{"position": 20, "length": 2, "selected": True, "guid": "{LATER}",
                                       "take": {"name": "Bass 01", "file": str(setup.source), "source_length": 30.0}}]
    host = setup.host(scenario, lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, request = only_request(setup)  # the bass item lies outside: not sent
    assert request["start"] == 3.5 and request["length"] == 1.5
    state = finish(setup, host, name, 1.5)
    assert "Bass 01: outside the time selection" in state["messages"][0]["text"]
    [target, residual] = [t for t in state["tracks"] if t["inserted"]]
    for track in (target, residual):
        [item] = track["items"]
        assert item["values"]["D_POSITION"] == 11.0 and item["values"]["D_LENGTH"] == 1.5
        assert item["values"].get("D_FADEINLEN", 0) == 0  # the source's fades are at its edges, not here
        assert item["values"]["D_VOL"] == 0.5
    source = state["tracks"][1]["items"][0]["values"]  # the rest of the item untouched
    assert source["D_POSITION"] == 10.0 and source["D_LENGTH"] == 4.0


def test_a_part_is_cut_on_the_source_sample_grid(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(time_selection=[11.000013, 12.3333337]), lua=lua)
    host.run(SEPARATE_SCRIPT)
    _, request = only_request(setup)
    for key in ("start", "length"):
        samples = request[key] * 48000
        assert abs(samples - round(samples)) < 1e-6, (key, request[key])
    assert round(request["start"] * 48000) == round(3.500013 * 48000)


def test_razor_edit_areas_choose_what_is_separated(setup: Setup, lua: str) -> None:
    scenario = setup.scenario(item={"selected": False})
    scenario["tracks"][1]["razor"] = '12.0 13.0 "" 10.0 14.0 "{ENVELOPE-GUID}"'  # a track area; an envelope one
    host = setup.host(scenario, lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, request = only_request(setup)
    assert request["start"] == 4.5 and request["length"] == 1.0
    [item] = next(t for t in finish(setup, host, name, 1.0)["tracks"] if t["inserted"])["items"]
    assert item["values"]["D_POSITION"] == 12.0 and item["values"]["D_LENGTH"] == 1.0


def test_a_rendered_item_sends_the_part_of_its_render(setup: Setup, lua: str) -> None:
    fixture = setup.root / "rendered.wav"
    fixture.write_bytes(Path(setup.source).read_bytes())
    host = setup.host(setup.scenario(time_selection=[9.0, 11.0], render_fixture=str(fixture),
                                     take={"fx": 1}), lua=lua)
    host.run(SEPARATE_SCRIPT)
    _, request = only_request(setup)
    assert request["start"] == 0.0 and request["length"] == 1.0  # from the item's start, 1 s of it


# --- 6. what STEMwerk users have ---------------------------------------------------------------------------


def test_stems_can_go_in_as_takes_of_the_source_item(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(answers={"menu": [5, 1]}), lua=lua)  # the takes toggle, then "piano"
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    state = host.state()
    assert state["ext"]["sam-bridge/stems_as_takes"] == "1"
    assert "|!Stems as takes of the source item (not new tracks)" in state["menus"][1]
    state = finish(setup, host, name, 4.0)
    assert [t["name"] for t in state["tracks"]] == ["Drums", "Guitar", "Bass"]  # no new tracks
    [item] = state["tracks"][1]["items"]
    assert [t["name"] for t in item["takes"]] == ["Guitar 01", "piano (target)", "piano (residual)"]
    assert [Path(t["source"]).name for t in item["takes"][1:]] == ["take - target.wav", "take - residual.wav"]
    assert item["takes"][1]["values"]["D_VOL"] == 0.8  # the source take's level and pan, as for tracks


def test_the_last_prompts_are_offered_again(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(ext_state={"sam-bridge/recent_prompts": "dog barking\nlow hum"},
                                     answers={"menu": [5]}), lua=lua)
    host.run(SEPARATE_SCRIPT)
    state = host.state()
    fields = [f for f in state["menus"][0].split("|") if f]
    assert fields[2:5] == ["Describe the sound…", 'Again: "dog barking"', 'Again: "low hum"']
    _, request = only_request(setup)
    assert request["prompt"] == "low hum"
    assert state["ext"]["sam-bridge/recent_prompts"] == "low hum\ndog barking"  # newest first


def test_one_item_can_be_cancelled_from_its_row(setup: Setup, lua: str) -> None:
    import json

    scenario = setup.scenario()
    second = json.loads(json.dumps(scenario["tracks"][1]["items"][0]))
    second.update(guid="{ITEM-2}", position=20.0)
    scenario["tracks"][2]["items"] = [second]
    host = setup.host(scenario, lua=lua)
    host.run(SEPARATE_SCRIPT)
    first, other = sorted((p.stem for p in setup.requests()), key=lambda n: int(n.rsplit("-", 1)[1]))  # row order
    assert host.send(cmd="click", x=520, y=15)["ok"]  # the first row's [ x ]
    state = host.state()
    assert (setup.requests_dir / f"{first}.cancel").exists()
    assert not (setup.requests_dir / f"{other}.cancel").exists()
    assert state["pending"] == 1 and list(state["proj_ext"]["sam-bridge-jobs"]) == [other]


def test_a_preset_action_separates_without_a_menu(setup: Setup, lua: str, tmp_path: Path) -> None:
    from bridge.os_service.reaper_install import install_scripts, preset_action_name

    resources = tmp_path / "REAPER"
    resources.mkdir()
    result = install_scripts(resources, setup.state_dir, "linux", presets=("band",), check_running=False)
    action = result.scripts_dir / preset_action_name("band")
    assert action.name == "sam-bridge - Separate band.lua"
    assert '"sam-bridge/sam-bridge - Separate band.lua"' in (resources / "reaper-kb.ini").read_text()
    host = setup.host(setup.scenario(answers={"menu": []}), lua=lua)
    host.run(action)
    _, request = only_request(setup)
    assert request["preset"] == "band" and host.state()["menus"] == []


def test_installed_scripts_find_the_daemon_through_their_pointer_file(setup: Setup, lua: str, tmp_path: Path) -> None:
    from bridge.os_service.reaper_install import install_scripts

    resources = tmp_path / "REAPER"
    resources.mkdir()
    result = install_scripts(resources, setup.state_dir, "linux", check_running=False)
    host = setup.host(setup.scenario(), env={"SAM_BRIDGE_STATE_DIR": "", "HOME": str(tmp_path / "elsewhere"),
                                             "XDG_STATE_HOME": ""}, lua=lua)
    host.run(result.scripts_dir / SEPARATE_SCRIPT.name)
    assert host.state()["messages"] == []
    _, request = only_request(setup)
    assert request["preset"] == "piano"


def test_finished_stems_come_in_even_when_the_daemon_is_gone(setup: Setup, lua: str) -> None:
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.send(cmd="restart")
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    write_heartbeat(setup.state_dir, age=600)  # it finished the job, then stopped
    host.run(COLLECT_SCRIPT)
    state = host.state()
    assert len(stem_tracks(state)) == 2 and state["messages"] == [] and state["pending"] == 0


# --- 4. a day later, a failed insert, a closed tab ----------------------------------------------------


def archive_request(setup: Setup, name: str, day: str = "2026-12-06") -> Path:
    """What the daemon does a day after a request's final status (bridge/request_files/archive.py): the
    request and its status move to requests/done/<day>/."""
    folder = setup.requests_dir / "done" / day
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".status.json"):
        (setup.requests_dir / f"{name}{suffix}").rename(folder / f"{name}{suffix}")
    return folder


def test_stems_of_a_request_archived_a_day_later_still_come_in(setup: Setup, lua: str) -> None:
    """REAPER closed while a paid job ran and opened again more than a day later: the daemon has moved
    the answered request to done/<date>/. Collect used to say "not picked up yet" for good, never inserted
    the stems and never ended; Cancel threw the finished job's record away."""
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.send(cmd="restart")
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    archive_request(setup, name, "2026-12-01")
    (setup.requests_dir / "done" / "2026-12-05").mkdir()  # other days' folders are looked through too
    host.run(CANCEL_SCRIPT)  # finished and paid for: kept for Collect, no cancel marker
    assert list(host.state()["proj_ext"]["sam-bridge-jobs"]) == [name]
    assert not list(setup.requests_dir.glob("*.cancel"))
    host.run(COLLECT_SCRIPT)
    host.tick(n=100)
    state = host.state()
    assert len(stem_tracks(state)) == 2 and state["pending"] == 0 and state["running"] == 0
    assert state["proj_ext"].get("sam-bridge-jobs", {}) == {}


def test_stems_that_cannot_be_inserted_stay_for_collect(setup: Setup, lua: str) -> None:
    """The stems' drive was briefly away when the job finished: the alert says so, and the request stays
    saved so that Collect inserts them later (it used to be forgotten before the insert was tried)."""
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    stems = setup.stems(["target", "residual"])
    for path in stems.values():
        Path(path).rename(path + ".away")
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=stems)
    host.tick(n=20)
    state = host.state()
    assert "Collect finished stems" in state["messages"][-1]["text"]
    assert list(state["proj_ext"]["sam-bridge-jobs"]) == [name]
    for path in stems.values():
        Path(path + ".away").rename(path)
    host.run(COLLECT_SCRIPT)
    host.tick(n=100)
    state = host.state()
    assert len(stem_tracks(state)) == 2 and state["proj_ext"].get("sam-bridge-jobs", {}) == {}


def test_a_job_whose_project_tab_was_closed_ends_the_session(setup: Setup, lua: str) -> None:
    """The tab was closed while its job ran: its pointer is gone for good (REAPER would crash on it), so
    the session ends with a note instead of asking, forever, to switch back to a tab that is not there."""
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.tick(n=5)
    assert host.send(cmd="close_project")["ok"]
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.tick(n=100, dt=0.25)
    state = host.state()
    assert state["running"] == 0 and state["pending"] == 0
    assert any("project" in line and "closed" in line for line in state["last_frame"])


@pytest.mark.parametrize("how", ["cancel-action", "cancel-all-button", "row-button"])
def test_a_cancel_keeps_finished_stems_waiting_for_their_project_tab(setup: Setup, lua: str, how: str) -> None:
    """The job finished while another project tab was in front: its stems are paid for. A cancel (the
    action, the window's "Cancel all", the row's [ x ]) used to forget the saved request, so the stems
    never came in and Collect said "Nothing to collect"."""
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.send(cmd="switch_project", other=True)
    host.tick(n=5)
    assert "switch back" in host.state()["last_frame"][0]
    if how == "cancel-action":
        host.run(CANCEL_SCRIPT)
    else:
        assert host.send(cmd="click", x=10_000 if how == "cancel-all-button" else 520,
                         y=10_000 if how == "cancel-all-button" else 15)["ok"]
    host.tick()
    state = host.state()
    assert not (setup.requests_dir / f"{name}.cancel").exists()
    assert list(state["proj_ext"]["sam-bridge-jobs"]) == [name]  # still saved for Collect
    assert state["window_open"] is True  # says so, until the user closes it
    assert "kept" in state["last_frame"][0] and "Collect finished stems" in state["last_frame"][0]
    host.tick(n=100, dt=0.1)
    assert host.state()["window_open"] is True and stem_tracks(host.state()) == []
    host.send(cmd="close_window")
    host.tick()
    host.send(cmd="switch_project", other=False)
    host.run(COLLECT_SCRIPT)
    host.tick(n=100)
    state = host.state()
    assert len(stem_tracks(state)) == 2 and state["proj_ext"].get("sam-bridge-jobs", {}) == {}
    assert not any(m["text"].startswith("Nothing to collect") for m in state["messages"])


def test_the_close_button_closes_a_window_kept_open_for_a_warning(setup: Setup, lua: str) -> None:
    """A window kept open for the user to read (a warning, stems kept for Collect) ignored its own [ Close ]
    button: only the window's close box ended it."""
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]),
                 flags=["target-unlikely"])
    host.tick(n=100, dt=0.1)
    assert host.state()["window_open"] is True  # the warning waits to be read
    assert "[ Close ]" in " ".join(host.state()["last_frame"])
    assert host.send(cmd="click", x=10_000, y=10_000)["ok"]  # the button at the bottom right
    host.tick(n=3)
    assert host.state()["pending"] == 0 and not host.state()["window_open"]


def test_collect_reports_stems_inserted_with_a_warning_and_shows_it(setup: Setup, lua: str) -> None:
    """Collect counted only jobs whose note was exactly "stems inserted": stems inserted with a warning
    came in, then "Nothing to collect" was said and the warning was never shown."""
    host = setup.host(setup.scenario(), lua=lua)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.send(cmd="restart")
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]),
                 flags=["target-unlikely"])
    host.run(COLLECT_SCRIPT)
    host.tick(n=100, dt=0.1)  # long past the usual close delay
    state = host.state()
    assert len(stem_tracks(state)) == 2 and state["messages"] == []  # no "Nothing to collect"
    assert state["window_open"] is True and state["pending"] == 1  # the warning waits to be read
    assert state["last_frame"][0].startswith("Guitar 01 — done — stems inserted — check: ")
    assert "the target does not look like a part of the source" in state["last_frame"][0]
    host.send(cmd="close_window")
    host.tick()
    assert host.state()["pending"] == 0
