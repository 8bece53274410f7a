"""Reconstruction from noisy CTF-modulated particles: the half-map FSC tells the truth.

The gold-standard FSC-0.143 resolution of the half maps must agree (within 10 %) with the resolution where the
FSC of the full map against the true map falls to 0.5 (Rosenthal & Henderson 2003): a map that reports a
resolution it does not have is a bug.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.backend import to_numpy, xp
from cryolive.image.ctf import ctf_2d
from cryolive.image.fourier import rfft2c
from cryolive.projection import Projector, Reconstructor
from cryolive.reconstruction import finalize_halves
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.simulator.particles import draw_truth, noise_sd_for_snr, simulate_batches
from cryolive.simulator.phantom import make_phantom, render


@pytest.mark.slow
def test_half_map_fsc_matches_fsc_against_truth(xp_backend):
    m = xp()
    n, apix, count = 64, 2.0, 4000
    vol = render(make_phantom(n, apix, seed=5), n, apix, sigma_A=1.6)
    truth = draw_truth(count, apix, defocus_range_A=(10000, 30000), seed=5)
    sd = noise_sd_for_snr([Projector(vol)], truth, snr=0.1)
    truth = type(truth)(**{**truth.__dict__, "noise_sd": sd})
    recs = {1: Reconstructor(n), 2: Reconstructor(n)}
    for idx, imgs in simulate_batches([vol], truth, batch_size=500, seed=5):
        f = rfft2c(m.asarray(imgs))
        ctf = ctf_2d(truth.ctf.subset(idx), n, apix)
        for h, rec in recs.items():
            sel = np.nonzero(truth.half_set[idx] == h)[0]
            rec.insert(f[m.asarray(sel)], truth.rotations[idx[sel]], ctf=ctf[m.asarray(sel)],
                       shifts=truth.shifts_A[idx[sel]] / apix)
    half_a, half_b, full = finalize_halves(recs[1], recs[2])
    res_half = resolution_at(fsc(half_a, half_b), n, apix, 0.143)
    res_truth = resolution_at(fsc(full, vol), n, apix, 0.5)
    # the data must not be so good that both sit at Nyquist (then the check would be empty)
    assert res_truth > 2 * apix * 1.05
    print(f"half-map FSC 0.143: {res_half:.2f} Å; full map vs truth FSC 0.5: {res_truth:.2f} Å")
    assert abs(res_half - res_truth) / res_truth <= 0.10, (res_half, res_truth)
    # and the map is the right map: correlation with the truth at low resolution is high
    assert fsc(full, vol)[1:6].min() > 0.95
    assert to_numpy(full).dtype == np.float32
