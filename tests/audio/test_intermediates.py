"""A job's work folder: clearing an earlier attempt's leftovers removes our own files only."""

from __future__ import annotations

from pathlib import Path

from bridge.audio.intermediates import clear_intermediates


def test_clearing_a_work_folder_removes_only_our_own_leftovers(tmp_path: Path) -> None:
    work = tmp_path / "job"
    ours = ["step0.residual.wav", "step12.service-target.mp3", "step1.service-residual.wav",
            "Song.upload.flac", ".Song.upload.flac.partial", "step0.residual.upload.wav"]
    others = ["Song.wav", "step0.residual.wav.bak", "notes.txt", "stepX.residual.wav", "Song.flac"]
    work.mkdir()
    for name in ours + others:
        (work / name).write_bytes(b"x")
    (work / "step3.residual.wav.d").mkdir()
    (work / "step4.residual.wav").mkdir()  # a folder, even one with our name, is never ours
    source = work / "step9.residual.wav"  # a user's file that happens to carry our name
    source.write_bytes(b"user")
    removed = clear_intermediates(work, keep=source)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in work.iterdir()) == sorted([*others, "step3.residual.wav.d", "step4.residual.wav",
                                                             "step9.residual.wav"])
    assert clear_intermediates(tmp_path / "missing") == []
