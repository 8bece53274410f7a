"""Shared data for the tests that compare cryolive with RELION run on the same files (skipped without RELION)."""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.simulator.phantom import make_phantom, render
from cryolive.simulator.relion import RelionDataset, relion_available, relion_simulate

needs_relion = pytest.mark.skipif(not relion_available("relion_project"),
                                  reason="RELION is not installed (apt-get install relion; make test installs it)")

BOX, APIX = 48, 2.5


@pytest.fixture(scope="session")
def relion_c1(tmp_path_factory: pytest.TempPathFactory) -> RelionDataset:
    """2,000 particles of a C1 pseudo-atom phantom made by relion_project (box 48, 2.5 Å/px, SNR 0.05)."""
    vol = render(make_phantom(BOX, APIX, seed=3), BOX, APIX)
    return relion_simulate(tmp_path_factory.mktemp("relion_c1"), vol, APIX, n=2000, snr=0.05, seed=1)


@pytest.fixture(scope="session")
def relion_d2(tmp_path_factory: pytest.TempPathFactory) -> RelionDataset:
    """1,000 particles of a D2 phantom made by relion_project (box 48, 2.5 Å/px, SNR 0.05)."""
    vol = render(make_phantom(BOX, APIX, seed=5, symmetry="D2"), BOX, APIX)
    return relion_simulate(tmp_path_factory.mktemp("relion_d2"), vol, APIX, n=1000, snr=0.05, seed=2)


def truth_of(ds: RelionDataset) -> np.ndarray:
    from cryolive.io import read_map

    return read_map(ds.truth_map)[0]
