"""Core throughput: Fourier projection (slices/s), insertion (images/s) and 3D/2D FFTs, per box and backend.

Usage: ``python benchmarks/bench_core.py [--boxes 64 128 256] [--backends numpy cupy] [--batch 256]``.
Prints a Markdown table (copy it into docs/benchmarks.md with the machine and command).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from cryolive import backend
from cryolive.image.fourier import fftnc, rfft2c
from cryolive.projection import Projector, Reconstructor
from cryolive.simulator.particles import random_rotations


def _sync() -> None:
    if backend.backend_name() == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()


def _time(fn, min_time: float = 1.0, max_reps: int = 50) -> float:
    """Median seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    _sync()
    times = []
    t_start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - t_start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench(box: int, batch: int) -> dict[str, float]:
    m = backend.xp()
    rng = np.random.default_rng(0)
    vol = m.asarray(rng.normal(size=(box, box, box)).astype(np.float32))
    rots = random_rotations(batch, rng)
    t_setup = _time(lambda: Projector(vol), min_time=0.5, max_reps=5)
    proj = Projector(vol)
    t_proj = _time(lambda: proj.slices(rots))
    f = proj.slices(rots)
    rec = Reconstructor(box)
    t_ins = _time(lambda: rec.insert(f, rots))
    t_fin = _time(lambda: rec.finalize(), min_time=0.5, max_reps=5)
    imgs = m.asarray(rng.normal(size=(batch, box, box)).astype(np.float32))
    t_fft2 = _time(lambda: rfft2c(imgs))
    t_fft3 = _time(lambda: fftnc(vol), min_time=0.5, max_reps=10)
    return {"box": box, "batch": batch, "proj_per_s": batch / t_proj, "insert_per_s": batch / t_ins,
            "fft2_per_s": batch / t_fft2, "fft3_ms": 1e3 * t_fft3, "projector_setup_ms": 1e3 * t_setup,
            "finalize_ms": 1e3 * t_fin}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--backends", nargs="+", default=backend.available_backends())
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print("| backend | device | box | batch | projection (slices/s) | insertion (images/s) | rfft2 (images/s) "
          "| 3D FFT (ms) | projector set-up (ms) | finalize (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.backends:
        backend.set_backend(name)
        for box in a.boxes:
            batch = a.batch if box <= 128 else max(16, a.batch // 4)
            r = bench(box, batch)
            print(f"| {name} | {backend.device_label()} | {box} | {batch} | {r['proj_per_s']:.0f} | "
                  f"{r['insert_per_s']:.0f} | {r['fft2_per_s']:.0f} | {r['fft3_ms']:.1f} | "
                  f"{r['projector_setup_ms']:.0f} | {r['finalize_ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
