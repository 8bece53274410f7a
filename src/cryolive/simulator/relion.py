"""RELION as the yardstick: data made by ``relion_project`` and maps made by ``relion_reconstruct`` /
``relion_refine_mpi``, for benchmarks and tests that compare cryolive with RELION on the same files.

Debian packages RELION 3.1 (``apt-get install relion``; ``make test`` installs it). Nothing here is needed to run
cryolive; every function raises :class:`RelionMissing` when the programs are not on the ``PATH``.

Conventions: maps ``[z, y, x]`` float32, pixel sizes and origins in Å, defocus in Å, RELION Euler angles in
degrees (ZYZ, see :mod:`cryolive.rotations.euler`). ``relion_project`` multiplies the projections by RELION's CTF
(same sign as :mod:`cryolive.image.ctf`) and adds white Gaussian noise of the standard deviation given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryolive.io import write_map


class RelionMissing(RuntimeError):
    """The RELION programs are not installed (``apt-get install relion``)."""


def relion_available(program: str = "relion_reconstruct") -> bool:
    """Whether ``program`` (a RELION command) is on the ``PATH``."""
    return shutil.which(program) is not None


def _run(cmd: list[str], cwd: Path, log_name: str) -> None:
    """Run a RELION command in ``cwd``; its output goes to ``cwd/log_name``; RuntimeError with the log's tail."""
    if not relion_available(cmd[0] if cmd[0] != "mpirun" else "relion_refine_mpi"):
        raise RelionMissing(f"{cmd[0]} is not installed (apt-get install relion)")
    log = Path(cwd) / log_name
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                     "OMPI_MCA_btl": "self,vader"})
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}) in {cwd}:\n{tail}")


@dataclass(frozen=True)
class RelionDataset:
    """A particle set made by ``relion_project``: ``star`` (images named relative to ``folder``, where RELION
    runs), the true poses (degrees, Å), the true map and the noise standard deviation used."""

    folder: Path
    star: Path
    truth_map: Path
    angles_deg: np.ndarray  # (N, 3) rot, tilt, psi
    origins_A: np.ndarray  # (N, 2) x, y
    half_set: np.ndarray  # (N,) 1 / 2
    noise_sd: float
    pixel_size: float
    box: int


def uniform_angles(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3)`` RELION angles (rot, tilt, psi) in degrees drawn uniformly over SO(3)."""
    rot = rng.uniform(-180.0, 180.0, n)
    psi = rng.uniform(-180.0, 180.0, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    return np.stack([rot, tilt, psi], axis=1)


def _optics(pixel_size: float, box: int) -> pd.DataFrame:
    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                         "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                         "rlnImagePixelSize": [pixel_size], "rlnImageSize": [box], "rlnImageDimensionality": [2]})


def relion_simulate(folder: str | os.PathLike, volume: np.ndarray, pixel_size: float, n: int, snr: float,
                    seed: int = 0, defocus_A: tuple[float, float] = (10000.0, 30000.0),
                    max_origin_A: float = 6.0) -> RelionDataset:
    """Make ``n`` particles of ``volume`` with ``relion_project --ctf --add_noise`` in ``folder`` (created).

    Poses uniform over SO(3), origins uniform in ``±max_origin_A`` Å, defocus U uniform in ``defocus_A`` (V within
    ±500 Å of U, random astigmatism angle), 300 kV, Cs 2.7 mm, Q 0.1, alternating half sets. The noise s.d. is set
    so that the mean per-image variance of the clean CTF-modulated projections over the box divided by the noise
    variance is ``snr``. Writes ``truth.mrc``, ``poses.star``, ``particles.mrcs`` and ``particles.star``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    box = int(volume.shape[0])
    rng = np.random.default_rng(seed)
    ang = uniform_angles(n, rng)
    org = rng.uniform(-max_origin_A, max_origin_A, (n, 2))
    du = rng.uniform(*defocus_A, n)
    half = (np.arange(n) % 2) + 1
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@poses.mrcs" for i in range(n)],
                          "rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2],
                          "rlnOriginXAngst": org[:, 0], "rlnOriginYAngst": org[:, 1],
                          "rlnDefocusU": du, "rlnDefocusV": du + rng.uniform(-500.0, 500.0, n),
                          "rlnDefocusAngle": rng.uniform(0.0, 180.0, n), "rlnOpticsGroup": np.ones(n, int),
                          "rlnRandomSubset": half})
    write_map(folder / "truth.mrc", np.asarray(volume, np.float32), pixel_size, overwrite=True)
    starfile.write({"optics": _optics(pixel_size, box), "particles": parts}, folder / "poses.star",
                   overwrite=True)
    base = ["relion_project", "--i", "truth.mrc", "--ang", "poses.star", "--ctf", "--angpix", str(pixel_size)]
    _run(base + ["--o", "clean"], folder, "relion_project_clean.log")
    with mrcfile.mmap(folder / "clean.mrcs", mode="r") as m:
        signal_var = float(np.mean(np.var(np.asarray(m.data, np.float64), axis=(1, 2))))
    (folder / "clean.mrcs").unlink()
    (folder / "clean.star").unlink()
    sd = float(np.sqrt(signal_var / snr))
    _run(base + ["--o", "particles", "--add_noise", "--white_noise", f"{sd:.6g}"], folder,
         "relion_project.log")
    return RelionDataset(folder, folder / "particles.star", folder / "truth.mrc", ang, org, half, sd,
                         float(pixel_size), box)


