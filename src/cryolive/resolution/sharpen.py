"""Guinier B-factor estimation and map sharpening (Rosenthal & Henderson 2003).

A map blurred by a B-factor has Fourier amplitudes ``|F(s)| ∝ exp(−B s² / 4)`` (``s`` in 1/Å, ``B`` in Å²), so
``ln |F|`` against ``s²`` is a line of slope ``−B / 4`` (the Guinier plot). Sharpening multiplies by
``exp(+B s² / 4)``, optionally weights by the FSC and low-passes at the resolution.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryolive.backend import to_numpy, xp
from cryolive.image.fourier import fftnc
from cryolive.resolution._shells import (
    apply_radial,
    check_cubic,
    check_finite,
    check_positive,
    shell_counts,
    shell_mean_radius_sq,
    shell_sum,
)
from cryolive.resolution.filters import _edge_width, lowpass_weight
from cryolive.resolution.fsc import fsc_weight

__all__ = ["auto_bfactor", "choose_bfactor", "guinier_bfactor", "guinier_curve", "sharpen"]

_MAX_EXPONENT = 60.0  # cap on B s²/4 so exp() stays finite in float32


def _guinier_points(vol: Any, pixel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = xp()
    n = check_cubic(vol)
    p = check_positive(pixel_size, "pixel_size")
    v = m.asarray(vol, dtype=m.float32)
    check_finite(v)
    amp = shell_sum(m.abs(fftnc(v)), n)
    counts = shell_counts(n)
    mean_amp = amp / np.maximum(counts, 1)
    s2 = shell_mean_radius_sq(n) / (n * p) ** 2
    tiny = np.finfo(np.float64).tiny
    return s2[1:], np.log(np.maximum(mean_amp[1:], tiny)), counts[1:].astype(np.float64)


def guinier_curve(vol: Any, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Guinier plot of ``vol``: ``(s2, ln_amp)`` for the shells ``1 .. n // 2``.

    ``s2`` is the mean ``s²`` (1/Å²) of each shell's Fourier voxels, ``ln_amp`` the natural log of the
    shell's mean Fourier amplitude ``|F|`` (arbitrary units). NumPy float64 arrays. ``pixel_size`` in Å.
    """
    s2, ln_amp, _ = _guinier_points(vol, pixel_size)
    return s2, ln_amp


def guinier_bfactor(vol: Any, pixel_size: float, res_high_A: float, res_low_A: float = 10.0) -> float:
    """B-factor (Å²) from a straight-line Guinier fit between ``res_low_A`` and ``res_high_A`` (Å).

    Least squares of ``ln <|F|>`` against ``s²`` over the shells whose frequency lies in ``[1 / res_low_A, 1
    / res_high_A]``, each shell weighted by its number of voxels; ``B = −4 · slope``. Positive for a blurred
    map. Raises ``ValueError`` when fewer than 3 shells fall in the range.
    """
    hi = check_positive(res_high_A, "res_high_A")
    lo = check_positive(res_low_A, "res_low_A")
    if hi >= lo:
        raise ValueError(f"res_high_A ({hi} Å) must be finer (smaller) than res_low_A ({lo} Å)")
    s2, ln_amp, w = _guinier_points(vol, pixel_size)
    sel = (s2 >= 1.0 / lo**2) & (s2 <= 1.0 / hi**2) & np.isfinite(ln_amp)
    if int(sel.sum()) < 3:
        raise ValueError(
            f"only {int(sel.sum())} Fourier shells lie between {lo} Å and {hi} Å "
            f"(pixel {pixel_size} Å, box {vol.shape[0]}); widen the range"
        )
    x, y, wt = s2[sel], ln_amp[sel], w[sel]
    xm = np.sum(wt * x) / np.sum(wt)
    ym = np.sum(wt * y) / np.sum(wt)
    slope = np.sum(wt * (x - xm) * (y - ym)) / np.sum(wt * (x - xm) ** 2)
    return float(-4.0 * slope)


def auto_bfactor(vol: Any, pixel_size: float, resolution_A: float) -> float | None:
    """Guinier B-factor (Å^2) of ``vol`` (``(n, n, n)``, ``pixel_size`` Å/px) fitted between 10 Å and
    ``resolution_A`` (RELION's default range, the high end kept just inside Nyquist), or None when the resolution
    is coarser than 8 Å: too few shells beyond 10 Å for a meaningful fit."""
    res_high = max(resolution_A, 2.0 * pixel_size * 1.01)
    if res_high > 8.0:
        return None
    return guinier_bfactor(vol, pixel_size, res_high_A=res_high, res_low_A=10.0)


def choose_bfactor(vol: Any, pixel_size: float, resolution_A: float,
                   given: float | None = None) -> tuple[float, str]:
    """The B-factor (Å^2) a job sharpens ``vol`` (``(n, n, n)``, ``pixel_size`` Å/px) with, and the log line saying
    where it came from: ``given`` when set, else the Guinier fit of :func:`auto_bfactor`, else 0 when the map is
    too coarse or the box too small for a fit (the line says why)."""
    if given is not None:
        return float(given), f"B-factor {given:.1f} Å^2 (given)"
    try:
        bfac = auto_bfactor(vol, pixel_size, resolution_A)
        why = f"{resolution_A:.2f} Å is coarser than 8 Å (the fit needs shells beyond 10 Å)"
    except ValueError as exc:  # too few Fourier shells between 10 Å and the resolution (a small box)
        bfac, why = None, str(exc)
    if bfac is None:
        return 0.0, f"no Guinier fit: {why}; B = 0"
    return float(bfac), f"Guinier B-factor {bfac:.1f} Å^2 (fit from 10 Å to {resolution_A:.2f} Å)"


def sharpen(
    vol: Any,
    pixel_size: float,
    bfactor: float,
    resolution_A: float,
    fsc_curve: Any = None,
    edge_width_shells: float = 3.0,
) -> Any:
    """Sharpen ``vol``: multiply its transform by ``exp(+B s² / 4)`` (``bfactor`` B in Å², ``s`` in 1/Å).

    When ``fsc_curve`` (per shell ``0 .. n // 2``) is given, also weight by ``sqrt(2 FSC / (1 + FSC))``;
    always low-pass at ``resolution_A`` (Å) with a raised-cosine edge ``edge_width_shells`` Fourier pixels
    wide centred on ``1 / resolution_A``. Returns a real float32 volume.
    """
    m = xp()
    n = check_cubic(vol)
    p = check_positive(pixel_size, "pixel_size")
    res = check_positive(resolution_A, "resolution_A")
    b = float(bfactor)
    if not np.isfinite(b):
        raise ValueError(f"bfactor must be finite, got {bfactor!r}")
    w_edge = _edge_width(n, p, edge_width_shells, None)
    weight_curve = None
    if fsc_curve is not None:
        weight_curve = m.asarray(fsc_weight(to_numpy(fsc_curve)), dtype=m.float32)

    def weight(r: Any) -> Any:
        lp = lowpass_weight(r, n, res, p, w_edge)
        s2 = (r / (n * p)) ** 2
        gain = m.exp(m.minimum(0.25 * b * s2, _MAX_EXPONENT))
        out = m.where(lp > 0, gain * lp, 0.0)
        if weight_curve is not None:
            shells = m.arange(weight_curve.size, dtype=m.float32)
            out = out * m.interp(r.ravel(), shells, weight_curve, right=0.0).reshape(r.shape)
        return out.astype(m.float32)

    return apply_radial(vol, weight)
