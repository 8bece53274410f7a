"""GPU out-of-memory: the batch halves and the job completes (issue 15, item 4).

Out-of-memory is injected, not provoked: a fixture wraps a function on a batch's way so that its first call(s) with
more than ``k`` items raise CuPy's ``cupy.cuda.memory.OutOfMemoryError`` (the strict emulation's, or CuPy's own on a
GPU; a plain ``MemoryError`` on NumPy). A known-pose reconstruction and a short refinement must then finish with the
batch halved, say so in one log line, and give the maps of the run without the fault. The batch size chosen from a
mocked free-memory figure is checked too, and the pieces underneath: the halving loop, the roll-back of host state
and the all-or-nothing scatter.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from cryolive import backend
from cryolive.alignment.score import Scorer
from cryolive.backend import OutOfDeviceMemory, is_out_of_memory, scatter_add_all
from cryolive.batching import FREE_FRACTION, AdaptiveBatch, batch_size_for, rollback
from cryolive.io import ParticleStack, read_map, read_particles
from cryolive.jobs import drain
from cryolive.projection import Reconstructor
from cryolive.reconstruction.halves import BACKPROJECT_BYTES_PER_PIXEL, reconstruct
from cryolive.refinement.refine import RefineParams, refine


def _oom() -> MemoryError:
    """What the device raises when an allocation fails: CuPy's OutOfMemoryError, or MemoryError on NumPy."""
    if backend.backend_name() == "cupy":
        return sys.modules["cupy"].cuda.memory.OutOfMemoryError(2**30, 2**34)
    return MemoryError("emulated out of memory")


@dataclass
class Fault:
    """A function made to run out of memory: its first ``times`` calls with more than ``above`` items (after
    ``skip`` such calls went through) raise; ``raised`` counts them, ``sizes`` records every call's item count."""

    above: int
    times: int = 1
    skip: int = 0
    raised: int = 0
    seen: int = 0

    def __post_init__(self) -> None:
        self.sizes: list[int] = []

    def check(self, size: int) -> None:
        self.sizes.append(size)
        if size > self.above:
            self.seen += 1
            if self.seen > self.skip and self.raised < self.times:
                self.raised += 1
                raise _oom()


@pytest.fixture
def inject_oom(monkeypatch) -> Callable[..., Fault]:
    """``inject_oom(owner, name, above, times=1, skip=0, size=...)``: wrap ``owner.name`` (a module function or a
    method) so that it runs out of memory as :class:`Fault` says; ``size(*args)`` gives a call's item count (the
    length of its first argument by default; for a method, of the first after ``self``)."""

    def inject(owner, name: str, above: int, times: int = 1, skip: int = 0,
               size: Callable[..., int] | None = None) -> Fault:
        fault = Fault(above, times, skip)
        original = getattr(owner, name)
        method = isinstance(owner, type)

        def wrapper(*args, **kwargs):
            items = args[1:] if method else args
            fault.check(size(*items) if size is not None else len(items[0]))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)
        return fault

    return inject


def _halvings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "cryolive" and "out of memory at batch" in r.getMessage()]


# ------------------------------------------------------------------------------------------- the pieces


def test_batch_size_from_free_memory():
    assert batch_size_for(256, 1e6, free_bytes=64 * 10**6, fraction=0.5) == 32
    assert batch_size_for(16, 1e6, free_bytes=64 * 10**6, fraction=0.5) == 16  # the user's cap
    assert batch_size_for(256, 1e9, free_bytes=10**6) == 1  # never below one
    assert batch_size_for(256, 1e6, free_bytes=None) == 256  # NumPy: no device figure
    assert batch_size_for(None, 1e6, free_bytes=64 * 10**6, fraction=0.5) == 32  # no cap


def test_batch_size_follows_the_mocked_free_memory(device_backend, monkeypatch):
    cupy = sys.modules["cupy"]
    monkeypatch.setattr(cupy.cuda.runtime, "memGetInfo", lambda: (100 * 2**20, 80 * 2**30))
    assert backend.free_device_bytes() == 100 * 2**20
    batches = AdaptiveBatch(256)
    assert batches.planned(2**20) == int(FREE_FRACTION * 100)
    assert batches.planned(None) == 256
    sizes = [b - a for a, b, _ in batches.run(200, lambda a, b: None, item_bytes=2**20)]
    assert sizes == [50, 50, 50, 50]
    # a limit set on CuPy's pool bounds it too
    pool = cupy.get_default_memory_pool()
    monkeypatch.setattr(pool, "get_limit", lambda: 40 * 2**20, raising=False)
    monkeypatch.setattr(pool, "used_bytes", lambda: 20 * 2**20, raising=False)
    assert backend.free_device_bytes() == 20 * 2**20 and batches.planned(2**20) == 10


