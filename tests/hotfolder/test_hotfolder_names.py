"""Which names a hot folder takes, and the files kept beside a source (sidecar, error file, done/)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from bridge.common.path_policy import PathPolicy
from bridge.hotfolder.names import (
    ManifestIndex,
    SidecarError,
    error_blocks_retry,
    error_file_for,
    find_sidecar,
    is_audio_candidate,
    is_excluded_dir,
    move_to_done,
    read_sidecar,
    sidecar_version,
    source_for_error_file,
    sources_of_sidecar,
    write_error_file,
)
from bridge.hotfolder.network_drives import network_filesystem_type
from bridge.hotfolder.watcher import default_hot_folder


@pytest.mark.parametrize(
    "name",
    ["Lead Vox.wav", "take_01.WAV", "mix.aiff", "mix.aif", "loop.flac", "ref.mp3", "long.rf64", "x.w64",
     "Gesang – Strophe.wav", "My.target practice.wav",
     "Lead - piano.target.wav", "Lead - piano (2).residual.wav"],  # a stem: ours only if a manifest says so
)
def test_audio_names_are_taken(name: str) -> None:
    assert is_audio_candidate(name)


@pytest.mark.parametrize(
    "name",
    ["render.wav.tmp", "render.tmp", "render.wav.part", ".~lock.wav", "~render.wav", ".hidden.wav",
     "take.wav.reapeaks", "take.wav.asd", "take.pkf", "take.sfk", "download.wav.crdownload",
     "Lead - piano.sam.json",
     "Lead.wav.error.txt", "Lead.sam.yaml", "Lead.wav.sam.yaml", "Lead.status.json", "notes.txt",
     "Project.rpp", "Set.als", "noextension"],
)
def test_partial_side_and_own_names_are_ignored(name: str) -> None:
    assert not is_audio_candidate(name)


@pytest.mark.parametrize(("name", "excluded"),
                         [("Stems", True), ("stems", True), ("done", True), (".sam-bridge", True),
                          (".git", True), ("vocals", False), ("Session 1", False)])
def test_excluded_folders(name: str, excluded: bool) -> None:
    assert is_excluded_dir(name) is excluded


def test_manifest_index_knows_stem_sets_without_markers(tmp_path: Path) -> None:
    stems = {s: tmp_path / f"Band - {s}.wav" for s in ("drums", "bass")}
    for path in stems.values():
        path.write_bytes(b"x")
    user_file = tmp_path / "Band - live.wav"
    user_file.write_bytes(b"x")
    index = ManifestIndex()
    assert not index.owns(stems["drums"])  # no manifest yet
    manifest = tmp_path / "Band - 4-stems.sam.json"
    manifest.write_text(json.dumps({"stems": {k: {"path": str(v)} for k, v in stems.items()}}))
    assert index.owns(stems["drums"]) and index.owns(stems["bass"])
    assert not index.owns(user_file)
    manifest.write_text(json.dumps({"stems": {"bass": {"path": "Band - bass.wav"}}}))  # relative path
    os.utime(manifest, ns=(1, 1))  # make sure the cache sees a new mtime
    assert index.owns(stems["bass"]) and not index.owns(stems["drums"])


def test_manifest_name_owns_its_labelled_stems(tmp_path: Path) -> None:
    (tmp_path / "Keys - piano (2).sam.json").write_text("not even json")
    assert ManifestIndex().owns(tmp_path / "Keys - piano (2).target.wav")
    assert not ManifestIndex().owns(tmp_path / "Keys.wav")


def test_error_file_names_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "Guitar 01.wav"
    assert error_file_for(source).name == "Guitar 01.wav.error.txt"
    assert source_for_error_file(error_file_for(source)) == source
    assert source_for_error_file(source) is None


def test_error_file_explains_and_blocks_until_deleted_or_touched(tmp_path: Path) -> None:
    source = tmp_path / "Guitar 01.wav"
    source.write_bytes(b"audio")
    assert not error_blocks_retry(source)
    written = write_error_file(source, "The service refused the prompt.\nUse a shorter prompt.", "job-7")
    text = written.read_text()
    assert text.startswith('sam-bridge could not separate "Guitar 01.wav" (job job-7)')
    assert "The service refused the prompt." in text and "Use a shorter prompt." in text
    assert "delete this file" in text
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["Guitar 01.wav", "Guitar 01.wav.error.txt"]  # no temp file left behind
    assert error_blocks_retry(source)
    later = os.stat(written).st_mtime_ns + 10**9
    os.utime(source, ns=(later, later))  # saved again
    assert not error_blocks_retry(source)
    assert source.read_bytes() == b"audio"


def test_sidecar_is_found_by_either_name_and_validated(tmp_path: Path) -> None:
    source = tmp_path / "Gtr.wav"
    assert find_sidecar(source) is None
    (tmp_path / "Gtr.wav.sam.yaml").write_text("prompt: guitar\n")
    assert find_sidecar(source) == tmp_path / "Gtr.wav.sam.yaml"
    (tmp_path / "Gtr.sam.yaml").write_text("preset: vocals\ntag: t1\n")
    found = find_sidecar(source)
    assert found == tmp_path / "Gtr.sam.yaml"
    assert read_sidecar(found).fields == {"preset": "vocals", "tag": "t1"}
    (tmp_path / "Gtr.sam.yaml").write_text("")
    assert read_sidecar(tmp_path / "Gtr.sam.yaml").fields == {}


@pytest.mark.parametrize(("text", "words"), [
    ("prompt: [unclosed\n", "is not valid YAML (line 2, column 1: "),
    ("- just\n- a list\n", "key: value"),
    ("prompt: x\nspeed: 2\n", "unknown key(s) speed"),
    ("options: fast\n", "options must be"),
])
def test_bad_sidecars_say_what_is_wrong(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "x.sam.yaml"
    path.write_text(text)
    with pytest.raises(SidecarError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_sidecar(path)


def test_move_to_done_never_overwrites_and_takes_the_sidecar(tmp_path: Path) -> None:
    source = tmp_path / "Song.wav"
    source.write_bytes(b"new")
    (tmp_path / "Song.sam.yaml").write_text("prompt: bass\n")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "Song.wav").write_bytes(b"old")
    moved = move_to_done(source)
    assert moved == tmp_path / "done" / "Song (2).wav"
    assert moved.read_bytes() == b"new" and (tmp_path / "done" / "Song.wav").read_bytes() == b"old"
    assert not source.exists()
    # the sidecar pairs with the source where it lands (it was `Song.sam (2).yaml`, beside nothing)
    assert (tmp_path / "done" / "Song (2).sam.yaml").read_text() == "prompt: bass\n"
    assert move_to_done(source) is None


def test_a_sidecar_named_after_the_whole_file_name_still_pairs_in_done(tmp_path: Path) -> None:
    source = tmp_path / "Take.wav"
    source.write_bytes(b"new")
    (tmp_path / "Take.wav.sam.yaml").write_text("prompt: drums\n")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "Take.wav").write_bytes(b"old")
    (tmp_path / "done" / "Take (2).wav.sam.yaml").write_text("someone's\n")  # taken: the next number
    assert move_to_done(source) == tmp_path / "done" / "Take (2).wav"
    assert (tmp_path / "done" / "Take (2).wav (2).sam.yaml").read_text() == "prompt: drums\n"  # kept, numbered
    assert (tmp_path / "done" / "Take (2).wav.sam.yaml").read_text() == "someone's\n"


def test_a_name_that_fills_the_file_system_still_moves_to_done(tmp_path: Path) -> None:
    """A 255-byte name taken in done/ could not take " (2)": File name too long, and the source stayed."""
    name = "ü" * 125 + ".wav"  # 254 bytes
    source = tmp_path / name
    source.write_bytes(b"new")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / name).write_bytes(b"old")
    moved = move_to_done(source)
    assert moved is not None and moved.parent == tmp_path / "done" and moved.name.endswith(" (2).wav")
    assert len(moved.name.encode()) <= 255 and moved.read_bytes() == b"new" and not source.exists()


MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
server:/export /mnt/studio nfs4 rw 0 0
//nas/audio /mnt/nas\\040share cifs rw 0 0
/dev/sdb1 /mnt/nas/local ext4 rw 0 0
"""


