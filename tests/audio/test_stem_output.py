"""How stems are written: the format plan and its reasons, exact quantisation, exclusive creation."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.audio import bwf
from bridge.audio.source import probe_source
from bridge.audio.stem_output import Quantizer, StemFiles, copy_metadata, output_error, plan_output
from tests.audio_fixtures import noise, tone, write_audio


def test_format_overrides_that_cannot_hold_the_samples_explain_themselves(tmp_path: Path) -> None:
    info = probe_source(write_audio(tmp_path / "f.wav", noise(48_000, 0.1, channels=2), 48_000, "FLOAT"))
    plan = plan_output(info, info.frames, out_format="flac")
    assert (plan.format, plan.subtype) == ("FLAC", "PCM_24") and plan.reason and "FLAC" in plan.reason
    plan = plan_output(info, info.frames, out_format="MP3")
    assert plan.format == "WAV" and plan.reason and "MP3" in plan.reason
    plan = plan_output(info, info.frames, out_subtype="PCM_16")
    assert (plan.format, plan.subtype, plan.reason) == ("WAV", "PCM_16", None)


def test_a_lossy_source_gets_float_wav_stems_and_the_reason(tmp_path: Path) -> None:
    info = probe_source(write_audio(tmp_path / "song.mp3", tone(44_100, 0.5, 440), 44_100, "MPEG_LAYER_III", "MP3"))
    plan = plan_output(info, info.frames)
    assert (plan.format, plan.subtype) == ("WAV", "FLOAT")
    assert plan.reason and "lossy" in plan.reason and "32-bit float WAV" in plan.reason
    assert "null exactly" not in plan.reason and "to float precision" in plan.reason


def test_wav_stems_past_the_threshold_are_planned_as_rf64(tmp_path: Path) -> None:
    info = probe_source(write_audio(tmp_path / "s.wav", noise(48_000, 0.1, channels=2), 48_000, "PCM_24"))
    assert plan_output(info, info.frames).format == "WAV"
    plan = plan_output(info, info.frames, rf64_threshold=10_000)
    assert plan.format == "RF64" and plan.reason and "4 GiB" in plan.reason


def test_pcm_24_quantiser_gives_exactly_what_the_file_stores(tmp_path: Path) -> None:
    values = np.concatenate([noise(48_000, 0.05, amplitude=0.9), [0.9999999, -1.0, 1.5, -1.5]])
    quantise = Quantizer("PCM_24")
    stored, exact = quantise(values.copy())
    assert quantise.clipped == 2  # the two values beyond full scale
    sf.write(str(tmp_path / "q.wav"), stored, 48_000, subtype="PCM_24")
    read_back = sf.read(str(tmp_path / "q.wav"), dtype="float64")[0]
    assert np.array_equal(read_back, exact)
    assert np.max(np.abs(exact[:-2] - values[:-2])) <= 2.0**-24  # rounding, never more than half a step


def test_stem_files_never_overwrite_and_remove_what_they_created(tmp_path: Path) -> None:
    info = probe_source(write_audio(tmp_path / "s.wav", noise(48_000, 0.1, channels=2), 48_000, "PCM_16"))
    plan = plan_output(info, info.frames)
    taken = tmp_path / "taken.wav"
    taken.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError):
        StemFiles((tmp_path / "new.wav", taken), plan, info)
    assert taken.read_bytes() == b"the user's file" and not (tmp_path / "new.wav").exists()

    stems = StemFiles((tmp_path / "t.wav", tmp_path / "r.wav"), plan, info)
    stems.write_pair((np.zeros((10, 2), np.int32), np.zeros((10, 2), np.int32)))
    stems.discard()
    assert not (tmp_path / "t.wav").exists() and not (tmp_path / "r.wav").exists()


def test_a_write_error_names_the_file_that_failed_not_the_stem(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    clash = work / "step0.residual.wav"
    clash.write_bytes(b"left over")
    with pytest.raises(FileExistsError) as caught:
        os.open(clash, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    stem = tmp_path / "Stems" / ".sam-partial-job1-0123.tmp"
    error = output_error(caught.value, stem)
    assert "“step0.residual.wav” already exists in “" + str(work) + "”" in error.message
    assert ".sam-partial" not in error.message
    denied = output_error(PermissionError(errno.EACCES, "Permission denied", str(work / "x.wav")), stem)
    assert str(work) in denied.message and "Permission denied" in denied.message
    plain = output_error(RuntimeError("Error: System error."), stem)  # libsndfile names no file
    assert str(stem.parent) in plain.message


def test_a_source_with_ixml_but_no_bext_gives_stems_whose_ixml_starts_at_the_part(tmp_path: Path) -> None:
    rate, midnight_plus_1h = 48_000, 3600 * 48_000
    source_path = write_audio(tmp_path / "take.wav", tone(rate, 1.0, 440, 0.3), rate, "PCM_24")
    bwf.append_chunks(source_path, None, (
        b"<BWFXML><BEXT><BWF_TIME_REFERENCE_LOW>%d</BWF_TIME_REFERENCE_LOW>"
        b"<BWF_TIME_REFERENCE_HIGH>0</BWF_TIME_REFERENCE_HIGH></BEXT></BWFXML>" % midnight_plus_1h
    ))
    source = probe_source(source_path)
    assert source.bext is None and source.ixml is not None
    start, frames = 12_345, 20_000
    plan = plan_output(source, frames)
    stems = (write_audio(tmp_path / "t.wav", np.zeros((frames, 1)), rate, "PCM_24"),
             write_audio(tmp_path / "r.wav", np.zeros((frames, 1)), rate, "PCM_24"))
    copy_metadata(source, start, plan, stems)
    for stem in stems:
        chunks = bwf.read_chunks(stem)
        assert chunks.bext is None and chunks.ixml is not None
        assert bwf.ixml_time_reference(chunks.ixml) == midnight_plus_1h + start
        assert sf.info(str(stem)).frames == frames  # still a readable file of the same length


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_quantizing_float32_stores_exactly_what_float64_would(subtype: str) -> None:
    """The service's target arrives as float32 and is quantised without a float64 copy: same result."""
    rng = np.random.default_rng(5)
    target = rng.uniform(-1.2, 1.2, (4096, 2)).astype(np.float32)  # some beyond full scale: clipped
    target[:8] = np.float32([1.0, -1.0, 1 - 2**-24, -(1 - 2**-24), 0.5 + 2**-25, 2**-30, 0.0, -0.0])[:, None]
    wide, narrow = Quantizer(subtype), Quantizer(subtype)
    stored64, values64 = wide(target.astype(np.float64))
    stored32, values32 = narrow(target)
    assert np.array_equal(stored64, stored32) and np.array_equal(values64, values32.astype(np.float64))
    assert wide.clipped == narrow.clipped


