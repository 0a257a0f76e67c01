"""`sam-bridge presets list|show|check|example`, through bridge.cli.main and once as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bridge
from bridge.cli import main

REPO = Path(bridge.__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path, user_dirs: dict[str, Path]) -> Path:
    """A project overriding `bass`, and a user preset overriding `kick`."""
    write(user_dirs["config"] / "presets" / "mine.yaml", "name: kick\nprompt: 808 kick drum\ntags: [mine]\n")
    folder = tmp_path / "Song Project"
    write(
        folder / "sam-bridge" / "presets" / "song.yaml",
        "presets:\n- name: bass\n  prompt: upright bass\n  options: {acceleration: quality}\n",
    )
    return folder


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["presets", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_each_preset_with_its_origin(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, out, _ = run(capsys, "list", "--project", str(project))
    assert code == 0
    rows = {
        line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line and not line.startswith(" ")
    }
    assert rows["bass"] == "project" and rows["kick"] == "user" and rows["vocals"] == "built-in"
    assert '"upright bass"' in out and "stems: vocals, drums, bass + other" in out
    assert str(project / "sam-bridge" / "presets") in out


def test_list_json(capsys: pytest.CaptureFixture[str], project: Path, user_dirs: dict[str, Path]) -> None:
    write(
        user_dirs["config"] / "presets" / "broken.yaml",
        "name: broken\nprompt: x\noptions: {acceleration: warp}\n",
    )
    code, out, _ = run(capsys, "list", "--json", "--project", str(project))
    assert code == 0
    document = json.loads(out)
    by_name = {p["name"]: p for p in document["presets"]}
    assert by_name["kick"]["origin"] == "user" and by_name["kick"]["prompt"] == "808 kick drum"
    assert by_name["bass"]["file"] == str(project / "sam-bridge" / "presets" / "song.yaml")
    assert by_name["4-stems"]["stems"] == ["vocals", "drums", "bass", "other"]  # what it writes
    assert "broken" not in by_name
    assert [(p["line"], p["field"], p["preset"]) for p in document["problems"]] == [
        (3, "options.acceleration", "broken")
    ]
    assert [f["origin"] for f in document["folders"]] == ["built-in", "user", "project"]


def test_list_with_another_config_folder_takes_its_user_presets(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    """DAW scripts run `presets list` with the daemon's config folder, whatever their own environment."""
    daemons = tmp_path / "daemon config"
    write(daemons / "presets" / "mine.yaml", "name: Daemon only\nprompt: a ringing phone\n")
    code, out, _ = run(capsys, "list", "--json", "--config-dir", str(daemons))
    assert code == 0
    document = json.loads(out)
    assert {"name": "Daemon only", "origin": "user"}.items() <= next(
        p for p in document["presets"] if p["name"] == "Daemon only").items()
    assert document["folders"][1] == {"origin": "user", "path": str(daemons / "presets")}


def test_show_prints_resolved_settings(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, out, _ = run(capsys, "show", "lead-vocal")
    assert code == 0
    assert 'prompt "lead singer singing"' in out
    assert "reranking_candidates 2, acceleration quality" in out
    assert "music.yaml:" in out and "built-in" in out
    code, out, _ = run(capsys, "show", "4-stems", "--json", "--project", str(project))
    document = json.loads(out)
    assert [(s["label"], s["prompt"]) for s in document["steps"]] == [
        ("vocals", "singing voice"),
        ("drums", "drum kit"),
        ("bass", "upright bass"),
    ]
    assert document["steps"][2]["options"]["acceleration"] == "quality"  # the project's bass, resolved
    assert document["residual_label"] == "other" and document["output"]["folder"] == "Stems"


def test_show_unknown_name_exits_nonzero_with_suggestions(
    capsys: pytest.CaptureFixture[str], user_dirs: dict[str, Path]
) -> None:
    code, out, err = run(capsys, "show", "dialog")
    assert code == 2 and out == ""
    assert "There is no preset called 'dialog'" in err and "'dialogue'" in err


def test_check_good_and_bad_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, user_dirs: dict[str, Path]
) -> None:
    good = write(
        tmp_path / "good.yaml",
        "presets:\n- {name: kit, stems: [kick, snare]}\n- {name: shaker, prompt: shaker}\n",
    )
    bad = write(
        tmp_path / "bad.yaml",
        (
            "presets:\n"
            "  - name: pads\n"
            "    prompt: synthesizer pad\n"
            "    options:\n"
            "      reranking_candidates: 0\n"
            "  - name: split\n"
            "    stems: [vocals, no-such-preset]\n"
        ),
    )
    code, out, _ = run(capsys, "check", str(good))
    assert (code, out.strip()) == (0, f"{good}: ok (2 presets: kit, shaker)")
    code, out, _ = run(capsys, "check", str(good), str(bad), str(tmp_path / "missing.yaml"))
    assert code == 1
    lines = out.splitlines()
    assert f"{bad}:5: options.reranking_candidates: must be at least 1 (got 0)" in lines
    assert any(line.startswith(f"{bad}:7: stems[1]: names the preset 'no-such-preset'") for line in lines)
    assert f"{good}: ok (2 presets: kit, shaker)" in lines
    assert any(line.startswith(f"{tmp_path / 'missing.yaml'}: file: not found") for line in lines)
    assert lines[-1] == "3 problems found."


def test_example_passes_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, user_dirs: dict[str, Path]
) -> None:
    code, out, _ = run(capsys, "example")
    assert code == 0 and out.startswith("# A sam-bridge preset file")
    example = write(tmp_path / "example.yaml", out)
    code, out, _ = run(capsys, "check", str(example))
    assert (code, out.strip()) == (0, f"{example}: ok (2 presets: lead-vocal, my-band-split)")


def test_check_as_a_real_process(tmp_path: Path, user_dirs: dict[str, Path]) -> None:
    bad = write(tmp_path / "bad.yaml", "name: vox\nprompt: singing voice\noptions:\n  acceleration: turbo\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "presets", "check", str(bad)],
        cwd=REPO,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"{bad}:4: options.acceleration: must be one of 'fast', 'balanced' or 'quality' (got 'turbo')"
    )
    assert "Traceback" not in result.stderr


def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path: Path, user_dirs: dict[str, Path]) -> None:
    """`sam-bridge presets example | head -1`: the reader stops, the command must not print a traceback."""
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write fails with EPIPE, as after `head` has exited
    try:
        result = subprocess.run([sys.executable, "-m", "bridge", "presets", "example"], cwd=REPO,
                                env={**os.environ}, stdout=writer, stderr=subprocess.PIPE, text=True,
                                timeout=60, check=False)
    finally:
        os.close(writer)
    assert result.returncode == 141 and result.stderr == ""


def test_check_of_a_file_in_your_presets_folder_reports_each_problem_once(
        capsys: pytest.CaptureFixture[str], user_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = user_dirs["config"] / "presets"
    write(folder / "mine.yaml", "name: pads\nprompt: pad\noptions:\n  reranking_candidates: 0\n")
    monkeypatch.chdir(folder)  # named relative to where you are, and found in the presets folder too
    code, out, _ = run(capsys, "check", "mine.yaml")
    assert code == 1
    assert out.splitlines() == ["mine.yaml:4: options.reranking_candidates: must be at least 1 (got 0)",
                                "1 problem found."]
