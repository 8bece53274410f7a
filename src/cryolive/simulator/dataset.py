"""Write simulated data sets to disk (MRC stack + RELION STAR 3.1 + truth), and project maps at given poses.

Layout of ``simulate_dataset(out, ...)``::

    out/particles.mrcs        the noisy images (float32, or float16 with ``float16=True``)
    out/particles.star        RELION 3.1 STAR with the TRUE poses, origins (Å), CTFs and a random half split
    out/reference.mrc         state 0 low-passed to ``reference_lowpass_A`` (a starting reference)
    out/truth/truth_map.mrc   state 0 (the whole molecule); truth/state_<k>.mrc for every state k
    out/truth/truth.npz       rotations (N,3,3), shifts_A (N,2), states, scales, half_set, noise_sd
    out/params.json           the simulation parameters
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryolive.backend import to_numpy
from cryolive.image.ctf import ctf_2d
from cryolive.io import InputError, ParticleStack, StackWriter, write_map, write_star
from cryolive.io.preflight import check_memory, check_output_parent
from cryolive.params import check_params, param
from cryolive.projection import Projector
from cryolive.resolution.filters import lowpass
from cryolive.simulator.particles import draw_truth, noise_sd_for_snr, simulate_batches
from cryolive.simulator.phantom import make_phantom, render, state_phantom

Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class SimulationParams:
    """What to simulate. Lengths in Å unless named ``_px``; ``snr`` = var(signal)/var(noise) per image."""

    n: int = param(2000, ge=1, flag="--n", label="Particles", help="number of particles")
    box: int = param(64, ge=16, le=1024, unit="px", flag="--box", label="Box")
    pixel_size: float = param(2.0, gt=0, unit="Å", flag="--apix", label="Pixel size")
    snr: float = param(0.1, gt=0, flag="--snr", label="SNR", help="signal-to-noise ratio var(signal)/var(noise)")
    n_states: int = param(1, ge=1, le=64, flag="--states", label="States",
                          help="conformational states (1: homogeneous)")
    seed: int = 0
    symmetry: str = "C1"
    max_shift_px: float = param(4.0, ge=0, unit="px", flag="--max-shift", label="Maximum shift",
                                help="maximum origin shift")
    defocus_min_A: float = param(10000.0, ge=0, unit="Å", flag="--defocus-min", label="Minimum defocus")
    defocus_max_A: float = param(30000.0, ge=0, unit="Å", flag="--defocus-max", label="Maximum defocus")
    scale_sd: float = param(0.1, ge=0, flag="--scale-sd", label="Scale spread",
                            help="spread of per-particle scales")
    float16: bool = False
    n_domains: int = param(4, ge=1, flag="--domains", label="Domains", help="domains in the phantom")
    move_deg: float = 25.0
    sigma_A: float | None = None
    reference_lowpass_A: float = 20.0
    batch_size: int = param(512, ge=1, label="Batch size")


def phantom_volumes(p: SimulationParams) -> list[np.ndarray]:
    """The true maps of every state, ``[state 0, state 1, ...]``, float32 ``(box,)*3``."""
    ph = make_phantom(p.box, p.pixel_size, n_domains=p.n_domains, seed=p.seed, symmetry=p.symmetry)
    sigma = p.sigma_A if p.sigma_A is not None else max(1.6, 0.5 * p.pixel_size)
    return [render(state_phantom(ph, k, p.move_deg), p.box, p.pixel_size, sigma) for k in range(p.n_states)]


def check_simulation(out: Path, p: SimulationParams) -> None:
    """Refuse, before anything is written, what cannot work: parameters out of range, an output place that is a
    file, a folder that is not empty or not writable, and a box or particle count the memory or disk cannot
    hold."""
    check_params(p)
    if p.defocus_min_A > p.defocus_max_A:
        raise InputError(f"--defocus-min ({p.defocus_min_A:g} Å) is above --defocus-max ({p.defocus_max_A:g} Å)")
    check_output_parent(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new output folder")
    # the phantom's voxel coordinates and maps, the padded projector (complex64, twice the box) and a batch
    check_memory(160.0 * p.box**3 * p.n_states, f"a box of {p.box} px", "choose a smaller --box")
    parent = next(q for q in (out, *out.parents) if q.exists())
    need = p.n * p.box**2 * (2 if p.float16 else 4)
    free = shutil.disk_usage(parent).free
    if need > free:
        raise InputError(f"{p.n} particles of {p.box} px need {need / 2**30:.1f} GiB on disk, {parent} has "
                         f"{free / 2**30:.1f} GiB free; choose a smaller --n or --box")


def _check_out_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new output folder")
    out.mkdir(parents=True, exist_ok=True)


def _new_stack(stack_path: Path, p: SimulationParams, truth: Any, star_dir: Path) -> ParticleStack:
    n = len(truth.states)
    return ParticleStack(pixel_size=p.pixel_size, box=p.box, ctf=truth.ctf, stack_paths=[stack_path],
                         stack_file_id=np.zeros(n, int), stack_index=np.arange(n), rotations=truth.rotations,
                         shifts=truth.shifts_A, half_set=truth.half_set, source=star_dir / "particles.star")


def simulate_dataset(out: str | os.PathLike, p: SimulationParams, progress: Progress | None = None,
                     volumes: list[np.ndarray] | None = None) -> Path:
    """Simulate ``p.n`` particles into the new folder ``out`` (see the module docstring); returns ``out``.

    ``volumes``: the true maps of the states (``(box,)*3`` at ``p.pixel_size``), instead of the phantom's."""
    out = Path(out)
    if volumes is not None and any(np.shape(v) != (p.box,) * 3 for v in volumes):
        raise ValueError(f"volumes must be ({p.box},)*3 maps, got {[np.shape(v) for v in volumes]}")
    check_simulation(out, p)
    _check_out_dir(out)
    t0 = time.perf_counter()
    vols = phantom_volumes(p) if volumes is None else [np.asarray(v, dtype=np.float32) for v in volumes]
    truth0 = draw_truth(p.n, p.pixel_size, n_states=p.n_states, max_shift_px=p.max_shift_px,
                        defocus_range_A=(p.defocus_min_A, p.defocus_max_A), scale_sd=p.scale_sd, seed=p.seed)
    sd = noise_sd_for_snr([Projector(v) for v in vols], truth0, p.snr)
    truth = type(truth0)(**{**truth0.__dict__, "noise_sd": sd})
    (out / "truth").mkdir()
    write_map(out / "truth" / "truth_map.mrc", vols[0], p.pixel_size)
    for k, v in enumerate(vols):
        write_map(out / "truth" / f"state_{k}.mrc", v, p.pixel_size)
    ref = to_numpy(lowpass(vols[0], p.reference_lowpass_A, p.pixel_size)).astype(np.float32)
    write_map(out / "reference.mrc", ref, p.pixel_size)
    with StackWriter(out / "particles.mrcs", p.n, p.box, p.pixel_size, float16=p.float16) as w:
        for idx, imgs in simulate_batches(vols, truth, batch_size=p.batch_size, seed=p.seed):
            w[idx[0]:idx[-1] + 1] = imgs
            if progress:
                progress(int(idx[-1]) + 1, p.n, time.perf_counter() - t0)
    write_star(_new_stack(out / "particles.mrcs", p, truth, out), out / "particles.star", relative_to=out)
    np.savez(out / "truth" / "truth.npz", rotations=truth.rotations, shifts_A=truth.shifts_A, states=truth.states,
             scales=truth.scales, half_set=truth.half_set, noise_sd=truth.noise_sd,
             defocus_u=truth.ctf.defocus_u, defocus_v=truth.ctf.defocus_v)
    (out / "params.json").write_text(json.dumps({**asdict(p), "noise_sd": sd}, indent=2) + "\n")
    return out


