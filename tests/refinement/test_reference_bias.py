"""Particles of pure noise aligned to a reference must not make the half maps agree beyond the band they share
(issue 14: reference bias). Before the shared band's edge ended at its resolution, 2,000 noise images refined
against a D2 map reported 16 Å with a 20 Å band; now the FSC is ~0 above the band and the job says the number is
not a measurement."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import starfile

from cryolive.jobs import drain
from cryolive.jobs.refine import refine_job
from cryolive.refinement.refine import RefineParams
from cryolive.resolution.fsc import resolution_at
from cryolive.simulator.dataset import SimulationParams, simulate_dataset


def test_noise_particles_do_not_reproduce_the_reference_beyond_the_shared_band(tmp_path) -> None:
    sim = tmp_path / "sim"
    simulate_dataset(sim, SimulationParams(n=800, box=32, pixel_size=4.0, snr=0.1, seed=4, symmetry="D2"))
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    parts = blocks["particles"]
    rng = np.random.default_rng(1)
    with mrcfile.new(sim / "noise.mrcs") as m:
        m.set_data(rng.normal(0, 1, (len(parts), 32, 32)).astype(np.float32))
        m.voxel_size = 4.0
    parts["rlnImageName"] = [f"{i + 1:06d}@noise.mrcs" for i in range(len(parts))]
    starfile.write({"optics": blocks["optics"], "particles": parts}, sim / "noise.star")
    p = RefineParams(symmetry="D2", initial_lowpass_A=20.0, max_iter=4, batch_size=200)
    _, result = drain(refine_job(str(sim / "noise.star"), str(sim / "truth" / "truth_map.mrc"),
                                 str(tmp_path / "jobs"), p))
    fsc = result.final.fsc.fsc_unmasked
    res = resolution_at(fsc, 32, 4.0, 0.143)
    assert res >= 0.9 * 20.0, f"noise reports {res:.1f} Å"  # 21.4 Å now; 15.9 Å with the centred edge
    shells = np.arange(len(fsc))
    beyond = fsc[(shells >= 32 * 4.0 / 16.0) & (shells < 16)]  # finer than 16 Å: independent halves
    assert np.abs(beyond).max() < 0.3, beyond
    job = tmp_path / "jobs" / "job_refine_001"
    status = json.loads((job / "status.json").read_text())
    assert status["warnings"] and "does not measure the data" in status["warnings"][0]
    assert "WARNING: the GSFSC" in (job / "log.txt").read_text()