def test_numpy_keeps_the_users_batch_size():
    old = backend.xp()
    backend.set_backend("numpy")
    try:
        assert backend.free_device_bytes() is None
        assert AdaptiveBatch(64).planned(1e12) == 64
    finally:
        backend._XP = old


def test_out_of_memory_is_recognised(device_backend):
    cupy = sys.modules["cupy"]
    assert is_out_of_memory(cupy.cuda.memory.OutOfMemoryError(10, 20))
    assert is_out_of_memory(MemoryError())

    class CUDARuntimeError(RuntimeError):
        pass

    CUDARuntimeError.__module__ = "cupy_backends.cuda.api.runtime"
    assert is_out_of_memory(CUDARuntimeError("cudaErrorMemoryAllocation: out of memory"))
    assert not is_out_of_memory(CUDARuntimeError("cudaErrorIllegalAddress: an illegal memory access"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not from CuPy
    assert not is_out_of_memory(OutOfDeviceMemory("already at a batch of one"))


def test_the_batch_halves_and_the_range_is_retried(device_backend, caplog):
    pool = sys.modules["cupy"].get_default_memory_pool()
    freed = pool.freed
    fault = Fault(above=16, times=2)
    done: list[tuple[int, int]] = []

    def step(a: int, b: int) -> int:
        fault.check(b - a)
        return b - a

    batches = AdaptiveBatch(64, label="test")
    with caplog.at_level(logging.WARNING, logger="cryolive"):
        for a, b, n in batches.run(100, step):
            assert n == b - a
            done.append((a, b))
    assert [a for a, _ in done] == list(range(0, 100, 16))  # 64 -> 32 -> 16, then 16 for good
    assert done[-1][1] == 100 and batches.size == 16 and batches.halvings == 2
    assert _halvings(caplog) == ["GPU out of memory at batch 64: halving to 32 (test)",
                                 "GPU out of memory at batch 32: halving to 16 (test)"]
    assert pool.freed == freed + 2  # the pool was emptied before each retry
    # the next run starts from the halved size
    assert [b - a for a, b, _ in batches.run(40, lambda a, b: None)] == [16, 16, 8]


def test_a_batch_of_one_that_fails_is_a_clear_memory_error(device_backend):
    def step(a: int, b: int) -> None:
        raise _oom()

    with pytest.raises(OutOfDeviceMemory, match="out of memory with a batch of one") as info:
        list(AdaptiveBatch(8, label="refinement").run(10, step))
    assert isinstance(info.value, MemoryError) and "refinement" in str(info.value)
    # an enclosing batch loop does not retry it
    with pytest.raises(OutOfDeviceMemory):
        list(AdaptiveBatch(4).run(8, lambda a, b: list(AdaptiveBatch(2).run(2, step))))


def test_other_errors_pass_through():
    def step(a: int, b: int) -> None:
        raise ValueError("not a memory problem")

    batches = AdaptiveBatch(8)
    with pytest.raises(ValueError, match="not a memory problem"):
        list(batches.run(10, step))
    assert batches.size == 8 and batches.halvings == 0


def test_rollback_restores_the_rows_and_the_random_state():
    poses, scales = np.arange(10.0), np.ones((10, 2))
    rng = np.random.default_rng(1)
    first = rng.uniform()
    rng = np.random.default_rng(1)
    rows = np.array([2, 3, 7])
    with pytest.raises(MemoryError), rollback(rows, (poses, scales), rng):
        poses[rows] = -1.0
        scales[rows] = 5.0
        rng.uniform()
        raise MemoryError
    assert np.array_equal(poses, np.arange(10.0)) and np.array_equal(scales, np.ones((10, 2)))
    assert rng.uniform() == first
    with rollback(rows, (poses,)):  # no error: the writes stay
        poses[rows] = 0.0
    assert poses[2] == 0.0


def test_scatter_add_all_changes_nothing_when_it_runs_out(xp_backend):
    m = xp_backend
    a, b = m.zeros(6, dtype=m.complex64), m.zeros(6, dtype=m.float32)
    idx = m.asarray(np.array([0, 2, 2, 5]))
    vals = m.asarray(np.array([1 + 1j, 2, 3j, 4], dtype=np.complex64))
    scatter_add_all([(a, idx, vals), (b, idx, vals.real)])
    assert backend.to_numpy(a).tolist() == [1 + 1j, 0, 2 + 3j, 0, 0, 4] and backend.to_numpy(b)[2] == 2.0
    # the second operand's temporaries cannot be made: the first target must not have changed either
    before_a, before_b = backend.to_numpy(a), backend.to_numpy(b)

    class Failing:  # values whose conversion runs out of memory
        def __array__(self, *args, **kwargs):
            raise _oom()

        def astype(self, *args, **kwargs):
            raise _oom()

    with pytest.raises(MemoryError):
        scatter_add_all([(a, idx, vals), (b, idx, Failing())])
    assert np.array_equal(backend.to_numpy(a), before_a) and np.array_equal(backend.to_numpy(b), before_b)


# ------------------------------------------------------------------------------------------- the jobs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[ParticleStack, np.ndarray]:
    """160 particles (box 32, 4 Å/px, SNR 0.5) with their true poses, and the simulator's 20 Å reference."""
    from cryolive.simulator.dataset import SimulationParams, simulate_dataset

    d = tmp_path_factory.mktemp("oom") / "tiny"
    old = backend.xp()
    backend.set_backend("numpy")
    try:
        simulate_dataset(d, SimulationParams(n=160, box=32, pixel_size=4.0, snr=0.5, seed=3))
    finally:
        backend._XP = old
    return read_particles(d / "particles.star"), read_map(d / "reference.mrc")[0]


def _same_maps(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("where", ["batch", "insertion"])
def test_reconstruction_goes_on_with_half_the_batch(xp_backend, tiny, inject_oom, caplog, where):
    stack = tiny[0]
    clean = reconstruct(stack, batch_size=64)
    if where == "batch":  # reading a batch of more than 32 images runs out, once
        fault = inject_oom(ParticleStack, "images", above=32)
    else:  # inserting a chunk of more than 20 images runs out, twice (after other chunks went in)
        fault = inject_oom(Reconstructor, "_insert_slices", above=20, times=2, skip=1)
    with caplog.at_level(logging.WARNING, logger="cryolive"):
        hurt = reconstruct(stack, batch_size=64)
    assert fault.raised == (1 if where == "batch" else 2)
    lines = _halvings(caplog)
    assert len(lines) == fault.raised and lines[0].endswith("(back-projection)" if where == "batch" else
                                                           "(insertion)")
    assert lines[0].startswith("GPU out of memory at batch" if backend.backend_name() == "cupy" else
                               "Host out of memory at batch")
    assert "halving to" in lines[0]
    for name in ("half_a", "half_b", "map"):
        _same_maps(getattr(hurt, name), getattr(clean, name))
    assert np.array_equal(hurt.half_set, clean.half_set)


REFINE = dict(max_iter=2, global_iters=1, coarse_step_deg=15.0, levels=2, minibatch_iters=0, batch_size=64,
              greyscale=False, extra_final_passes=0)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["global search", "local search", "insertion"])
def test_refinement_goes_on_with_half_the_batch(xp_backend, tiny, inject_oom, caplog, where):
    stack, ref = tiny
    params = RefineParams(**REFINE)
    _, clean = drain(refine(stack, ref, params))
    if where == "insertion":  # inserting a chunk of more than 12 images runs out, twice
        fault = inject_oom(Reconstructor, "_insert_slices", above=12, times=2)
    else:
        # the second half set of a batch runs out after its poses and scales were written and the first half set
        # was done: the batch is rolled back and retried at 32, and again at 16 (32 runs out too). In iteration 1
        # (global search, 3 batches of 64 = 6 calls with more than 8 particles), or in iteration 2 (local search
        # from the poses the batch had written: without the roll-back the retry would start from those)
        fault = inject_oom(Scorer, "residual_power", above=8, times=2,
                           skip=1 if where == "global search" else 7, size=lambda proj, f, idx, *rest: len(idx))
    with caplog.at_level(logging.WARNING, logger="cryolive"):
        steps, hurt = drain(refine(stack, ref, params))
    assert len(steps) == params.max_iter and fault.raised == 2
    lines = _halvings(caplog)
    assert len(lines) == 2 and all("halving to" in line for line in lines)
    assert lines[0].endswith("(insertion)" if where == "insertion" else "at batch 64: halving to 32 (refinement)")
    for name in ("map", "half_a", "half_b"):
        _same_maps(getattr(hurt.final, name), getattr(clean.final, name))
    same = (np.abs(hurt.rotations - clean.rotations).max(axis=(1, 2)) < 1e-6) & \
        (np.abs(hurt.shifts_A - clean.shifts_A).max(axis=1) < 1e-6)
    assert same.mean() >= 0.99  # every pose on the CPU; a near tie may flip on a GPU (atomic adds)


def test_back_projection_batch_follows_free_device_memory(device_backend, tiny, inject_oom, monkeypatch):
    """(c) The batch is what the (mocked) free device memory holds at the per-image estimate, below --batch-size."""
    stack = tiny[0]
    per_image = BACKPROJECT_BYTES_PER_PIXEL * stack.box**2
    free = 50 * per_image * 2  # room for 50 images at the default half of the free memory
    monkeypatch.setattr(sys.modules["cupy"].cuda.runtime, "memGetInfo", lambda: (free, 4 * free))
    reads = inject_oom(ParticleStack, "images", above=10**9)  # records the batch sizes, never fails
    reconstruct(stack, batch_size=128)
    assert reads.sizes == [50, 50, 50, 10]
    reads.sizes.clear()
    reconstruct(stack, batch_size=32)  # the user's cap still holds
    assert reads.sizes == [32] * 5


@pytest.mark.slow
def test_classification_goes_on_with_half_the_batch(xp_backend, tiny, inject_oom, caplog):
    """3D classification with a local pose search: the batch runs out after its poses were searched (and written),
    twice; it is rolled back and retried at 32, then 16, and the classes come out as without the fault."""
    from cryolive.classification import ClassifyParams, classify

    classify_module = importlib.import_module("cryolive.classification.classify")

    params = ClassifyParams(n_classes=2, mode="local", max_iter=2, online_em_iters=0, anneal_iters=1,
                            batch_size=64)
    _, clean = drain(classify(tiny[0], params))
    fault = inject_oom(classify_module, "posteriors_from_scores", above=16, times=2)
    with caplog.at_level(logging.WARNING, logger="cryolive"):
        _, hurt = drain(classify(tiny[0], params))
    assert fault.raised == 2 and _halvings(caplog)[-1].endswith("halving to 16 (classification)")
    # the device path inserts with scatter-adds whose order follows the chunks (atomics on a GPU): rounding
    # differences in the maps (~1e-7) move posteriors by ~1e-4 (exp of a log-likelihood in the thousands)
    np.testing.assert_allclose(hurt.posteriors, clean.posteriors, atol=1e-3)
    assert np.array_equal(hurt.classes, clean.classes)
    for a, b in zip(hurt.final.class_maps, clean.final.class_maps, strict=True):
        _same_maps(a, b)


@pytest.mark.slow
def test_2d_classification_goes_on_with_half_the_batch(xp_backend, tiny, inject_oom, caplog):
    """2D classification: the E step runs out after its best hypotheses were written, before its sums change."""
    from cryolive.class2d.classify2d import Class2DParams, classify2d

    class2d_module = importlib.import_module("cryolive.class2d.classify2d")

    params = Class2DParams(k=2, max_iter=2, minibatch_iters=0, batch_size=64)
    _, clean = drain(classify2d(tiny[0], params))
    fault = inject_oom(class2d_module, "_origin_weights_to_fourier", above=40)
    with caplog.at_level(logging.WARNING, logger="cryolive"):
        _, hurt = drain(classify2d(tiny[0], params))
    assert fault.raised == 1 and _halvings(caplog)[-1].endswith("halving to 32 (2D classification)")
    _same_maps(hurt.averages, clean.averages)
    assert np.array_equal(hurt.assignments, clean.assignments)
    np.testing.assert_allclose(hurt.shifts_A, clean.shifts_A, atol=1e-6)
