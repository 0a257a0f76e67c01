"""The statistics of the mid-exact projection (see bridge.audio.projection): per STFT frame and bin the raw
products of the mid, the deviations and the service's residual, their sums over neighbouring frames and
bins, and from those the pans α, the residual's shares γ and the gate g. Everything runs on float32 planes
of real and imaginary parts, each frame ending in a zero bin so that a whole plane is one contiguous run."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Float32Array = NDArray[np.float32]

OPPOSED = 6.0  # r₀: deviation power per extra channel, in units of the mid's, where the gate starts closing
OPPOSED_LONG = 5.0  # r₁: the same over the long window (a piece of frames, the last piece and LOOK ahead)
STEADY_MID = 8.0  # k: a floor of the unexplained deviation power within k × the mid's floor is not steady
STEADY_OVER = 6.0  # β: the U term is kept by (1 − β·e / u)², e the steady floor, u the power over ±4 frames
COHERENT = 0.5  # c₀²: squared coherence from which a pan (or the residual's share) is fully trusted
RESIDUAL_FLOOR = 1e-6  # a residual this much weaker than the deviation (float rounding) explains none of it
EPS = np.float32(1e-30)  # keeps digital silence (all powers 0) from dividing by zero
def stat_rows(used: int) -> int:
    """|M|², mean_c|D_c|², |R|², M·R̄ (re, im), then per deviation used D_c·M̄ and D_c·R̄ (re, im each)."""
    return 5 + 4 * used


def raw_statistics(re: Float32Array, im: Float32Array, out: Float32Array, tmp: Float32Array) -> None:
    """The raw statistics of each frame and bin into `out` (rows: see stat_rows), from the planes
    T, M, R, D_0 … of `re` and `im`."""

    def power(row: int, into: Float32Array) -> None:
        np.multiply(re[row], re[row], out=into)
        np.multiply(im[row], im[row], out=tmp)
        into += tmp

    def times_conj(a: int, b: int, into_re: Float32Array, into_im: Float32Array) -> None:  # a·b̄
        np.multiply(re[a], re[b], out=into_re)
        np.multiply(im[a], im[b], out=tmp)
        into_re += tmp
        np.multiply(im[a], re[b], out=into_im)
        np.multiply(re[a], im[b], out=tmp)
        into_im -= tmp

    used = len(re) - 3
    power(1, out[0])
    power(3, out[1])
    for c in range(1, used):
        power(3 + c, out[2])
        out[1] += out[2]
    if used > 1:
        out[1] *= 1.0 / used
    power(2, out[2])
    times_conj(1, 2, out[3], out[4])
    for c in range(used):
        times_conj(3 + c, 1, out[5 + 4 * c], out[6 + 4 * c])
        times_conj(3 + c, 2, out[7 + 4 * c], out[8 + 4 * c])


def smooth_pairs(pairs: Float32Array, work: Float32Array) -> Float32Array:
    """Sums over ±2 pairs of frames weighted 1 2 2 2 1 (frames −4 … +5 of the pair's first: a box of 4 by
    doubling, then one of 2; unnormalised: only ratios are used). `pairs` (in work[0]) holds pairs −2 ..
    n+1 on axis 1; the result (in work[1]) pairs 0 .. n−1."""
    count = pairs.shape[1]
    two, four, out = work[1, :, : count - 1], work[0, :, : count - 3], work[1, :, : count - 4]
    np.add(pairs[:, :-1], pairs[:, 1:], out=two)
    np.add(two[:, :-2], two[:, 2:], out=four)
    np.add(four[:, :-1], four[:, 1:], out=out)
    return out


def smooth_bins(values: Float32Array, out: Float32Array) -> Float32Array:
    """Sums over ±1 bin weighted 1 2 1, the edges summing what there is: each plane as one run (a frame's
    zero bin keeps the frames apart; slicing the bins axis instead costs 5× the time)."""
    for plane, into in zip(values, out, strict=True):
        flat, total = plane.reshape(-1), into.reshape(-1)
        np.add(flat, flat, out=total)
        total[1:] += flat[:-1]
        total[:-1] += flat[1:]
    return out


def gates(timed: Float32Array, used: int, channels: int) -> tuple[Float32Array, Float32Array]:
    """g = min(1, r₀ / r)² from the statistics summed over frames only (a pad's partials are a bin wide), and
    the unexplained deviation power u = mean_c Σₜ|D_c − α_c·M|² it was computed from."""
    return _gate(timed[0], timed[1], timed[5::4], timed[6::4], used, channels, OPPOSED)


def piece_floors(unexplained: Float32Array, power_mid: Float32Array) -> Float32Array:
    """The least unexplained deviation power and the least mid power over a piece's pairs of frames (axis 0):
    (2, bins), what the steady floor of this piece and the next two is taken from."""
    return np.stack((unexplained.min(axis=0), power_mid.min(axis=0)))


def steady_weights(unexplained: Float32Array, floors: Float32Array, channels: int) -> Float32Array:
    """f = max(0, 1 − β·e / u)², e = max(0, min u − k · (C − 1) · min Σₜ|M|²) over the window `floors`
    covers: the deviation power that never went away while the mid did, taken off what no pan explains."""
    steady = floors[1] * np.float32(-STEADY_MID * (channels - 1))
    steady += floors[0]
    np.maximum(steady, 0.0, out=steady)
    steady *= np.float32(STEADY_OVER)
    # 1 − β·e / max(u, β·e): exactly 1 where no steady floor (e = 0), 0 where u is no more than β·e
    weight: Float32Array = np.maximum(unexplained, steady)
    weight += EPS
    np.divide(steady, weight, out=weight)
    np.subtract(1.0, weight, out=weight)
    weight *= weight
    return weight


def long_sums(summed: Float32Array) -> Float32Array:
    """What the long gate needs of the statistics `summed` over frames (axis 1, summed over): |M|²,
    mean_c|D_c|², then D_c·M̄ re of each deviation used, then im."""
    return np.concatenate((summed[:2].sum(axis=1), summed[5::4].sum(axis=1), summed[6::4].sum(axis=1)))


def long_gates(sums: Float32Array, used: int, channels: int) -> Float32Array:
    """g₁ = min(1, r₁ / r)², r over the long window (rows: see long_sums): one per bin."""
    return _gate(sums[0], sums[1], sums[2 : 2 + used], sums[2 + used :], used, channels, OPPOSED_LONG)[0]


def _gate(power_mid: Float32Array, power_dev: Float32Array, x_re: Float32Array, x_im: Float32Array, used: int,
          channels: int, opposed: float) -> tuple[Float32Array, Float32Array]:
    explained = _mean_power(x_re, x_im, used)
    explained /= power_mid + EPS
    trust = np.minimum(1.0, explained / (COHERENT * power_dev + EPS))
    trust *= trust
    unexplained: Float32Array = np.subtract(power_dev, trust * (2.0 - trust) * explained, dtype=np.float32)
    allowed = opposed * (channels - 1) * power_mid
    # min(1, r₀ / r) without overflow, and 1 where there is nothing at all (digital silence over the whole
    # window: 0 / 0 read as 0 closed the gate on a sound starting where the long window does not reach)
    gate: Float32Array = (allowed + EPS) / (np.maximum(unexplained, allowed) + EPS)
    gate *= gate
    return gate, unexplained


def pans(stats: Float32Array, used: int) -> tuple[Float32Array, Float32Array, Float32Array, Float32Array]:
    """α_c = t · Σ D_c·M̄ / Σ|M|² (rows: the deviations used), the trust t and the explained power
    mean_c |Σ D_c·M̄|² / Σ|M|²."""
    power_mid, power_dev = stats[0], stats[1]
    x_re, x_im = stats[5::4], stats[6::4]
    inverse_mid = power_mid + EPS
    np.divide(1.0, inverse_mid, out=inverse_mid)
    explained = _mean_power(x_re, x_im, used)
    explained *= inverse_mid
    trust = np.minimum(1.0, explained / (COHERENT * power_dev + EPS))
    trust *= trust
    inverse_mid *= trust
    return x_re * inverse_mid, x_im * inverse_mid, trust, explained


def residual_shares(
    stats: Float32Array, used: int, pan_re: Float32Array, pan_im: Float32Array, trust: Float32Array,
    explained: Float32Array,
) -> tuple[Float32Array, Float32Array]:
    """γ_c: what the pan leaves, U_c = D_c − α_c·M, regressed on the service's residual R, trusted by their
    coherence, never more than U_c itself (Σ|γR|² ≤ Σ|U|² whatever the rounding)."""
    power_dev, power_res, z_re, z_im = stats[1], stats[2], stats[3], stats[4]
    # Σ U_c·R̄ = Σ D_c·R̄ − α_c · Σ M·R̄
    y_re = stats[7::4] - pan_re * z_re
    y_re += pan_im * z_im
    y_im = stats[8::4] - pan_re * z_im
    y_im -= pan_im * z_re
    unexplained = trust * (2.0 - trust)
    unexplained *= explained
    np.subtract(power_dev, unexplained, out=unexplained)
    np.maximum(unexplained, 0.0, out=unexplained)
    follows = _mean_power(y_re, y_im, used)
    share = np.minimum(1.0, follows / (COHERENT * unexplained * power_res + EPS))
    share *= share
    share *= power_res / (power_res + RESIDUAL_FLOOR * unexplained + EPS)
    unexplained += EPS
    np.divide(follows, unexplained, out=follows)
    np.maximum(follows, power_res, out=follows)
    follows += EPS
    share /= follows
    y_re *= share
    y_im *= share
    return y_re, y_im


def _mean_power(re: Float32Array, im: Float32Array, used: int) -> Float32Array:
    """mean over the rows of |re + i·im|² (one row: no mean to take)."""
    power: Float32Array = re * re
    power += im * im
    mean: Float32Array = power[0] if used == 1 else power.mean(axis=0, dtype=np.float32)
    return mean