@pytest.mark.parametrize(("source_bits", "subtype"), [(24, "PCM_24"), (16, "PCM_16"), (16, "PCM_24"), (32, "PCM_32"),
                                                      (8, "PCM_16")])
def test_a_complement_on_the_stems_grid_is_stored_as_the_general_quantiser_stores_it(
    source_bits: int, subtype: str
) -> None:
    """An integer source minus a quantised target is whole steps of the stems' format: `on_grid` skips the
    rounding and the null test's passes and must store the same values and find the same null peak,
    clipped values and a NaN included."""
    rng = np.random.default_rng(source_bits)
    grid = 2.0 ** (source_bits - 1)
    exact = np.round(rng.uniform(-1.0, 1.0 - 1 / grid, (20_000, 2)) * grid) / grid
    target = Quantizer(subtype)(rng.uniform(-1.3, 1.3, (20_000, 2)).astype(np.float32))[1]  # some clipped
    residual = exact - target
    general, fast = Quantizer(subtype), Quantizer(subtype)
    stored, values = general(residual.copy())
    fast_stored, peak = fast.on_grid(residual.copy())
    assert general.clipped == fast.clipped > 0
    assert np.array_equal(stored, fast_stored)
    assert peak == float(np.max(np.abs(residual - values))) > 0
    residual[5, 1] = np.nan
    with np.errstate(invalid="ignore"):  # a NaN has no integer to be stored as
        assert Quantizer(subtype).on_grid(residual)[1] == np.inf
