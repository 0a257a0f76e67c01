"""Streaming STFT mask projection: perfect reconstruction, block independence, stereo image."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from bridge.audio.projection import MaskProjector, describe
from bridge.local_service.separator import FULL, HIGH, MID, VOICE, Band, _zero_phase_blocks, band_filter
from tests.audio_fixtures import (
    band_level_db,
    click_train,
    clicky_pink_noise,
    level_dbfs,
    noise,
    peak_positions,
    through_service,
    tone,
)

RATE = 48_000


def _project(
    target: np.ndarray,
    residual: np.ndarray,
    source: np.ndarray,
    blocks: list[int],
    service_residual: bool = False,
    samplerate: int = RATE,
    mid_from_source: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    projector = MaskProjector(
        source.shape[1], samplerate, service_residual=service_residual, mid_from_source=mid_from_source
    )
    outs_t, outs_r = [], []
    at, i = 0, 0
    while at < len(source):
        n = blocks[i % len(blocks)]
        i += 1
        t, r = projector.process(
            target[at : at + n].astype(np.float32), residual[at : at + n].astype(np.float32), source[at : at + n]
        )
        outs_t.append(t)
        outs_r.append(r)
        at += n
    t, r = projector.flush()
    outs_t.append(t)
    outs_r.append(r)
    out_r = np.concatenate([x for x in outs_r if x is not None]) if service_residual else None
    return np.concatenate(outs_t), out_r


def test_mask_of_one_reconstructs_the_source_exactly() -> None:
    mono_noise = noise(RATE, 1.3, amplitude=0.8)
    source = np.stack([mono_noise, 0.5 * mono_noise], axis=1)  # all of it heard in the mono mix
    mono = source.mean(axis=1)
    out, _ = _project(mono, np.zeros_like(mono), source, [65_536])
    assert out.shape == source.shape
    assert np.max(np.abs(out - source)) < 1e-5  # sqrt-Hann at 50 %: perfect reconstruction


def test_output_does_not_depend_on_block_sizes() -> None:
    source = noise(RATE, 0.7, channels=2, seed=4)
    target = tone(RATE, 0.7, 1_000, 0.3)
    residual = source.mean(axis=1) - target
    whole, _ = _project(target, residual, source, [len(source)])
    ragged, _ = _project(target, residual, source, [1, 7, 1_023, 1_024, 5_000, 333])
    assert ragged.shape == whole.shape == source.shape
    assert np.max(np.abs(ragged - whole)) < 1e-6


def test_a_hard_left_tone_stays_left() -> None:
    rng = np.random.default_rng(3)
    tone_left = tone(RATE, 2.0, 997, 0.5)
    bed = rng.uniform(-0.1, 0.1, (len(tone_left), 2))  # different noise on each side
    source = bed.copy()
    source[:, 0] += tone_left
    # what the service returns: mono target (the tone) and mono residual (the rest)
    out, _ = _project(tone_left / 2, bed.mean(axis=1), source, [65_536])
    left, right = out[:, 0], out[:, 1]
    assert level_dbfs(right) < level_dbfs(left) - 30  # the image survived: nothing copied to the right
    steady = slice(RATE // 10, -RATE // 10)
    assert level_dbfs(left[steady] - tone_left[steady]) < level_dbfs(tone_left) - 25  # and it is the tone


@pytest.mark.parametrize("frame", [30, 31, 32, 63, 64])
def test_a_sound_after_digital_silence_keeps_its_image_wherever_it_starts(frame: int) -> None:
    """Stems of MIDI parts and drums hold exact zeros between notes. The long gate's sums cover frames
    −4 … 29 of each piece of 32: a sound whose first frame was 30 or 31 (or 0 of the next piece) met sums
    of pure silence there, and 0 / 0 closed the gate: a hard-left sound reached the right channel at
    −14 dB for ~170 ms (the left off by as much)."""
    from bridge.audio.projection import HOP

    onset = frame * HOP - HOP + 100  # the first analysis frame that sees it is about `frame`
    length = RATE * 6
    rng = np.random.default_rng(1)
    sound = np.zeros(length)
    t = np.arange(length - onset) / RATE
    sound[onset:] = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(length - onset)
    source = np.stack([sound, np.zeros(length)], axis=1)  # hard left, digital silence before
    mid = source.mean(axis=1)
    out, _ = _project(mid, np.zeros(length), source, [4_800])  # the service kept all of it
    span = slice(onset, onset + 8 * HOP)
    assert level_dbfs(out[span, 1]) < level_dbfs(source[span, 0]) - 100  # nothing on the right
    assert level_dbfs(out[span, 0] - source[span, 0]) < level_dbfs(source[span, 0]) - 100


def test_silent_service_target_gives_a_silent_stem() -> None:
    source = noise(RATE, 0.5, channels=2)
    out, _ = _project(np.zeros(len(source)), source.mean(axis=1), source, [4_096])
    assert np.max(np.abs(out)) < 1e-6


def test_service_residual_makes_the_source_with_the_target() -> None:
    source = noise(RATE, 0.8, channels=6, seed=8)  # 5.1
    target = tone(RATE, 0.8, 440, 0.4)
    residual = source.mean(axis=1) - target  # a consistent service: target + residual == what it heard
    out_t, out_r = _project(target, residual, source, [10_000], service_residual=True)
    assert out_r is not None and out_t.shape == out_r.shape == (len(source), 6)
    assert np.max(np.abs(out_t + out_r - source)) < 1e-5


def _band_service(source: np.ndarray, band: Band) -> tuple[np.ndarray, np.ndarray]:
    """The stand-in's answer for a 48 kHz source: its band filter on the mono mix, and the rest."""
    mono = source.mean(axis=1)
    target = np.concatenate([t for _, t in _zero_phase_blocks(iter([mono]), band_filter(band))])
    return target, mono - target


