"""Stem names: predictable, safe everywhere, numbered as a group, never overwriting — even in a race."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from bridge.common.errors import OutputError
from bridge.common.stems import job_names, place_all, safe_name, temp_path_for


@pytest.mark.parametrize(("text", "expected"), [
    ("piano playing", "piano playing"), ('a/b\\c:d*e?"f"<g>|h', "a b c d e f g h"), ("CON", "_CON"),
    ("  dots. ", "dots"), ("", "stem"), ("Gesang · Männerchor", "Gesang · Männerchor"),
])
def test_safe_names(text: str, expected: str) -> None:
    assert safe_name(text) == expected


def test_a_taken_name_numbers_the_whole_group(tmp_path: Path) -> None:
    stems, manifest = job_names(tmp_path, "Song.wav", "4-stems", ["vocals", "drums", "other"], ".wav", True)
    assert [p.name for p in stems.values()] == ["Song - vocals.wav", "Song - drums.wav", "Song - other.wav"]
    assert manifest.name == "Song - 4-stems.sam.json"
    (tmp_path / "Song - other.wav").write_bytes(b"someone else's")  # e.g. from another preset's run
    stems, manifest = job_names(tmp_path, "Song.wav", "4-stems", ["vocals", "drums", "other"], ".wav", True)
    assert [p.name for p in stems.values()] == [
        "Song - vocals (2).wav", "Song - drums (2).wav", "Song - other (2).wav"]
    assert manifest.name == "Song - 4-stems (2).sam.json"


def test_a_name_taken_while_placing_is_chosen_again_and_nothing_is_overwritten(tmp_path: Path) -> None:
    temps = {}
    for label in ("target", "residual"):
        temps[label] = temp_path_for(tmp_path / "x")
        temps[label].write_text(label)
    calls = 0

    def choose() -> tuple[dict[str, Path], Path]:
        nonlocal calls
        calls += 1
        names = job_names(tmp_path, "Take.wav", "piano", ["target", "residual"], ".wav", False)
        if calls == 1:  # another job writes the residual's name right after we chose it
            names[0]["residual"].write_text("the other job's")
        return names

    finals, manifest = place_all(temps, choose)
    assert manifest.name == "Take - piano (2).sam.json"
    assert calls == 2
    assert [p.name for p in finals.values()] == ["Take - piano (2).target.wav", "Take - piano (2).residual.wav"]
    assert (tmp_path / "Take - piano.residual.wav").read_text() == "the other job's"
    assert not (tmp_path / "Take - piano.target.wav").exists()  # our first placement was taken back
    assert [p.read_text() for p in finals.values()] == ["target", "residual"]
    assert not any(p.exists() for p in temps.values())


def test_giving_up_after_repeated_races_keeps_nothing_half_placed(tmp_path: Path) -> None:
    temp = temp_path_for(tmp_path / "x")
    temp.write_text("ours")

    def always_taken() -> tuple[dict[str, Path], Path]:
        names = job_names(tmp_path, "Take.wav", "piano", ["target"], ".wav", False)
        names[0]["target"].write_text("theirs")
        return names

    with pytest.raises(OutputError, match="keep taking"):
        place_all({"target": temp}, always_taken)
    assert temp.read_text() == "ours"  # still ours to clean up, not lost under a final name


JAPANESE_SOURCE = ("東京ドーム公演2026年12月7日アンコール最終リハーサル録音"
                   "ステレオミックス・ボーカル入り第三版完全版マスター音源ファイル.wav")
JAPANESE_PROMPT = "アコースティックギターのアルペジオと歌声のハーモニーとストリングスの響き"


@pytest.mark.parametrize(("source", "label", "stems", "stem_set"), [
    (JAPANESE_SOURCE, JAPANESE_PROMPT, ["target", "residual"], False),
    ("音" * 200 + ".flac", "bass", ["target", "residual"], False),
    ("Cafe\u0301 " * 40 + ".wav", "한국어 보컬 " * 10, ["한국어 보컬 하모니 " * 4, "other"], True),  # NFD, Hangul
], ids=["japanese", "200-cjk-characters", "decomposed-and-hangul-stem-set"])
def test_names_fit_every_file_system_in_any_script(tmp_path: Path, source: str, label: str, stems: list[str],
                                                  stem_set: bool) -> None:
    """A name is at most 255 bytes (macOS may store it decomposed: Hangul takes 3× the bytes then). The
    parts were cut by characters: a long Japanese name and prompt gave a stem name of 300+ bytes, and the
    job crashed with "File name too long" after the service had been paid."""
    for number in range(1, 4):  # each run takes the next free number: " (2)", " (3)" fit as well
        names, manifest = job_names(tmp_path, source, label, stems, ".flac", stem_set, kind="audition")
        for path in (*names.values(), manifest):
            assert path.name.endswith(".sam.json" if path == manifest else ".flac")
            assert (f" ({number})" in path.name) == (number > 1)
            for form in ("NFC", "NFD"):
                assert len(unicodedata.normalize(form, path.name).encode()) <= 255, path.name
            path.write_bytes(b"taken")  # and the OS takes it


def test_a_dangling_symlink_takes_its_name(tmp_path: Path) -> None:
    """Path.exists() is False for a symlink to nothing, but the name is taken: placing a stem there failed
    five times over and the paid job ended "Other programs keep taking the stem names"."""
    (tmp_path / "Song - bass.target.wav").symlink_to(tmp_path / "gone.wav")
    stems, manifest = job_names(tmp_path, "Song.wav", "bass", ["target", "residual"], ".wav", False)
    assert stems["target"].name == "Song - bass (2).target.wav" and manifest.name == "Song - bass (2).sam.json"
