"""Motion-corrected, dose-weighted particles: ``F * sum_f w(f, s) shift(X_f, -d_f)`` (optionally Fourier-cropped).

The factor ``F`` (frames) keeps the low-frequency scale of a plain frame sum (the weights sum to 1 per shell).
"""

from __future__ import annotations

import numpy as np

from cryolive.backend import to_numpy
from cryolive.image.fourier import irfft2c, rfft_freqs_2d


def align_frames(fx: np.ndarray, traj: np.ndarray) -> np.ndarray:
    """Frame transforms ``(N, F, n, n//2+1)`` shifted by ``-traj`` ``(N, F, 2)`` px (undo each displacement)."""
    n = fx.shape[-2]
    ky, kx = (to_numpy(g) for g in rfft_freqs_2d(n))  # motion computes on the host
    ph = np.exp(2j * np.pi * (kx[None, None] * traj[..., 0, None, None] + ky[None, None] * traj[..., 1, None, None]))
    return fx * ph.astype(np.complex64)


def fourier_crop(f: np.ndarray, n: int, n_out: int) -> np.ndarray:
    """Crop rfft-layout transforms ``(..., n, n//2+1)`` of box ``n`` to box ``n_out <= n`` (values scaled so that
    real-space intensities are kept)."""
    if n_out == n:
        return f
    h = n_out // 2
    rows = np.r_[0:h, n - (n_out - h):n]
    return f[..., rows, : h + 1] * (n_out * n_out) / (n * n)


def corrected_particles(fx: np.ndarray, traj: np.ndarray, weights_px: np.ndarray, crop_box: int | None = None
                        ) -> np.ndarray:
    """Real images ``(N, m, m)`` float32 (``m`` = ``crop_box`` or the patch box).

    ``fx``: frame transforms ``(N, F, n, n//2+1)``; ``traj``: ``(N, F, 2)`` px; ``weights_px``: ``(F, n, n//2+1)``
    (:func:`cryolive.motion.dose.weight_image`).
    """
    n, f_count = fx.shape[-2], fx.shape[1]
    summed = (align_frames(fx, traj) * weights_px[None]).sum(axis=1) * f_count
    m = crop_box or n
    return np.asarray(irfft2c(fourier_crop(summed, n, m), m), dtype=np.float32)
