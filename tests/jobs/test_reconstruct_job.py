"""The known-pose reconstruction job as a generator: progress, job folder, status, and honest numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryolive.io import read_map
from cryolive.jobs import drain
from cryolive.jobs.reconstruct import ReconstructParams, ReconstructProgress, reconstruct_job
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.sample import sample_path


def test_job_streams_and_writes_a_complete_folder(tmp_path):
    steps, result = drain(reconstruct_job(ReconstructParams(particles=str(sample_path("particles.star")),
                                                           out=str(tmp_path), batch_size=500)))
    assert [s.n_done for s in steps] == [500, 1000, 1500, 2000]
    assert all(isinstance(s, ReconstructProgress) and s.n_total == 2000 for s in steps)
    job = result.job_dir
    assert job.name == "job_reconstruct_001"
    for name in ("half_A.mrc", "half_B.mrc", "map.mrc", "map_sharp.mrc", "mask_fsc.mrc", "fsc.csv", "fsc.png",
                 "params.json", "log.txt", "status.json"):
        assert (job / name).exists(), name
    assert json.loads((job / "status.json").read_text())["state"] == "finished"
    assert json.loads((job / "params.json").read_text())["n_particles"] == 2000
    assert not list(job.glob(".*tmp*"))  # no temporary files left behind
    # what is on disk is what the generator returned
    on_disk, apix = read_map(job / "map.mrc")
    np.testing.assert_array_equal(on_disk, result.map)
    truth, sample_apix = read_map(sample_path("truth_map.mrc"))
    assert abs(apix - sample_apix) < 1e-4
    # the unmasked gold-standard resolution agrees with the FSC against the truth at 0.5 (within 10 %)
    full = (result.half_a + result.half_b) / 2
    n = truth.shape[0]
    res_truth = resolution_at(fsc(full, truth), n, apix, 0.5)
    res_gs = resolution_at(result.fsc.fsc_unmasked, n, apix, 0.143)
    assert abs(res_gs - res_truth) / res_truth <= 0.10, (res_gs, res_truth)
    # the masked, corrected resolution is at least as good as the unmasked one, and not better than Nyquist
    assert 2 * apix <= result.resolution <= res_gs + 1e-6
    # a second job gets a new folder, never the same one
    _, second = drain(reconstruct_job(ReconstructParams(particles=str(sample_path("particles.star")),
                                                       out=str(tmp_path), batch_size=1000)))
    assert second.job_dir.name == "job_reconstruct_002"


def test_stopped_job_says_so(tmp_path):
    gen = reconstruct_job(ReconstructParams(particles=str(sample_path("particles.star")), out=str(tmp_path),
                                            batch_size=500))
    next(gen)
    gen.close()  # what a Stop button does: GeneratorExit inside the job
    status = json.loads((tmp_path / "job_reconstruct_001" / "status.json").read_text())
    assert status["state"] == "stopped"


def test_particles_without_poses_fail_clearly(tmp_path):
    import starfile

    from cryolive.io import InputError

    blocks = starfile.read(sample_path("particles.star"), always_dict=True)
    parts = blocks["particles"].drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    stack = sample_path("particles.mrcs").resolve()
    parts["rlnImageName"] = [f"{name.split('@')[0]}@{stack}" for name in parts["rlnImageName"]]
    star = tmp_path / "noposes.star"
    starfile.write({"optics": blocks["optics"], "particles": parts}, star)
    with pytest.raises(InputError, match="noposes.star.*no poses"):
        drain(reconstruct_job(ReconstructParams(particles=str(star), out=str(tmp_path / "jobs"))))
    assert not (tmp_path / "jobs").exists()  # refused before the job folder was made
