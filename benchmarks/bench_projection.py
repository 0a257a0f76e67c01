"""Benchmark the stereo projection on realistic music against the ideal answer and the copy baseline.

Music: MIDI written here (a tiny SMF writer): bass, drums, piano, strings, flute, trumpet, each rendered
ALONE by fluidsynth with the GM soundfont (/usr/share/sounds/sf2/FluidR3_GM.sf2, its reverb on: stereo
tails; its piano and strings are wide stereo samples), panned here by up to ±20 dB and summed, so the mix
is exactly the sum of its parts. (Its "sawtooth lead", program 81, is left out: its two channels are
nearly in anti-phase, correlation −0.87, which is the anti-phase case measured on its own below.)

Per band the stand-in offers (low, voice, high, mid; and full, no prompt) the stand-in separates the mix
(`bridge.local_service.separator.separate`) and `conform` makes the stems. The IDEAL target is the
stand-in's own band filter applied to each source channel; the copy baseline puts the service's mono
target in both channels. Printed per case: target and residual SDR per channel, side SDR, image error
(the L/R level ratio against the ideal's, dB), lag and null test.

Cases: two stereo pieces; the same music as mono-in-stereo (L = R); a 5.1 spread; an anti-phase pad
(L = p, R = −p) over the busy piece and over its bass alone (sparse), in every band, its chord in that
band's register (C2 low, C4 voice and full, C5 mid, C7 high; a C4 pad alone had < 1 % of its energy in
the low and high bands, which dropped it whatever the rule: "100 %"): its share in the residual, median
per second, measured as the change the pad makes to the target stem (the service's answer is the same with
and without it: it cancels in the mono mix), of its whole energy and of its part in the band (the band
filter on the pad; what lies outside the band goes to the residual anyway). The change also holds what
the pad costs the mix's own side (a gate that closes takes the mix's side in that bin along): computed
apart with the rule's own gain on the pad alone (an offline copy of the rule), the two differed by
0.1-1 point in the busy piece, so the change is a fair (if anything harsh) measure of the pad itself. The
pad is high-passed at 20 Hz: the soundfont's pad sample renders with a DC offset that was 79 % of its
energy, which every band but the low one drops anyway, so it inflated the shares (voice band busy 85.5 %
with it, 52 % without, before issue 22's second round).

Every quality figure is an SDR or a share, in dB or %, against the copy baseline of the same cases (the
service's mono target copied to every channel: what a client without the projection would give). Without
fluidsynth or the soundfont (Debian: `fluidsynth`, `fluid-soundfont-gm`) it measures only the cost.

The cost: CPU time (process_time, one thread) of the projector per minute of 44.1 kHz stereo, fed in
conform's blocks with the complement residual as conform runs it, median of --repeats with min–max; the
floor, timed by turns in the same run, is the STFT alone: the same frames of T, mid and side transformed
and one deviation transformed back (what any STFT projection of this resolution costs).

    python benchmarks/bench_projection.py [--seconds 12] [--repeats 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import ratio_spread, report, spread  # noqa: E402

from bridge.audio.conform import BLOCK, ConformSpec, conform  # noqa: E402
from bridge.audio.projection import HOP, N_FFT, MaskProjector  # noqa: E402
from bridge.audio.source import probe_source  # noqa: E402
from bridge.local_service.separator import (  # noqa: E402
    FULL,
    HIGH,
    LOW,
    MID,
    VOICE,
    Band,
    SeparationSpec,
    _zero_phase_blocks,
    band_filter,
    separate,
)

RATE = 48_000
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
PROMPTS: dict[Band, str | None] = {LOW: "bass", VOICE: "vocals", HIGH: "hi-hat", MID: "guitar", FULL: None}
# the anti-phase pad's chord root per band (MIDI note): its partials in the band, not only beside it
PAD_ROOTS: dict[Band, int] = {LOW: 36, VOICE: 60, MID: 72, HIGH: 96, FULL: 60}
Audio = np.ndarray

# -- MIDI -----------------------------------------------------------------------------------------


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append((value & 0x7F) | 0x80)
    return bytes(reversed(out))


def write_midi(path: Path, program: int, notes: list[tuple[float, float, int, int]], channel: int = 0) -> None:
    """A one-track SMF (format 0, 480 ticks per beat at 120 bpm): (start s, length s, pitch, velocity)."""
    tick = 960  # ticks per second
    events: list[tuple[int, bytes]] = [(0, bytes([0xC0 | channel, program]))]
    for start, length, pitch, velocity in notes:
        events.append((round(start * tick), bytes([0x90 | channel, pitch, velocity])))
        events.append((round((start + length) * tick), bytes([0x80 | channel, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1][0] & 0xF0 == 0x90))
    track, now = b"\x00\xff\x51\x03\x07\xa1\x20", 0  # tempo: 500000 µs per beat
    for when, data in events:
        track += _varlen(when - now) + data
        now = when
    track += b"\x00\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track)


def render(folder: Path, name: str, program: int, notes: list[tuple[float, float, int, int]], seconds: float,
           channel: int = 0) -> Audio:
    midi, wav = folder / f"{name}.mid", folder / f"{name}.wav"
    write_midi(midi, program, notes, channel)
    subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(RATE), "-F", str(wav), str(SOUNDFONT),
                    str(midi)], check=True, capture_output=True)
    data, _ = sf.read(str(wav), dtype="float64", always_2d=True)
    out = np.zeros((round(seconds * RATE), 2))
    out[: min(len(out), len(data))] = data[: len(out)]
    return out


def arrangement(seconds: float, seed: int) -> dict[str, tuple[int, int, list[tuple[float, float, int, int]]]]:
    """name → (program, MIDI channel, notes): bass, drums, piano, strings, flute, lead."""
    rng = np.random.default_rng(seed)
    beat = 0.5
    roots = [40, 45, 43, 38]
    parts: dict[str, tuple[int, int, list[tuple[float, float, int, int]]]] = {}
    bars = int(seconds / (4 * beat)) - 1
    parts["bass"] = (33, 0, [(b * 2 + i * beat, beat * 0.9, roots[b % 4] + (7 if i % 2 else 0), 100)
                             for b in range(bars) for i in range(4)])
    parts["drums"] = (0, 9, [(b * 2 + i * beat / 2, 0.1, (36 if i % 4 == 0 else 38 if i % 4 == 2 else 42),
                              90 + int(rng.integers(0, 30))) for b in range(bars) for i in range(8)])
    parts["piano"] = (0, 0, [(b * 2 + i * beat, beat * 1.8, roots[b % 4] + 24 + c, 70)
                             for b in range(bars) for i in (0, 2) for c in (0, 4, 7)])
    parts["strings"] = (48, 0, [(b * 2, 2.0, roots[b % 4] + 12 + c, 60) for b in range(bars) for c in (0, 7, 12)])
    parts["flute"] = (73, 0, [(b * 2 + i * beat, beat, 72 + int(rng.choice([0, 2, 4, 7, 9, 12])), 85)
                              for b in range(bars) for i in range(4) if rng.random() < 0.8])
    parts["lead"] = (56, 0, [(b * 2 + 1, 0.9, 60 + int(rng.choice([0, 3, 5, 7])), 70) for b in range(bars)])
    return parts


def pan_gains(db: float) -> tuple[float, float]:
    """Left/right gains with the left louder by `db` (negative: right louder), equal power."""
    ratio = 10 ** (db / 20)
    right = 1 / np.sqrt(1 + ratio**2)
    return ratio * right * np.sqrt(2), right * np.sqrt(2)


# -- measuring ------------------------------------------------------------------------------------


def ideal(source: Audio, band: Band) -> Audio:
    taps = band_filter(band)
    if taps is None:
        return source.copy()
    return np.stack([np.concatenate([t for _, t in _zero_phase_blocks(iter([source[:, c]]), taps)])
                     for c in range(source.shape[1])], axis=1)


def sdr(reference: Audio, estimate: Audio) -> float:
    """dB; inf when exact, nan when the reference is silent (the full band's ideal residual)."""
    error, signal = np.sum((reference - estimate) ** 2), np.sum(reference**2)
    if signal == 0:
        return float("nan")
    return float(10 * np.log10(signal / error)) if error > 0 else float("inf")


def image_db(x: Audio) -> float:
    return float(10 * np.log10(np.sum(x[:, 0] ** 2) / np.sum(x[:, 1] ** 2)))


@dataclass
class Stems:
    target: Audio
    residual: Audio
    copy: Audio  # the baseline: the service's mono target in every channel
    lag: int
    null: float


def run(folder: Path, name: str, source: Audio, band: Band) -> Stems:
    path = folder / f"{name}.src.wav"
    sf.write(str(path), source, RATE, subtype="FLOAT")
    svc_t, svc_r = folder / f"{name}.svc.t.wav", folder / f"{name}.svc.r.wav"
    for p in (svc_t, svc_r):
        p.unlink(missing_ok=True)
    separate(path, SeparationSpec(PROMPTS[band]), svc_t, svc_r)
    info = probe_source(path)
    out_t, out_r = folder / f"{name}.t.wav", folder / f"{name}.r.wav"
    for p in (out_t, out_r):
        p.unlink(missing_ok=True)
    report = conform(ConformSpec(info, 0, info.frames), svc_t, svc_r, out_t, out_r)
    mono, _ = sf.read(str(svc_t), dtype="float64")
    return Stems(sf.read(str(out_t), dtype="float64")[0], sf.read(str(out_r), dtype="float64")[0],
                 np.repeat(mono[:, None], source.shape[1], axis=1), report.offset_samples, report.null_test_dbfs)


def fmt(values: list[float]) -> str:
    return "/".join(f"{v:6.1f}" if np.isfinite(v) else f"{v!s:>6}" for v in values)


@dataclass
class Measured:
    target: list[float]  # target SDR per channel, dB
    copy: list[float]  # the copy baseline's SDR per channel, dB
    image: float  # L/R level ratio error against the ideal, dB (nan unless a true stereo source)
    copy_image: float


def measure(folder: Path, name: str, source: Audio, band: Band, rows: list[str]) -> Measured:
    stems = run(folder, name, source, band)
    want = ideal(source, band)
    want_r = source - want
    ch = range(source.shape[1])
    t_sdr = [sdr(want[:, c], stems.target[:, c]) for c in ch]
    r_sdr = [sdr(want_r[:, c], stems.residual[:, c]) for c in ch]
    c_sdr = [sdr(want[:, c], stems.copy[:, c]) for c in ch]
    if source.shape[1] == 2 and np.any(source[:, 0] != source[:, 1]):
        side = sdr(want[:, 0] - want[:, 1], stems.target[:, 0] - stems.target[:, 1])
        image = abs(image_db(stems.target) - image_db(want))
        copy_image = abs(image_db(want))
    else:
        side = image = copy_image = float("nan")
    rows.append(f"{name:<22} {band.name:<6} target {fmt(t_sdr)} residual {fmt(r_sdr)} side {side:6.1f} "
                f"image {image:5.3f} | copy {fmt(c_sdr)} image {copy_image:5.2f} | lag {stems.lag} "
                f"null {stems.null:.1f}")
    return Measured(t_sdr, c_sdr, image, copy_image)


@dataclass
class PadShare:
    whole: float  # of the pad's energy: median per second
    in_band: float  # of its energy in the band (the band filter on the pad): nan where it has none


def pad_share(folder: Path, name: str, mix: Audio, pad: Audio, band: Band) -> PadShare:
    """The pad's share in the residual, median over seconds: 1 − the change it makes to the target stem / its
    energy (the whole pad's, and its part in the band: what is out of the band the band filter drops anyway,
    so the whole pad's share flatters a band that holds little of it)."""
    with_pad = mix.copy()
    with_pad[:, 0] += pad
    with_pad[:, 1] -= pad
    a = run(folder, name + "+pad", with_pad, band).target
    b = run(folder, name, mix, band).target
    in_band = ideal(np.stack([pad, -pad], axis=1), band)
    whole, inside = [], []
    for s in range(len(pad) // RATE):
        part = slice(s * RATE, (s + 1) * RATE)
        energy, energy_in = 2 * np.sum(pad[part] ** 2), np.sum(in_band[part] ** 2)
        change = np.sum((a[part] - b[part]) ** 2)
        if energy > 1e-6:
            whole.append(1 - change / energy)
            if energy_in > 0.01 * energy:  # a band with 1 % of the pad or less: the figure would be noise
                inside.append(1 - change / energy_in)
    return PadShare(float(np.median(whole)) if whole else float("nan"),
                    float(np.median(inside)) if inside else float("nan"))


def percent(value: float) -> str:
    return f"{100 * value:.1f} %" if np.isfinite(value) else "-"


def db_spread(values: list[float]) -> str:
    """'median (min–max) dB' of SDRs (∞ where exact)."""
    return f"{statistics.median(values):.1f} dB ({min(values):.1f}–{max(values):.1f})"


def figures(seconds: float, mixes: list[Measured], mono: list[Measured], surround: Measured,
            shares: dict[str, tuple[PadShare, PadShare]]) -> list[dict[str, str]]:
    """run_all's rows: each measured against the copy baseline of the same cases."""
    copy_floor = "copy baseline (the service's mono target in every channel), same cases: "
    images = [m.image for m in mixes if np.isfinite(m.image)]
    copy_images = [m.copy_image for m in mixes if np.isfinite(m.copy_image)]
    mono_target = [v for m in mono for v in m.target]
    rows = [
        {"figure": f"stereo mixes ({len(mixes)}: 2 pieces x 4 bands, {seconds:g} s): target SDR per channel "
                   "against the ideal (the band filter on each source channel)",
         "measured": db_spread([v for m in mixes for v in m.target]),
         "floor": copy_floor + db_spread([v for m in mixes for v in m.copy]), "goal": "median >= 35 dB, none < 25"},
        {"figure": "stereo mixes: image error (L/R level ratio against the ideal's)",
         "measured": f"max {max(images):.3g} dB" if images else "-",
         "floor": copy_floor + (f"{min(copy_images):.3g}–{max(copy_images):.3g} dB" if copy_images else "-"),
         "goal": "<= 0.1 dB"},
        {"figure": f"mono in stereo (L = R), {len(mono)} bands: target SDR", "measured": db_spread(mono_target),
         "floor": copy_floor + db_spread([v for m in mono for v in m.copy]), "goal": "min >= 100 dB"},
        {"figure": "5.1 spread, mid band: target SDR per channel", "measured": db_spread(surround.target),
         "floor": copy_floor + db_spread(surround.copy), "goal": "-"},
    ]
    for band_name, (busy, sparse) in shares.items():
        rows.append({"figure": f"anti-phase pad (cancels in the mono mix), {band_name} band: share in the residual",
                     "measured": f"busy piece {percent(busy.whole)} (of its part in the band {percent(busy.in_band)}), "
                                 f"over the bass alone {percent(sparse.whole)} ({percent(sparse.in_band)})",
                     "floor": "median per second; the change the pad makes to the target stem", "goal": ">= 90 %"})
    return rows


def projector_seconds(source: Audio, target: Audio, residual: Audio) -> float:
    """CPU seconds of one projection as conform runs it: its blocks, the complement residual."""
    began = time.process_time()
    projector = MaskProjector(2, 44_100)
    for at in range(0, len(source), BLOCK):
        projector.process(target[at : at + BLOCK], residual[at : at + BLOCK], source[at : at + BLOCK])
    projector.flush()
    return time.process_time() - began


def stft_seconds(source: Audio, target: Audio) -> float:
    """The floor: the same frames of T, mid and side transformed (float32) and one deviation transformed back."""
    import scipy.fft

    began = time.process_time()
    window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    step = BLOCK
    for at in range(0, len(source), step):
        part = source[at : at + step + N_FFT - HOP]
        rows = np.stack([target[at : at + len(part)], part.mean(axis=1), (part[:, 0] - part[:, 1]) / 2])
        rows = rows.astype(np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(rows, N_FFT, axis=1)[:, ::HOP] * window
        spectra = scipy.fft.rfft(frames, axis=-1, overwrite_x=True)
        scipy.fft.irfft(spectra[2], n=N_FFT, axis=-1, overwrite_x=True)
    return time.process_time() - began


def cost(repeats: int) -> dict[str, str]:
    """The projector's CPU time per minute of 44.1 kHz stereo against the STFT floor, timed by turns."""
    rng = np.random.default_rng(5)
    source = rng.standard_normal((60 * 44_100, 2)) * 0.1
    mono = source.mean(axis=1)
    target = (0.5 * mono).astype(np.float32)
    residual = (mono - target).astype(np.float32)
    projector_seconds(source, target, residual)  # warm-up
    projected, floor = [], []
    for _ in range(repeats):
        projected.append(projector_seconds(source, target, residual))
        floor.append(stft_seconds(source, target))
    print(f"projector: {spread(projected, unit=' s')} CPU per minute of 44.1 kHz stereo "
          f"({60 / statistics.median(projected):.0f}x real time); STFT alone {spread(floor, unit=' s')}")
    return {"figure": "projector CPU time per minute of 44.1 kHz stereo (one thread, conform's blocks)",
            "measured": spread(projected, unit=" s"),
            "floor": f"the STFT alone (T, mid, side forward, one deviation back): {spread(floor, unit=' s')}",
            "ratio": ratio_spread(projected, floor), "goal": "as cheap as it can be (conform >= 250x overall)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of the projector and of the floor")
    args = parser.parse_args()
    cpu = cost(args.repeats)
    missing = [what for what, ok in (("fluidsynth", shutil.which("fluidsynth")), (str(SOUNDFONT), SOUNDFONT.exists()))
               if not ok]
    if missing:
        reason = f"skipped: {' and '.join(missing)} missing (Debian: fluidsynth, fluid-soundfont-gm)"
        print(reason, file=sys.stderr)
        report("bench_projection", [{"figure": "stereo projection on rendered music", "measured": reason}, cpu])
        return 0
    seconds = args.seconds
    rows: list[str] = []
    mixes: list[Measured] = []
    mono_sdrs: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="bench-projection-") as tmp:
        folder = Path(tmp)
        pans = {"bass": 0.0, "drums": 6.0, "piano": -20.0, "strings": 12.0, "flute": 20.0, "lead": -9.0}
        pieces = []
        for seed in (1, 2):
            parts = {name: render(folder, f"p{seed}-{name}", prog, notes, seconds, ch)
                     for name, (prog, ch, notes) in arrangement(seconds, seed).items()}
            sign = 1 if seed == 1 else -1
            mix = sum(part * np.array(pan_gains(sign * pans[name])) for name, part in parts.items())
            pieces.append((seed, parts, mix))
        for band in PROMPTS:
            if band is FULL:  # the target is the whole mix: exact, nothing to compare a baseline with
                measure(folder, "piece1 stereo", pieces[0][2], band, rows)
                continue
            for seed, _parts, mix in pieces:
                mixes.append(measure(folder, f"piece{seed} stereo", mix, band, rows))
            mono = pieces[0][2].mean(axis=1)
            mono_sdrs.append(measure(folder, "piece1 L=R", np.stack([mono, mono], axis=1), band, rows))
        # 5.1: the instruments spread over six channels (L R C LFE Ls Rs)
        seed, parts, _ = pieces[0]
        surround = np.zeros((len(pieces[0][2]), 6))
        for part, (ch_a, ch_b) in zip(parts.values(), ((3, 2), (0, 1), (0, 4), (1, 5), (2, 1), (4, 5)),
                                              strict=True):
            surround[:, ch_a] += part[:, 0]
            surround[:, ch_b] += part[:, 1]
        spread51 = measure(folder, "piece1 5.1", surround, MID, rows)
        # the anti-phase pad: a sustained pad chord, L = p, R = −p, over the busy piece and a sparse one, in
        # each band's register (a C4 chord has < 1 % of its energy below 200 Hz or above 6 kHz: the low and
        # high bands dropped it whatever the rule, 100 %)
        sparse_mix = pieces[0][1]["bass"] * np.array(pan_gains(0.0))
        highpass = scipy.signal.butter(4, 20.0, "highpass", fs=RATE, output="sos")
        shares = {}
        for band in PROMPTS:
            root = PAD_ROOTS[band]
            pad = render(folder, f"pad{root}", 89, [(0.5, seconds - 1.5, root + c, 80) for c in (0, 4, 7)],
                         seconds)[:, 0]
            pad = scipy.signal.sosfiltfilt(highpass, pad)
            shares[band.name] = (pad_share(folder, "piece1", pieces[0][2], 0.5 * pad, band),
                                 pad_share(folder, "bass-only", sparse_mix, 0.5 * pad, band))
    print(f"{len(rows)} cases, {seconds:g} s each, 48 kHz float; SDR in dB per channel (L/R…) against the ideal")
    for row in rows:
        print(row)
    stereo = [v for m in mixes for v in m.target]
    print(f"stereo mixes: target SDR median {np.median(stereo):.1f} dB, min {np.min(stereo):.1f} "
          f"(goal ≥ 35 median, none below 25)")
    print(f"L = R: target SDR min {np.min([v for m in mono_sdrs for v in m.target]):.1f} dB (goal ≥ 100)")
    print(f"5.1: target SDR min {np.min(spread51.target):.1f} dB, median {np.median(spread51.target):.1f}")
    for band_name, (busy, sparse) in shares.items():
        print(f"anti-phase pad, {band_name} band: {percent(busy.whole)} in the residual in the busy piece, "
              f"{percent(sparse.whole)} over the bass alone (median per second; goal ≥ 90 %); of its part in the "
              f"band: {percent(busy.in_band)}, {percent(sparse.in_band)}")
    report("bench_projection", [*figures(seconds, mixes, mono_sdrs, spread51, shares), cpu])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
