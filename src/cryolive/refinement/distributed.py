"""A refinement iteration's E + M step spread over Dask workers (dask.distributed).

:class:`DaskParts` holds a ``distributed.Client`` for the whole refinement (opened by the caller with
:func:`cryolive.reconstruction.distributed.dask_client`: a ``LocalCluster`` of ``workers`` processes, or an
existing scheduler). The particle stack is scattered to every worker once (it pickles without its memory maps:
each worker maps the stack files itself and reads only its share). Each iteration the driver cuts the subset into
contiguous parts (default: 2 per worker), sends the iteration's :class:`~cryolive.refinement.estep.IterationContext`
once to every worker, and submits one :func:`~cryolive.refinement.estep.run_part` per part: the worker builds its
own projectors and grid projections from the references, searches and inserts its particles into its own half-set
reconstructors and sends them back with the new poses. The driver adds the parts in part order
(:func:`~cryolive.refinement.estep.merge_parts`), so a run repeats exactly; the result is the one process's up to
float rounding of the sums (each particle's search does not depend on its part), except for stochastic global
search, whose draws come from a generator per part (:func:`~cryolive.refinement.estep.part_rng`).
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from typing import Any

import numpy as np

from cryolive.backend import to_numpy
from cryolive.io import ParticleStack
from cryolive.refinement.estep import (
    IterationContext,
    PartResult,
    Poses,
    build_models,
    merge_parts,
    part_rng,
    run_part,
)

#: on a worker: the projectors and grid projections of the iteration context it holds now (see _worker_models)
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.RLock()


def _forget(ref: weakref.ref) -> None:
    with _MODELS_LOCK:
        if _MODELS.get("ctx") is ref:
            _MODELS.clear()


def _worker_models(ctx: IterationContext) -> list:
    """The projectors and grid projections of ``ctx`` on this worker: built by the first of its parts to run here,
    reused by the others (the context is scattered once per iteration, so its parts on a worker share one object)
    and dropped when the worker forgets the context (after the iteration)."""
    with _MODELS_LOCK:
        ref = _MODELS.get("ctx")
        if ref is not None and ref() is ctx:
            return _MODELS["models"]
        _MODELS.clear()
        models = build_models(ctx)
        _MODELS.update(ctx=weakref.ref(ctx, _forget), models=models)
        return models


def _part_task(stack: ParticleStack, ctx: IterationContext, idx: np.ndarray, poses: Poses, half: np.ndarray,
               seed: tuple[int, int, int]) -> PartResult:
    """One part on a worker (:func:`run_part` with its own batches and, for stochastic search, :func:`part_rng`)."""
    return run_part(stack, ctx, idx, poses, half, rng=part_rng(*seed) if ctx.sample else None,
                    models=_worker_models(ctx))


def _warm_up() -> None:
    """Import the E step and load its compiled kernels on a worker, while the driver prepares the first
    iteration."""
    from cryolive.projection import Projector, Reconstructor

    Projector(np.ones((8, 8, 8), np.float32)).slices(np.eye(3)[None])
    Reconstructor(8).insert(np.ones((1, 8, 5), np.complex64), np.eye(3)[None])


def portable(ctx: IterationContext) -> IterationContext:
    """``ctx`` with NumPy arrays (references, window), as it travels to the workers."""
    refs = tuple(np.asarray(to_numpy(r), dtype=np.float32) for r in ctx.refs)
    return dataclasses.replace(ctx, refs=refs, window=np.asarray(to_numpy(ctx.window), dtype=np.float32))


class DaskParts:
    """Runs the parts of each iteration on ``client``'s workers (see the module). ``parts``: how many pieces the
    subset of an iteration is cut into (default: 2 per worker)."""

    def __init__(self, client: Any, stack: ParticleStack, parts: int | None = None) -> None:
        self.client = client
        self.stack = stack
        self.parts = parts
        self._remote_stack: Any = None
        # one warm-up per worker, queued before any part (held here so that it is not cancelled)
        self._warming = [client.submit(_warm_up, pure=False, workers=[w])
                         for w in client.scheduler_info().get("workers", {})]

    @property
    def n_workers(self) -> int:
        """Workers the scheduler knows now (at least 1)."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def run(self, ctx: IterationContext, subset: np.ndarray, poses: Poses, half: np.ndarray, iteration: int,
            seed: int) -> PartResult:
        """The E + M step of particles ``subset`` (poses ``poses`` and half sets ``half``, one row per entry of
        ``subset``) over the workers: the parts' sum (:func:`merge_parts`)."""
        client = self.client
        if self._remote_stack is None:
            self._remote_stack = client.scatter(self.stack, broadcast=True)
        n = len(subset)
        pieces = [r for r in np.array_split(np.arange(n), min(n, self.parts or 2 * self.n_workers)) if len(r)]
        remote_ctx = client.scatter(portable(ctx), broadcast=True)
        futures = [client.submit(_part_task, self._remote_stack, remote_ctx, subset[r], poses.take(r), half[r],
                                 (seed, iteration, k), pure=False) for k, r in enumerate(pieces)]
        del remote_ctx  # the tasks hold it while they run

        def arrived() -> Any:
            for fut in futures:  # in part order: the sums are the same every run
                part = fut.result()
                fut.release()
                yield part

        return merge_parts(arrived())
