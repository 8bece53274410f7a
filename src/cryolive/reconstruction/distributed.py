"""Known-pose back-projection spread over Dask workers (dask.distributed), beyond one process or machine.

The particles are cut into contiguous parts; each worker reads its part of the (memory-mapped) stack, inserts it
into its own pair of half-set :class:`~cryolive.projection.Reconstructor` accumulators
(:func:`~cryolive.reconstruction.halves.backproject_halves`) and sends them back; the driver adds them
(:meth:`Reconstructor.add`) as they arrive. The sums are those a single process makes, in another order: the maps
agree to float32 rounding.

:func:`dask_client` starts a ``LocalCluster`` of ``workers`` processes (one thread each) or joins an existing
scheduler (``tcp://host:8786``); its dashboard address is ``client.dashboard_link`` (:func:`describe_client` makes
the job-log line). Refinement runs its iterations on the same clients (:mod:`cryolive.refinement.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from cryolive.io import InputError, ParticleStack
from cryolive.projection import Reconstructor
from cryolive.reconstruction.halves import backproject_halves


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: on a new ``LocalCluster`` of ``workers`` processes (one thread each), or on the
    scheduler at ``scheduler``. Closed (and the local cluster stopped) on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--workers / --scheduler need dask.distributed: pip install 'dask[distributed]'") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        try:
            yield client
        finally:
            client.close()
        return
    if not workers or workers < 1:
        raise InputError(f"--workers must be at least 1 (got {workers})")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


@contextmanager
def optional_dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """:func:`dask_client` when ``workers`` or ``scheduler`` is given, else None (everything in this process)."""
    if not (workers or scheduler):
        yield None
        return
    with dask_client(workers, scheduler) as client:
        yield client


def describe_client(client: Any) -> str:
    """The job-log line of a Dask client: ``Dask: <n> workers, dashboard <link>``."""
    return f"Dask: {len(client.scheduler_info().get('workers', {}))} workers, dashboard {client.dashboard_link}"


def _backproject_part(stack: ParticleStack, idx: np.ndarray, half: np.ndarray, symmetry: str,
                      batch_size: int) -> tuple[Reconstructor, Reconstructor]:
    """Both half-set accumulators of the particles ``idx`` (runs on a worker)."""
    last = None
    for _done, recs in backproject_halves(stack.subset(idx), half[idx], symmetry, batch_size):
        last = recs
    assert last is not None
    return last


def backproject_halves_dask(stack: ParticleStack, half: np.ndarray, symmetry: str = "C1", batch_size: int = 256, *,
                            workers: int | None = None, scheduler: str | None = None, parts: int | None = None,
                            on_client: Callable[[Any], None] | None = None,
                            ) -> Iterator[tuple[int, tuple[Reconstructor, Reconstructor]]]:
    """:func:`~cryolive.reconstruction.halves.backproject_halves` over Dask workers (:func:`dask_client` with
    ``workers`` or ``scheduler``), with the same stream: ``(n_done, (rec_A, rec_B))`` after each part arrives.

    ``half``: ``(N,)`` labels in ``{1, 2}``; ``parts``: how many pieces the particles are cut into (default: 2 per
    worker); ``on_client(client)`` is called once connected (e.g. to log ``client.dashboard_link``).
    """
    from distributed import as_completed

    if stack.rotations is None:
        raise InputError(f"{stack.source}: the particles have no poses (rlnAngleRot/Tilt/Psi); "
                         "a known-pose reconstruction needs them")
    n = len(stack)
    with dask_client(workers, scheduler) as client:
        if on_client is not None:
            on_client(client)
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        pieces = [p for p in np.array_split(np.arange(n), min(n, parts or 2 * n_workers)) if len(p)]
        remote_stack = client.scatter(stack, broadcast=True)
        futures = {client.submit(_backproject_part, remote_stack, idx, half, symmetry, batch_size, pure=False):
                   len(idx) for idx in pieces}
        recs = (Reconstructor(stack.box, symmetry=symmetry), Reconstructor(stack.box, symmetry=symmetry))
        done = 0
        for fut in as_completed(futures):
            part_a, part_b = fut.result()
            recs[0].add(part_a)
            recs[1].add(part_b)
            done += futures[fut]
            fut.release()
            yield done, recs
