"""The global pose-search level: best pose, and posterior draws (stochastic global search)."""

import numpy as np

from cryolive.alignment import GridProjections, global_level


def _grid(g: int = 40, k: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    r = (rng.normal(size=(g, k)) + 1j * rng.normal(size=(g, k))).astype(np.complex64)
    grid = GridProjections(np.tile(np.eye(3), (g, 1, 1)), np.concatenate([r.real, r.imag], 1).astype(np.float32),
                           (np.abs(r) ** 2).astype(np.float32))
    kx = rng.uniform(-0.2, 0.2, k).astype(np.float32)
    ky = rng.uniform(-0.2, 0.2, k).astype(np.float32)
    return r, grid, kx, ky


def test_best_and_sampled_pose_agree_when_the_posterior_is_sharp():
    r, grid, kx, ky = _grid()
    b = 200
    y = np.repeat(r[7:8] * 5.0, b, axis=0)  # whitened images = a strong copy of grid projection 7
    c2w = np.full(y.shape, 5.0, np.float32)
    zero = np.zeros((1, 2))
    best, _ = global_level(grid, y, c2w, np.ones(b), zero, kx, ky, keep=3, bound_sigma=4.0)
    drawn, _ = global_level(grid, y, c2w, np.ones(b), zero, kx, ky, keep=3, bound_sigma=4.0,
                            rng=np.random.default_rng(1))
    assert np.all(best.rotations[:, 0] == grid.rotations[7])
    assert drawn.scores.shape == (b, 1)
    assert np.mean(np.all(drawn.rotations[:, 0] == grid.rotations[7], axis=(1, 2))) == 1.0


def test_sampled_poses_spread_when_the_posterior_is_flat():
    r, grid, kx, ky = _grid()
    b = 400
    y = np.zeros((b, r.shape[1]), np.complex64)  # no signal: every pose has the same log-likelihood up to norm
    c2w = np.full(y.shape, 1e-6, np.float32)
    zero = np.zeros((1, 2))
    grid_ids = np.arange(len(grid.rotations), dtype=float)
    grid.rotations[:, 0, 0] = grid_ids  # label the grid entries to count them
    best, _ = global_level(grid, y, c2w, np.ones(b), zero, kx, ky, keep=1, bound_sigma=4.0)
    drawn, _ = global_level(grid, y, c2w, np.ones(b), zero, kx, ky, keep=1, bound_sigma=4.0,
                            rng=np.random.default_rng(2))
    assert len(np.unique(best.rotations[:, 0, 0, 0])) == 1  # the best is one pose for every image
    counts = np.bincount(drawn.rotations[:, 0, 0, 0].astype(int), minlength=len(grid_ids))
    assert (counts > 0).mean() > 0.9 and counts.max() < 4 * b / len(grid_ids)
