"""Per-micrograph joint trajectory fit with an acceleration prior and a spatial Gaussian-process prior.

Data term (negative log-likelihood up to a constant), for particle ``i``, frame ``f`` and displacement ``d``::

    -CC_if(d) = -sum_k w_f(k) Re[ X_if(k) conj(R_i(k)) exp(2 pi i k.d) ] / sigma^2(k)

summed over the full Fourier plane of the patch (``X`` the frame patch, ``R`` the reference, ``w_f`` the expected
signal amplitude of frame ``f``: 1, or the damage model of :mod:`.dose`). ``CC_if`` is evaluated once as a map on
a window of displacements (an inverse FFT, upsampled ``UPSAMPLE`` times) and interpolated with Keys' cubic
convolution (analytic gradient) during the fit.

Prior (Zivanov, Nakane & Scheres 2019): velocities ``v_f = d_{f+1} - d_f`` (px/frame) of all particles of a
micrograph, per axis, are Gaussian with covariance ``K_ij = exp(-|p_i - p_j| / z)`` over particle positions
``p`` (Å), and accelerations ``v_{f+1} - v_f`` are penalised::

    E = data + lambda_sp sum_f v_f^T K^-1 v_f + lambda_acc sum_f |v_{f+1} - v_f|^2

with ``lambda_sp = r cos(theta)``, ``lambda_acc = r sin(theta)`` (units 1/px^2; hyper-parameters ``r, theta, z``).
The fit is parameterised by the first-frame positions and whitened velocity coefficients ``c`` with
``v_f = U Lambda^1/2 c_f`` (``K = U Lambda U^T``), so the spatial term is ``lambda_sp |c|^2``; it is solved with
L-BFGS-B on all particles of the micrograph jointly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

UPSAMPLE = 2


@dataclass(frozen=True)
class Hyper:
    """Hyper-parameters: total prior strength ``r`` (1/px^2), balance ``theta`` (radians, 0 = spatial prior only,
    pi/2 = acceleration prior only) and correlation distance ``z_A`` (Å)."""

    r: float
    theta: float
    z_A: float

    @property
    def lambda_sp(self) -> float:
        return float(self.r * np.cos(self.theta))

    @property
    def lambda_acc(self) -> float:
        return float(self.r * np.sin(self.theta))

    def as_dict(self) -> dict:
        return {"r": self.r, "theta": self.theta, "z_A": self.z_A, "lambda_sp": self.lambda_sp,
                "lambda_acc": self.lambda_acc}


def _upsampled_irfft(prod: np.ndarray, n: int, up: int) -> np.ndarray:
    """``sum_k prod(k) exp(2 pi i k.t)`` over the full plane on a grid ``t`` of step ``1/up`` px, ``(..., up n, up n)``
    (non-centred: index 0 is ``t = 0``). ``prod``: ``(..., n, n//2+1)`` Hermitian half plane (rfft layout)."""
    big = up * n
    h = n // 2
    pad = np.zeros(prod.shape[:-2] + (big, big // 2 + 1), np.complex128)
    pad[..., :h, :h + 1] = prod[..., :h, :h + 1]
    pad[..., big - (n - h):, :h + 1] = prod[..., h:, :h + 1]
    return np.fft.irfft2(pad, s=(big, big), axes=(-2, -1)) * (big * big)


def cc_maps(fx: np.ndarray, fref: np.ndarray, weight: np.ndarray, window_px: int, up: int = UPSAMPLE) -> np.ndarray:
    """Correlation maps ``(N, F, S, S)`` float64 on displacements ``-window_px .. window_px`` px, step ``1/up``.

    ``fx``: ``(N, F, n, n//2+1)`` frame transforms; ``fref``: ``(N, n, n//2+1)``; ``weight``: broadcastable to
    ``fx`` (e.g. ``(F, n, n//2+1)``: band mask x damage / noise power). Map index ``j`` is displacement
    ``(j - up window_px) / up`` px; axis -2 is y, axis -1 is x. Batched per particle to bound memory.
    """
    n = fx.shape[-2]
    w = window_px * up
    idx = np.r_[0:w + 1, up * n - w:up * n]
    order = np.argsort(np.r_[0:w + 1, -w:0])
    idx = idx[order]
    out = np.empty(fx.shape[:2] + (2 * w + 1, 2 * w + 1))
    for i in range(fx.shape[0]):
        prod = fx[i] * np.conj(fref[i])[None] * weight
        full = _upsampled_irfft(prod, n, up)
        out[i] = full[:, idx][:, :, idx]
    return out


def coarse_drift(fx: np.ndarray, fref: np.ndarray, weight: np.ndarray, reach: float = 0.45) -> np.ndarray:
    """A micrograph's rigid drift ``(F, 2)`` px (x, y) over the whole patch, for drift too large for the windows of
    :func:`cc_maps`: per frame, the peak of the particle-summed circular correlation (no upsampling, displacements
    up to ``reach`` x the box), with the contrast (peak or trough) that the frame-summed map prefers; the peaks are
    then smoothed by a cubic in time (least squares, refitted without the frames more than 8, 4, then 2 px off), since
    a drift is smooth and single-frame peaks are noisy. When fewer than half the frames' peaks stay that close to
    the track (peaks of noise, at very low SNR), no drift is claimed: zeros.

    ``fx``: ``(N, F, n, n//2+1)`` frame transforms; ``fref``: ``(N, n, n//2+1)``; ``weight``: ``(n, n//2+1)``
    (e.g. a low band over the noise power). Displacements follow :func:`cc_maps` (content moved by ``+d``)."""
    n_frames, n = fx.shape[1], fx.shape[-2]
    prod = np.zeros((n_frames,) + fx.shape[-2:], np.complex128)
    for i in range(fx.shape[0]):  # one particle at a time: no (N, F, n, m) temporary
        prod += fx[i] * np.conj(fref[i])[None]
    cc = np.fft.irfft2(prod * weight, s=(n, n), axes=(-2, -1))  # index 0: displacement 0, negatives wrapped
    d = np.fft.fftfreq(n, 1.0 / n)  # displacement of each index, px
    far = np.abs(d) > reach * n
    cc[:, far, :] = np.nan
    cc[:, :, far] = np.nan
    centred = cc - np.nanmedian(cc.reshape(n_frames, -1), axis=1)[:, None, None]
    total = np.nansum(centred, axis=0)
    sign = 1.0 if np.nanmax(total) >= -np.nanmin(total) else -1.0
    flat = np.nanargmax((sign * centred).reshape(n_frames, -1), axis=1)
    peaks = np.stack([d[flat % n], d[flat // n]], axis=1)  # (F, 2) x, y
    t = np.linspace(-1.0, 1.0, n_frames)
    basis = np.stack([t**k for k in range(min(4, n_frames))], axis=1)  # (F, <= 4)
    keep = np.ones(n_frames, bool)
    for tol in (8.0, 4.0, 2.0):  # outlying peaks (noise, or a drift past the reach) dropped ever more strictly
        coef, *_ = np.linalg.lstsq(basis[keep], peaks[keep], rcond=None)
        smooth = basis @ coef
        keep = np.abs(peaks - smooth).max(axis=1) <= tol
        if keep.sum() < max(basis.shape[1] + 2, 0.5 * n_frames):
            return np.zeros((n_frames, 2))
    coef, *_ = np.linalg.lstsq(basis[keep], peaks[keep], rcond=None)
    return basis @ coef


def _keys(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys cubic-convolution weights ``(4, P)`` for taps -1..2 and their derivatives, ``t`` in [0, 1)."""
    t2, t3 = t * t, t * t * t
    w = np.stack([-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1, -1.5 * t3 + 2 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2])
    dw = np.stack([-1.5 * t2 + 2 * t - 0.5, 4.5 * t2 - 5 * t, -4.5 * t2 + 4 * t + 0.5, 1.5 * t2 - t])
    return w, dw


def interp_maps(maps: np.ndarray, d: np.ndarray, window_px: int, up: int = UPSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """Values ``(P,)`` and gradients ``(P, 2)`` (per px, (x, y)) of maps ``(P, S, S)`` at displacements ``d (P, 2)`` px.

    Outside the window the displacement is clamped (zero gradient there).
    """
    p, s, _ = maps.shape
    u = d * up + window_px * up
    lo, hi = 1.0, s - 2.0 - 1e-9
    inside = (u >= lo) & (u <= hi)
    u = np.clip(u, lo, hi)
    iu = np.floor(u).astype(np.int64)
    t = u - iu
    wx, dwx = _keys(t[:, 0])
    wy, dwy = _keys(t[:, 1])
    rows = iu[:, 1][None, :] + np.arange(-1, 3)[:, None]  # (4, P)
    cols = iu[:, 0][None, :] + np.arange(-1, 3)[:, None]
    flat = maps.reshape(p, -1)
    pidx = np.arange(p)
    g = flat[pidx[None, None, :], rows[:, None, :] * s + cols[None, :, :]]  # (4 rows, 4 cols, P)
    gw = (g * wx[None]).sum(axis=1)  # (4 rows, P)
    val = (wy * gw).sum(axis=0)
    gx = (wy * (g * dwx[None]).sum(axis=1)).sum(axis=0) * up * inside[:, 0]
    gy = (dwy * gw).sum(axis=0) * up * inside[:, 1]
    return val, np.stack([gx, gy], 1)


def spatial_basis(positions_A: np.ndarray, z_A: float) -> np.ndarray:
    """``B = U Lambda^1/2`` ``(N, N)`` with ``K = exp(-|p_i - p_j| / z) = B B^T`` (identity when ``z <= 0``)."""
    n = len(positions_A)
    if z_A <= 0 or n == 1:
        return np.eye(n)
    dist = np.sqrt(((positions_A[:, None, :] - positions_A[None, :, :]) ** 2).sum(-1))
    lam, u = np.linalg.eigh(np.exp(-dist / z_A))
    lam = np.maximum(lam, 1e-6 * lam.max())
    return u * np.sqrt(lam)[None, :]


def _unpack(x: np.ndarray, basis: np.ndarray, n: int, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d0 = x[:2 * n].reshape(n, 2)
    c = x[2 * n:].reshape(f - 1, n, 2)
    v = np.einsum("nk,fka->fna", basis, c)
    d = np.concatenate([d0[None], d0[None] + np.cumsum(v, axis=0)], axis=0)  # (F, N, 2)
    return c, v, d


def trajectory_energy(x: np.ndarray, maps_fn: np.ndarray, basis: np.ndarray, hyper: Hyper,
                      window_px: int, up: int) -> tuple[float, np.ndarray]:
    """Energy and gradient for the packed variables ``x`` (first positions ``(N, 2)``, coefficients ``(F-1, N, 2)``).

    ``maps_fn``: ``(F, N, S, S)`` correlation maps (frame-major).
    """
    f, n = maps_fn.shape[:2]
    c, v, d = _unpack(x, basis, n, f)
    val, grad = interp_maps(maps_fn.reshape(f * n, *maps_fn.shape[2:]), d.reshape(-1, 2), window_px, up)
    e = -val.sum()
    gd = -grad.reshape(f, n, 2)
    g_d0 = gd.sum(axis=0)
    gv = np.cumsum(gd[::-1], axis=0)[::-1][1:]  # dE/dv_g = sum_{f > g} dE/dd_f
    if hyper.lambda_acc > 0 and f > 2:
        a = v[1:] - v[:-1]
        e += hyper.lambda_acc * (a * a).sum()
        gv = gv.copy()
        gv[1:] += 2 * hyper.lambda_acc * a
        gv[:-1] -= 2 * hyper.lambda_acc * a
    gc = np.einsum("nk,fna->fka", basis, gv)
    if hyper.lambda_sp > 0:
        e += hyper.lambda_sp * (c * c).sum()
        gc = gc + 2 * hyper.lambda_sp * c
    return float(e), np.concatenate([g_d0.ravel(), gc.ravel()])


def fit_trajectories(maps: np.ndarray, positions_A: np.ndarray, hyper: Hyper, window_px: int,
                     up: int = UPSAMPLE, max_iter: int = 200, init: np.ndarray | None = None) -> np.ndarray:
    """Trajectories ``(N, F, 2)`` px minimising the energy for correlation maps ``(N, F, S, S)`` (:func:`cc_maps`).

    Starts from ``init`` ``(N, F, 2)`` px (e.g. the previous step of a search) or from no motion.
    ``positions_A``: ``(N, 2)`` particle positions in Å (for the spatial prior).
    """
    n, f = maps.shape[:2]
    if f < 2:
        return np.zeros((n, f, 2))
    maps_fn = np.ascontiguousarray(maps.transpose(1, 0, 2, 3))
    basis = spatial_basis(positions_A, hyper.z_A)
    x0 = np.zeros(2 * n + 2 * n * (f - 1))
    if init is not None:
        v = np.diff(init, axis=1).transpose(1, 0, 2)  # (F-1, N, 2)
        c = np.linalg.solve(basis, v.transpose(1, 0, 2).reshape(n, -1)).reshape(n, f - 1, 2).transpose(1, 0, 2)
        x0 = np.concatenate([init[:, 0].ravel(), c.ravel()])
    res = minimize(trajectory_energy, x0, args=(maps_fn, basis, hyper, window_px, up), jac=True,
                   method="L-BFGS-B", options={"maxiter": max_iter, "gtol": 1e-5})
    _, _, d = _unpack(res.x, basis, n, f)
    return d.transpose(1, 0, 2)


def global_track(maps: np.ndarray, window_px: int, up: int = UPSAMPLE) -> np.ndarray:
    """Rigid (micrograph-wide) displacement ``(F, 2)`` px: the peak of the particle-summed correlation per frame,
    refined by a fit with a weak acceleration prior. ``maps``: ``(N, F, S, S)`` (wide window)."""
    total = maps.sum(axis=0)[None]  # (1, F, S, S)
    f = total.shape[1]
    peaks = np.array([np.unravel_index(np.argmax(m), m.shape) for m in total[0]], float)
    start = (peaks[:, ::-1] - window_px * up) / up  # (F, 2) x, y
    curv = max(float(np.median(np.abs(total))), 1e-12)
    hyper = Hyper(r=1e-3 * curv, theta=np.pi / 2, z_A=0.0)
    maps_fn = np.ascontiguousarray(total.transpose(1, 0, 2, 3))
    basis = np.eye(1)
    v0 = np.diff(start, axis=0)[:, None, :]
    x0 = np.concatenate([start[0], v0.ravel()])
    res = minimize(trajectory_energy, x0, args=(maps_fn, basis, hyper, window_px, up), jac=True,
                   method="L-BFGS-B", options={"maxiter": 200})
    _, _, d = _unpack(res.x, basis, 1, f)
    return d[:, 0, :]


def activity(traj: np.ndarray) -> float:
    """75th percentile over particles of the path length (px) of trajectories ``(N, F, 2)`` (relative to the rigid
    track when the rigid track was removed before the fit)."""
    length = np.sqrt((np.diff(traj, axis=1) ** 2).sum(-1)).sum(axis=1)
    return float(np.percentile(length, 75)) if len(length) else 0.0
