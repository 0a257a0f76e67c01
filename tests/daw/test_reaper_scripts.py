"""The REAPER ReaScripts: they parse, their logic is right under plain Lua, and the actions do the right
things to a project when run on a stand-in for REAPER's `reaper` API (tests/daw/fake_reaper.lua).
The last section feeds the request files they write to the real daemon."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import platformdirs
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bridge
from bridge.common.request import SeparationRequest
from tests.daw.harness import (
    AUDITION_SCRIPT,
    CANCEL_SCRIPT,
    COLLECT_SCRIPT,
    DAW_DIR,
    ESTIMATE_SUFFIX,
    LUA,
    LUAC,
    REAPER_DIR,
    SEPARATE_SCRIPT,
    ReaperHost,
    lua_eval,
    write_heartbeat,
    write_status,
)

pytestmark = pytest.mark.skipif(not (LUA and LUAC), reason="needs lua5.4 and luac5.4 (apt-get install lua5.4)")

UNICODE_NAME = "Gitarre Ärger – 吉他 🎸"
ROOT = Path(__file__).resolve().parents[2]


def lua_string(text: str) -> str:
    """A Lua string literal for any text (Lua's long brackets would trip over ]]; escape bytes instead)."""
    return '"' + "".join(f"\\{b}" for b in text.encode("utf-8")) + '"'


# --- the files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(REAPER_DIR.glob("*.lua")) + sorted(DAW_DIR.glob("*.lua")), ids=lambda p: p.name
)
def test_lua_file_parses(path: Path) -> None:
    assert LUAC
    done = subprocess.run([LUAC, "-p", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_luac_rejects_a_broken_script(tmp_path: Path) -> None:
    assert LUAC
    broken = tmp_path / "broken.lua"
    broken.write_text("local x = (1 +\n", encoding="utf-8")
    assert subprocess.run([LUAC, "-p", str(broken)], capture_output=True).returncode != 0


def test_reapack_index_lists_every_script_with_the_right_roles() -> None:
    root = ET.parse(REAPER_DIR / "index.xml").getroot()
    assert root.tag == "index" and root.get("version") == "1"
    packages = root.findall("./category/reapack")
    assert [p.get("name") for p in packages] == [SEPARATE_SCRIPT.name]
    versions = packages[0].findall("version")
    assert len(versions) == 1
    version = versions[0]
    header = SEPARATE_SCRIPT.read_text(encoding="utf-8")
    assert f"-- @version {version.get('name')}" in header
    assert lua_eval("return core.VERSION") == version.get("name") == bridge.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", version.get("time") or "")
    assert version.get("time") != "2025-01-01T00:00:00Z"
    sources = {unquote(s.text or "").rsplit("/", 1)[-1]: s for s in version.findall("source")}
    assert set(sources) == {p.name for p in REAPER_DIR.glob("*.lua")}
    mains = {name for name, s in sources.items() if s.get("main") == "main"}
    assert mains == {SEPARATE_SCRIPT.name, AUDITION_SCRIPT.name, CANCEL_SCRIPT.name, COLLECT_SCRIPT.name}
    commits = {re.search(r"/([0-9a-f]{40})/scripts/reaper/", s.text or "").group(1) for s in sources.values()}  # type: ignore[union-attr]
    assert len(commits) == 1  # every URL pinned to one commit
    for name, source in sources.items():
        if name != SEPARATE_SCRIPT.name:
            assert source.get("file") == name  # installed beside the package script so `require` finds it
    for line in re.findall(r"^--\s+\[(\w+)\] (.+)$", header, re.M):
        assert line[1] in sources


def test_the_index_is_what_make_index_writes_for_its_commit(tmp_path: Path) -> None:
    text = (REAPER_DIR / "index.xml").read_text(encoding="utf-8")
    commit = re.search(r"for commit ([0-9a-f]{40})", text).group(1)  # type: ignore[union-attr]
    base = re.search(r">(https://[^<]+)/" + commit, text).group(1)  # type: ignore[union-attr]
    out = tmp_path / "index.xml"
    done = subprocess.run([sys.executable, str(REAPER_DIR / "make_index.py"), base, commit, "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == text  # regenerate it after changing the scripts' list or header
    other = tmp_path / "other.xml"
    subprocess.run([sys.executable, str(REAPER_DIR / "make_index.py"), "https://example.org/r", "f" * 40,
                    "-o", str(other)], check=True, capture_output=True)
    assert "https://example.org/r/" + "f" * 40 + "/scripts/reaper/sam_bridge_core.lua" in other.read_text()


def pinned_commit() -> str:
    text = (REAPER_DIR / "index.xml").read_text(encoding="utf-8")
    return re.search(r"for commit ([0-9a-f]{40})", text).group(1)  # type: ignore[union-attr]


@pytest.mark.skipif(not (REAPER_DIR.parents[1] / ".git").exists(), reason="needs the git history")
def test_the_index_serves_the_scripts_of_this_tree() -> None:
    """A user installing from the index gets the scripts at its pinned commit: they must be these."""
    done = subprocess.run(["git", "-C", str(REAPER_DIR), "diff", "--stat", pinned_commit(), "--", "*.lua"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", f"index.xml serves older scripts: commit, then run make_index.py\n{done.stdout}"


def test_make_index_refuses_changed_scripts_under_a_published_version(tmp_path: Path) -> None:
    """ReaPack updates only to a newer version: three indexes once served different scripts as 0.1.0."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copytree(REAPER_DIR, repo / "scripts" / "reaper", ignore=shutil.ignore_patterns("index.xml"))
    shutil.copy(REAPER_DIR.parents[1] / "pyproject.toml", repo / "pyproject.toml")
    make = [sys.executable, str(repo / "scripts" / "reaper" / "make_index.py"), "https://example.org/r"]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    first = git("rev-parse", "HEAD")
    subprocess.run([*make, first], check=True, capture_output=True)
    git("add", "-A")
    git("commit", "-qm", "index")
    readme_only = repo / "scripts" / "reaper" / "README.md"
    readme_only.write_text(readme_only.read_text(encoding="utf-8") + "\nmore\n", encoding="utf-8")
    git("commit", "-qam", "docs")  # no script changed: the same version may point at it
    assert subprocess.run([*make, git("rev-parse", "HEAD")], capture_output=True).returncode == 0
    git("checkout", "-q", "--", ".")
    core = repo / "scripts" / "reaper" / "sam_bridge_core.lua"
    core.write_text(core.read_text(encoding="utf-8") + "\n-- a fix\n", encoding="utf-8")
    git("commit", "-qam", "fix")
    refused = subprocess.run([*make, git("rev-parse", "HEAD")], capture_output=True, text=True)
    assert refused.returncode != 0 and "bump it" in refused.stderr
    pyproject = repo / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', text, re.M).group(1)  # type: ignore[union-attr]
    pyproject.write_text(text.replace(f'version = "{version}"', 'version = "99.0.0"'), encoding="utf-8")
    main = repo / "scripts" / "reaper" / SEPARATE_SCRIPT.name
    main.write_text(main.read_text(encoding="utf-8").replace(f"@version {version}", "@version 99.0.0"),
                    encoding="utf-8")
    git("commit", "-qam", "bump")
    assert subprocess.run([*make, git("rev-parse", "HEAD")], capture_output=True).returncode == 0


def test_readme_names_every_action_and_library() -> None:
    readme = (REAPER_DIR / "README.md").read_text(encoding="utf-8")
    for path in REAPER_DIR.glob("*.lua"):
        assert path.name in readme, path.name
    assert "index.xml" in readme and "sam-bridge run" in readme


# --- JSON -----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents=st.lists(json_values, min_size=1, max_size=20), ascii_only=st.booleans())
def test_json_round_trips_through_lua(documents: list[Any], ascii_only: bool) -> None:
    text = json.dumps(documents, ensure_ascii=ascii_only)
    code = f"local doc = assert(core.json_decode({lua_string(text)})) return core.json_encode(doc)"
    assert json.loads(lua_eval(code)) == documents


def test_json_decodes_surrogate_pairs_and_keeps_object_order() -> None:
    text = json.dumps({"z": "\U0001f3b8 é", "a": 1, "m": [1.5, None, True]})  # ensure_ascii: \ud83c\udfb8
    assert "\\ud83c\\udfb8" in text
    value = lua_eval(f"local d = core.json_decode({lua_string(text)}) return {{d.z, core.keys_in_order(d)}}")
    assert value == ["\U0001f3b8 é", ["z", "a", "m"]]


@pytest.mark.parametrize("bad", ['{"a":}', "[1,2", '"abc', '{"a" 1}', "tru", "{} x", ""])
def test_json_decode_reports_bad_text(bad: str) -> None:
    value = lua_eval(f"local v, err = core.json_decode({lua_string(bad)}) return {{v == nil, err}}")
    assert value[0] is True
    assert value[1]


def test_json_encode_refuses_what_json_cannot_hold() -> None:
    code = """
    local results = {}
    for _, v in ipairs({0/0, math.huge, "\\255\\254 not utf-8"}) do
      local ok, err = pcall(core.json_encode, {v})
      results[#results + 1] = ok and "accepted" or err
    end
    return results
    """
    results = lua_eval(code)
    assert "accepted" not in results
    assert "UTF-8" in results[2]


# --- state folder and daemon.json -----------------------------------------------------------------


def candidates(platform: str, env: dict[str, str]) -> list[str]:
    table = "{" + ",".join(f"[{lua_string(k)}]={lua_string(v)}" for k, v in env.items()) + "}"
    result: list[str] = lua_eval(
        f"local env = {table} return core.state_dir_candidates({lua_string(platform)}, function(k) return env[k] end)"
    )
    return result


def test_state_dir_on_linux_matches_platformdirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    expected = platformdirs.user_state_dir("sam-bridge", appauthor=False)
    assert candidates("linux", {"HOME": str(tmp_path / "me")}) == [expected]
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg state"))
    expected_xdg = platformdirs.user_state_dir("sam-bridge", appauthor=False)
    found = candidates("linux", {"HOME": str(tmp_path / "me"), "XDG_STATE_HOME": str(tmp_path / "xdg state")})
    assert found[0] == expected_xdg
    assert found[1] == expected  # the default is tried too, in case the daemon ignored XDG_STATE_HOME


def test_state_dir_env_override_and_other_platforms() -> None:
    assert candidates("linux", {"SAM_BRIDGE_STATE_DIR": "/x/y", "HOME": "/h"})[0] == "/x/y"
    assert candidates("macos", {"HOME": "/Users/ann"}) == ["/Users/ann/Library/Application Support/sam-bridge"]
    assert candidates("windows", {"LOCALAPPDATA": "C:\\Users\\ann\\AppData\\Local", "HOME": "/nope"}) == [
        "C:\\Users\\ann\\AppData\\Local\\sam-bridge"
    ]
    assert candidates("windows", {"USERPROFILE": "C:\\Users\\bob"}) == ["C:\\Users\\bob\\AppData\\Local\\sam-bridge"]


@pytest.mark.parametrize(("os_name", "platform"), [
    ("Win64", "windows"), ("Win32", "windows"), ("OSX64", "macos"), ("macOS-arm64", "macos"),
    ("linux-x86_64", "linux"), ("Other", "linux"),
])
def test_platform_from_reaper_os(os_name: str, platform: str) -> None:
    assert lua_eval(f"return core.platform({lua_string(os_name)})") == platform


def find_daemon(dirs: list[Path]) -> list[Any]:
    listing = "{" + ",".join(lua_string(str(d)) for d in dirs) + "}"
    code = f"""
    local info, err = core.find_daemon({listing}, function(path)
      local f = io.open(path, "rb") if not f then return nil end
      local t = f:read("a") f:close() return t end)
    return {{info or core.null, err or core.null}}
    """
    result: list[Any] = lua_eval(code)
    return result


def test_find_daemon_reads_the_first_daemon_json(tmp_path: Path) -> None:
    empty, real = tmp_path / "empty", tmp_path / "real"
    empty.mkdir()
    real.mkdir()
    (real / "daemon.json").write_text(json.dumps({
        "pid": 42, "version": "0.1.0", "requests_dir": "/custom/requests", "osc": {"host": "127.0.0.1", "port": 9010},
        "presets_file": "/custom/presets.json", "hot_folder": None, "service": "local", "started_at": "x"}))
    info, err = find_daemon([empty, real])
    assert err is None
    assert info["requests_dir"] == "/custom/requests"
    assert info["presets_file"] == "/custom/presets.json"
    assert info["state_dir"] == str(real)


def test_find_daemon_explains_when_it_is_not_running(tmp_path: Path) -> None:
    info, err = find_daemon([tmp_path / "nothing"])
    assert info is None
    assert "isn't running" in err and "sam-bridge run" in err and "service install" in err
    (tmp_path / "daemon.json").write_text("{broken")
    info, err = find_daemon([tmp_path])
    assert info is None and "could not be read" in err


# --- presets menu ---------------------------------------------------------------------------------


def test_preset_menu_lists_presets_prompt_and_mute_toggle() -> None:
    presets = json.dumps({"presets": [
        {"name": "piano", "description": "", "tags": [], "stems": None, "origin": "builtin"},
        {"name": "!odd | name", "description": "", "tags": [], "stems": None, "origin": "user"},
        {"name": "band", "description": "", "tags": [], "stems": ["vocals", "drums", "bass", "other"],
         "origin": "builtin"},
        {"description": "no name: skipped"},
    ]})
    menu, actions = lua_eval(
        f"local p = core.parse_presets({lua_string(presets)}) return {{core.build_preset_menu(p, true)}}"
    )
    assert menu == ("piano|odd / name|band  (4 stems)||Describe the sound…||!Mute source items when the stems arrive"
                    "|Stems as takes of the source item (not new tracks)")
    fields = [f for f in menu.split("|") if f]  # what gfx.showmenu numbers
    assert len(fields) == len(actions)
    assert actions[0] == {"kind": "preset", "name": "piano"}
    assert actions[1] == {"kind": "preset", "name": "!odd | name"}  # the real name goes to the daemon
    assert [a["kind"] for a in actions[3:]] == ["prompt", "toggle_mute", "toggle_takes"]


def test_preset_menu_without_presets_still_offers_a_prompt() -> None:
    menu, actions = lua_eval("local p, err = core.parse_presets(nil) return {core.build_preset_menu(p, false)}")
    assert menu.startswith("#")  # greyed line saying no presets were found
    assert [a["kind"] for a in actions] == ["none", "prompt", "toggle_mute", "toggle_takes"]


# --- item -> request ------------------------------------------------------------------------------

PLAIN_TAKE = {"file_path": "/audio/a.wav", "playrate": 1.0, "start_offset": 2.0, "item_length": 4.0,
              "source_length": 30.0}


@pytest.mark.parametrize(("changes", "mode"), [
    ({}, "file"),
    ({"file_path": "/audio/A.FLAC"}, "file"),
    ({"start_offset": 26.0}, "file"),  # ends exactly at the end of the source
    ({"playrate": 1.5}, "render"),
    ({"pitch": 2.0}, "render"),
    ({"fx_count": 1}, "render"),
    ({"envelope_count": 1}, "render"),
    ({"stretch_marker_count": 3}, "render"),
    ({"channel_mode": 2}, "render"),
    ({"is_midi": True}, "render"),
    ({"is_section": True}, "render"),
    ({"file_path": "/audio/a.mp3"}, "render"),
    ({"file_path": ""}, "render"),
    ({"start_offset": -1.0}, "render"),
    ({"start_offset": 27.0}, "render"),  # loops past the end of the source
])
def test_classify_take(changes: dict[str, Any], mode: str) -> None:
    take = {**PLAIN_TAKE, **changes}
    fields = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else lua_string(v)}" for k, v in take.items())
    result = lua_eval(f"return {{core.classify_take({{{fields}}})}}")
    assert result[0] == mode
    assert len(result) == (2 if mode == "render" else 1)  # a render always says why


@pytest.mark.parametrize("source", [
    "/Users/ann/My Songs/Take 1 (final).wav",
    f"/home/ann/{UNICODE_NAME}/{UNICODE_NAME}.wav",
    "C:\\Users\\ann\\Music\\Take \"quoted\" 1.wav",
])
def test_build_request_is_a_valid_separation_request(source: str) -> None:
    code = f"""
    local item = {{mode = "file", file_path = {lua_string(source)}, start_offset = 1.23456789, length = 3.3333333333}}
    local request = core.build_request(item, {{preset = "piano", prompt = "ignored"}},
      {{project_dir = {lua_string("/p/My Song")}, tag = "reaper:{{GUID}}"}})
    return core.json_encode(request)
    """
    text = lua_eval(code)
    request = json.loads(text)
    assert request == {"source": source, "preset": "piano", "project_dir": "/p/My Song", "start": 1.234568,
                       "length": 3.333333, "tag": "reaper:{GUID}"}
    parsed = SeparationRequest.model_validate_json(text)  # the daemon's own model: no extra keys, right types
    assert str(parsed.source) == source and parsed.start == pytest.approx(1.234568)


def test_build_request_for_a_rendered_item_sends_the_whole_file_and_a_prompt() -> None:
    code = """
    local item = {mode = "render", rendered_path = "/p/sam-bridge renders/r-1.wav", start_offset = 5, length = 2}
    return core.build_request(item, {prompt = "distorted guitar, loud"}, {})
    """
    assert lua_eval(code) == {"source": "/p/sam-bridge renders/r-1.wav", "prompt": "distorted guitar, loud"}


def test_build_request_needs_a_preset_or_prompt() -> None:
    code = """
    local ok, err = pcall(core.build_request, {mode = "file", file_path = "/a.wav", length = 1}, {prompt = "  "})
    return {ok, err}
    """
    ok, err = lua_eval(code)
    assert ok is False and "preset" in err


def test_request_names_are_safe_file_names() -> None:
    name = lua_eval('return core.request_name("20250101-120000", "0a1b", 7)')
    assert name == "reaper-20250101-120000-0a1b-7"


# --- status files ---------------------------------------------------------------------------------


def parse_status(doc: Any) -> Any:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return lua_eval(f"local s, err = core.parse_status({lua_string(text)}) return s or {{failed = err}}")


def test_parse_status_keeps_stem_order_and_reads_every_field() -> None:
    stems = {"vocals": "/s/a - vocals.wav", "drums": "/s/a - drums.wav", "bass": "/s/a - bass.wav",
             "other": "/s/a - other.wav"}
    status = parse_status({"schema": 1, "request": "r.json", "job_id": "j1", "tag": "t", "state": "done",
                           "progress": 1, "message": "Done", "updated_at": "x", "stems": stems,
                           "manifest": "/s/a.sam.json", "error": None, "flags": ["slow"]})
    assert [(s["label"], s["path"]) for s in status["stems"]] == list(stems.items())
    assert status["finished"] is True and status["state"] == "done"
    assert status["manifest"] == "/s/a.sam.json" and status["job_id"] == "j1" and status["flags"] == ["slow"]
    assert "error" not in status  # null -> absent


@pytest.mark.parametrize(("progress", "expected"), [(0.45, 0.45), (1.7, 1.0), (-2, 0.0), ("half", 0.0)])
def test_parse_status_clamps_progress(progress: Any, expected: float) -> None:
    status = parse_status({"state": "running", "progress": progress})
    assert status["progress"] == pytest.approx(expected)
    assert status["finished"] is False


def test_parse_status_of_a_failure_and_of_garbage() -> None:
    failed = parse_status({"state": "failed", "progress": 0.3, "message": "Failed",
                           "error": "The audio file could not be read."})
    assert failed["finished"] is True
    assert lua_eval("return core.failure_text({error = 'E', message = 'M'})") == "E"
    assert lua_eval("return core.failure_text({message = ''})") == "sam-bridge did not say why."
    assert failed["error"] == "The audio file could not be read."
    assert "failed" in parse_status('{"state": "running", "progr')  # caught mid-write: read again later


# --- naming and display ---------------------------------------------------------------------------


def test_track_names() -> None:
    assert lua_eval('return core.track_name("Guitar", {preset = "piano"}, "target")') == "Guitar · piano (target)"
    long_prompt = "a very long description of a distorted electric guitar solo"
    name = lua_eval(f'return core.track_name("Gtr", {{prompt = {lua_string(long_prompt)}}}, "residual")')
    assert name == 'Gtr · "a very long description of a di…" (residual)'  # 32 characters in quotes
    unicode = lua_eval(f'return core.track_name({lua_string(UNICODE_NAME)}, {{preset = "吉他"}}, "vocals")')
    assert unicode == f"{UNICODE_NAME} · 吉他 (vocals)"
    assert lua_eval('return core.fallback_track_name("", 3.0)') == "Track 3"
    assert lua_eval('return core.fallback_track_name("  ", 12)') == "Track 12"


def test_progress_line() -> None:
    code = """
    return {
      core.progress_line({label = "Gtr",
        status = {state = "running", progress = 0.456, message = "on fal", finished = false}}),
      core.progress_line({label = "Gtr", note = "cancelling…"}),
      core.progress_line({label = "Gtr", status = {state = "done", progress = 1, message = "", finished = true}}),
    }
    """
    assert lua_eval(code) == ["Gtr — separating 46% — on fal", "Gtr — sent — cancelling…", "Gtr — done"]


def test_render_settings_render_exactly_the_item() -> None:
    numbers, strings = lua_eval(
        'return {core.render_settings("/p/r", "name", {render_channels = 1, render_rate = 44100})}')
    assert numbers["RENDER_SETTINGS"] == 32 and numbers["RENDER_BOUNDSFLAG"] == 4
    assert numbers["RENDER_TAILFLAG"] == 0 and numbers["RENDER_NORMALIZE"] == 0 and numbers["RENDER_ADDTOPROJ"] == 0
    assert numbers["RENDER_CHANNELS"] == 1 and numbers["RENDER_SRATE"] == 44100
    assert strings == {"RENDER_FILE": "/p/r", "RENDER_PATTERN": "name", "RENDER_FORMAT": "ZXZhdxgAAQ==",
                       "RENDER_FORMAT2": ""}
    # MIDI too: the item's own signal before the track's FX, never "via master" (64: track + master FX)
    assert lua_eval('return core.render_settings("/p", "n", {is_midi = true}).RENDER_SETTINGS') == 32
    keys = lua_eval("return {core.RENDER_NUMBER_KEYS, core.RENDER_STRING_KEYS}")
    assert set(keys[0]) == set(numbers) and set(keys[1]) == set(strings)  # all saved and restored


@pytest.mark.parametrize(("take", "channels"), [
    ({"channels": 1}, 1), ({"channels": 2}, 2), ({"channels": 6}, 6), ({"channels": 2, "channel_mode": 2}, 1),
    ({"channels": 2, "channel_mode": 1}, 2), ({"channels": 8, "channel_mode": 68}, 2), ({"is_midi": True}, 2),
])
def test_render_channels(take: dict[str, Any], channels: int) -> None:
    fields = ",".join(f"{k}={json.dumps(v)}" for k, v in take.items())
    assert lua_eval(f"return core.render_channels({{{fields}}})") == channels


def test_paths() -> None:
    code = """
    return {
      core.join("/a/b", "c", "d.wav"), core.join("C:\\\\x", "y"), core.join("/a/", "b"),
      core.dirname("/a/b/c.wav"), core.dirname("/c.wav"), core.dirname("C:\\\\c.wav"),
      core.basename("C:\\\\dir\\\\My File.WAV"), core.extension("C:\\\\dir\\\\My File.WAV"), core.stem("/x/a.b.wav"),
      core.is_absolute("/a"), core.is_absolute("C:\\\\a"), core.is_absolute("a/b"),
    }
    """
    assert lua_eval(code) == ["/a/b/c/d.wav", "C:\\x\\y", "/a/b", "/a/b", "/", "C:\\", "My File.WAV", "wav",
                              "a.b", True, True, False]


# --- the actions on a stand-in REAPER -------------------------------------------------------------

PRESETS = {"presets": [
    {"name": "piano", "description": "piano playing", "tags": [], "stems": None, "origin": "builtin"},
    {"name": "band", "description": "", "tags": [], "stems": ["vocals", "drums", "bass", "other"], "origin": "builtin"},
]}


class Setup:
    def __init__(self, tmp_path: Path, project_name: str = f"My Song {UNICODE_NAME}") -> None:
        self.root = tmp_path
        self.state_dir = tmp_path / "state"
        self.requests_dir = tmp_path / "state" / "req uests é"
        self.requests_dir.mkdir(parents=True)
        self.project_dir = tmp_path / project_name
        self.project_dir.mkdir()
        (self.state_dir / "daemon.json").write_text(json.dumps({
            "pid": 1, "version": "0.1.0", "requests_dir": str(self.requests_dir),
            "osc": {"host": "127.0.0.1", "port": 9010}, "presets_file": str(self.state_dir / "presets.json"),
            "hot_folder": None, "service": "local", "started_at": "2025-01-01T00:00:00Z"}))
        (self.state_dir / "presets.json").write_text(json.dumps(PRESETS))
        write_heartbeat(self.state_dir, age=-3600)  # a daemon alive for the whole test
        self.source = self.project_dir / f"{UNICODE_NAME} take.wav"
        sf.write(self.source, np.zeros((48000 * 30, 2), dtype=np.float32), 48000)
        self.hosts: list[ReaperHost] = []

    def scenario(self, **overrides: Any) -> dict[str, Any]:
        take = {"name": "Guitar 01", "file": str(self.source), "source_length": 30.0, "channels": 2,
                "samplerate": 48000, "values": {"D_STARTOFFS": 2.5, "D_VOL": 0.8, "D_PAN": -0.25}}
        take.update(overrides.pop("take", {}))
        item = {"position": 10.0, "length": 4.0, "selected": True, "guid": "{ITEM-1}", "take": take,
                "values": {"D_FADEINLEN": 0.1, "D_FADEOUTLEN": 0.2, "D_VOL": 0.5}}
        item.update(overrides.pop("item", {}))
        scenario = {
            "os": "linux-x86_64", "project_file": str(self.project_dir / "My Song.rpp"),
            "tracks": [{"name": "Drums", "items": []}, {"name": "Guitar", "color": 0x1FF0000, "items": [item]},
                       {"name": "Bass", "items": []}],
            "answers": {"menu": [1]},
        }
        scenario.update(overrides)
        return scenario

    def host(self, scenario: dict[str, Any], env: dict[str, str] | None = None, lua: str | None = None,
             estimates: bool = True) -> ReaperHost:
        """`estimates`: a stand-in daemon answers the estimate requests (cheap: no question asked)."""
        host = ReaperHost(scenario, self.root, {"SAM_BRIDGE_STATE_DIR": str(self.state_dir), **(env or {})}, lua=lua,
                          estimates_in=self.requests_dir if estimates else None)
        self.hosts.append(host)
        return host

    def requests(self) -> list[Path]:
        """The real requests (what is paid for), not the estimate requests before them."""
        return sorted(p for p in self.requests_dir.glob("*.json")
                      if not p.name.endswith((".status.json", ESTIMATE_SUFFIX)))

    def estimate_requests(self) -> list[Path]:
        return sorted(self.requests_dir.glob("*" + ESTIMATE_SUFFIX))

    def stems(self, labels: list[str], seconds: float = 4.0) -> dict[str, str]:
        stem_dir = self.project_dir / "Stems"
        stem_dir.mkdir(exist_ok=True)
        paths = {}
        for label in labels:
            path = stem_dir / f"take - {label}.wav"
            sf.write(path, np.zeros((int(48000 * seconds), 2), dtype=np.float32), 48000)
            paths[label] = str(path)
        return paths


def only_request(setup: Setup) -> tuple[str, dict[str, Any]]:
    [path] = setup.requests()
    return path.name.removesuffix(".json"), json.loads(path.read_text(encoding="utf-8"))


def test_separate_writes_a_request_for_a_plain_take(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, request = only_request(setup)
    assert request == {"source": str(setup.source), "preset": "piano", "start": 2.5, "length": 4.0,
                       "project_dir": str(setup.project_dir), "tag": "reaper:{ITEM-1}"}
    assert re.fullmatch(r"reaper-\d{8}-\d{6}-[0-9a-f]{4}-\d+", name)
    SeparationRequest.model_validate(request)
    assert not list(setup.requests_dir.glob("*.tmp"))
    state = host.state()
    assert state["menus"][0].startswith("piano|band  (4 stems)||")
    assert state["messages"] == []
    assert state["pending"] == 1  # polling in a defer loop, never blocking
    assert state["last_frame"][0] == "Guitar 01 — sent"
    assert state["ext"]["sam-bridge/active"].endswith(f"\t{setup.requests_dir / name}.cancel")


def menu_fields(state: dict[str, Any]) -> list[str]:
    return [f for f in state["menus"][0].split("|") if f]  # what gfx.showmenu numbers


def project_list(setup: Setup) -> Path:
    """Where the daemon answers this project's preset list (daemon.json's project_presets_dir)."""
    key = lua_eval(f"return core.project_key({lua_string(str(setup.project_dir))})")
    return setup.state_dir / "project-presets" / f"{key}.json"


def answer_project_list(setup: Setup) -> None:
    """What the daemon writes for a project's `.want`: the real code that does it, run here."""
    from bridge.presets.library import PresetLibrary, default_search_path
    from bridge.presets.project_lists import ProjectPresetLists

    shared = PresetLibrary(default_search_path(config_dir=setup.root / "no-config"), quiet=True)
    ProjectPresetLists(shared, setup.state_dir / "project-presets").refresh()


def test_a_projects_own_presets_come_from_the_daemons_list_without_blocking(setup: Setup) -> None:
    folder = setup.project_dir / "sam-bridge" / "presets"
    folder.mkdir(parents=True)
    (folder / "room.yaml").write_text("name: Room tone\nprompt: the hum of the room\n")
    (folder / "broken.yaml").write_text("name: [oops\n")
    host = setup.host(setup.scenario(answers={"menu": [0]}))
    host.run(SEPARATE_SCRIPT)
    state = host.state()
    assert state["menus"] == [] and state["pending"] == 1  # waits for the list in a defer loop
    want = project_list(setup).with_suffix(".want")
    assert want.read_text(encoding="utf-8") == str(setup.project_dir)
    answer_project_list(setup)
    host.tick()
    state = host.state()
    assert state["executed"] == [] and state["longest_cycle"] <= 0.1  # no process, no UI thread held
    fields = menu_fields(state)
    assert "Room tone" in fields and "piano" in fields and "4-stems  (4 stems)" in fields  # its own + shared
    [message] = [m["text"] for m in state["messages"]]  # the broken file is named; the rest of the menu works
    assert "broken.yaml:" in message and "not in the menu" in message
    second = setup.host(setup.scenario(answers={"menu": [fields.index("Room tone") + 1]}))
    second.run(SEPARATE_SCRIPT)  # the list is there now: the menu comes at once
    _, request = only_request(setup)
    assert request["preset"] == "Room tone" and request["project_dir"] == str(setup.project_dir)


def test_without_presets_of_its_own_a_project_gets_the_shared_list_at_once(setup: Setup) -> None:
    host = setup.host(setup.scenario(answers={"menu": [0]}))
    host.run(SEPARATE_SCRIPT)
    state = host.state()
    assert state["executed"] == []
    assert menu_fields(state)[:2] == ["piano", "band  (4 stems)"]


def test_when_the_project_list_does_not_come_the_shared_one_is_offered(setup: Setup) -> None:
    (setup.project_dir / "sam-bridge" / "presets").mkdir(parents=True)
    (setup.project_dir / "sam-bridge" / "presets" / "room.yaml").write_text("name: Room tone\nprompt: hum\n")
    host = setup.host(setup.scenario(answers={"menu": [0]}))
    host.run(SEPARATE_SCRIPT)
    host.tick(n=200, dt=0.05)
    state = host.state()
    [message] = [m["text"] for m in state["messages"]]
    assert "could not be listed" in message and "shared ones only" in message
    assert menu_fields(state)[:2] == ["piano", "band  (4 stems)"]
    assert state["longest_cycle"] <= 0.1


def test_done_inserts_stems_under_the_source_track_in_one_undo_block(setup: Setup) -> None:
    host = setup.host(setup.scenario(ext_state={"sam-bridge/mute_source": "1"}))
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="running", progress=0.45, message="separating on fal")
    host.tick()
    assert host.state()["last_frame"][:2] == ["Guitar 01 — separating 45%, about 1 s left — separating on fal", "[ x ]"]
    stems = setup.stems(["target", "residual"])
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=stems, message="done")
    host.tick()
    state = host.state()
    assert [t["name"] for t in state["tracks"]] == [
        "Drums", "Guitar", "Guitar · piano (target)", "Guitar · piano (residual)", "Bass"]
    for track, label in zip(state["tracks"][2:4], ["target", "residual"], strict=True):
        assert track["values"]["I_CUSTOMCOLOR"] == 0x1FF0000
        [item] = track["items"]
        assert item["values"]["D_POSITION"] == 10.0 and item["values"]["D_LENGTH"] == 4.0
        assert item["values"]["D_FADEINLEN"] == 0.1 and item["values"]["D_VOL"] == 0.5  # plays like the source
        [take] = item["takes"]
        assert take["source"] == stems[label]
        assert take["values"]["D_STARTOFFS"] == 0 and take["values"]["D_PAN"] == -0.25
        assert take["name"] == f"take - {label}"
    assert state["tracks"][1]["items"][0]["values"]["B_MUTE"] == 1
    assert state["undo_blocks"] == ["sam-bridge: stems of Guitar 01"]
    assert state["undo_depth"] == 0 and state["refresh_depth"] == 0
    assert state["messages"] == []
    host.tick(n=200, dt=0.1)  # the window closes a moment after the last job
    state = host.state()
    assert state["pending"] == 0 and state["window_open"] is False
    assert state["ext"]["sam-bridge/active"] == ""
    assert len(state["tracks"]) == 5  # inserted once


def test_stem_sets_get_one_track_each_in_the_daemons_order(setup: Setup) -> None:
    host = setup.host(setup.scenario(answers={"menu": [2]}))
    host.run(SEPARATE_SCRIPT)
    name, request = only_request(setup)
    assert request["preset"] == "band"
    stems = setup.stems(["vocals", "drums", "bass", "other"])
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=stems)
    host.tick()
    names = [t["name"] for t in host.state()["tracks"]]
    assert names[2:6] == [f"Guitar · band ({label})" for label in ["vocals", "drums", "bass", "other"]]
    assert names[6] == "Bass"
    assert host.state()["tracks"][1]["items"][0]["values"]["B_MUTE"] == 0  # mute is off by default


def test_stems_stay_inside_the_folder_the_source_track_closes(setup: Setup) -> None:
    scenario = setup.scenario()
    scenario["tracks"][1]["depth"] = -1
    host = setup.host(scenario)
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.tick()
    depths = [t["values"]["I_FOLDERDEPTH"] for t in host.state()["tracks"]]
    assert depths == [0, 0, 0, -1, 0]


def test_items_that_need_rendering_are_rendered_and_settings_restored(setup: Setup) -> None:
    fixture = setup.root / "rendered.wav"
    sf.write(fixture, np.zeros((int(44100 * 4.0), 1), dtype=np.float32), 44100)
    scenario = setup.scenario(render_fixture=str(fixture),
                              take={"values": {"D_PLAYRATE": 2.0, "D_STARTOFFS": 1.0}, "samplerate": 44100,
                                    "channels": 2})
    scenario["tracks"][0]["items"] = [{"position": 0, "length": 1, "selected": True, "guid": "{OTHER}"}]
    scenario["tracks"][2]["items"] = [{"position": 3, "length": 1, "selected": False, "guid": "{UNSELECTED}",
                                       "take": {"file": str(setup.source)}}]
    host = setup.host(scenario)
    before = host.state()
    host.run(SEPARATE_SCRIPT)
    state = host.state()
    [render] = state["renders"]
    assert render["selected"] == ["{ITEM-1}"]  # only the item being rendered
    assert render["numbers"]["RENDER_SETTINGS"] == 32 and render["numbers"]["RENDER_TAILFLAG"] == 0
    assert render["numbers"]["RENDER_NORMALIZE"] == 0 and render["numbers"]["RENDER_SRATE"] == 44100
    assert render["strings"]["RENDER_FILE"] == str(setup.project_dir / "sam-bridge renders")
    assert state["project_info"] == before["project_info"] and state["project_strings"] == before["project_strings"]
    assert [i["selected"] for t in state["tracks"] for i in t["items"]] == [True, True, False]
    assert [m["text"] for m in state["messages"]] == ["Some items were not sent:\n\nDrums: the item is empty"]
    name, request = only_request(setup)
    assert request == {"source": render["target"], "preset": "piano", "project_dir": str(setup.project_dir),
                       "tag": "reaper:{ITEM-1}"}
    assert Path(request["source"]).exists() and Path(request["source"]).stem == name
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.tick()
    stem_item = host.state()["tracks"][3]["items"][0]
    assert stem_item["values"]["D_POSITION"] == 10.0 and stem_item["values"]["D_LENGTH"] == 4.0
    assert stem_item["values"]["D_VOL"] == 1 and stem_item["values"].get("D_FADEINLEN", 0) == 0  # baked in


def test_a_failure_shows_the_daemons_message(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    error = "fal refused the key (401).\nCheck FAL_KEY, then try again."
    write_status(setup.requests_dir, name, state="failed", progress=0.2, message="Failed", error=error)
    host.tick()
    state = host.state()
    assert [m["text"] for m in state["messages"]] == [f"Guitar 01 could not be separated.\n\n{error}"]
    assert len(state["tracks"]) == 3
    assert state["last_frame"][0] == "Guitar 01 — failed — Failed"


def test_cancel_action_writes_cancel_files_and_the_loop_ends(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.run(CANCEL_SCRIPT)
    cancel_file = setup.requests_dir / f"{name}.cancel"
    assert cancel_file.exists() and cancel_file.read_bytes() == b""
    host.tick(n=1, dt=0.05)  # the running instance sees it on its next cycle and ends
    state = host.state()
    assert state["pending"] == 0 and state["running"] == 0 and len(state["tracks"]) == 3 and state["messages"] == []
    assert state["proj_ext"].get("sam-bridge-jobs", {}) == {}  # cancelled: not collected later


def test_cancel_with_nothing_running_says_so(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(CANCEL_SCRIPT)
    assert [m["text"] for m in host.state()["messages"]] == [
        "Nothing to cancel: no separation started from REAPER is running."]


def test_cancel_all_button_in_the_window(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    assert host.send(cmd="click", x=10_000, y=10_000)["ok"]
    assert (setup.requests_dir / f"{name}.cancel").exists()
    state = host.state()  # the script ended on that very cycle: no waiting for the daemon's answer
    assert state["pending"] == 0 and state["running"] == 0 and not state["window_open"]


def test_daemon_not_running(setup: Setup, tmp_path: Path) -> None:
    host = setup.host(setup.scenario(), env={"SAM_BRIDGE_STATE_DIR": str(tmp_path / "nowhere"),
                                               "HOME": str(tmp_path / "nohome"), "XDG_STATE_HOME": ""})
    host.run(SEPARATE_SCRIPT)
    state = host.state()
    assert len(state["messages"]) == 1 and "sam-bridge run" in state["messages"][0]["text"]
    assert state["menus"] == [] and setup.requests() == []


def test_nothing_selected(setup: Setup) -> None:
    host = setup.host(setup.scenario(item={"selected": False}))
    host.run(SEPARATE_SCRIPT)
    assert [m["text"] for m in host.state()["messages"]] == [
        "Select the items to separate first, then run this action again."]
    assert setup.requests() == []


def test_ad_hoc_prompt_keeps_commas_and_is_remembered(setup: Setup) -> None:
    host = setup.host(setup.scenario(answers={"menu": [3], "inputs": [[True, "distorted guitar, loud"]]}))
    host.run(SEPARATE_SCRIPT)
    _, request = only_request(setup)
    assert request["prompt"] == "distorted guitar, loud" and "preset" not in request
    state = host.state()
    assert "separator=\n" in state["input_captions"][0]["captions"]
    assert state["ext"]["sam-bridge/last_prompt"] == "distorted guitar, loud"


def test_dismissing_the_menu_or_the_prompt_sends_nothing(setup: Setup) -> None:
    host = setup.host(setup.scenario(answers={"menu": [0]}))
    host.run(SEPARATE_SCRIPT)
    host2 = setup.host(setup.scenario(answers={"menu": [3], "inputs": [[False, ""]]}))
    host2.run(SEPARATE_SCRIPT)
    assert setup.requests() == []
    assert host.state()["pending"] == 0 and host2.state()["pending"] == 0


def test_mute_toggle_in_the_menu_is_remembered(setup: Setup) -> None:
    host = setup.host(setup.scenario(answers={"menu": [4, 1]}))
    host.run(SEPARATE_SCRIPT)
    state = host.state()
    assert state["ext"]["sam-bridge/mute_source"] == "1"
    assert "|!Mute source items when the stems arrive|" in state["menus"][1]
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.tick()
    assert host.state()["tracks"][1]["items"][0]["values"]["B_MUTE"] == 1


def test_stems_wait_for_their_project_tab(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.send(cmd="switch_project", other=True)
    host.tick(n=5)
    state = host.state()
    assert len(state["tracks"]) == 3 and state["pending"] == 1
    assert "switch back" in state["last_frame"][0]
    host.send(cmd="switch_project", other=False)
    host.tick()
    assert len(host.state()["tracks"]) == 5


def test_source_track_deleted_meanwhile_stems_go_to_the_end(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.send(cmd="delete_track", index=1)
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.tick()
    state = host.state()
    assert [t["name"] for t in state["tracks"]] == ["Drums", "Bass", "Guitar · piano (target)",
                                                    "Guitar · piano (residual)"]
    assert state["messages"] == []


def test_missing_stem_file_is_reported(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    write_status(setup.requests_dir, name, state="done", progress=1.0,
                 stems={"target": str(setup.root / "gone.wav"), "residual": str(setup.root / "gone2.wav")})
    host.tick()
    state = host.state()
    assert len(state["tracks"]) == 3
    assert "missing" in state["messages"][0]["text"] and "gone.wav" in state["messages"][0]["text"]


def test_slow_pickup_is_explained_and_half_written_status_is_ignored(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.tick(n=1, dt=20)
    assert "has not picked this up yet" in host.state()["last_frame"][0]
    (setup.requests_dir / f"{name}.status.json").write_text('{"state": "runn', encoding="utf-8")
    host.tick()
    assert host.state()["pending"] == 1
    write_status(setup.requests_dir, name, state="uploading", progress=0.1)
    host.tick()
    assert host.state()["last_frame"][0] == "Guitar 01 — uploading 10%, about 4 min left"  # 20 s for 10%


def test_closing_the_window_keeps_working_in_the_background(setup: Setup) -> None:
    host = setup.host(setup.scenario())
    host.run(SEPARATE_SCRIPT)
    name, _ = only_request(setup)
    host.send(cmd="close_window")
    host.tick()
    frames = host.state()["frame_count"]
    assert host.state()["window_open"] is False and host.state()["pending"] == 1
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.tick()
    state = host.state()
    assert len(state["tracks"]) == 5 and state["pending"] == 0 and state["frame_count"] == frames


def test_several_items_each_get_a_request(setup: Setup) -> None:
    scenario = setup.scenario()
    second = json.loads(json.dumps(scenario["tracks"][1]["items"][0]))
    second.update(guid="{ITEM-2}", position=20.0, length=1.5)
    second["take"]["values"]["D_STARTOFFS"] = 0.0
    scenario["tracks"][2]["items"] = [second]
    host = setup.host(scenario)
    host.run(SEPARATE_SCRIPT)
    requests = [json.loads(p.read_text(encoding="utf-8")) for p in setup.requests()]
    assert sorted((r["tag"], r["start"], r["length"]) for r in requests) == [
        ("reaper:{ITEM-1}", 2.5, 4.0), ("reaper:{ITEM-2}", 0, 1.5)]
    # two lines with their own cancel buttons, Cancel all, and what the two cost (asked for first)
    assert host.state()["last_frame"][4:] == ["[ Cancel all ]", "Estimated cost: $0.10 for 2 items (8.0 s, 2 requests)"]
    assert len(setup.estimate_requests()) == 2


@pytest.mark.skipif(not shutil.which("lua5.3"), reason="lua5.3 is not installed (REAPER 6 runs Lua 5.3)")
def test_the_scripts_also_run_on_lua_5_3(setup: Setup) -> None:
    for path in REAPER_DIR.glob("*.lua"):
        assert subprocess.run(["luac5.3", "-p", str(path)], capture_output=True).returncode == 0, path
    host = ReaperHost(setup.scenario(), setup.root, {"SAM_BRIDGE_STATE_DIR": str(setup.state_dir)},
                      lua=shutil.which("lua5.3"), estimates_in=setup.requests_dir)
    setup.hosts.append(host)
    host.run(SEPARATE_SCRIPT)
    name, request = only_request(setup)
    assert request["start"] == 2.5 and request["length"] == 4.0
    write_status(setup.requests_dir, name, state="done", progress=1.0, stems=setup.stems(["target", "residual"]))
    host.tick()
    assert [t["name"] for t in host.state()["tracks"]][2:4] == ["Guitar · piano (target)",
                                                              "Guitar · piano (residual)"]


# --- with the real daemon -------------------------------------------------------------------------


def run_until_finished(host: ReaperHost, seconds: float = 60.0) -> dict[str, Any]:
    """Ticks the script, letting real time pass between ticks, until its defer loop ends. Stems inserted
    with a warning keep the window up until the user closes it: the user reads it and closes it here (the
    loop waited out its whole minute for that before)."""
    deadline = time.monotonic() + seconds
    while host.tick(n=1, dt=0.25)["pending"] and time.monotonic() < deadline:
        frame = host.state()["last_frame"]
        if frame and all(" — stems inserted — " in line for line in frame if " — " in line and "[" not in line):
            host.send(cmd="close_window")
        time.sleep(0.05)
    return host.state()


def wait_for_request(host: ReaperHost, requests_dir: Path, seconds: float = 30.0) -> Path:
    """Ticks the script until it has the daemon's estimate and writes the real request."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [p for p in requests_dir.glob("*.json") if not p.name.endswith((".status.json", ESTIMATE_SUFFIX))]
        if found:
            [request_file] = found
            return request_file
        host.tick(n=1, dt=0.25)
        time.sleep(0.05)
    raise AssertionError(f"no request written: {host.state()['messages']}")


@pytest.mark.daemon
@pytest.mark.timeout(180)
@pytest.mark.parametrize("render", [False, True], ids=["plain-take", "rendered-item"])
def test_the_daemon_separates_what_the_script_asks_for(
    render: bool, user_dirs: dict[str, Path], service: Any, daemon_factory: Any
) -> None:
    pytest.importorskip("bridge.daemon")
    project = user_dirs["home"] / f"Song {UNICODE_NAME}"
    project.mkdir()
    rate = 44100
    t = np.arange(rate * 12) / rate
    source_audio = np.stack([0.3 * np.sin(2 * math.pi * 220 * t), 0.2 * np.sin(2 * math.pi * 3000 * t)], axis=1)
    source = project / f"{UNICODE_NAME}.wav"
    sf.write(source, source_audio, rate, subtype="FLOAT")
    start, length = 2.0, 3.5
    segment = source_audio[round(start * rate): round((start + length) * rate)]
    fixture = user_dirs["home"] / "render.wav"  # what REAPER would render for the item
    sf.write(fixture, segment, rate, subtype="FLOAT")
    info = daemon_factory(service.url).start()
    presets = json.loads(Path(str(info["presets_file"])).read_text(encoding="utf-8"))["presets"]
    scenario = {
        "os": "linux-x86_64", "project_file": str(project / "Song.rpp"),
        "tracks": [{"name": "Mix", "items": [{
            "position": 8.0, "length": length, "selected": True, "guid": "{MIX}",
            "take": {"name": "mix", "file": str(source), "source_length": 12.0, "channels": 2,
                     "samplerate": rate, "values": {"D_STARTOFFS": start}, "fx": 1 if render else 0}}]}],
        "answers": {"menu": [len(presets) + 1], "inputs": [[True, "low hum"]]},
        "render_fixture": str(fixture),
    }
    host = ReaperHost(scenario, user_dirs["home"], {})
    try:
        host.run(SEPARATE_SCRIPT)
        requests_dir = Path(str(info["requests_dir"]))
        request_file = wait_for_request(host, requests_dir)  # after the daemon's estimate
        request = json.loads(request_file.read_text(encoding="utf-8"))
        assert ("start" in request) is (not render)
        state = run_until_finished(host)
    finally:
        host.close()
    assert state["messages"] == [], state["messages"]
    tracks = state["tracks"]
    assert [t["name"] for t in tracks] == ["Mix", 'Mix · "low hum" (target)', 'Mix · "low hum" (residual)']
    stems = []
    for track in tracks[1:]:
        [item] = track["items"]
        assert item["values"]["D_POSITION"] == 8.0 and item["values"]["D_LENGTH"] == length
        audio, stem_rate = sf.read(item["takes"][0]["source"], always_2d=True)
        assert stem_rate == rate and audio.shape == segment.shape
        stems.append(audio)
    assert not np.allclose(stems[0], 0) and not np.allclose(stems[1], 0)
    assert np.allclose(stems[0] + stems[1], segment, atol=1e-4)  # the stems null against the item's audio


@pytest.mark.daemon
@pytest.mark.timeout(180)
def test_a_projects_own_preset_from_the_menu_is_the_one_the_daemon_uses(
    user_dirs: dict[str, Path], service: Any, daemon_factory: Any
) -> None:
    """The daemon keeps the list of a project's presets the script asks for; the script offers them, and
    the daemon resolves the picked name with the same project folder."""
    project = user_dirs["home"] / "Podcast"
    (project / "sam-bridge" / "presets").mkdir(parents=True)
    (project / "sam-bridge" / "presets" / "hum.yaml").write_text("name: Mains hum\nprompt: low hum\n")
    rate = 44100
    t = np.arange(rate * 4) / rate
    source = project / "voice.wav"
    sf.write(source, np.stack([0.3 * np.sin(2 * math.pi * 100 * t), 0.2 * np.sin(2 * math.pi * 1000 * t)], axis=1),
             rate, subtype="PCM_24")
    info = daemon_factory(service.url).start()
    scenario = {
        "os": "linux-x86_64", "project_file": str(project / "Podcast.rpp"),
        "tracks": [{"name": "Voice", "items": [{
            "position": 0.0, "length": 4.0, "selected": True, "guid": "{V}",
            "take": {"name": "voice", "file": str(source), "source_length": 4.0, "channels": 2, "samplerate": rate}}]}],
        "answers": {"menu": [0]},
    }
    env = {"PYTHONPATH": str(ROOT)}  # the command runs this checkout's bridge, as an installed one would
    looker = ReaperHost(scenario, user_dirs["home"], env)
    try:
        looker.run(SEPARATE_SCRIPT)  # the script asks the daemon for the project's list and waits, deferred
        deadline = time.monotonic() + 30
        while not looker.state()["menus"] and time.monotonic() < deadline:
            looker.tick(n=1, dt=0.01)
            time.sleep(0.1)
        state = looker.state()
        fields = menu_fields(state)
    finally:
        looker.close()
    assert state["executed"] == [] and state["longest_cycle"] <= 0.1
    assert "Mains hum" in fields and "vocals" in fields, fields
    host = ReaperHost({**scenario, "answers": {"menu": [fields.index("Mains hum") + 1]}}, user_dirs["home"], env)
    try:
        host.run(SEPARATE_SCRIPT)
        state = run_until_finished(host)
    finally:
        host.close()
    assert state["messages"] == [], state["messages"]
    assert [t["name"] for t in state["tracks"]] == [
        "Voice", "Voice · Mains hum (target)", "Voice · Mains hum (residual)"]
    [request_file] = [p for p in Path(str(info["requests_dir"])).rglob("*.json")
                      if not p.name.endswith((".status.json", ESTIMATE_SUFFIX))]
    assert json.loads(request_file.read_text())["preset"] == "Mains hum"
    target, _ = sf.read(state["tracks"][1]["items"][0]["takes"][0]["source"], always_2d=True)
    assert target.shape == (rate * 4, 2) and float(np.max(np.abs(target))) > 0.05  # "low hum": the 100 Hz tone


@pytest.mark.daemon
@pytest.mark.timeout(120)
def test_the_daemon_keeps_a_heartbeat_and_removes_it_when_it_stops(
    user_dirs: dict[str, Path], service: Any, daemon_factory: Any
) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    heartbeat = Path(str(info["heartbeat_file"]))
    first = json.loads(heartbeat.read_text(encoding="utf-8"))
    assert first["pid"] == info["pid"] and abs(first["time"] - time.time()) < 30
    deadline = time.monotonic() + 10
    while json.loads(heartbeat.read_text(encoding="utf-8"))["time"] == first["time"]:
        assert time.monotonic() < deadline, "the heartbeat is not refreshed"
        time.sleep(0.2)
    alive = lua_eval(f"return core.heartbeat_alive({lua_string(heartbeat.read_text())}, os.time())")
    assert alive is True
    daemon.stop()
    assert not heartbeat.exists()  # a clean stop says so at once
