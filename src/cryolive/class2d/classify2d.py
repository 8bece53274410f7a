"""Reference-free 2D classification by maximum likelihood (RELION's Class2D; docs/maths.md,
"The score").

Model: ``X_i = CTF_i · shift(rot(A_k, psi), -o) + N_i`` with Gaussian noise of power ``sigma^2(shell)``. Every
iteration is one EM step over the K classes, in-plane rotations ``psi`` and origins ``o``:

* **E step** (per particle, batched; no Python loop over particles). The log-likelihood of a hypothesis is the
  whitened score ``Re sum_q w_q conj(CTF A_k,psi) X e^{-2 pi i q.o/n} - 1/2 sum_q w_q CTF^2 |A_k,psi|^2`` with
  ``w = 1/sigma^2``, plus ``log pi_k``. The first term for *every* origin on a 1-pixel grid inside a disc of
  ``max_shift_px`` is one separable partial DFT of ``conj(M) Y`` (two matrix products), so all origins cost
  about as much as a few FFTs. Coarse-to-fine: every class at every coarse angle (``psi_step_deg``) first; the
  best ``fine_candidates`` (class, angle) pairs of each particle are then rescored at ``psi_oversampling`` finer
  angles (RELION's adaptive oversampling). Posteriors ``Gamma_i(k, psi, o)`` over the fine hypotheses are a
  log-sum-exp normalised softmax; weights below ``min_weight`` of a particle's best are dropped.
* **M step**: per class the CTF-weighted Wiener average ``A_k = S D / (D^2 + V / tau^2)`` with
  ``S = sum Gamma CTF X / sigma^2``, ``D = sum Gamma CTF^2 / sigma^2`` and ``V`` the noise variance of ``S``
  (``V = D`` for hard assignments, giving RELION's ``S / (D + 1/tau^2)``). The sums are inserted (rotated back
  by ``psi``, bilinear) into a 2x-padded Fourier grid per class, as RELION's 2D back-projector does.
  ``tau^2 = tau2_fudge x`` the class's signal power per shell, estimated from the same sums
  (``(sum |S|^2 - sum V) / sum D^2``). The class's spectral SNR ``P D^2 / V`` gives its resolution (the last
  shell where it is >= 1, RELION's ``rlnEstimatedResolution``). Averages are masked (soft disc of
  ``diameter_A``) and re-centred on their centre of mass. The noise ``sigma^2(shell)`` is re-estimated from the
  residuals of every particle at its best hypothesis; ``pi_k`` is the mean posterior.
* **Schedule**: iteration 0 averages random subsets (each particle in one random class, unrotated, as RELION
  starts); the first ``minibatch_iters`` iterations use random minibatches (cryoSPARC); the E step uses the
  Fourier shells up to the best class resolution plus a margin (RELION's ``current_size``), starting at
  ``init_resolution_A``. A class with fewer than ``min_class_fraction`` of the mean class size is re-seeded from a
  random half of the largest class, so junk cannot leave dead classes.

Conventions: images ``[y, x]``, centre pixel ``n // 2``; ``psi`` in degrees in the results, radians inside; the
model of a hypothesis samples the class at ``R(psi)^T x`` with ``R(psi) = [[cos, sin], [-sin, cos]]`` (the
in-plane part of RELION's ``A = Rz(psi)``); origins in pixels inside, Å in the results, RELION's convention
(the particle centre sits at ``-origin`` from the box centre: ``rlnOriginXAngst/YAngst``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryolive.alignment.noise import add_to_shells, shell_power, sigma_at
from cryolive.alignment.pixels import soft_window
from cryolive.backend import scatter_add, scatter_add_all, to_numpy, xp
from cryolive.batching import AdaptiveBatch
from cryolive.image.ctf import ctf_values
from cryolive.image.fourier import rfft2c, shift_images
from cryolive.io import ParticleStack
from cryolive.params import param

PAD = 2  # padding factor of the class Fourier grids


@dataclass(frozen=True)
class Class2DParams:
    """Parameters of 2D classification. Lengths in Å unless named ``_px`` (pixels of the particle box)."""

    k: int = param(50, ge=1, flag="--k", label="Classes", help="number of classes")
    """Number of classes."""
    max_iter: int = param(25, ge=1, flag="--max-iter", label="Iterations", help="EM iterations")
    """EM iterations after the random initial averages (iteration 0)."""
    diameter_A: float | None = param(None, gt=0, unit="Å", flag="--diameter", label="Mask diameter",
                                     help="mask diameter (default: 0.9 of the box)")
    """Diameter (Å) of the soft circular mask on images and averages; None: 0.9 of the box."""
    psi_step_deg: float = param(10.0, gt=0, le=90, unit="deg", flag="--psi-step", label="In-plane step",
                                help="coarse in-plane angular step")
    """Coarse in-plane angular step (degrees); the fine level divides it by ``psi_oversampling``."""
    psi_oversampling: int = param(2, ge=1, le=8, label="Fine angles per coarse")
    """Fine angles per coarse angle at the fine level (RELION's oversampling 1 = 2 angles)."""
    fine_candidates: int = param(6, ge=1, label="Fine candidates")
    """(class, coarse angle) pairs of each particle rescored at the fine level."""
    max_shift_px: float | None = param(None, ge=0, unit="px", flag="--max-shift", label="Maximum shift",
                                       help="origin search radius (default: 10 % of the box)")
    """Origins searched: a disc of this radius (pixels) around the box centre; None: 10 % of the box."""
    shift_step_px: float = param(1.0, gt=0, unit="px", label="Shift step")
    """Step of the origin grid (pixels)."""
    init_resolution_A: float = param(25.0, gt=0, unit="Å", label="Initial resolution")
    """Resolution (Å) of the Fourier shells used by the first iterations; it then follows the best class."""
    max_resolution_A: float | None = param(None, gt=0, unit="Å", label="Align no finer than")
    """Never use shells beyond this resolution (Å); None: up to Nyquist."""
    tau2_fudge: float = param(2.0, gt=0, label="Regularisation T")
    """Regularisation: the signal power ``tau^2`` is multiplied by this (RELION's ``--tau2_fudge``; 2 for 2D)."""
    minibatch_iters: int = param(3, ge=0, label="Minibatch iterations")
    """The first iterations use random minibatches of ``minibatch_size`` particles (cryoSPARC style)."""
    minibatch_size: int | None = param(None, ge=1, label="Minibatch size")
    """Particles per minibatch iteration; None: ``max(1000, 100 k)`` (all particles when there are fewer)."""
    ctf_mode: str = param("wiener", choices=("wiener",), label="CTF")
    """How averages use the CTF: ``"wiener"`` (CTF-weighted Wiener average; the only mode)."""
    center_classes: bool = True
    """Re-centre every average on its centre of mass each iteration."""
    min_class_fraction: float = param(0.1, ge=0, le=1, label="Re-seed below")
    """A class with fewer particles than this fraction of the mean class size is re-seeded (0: never)."""
    min_weight: float = 1e-4
    """Posterior weights below this fraction of a particle's best are dropped from the M step."""
    seed: int = 0
    """Random seed (initial classes, minibatches, re-seeding)."""
    batch_size: int = param(256, ge=1, flag="--batch-size", label="Batch size")
    """Particles read and scored at once."""


@dataclass(frozen=True)
class Class2DIteration:
    """One iteration: averages ``(K, n, n)`` float32 NumPy, sizes ``(K,)`` particle counts (most probable class),
    resolutions ``(K,)`` Å (spectral SNR of the average >= 1; ``inf`` for an empty class)."""

    iteration: int
    averages: np.ndarray
    sizes: np.ndarray
    resolution_A: np.ndarray
    changed_fraction: float  # of the particles of this iteration, whose most probable class changed
    mean_max_prob: float  # mean over particles of the largest posterior weight (1 = certain)
    seconds: float  # wall time of this iteration
    n_particles: int = 0  # particles used (a minibatch or all)
    stage: str = "full"  # "minibatch" or "full"
    limit_A: float = 0.0  # resolution of the outermost Fourier shell used in the E step
    reseeded: tuple[int, ...] = ()  # classes (0-based) re-seeded from the largest class this iteration
    job_dir: str | None = None  # set by the job wrapper


@dataclass(frozen=True)
class Class2DResult:
    """The final classes and every particle's best hypothesis (NumPy)."""

    averages: np.ndarray  # (K, n, n) float32
    sizes: np.ndarray  # (K,) int
    resolution_A: np.ndarray  # (K,)
    assignments: np.ndarray  # (N,) int, 0-based class
    psi_deg: np.ndarray  # (N,) RELION rlnAnglePsi, degrees in (-180, 180]
    shifts_A: np.ndarray  # (N, 2) RELION origins (rlnOriginXAngst, rlnOriginYAngst), Å
    max_prob: np.ndarray  # (N,) rlnMaxValueProbDistribution
    iterations: int


# ----------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Rect:
    """The ``rfft2`` pixels with ``|q| <= r`` as a rectangle ``qy = -r..r`` x ``qx = 0..r`` (backend arrays).

    ``inside`` masks the disc; ``mult`` is the Friedel multiplicity (2 for ``qx > 0``), zero outside the disc.
    """

    n: int
    r: int
    rows: Any  # (Fy,) row indices into an rfft2c array
    qx: Any  # (Fy, Fx) float32 cycles per box
    qy: Any
    ring: Any  # (Fy, Fx) int shell index
    inside: Any  # (Fy, Fx) bool
    mult: Any  # (Fy, Fx) float32

    @classmethod
    def make(cls, n: int, r: int) -> _Rect:
        m = xp()
        r = int(min(r, n // 2 - 1))
        qy1 = np.arange(-r, r + 1)
        qx1 = np.arange(0, r + 1)
        qy, qx = np.meshgrid(qy1, qx1, indexing="ij")
        rad = np.sqrt(qx**2 + qy**2)
        inside = rad <= r + 1e-6
        mult = np.where(qx > 0, 2.0, 1.0) * inside
        return cls(n, r, m.asarray(qy1 % n), m.asarray(qx, dtype=m.float32), m.asarray(qy, dtype=m.float32),
                   m.asarray(np.rint(rad).astype(np.int32)), m.asarray(inside), m.asarray(mult, dtype=m.float32))

    @property
    def shape(self) -> tuple[int, int]:
        return (2 * self.r + 1, self.r + 1)

    def take(self, f: Any) -> Any:
        """The rectangle ``(B, Fy, Fx)`` of rfft2c transforms ``(B, n, n // 2 + 1)``."""
        return f[:, self.rows][:, :, : self.r + 1]


def _rotation_2d(psi: np.ndarray) -> np.ndarray:
    """``R(psi) = [[cos, sin], [-sin, cos]]`` ``(A, 2, 2)`` for angles in radians (RELION's ``Rz(psi)`` in-plane)."""
    c, s = np.cos(psi), np.sin(psi)
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)


def _grid_points(rect: _Rect, psi: np.ndarray) -> Any:
    """Padded-grid coordinates ``(A, Fy, Fx, 2)`` (x, y) of ``PAD R(psi)^T q`` for every rectangle pixel ``q``."""
    m = xp()
    rot = m.asarray(_rotation_2d(psi), dtype=m.float32)  # (A, 2, 2)
    qx, qy = rect.qx[None], rect.qy[None]
    # R^T q: x' = R00 qx + R10 qy, y' = R01 qx + R11 qy
    px = rot[:, 0, 0, None, None] * qx + rot[:, 1, 0, None, None] * qy
    py = rot[:, 0, 1, None, None] * qx + rot[:, 1, 1, None, None] * qy
    return m.stack([px, py], axis=-1) * PAD


def _bilinear(points: Any, big: int) -> tuple[list[Any], list[Any]]:
    """Flat indices into a centred ``(big, big)`` grid and bilinear weights of the 4 neighbours of ``points``
    ``(..., 2)`` (x, y) in grid units around the centre ``big // 2``."""
    m = xp()
    p = points + m.float32(big // 2)
    i0 = m.clip(m.floor(p), 0, big - 2)
    f = m.clip(p - i0, 0.0, 1.0)
    i0 = i0.astype(m.int64)
    base = i0[..., 1] * big + i0[..., 0]
    fx, fy = f[..., 0], f[..., 1]
    return ([base, base + 1, base + big, base + big + 1],
            [(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])


def _gridding_correction_2d(n: int) -> Any:
    """``sinc^2(x / N) sinc^2(y / N)`` on the central ``(n, n)`` of a ``N = PAD n`` grid (bilinear interpolation's
    real-space attenuation, divided out before references are sampled)."""
    m = xp()
    c = (m.arange(n, dtype=m.float32) - n // 2) / (PAD * n)
    s2 = m.sinc(c) ** 2
    return s2[:, None] * s2[None, :]


def _fft2c_padded(imgs: Any) -> Any:
    """Centred full FFTs ``(K, N, N)`` (zero frequency at ``N // 2``) of images ``(K, n, n)`` zero-padded to
    ``N = PAD n`` (same DFT sums as the box-``n`` transforms at the common frequencies)."""
    m = xp()
    k, n = imgs.shape[0], imgs.shape[-1]
    big = PAD * n
    out = m.zeros((k, big, big), dtype=m.float32)
    o = big // 2 - n // 2
    out[:, o:o + n, o:o + n] = imgs
    f = m.fft.fftshift(m.fft.fft2(m.fft.ifftshift(out, axes=(-2, -1))), axes=(-2, -1))
    return f.astype(m.complex64)


def _ifft2c_cropped(f: Any, n: int) -> Any:
    """Inverse of :func:`_fft2c_padded`: real images ``(K, n, n)``."""
    m = xp()
    big = f.shape[-1]
    img = m.fft.fftshift(m.fft.ifft2(m.fft.ifftshift(f, axes=(-2, -1))), axes=(-2, -1)).real
    o = big // 2 - n // 2
    return img[:, o:o + n, o:o + n].astype(m.float32)


def _shift_kernels(rect: _Rect, shifts: np.ndarray) -> tuple[Any, Any]:
    """``Ex (Fx, T) = exp(-2 pi i qx t / n)`` and ``Ey (T, Fy) = exp(-2 pi i qy t / n)`` for origins ``t`` (px)."""
    m = xp()
    t = m.asarray(shifts, dtype=m.float32)
    qx1 = m.arange(rect.r + 1, dtype=m.float32)
    qy1 = m.arange(-rect.r, rect.r + 1, dtype=m.float32)
    ex = m.exp(-2j * m.pi * qx1[:, None] * t[None, :] / rect.n).astype(m.complex64)
    ey = m.exp(-2j * m.pi * t[:, None] * qy1[None, :] / rect.n).astype(m.complex64)
    return ex, ey


def correlate_origins(y: Any, refs: Any, ex: Any, ey: Any) -> Any:
    """``c[b, j, ty, tx] = Re sum_q conj(refs[b|0, j, q]) y[b, q] exp(-2 pi i q.(tx, ty) / n)``.

    ``y`` ``(B, Fy, Fx)`` (whitened, multiplicity-weighted image terms), ``refs`` ``(1 or B, J, Fy, Fx)``; the
    origin grid is given by :func:`_shift_kernels`. Returns ``(B, J, T, T)`` float32: the cross term of the score
    for every origin, as two large matrix products (a separable partial DFT).
    """
    m = xp()
    b, j = y.shape[0], refs.shape[1]
    fy, fx = y.shape[1], y.shape[2]
    t = ex.shape[1]
    p = m.conj(refs) * y[:, None]  # (B, J, Fy, Fx)
    p1 = (p.reshape(-1, fx) @ ex).reshape(b * j, fy, t)  # sum over qx
    p1 = m.ascontiguousarray(p1.transpose(1, 0, 2)).reshape(fy, -1)  # (Fy, B J Tx)
    c = ey.real @ p1.real - ey.imag @ p1.imag  # (Ty, B J Tx), real part of the sum over qy
    return m.ascontiguousarray(c.reshape(t, b, j, t).transpose(1, 2, 0, 3))


def _origin_weights_to_fourier(w: Any, ex: Any, ey: Any) -> Any:
    """Adjoint of :func:`correlate_origins` over origins: ``G[q] = sum_t w[t] exp(-2 pi i q.t / n)``,
    ``(M, T, T) -> (M, Fy, Fx)`` complex64 (the transform that moves a particle's data back to the class frame,
    weighted over origins)."""
    m = xp()
    mm, t = w.shape[0], w.shape[1]
    fy, fx = ey.shape[1], ex.shape[0]
    g1 = w.reshape(-1, t).astype(m.complex64) @ ex.T  # (M Ty, Fx)
    g1 = m.ascontiguousarray(g1.reshape(mm, t, fx).transpose(1, 0, 2)).reshape(t, -1)  # (Ty, M Fx)
    g = ey.T @ g1  # (Fy, M Fx)
    return m.ascontiguousarray(g.reshape(fy, mm, fx).transpose(1, 0, 2))


def _logsumexp_normalise(ll: Any) -> tuple[Any, Any]:
    """Rows of ``ll`` ``(B, H)`` -> posteriors (rows sum to 1) and the per-row maximum."""
    m = xp()
    top = ll.max(axis=1, keepdims=True)
    e = m.exp(ll - top)
    return e / e.sum(axis=1, keepdims=True), top[:, 0]


def _soft_mask(n: int, radius_px: float, edge_px: float = 4.0) -> Any:
    """Soft disc ``(n, n)``: 1 inside ``radius_px``, raised cosine to 0 over ``edge_px`` (re-uses
    :func:`~cryolive.alignment.pixels.soft_window`)."""
    half = n / 2
    return soft_window(n, radius_px / half, (radius_px + edge_px) / half)


@dataclass
class _Sums:
    """M-step sums per reference (class x fine angle) over the rectangle pixels: ``S`` complex, ``D`` and ``V``
    real, ``(R, Fy, Fx)``; ``weight (R,)`` the summed posteriors."""

    s: Any
    d: Any
    v: Any

    @classmethod
    def zeros(cls, n_refs: int, shape: tuple[int, int]) -> _Sums:
        m = xp()
        return cls(m.zeros((n_refs,) + shape, m.complex64), m.zeros((n_refs,) + shape, m.float32),
                   m.zeros((n_refs,) + shape, m.float32))


class _Classifier:
    """State and steps of one 2D classification run (used by :func:`classify2d`)."""

    def __init__(self, stack: ParticleStack, p: Class2DParams) -> None:
        if p.k < 1:
            raise ValueError("k (the number of classes) must be at least 1")
        if p.max_iter < 1:
            raise ValueError("max_iter must be at least 1")
        if p.ctf_mode != "wiener":
            raise ValueError(f"ctf_mode must be 'wiener', got {p.ctf_mode!r}")
        if p.psi_step_deg <= 0 or p.psi_oversampling < 1 or p.shift_step_px <= 0:
            raise ValueError("psi_step_deg and shift_step_px must be positive and psi_oversampling at least 1")
        m = xp()
        self.m, self.stack, self.p = m, stack, p
        self.n = n = stack.box
        self.apix = stack.pixel_size
        self.rng = np.random.default_rng(p.seed)
        self.batches = AdaptiveBatch(p.batch_size, label="2D classification")  # particle batches that fit the device
        diameter = p.diameter_A if p.diameter_A else 0.9 * n * self.apix
        self.mask = _soft_mask(n, 0.5 * diameter / self.apix)
        self.grid_corr = _gridding_correction_2d(n)
        # in-plane angles (radians): coarse, and the fine ones (O per coarse angle, RELION's oversampling)
        n_psi = max(1, int(round(360.0 / p.psi_step_deg)))
        step = 2 * np.pi / n_psi
        self.psi_coarse = np.arange(n_psi) * step
        o = p.psi_oversampling
        self.psi_fine = (self.psi_coarse[:, None] + (np.arange(o) - (o - 1) / 2) * step / o).ravel()
        # origins: a square grid, scored inside a disc
        smax = p.max_shift_px if p.max_shift_px is not None else max(1.0, round(0.1 * n))
        half = int(np.floor(smax / p.shift_step_px + 1e-6))
        self.shifts = np.arange(-half, half + 1) * p.shift_step_px
        ty, tx = np.meshgrid(self.shifts, self.shifts, indexing="ij")
        self.origin_ok = m.asarray(tx**2 + ty**2 <= smax**2 + 1e-6)
        # resolution schedule (Fourier shells of the box)
        self.r_max = n // 2 - 1
        if p.max_resolution_A:
            self.r_max = int(min(self.r_max, np.floor(n * self.apix / p.max_resolution_A)))
        self.r_max = max(self.r_max, 2)
        self.r = int(np.clip(np.ceil(n * self.apix / p.init_resolution_A), 2, self.r_max))
        self.sigma2 = self._initial_sigma2()
        n_tot = len(stack)
        self.assigned = np.full(n_tot, -1)
        self.best_ref = np.zeros(n_tot, np.int64)  # fine reference index k * A + a
        self.best_shift = np.zeros((n_tot, 2))  # origins (px)
        self.max_prob = np.zeros(n_tot)
        self.log_prior = np.full(p.k, -np.log(p.k))
        self.res = np.full(p.k, np.inf)
        self.averages = m.zeros((p.k, n, n), dtype=m.float32)

    # ------------------------------------------------------------------------------------------- data
    def _images(self, idx: np.ndarray) -> Any:
        """Masked images' rfft2c transforms ``(B, n, n // 2 + 1)``."""
        m = self.m
        return rfft2c(m.asarray(self.stack.images(idx), dtype=m.float32) * self.mask)

    def _ctf(self, idx: np.ndarray, rect: _Rect) -> Any:
        m = self.m
        s = m.sqrt(rect.qx**2 + rect.qy**2) / (self.n * self.apix)
        return ctf_values(self.stack.ctf.subset(idx), s, m.arctan2(rect.qy, rect.qx))

    def _weights(self, rect: _Rect) -> Any:
        """``1 / sigma^2`` at the rectangle pixels (0 outside the disc), ``(Fy, Fx)``."""
        m = self.m
        return m.where(rect.inside, 1.0 / sigma_at(self.sigma2, rect.ring), 0.0).astype(m.float32)

    def _initial_sigma2(self) -> np.ndarray:
        """Noise power per shell from the images (their power minus that of their mean), as RELION starts."""
        n_tot = len(self.stack)
        idx = np.sort(self.rng.choice(n_tot, size=min(n_tot, 1000), replace=False))
        f = self._images(idx)
        return np.maximum(shell_power(f - f.mean(axis=0, keepdims=True), self.n), 1e-12)

    # ------------------------------------------------------------------------------------- references
    def _reference_ft(self) -> Any:
        """The averages' padded centred transforms ``(K, N, N)``, pre-divided by the gridding correction."""
        return _fft2c_padded(self.averages / self.grid_corr)

    def _references(self, ft: Any, rect: _Rect, psi: np.ndarray) -> Any:
        """Class references at angles ``psi``: ``(K * A, Fy, Fx)`` complex64, index ``k * A + a``, sampled
        bilinearly at ``PAD R(psi)^T q`` (zero outside the disc)."""
        m = self.m
        big = ft.shape[-1]
        idx, wts = _bilinear(_grid_points(rect, psi), big)  # (A, Fy, Fx)
        flat = ft.reshape(ft.shape[0], -1)
        out = wts[0][None] * flat[:, idx[0]]
        for i, w in zip(idx[1:], wts[1:], strict=True):
            out += w[None] * flat[:, i]
        out = out * rect.inside
        return out.reshape((-1,) + rect.shape).astype(m.complex64)

    # ------------------------------------------------------------------------------------------ E step
    def _batch_bytes(self, rect: _Rect, hypotheses: int) -> float:
        """Rough device bytes per particle of a batch scoring ``hypotheses`` fine references at every origin
        (references, products and partial DFTs over the rectangle, scores per origin), plus its image; sizes the
        first batch from the free device memory (:class:`~cryolive.batching.AdaptiveBatch`)."""
        fy, fx = rect.shape
        return hypotheses * (24.0 * fy * fx + 20.0 * len(self.shifts) ** 2) + 16.0 * self.n**2

    def _chunk(self, n_refs: int, rect: _Rect) -> int:
        fy, fx = rect.shape
        return max(1, int(1.2e7 // (n_refs * fy * max(fx, len(self.shifts)))))

    def e_step(self, idx: np.ndarray, rect: _Rect, coarse: Any, fine: Any, ex: Any, ey: Any,
               sums: _Sums, res_acc: np.ndarray, res_cnt: np.ndarray) -> tuple[np.ndarray, Any]:
        """Score a batch of particles, update their best hypotheses, add their weighted data to ``sums`` and
        their residual power per shell to ``res_acc/res_cnt``. Returns (class posterior sums (K,), max prob).

        All or nothing, so that a batch that runs out of device memory can be retried smaller
        (:mod:`cryolive.batching`): everything is computed first; ``sums`` then change in one
        :func:`~cryolive.backend.scatter_add_all` and the host sums after it. The best hypotheses are overwritten
        (a retry writes them again)."""
        m, p = self.m, self.p
        k_cls, o = p.k, p.psi_oversampling
        n_c = len(self.psi_coarse)
        f = self._images(idx)
        x = rect.take(f)  # (B, Fy, Fx)
        ctf = self._ctf(idx, rect)
        w = self._weights(rect)
        y = x * (ctf * w * rect.mult)  # whitened, multiplicity-weighted image terms
        c2w = (ctf * ctf * w * rect.mult).reshape(len(idx), -1)
        logp = m.asarray(self.log_prior, dtype=m.float32)
        bad = ~self.origin_ok
        # coarse: every class at every coarse angle, best origin
        n2 = c2w @ (m.abs(coarse.reshape(coarse.shape[0], -1)) ** 2).T  # (B, K A_c)
        best = m.empty((len(idx), coarse.shape[0]), dtype=m.float32)
        step = self._chunk(coarse.shape[0], rect)
        for s0 in range(0, len(idx), step):
            c = correlate_origins(y[s0:s0 + step], coarse[None], ex, ey)
            c[:, :, bad] = -np.inf
            best[s0:s0 + step] = c.max(axis=(2, 3))
        score = best - 0.5 * n2 + m.repeat(logp, n_c)[None]
        n_cand = min(p.fine_candidates, coarse.shape[0])
        top = m.argsort(-score, axis=1)[:, :n_cand]  # (B, C) coarse indices k * A_c + a
        # fine: the candidates at the oversampled angles (fine index = coarse index * O + o)
        fidx = (top[:, :, None] * o + m.arange(o)[None, None]).reshape(len(idx), -1)  # (B, C O)
        refs = fine[fidx]  # (B, C O, Fy, Fx)
        n2f = m.einsum("bf,bjf->bj", c2w, (m.abs(refs) ** 2).reshape(refs.shape[0], refs.shape[1], -1))
        cls = fidx // (n_c * o)
        ll = correlate_origins(y, refs, ex, ey) - 0.5 * n2f[:, :, None, None] + logp[cls][:, :, None, None]
        ll[:, :, bad] = -np.inf
        t = len(self.shifts)
        post, _ = _logsumexp_normalise(ll.reshape(len(idx), -1))
        pmax = post.max(axis=1, keepdims=True)
        post = m.where(post >= p.min_weight * pmax, post, 0.0)
        post /= post.sum(axis=1, keepdims=True)
        post = post.reshape(len(idx), -1, t, t)
        # best hypothesis
        flat_best = m.argmax(post.reshape(len(idx), -1), axis=1)
        j, rem = flat_best // (t * t), flat_best % (t * t)
        rows = m.arange(len(idx))
        ref_best = fidx[rows, j]
        self.best_ref[idx] = to_numpy(ref_best)
        self.best_shift[idx] = np.stack([self.shifts[to_numpy(rem % t)], self.shifts[to_numpy(rem // t)]], 1)
        self.max_prob[idx] = to_numpy(post.reshape(len(idx), -1).max(axis=1))
        self.assigned[idx] = to_numpy(ref_best // (n_c * o))
        # M-step sums of the weighted hypotheses
        wsum = post.sum(axis=(2, 3))  # (B, C O)
        bsel, jsel = m.nonzero(wsum > 0)
        g = _origin_weights_to_fourier(post[bsel, jsel], ex, ey)  # (M, Fy, Fx)
        ctf_w = ctf * w
        contrib = g * (x * ctf_w)[bsel]
        var = (m.abs(g) ** 2) * (ctf * ctf_w)[bsel]
        dval = wsum[bsel, jsel][:, None, None] * (ctf * ctf_w)[bsel]
        # residuals at the best hypothesis (noise model)
        shift_px = m.asarray(self.best_shift[idx], dtype=m.float32)
        phase = m.exp(2j * m.pi * (rect.qx[None] * shift_px[:, 0, None, None]
                                  + rect.qy[None] * shift_px[:, 1, None, None]) / self.n)
        model = ctf * fine[ref_best] * phase
        res = (m.abs(x - model) ** 2 * rect.mult).reshape(len(idx), -1)
        acc, cnt = np.zeros_like(res_acc), np.zeros_like(res_cnt)  # added to the sums at the commit below
        add_to_shells(acc, cnt, res, rect.ring.ravel(), rect.mult.ravel())
        csum = m.zeros(k_cls, dtype=m.float64)
        scatter_add(csum, cls.ravel(), wsum.ravel().astype(m.float64))
        csum, pmax = to_numpy(csum), to_numpy(post.reshape(len(idx), -1).max(axis=1))
        self._scatter(sums, fidx[bsel, jsel], contrib, dval, var)  # the commit
        res_acc += acc
        res_cnt += cnt
        return csum, pmax

    @staticmethod
    def _scatter(sums: _Sums, ref: Any, s: Any, d: Any, v: Any) -> None:
        """Add per-hypothesis arrays ``(M, Fy, Fx)`` into ``sums`` at references ``ref (M,)`` (all or nothing)."""
        m = xp()
        f = s.shape[1] * s.shape[2]
        index = (ref[:, None] * f + m.arange(f)[None]).ravel()
        scatter_add_all([(sums.s.reshape(-1), index, s.reshape(-1)), (sums.d.reshape(-1), index, d.reshape(-1)),
                         (sums.v.reshape(-1), index, v.reshape(-1))])  # one step: all three or none

    # ------------------------------------------------------------------------------------------ M step
    def m_step(self, sums: _Sums, rect: _Rect, psi: np.ndarray, classes: list[int]) -> None:
        """Wiener averages of ``classes`` from ``sums`` (references ``k * A + a`` at angles ``psi (A,)``),
        inserted into padded class grids; sets ``averages`` and ``res`` of those classes."""
        m, n = self.m, self.n
        big = PAD * n
        n_a = len(psi)
        pts = _grid_points(rect, psi)  # (A, Fy, Fx, 2)
        keep = m.broadcast_to(rect.inside[None], pts.shape[:-1])
        for k in classes:
            sl = slice(k * n_a, (k + 1) * n_a)
            s_grid = m.zeros(big * big, m.complex64)
            d_grid = m.zeros(big * big, m.float32)
            v_grid = m.zeros(big * big, m.float32)
            for sign in (1.0, -1.0):  # the Friedel mates of the half-plane data
                idx, wts = _bilinear(sign * pts[keep], big)
                sv = sums.s[sl][keep]
                sv = sv if sign > 0 else m.conj(sv)
                for i, wt in zip(idx, wts, strict=True):
                    scatter_add(s_grid, i, wt * sv)
                    scatter_add(d_grid, i, wt * sums.d[sl][keep])
                    scatter_add(v_grid, i, wt * wt * sums.v[sl][keep])
            avg, res = self._wiener(s_grid.reshape(big, big), d_grid.reshape(big, big),
                                    v_grid.reshape(big, big), rect)
            self.averages[k] = avg
            self.res[k] = res

    def _wiener(self, s: Any, d: Any, v: Any, rect: _Rect) -> tuple[Any, float]:
        """One class's Wiener average ``(n, n)`` (masked, centred) from its padded grids, and its resolution (Å)."""
        m, p, n = self.m, self.p, self.n
        big = PAD * n
        c = m.arange(big, dtype=m.float32) - big // 2
        rad = m.sqrt(c[:, None] ** 2 + c[None, :] ** 2) / PAD  # in shells of the box
        ring = m.rint(rad).astype(m.int64)
        live = (rad <= rect.r) & (d > 0) & (v > 0)
        nsh = rect.r + 1
        rl = ring[live]

        def ring_sum(vals: Any) -> np.ndarray:
            return to_numpy(m.bincount(rl, weights=vals[live].astype(m.float64), minlength=nsh)[:nsh])

        s2, vs, d2 = ring_sum(m.abs(s) ** 2), ring_sum(v), ring_sum(d * d)
        dv = ring_sum(m.where(live, d * d / m.maximum(v, 1e-30), 0.0))
        cnt = to_numpy(m.bincount(rl, minlength=nsh)[:nsh]).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            power = np.where(d2 > 0, (s2 - vs) / d2, 0.0)  # signal power per shell
            ssnr = np.where(cnt > 0, np.maximum(power, 0.0) * dv / np.maximum(cnt, 1), 0.0)
        tau2 = p.tau2_fudge * np.maximum(power, 0.0)
        tau2_img = m.asarray(tau2, dtype=m.float32)[m.clip(ring, 0, nsh - 1)]
        ok = live & (tau2_img > 0)
        denom = m.where(ok, d * d + v / m.where(ok, tau2_img, 1.0), 1.0)
        f = m.where(ok, s * d / denom, 0.0).astype(m.complex64)
        avg = _ifft2c_cropped(f[None], n)[0] * self.mask
        if p.center_classes:
            avg = self._centre(avg)
        return avg, self._resolution(ssnr, rect)

    def _resolution(self, ssnr: np.ndarray, rect: _Rect) -> float:
        """Å of the last shell (from shell 1 out) where the spectral SNR is still >= 1; inf if none."""
        below = np.nonzero(ssnr[1:] < 1.0)[0]
        last = (below[0] if below.size else len(ssnr) - 1)  # shells 1..last are >= 1
        return float(self.n * self.apix / last) if last >= 1 else float("inf")

    def _centre(self, avg: Any) -> Any:
        """Shift an average so that the centre of mass of its positive density is the box centre."""
        m, n = self.m, self.n
        pos = m.clip(avg, 0.0, None) * self.mask
        total = float(pos.sum())
        if total <= 0:
            return avg
        c = m.arange(n, dtype=m.float32) - n // 2
        cx = float((pos * c[None, :]).sum()) / total
        cy = float((pos * c[:, None]).sum()) / total
        if cx * cx + cy * cy < 0.01:
            return avg
        return shift_images(avg[None], -cx, -cy)[0] * self.mask

    # ----------------------------------------------------------------------------------------- schedule
    def initialise(self) -> None:
        """Iteration 0: every particle of a random subset in one random class, unrotated and uncentred."""
        m, p = self.m, self.p
        n_tot = len(self.stack)
        n_sub = min(n_tot, max(p.k * 50, 1000))
        subset = np.sort(self.rng.choice(n_tot, size=n_sub, replace=False))
        cls = self.rng.integers(0, p.k, n_sub)
        cls[: min(p.k, n_sub)] = np.arange(min(p.k, n_sub))  # every class gets at least one particle
        self.rng.shuffle(cls)
        self.assigned[subset] = cls
        rect = _Rect.make(self.n, self.r)
        sums = _Sums.zeros(p.k, rect.shape)
        w = self._weights(rect)

        def add(s0: int, s1: int) -> None:  # all or nothing: the sums change last, in one step
            idx = subset[s0:s1]
            x = rect.take(self._images(idx))
            ctf = self._ctf(idx, rect)
            cw = ctf * w
            self._scatter(sums, m.asarray(cls[s0:s1]), x * cw, ctf * cw, ctf * cw)

        for _ in self.batches.run(n_sub, add, self._batch_bytes(rect, 1)):
            pass
        self.m_step(sums, rect, np.zeros(1), list(range(p.k)))

    def iteration(self, it: int, subset: np.ndarray) -> dict[str, Any]:
        """One EM iteration over the particles ``subset``: E step, noise model, M step, priors, re-seeding."""
        p = self.p
        rect = _Rect.make(self.n, self.r)
        ft = self._reference_ft()
        coarse = self._references(ft, rect, self.psi_coarse)
        fine = self._references(ft, rect, self.psi_fine)
        ex, ey = _shift_kernels(rect, self.shifts)
        sums = _Sums.zeros(fine.shape[0], rect.shape)
        nsh = len(self.sigma2)
        res_acc, res_cnt = np.zeros(nsh), np.zeros(nsh)
        old = self.assigned[subset].copy()
        csum = np.zeros(p.k)
        pmax = []
        hyp = min(p.fine_candidates, coarse.shape[0]) * p.psi_oversampling
        for _, _, (c, pm) in self.batches.run(len(subset), lambda a, b: self.e_step(
                subset[a:b], rect, coarse, fine, ex, ey, sums, res_acc, res_cnt), self._batch_bytes(rect, hyp)):
            csum += c
            pmax.append(pm)
        upd = res_cnt > 0
        self.sigma2 = np.where(upd, res_acc / np.maximum(res_cnt, 1e-12), self.sigma2)
        self.m_step(sums, rect, self.psi_fine, list(range(p.k)))
        counts = np.bincount(self.assigned[subset], minlength=p.k)
        fractions = np.maximum(csum / max(csum.sum(), 1e-12), 1e-3 / p.k)
        self.log_prior = np.log(fractions / fractions.sum())
        reseeded = []
        if p.min_class_fraction > 0 and it <= p.max_iter - 3:
            reseeded = self._reseed(subset, counts)
        self._update_limit(counts)
        return dict(counts=np.bincount(self.assigned[subset], minlength=p.k), changed=float(np.mean(
            old != self.assigned[subset])), mean_max_prob=float(np.concatenate(pmax).mean()),
            limit_A=self.n * self.apix / rect.r, reseeded=tuple(reseeded))

    def _reseed(self, subset: np.ndarray, counts: np.ndarray) -> list[int]:
        """Re-seed classes with fewer than ``min_class_fraction`` of the mean class size from a random half of
        the largest class (at those particles' best angles and origins). Returns the re-seeded classes."""
        p = self.p
        small = np.nonzero(counts < p.min_class_fraction * len(subset) / p.k)[0]
        done: list[int] = []
        for k in small:
            big = int(np.argmax(counts))
            members = subset[self.assigned[subset] == big]
            if len(members) < 2:
                break
            half = np.sort(self.rng.choice(members, size=len(members) // 2, replace=False))
            rect = _Rect.make(self.n, self.r)
            sums = _Sums.zeros(p.k * len(self.psi_fine), rect.shape)
            for _ in self.batches.run(len(half), functools.partial(self._seed_sums, half, int(k), sums, rect),
                                      self._batch_bytes(rect, 1)):
                pass
            self.m_step(sums, rect, self.psi_fine, [int(k)])
            self.log_prior[[k, big]] = self.log_prior[big] + np.log(0.5)
            self.assigned[half] = k
            counts[k], counts[big] = len(half), counts[big] - len(half)
            done.append(int(k))
        return done

    def _seed_sums(self, members: np.ndarray, k: int, sums: _Sums, rect: _Rect, s0: int, s1: int) -> None:
        """Add particles ``members[s0:s1]`` to class ``k``'s ``sums`` at their best angle and origin (all or
        nothing: the sums change last, in one step)."""
        m, n_a, t = self.m, len(self.psi_fine), len(self.shifts)
        ex, ey = _shift_kernels(rect, self.shifts)
        idx = members[s0:s1]
        x = rect.take(self._images(idx))
        ctf = self._ctf(idx, rect)
        cw = ctf * self._weights(rect)
        onehot = np.zeros((len(idx), t, t), np.float32)
        ix = np.rint((self.best_shift[idx] - self.shifts[0]) / self.p.shift_step_px).astype(int)
        onehot[np.arange(len(idx)), ix[:, 1], ix[:, 0]] = 1.0
        g = _origin_weights_to_fourier(m.asarray(onehot), ex, ey)
        ref = m.asarray(k * n_a + self.best_ref[idx] % n_a)
        self._scatter(sums, ref, g * x * cw, ctf * cw, ctf * cw)

    def _update_limit(self, counts: np.ndarray) -> None:
        """Next E step's outermost shell: the best class resolution (classes with particles) plus a margin."""
        live = (counts > 0) & np.isfinite(self.res)
        if not live.any():
            return
        best = float(np.min(self.res[live]))
        shell = self.n * self.apix / best
        r0 = int(np.ceil(self.n * self.apix / self.p.init_resolution_A))
        self.r = int(np.clip(max(r0, np.ceil(1.2 * shell) + 3), 2, self.r_max))


def _minibatch(p: Class2DParams) -> int:
    """Particles per minibatch iteration."""
    return int(p.minibatch_size or max(1000, 100 * p.k))


def classify2d(stack: ParticleStack, params: Class2DParams | None = None
               ) -> Generator[Class2DIteration, None, Class2DResult]:
    """2D classification of ``stack`` (images with CTFs; any poses are ignored), one :class:`Class2DIteration` per
    EM iteration; returns a :class:`Class2DResult`. See the module docstring for the model and schedule."""
    p = params or Class2DParams()
    if p.k > len(stack):
        raise ValueError(f"k ({p.k}) is larger than the number of particles ({len(stack)})")
    cl = _Classifier(stack, p)
    n_tot = len(stack)
    cl.initialise()
    mb = _minibatch(p)
    last: Class2DIteration | None = None
    for it in range(1, p.max_iter + 1):
        t0 = time.perf_counter()
        mini = it <= p.minibatch_iters and mb < n_tot and it < p.max_iter
        subset = np.sort(cl.rng.choice(n_tot, size=mb, replace=False)) if mini else np.arange(n_tot)
        out = cl.iteration(it, subset)
        last = Class2DIteration(
            iteration=it, averages=to_numpy(cl.averages).astype(np.float32),
            sizes=np.asarray(out["counts"], dtype=np.int64), resolution_A=cl.res.copy(),
            changed_fraction=out["changed"], mean_max_prob=out["mean_max_prob"],
            seconds=time.perf_counter() - t0, n_particles=len(subset), stage="minibatch" if mini else "full",
            limit_A=float(out["limit_A"]), reseeded=out["reseeded"])
        yield last
    assert last is not None
    n_a = len(cl.psi_fine)
    psi = np.degrees(cl.psi_fine[cl.best_ref % n_a])
    psi = (psi + 180.0) % 360.0 - 180.0
    psi = np.where(psi <= -180.0, psi + 360.0, psi)
    sizes = np.bincount(cl.assigned, minlength=p.k)
    return Class2DResult(averages=last.averages, sizes=sizes.astype(np.int64), resolution_A=cl.res.copy(),
                         assignments=cl.assigned.copy(), psi_deg=psi, shifts_A=cl.best_shift * cl.apix,
                         max_prob=cl.max_prob.copy(), iterations=last.iteration)