def _ideal(source: np.ndarray, band: Band) -> np.ndarray:
    """The band filter applied to each source channel: what a stereo service would answer."""
    return np.stack([_band_service(source[:, [c]], band)[0] for c in range(source.shape[1])], axis=1)


def _sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum((reference - estimate) ** 2), 1e-300)))


def test_a_mono_source_in_stereo_gets_the_services_answer_exactly() -> None:
    """L = R: the service heard exactly this, so its answer is the stem (the mask once gave 27-38 dB)."""
    mono = clicky_pink_noise(RATE, 1.5) * 0.5
    source = np.stack([mono, mono], axis=1)
    target, residual = _band_service(source, MID)
    out, out_r = _project(target, residual, source, [65_536, 1_000], service_residual=True)
    assert out_r is not None
    assert np.array_equal(out[:, 0], target.astype(np.float32))
    assert np.array_equal(out[:, 1], target.astype(np.float32))
    assert np.array_equal(out_r[:, 0], residual.astype(np.float32))


def test_a_hard_panned_source_gets_the_band_filter_of_its_own_channel() -> None:
    """One sound, hard left (or panned 20 dB): each channel's stem is the band filter of that channel, band
    edges included (the mask's shallow skirt kept it near 30 dB)."""
    sound = clicky_pink_noise(RATE, 1.5) * 0.5
    for right_gain in (0.0, 0.1):
        source = np.stack([sound, right_gain * sound], axis=1)
        target, residual = _band_service(source, VOICE)
        out, _ = _project(target, residual, source, [65_536])
        want = _ideal(source, VOICE)
        assert _sdr(want[:, 0], out[:, 0]) > 90, right_gain
        if right_gain:
            assert _sdr(want[:, 1], out[:, 1]) > 90
        else:
            assert level_dbfs(out[:, 1]) < level_dbfs(out[:, 0]) - 100


def test_a_spaced_pair_keeps_its_out_of_phase_partials() -> None:
    """R = L 1 ms later (a spaced pair): around 500 Hz, 1.5 kHz, … the channels are nearly in anti-phase
    and the mid holds little, but the deviation is coherent with the mid around it: a pan (a delay), not a
    sound the service never heard, so it is not gated. (A sound exactly on a notch cancels in the mono
    mix: that one the service never heard.)"""
    sound = clicky_pink_noise(RATE, 1.5, seed=4) * 0.3 + tone(RATE, 1.5, 1_400, 0.2)
    delay = RATE // 1000
    source = np.stack([sound, np.concatenate([np.zeros(delay), sound[:-delay]])], axis=1)
    target, residual = _band_service(source, VOICE)
    out, _ = _project(target, residual, source, [65_536])
    want = _ideal(source, VOICE)
    for channel in (0, 1):
        assert _sdr(want[:, channel], out[:, channel]) > 30, channel


def test_a_51_source_keeps_each_sound_in_its_channel_and_the_mid_exact() -> None:
    """5.1: the same rule with six channels: a sound only in the centre stays there, another only in the
    left surround stays there, and the mean of the target channels is the service's target."""
    centre, surround = clicky_pink_noise(RATE, 1.5, seed=1) * 0.4, noise(RATE, 1.5, seed=9, amplitude=0.2)
    source = np.zeros((len(centre), 6))
    source[:, 2], source[:, 4] = centre, surround
    target, residual = _band_service(source, MID)
    out, _ = _project(target, residual, source, [65_536])
    want = _ideal(source, MID)
    assert np.max(np.abs(out.mean(axis=1) - target)) < 1e-6
    for channel in (2, 4):  # two sounds sharing every bin, panned apart: one pan regression per bin limits it
        assert _sdr(want[:, channel], out[:, channel]) > 20, channel
    for channel in (0, 1, 3, 5):
        assert level_dbfs(out[:, channel]) < level_dbfs(out[:, 2]) - 30, channel


