"""Hot folders through the real daemon: drop a file, stems appear; two daemons on one shared folder never
both process a file (the local service's counters prove it); a corrupt file gets an .error.txt."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import wait_for
from tests.test_daemon import make_source

pytestmark = pytest.mark.timeout(180)


def drop(path: Path, data: np.ndarray, rate: int) -> Path:
    """Write like a DAW export: temp name, then rename into the hot folder."""
    temp = path.with_name(f".{path.name}.part")
    sf.write(temp, data, rate, subtype="PCM_24", format="WAV")
    os.replace(temp, path)
    return path


def stems_for(source: Path, label: str) -> tuple[Path, Path, Path]:
    base = source.parent / "Stems" / f"{source.stem} - {label}"
    return (base.with_name(base.name + ".target.wav"), base.with_name(base.name + ".residual.wav"),
            base.with_name(base.name + ".sam.json"))


def test_drop_into_a_preset_subfolder_gives_stems(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    hot = Path(str(info["hot_folder"]))
    assert (hot / "vocals").is_dir() and (hot / "4-stems").is_dir()  # one subfolder per preset
    data = np.random.default_rng(1).standard_normal((22050, 2)) * 0.1
    source = drop(hot / "vocals" / "Lead.wav", data, 44100)
    target, residual, manifest = stems_for(source, "vocals")
    wait_for(manifest.exists, timeout=60, what="the manifest")
    t, _ = sf.read(target)
    r, _ = sf.read(residual)
    s, _ = sf.read(source)
    assert t.shape == s.shape and np.max(np.abs(s - t - r)) < 1e-6
    time.sleep(1.5)  # a rescan later: our own stems inside the hot folder are not taken again
    assert service.stats()["submits"] == 1
    corrupt = hot / "vocals" / "Broken.wav"
    corrupt.write_text("a text file saved with the wrong extension, not audio")
    error = corrupt.with_name("Broken.wav.error.txt")
    wait_for(error.exists, timeout=60, what="the error file")
    assert "Broken.wav" in error.read_text() or "audio" in error.read_text().lower()
    daemon.stop()


def test_two_daemons_on_one_shared_folder_process_each_file_once(daemon_factory, service, user_dirs,
                                                                 tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    config = (f"default_hot_folder: false\nhot_rescan_interval: 1\nhot_folders:\n"
              f"  - path: {shared}\n    preset: piano\n    settle_seconds: 0.3\n")
    daemons = []
    for name in ("studio-a", "studio-b"):
        dirs = {key: tmp_path / name / key for key in ("home", "state", "config", "hot")}
        for folder in dirs.values():
            folder.mkdir(parents=True)
        (dirs["config"] / "config.yaml").write_text(config)
        daemon = daemon_factory(service.url, dirs=dirs)
        daemons.append(daemon)
    for daemon in daemons:
        daemon.start()
    sources = [make_source(shared / f"take{n:02d}.wav", seconds=0.4, seed=n) for n in range(12)]
    for source in sources:
        wait_for(stems_for(source, "piano")[2].exists, timeout=90, what=f"stems of {source.name}")
    time.sleep(1.5)
    stats = service.stats()
    assert stats["submits"] == len(sources)
    assert sorted(stats["submits_by_audio"].values()) == [1] * len(sources)
    leftovers = [p.name for p in (shared / "Stems").iterdir() if "(2)" in p.name]
    assert leftovers == []  # nobody wrote a second copy
    for daemon in daemons:
        assert daemon.stop() == 0
        assert f"hot folder:      {shared}  (preset piano)" in daemon.output()  # no subfolders to drop into
    manifests = [json.loads(stems_for(s, "piano")[2].read_text()) for s in sources]
    assert all(m["source"]["frames"] == int(0.4 * 44100) for m in manifests)


def _stems_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".wav"}


def test_a_file_moved_back_from_done_is_taken_again_at_no_charge_under_new_names(
        daemon_factory, service, user_dirs, tmp_path: Path) -> None:
    """`mv done/Take.wav .` keeps the file's time: it used to be left alone. Back in the folder, it is a new
    job; the engine's dedupe reuses the first result (no second request to the service) and writes the stems
    beside the first ones under new names, overwriting nothing. No rescan helps (its interval is long)."""
    hot = tmp_path / "retake"
    hot.mkdir()
    (user_dirs["config"] / "config.yaml").write_text(
        f"default_hot_folder: false\nhot_rescan_interval: 600\nhot_folders:\n"
        f"  - path: {hot}\n    preset: piano\n    settle_seconds: 0.3\n    after_success: move-to-done\n")
    daemon = daemon_factory(service.url)
    daemon.start()
    source = make_source(hot / "Take.wav", seconds=0.5, seed=7)
    first_manifest = stems_for(source, "piano")[2]
    wait_for(lambda: (hot / "done" / "Take.wav").exists(), timeout=60, what="the first job and the move")
    first = _stems_of(hot / "Stems")
    assert len(first) == 2 and first_manifest.exists() and service.stats()["submits"] == 1
    os.rename(hot / "done" / "Take.wav", source)
    wait_for(lambda: len(_stems_of(hot / "Stems")) == 4 and (hot / "done" / "Take.wav").exists(), timeout=60,
             what="the second job's stems and the second move")
    stems = _stems_of(hot / "Stems")
    assert {name: stems[name] for name in first} == first  # the first stems untouched
    new = {name: data for name, data in stems.items() if name not in first}
    assert sorted(new.values()) == sorted(first.values())  # the same result, under new names
    assert all("(2)" in name for name in new), sorted(new)
    reused = [json.loads(p.read_text()) for p in (hot / "Stems").glob("*.sam.json") if p != first_manifest]
    assert len(reused) == 1 and reused[0]["reused_from"] == str(first_manifest)
    time.sleep(1.5)
    assert service.stats()["submits"] == 1  # never paid twice
    assert daemon.stop() == 0


def test_a_sidecar_edited_after_the_job_is_a_new_job_and_one_saved_unchanged_costs_nothing(
        daemon_factory, service, user_dirs, tmp_path: Path) -> None:
    hot = tmp_path / "sidecars"
    hot.mkdir()
    (user_dirs["config"] / "config.yaml").write_text(
        f"default_hot_folder: false\nhot_rescan_interval: 600\nhot_folders:\n"
        f"  - path: {hot}\n    preset: piano\n    settle_seconds: 0.3\n")
    sidecar = hot / "Band.sam.yaml"
    sidecar.write_text("prompt: bass guitar\n")
    time.sleep(0.4)
    daemon = daemon_factory(service.url)
    daemon.start()
    make_source(hot / "Band.wav", seconds=0.5, seed=8)
    wait_for(lambda: len(list((hot / "Stems").glob("*.sam.json"))) == 1 if (hot / "Stems").is_dir() else False,
             timeout=60, what="the first job's stems")
    assert service.stats()["submits"] == 1
    sidecar.write_text("prompt: bass guitar\n")  # saved again, unchanged
    time.sleep(2.0)
    assert service.stats()["submits"] == 1 and len(list((hot / "Stems").glob("*.sam.json"))) == 1
    sidecar.write_text("prompt: drum kit\n")
    wait_for(lambda: len(list((hot / "Stems").glob("*.sam.json"))) == 2, timeout=60, what="the new prompt's stems")
    assert service.stats()["submits"] == 2
    prompts = sorted(json.loads(p.read_text())["request"]["prompt"] for p in (hot / "Stems").glob("*.sam.json"))
    assert prompts == ["bass guitar", "drum kit"]
    assert daemon.stop() == 0


def test_a_configured_hot_folder_missing_at_start_is_not_made_and_is_watched_once_it_appears(
        daemon_factory, service, user_dirs, tmp_path: Path) -> None:
    """A hot folder on a drive not connected (`/Volumes/Projects/hot`): the daemon starts without making it
    (on the wrong disk, or failing for a path it may not make), says so in its start-up lines and the log,
    and takes files from it as soon as it appears."""
    drive = tmp_path / "Volumes" / "Projects"
    hot = drive / "hot"
    unmakeable = tmp_path / "offline.txt" / "hot"  # mkdir fails (even as root): it used to stop the daemon
    unmakeable.parent.write_text("not a folder")
    (user_dirs["config"] / "config.yaml").write_text(
        f"default_hot_folder: false\nhot_rescan_interval: 600\nhot_folders:\n"
        f"  - path: {hot}\n    preset: piano\n    settle_seconds: 0.3\n"
        f"  - path: {unmakeable}\n    preset: piano\n")
    daemon = daemon_factory(service.url)
    daemon.start()
    wait_for(lambda: "Press Ctrl-C" in daemon.output(), timeout=30, what="the start-up lines")
    assert not drive.exists()
    lines = [line for line in daemon.output().splitlines() if str(hot) in line]
    assert any("hot folder:" in line and "missing" in line for line in lines), daemon.output()
    drive.mkdir(parents=True)  # the drive is connected
    hot.mkdir()
    source = make_source(hot / "Take.wav", seconds=0.5, seed=9)
    wait_for(stems_for(source, "piano")[2].exists, timeout=60, what="the stems of the file in the new folder")
    assert daemon.stop() == 0


def test_a_file_named_stems_in_a_hot_folder_is_said_in_the_error_file(daemon_factory, service, user_dirs) -> None:
    """`Stems` beside the dropped file is a file, not a folder: the `.error.txt` says so in words (it said
    "Internal error: FileExistsError … Please report this")."""
    daemon = daemon_factory(service.url)
    info = daemon.start()
    hot = Path(str(info["hot_folder"])) / "drums"
    (hot / "Stems").write_text("not a folder")
    source = drop(hot / "take.wav", np.random.default_rng(2).standard_normal((22050, 2)) * 0.1, 44100)
    error = source.with_name("take.wav.error.txt")
    wait_for(error.exists, timeout=60, what="the error file")
    text = error.read_text()
    assert "is a file (or lies inside one), not a folder" in text and "Give a folder" in text, text
    assert "Internal error" not in text and "report this" not in text, text
    assert (hot / "Stems").read_text() == "not a folder"
    assert service.stats()["submits"] == 0
    daemon.stop()
