"""3D classification and heterogeneous refinement in a working box that follows the resolution
(``ClassifyParams.working_box``): smaller than the class box while the resolution is low, the whole class box in the
last iteration, the classes as good as with the whole box throughout, and a continued run the same as an
uninterrupted one.

Data: 1200 particles of two states (box 48, 3 Å/px, SNR 0.05, true poses). The working box margin is 2 px (not
10) so that a box this small is cut at all (as the refinement's test does). Measured when written (2-core VM,
shared): fixed poses aligned no finer than 15 Å, working box 30 px until the last iteration: ARI 0.941 against
0.944 with the whole box, class maps' FSC-0.5 with the true states 7.92 / 6.76 Å against 7.90 / 6.76 Å.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cryolive.classification import ClassifyParams, adjusted_rand_index, classify
from cryolive.classification.classify import ClassifyCheckpoint
from cryolive.io import read_map, read_particles
from cryolive.jobs import drain
from cryolive.jobs.jobdir import load_checkpoint, save_checkpoint
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.simulator.dataset import SimulationParams, simulate_dataset

BOX, APIX = 48, 3.0
#: the accuracy the classification tests ask of fixed-pose classification without a focus mask
#: (tests/classification/test_classify_truth.py)
ARI_MIN = 0.85


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("wbox") / "d"
    simulate_dataset(d, SimulationParams(n=1200, box=BOX, pixel_size=APIX, snr=0.05, n_states=2, seed=3))
    states = np.load(d / "truth" / "truth.npz")["states"]
    truth = [read_map(d / "truth" / f"state_{k}.mrc")[0] for k in range(2)]
    return read_particles(d / "particles.star"), states, truth


def _res_vs_truth(result, states, truth) -> list[float]:
    """FSC-0.5 resolution (Å) of each class map against the true state most of its particles come from."""
    out = []
    for c in range(len(truth)):
        s = int(np.bincount(states[result.classes == c + 1], minlength=len(truth)).argmax())
        out.append(resolution_at(fsc(result.final.class_maps[c], truth[s]), BOX, APIX, 0.5))
    return out


def test_working_box_follows_a_low_resolution_and_keeps_the_classes(data):
    """Aligned no finer than 15 Å, the classes work in a 30 px box until they converge, then one more iteration at
    the whole class box writes complete maps; assignments and maps are those of the whole box throughout."""
    stack, states, truth = data
    p = ClassifyParams(n_classes=2, max_iter=12, max_resolution_A=15.0, working_margin_px=2.0)
    runs = {wb: drain(classify(stack, dataclasses.replace(p, working_box=wb))) for wb in (True, False)}
    its, res = runs[True]
    boxes = [it.working_box for it in its]
    # cut while the resolution is low; the last iteration, one after converging, at the whole class box
    assert all(b < BOX for b in boxes[:-1]) and boxes[-1] == BOX, boxes
    assert len(its) < p.max_iter and its[-1].checkpoint.finished
    assert res.final.class_maps.shape == (2, BOX, BOX, BOX)
    assert all(it.working_box == BOX for it in runs[False][0])
    # no class resolution finer than the working box holds is claimed
    for it in its[:-1]:
        assert np.all(it.class_resolution_A >= 2 * APIX * BOX / it.working_box * 0.99), (it.working_box,
                                                                                            it.class_resolution_A)
    ari = {wb: adjusted_rand_index(states, r.classes) for wb, (_, r) in runs.items()}
    assert ari[True] >= ARI_MIN and ari[True] >= ari[False] - 0.02, ari
    on, off = _res_vs_truth(res, states, truth), _res_vs_truth(runs[False][1], states, truth)
    assert all(a <= 1.05 * b for a, b in zip(on, off, strict=True)), (on, off)


def test_hetero_working_box_grows_with_the_resolution(data):
    """Heterogeneous refinement from maps low-passed to 20 Å starts in a small box that grows with the classes'
    resolution (the online-EM iterations blend accumulators of two boxes); the maps come out at the class box."""
    stack, states, truth = data
    p = ClassifyParams(mode="hetero", n_classes=2, max_iter=4, hetero_search="local", working_margin_px=2.0)
    its, res = drain(classify(stack, p, starts=truth))
    boxes = [it.working_box for it in its]
    assert its[0].stage == its[1].stage == "online"
    assert boxes[0] < boxes[1] <= BOX and boxes[-1] == BOX, boxes
    assert res.final.class_maps.shape == (2, BOX, BOX, BOX)
    # the bar the command-line test sets heterogeneous refinement from the true states
    # (tests/cli/test_cli_classify.py)
    assert adjusted_rand_index(states, res.classes) > 0.6


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("wbox_small") / "d"
    simulate_dataset(d, SimulationParams(n=300, box=32, pixel_size=4.0, snr=0.3, n_states=2, seed=5))
    return read_particles(d / "particles.star")


def test_a_run_in_a_working_box_continues_as_it_would_have(small, tmp_path):
    """Checkpoints taken in a working box (online-EM accumulators in that box; a pending final pass at the whole
    box) continue, through the file the job writes, exactly as the uninterrupted run."""
    p = ClassifyParams(n_classes=2, max_iter=10, online_em_iters=3, minibatch_size=200, batch_size=128,
                       max_resolution_A=16.0, working_margin_px=2.0)
    full_its, full = drain(classify(small, p))
    assert full_its[-1].working_box == 32 and full_its[0].working_box < 32
    starts = {2: full_its[1].checkpoint}  # iteration 3 blends into its accumulators
    assert starts[2].numerators.size and starts[2].accumulator_freq < 0.5
    pending = [it.checkpoint for it in full_its if it.checkpoint.final_pass]
    assert len(pending) == 1 and pending[0].iteration == full_its[-2].iteration  # converged, then one pass
    starts[pending[0].iteration] = pending[0]
    for upto, ckpt in starts.items():
        save_checkpoint(tmp_path / "checkpoint.npz", ckpt)
        ckpt = load_checkpoint(tmp_path / "checkpoint.npz", ClassifyCheckpoint)
        rest, resumed = drain(classify(small, p, resume=ckpt))
        assert [it.iteration for it in rest] == [it.iteration for it in full_its[upto:]]
        assert [it.working_box for it in rest] == [it.working_box for it in full_its[upto:]]
        np.testing.assert_array_equal(resumed.classes, full.classes)
        np.testing.assert_allclose(resumed.posteriors, full.posteriors, atol=1e-9)
        np.testing.assert_allclose(resumed.final.class_maps, full.final.class_maps, atol=1e-6)
