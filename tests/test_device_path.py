"""The jobs on the device path give the NumPy path's answer.

Each job runs twice on the same small data: once on NumPy and once on the device backend (CuPy on a GPU; on a
machine without one the strict CuPy emulation of ``tests/device_emulation.py``, which computes with NumPy but
raises wherever data would cross between host and device implicitly, as CuPy does). The device run must finish,
hand back NumPy results, and match the NumPy run: maps by correlation, poses by angle, classes by label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryolive import backend
from cryolive.classification import ClassifyParams
from cryolive.io import read_map, read_particles
from cryolive.jobs import drain
from cryolive.jobs.classify import classify_job
from cryolive.jobs.reconstruct import ReconstructParams, reconstruct_job
from cryolive.refinement.refine import RefineParams, refine
from cryolive.rotations.euler import angular_distance
from cryolive.sample import sample_path

pytestmark = pytest.mark.slow


def _on(backend_name: str, run):
    """``run()`` with the backend switched to ``backend_name`` ('numpy' or the device module given)."""
    old = backend.xp()
    if backend_name == "numpy":
        backend.set_backend("numpy")
    try:
        return run()
    finally:
        backend._XP = old


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _host(x) -> bool:
    """NumPy data (what napari, files and plots get), not device arrays."""
    return isinstance(x, np.ndarray)


@pytest.fixture(scope="module")
def sample():
    """The bundled sample's first 300 particles (box 40, 3 Å/px, SNR 0.1) and its 20 Å reference."""
    stack = read_particles(sample_path("particles.star"))
    ref, _ = read_map(sample_path("reference.mrc"))
    return stack.subset(np.arange(300)), ref


def test_the_device_path_refuses_implicit_transfers(device_backend):
    """What makes the emulation worth running: it refuses what CuPy refuses (this runs on a GPU against CuPy too)."""
    m = device_backend
    dev, host = m.arange(4, dtype=m.float32), np.arange(4, dtype=np.float32)
    with pytest.raises(TypeError):
        np.asarray(dev)  # device -> host only by .get() / to_numpy()
    with pytest.raises(TypeError):
        dev * host  # no mixed operands
    with pytest.raises(TypeError):
        m.exp(host)  # device functions take device arrays
    with pytest.raises(TypeError):
        host[:2] = dev[:2]
    assert isinstance(backend.to_numpy(dev * 2), np.ndarray) and float(dev.sum()) == 6.0
    assert backend.to_numpy(m.asarray(host) + dev).tolist() == [0.0, 2.0, 4.0, 6.0]


#: two refinements that between them take every branch of the E and M steps: ab-initio steps, global then local
#: search, marginalisation, dynamic masks; and symmetry with relaxation from the particles' own poses, per-particle
#: scale reset, stochastic global search
REFINE_CASES = {
    "ab-initio, marginalised": dict(max_iter=2, global_iters=1, coarse_step_deg=15.0, levels=2, minibatch_iters=0,
                                    batch_size=100, marginalize=True, marginal_top=3, sgd_steps=2, sgd_batch_size=60),
    "C2 relaxed to C4 from input poses": dict(max_iter=2, levels=2, minibatch_iters=1, batch_size=100,
                                              symmetry="C2", relax_symmetry="C4", use_input_poses=True,
                                              scale_mode="reset", dynamic_mask_start_A=30.0),
    "stochastic global search in D2": dict(max_iter=1, global_iters=1, coarse_step_deg=15.0, levels=1,
                                           minibatch_iters=0, symmetry="D2", stochastic_global=True),
}


@pytest.mark.parametrize("case", list(REFINE_CASES))
def test_refinement_on_the_device_matches_numpy(device_backend, sample, case):
    params = RefineParams(**REFINE_CASES[case])
    steps_np, res_np = _on("numpy", lambda: drain(refine(*sample, params)))
    steps_dev, res_dev = drain(refine(*sample, params))
    assert [type(s) for s in steps_dev] == [type(s) for s in steps_np]
    assert len(steps_dev) == params.sgd_steps + params.max_iter
    assert all(_host(s.map) for s in steps_dev)
    fin_np, fin_dev = res_np.final, res_dev.final
    for name in ("map", "half_a", "half_b", "mask", "fsc_mask", "sigma2", "angular_distribution"):
        assert _host(getattr(fin_dev, name)), name
    assert _corr(fin_dev.map, fin_np.map) > 0.999
    assert abs(fin_dev.resolution_A - fin_np.resolution_A) < 0.1
    ang = np.degrees(angular_distance(res_dev.rotations, res_np.rotations))
    assert np.median(ang) < 0.01 and np.mean(ang > 1.0) < 0.02
    assert np.abs(res_dev.shifts_A - res_np.shifts_A).max() < 0.5


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    """300 particles of two states (box 24, 4 Å/px, SNR 0.2) with their true poses, and the two true maps."""
    from cryolive.simulator.dataset import SimulationParams, simulate_dataset

    d = tmp_path_factory.mktemp("device") / "two_states"
    simulate_dataset(d, SimulationParams(n=300, box=24, pixel_size=4.0, snr=0.2, n_states=2, seed=5))
    return d


