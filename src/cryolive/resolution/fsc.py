"""Fourier shell correlation, resolution estimates and the gold-standard FSC with mask correction.

All volumes are cubic backend arrays (``cryolive.backend.xp()``) indexed ``[z, y, x]`` with the centre at
voxel ``n // 2``. Curves are NumPy float64 arrays over the integer shells ``0 .. n // 2`` (shell ``k`` holds
the Fourier voxels ``round(|k| n) == k``), whose spatial frequency is ``k / (n * pixel_size)`` in 1/Å.
Resolutions are in Å.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np

from cryolive.backend import to_numpy, xp
from cryolive.image.fourier import fftnc, ifftnc
from cryolive.io._atomic import atomic_path
from cryolive.resolution._shells import (
    check_cubic,
    check_finite,
    check_positive,
    n_shells,
    shell_counts,
    shell_index,
    shell_sum,
)

__all__ = [
    "FSCResult",
    "fsc",
    "fsc_weight",
    "gold_standard_fsc",
    "phase_randomize",
    "resolution_at",
    "shell_frequencies",
    "shell_voxel_counts",
    "ssnr_from_fsc",
]


def _check_pair(vol_a: Any, vol_b: Any, mask: Any = None) -> int:
    n = check_cubic(vol_a, "first volume")
    check_cubic(vol_b, "second volume")
    if tuple(vol_a.shape) != tuple(vol_b.shape):
        raise ValueError(f"volumes differ in shape: {tuple(vol_a.shape)} vs {tuple(vol_b.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(vol_a.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the volumes' {tuple(vol_a.shape)}")
    return n


def _fsc_from_ft(fa: Any, fb: Any, n: int) -> np.ndarray:
    m = xp()
    num = shell_sum(m.real(fa * m.conj(fb)), n)
    da = shell_sum(m.real(fa * m.conj(fa)), n)
    db = shell_sum(m.real(fb * m.conj(fb)), n)
    den = np.sqrt(da * db)
    out = np.zeros_like(num)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return np.clip(out, -1.0, 1.0)


def fsc(vol_a: Any, vol_b: Any, mask: Any = None) -> np.ndarray:
    """Fourier shell correlation of two cubic volumes per integer shell ``0 .. n // 2``.

    ``FSC(k) = Re Σ A·B* / sqrt(Σ|A|² Σ|B|²)`` over the Fourier voxels of shell ``k``. If ``mask`` is given
    (same shape, real values, usually in [0, 1]) both maps are multiplied by it first. Any box size (odd or
    even). Shells with no power in either map give 0. Returns a NumPy float64 array of length ``n // 2 + 1``.
    """
    m = xp()
    n = _check_pair(vol_a, vol_b, mask)
    a = m.asarray(vol_a, dtype=m.float32)
    b = m.asarray(vol_b, dtype=m.float32)
    if mask is not None:
        mk = m.asarray(mask, dtype=m.float32)
        a = a * mk
        b = b * mk
    return _fsc_from_ft(fftnc(a), fftnc(b), n)


def shell_frequencies(n: int, pixel_size: float) -> np.ndarray:
    """Spatial frequency (1/Å) of shells ``0 .. n // 2``: ``k / (n * pixel_size)``; ``pixel_size`` in Å."""
    p = check_positive(pixel_size, "pixel_size")
    return np.arange(n_shells(int(n)), dtype=np.float64) / (int(n) * p)


def shell_voxel_counts(n: int) -> np.ndarray:
    """Number of Fourier voxels in each shell ``0 .. n // 2`` of box ``n`` (for ``3/sqrt(N)`` bounds)."""
    return shell_counts(int(n))


