"""Batches that fit the device: a size chosen from free memory, halved on out-of-memory.

:class:`AdaptiveBatch` runs a per-batch *step* over consecutive index ranges ``[start, stop)`` of ``n`` items and
yields each result. The first size is the smaller of the user's cap (``--batch-size``) and what the free device
memory holds at the caller's per-item estimate (:func:`batch_size_for`, ``FREE_FRACTION`` of
:func:`~cryolive.backend.free_device_bytes`); on NumPy there is no device figure and the cap is used. When a step
raises an out-of-memory error (:func:`~cryolive.backend.is_out_of_memory`), CuPy's memory pool is emptied, the batch
halved (and the halved size kept as the cap of every later run of the same object, so the next iteration does not
run out again), one line is logged through the ``cryolive`` logger (``GPU out of memory at batch 256: halving to
128``), and the same range is retried in smaller pieces. A batch of 1 that still fails raises
:class:`~cryolive.backend.OutOfDeviceMemory`, a ``MemoryError`` with a clear message, which no enclosing batch loop
retries.

The contract that makes a retry safe: **a step either completes or changes nothing the job keeps.** A caller puts in
the step everything that allocates on the device (reading images, transforms, pose search, scores, the batch's own
residual sums) and returns the batch's contributions; it *commits* them in its loop body, after the step has
succeeded (exceptions there are not retried). Host state that a step writes as it goes (poses, scales, posteriors,
a random generator) is put back by :func:`rollback` when the step raises. Accumulators on the device are added last:
:meth:`cryolive.projection.Reconstructor.insert` chunks its images with an AdaptiveBatch of its own whose every
chunk is one all-or-nothing :func:`~cryolive.backend.scatter_add_all`, so an insertion never stops half-way on
out-of-memory (only the final ``OutOfDeviceMemory`` ends the job). Results do not depend on the split beyond
float rounding, as long as the per-item work does not (a random generator consumed per batch in stochastic modes
is the exception: its draws follow the order of the batches, as they did with another ``--batch-size``).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from cryolive.backend import (
    OutOfDeviceMemory,
    backend_name,
    free_device_bytes,
    free_memory_pool,
    is_out_of_memory,
)

T = TypeVar("T")
_log = logging.getLogger("cryolive")

#: share of the free device memory a batch may plan to use (the rest covers the estimate's error, the pool's
#: fragmentation and the arrays that do not scale with the batch)
FREE_FRACTION = 0.5


def batch_size_for(limit: int | None, item_bytes: float | None, free_bytes: int | None = None,
                   fraction: float = FREE_FRACTION) -> int | None:
    """The batch size that ``fraction`` of ``free_bytes`` holds at ``item_bytes`` per item, at least 1 and at most
    ``limit`` (None: no cap). ``free_bytes`` None (NumPy, or no estimate given): ``limit``."""
    if free_bytes is None or not item_bytes or item_bytes <= 0:
        return limit
    fit = max(1, int(fraction * free_bytes // item_bytes))
    return fit if limit is None else max(1, min(int(limit), fit))


class AdaptiveBatch:
    """Run a step over index ranges with a batch size that follows the device's free memory (see the module).

    ``limit``: the user's cap (``--batch-size``; None: no cap, as for the insertion chunks of a reconstructor);
    ``label``: what the batches are, for the log line and the error. ``size`` is the cap in force: the limit,
    lowered by every out-of-memory halving.
    """

    def __init__(self, limit: int | None = None, label: str = "", fraction: float = FREE_FRACTION) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"batch size must be at least 1 (got {limit})")
        self.size: int | None = limit
        self.label = label
        self.fraction = fraction
        self.halvings = 0

    def planned(self, item_bytes: float | None = None) -> int | None:
        """The batch size the next run starts from: the cap, lowered to what the free device memory holds at
        ``item_bytes`` per item (None: the cap)."""
        free = free_device_bytes() if item_bytes else None
        return batch_size_for(self.size, item_bytes, free, self.fraction)

    def run(self, n: int, step: Callable[[int, int], T], item_bytes: float | None = None
            ) -> Iterator[tuple[int, int, T]]:
        """Yield ``(start, stop, step(start, stop))`` for consecutive ranges covering ``0..n``.

        ``step`` must complete or change nothing (module docstring); on out-of-memory its range is retried with
        half the batch. Commit the result in the loop body: an exception there is not retried.
        """
        size = self.planned(item_bytes) or max(n, 1)
        start = 0
        while start < n:
            stop = min(n, start + size)
            failed = 0
            try:
                result = step(start, stop)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                failed = stop - start
                if failed <= 1:
                    raise OutOfDeviceMemory(self._exhausted(exc)) from exc
            if not failed:
                yield start, stop, result
                del result  # the caller has committed it: free its device arrays before the next step
                start = stop
                continue
            # out of the except clause: the failed step's frames (and the arrays they held) are released by now
            size = self._halve(failed)

    def _halve(self, failed: int) -> int:
        """Empty the memory pool, halve the failed batch, keep it as the cap, log it; the new size."""
        gc.collect()  # arrays held by reference cycles of the failed step (rare: this runs once per halving)
        free_memory_pool()
        new = max(1, failed // 2)
        self.size = new if self.size is None else min(self.size, new)
        self.halvings += 1
        where = "GPU" if backend_name() == "cupy" else "Host"
        _log.warning("%s out of memory at batch %d: halving to %d%s", where, failed, new,
                     f" ({self.label})" if self.label else "")
        return new

    def _exhausted(self, exc: BaseException) -> str:
        what = f" ({self.label})" if self.label else ""
        free = free_device_bytes()
        have = f"; {free / 2**30:.2f} GiB free on the device" if free is not None else ""
        return (f"out of memory with a batch of one{what}{have}: {exc or type(exc).__name__}. Choose a smaller "
                "box, class box or alignment resolution, or free the device of other work")


@contextmanager
def rollback(rows: Any, arrays: Sequence[np.ndarray], rng: np.random.Generator | None = None) -> Iterator[None]:
    """Put ``arrays[rows]`` (host arrays indexed by item along their first axis) and ``rng``'s state back as they
    were if the block raises, so that a batch step that writes host state as it goes can be retried."""
    saved = [a[rows].copy() for a in arrays]
    state = None if rng is None else rng.bit_generator.state
    try:
        yield
    except BaseException:
        for a, s in zip(arrays, saved, strict=True):
            a[rows] = s
        if rng is not None:
            rng.bit_generator.state = state
        raise


#: rotations a local search level scores around each candidate pose (the lattice ball of two steps,
#: :func:`cryolive.rotations.grids.local_offsets`)
LOCAL_POSES = 33


def pose_search_bytes(pixels: int, poses: int, box: int) -> float:
    """Rough device bytes per image of a pose-search batch that scores ``poses`` rotations (each at 9 origins) at
    ``pixels`` Fourier pixels (slices, phases and their products: about 48 bytes each), plus the image transforms
    of a ``box``. Only sizes the first batch: an underestimate costs one halving, an overestimate a smaller batch."""
    return 48.0 * pixels * max(poses, 1) + 64.0 * box * box