@pytest.mark.parametrize("mode", ["fixed", "local", "hetero", "working-box"])
def test_classification_on_the_device_matches_numpy(device_backend, two_states, tmp_path, mode):
    starts = [str(two_states / "truth" / f"state_{k}.mrc") for k in (0, 1)] if mode == "hetero" else None
    params = ClassifyParams(n_classes=2, mode=mode, max_iter=2, coarse_step_deg=15.0, levels=2)
    if mode == "working-box":  # fixed poses; an online-EM iteration in a 22 px working box, then one at the whole box
        params = ClassifyParams(n_classes=2, max_iter=2, online_em_iters=2, minibatch_size=200,
                                max_resolution_A=16.0, working_margin_px=2.0)

    def run(out: Path):
        return drain(classify_job(str(two_states / "particles.star"), str(out), params, starts=starts))

    _, res_np = _on("numpy", lambda: run(tmp_path / "np"))
    steps, res_dev = run(tmp_path / "dev")
    assert len(steps) == 2 and _host(res_dev.posteriors) and _host(res_dev.final.class_maps)
    if mode == "working-box":
        assert steps[0].working_box < 24 and steps[1].working_box == 24
    # float32 rounding may flip a near-tied pose in the hetero search for a particle or two (a different basin
    # kept per candidate): almost every posterior is the same to 1e-3, none differs by more than 0.05
    diff = np.abs(res_dev.posteriors - res_np.posteriors)
    assert np.mean(diff < 1e-3) > 0.98 and diff.max() < 0.05, (np.mean(diff < 1e-3), diff.max())
    assert np.array_equal(res_dev.classes, res_np.classes)
    for a, b in zip(res_dev.final.class_maps, res_np.final.class_maps, strict=True):
        assert _corr(a, b) > 0.999
    assert (Path(steps[-1].job_dir) / "particles.star").exists()


def test_reconstruction_job_on_the_device_matches_numpy(device_backend, two_states, tmp_path):
    def run(out: Path):
        return drain(reconstruct_job(ReconstructParams(particles=str(two_states / "particles.star"), out=str(out),
                                                       batch_size=128)))

    _, res_np = _on("numpy", lambda: run(tmp_path / "np"))
    _, res_dev = run(tmp_path / "dev")
    job_np, job_dev = tmp_path / "np" / "job_reconstruct_001", tmp_path / "dev" / "job_reconstruct_001"
    for name in ("half_A.mrc", "map.mrc", "map_sharp.mrc", "mask_fsc.mrc"):
        assert _corr(read_map(job_dev / name)[0], read_map(job_np / name)[0]) > 0.9999, name
    assert _host(res_dev.map) and _host(res_dev.fsc.fsc)
    assert np.abs(res_dev.fsc.fsc - res_np.fsc.fsc).max() < 1e-3
    assert abs(res_dev.fsc.res_0143 - res_np.fsc.res_0143) < 0.05


def test_motion_correction_on_the_device_matches_numpy(device_backend, tmp_path):
    from cryolive.motion import MotionParams, motion
    from cryolive.simulator.movies import MovieSimParams, simulate_movies

    sim = _on("numpy", lambda: simulate_movies(tmp_path / "s", MovieSimParams(
        n_micrographs=2, n_frames=6, particles_per_micrograph=4, mic_size=160, seed=2)))
    stack = read_particles(sim / "particles.star")
    ha, hb = read_map(sim / "half_A.mrc")[0], read_map(sim / "half_B.mrc")[0]
    params = MotionParams(override_r=1, override_theta=1, override_z_A=100)

    def run():
        return drain(motion(stack, sim / "movies", ha, hb, params=params))

    _, res_np = _on("numpy", run)
    steps, res_dev = run()
    assert steps and res_dev.trajectories.keys() == res_np.trajectories.keys()
    for key, (idx, traj) in res_dev.trajectories.items():
        assert _host(traj) and np.array_equal(idx, res_np.trajectories[key][0])
        assert np.abs(traj - res_np.trajectories[key][1]).max() < 0.01  # px
    assert _host(res_dev.images) and _corr(res_dev.images, res_np.images) > 0.9999