def project_to_stack(volume: np.ndarray, pixel_size: float, stack: ParticleStack, out: str | os.PathLike,
                     apply_ctf: bool = True, batch_size: int = 256) -> Path:
    """Project ``volume`` at the poses, origins and CTFs of ``stack``; write ``out`` (.mrcs) and a STAR beside it.

    The STAR (``out`` with suffix ``.star``) is ``stack``'s metadata pointing at the new images. The map's pixel
    size must match the particles' (within 1 %) and its box the particles' box when that is known.
    """
    from cryolive.io import InputError

    out = Path(out)
    star = out.with_suffix(".star")
    if abs(pixel_size - stack.pixel_size) > 0.01 * stack.pixel_size:
        raise InputError(f"{stack.source}: pixel size {stack.pixel_size:.4f} Å differs from the map's "
                         f"{pixel_size:.4f} Å")
    box = volume.shape[0]
    if stack.box and stack.box != box:
        raise InputError(f"{stack.source}: particle box {stack.box} differs from the map's box {box}")
    if star.exists():
        raise FileExistsError(f"{star} exists: choose another --out")
    proj = Projector(volume)
    n = len(stack)
    shifts_px = np.zeros((n, 2)) if stack.shifts is None else stack.shifts / pixel_size
    with StackWriter(out, n, box, pixel_size) as w:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            ctf = ctf_2d(stack.ctf.subset(idx), box, pixel_size) if apply_ctf else None
            imgs = proj.project_real(stack.rotations[idx], shifts_px[idx], ctf)
            w[start:idx[-1] + 1] = to_numpy(imgs)
    new = stack._replace(box=box, stack_paths=[out], stack_names=[out.name], stack_file_id=np.zeros(n, int),
                         stack_index=np.arange(n), source=star)
    write_star(new, star)
    return star
