"""Protein-like phantoms: pseudo-atoms along compact chains grouped in domains, rendered to density maps.

Coordinates are (x, y, z) in **Å** relative to the box centre (voxel ``n // 2``); maps are ``[z, y, x]``.
A phantom may be symmetric (the asymmetric unit is copied by a point group) and heterogeneous: state 0 is the
whole molecule; state 1 lacks the *variable domain* (the last domain); state 2 has it moved (rotated about the
molecule centre by ``move_deg``); further states rotate it by other angles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryolive.backend import scatter_add, to_numpy, xp
from cryolive.image.fourier import fftnc, ifftnc


@dataclass(frozen=True)
class Phantom:
    """Pseudo-atoms of a phantom: ``xyz`` (M, 3) Å, ``amplitude`` (M,), ``domain`` (M,) int labels."""

    xyz: np.ndarray
    amplitude: np.ndarray
    domain: np.ndarray

    @property
    def n_domains(self) -> int:
        return int(self.domain.max()) + 1


def _chain(rng: np.random.Generator, n_atoms: int, center: np.ndarray, radius: float, step: float = 3.8) -> np.ndarray:
    """A random walk of ``n_atoms`` steps of ``step`` Å kept inside a sphere of ``radius`` Å around ``center``."""
    pts = np.empty((n_atoms, 3))
    p = center + rng.normal(0, radius / 4, 3)
    for i in range(n_atoms):
        for _ in range(50):
            d = rng.normal(size=3)
            q = p + step * d / np.linalg.norm(d)
            if np.linalg.norm(q - center) <= radius:
                break
        else:
            q = center + (p - center) * 0.9
        pts[i] = p = q
    return pts


def make_phantom(box: int, pixel_size: float, n_domains: int = 4, fill: float = 0.55, seed: int = 0,
                 symmetry: str = "C1") -> Phantom:
    """A phantom whose extent is about ``fill`` of the box, made of ``n_domains`` compact chain domains.

    With a ``symmetry`` other than C1 the domains form an asymmetric unit that is copied by every operator of
    the group (atoms are placed so copies do not coincide).
    """
    rng = np.random.default_rng(seed)
    extent = 0.5 * fill * box * pixel_size  # molecule radius in Å
    if symmetry.upper() == "C1":
        dom_r = extent / (1.0 + n_domains ** (1 / 3))
        centers = _domain_centers(rng, n_domains, extent - dom_r, min_sep=1.6 * dom_r)
        ops = [np.eye(3)]
    else:
        from cryolive.rotations.symmetry import symmetry_operators

        ops = list(symmetry_operators(symmetry))
        dom_r = extent / (2.0 + len(ops) ** (1 / 3))
        # asymmetric unit away from the symmetry axes: a point in general position
        base = np.array([0.55, 0.35, 0.25]) * (extent - dom_r)
        centers = [base + rng.normal(0, dom_r / 3, 3) for _ in range(n_domains)]
        centers = [base + (c - base) * 0.8 for c in centers]
    atoms_per_domain = max(20, int((4 / 3 * np.pi * dom_r**3) / 60.0))
    xyz, dom = [], []
    for d, c in enumerate(centers):
        pts = _chain(rng, atoms_per_domain, np.asarray(c), dom_r)
        for op in ops:
            xyz.append(pts @ np.asarray(op).T)
            dom.append(np.full(len(pts), d))
    xyz = np.concatenate(xyz)
    dom = np.concatenate(dom)
    amp = rng.uniform(0.8, 1.2, len(xyz))
    return Phantom(xyz=xyz, amplitude=amp, domain=dom)


def _domain_centers(rng: np.random.Generator, k: int, radius: float, min_sep: float) -> list[np.ndarray]:
    """``k`` points inside a sphere of ``radius`` Å, at least ``min_sep`` apart when possible."""
    centers: list[np.ndarray] = []
    for _ in range(5000):
        if len(centers) == k:
            break
        c = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(c) > radius:
            continue
        if all(np.linalg.norm(c - o) >= min_sep for o in centers):
            centers.append(c)
        else:
            min_sep *= 0.999
    return centers


def state_phantom(ph: Phantom, state: int, move_deg: float = 25.0) -> Phantom:
    """Conformational state ``state`` of a phantom: 0 whole, 1 without the last domain, >= 2 last domain moved.

    The move rotates the last domain by ``move_deg * (state - 1)`` degrees about the axis through the molecule
    centre perpendicular to the line to the domain (a hinge-like swing).
    """
    if state == 0:
        return ph
    last = ph.domain == ph.domain.max()
    if state == 1:
        keep = ~last
        return Phantom(ph.xyz[keep], ph.amplitude[keep], ph.domain[keep])
    c = ph.xyz[last].mean(axis=0)
    axis = np.cross(c, [0.0, 0.0, 1.0])
    if np.linalg.norm(axis) < 1e-6:
        axis = np.array([1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    ang = np.deg2rad(move_deg * (state - 1))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k
    xyz = ph.xyz.copy()
    xyz[last] = xyz[last] @ r.T
    return Phantom(xyz, ph.amplitude, ph.domain)


def render(ph: Phantom, box: int, pixel_size: float, sigma_A: float = 1.6) -> np.ndarray:
    """Density map ``(box,)*3`` float32 (NumPy) of Gaussian pseudo-atoms of width ``sigma_A`` Å.

    Atoms are splatted with trilinear weights and blurred in Fourier space by ``exp(-2 pi^2 sigma^2 s^2)``
    (the splat's own sinc^2 blur is undone), so the map is band-limited and smooth.
    """
    m = xp()
    pos = m.asarray(ph.xyz / pixel_size + box // 2, dtype=m.float32)  # voxel coords (x, y, z)
    f = m.floor(pos)
    fr = pos - f
    i0 = f.astype(m.int64)
    grid = m.zeros(box**3, dtype=m.float32)
    amp = m.asarray(ph.amplitude, dtype=m.float32)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = ((fr[:, 0] if dx else 1 - fr[:, 0]) * (fr[:, 1] if dy else 1 - fr[:, 1])
                     * (fr[:, 2] if dz else 1 - fr[:, 2]))
                x, y, z = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                ok = (x >= 0) & (x < box) & (y >= 0) & (y < box) & (z >= 0) & (z < box)
                scatter_add(grid, ((z * box + y) * box + x)[ok], (amp * w)[ok])
    k = (m.arange(box, dtype=m.float32) - box // 2) / box
    kk = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    sinc2 = (m.sinc(k)[:, None, None] * m.sinc(k)[None, :, None] * m.sinc(k)[None, None, :]) ** 2
    filt = m.exp(-2 * np.pi**2 * (sigma_A / pixel_size) ** 2 * kk) / m.maximum(sinc2, 0.05)
    vol = ifftnc(fftnc(grid.reshape(box, box, box)) * filt).real
    return to_numpy(vol).astype(np.float32)


def elongated_pseudo_symmetric(box: int, pixel_size: float, seed: int = 0, symmetry: str = "D2",
                               stretch: float = 1.6, extra_fraction: float = 0.12) -> Phantom:
    """An elongated, *nearly* symmetric phantom: the hard case for a global pose search at low resolution.

    A ``symmetry`` phantom (n-fold axis along z) is stretched by ``stretch`` along z and narrowed by
    ``1 / sqrt(stretch)`` across (so its extent stays about the same), then one extra compact domain of about
    ``extra_fraction`` of the mass is added off the axes, which breaks the symmetry: at low resolution the
    particle looks symmetric and its mates (turns of 180° for D2) score almost alike.
    """
    base = make_phantom(box, pixel_size, n_domains=3, fill=0.5, seed=seed, symmetry=symmetry)
    xyz = base.xyz * np.array([1.0 / np.sqrt(stretch), 1.0 / np.sqrt(stretch), stretch])
    rng = np.random.default_rng(seed + 1000)
    extent = np.abs(xyz).max(axis=0)
    center = np.array([0.55 * extent[0], -0.2 * extent[1], 0.45 * extent[2]])
    n_extra = max(10, int(extra_fraction * len(xyz)))
    radius = max(4.0, (n_extra * 60.0 * 3 / (4 * np.pi)) ** (1 / 3))
    extra = _chain(rng, n_extra, center, radius)
    return Phantom(xyz=np.concatenate([xyz, extra]),
                   amplitude=np.concatenate([base.amplitude, rng.uniform(0.8, 1.2, n_extra)]),
                   domain=np.concatenate([base.domain, np.full(n_extra, base.domain.max() + 1)]))