@pytest.mark.skipif(os.name == "nt", reason="reads /proc/mounts-style text")
@pytest.mark.parametrize(("path", "expected"), [
    ("/mnt/studio/hot", "nfs4"), ("/mnt/nas share/hot", "cifs"), ("/mnt/nas/local/hot", None),
    ("/home/me/sam-bridge/hot", None), ("/mnt/studiox/hot", None),
])
def test_network_drives_are_recognised(path: str, expected: str | None) -> None:
    assert network_filesystem_type(Path(path), MOUNTS) == expected


def test_default_hot_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAM_BRIDGE_HOT_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    assert default_hot_folder() == tmp_path / "sam-bridge" / "hot"
    monkeypatch.setenv("SAM_BRIDGE_HOT_DIR", str(tmp_path / "elsewhere"))
    assert default_hot_folder() == tmp_path / "elsewhere"


def test_error_file_is_readable_by_colleagues_on_a_shared_folder(tmp_path: Path) -> None:
    """It gets the mode a plain create gives (0666 less the umask); it was private (0600), so a colleague
    could not read why their file failed."""
    source = tmp_path / "Guitar 01.wav"
    source.write_bytes(b"audio")
    previous = os.umask(0o002)
    try:
        written = write_error_file(source, "The service refused the prompt.", "job-8")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o664
    assert "The service refused the prompt." in written.read_text()