def relion_reconstruct(star: str | os.PathLike, out: str | os.PathLike, cwd: str | os.PathLike | None = None,
                       symmetry: str = "C1", subset: int | None = None, ctf: bool = True) -> np.ndarray:
    """``relion_reconstruct --i STAR --o OUT [--ctf] --sym SYM [--subset 1|2]`` run in ``cwd`` (default: the STAR's
    folder; image names are resolved from there, as RELION does); returns the map ``[z, y, x]`` float32."""
    star = Path(star).resolve()
    out = Path(out).resolve()
    cwd = Path(cwd) if cwd is not None else star.parent
    cmd = ["relion_reconstruct", "--i", str(star), "--o", str(out), "--sym", symmetry]
    if ctf:
        cmd.append("--ctf")
    if subset is not None:
        cmd += ["--subset", str(subset)]
    _run(cmd, cwd, out.with_suffix(".log").name)
    with mrcfile.open(out) as m:
        return np.asarray(m.data, dtype=np.float32).copy()


def relion_refine(star: str | os.PathLike, reference: str | os.PathLike, out_dir: str | os.PathLike,
                  pixel_size: float, diameter_A: float, symmetry: str = "C1", initial_lowpass_A: float = 25.0,
                  mpi: int = 3, threads: int = 1, cwd: str | os.PathLike | None = None,
                  extra: tuple[str, ...] = ()) -> Path:
    """3D auto-refine: ``mpirun -n MPI relion_refine_mpi --auto_refine --split_random_halves ...`` with RELION's
    GUI defaults (healpix order 2, offset range 5 px step 1, local searches from 1.8 deg, --ctf, --flatten_solvent,
    --zero_mask, --firstiter_cc off, --norm, --scale). Returns the output root (``out_dir/run``); the final map is
    ``run_class001.mrc`` and the poses ``run_data.star``."""
    star = Path(star).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cwd = Path(cwd) if cwd is not None else star.parent
    root = out_dir / "run"
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(mpi), "relion_refine_mpi",
           "--o", str(root), "--auto_refine", "--split_random_halves", "--i", str(star),
           "--ref", str(Path(reference).resolve()), "--ini_high", str(initial_lowpass_A), "--ctf",
           "--particle_diameter", str(diameter_A), "--flatten_solvent", "--zero_mask", "--oversampling", "1",
           "--healpix_order", "2", "--auto_local_healpix_order", "4", "--offset_range", "5", "--offset_step", "2",
           "--sym", symmetry, "--low_resol_join_halves", "40", "--norm", "--scale", "--j", str(threads),
           "--pad", "2", "--dont_combine_weights_via_disc", "--pool", "30", "--angpix", str(pixel_size),
           *extra]
    _run(cmd, cwd, "relion_refine.log")
    return root