def resolution_at(curve: Any, n: int, pixel_size: float, threshold: float) -> float:
    """Resolution (Å) where ``curve`` (per shell ``0 ..``) first falls below ``threshold``.

    Shell 0 is ignored. The crossing is interpolated linearly in frequency between the last shell at or
    above the threshold and the first shell below it. If the curve is already below at shell 1 the result is
    the box size ``n * pixel_size``; if it never falls below, the Nyquist resolution ``2 * pixel_size``.
    """
    p = check_positive(pixel_size, "pixel_size")
    c = to_numpy(curve).astype(np.float64).ravel()
    n = int(n)
    freqs = np.arange(c.size, dtype=np.float64) / (n * p)
    below = np.nonzero(c[1:] < threshold)[0]
    if below.size == 0:
        return 2.0 * p
    k = int(below[0]) + 1
    if k == 1:
        return n * p
    c0, c1 = c[k - 1], c[k]
    t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    f = freqs[k - 1] + t * (freqs[k] - freqs[k - 1])
    return float(1.0 / f)


def fsc_weight(curve: Any) -> np.ndarray:
    """Rosenthal–Henderson weight ``sqrt(2 FSC / (1 + FSC))`` per shell: 0 where FSC ≤ 0, within [0, 1]."""
    c = to_numpy(curve).astype(np.float64)
    pos = np.clip(c, 0.0, 1.0)
    w = np.sqrt(2.0 * pos / (1.0 + pos))
    w[c <= 0] = 0.0
    return np.clip(w, 0.0, 1.0)


def ssnr_from_fsc(curve: Any, full_set: bool = True) -> np.ndarray:
    """Spectral SNR per shell from a half-map FSC: ``FSC / (1 − FSC)`` per half set, ×2 for the full set.

    The FSC is clipped to ``[1e-3, 0.999]`` first, so the result lies in about ``[1e-3, 999]`` (×2).
    """
    c = np.clip(to_numpy(curve).astype(np.float64), 1e-3, 0.999)
    s = c / (1.0 - c)
    return 2.0 * s if full_set else s


def phase_randomize(vol: Any, from_shell: int, seed: int | None = 0) -> Any:
    """Replace the Fourier phases of ``vol`` at shells ``≥ from_shell`` by random ones; amplitudes are kept.

    The random phases are those of the transform of real Gaussian noise, so they are Friedel-symmetric and the
    result is real (the tiny imaginary residue of the inverse transform is dropped). Returns float32.
    """
    m = xp()
    n = check_cubic(vol)
    f = fftnc(m.asarray(vol, dtype=m.float32))
    rng = np.random.default_rng(seed)
    noise = m.asarray(rng.standard_normal((n, n, n), dtype=np.float32))
    g = fftnc(noise)
    absg = m.abs(g)
    phase = m.where(absg > 0, g / m.where(absg > 0, absg, 1), 1)
    sel = (shell_index(n) >= int(from_shell)).reshape((n, n, n))
    f = m.where(sel, m.abs(f) * phase, f)
    return m.real(ifftnc(f)).astype(m.float32)


@dataclass(frozen=True, eq=False)
class FSCResult:
    """A gold-standard FSC: curves per shell ``0 .. n // 2`` (NumPy float64) and resolutions (Å).

    ``fsc`` is the curve the resolutions are read from: the phase-randomisation-corrected masked FSC when a
    mask was given, the unmasked FSC otherwise. Fields not computed are ``None``. ``randomize_from`` is the
    resolution (Å) of the first phase-randomised shell ``randomize_shell``.
    """

    freq: np.ndarray
    fsc: np.ndarray
    fsc_unmasked: np.ndarray
    fsc_masked: np.ndarray | None = None
    fsc_phase_randomized: np.ndarray | None = None
    fsc_corrected: np.ndarray | None = None
    res_0143: float | None = None
    res_05: float | None = None
    randomize_from: float | None = None
    randomize_shell: int | None = None

    @property
    def resolution(self) -> np.ndarray:
        """Resolution (Å) of each shell, ``1 / freq`` (``inf`` for shell 0)."""
        with np.errstate(divide="ignore"):
            return np.where(self.freq > 0, 1.0 / np.where(self.freq > 0, self.freq, 1.0), np.inf)

    def to_csv(self, path: str | PathLike[str]) -> None:
        """Write the curves as CSV, one row per shell.

        Columns: shell, freq_1_per_A, resolution_A, fsc_unmasked, fsc_masked, fsc_phase_randomized,
        fsc_corrected. Cells of curves not computed are empty; shell 0's resolution is ``inf``.
        """
        cols = [self.fsc_unmasked, self.fsc_masked, self.fsc_phase_randomized, self.fsc_corrected]
        res = self.resolution

        def cell(arr: np.ndarray | None, i: int) -> str:
            return "" if arr is None else f"{float(arr[i]):.8g}"

        with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                [
                    "shell",
                    "freq_1_per_A",
                    "resolution_A",
                    "fsc_unmasked",
                    "fsc_masked",
                    "fsc_phase_randomized",
                    "fsc_corrected",
                ]
            )
            for i in range(self.freq.size):
                w.writerow([i, f"{self.freq[i]:.8g}", f"{res[i]:.8g}"] + [cell(c, i) for c in cols])


