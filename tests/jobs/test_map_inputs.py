"""The jobs take maps in memory as well as files (issue 16): a napari layer is passed as a ``MapInput`` (array,
pixel size, name), checked exactly as a file is, written by the job into its own folder (``input_*.mrc``) and
named in ``params.json``, so the folder alone can be continued."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cryolive.classification.classify import ClassifyParams
from cryolive.image.resample import resample_volume
from cryolive.io import InputError, MapInput, read_map, read_particles, write_map
from cryolive.jobs import drain
from cryolive.jobs.classify import classify_job, continue_classify_job
from cryolive.jobs.jobdir import job_state
from cryolive.jobs.refine import continue_refine_job, refine_job
from cryolive.refinement.refine import RefineParams
from cryolive.simulator.dataset import SimulationParams, simulate_dataset

BOX, APIX = 32, 4.0


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("mapin") / "sim"
    simulate_dataset(out, SimulationParams(n=200, box=BOX, pixel_size=APIX, snr=0.5, n_states=2, seed=3))
    return out


def _sphere(n: int, radius_px: float) -> np.ndarray:
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    return (np.sqrt(x**2 + y**2 + z**2) <= radius_px).astype(np.float32)


def test_refinement_from_arrays_writes_its_inputs_and_matches_the_files(small_set, tmp_path) -> None:
    ref, _ = read_map(small_set / "reference.mrc")
    # the reference at half the particles' pixel size (box 64): resampled as a file would be, with the same note
    fine = np.asarray(resample_volume(ref, 2 * BOX), np.float32)
    mask = _sphere(BOX, 12)
    write_map(tmp_path / "fine_ref.mrc", fine, APIX / 2)
    write_map(tmp_path / "mask.mrc", mask, APIX)
    particles = str(small_set / "particles.star")
    p = RefineParams(max_iter=2, batch_size=64)
    from_files = drain(refine_job(particles, str(tmp_path / "fine_ref.mrc"), str(tmp_path / "files"), p,
                              mask_path=str(tmp_path / "mask.mrc")))[1]
    ref_in, mask_in = MapInput(fine.copy(), APIX / 2, "my reference"), MapInput(mask.copy(), APIX, "my mask")
    from_arrays = drain(refine_job(particles, ref_in, str(tmp_path / "arrays"), p, mask_path=mask_in))[1]
    np.testing.assert_array_equal(from_arrays.final.map, from_files.final.map)
    job = tmp_path / "arrays" / "job_refine_001"
    np.testing.assert_array_equal(read_map(job / "input_reference.mrc")[0], fine)
    assert read_map(job / "input_reference.mrc")[1] == pytest.approx(APIX / 2)
    np.testing.assert_array_equal(read_map(job / "input_mask.mrc")[0], mask)
    prm = json.loads((job / "params.json").read_text())
    assert prm["reference"] == str((job / "input_reference.mrc").resolve())
    assert prm["mask"] == str((job / "input_mask.mrc").resolve())
    log = (job / "log.txt").read_text()
    assert "layer 'my reference': reference map resampled" in log
    assert "wrote input_reference.mrc from layer 'my reference'" in log
    assert sorted(f.name for f in tmp_path.iterdir()) == ["arrays", "files", "fine_ref.mrc", "mask.mrc"]


def test_a_refinement_from_arrays_continues_from_its_folder_alone(small_set, tmp_path) -> None:
    ref, apix = read_map(small_set / "reference.mrc")
    p = RefineParams(max_iter=3, batch_size=64)
    gen = refine_job(str(small_set / "particles.star"), MapInput(ref, apix, "ref layer"), str(tmp_path / "jobs"), p)
    for it in gen:
        if getattr(it, "iteration", 0) == 1:
            gen.close()  # stopped after iteration 1 (its checkpoint is written)
            break
    job = tmp_path / "jobs" / "job_refine_001"
    assert job_state(job)["state"] == "stopped"
    moved = tmp_path / "elsewhere" / job.name  # the recorded input path is gone: the folder's own copy is used
    moved.parent.mkdir()
    shutil.move(job, moved)
    result = drain(continue_refine_job(str(moved)))[1]
    assert result.final.iteration == 3 and job_state(moved)["state"] == "finished"


def test_classification_from_arrays_writes_its_inputs_and_continues(small_set, tmp_path) -> None:
    cons, apix = read_map(small_set / "reference.mrc")
    solvent = _sphere(BOX, 13)
    write_map(tmp_path / "cons.mrc", cons, apix)
    write_map(tmp_path / "solvent.mrc", solvent, apix)
    particles = str(small_set / "particles.star")
    p = ClassifyParams(n_classes=2, max_iter=3, batch_size=64)
    from_files = drain(classify_job(particles, str(tmp_path / "files"), p, consensus=str(tmp_path / "cons.mrc"),
                                solvent_mask=str(tmp_path / "solvent.mrc")))[1]
    gen = classify_job(particles, str(tmp_path / "arrays"), p, consensus=MapInput(cons, apix, "consensus layer"),
                       solvent_mask=MapInput(solvent, apix, "solvent layer"))
    for it in gen:
        if it.iteration == 2:
            gen.close()
            break
    job = tmp_path / "arrays" / "job_classify_001"
    prm = json.loads((job / "params.json").read_text())
    assert prm["consensus"] == str((job / "input_consensus.mrc").resolve())
    assert prm["solvent_mask"] == str((job / "input_solvent_mask.mrc").resolve())
    assert prm["focus_mask"] is None and prm["starts"] == []
    result = drain(continue_classify_job(str(job), "classify"))[1]
    np.testing.assert_array_equal(result.classes, from_files.classes)
    np.testing.assert_allclose(result.final.class_maps, from_files.final.class_maps, atol=1e-6)


def test_hetero_starting_maps_from_arrays_are_written_in_order(small_set, tmp_path) -> None:
    starts = [read_map(small_set / "truth" / f"state_{i}.mrc")[0] for i in (0, 1)]
    p = ClassifyParams(mode="hetero", max_iter=1, coarse_step_deg=15.0, levels=2, batch_size=64)
    drain(classify_job(str(small_set / "particles.star"), str(tmp_path / "jobs"), p,
                       starts=[MapInput(s, APIX, f"state {i}") for i, s in enumerate(starts)]))
    job = tmp_path / "jobs" / "job_hetero_001"
    prm = json.loads((job / "params.json").read_text())
    assert prm["starts"] == [str((job / f"input_starts_{i:03d}.mrc").resolve()) for i in (1, 2)]
    for i, s in enumerate(starts):
        np.testing.assert_array_equal(read_map(job / f"input_starts_{i + 1:03d}.mrc")[0], s)


@pytest.mark.parametrize(("data", "says"), [
    (np.zeros((BOX,) * 3, np.float32), "all zeros"),
    (np.full((BOX,) * 3, 0.3, np.float32), "constant"),
    (np.where(_sphere(BOX, 5) > 0, np.nan, 1.0).astype(np.float32), "NaN or Inf"),
    (np.ones((BOX, BOX), np.float32), "3-D map"),
])
def test_a_map_in_memory_without_structure_is_refused_naming_the_layer(small_set, tmp_path, data, says) -> None:
    with pytest.raises(InputError, match=f"layer 'empty ref'.*{says}"):
        next(refine_job(str(small_set / "particles.star"), MapInput(data, APIX, "empty ref"), str(tmp_path / "j")))
    with pytest.raises(InputError, match=f"layer 'empty ref'.*{says}"):
        next(classify_job(str(small_set / "particles.star"), str(tmp_path / "j"), ClassifyParams(n_classes=2),
                          consensus=MapInput(data, APIX, "empty ref")))
    assert not (tmp_path / "j").exists()  # refused before a job folder was made


def test_an_empty_mask_in_memory_is_refused_naming_the_layer(small_set, tmp_path) -> None:
    ref, apix = read_map(small_set / "reference.mrc")
    with pytest.raises(InputError, match="layer 'my mask'.*selects no voxel"):
        next(refine_job(str(small_set / "particles.star"), MapInput(ref, apix, "ref"), str(tmp_path / "j"),
                        mask_path=MapInput(np.zeros((BOX,) * 3, np.float32), apix, "my mask")))
    with pytest.raises(InputError, match="layer 'ref'.*pixel size"):
        next(refine_job(str(small_set / "particles.star"), MapInput(ref, 0.0, "ref"), str(tmp_path / "j")))
    assert not (tmp_path / "j").exists()
    assert read_particles(small_set / "particles.star").box == BOX
