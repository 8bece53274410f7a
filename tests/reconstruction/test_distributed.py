"""Back-projection on a Dask cluster gives the map a single process makes (issue 15: nothing ran beyond one
process)."""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.cli import main
from cryolive.io import read_map, read_particles
from cryolive.reconstruction import backproject_halves, finalize_halves, half_sets
from cryolive.sample import sample_path

pytest.importorskip("distributed")


def test_dask_workers_reproduce_the_single_process_map(tmp_path, capsys) -> None:
    from cryolive.reconstruction.distributed import backproject_halves_dask

    stack = read_particles(sample_path("particles.star")).subset(np.arange(600))
    half = half_sets(stack, 0)
    single = None
    for _d, recs in backproject_halves(stack, half, "D2", 128):
        single = recs
    streamed = list(backproject_halves_dask(stack, half, "D2", 128, workers=2, parts=3))
    assert [d for d, _ in streamed][-1] == len(stack) and len(streamed) == 3
    dist = streamed[-1][1]
    assert dist[0].n_images + dist[1].n_images == len(stack)
    for a, b in zip(finalize_halves(*single, prior=False), finalize_halves(*dist, prior=False), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    # the CLI: same map from --workers 2 as from one process
    one, two = tmp_path / "one.mrc", tmp_path / "two.mrc"
    assert main(["reconstruct", str(sample_path("particles.star")), "--out", str(one)]) == 0
    assert main(["reconstruct", str(sample_path("particles.star")), "--out", str(two), "--workers", "2"]) == 0
    assert "Dask dashboard: http" in capsys.readouterr().out
    va, vb = read_map(one)[0], read_map(two)[0]
    assert np.abs(va - vb).max() <= 1e-4 * np.abs(va).max()
