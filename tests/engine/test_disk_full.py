"""A full disk at each stage of writing (#19 item 3), on a real tiny tmpfs: no room for the stems, room for
the stems but not the manifest. Each time: the clear "the disk holding … is full" message with the free
space, 0 orphan stems or temps in the output folder, and a retry (once there is room) that costs nothing
(the stand-in's submit counter stays at one per job). Mounting needs root, as CI runs; skipped otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.common.jobs import JobState, JobView
from bridge.common.request import Origin, SeparationRequest
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal import Journal
from bridge.engine.pipeline import Pipeline
from bridge.fal.client import FalClient
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from tests.conftest import wait_for
from tests.test_daemon import make_source

pytestmark = pytest.mark.timeout(120)

PAGE = 4096
SIZE = 4 * 1024 * 1024


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root (CI runs as root)")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_leaving(disk: Path, free_bytes: int) -> Path:
    """A filler file leaving exactly `free_bytes` (whole pages) free on the tmpfs."""
    filler = disk / "filler.bin"
    filler.unlink(missing_ok=True)
    size = shutil.disk_usage(disk).free - free_bytes
    with open(filler, "wb") as out:
        out.write(b"\0" * size)
    assert shutil.disk_usage(disk).free == free_bytes
    return filler


def pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


def started_engine(client: FalClient, state: Path, *, dedupe: bool) -> JobEngine:
    engine = JobEngine(Journal(state / "journal.sqlite"), Pipeline(client, poll_interval=0.02, use_stream=False),
                       PresetLibrary([("built-in", builtin_presets_dir())]),
                       EngineSettings(workroot=state / "work", rescan_interval=0.1, dedupe=dedupe))
    engine.start()
    return engine


def done_where_there_is_room(engine: JobEngine, source: Path, roomy: Path) -> JobView:
    """A first job whose stems land on a disk with room (their sizes are what the tests measure)."""
    first = engine.submit(SeparationRequest(source=source, prompt="bass guitar", output_dir=roomy, origin=Origin.cli))
    wait_for(lambda: engine.get(first).state.finished, what="the first job")  # type: ignore[union-attr]
    view = engine.get(first)
    assert view is not None and view.state == JobState.done, view
    return view


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_full_disk_at_each_stage_leaves_nothing_and_the_retry_is_free(client: FalClient, service,
                                                                       tiny_disk: Path, tmp_path: Path) -> None:
    engine = started_engine(client, tmp_path / "state", dedupe=False)
    try:
        source = make_source(tmp_path / "take.wav", seconds=2.0)
        roomy = tmp_path / "roomy"
        # the stem sizes, measured: one run where there is room
        view = done_where_there_is_room(engine, source, roomy)
        stem_pages = sum(pages(Path(p).stat().st_size) for p in view.stems.values())
        out = tiny_disk / "Stems"
        figures = []
        for stage, free in (("stems", stem_pages // 2), ("manifest", stem_pages)):
            filler = fill_leaving(tiny_disk, free)
            submits = service.stats()["submits"]
            job = engine.submit(SeparationRequest(source=source, prompt="bass guitar", output_dir=out,
                                                  tag=stage, origin=Origin.cli))
            wait_for(lambda job=job: engine.get(job).state.finished, what=f"the {stage} job")  # type: ignore[union-attr]
            failed = engine.get(job)
            assert failed is not None and failed.state == JobState.failed, failed
            assert "is full" in (failed.error or "") and "free" in (failed.error or ""), failed.error
            assert str(tiny_disk) in (failed.error or "")
            orphans = leftovers(out)
            figures.append(f"{stage}: {len(orphans)} orphans")
            assert orphans == [], orphans
            paid_before_failure = service.stats()["submits"] - submits
            filler.unlink()  # room again: the retry fetches the results it already has
            engine.journal.clear_uncertain(job)
            engine.journal.set_state(job, JobState.queued, 0.0, "Queued again (retry)", error=None, attempts=0,
                                     not_before=0, cancel_requested=0)
            wait_for(lambda job=job: engine.get(job).state == JobState.done, what=f"the {stage} retry")  # type: ignore[union-attr]
            done = engine.get(job)
            assert done is not None and len(done.stems) == 2 and done.manifest
            # the job was sent once in all: before the stems stage's failure nothing was (the room is checked
            # first); after the manifest stage's, the retry fetched the results again
            assert paid_before_failure == (0 if stage == "stems" else 1)
            assert service.stats()["submits"] == submits + 1
            for path in (*done.stems.values(), done.manifest):
                Path(path).unlink()
        print("\nafter ENOSPC: " + "; ".join(figures))
    finally:
        engine.stop()
        engine.journal.close()


def test_a_full_state_folder_says_so_and_the_retry_is_free(client: FalClient, service, tiny_disk: Path,
                                                          tmp_path: Path) -> None:
    """The work files (downloads, intermediates) live in the state folder: its disk full gives the same
    clear message, not "Internal error: OSError: [Errno 28]"."""
    engine = JobEngine(Journal(tmp_path / "journal.sqlite"), Pipeline(client, poll_interval=0.02, use_stream=False),
                       PresetLibrary([("built-in", builtin_presets_dir())]),
                       EngineSettings(workroot=tiny_disk / "work", rescan_interval=0.1, dedupe=False))
    engine.start()
    try:
        source = make_source(tmp_path / "take.wav", seconds=2.0)
        filler = fill_leaving(tiny_disk, 0)
        job = engine.submit(SeparationRequest(source=source, prompt="bass guitar", output_dir=tmp_path / "out",
                                              origin=Origin.cli))
        wait_for(lambda: engine.get(job).state.finished, what="the job")  # type: ignore[union-attr]
        failed = engine.get(job)
        assert failed is not None and failed.state == JobState.failed
        assert "is full" in (failed.error or "") and str(tiny_disk) in (failed.error or ""), failed.error
        assert "Internal error" not in (failed.error or "")
        print("\nstate folder full:", (failed.error or "").splitlines()[0])
        submits = service.stats()["submits"]
        filler.unlink()
        engine.journal.clear_uncertain(job)
        engine.journal.set_state(job, JobState.queued, 0.0, "Queued again (retry)", error=None, attempts=0,
                                 not_before=0, cancel_requested=0)
        wait_for(lambda: engine.get(job).state == JobState.done, what="the retry")  # type: ignore[union-attr]
        assert service.stats()["submits"] == submits <= 1
        assert leftovers(tmp_path / "out") and not [n for n in leftovers(tmp_path / "out") if "partial" in n]
    finally:
        engine.stop()
        engine.journal.close()


def test_a_full_disk_under_the_journal_is_said_in_words_and_heals(tiny_disk: Path, tmp_path: Path) -> None:
    from bridge.engine.journal import StateDiskFull

    journal = Journal(tiny_disk / "state" / "journal.sqlite")
    try:
        source = make_source(tmp_path / "take.wav", seconds=0.1)
        request = SeparationRequest(source=source, prompt="piano", origin=Origin.cli)
        for _ in range(3):
            journal.add(request, "piano")  # the WAL and its index have their pages now
        filler = fill_leaving(tiny_disk, 0)
        with pytest.raises(StateDiskFull, match="is full") as caught:
            for _ in range(200):  # until sqlite needs a page it cannot have
                journal.add(request.model_copy(update={"tag": "x" * 150}), "piano")
        assert str(tiny_disk) in caught.value.message and "0 bytes free" in caught.value.message
        assert journal.damage == "full"
        filler.unlink()
        journal.add(request, "piano")
        assert journal.damage is None
    finally:
        journal.close()


def test_a_full_disk_while_copying_earlier_stems_leaves_no_stem_without_its_manifest(
        client: FalClient, service, tiny_disk: Path, tmp_path: Path) -> None:
    """Dedupe copies an earlier job's stems into the new output folder. The copies were placed first and
    the manifest written after: with room for the stems but not the manifest, the stems stayed with no
    manifest while the error said nothing was left behind."""
    engine = started_engine(client, tmp_path / "state", dedupe=True)
    try:
        source = make_source(tmp_path / "take.wav", seconds=2.0)
        view = done_where_there_is_room(engine, source, tmp_path / "roomy")
        submits = service.stats()["submits"]
        fill_leaving(tiny_disk, sum(pages(Path(p).stat().st_size) for p in view.stems.values()))
        out = tiny_disk / "Stems"
        again = engine.submit(SeparationRequest(source=source, prompt="bass guitar", output_dir=out,
                                                origin=Origin.cli))
        wait_for(lambda: engine.get(again).state.finished, what="the reuse")  # type: ignore[union-attr]
        reused = engine.get(again)
        assert reused is not None and reused.state == JobState.failed, reused
        assert "is full" in (reused.error or ""), reused.error
        assert leftovers(out) == []  # no stem without its manifest, no temp
        assert service.stats()["submits"] == submits  # and nothing paid for it
    finally:
        engine.stop()
        engine.journal.close()