def test_what_the_service_could_not_hear_goes_to_the_residual() -> None:
    """96 kHz: a bass hard left, white noise hard right. The service hears a 48 kHz mono mix, so the noise
    above 24 kHz never reached it; a "bass" target must not get it (it once got it at -3.5 dB)."""
    rate, seconds = 96_000, 2.0
    bass = tone(rate, seconds, 80, 0.5)
    hiss = noise(rate, seconds, seed=5, amplitude=0.3)
    source = np.stack([bass, hiss], axis=1)
    target, residual = through_service(bass / 2, rate), through_service(hiss / 2, rate)
    out, _ = _project(target, residual, source, [65_536], samplerate=rate)
    for low, high in ((24_000, 30_000), (30_000, 48_000)):
        assert band_level_db(out[:, 1], rate, low, high) < band_level_db(hiss, rate, low, high) - 60, (low, high)
    steady = slice(rate // 10, -rate // 10)
    # the bass itself is all there: the hiss in the bass's own bins follows the service's residual, so it
    # stays out (measured -45.8 dB; it was -31 dB when the mid's gain was applied to it)
    assert level_dbfs(out[steady, 0] - bass[steady]) < level_dbfs(bass) - 40


def test_anti_phase_content_the_mono_mix_cancels_goes_to_the_residual() -> None:
    bass = tone(RATE, 2.0, 80, 0.4)
    side = noise(RATE, 2.0, seed=6, amplitude=0.1)
    source = np.stack([bass + side, bass - side], axis=1)
    mono = np.round(source * 2**23).mean(axis=1) / 2**23  # the 24-bit mono mix: the side is gone
    out, _ = _project(bass, mono - bass, source, [65_536])
    side_in_target = (out[:, 0] - out[:, 1]) / 2
    # it was -0.4 dB: nearly all of it. (Below ~1 kHz the bass's own bins, which the mask rightly gives the
    # target, carry the side along: one mask for all channels cannot split a bin.)
    leaked = band_level_db(side_in_target, RATE, 1_000, 20_000) - band_level_db(side, RATE, 1_000, 20_000)
    assert leaked < -45


def _pad_share_in_residual(bed: np.ndarray, pad: np.ndarray, band: Band) -> float:
    """The anti-phase pad's share in the residual: 1 − (the change it makes to the target stem) / its energy
    (the service's answer is the same with and without it: it cancels in the mono mix)."""
    with_pad = bed + np.stack([pad, -pad], axis=1)
    changed = _project(*_band_service(with_pad, band), with_pad, [65_536])[0]
    plain = _project(*_band_service(bed, band), bed, [65_536])[0]
    steady = slice(RATE // 2, -RATE // 2)
    return float(1 - np.sum((changed[steady] - plain[steady]) ** 2) / (2 * np.sum(pad[steady] ** 2)))


@pytest.mark.parametrize("busy", [False, True])
@pytest.mark.parametrize(("band", "least"), [(MID, 0.85), (VOICE, 0.85), (FULL, 0.75)])
def test_an_anti_phase_pad_goes_to_the_residual_in_busy_and_sparse_passages(
    busy: bool, band: Band, least: float
) -> None:
    """A sustained pad, L = p, R = −p, its partials one or two bins from a centred instrument's (sparse), and
    with a wide noise bed and a panned chord too (busy). The gate's statistics once summed ±2 bins, which
    took the instrument's mid into the pad's bins: 0-55 % in the residual; measured now 83-97 %."""
    seconds = 3.0
    pad = sum(tone(RATE, seconds, f, 0.05) for f in (262, 330, 392, 524, 660, 784))
    centre = sum(tone(RATE, seconds, f, 0.1) for f in (247, 345, 380, 510, 675, 800))
    bed = np.stack([centre, centre], axis=1)
    if busy:
        chord = sum(tone(RATE, seconds, f, 0.08) for f in (300, 440, 600))
        bed += noise(RATE, seconds, channels=2, seed=7, amplitude=0.02) + np.stack([chord, 0.3 * chord], axis=1)
    assert _pad_share_in_residual(bed, pad, band) > least


def test_an_anti_phase_pad_under_rare_hits_goes_to_the_residual_between_and_during_them() -> None:
    """A pad, L = p, R = −p, under short centred hits of the same notes, one every 2.5 s. Over ±4 frames a
    hit's mid is loud enough that the pad looks like its stereo spread (not gated: 89 % in the residual);
    over the long window (this piece of frames and the last) the pad's deviation is far beyond the mid's."""
    seconds, notes = 8.0, (262, 330, 392)
    pad = sum(tone(RATE, seconds, f, 0.15) for f in notes)
    envelope = np.zeros(int(seconds * RATE))
    length = int(0.2 * RATE)
    for start in (0.5, 3.0, 5.5):
        envelope[int(start * RATE) : int(start * RATE) + length] = np.hanning(length)
    hits = sum(tone(RATE, seconds, f * 1.003, 0.2) for f in notes) * envelope
    assert _pad_share_in_residual(np.stack([hits, hits], axis=1), pad, FULL) > 0.97


def test_an_anti_phase_pad_under_wide_notes_of_its_own_pitches_goes_to_the_residual() -> None:
    """A pad, L = p, R = −p, under notes of the same pitches that sound 1 s in every 1.5 s, wide (each
    channel's own narrow-band noise around the note beside a centred tone). While a note sounds its mid hides
    the pad from the short gate, and over the long window the notes' mid outweighs it too; but the side never
    falls below the pad's while the mid falls to nothing between the notes: that steady floor is taken off
    the U term. Measured 45 % in the residual without it, 66 % with it."""
    seconds, notes = 8.0, (262, 330, 392)
    count = round(seconds * RATE)
    pad = sum(tone(RATE, seconds, f, 0.05) for f in notes)
    envelope = np.zeros(count)
    length = RATE
    for start in np.arange(0.0, seconds, 1.5):
        at = int(start * RATE)
        envelope[at : at + length] = np.hanning(length)[: count - at]
    wide = np.zeros((count, 2))
    for index, f in enumerate(notes):
        sos = scipy.signal.butter(2, (0.98 * f, 1.02 * f), "bandpass", fs=RATE, output="sos")
        for channel in range(2):
            wide[:, channel] += scipy.signal.sosfilt(sos, noise(RATE, seconds, seed=3 + 10 * channel + index))
    centre = sum(tone(RATE, seconds, 1.002 * f, 1.0) for f in notes)
    bed = 0.1 * envelope[:, None] * (centre[:, None] / np.std(centre) + 0.7 * wide / np.std(wide))
    assert _pad_share_in_residual(bed, pad, FULL) > 0.6


def _delayed(signal: np.ndarray, samples: float) -> np.ndarray:
    """`signal` later by a fraction of a sample (a phase ramp): a result read at a rate a hair off."""
    spectrum = np.fft.rfft(signal)
    spectrum *= np.exp(-2j * np.pi * np.fft.rfftfreq(len(signal)) * samples)
    return np.fft.irfft(spectrum, n=len(signal))


def test_a_result_off_the_sources_clock_leaves_every_transient_in_place_with_the_mid_from_the_source() -> None:
    """A drift-corrected result sits a sample or two off the source (here 1.7 samples late): taking the mid
    from it put the clicks 2 samples late in both stems; with the mid from the source they are exact and
    each channel is close to the band filter of that channel."""
    clicks, positions = click_train(RATE, 2.0, seed=5)
    rng = np.random.default_rng(9)
    bed = 0.05 * rng.standard_normal((len(clicks), 2))  # different low-level noise on each side
    source = np.stack([clicks, 0.5 * clicks], axis=1) + bed
    target, residual = _band_service(source, HIGH)
    late = _delayed(target, 1.7)
    inner = positions[(positions > 40) & (positions < len(clicks) - 40)]
    off, _ = _project(late, residual, source, [65_536])
    assert np.max(np.abs(peak_positions(off[:, 0], inner) - inner)) == 2  # what the mid from T does
    out, out_r = _project(late, residual, source, [65_536, 1_000], service_residual=True, mid_from_source=True)
    assert out_r is not None and np.max(np.abs(out + out_r - source)) < 1e-5
    for channel in range(2):
        assert np.array_equal(peak_positions(out[:, channel], inner), inner), channel
    want = _ideal(source, HIGH)  # the band filter on each channel: measured 40 dB (the late T: -4.6 dB)
    assert min(_sdr(want[:, c], out[:, c]) for c in range(2)) > 35


def test_rejects_a_hop_that_does_not_divide_the_frame() -> None:
    with pytest.raises(ValueError):
        MaskProjector(2, RATE, n_fft=2048, hop=1000)


def test_description_says_what_was_done() -> None:
    assert describe(1).startswith("direct")
    assert describe(2).startswith("mid-exact") and "4096/2048" in describe(2) and "steady floor" in describe(2)
    assert describe(2, mid_from_source=True).startswith("source-phase")
    assert describe(1, mid_from_source=True) == describe(1)
