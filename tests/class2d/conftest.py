"""Simulated 2D-classification data: a phantom at a few distinct views with in-plane rotations, origins, CTF and
noise, plus 20 % junk (noise only, carbon edges, two particles in one box), with the truth."""

from __future__ import annotations

import pytest

from cryolive.simulator.phantom import make_phantom, render
from cryolive.simulator.views2d import simulate_views


def make_views(folder, box: int, apix: float, n_views: int, per_view: int, snr: float, seed: int = 0):
    """``(particles.star, ViewsTruth)`` of a phantom (fills ~55 % of the box) at ``n_views`` views + 20 % junk."""
    vol = render(make_phantom(box, apix, seed=1), box, apix, 1.6)
    return simulate_views(folder, vol, apix, n_views=n_views, per_view=per_view, junk_fraction=0.2, snr=snr,
                          max_shift_px=3.0, seed=seed)


@pytest.fixture(scope="session")
def small_views(tmp_path_factory):
    """A tiny set for the job / CLI tests: box 32, 4 Å/px, 2 views x 40 particles + 20 junk, SNR 0.1."""
    return make_views(tmp_path_factory.mktemp("views_small") / "data", 32, 4.0, 2, 40, 0.1)


@pytest.fixture(scope="session")
def views_maker():
    """:func:`make_views` for tests that simulate their own set."""
    return make_views
