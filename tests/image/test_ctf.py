"""CTF values, sign convention, zeros and CTF correction (RELION convention, docs/conventions.md)."""

from __future__ import annotations

import math

import numpy as np

from cryolive.backend import to_numpy
from cryolive.image.ctf import CTFParams, ctf_2d, ctf_values, electron_wavelength, phase_flip, wiener_combine
from cryolive.image.fourier import rfft2c


def _hand_ctf(s, theta, du, dv, ang, kv, cs_mm, q, ps=0.0, b=0.0):
    """The formula of docs/conventions.md written out independently with the math module."""
    v = kv * 1e3
    lam = 12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v))
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * math.cos(2 * (theta - ang))
    chi = (math.pi * lam * df * s * s - 0.5 * math.pi * cs_mm * 1e7 * lam**3 * s**4 + ps
           + math.atan(q / math.sqrt(1 - q * q)))
    return math.sin(chi) * math.exp(-b * s * s / 4)


def test_wavelength_300kv():
    assert abs(float(electron_wavelength(300.0)) - 0.019687) < 1e-5


def test_hand_checked_values(xp_backend):
    p = CTFParams.make(15000.0, 14000.0, math.radians(30), 300.0, 2.7, 0.07, 0.2, 40.0, 1.0)
    for s, th in [(0.0, 0.0), (0.02, 0.3), (0.05, 1.2), (0.11, -2.0), (0.24, 2.9)]:
        got = float(to_numpy(ctf_values(p, np.array([s]), np.array([th])))[0, 0])
        want = _hand_ctf(s, th, 15000.0, 14000.0, math.radians(30), 300.0, 2.7, 0.07, 0.2, 40.0)
        assert abs(got - want) < 1e-5, (s, th, got, want)


def test_dc_sign_and_first_zero(xp_backend):
    q, df = 0.1, 20000.0
    p = CTFParams.make(df, df, 0.0, 300.0, 0.0, q)
    assert abs(float(to_numpy(ctf_values(p, np.array([0.0]), np.array([0.0])))[0, 0]) - q) < 1e-6
    lam = float(electron_wavelength(300.0))
    s0 = math.sqrt((math.pi - math.atan(q / math.sqrt(1 - q * q))) / (math.pi * lam * df))
    s_peak = math.sqrt((math.pi / 2 - math.atan(q / math.sqrt(1 - q * q))) / (math.pi * lam * df))
    s = np.array([s_peak, 0.999 * s0, s0, 1.001 * s0])
    vals = to_numpy(ctf_values(p, s, np.zeros(4)))[0]
    assert abs(vals[0] - 1.0) < 1e-5 and vals[1] > 0 and abs(vals[2]) < 1e-5 and vals[3] < 0
    # underfocus: rises from +Q towards +1 before the first zero (bright particles)
    ramp = to_numpy(ctf_values(p, np.linspace(0, 0.7 * s0, 20), np.zeros(20)))[0]
    assert np.all(np.diff(ramp) > 0)


def test_astigmatism_direction(xp_backend):
    # the defocus along the astigmatism angle is U, perpendicular to it V
    ang = math.radians(40)
    p = CTFParams.make(20000.0, 10000.0, ang, 300.0, 0.0, 0.0)
    lam = float(electron_wavelength(300.0))
    s = math.sqrt(0.5 / (lam * 20000.0))  # chi = pi/2 for U -> CTF = 1 along U
    v = to_numpy(ctf_values(p, np.array([s, s]), np.array([ang, ang + math.pi / 2])))[0]
    assert abs(v[0] - 1.0) < 1e-5
    assert abs(v[1] - math.sin(math.pi / 4)) < 1e-5


def test_phase_flip_recovers_abs_ctf_times_signal(xp_backend):
    m = xp_backend
    rng = np.random.default_rng(0)
    img = m.asarray(rng.normal(size=(2, 64, 64)).astype(np.float32))
    f = rfft2c(img)
    c = ctf_2d(CTFParams.make([12000.0, 25000.0], [11000.0, 24000.0], [0.3, 1.0]), 64, 1.5)
    flipped = phase_flip(c * f, c)
    assert float(m.abs(flipped - m.abs(c) * f).max()) < 1e-4


def test_wiener_combine_fills_ctf_zeros(xp_backend):
    m = xp_backend
    rng = np.random.default_rng(0)
    truth = m.asarray(rng.normal(size=(1, 64, 64)).astype(np.float32))
    f = rfft2c(truth)
    df = np.linspace(8000, 30000, 40)
    c = ctf_2d(CTFParams.make(df), 64, 1.5)
    est = wiener_combine(c * f, c, k=1e-3)
    err = to_numpy(m.abs(est - f[0]) / (m.abs(f[0]) + 1e-3))
    assert np.median(err) < 0.01