def gold_standard_fsc(
    half_a: Any,
    half_b: Any,
    pixel_size: float,
    mask: Any = None,
    seed: int = 0,
    *,
    randomize_threshold: float = 0.8,
    guard_shells: int = 2,
) -> FSCResult:
    """Gold-standard FSC between two independent half maps, with the mask correction of Chen et al. (2013).

    Without ``mask``: the unmasked FSC and its 0.143 / 0.5 resolutions. With ``mask``: the masked FSC
    ``FSC_t``; the phases of both half maps (independently, from ``seed`` and ``seed + 1``) are randomised
    from shell ``k_r`` on, the first shell where the unmasked FSC falls below ``randomize_threshold`` (0.8);
    the randomised maps are masked to give ``FSC_n``; and ``FSC_true = (FSC_t − FSC_n) / (1 − FSC_n)`` for
    shells ``≥ k_r + guard_shells``, ``FSC_t`` below. The guard (2 shells, as in RELION) skips the shells
    next to ``k_r`` where the mask spreads unrandomised signal into ``FSC_n``. ``pixel_size`` in Å.
    """
    m = xp()
    p = check_positive(pixel_size, "pixel_size")
    n = _check_pair(half_a, half_b, mask)
    if guard_shells < 0:
        raise ValueError(f"guard_shells must be ≥ 0, got {guard_shells}")
    freq = shell_frequencies(n, p)
    a = m.asarray(half_a, dtype=m.float32)
    b = m.asarray(half_b, dtype=m.float32)
    check_finite(a, "half map A")
    check_finite(b, "half map B")
    unmasked = fsc(a, b)
    if mask is None:
        return FSCResult(
            freq=freq,
            fsc=unmasked,
            fsc_unmasked=unmasked,
            res_0143=resolution_at(unmasked, n, p, 0.143),
            res_05=resolution_at(unmasked, n, p, 0.5),
        )
    mk = m.asarray(mask, dtype=m.float32)
    check_finite(mk, "mask")
    masked = fsc(a, b, mk)

    below = np.nonzero(unmasked[1:] < randomize_threshold)[0]
    k_r = int(below[0]) + 1 if below.size else n // 2
    ra = phase_randomize(a, k_r, seed)
    rb = phase_randomize(b, k_r, None if seed is None else seed + 1)
    rand = fsc(ra, rb, mk)

    corrected = masked.copy()
    start = min(k_r + guard_shells, masked.size)
    denom = 1.0 - rand[start:]
    safe = np.where(np.abs(denom) > 1e-9, denom, 1e-9)
    corrected[start:] = np.clip((masked[start:] - rand[start:]) / safe, -1.0, 1.0)
    return FSCResult(
        freq=freq,
        fsc=corrected,
        fsc_unmasked=unmasked,
        fsc_masked=masked,
        fsc_phase_randomized=rand,
        fsc_corrected=corrected,
        res_0143=resolution_at(corrected, n, p, 0.143),
        res_05=resolution_at(corrected, n, p, 0.5),
        randomize_from=float(n * p / k_r) if k_r > 0 else math.inf,
        randomize_shell=k_r,
    )
