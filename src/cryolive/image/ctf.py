"""The contrast transfer function in RELION's sign convention, and CTF correction.

``CTF(s, theta) = scale * exp(-B s^2 / 4) * sin(chi)`` with
``chi = pi lambda df(theta) s^2 - pi/2 Cs lambda^3 s^4 + phase_shift + atan(Q / sqrt(1 - Q^2))`` and
``df(theta) = (U + V)/2 + (U - V)/2 cos(2 (theta - theta_ast))`` (U, V > 0 underfocus). At ``s = 0`` the CTF is
``+Q``: positive density projects to bright pixels (RELION's convention; cryoDRGN-style data are inverted).

Units: defocus Å, voltage kV, Cs mm, B Å^2, angles **radians**, frequencies 1/Å (``s``) or cycles/pixel on grids.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from cryolive.backend import xp
from cryolive.image.fourier import rfft_freqs_2d


def electron_wavelength(voltage_kv: Any) -> Any:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


@dataclass(frozen=True)
class CTFParams:
    """CTF parameters of a batch of B images (each field a NumPy array of shape ``(B,)``).

    defocus_u, defocus_v: Å (positive = underfocus); astig_angle: radians (RELION rlnDefocusAngle in degrees
    converted); voltage: kV; cs: mm; amp_contrast: fraction; phase_shift: radians; bfactor: Å^2; scale: unitless.
    """

    defocus_u: np.ndarray
    defocus_v: np.ndarray
    astig_angle: np.ndarray
    voltage: np.ndarray
    cs: np.ndarray
    amp_contrast: np.ndarray
    phase_shift: np.ndarray
    bfactor: np.ndarray
    scale: np.ndarray

    @classmethod
    def make(cls, defocus_u: Any, defocus_v: Any = None, astig_angle: Any = 0.0, voltage: Any = 300.0,
             cs: Any = 2.7, amp_contrast: Any = 0.1, phase_shift: Any = 0.0, bfactor: Any = 0.0,
             scale: Any = 1.0) -> CTFParams:
        """Build from scalars or arrays (broadcast to a common length B)."""
        if defocus_v is None:
            defocus_v = defocus_u
        vals = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (
            defocus_u, defocus_v, astig_angle, voltage, cs, amp_contrast, phase_shift, bfactor, scale)))
        return cls(*(np.array(v) for v in vals))

    def __len__(self) -> int:
        return len(self.defocus_u)

    def subset(self, index: Any) -> CTFParams:
        """The parameters of the images ``index`` (slice, integer array or boolean mask)."""
        return CTFParams(*(getattr(self, f.name)[index] for f in fields(self)))


def ctf_values(params: CTFParams, s: Any, theta: Any) -> Any:
    """CTF at spatial frequency magnitude ``s`` (1/Å) and direction ``theta`` (radians), per image.

    ``s`` and ``theta`` broadcast against ``(B, 1, ...)``: pass arrays of the grid's shape; returns
    ``(B,) + s.shape`` float32 on the current backend.
    """
    m = xp()
    nd = m.asarray(s).ndim

    def col(a: np.ndarray) -> Any:
        return m.asarray(a, dtype=m.float64).reshape((-1,) + (1,) * nd)

    lam = col(electron_wavelength(params.voltage))
    cs_a = col(params.cs * 1e7)
    q = np.clip(params.amp_contrast, 0.0, 0.999999)
    amp_phase = col(np.arctan(q / np.sqrt(1.0 - q * q)))
    du, dv, ang = col(params.defocus_u), col(params.defocus_v), col(params.astig_angle)
    s = m.asarray(s, dtype=m.float64)[None]
    theta = m.asarray(theta, dtype=m.float64)[None]
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * m.cos(2.0 * (theta - ang))
    s2 = s * s
    chi = m.pi * lam * df * s2 - 0.5 * m.pi * cs_a * lam**3 * s2 * s2 + col(params.phase_shift) + amp_phase
    env = m.exp(-col(params.bfactor) * s2 / 4.0) * col(params.scale)
    return (m.sin(chi) * env).astype(m.float32)


def ctf_2d(params: CTFParams, box: int, pixel_size: float) -> Any:
    """CTF images in ``rfft2`` layout ``(B, box, box // 2 + 1)`` for images of ``pixel_size`` Å."""
    m = xp()
    ky, kx = rfft_freqs_2d(box)
    s = m.sqrt(kx * kx + ky * ky) / pixel_size
    theta = m.arctan2(ky, kx)
    return ctf_values(params, s, theta)


def phase_flip(f_imgs: Any, ctf: Any) -> Any:
    """Phase-flip image transforms: ``sign(CTF) * X``."""
    return xp().sign(ctf) * f_imgs


def wiener_filter(f_imgs: Any, ctf: Any, k: float | Any = 0.1) -> Any:
    """Wiener-filter each image transform on its own: ``CTF X / (CTF^2 + k)`` (``k`` scalar or per shell)."""
    return ctf * f_imgs / (ctf * ctf + k)


def wiener_combine(f_imgs: Any, ctf: Any, ssnr: Any = None, k: float = 0.1) -> Any:
    """Combine many transforms of the same view: ``sum CTF_i X_i / (1/SSNR + sum CTF_i^2)``.

    ``f_imgs, ctf``: ``(B, ...)``; ``ssnr``: per-pixel signal-to-noise ratio broadcastable to one image (or
    None to use the constant ``k`` in place of ``1/SSNR``). Returns one transform.
    """
    m = xp()
    reg = k if ssnr is None else 1.0 / m.maximum(m.asarray(ssnr), 1e-6)
    return (ctf * f_imgs).sum(axis=0) / ((ctf * ctf).sum(axis=0) + reg)