def test_a_name_near_the_limit_still_gets_its_error_report(tmp_path: Path) -> None:
    """`<name>.error.txt` of a 250-byte name is 260 bytes: the report could not be written (only logged),
    and the file was offered again on every look. The report's name is now cut to fit, and still leads
    back to its source when it is deleted."""
    source = tmp_path / ("ß" * 123 + ".wav")  # 250 bytes
    source.write_bytes(b"audio")
    (tmp_path / ("ß" * 122 + ".wav")).write_bytes(b"another")  # a neighbour with a shorter name
    report = error_file_for(source)
    assert len(report.name.encode()) <= 255 and report.name.endswith(".error.txt")
    write_error_file(source, "the service refused it")
    assert report.is_file() and error_blocks_retry(source)
    assert source_for_error_file(report) == source
    short = tmp_path / "Take.wav"
    assert source_for_error_file(error_file_for(short)) == short


def test_what_a_sidecar_asks_is_part_of_the_request_key(tmp_path: Path) -> None:
    """A file moved back from done/ keeps its mtime: with another sidecar it asked for other work under the
    same key, and the engine handed back the finished job of the old request (the trumpet never came)."""
    import numpy as np
    import soundfile as sf

    from bridge.common.file_gate import FileSnapshot
    from bridge.hotfolder.names import hot_request

    source = tmp_path / "Take.wav"
    sf.write(str(source), np.zeros((4800, 2)), 48000)
    snapshot = FileSnapshot.of(source)
    assert snapshot is not None

    def key() -> str:
        request = hot_request(source, snapshot, folder_preset=lambda: "vocals", output_dir=None,
                              known_presets=["vocals"])
        assert request.idempotency_key is not None
        return request.idempotency_key

    plain = key()
    assert plain == f"hot:{source}:{snapshot.size}:{snapshot.mtime_ns}"  # as before: jobs taken earlier match
    sidecar = tmp_path / "Take.sam.yaml"
    sidecar.write_text("prompt: flute\n")
    flute = key()
    sidecar.write_text("prompt: trumpet\n")
    trumpet = key()
    assert len({plain, flute, trumpet}) == 3
    sidecar.write_text("prompt: trumpet\n")
    assert key() == trumpet  # the same sidecar again: the same request


def test_a_sidecars_version_is_its_content_under_either_name_and_never_of_a_file_outside(tmp_path: Path) -> None:
    """The version goes into a claim marker anyone sharing the folder may read: a symlinked sidecar counts
    only for a file inside the allowed folders, as when it is read for the request."""
    hot, outside = tmp_path / "hot", tmp_path / "private"
    hot.mkdir()
    outside.mkdir()
    source = hot / "Song.wav"
    source.write_bytes(b"RIFF")
    (hot / "Song.take2.wav").write_bytes(b"RIFF")
    policy = PathPolicy.from_roots((hot,), (hot,))
    assert sidecar_version(source, policy) == ""
    (hot / "Song.sam.yaml").write_text("prompt: piano\n")
    first = sidecar_version(source, policy)
    assert first not in ("", "unreadable", "outside")
    os.rename(hot / "Song.sam.yaml", hot / "Song.wav.sam.yaml")
    assert sidecar_version(source, policy) == first  # the other name, the same content
    (hot / "Song.wav.sam.yaml").write_text("prompt: drums\n")
    assert sidecar_version(source, policy) not in (first, "", "unreadable")
    (hot / "Song.wav.sam.yaml").unlink()
    (outside / "secret.yaml").write_text("prompt: piano\n")
    os.symlink(outside / "secret.yaml", hot / "Song.sam.yaml")
    assert sidecar_version(source, policy) == "outside"
    assert sources_of_sidecar(hot / "Song.sam.yaml") == [source]
    assert sources_of_sidecar(hot / "Song.take2.sam.yaml") == [hot / "Song.take2.wav"]
    assert sources_of_sidecar(hot / "Song.wav.sam.yaml") == [source]
    assert sources_of_sidecar(hot / "Other.sam.yaml") == []
