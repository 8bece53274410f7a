"""Empirical dose weights from the Fourier cylinder correlation (FCC) of aligned frames with the reference.

``FCC(f, s) = sum_{i, k in shell s} Re[X~_if(k) conj(R_i(k))] / sqrt(sum |X~_if|^2 sum |R_i|^2)`` over all
particles, with ``X~`` the frame patch aligned by its trajectory and ``R`` the OPPOSITE half map's reference (the
particle did not contribute to it). Model: ``FCC(f, s) ~ k_f exp(-B_f s^2 / 4) G(s)`` (``s`` in 1/Å, ``B_f`` in
Å^2, relative: the least-damaged frame has B = 0, the largest scale is 1), fitted by alternating least squares.
Weights: ``w(f, s) = k_f exp(-B_f s^2 / 4)`` normalised to sum 1 over frames in each shell (column).
Shells are integer radii ``0 .. n//2`` of the particle box ``n``.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryolive.backend import to_numpy
from cryolive.image.fourier import radial_index_2d
from cryolive.io import InputError


class FCCAccumulator:
    """Sums for the FCC over micrographs: numerator and norms per frame and shell ``(F, n//2+1)``."""

    def __init__(self, n_frames: int, box: int) -> None:
        self.box = box
        self.shells = np.minimum(to_numpy(radial_index_2d(box)), box // 2 + 1).ravel()
        size = box // 2 + 2
        self.num = np.zeros((n_frames, size))
        self.xx = np.zeros((n_frames, size))
        self.rr = np.zeros(size)
        self.count = 0

    def add(self, aligned: np.ndarray, ref: np.ndarray) -> None:
        """Add aligned frame transforms ``(N, F, n, n//2+1)`` and references ``(N, n, n//2+1)``."""
        cross = (aligned * np.conj(ref)[:, None]).real.sum(axis=0)  # (F, n, m)
        power = (np.abs(aligned) ** 2).sum(axis=0)
        for f in range(aligned.shape[1]):
            self.num[f] += np.bincount(self.shells, cross[f].ravel(), self.num.shape[1])
            self.xx[f] += np.bincount(self.shells, power[f].ravel(), self.num.shape[1])
        self.rr += np.bincount(self.shells, (np.abs(ref) ** 2).sum(axis=0).ravel(), self.num.shape[1])
        self.count += len(ref)

    def fcc(self) -> np.ndarray:
        """``(F, n//2+1)`` FCC per frame and shell."""
        den = np.sqrt(self.xx * self.rr[None])
        out = np.where(den > 0, self.num / np.maximum(den, 1e-30), 0.0)
        return out[:, : self.box // 2 + 1]


@dataclass(frozen=True)
class DoseModel:
    """Per-frame relative B-factors ``(F,)`` Å^2, scales ``(F,)``, for particles of ``box`` px at ``pixel_size`` Å;
    with the movies' ``dose_per_frame`` and ``pre_exposure`` (e/Å^2) when known (recorded, not used by the fit)."""

    bfactors: np.ndarray
    scales: np.ndarray
    pixel_size: float
    box: int
    dose_per_frame: float | None = None
    pre_exposure: float = 0.0

    def exposure(self) -> np.ndarray | None:
        """Accumulated dose at each frame's middle ``(F,)`` e/Å^2 (None when the dose per frame is unknown)."""
        if self.dose_per_frame is None:
            return None
        return self.pre_exposure + self.dose_per_frame * (np.arange(len(self.bfactors)) + 0.5)

    def bfactor_per_dose(self) -> float | None:
        """Least-squares slope of the B-factors against the exposure (Å^2 per e/Å^2; None when the dose is unknown
        or there is a single frame)."""
        e = self.exposure()
        if e is None or len(e) < 2:
            return None
        return float(np.polyfit(e, self.bfactors, 1)[0])

    def amplitude(self, box: int | None = None, pixel_size: float | None = None) -> np.ndarray:
        """Relative signal amplitude ``k_f exp(-B_f s^2/4)`` ``(F, box//2+1)`` (max 1) for shells of ``box`` px at
        ``pixel_size`` Å (default: the model's own), ``s = shell / (box pixel_size)``."""
        n = box or self.box
        s = np.arange(n // 2 + 1) / (n * (pixel_size or self.pixel_size))
        a = self.scales[:, None] * np.exp(-self.bfactors[:, None] * s[None] ** 2 / 4.0)
        return a / max(float(a.max()), 1e-30)

    def weights(self, box: int | None = None, pixel_size: float | None = None) -> np.ndarray:
        """Dose weights ``(F, box//2+1)``: the amplitude normalised to sum 1 over frames per shell."""
        a = self.amplitude(box, pixel_size)
        return a / np.maximum(a.sum(axis=0, keepdims=True), 1e-30)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``.npz`` with ``weights``, ``bfactors``, ``scales``, ``pixel_size``, ``box`` (and
        ``dose_per_frame``, ``pre_exposure``, ``exposure`` e/Å^2 when the dose is known)."""
        from cryolive.io._atomic import temp_name

        p = Path(path)
        tmp = temp_name(p)
        dose = ({} if self.dose_per_frame is None else
                {"dose_per_frame": self.dose_per_frame, "pre_exposure": self.pre_exposure,
                 "exposure": self.exposure()})
        with open(tmp, "wb") as fh:
            np.savez(fh, weights=self.weights(), bfactors=self.bfactors, scales=self.scales,
                     pixel_size=self.pixel_size, box=self.box, **dose)
        os.replace(tmp, p)


def load_dose(path: str | os.PathLike) -> DoseModel:
    """Read a dose model written by :meth:`DoseModel.save`; InputError naming the file when malformed."""
    p = Path(path)
    try:
        with np.load(p) as z:
            dose = float(z["dose_per_frame"]) if "dose_per_frame" in z.files else None
            pre = float(z["pre_exposure"]) if "pre_exposure" in z.files else 0.0
            return DoseModel(np.asarray(z["bfactors"], float), np.asarray(z["scales"], float),
                             float(z["pixel_size"]), int(z["box"]), dose, pre)
    except FileNotFoundError:
        raise InputError(f"{p}: dose-weight file not found") from None
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{p}: not a cryolive dose-weight .npz (bfactors, scales, pixel_size, box): {exc}") from None


def fit_dose_model(fcc: np.ndarray, box: int, pixel_size: float, n_iter: int = 30,
                   b_grid: np.ndarray | None = None) -> DoseModel:
    """Fit ``FCC(f, s) ~ k_f exp(-B_f s^2/4) G(s)`` to ``fcc (F, box//2+1)`` (shells 1 .. n//2 used)."""
    s = np.arange(fcc.shape[1]) / (box * pixel_size)
    use = slice(1, fcc.shape[1])
    y, s2 = fcc[:, use], (s[use] ** 2)[None]
    grid = np.arange(-200.0, 800.0, 1.0) if b_grid is None else b_grid
    g = np.maximum(y.mean(axis=0), 1e-6)
    f_count = fcc.shape[0]
    bfac, scale = np.zeros(f_count), np.ones(f_count)
    decay = np.exp(-grid[:, None] * s2[0][None] / 4.0)  # (G, S)
    wt = np.arange(1, fcc.shape[1], dtype=float)  # FCC variance ~ 1 / (components in the shell) ~ 1 / s
    for _ in range(n_iter):
        h = decay * g[None]  # (G, S)
        hh = (wt * h * h).sum(axis=1)
        for f in range(f_count):
            k = (h @ (wt * y[f])) / np.maximum(hh, 1e-30)
            resid = (wt * (y[f][None] - k[:, None] * h) ** 2).sum(axis=1)
            best = int(np.argmin(resid))
            bfac[f], scale[f] = grid[best], k[best]
        mdl = scale[:, None] * np.exp(-bfac[:, None] * s2 / 4.0)
        g = np.maximum((mdl * y).sum(axis=0) / np.maximum((mdl * mdl).sum(axis=0), 1e-30), 1e-6)
    bfac = bfac - bfac.min()
    scale = np.maximum(scale, 1e-6)
    return DoseModel(bfac, scale / scale.max(), float(pixel_size), int(box))


def weight_image(weights: np.ndarray, box: int) -> np.ndarray:
    """Per-shell weights ``(F, box//2+1)`` expanded to rfft pixels ``(F, box, box//2+1)``."""
    shells = np.minimum(to_numpy(radial_index_2d(box)), box // 2)
    return weights[:, shells]
