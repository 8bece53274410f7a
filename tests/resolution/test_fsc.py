"""FSC, resolution read-out and the gold-standard FSC with phase-randomisation mask correction."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from cryolive.backend import asarray, to_numpy
from cryolive.masks import mask_volume_fraction, threshold_mask
from cryolive.resolution import (
    FSCResult,
    fsc,
    fsc_weight,
    gold_standard_fsc,
    phase_randomize,
    resolution_at,
    shell_frequencies,
    shell_voxel_counts,
    ssnr_from_fsc,
)


@pytest.fixture(autouse=True)
def _every_backend(xp_backend):
    """Run each test once per available backend (NumPy; CuPy too when a GPU is usable)."""
    return xp_backend


def _noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32)


def _phantom(n: int, seed: int, n_blobs: int = 150, spread_px: float = 10.0) -> np.ndarray:
    """A smooth random density: a sum of Gaussian blobs (σ 1–2 voxels) around the box centre."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32) - n // 2
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(n_blobs):
        c = rng.normal(0.0, spread_px, 3)
        s = rng.uniform(1.0, 2.0)
        a = rng.uniform(0.5, 1.0)
        vol += a * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * s * s))
    return vol


@pytest.mark.parametrize("n", [32, 33])
def test_fsc_of_map_with_itself_is_one(n: int) -> None:
    v = asarray(_noise(n, 3) + 0.1)
    curve = fsc(v, v)
    assert curve.shape == (n // 2 + 1,)
    assert curve.dtype == np.float64
    np.testing.assert_allclose(curve, 1.0, atol=1e-6)
    # a scaled copy too, and with a mask
    np.testing.assert_allclose(fsc(v, 3.0 * v), 1.0, atol=1e-6)
    mask = asarray(np.ones((n, n, n), np.float32))
    np.testing.assert_allclose(fsc(v, v, mask), 1.0, atol=1e-6)


@pytest.mark.parametrize("n", [48, 49])
def test_fsc_of_independent_noise_is_within_three_sigma(n: int) -> None:
    a = asarray(_noise(n, 10))
    b = asarray(_noise(n, 11))
    curve = fsc(a, b)
    counts = shell_voxel_counts(n)
    bound = 3.0 / np.sqrt(counts)
    # per shell: |FSC| ≤ 3/sqrt(voxels in shell) (the FSC of noise has σ ≈ 1/sqrt(N); fixed seeds, so exact)
    assert np.all(np.abs(curve) <= bound), np.nonzero(np.abs(curve) > bound)
    # over more seeds, ≥ 95 % of the shells stay inside the bound
    inside = [
        np.abs(fsc(asarray(_noise(n, 2 * s)), asarray(_noise(n, 2 * s + 1)))) <= bound for s in range(20, 24)
    ]
    assert np.mean(inside) >= 0.95
    # and the mean over shells 1.. is small: its standard deviation is sqrt(Σ 1/N_k) / K
    k = curve[1:]
    assert abs(k.mean()) <= 3.0 * np.sqrt(np.sum(1.0 / counts[1:])) / k.size


def test_fsc_rejects_bad_input() -> None:
    a = asarray(np.zeros((8, 8, 8), np.float32))
    with pytest.raises(ValueError, match="cubic"):
        fsc(asarray(np.zeros((8, 8, 9), np.float32)), asarray(np.zeros((8, 8, 9), np.float32)))
    with pytest.raises(ValueError, match="shape"):
        fsc(a, asarray(np.zeros((10, 10, 10), np.float32)))
    with pytest.raises(ValueError, match="mask"):
        fsc(a, a, asarray(np.zeros((4, 4, 4), np.float32)))


def test_shell_frequencies_and_counts() -> None:
    f = shell_frequencies(64, 2.0)
    assert f.shape == (33,)
    assert f[0] == 0.0
    assert f[32] == pytest.approx(0.25)  # Nyquist = 1/(2 p)
    counts = shell_voxel_counts(64)
    assert counts[0] == 1
    # the shells cover a ball: Σ counts ≈ (4/3) π (32.5)³
    assert counts.sum() == pytest.approx(4.0 / 3.0 * np.pi * 32.5**3, rel=0.01)


def test_resolution_at_logistic_curve() -> None:
    n, p = 128, 1.2
    freq = shell_frequencies(n, p)
    s_half, width = 0.2, 0.03  # 1/Å
    curve = 1.0 / (1.0 + np.exp((freq - s_half) / width))
    for thr in (0.143, 0.5):
        s_thr = s_half + width * np.log(1.0 / thr - 1.0)
        assert resolution_at(curve, n, p, thr) == pytest.approx(1.0 / s_thr, rel=0.01)


def test_resolution_at_edge_cases() -> None:
    n, p = 64, 1.5
    assert resolution_at(np.ones(33), n, p, 0.143) == pytest.approx(2 * p)  # never below -> Nyquist
    below_at_1 = np.r_[1.0, 0.1, np.zeros(31)]
    assert resolution_at(below_at_1, n, p, 0.143) == pytest.approx(n * p)
    # a crossing exactly halfway between shells 10 and 11
    c = np.r_[np.ones(11), np.zeros(22)]
    c[10], c[11] = 0.2, 0.086
    assert resolution_at(c, n, p, 0.143) == pytest.approx(n * p / 10.5)


def test_fsc_weight_and_ssnr() -> None:
    curve = np.array([1.0, 0.5, 0.143, 0.0, -0.2])
    w = fsc_weight(curve)
    np.testing.assert_allclose(w, [1.0, np.sqrt(2 / 3), np.sqrt(0.286 / 1.143), 0.0, 0.0])
    s_half = ssnr_from_fsc(np.array([0.5, 0.0, 1.0]), full_set=False)
    np.testing.assert_allclose(s_half, [1.0, 1e-3 / (1 - 1e-3), 0.999 / 0.001])
    np.testing.assert_allclose(ssnr_from_fsc(np.array([0.5])), [2.0])


def test_phase_randomize_keeps_amplitudes_and_is_real() -> None:
    n = 32
    v = asarray(_phantom(n, 2, n_blobs=20, spread_px=5.0))
    r = phase_randomize(v, 6, seed=1)
    # the map stays real, low shells untouched, high shells decorrelated
    assert r.dtype == np.float32
    curve = fsc(v, r)
    np.testing.assert_allclose(curve[:6], 1.0, atol=1e-4)
    counts = shell_voxel_counts(n)
    assert np.all(np.abs(curve[8:]) < 4.0 / np.sqrt(counts[8:]))
    amp_v = np.abs(np.fft.fftn(to_numpy(v)))
    amp_r = np.abs(np.fft.fftn(to_numpy(r)))
    np.testing.assert_allclose(amp_r, amp_v, rtol=1e-3, atol=1e-3 * amp_v.max())


@pytest.fixture(scope="module")
def simulated_halves() -> dict[str, object]:
    n, p, sigma = 64, 2.0, 0.3
    truth = _phantom(n, 2)
    rng = np.random.default_rng(7)
    half_a = truth + sigma * rng.standard_normal(truth.shape).astype(np.float32)
    half_b = truth + sigma * rng.standard_normal(truth.shape).astype(np.float32)
    return {"n": n, "p": p, "truth": truth, "a": half_a, "b": half_b}


def _on_backend(s: dict) -> dict:
    """The simulated maps moved to the current backend (the fixture itself holds NumPy arrays)."""
    return {k: asarray(v) if isinstance(v, np.ndarray) else v for k, v in s.items()}


def test_gold_standard_unmasked(simulated_halves: dict) -> None:
    s = _on_backend(simulated_halves)
    r = gold_standard_fsc(s["a"], s["b"], s["p"])
    assert isinstance(r, FSCResult)
    assert r.fsc_masked is None and r.fsc_phase_randomized is None and r.fsc_corrected is None
    assert r.randomize_from is None
    np.testing.assert_array_equal(r.fsc, r.fsc_unmasked)
    full = (s["a"] + s["b"]) / 2
    truth_res = resolution_at(fsc(full, s["truth"]), s["n"], s["p"], 0.5)
    assert r.res_0143 == pytest.approx(truth_res, rel=0.10)
    assert r.res_05 > r.res_0143


def test_gold_standard_masked_matches_truth(simulated_halves: dict) -> None:
    s = _on_backend(simulated_halves)
    n, p = s["n"], s["p"]
    loose = threshold_mask(s["truth"], 0.05, 6.0, 6.0, p)
    assert 0.15 < mask_volume_fraction(loose) < 0.5
    r = gold_standard_fsc(s["a"], s["b"], p, loose, seed=3)
    full = (s["a"] + s["b"]) / 2
    truth_res = resolution_at(fsc(full, s["truth"], loose), n, p, 0.5)
    assert r.res_0143 == pytest.approx(truth_res, rel=0.10)
    # masking removes solvent noise: better than unmasked
    assert r.res_0143 < resolution_at(r.fsc_unmasked, n, p, 0.143)
    # randomisation starts where the unmasked FSC falls below 0.8
    k_r = r.randomize_shell
    assert r.fsc_unmasked[k_r] < 0.8 <= r.fsc_unmasked[1:k_r].min()
    assert r.randomize_from == pytest.approx(n * p / k_r)
    np.testing.assert_array_equal(r.fsc, r.fsc_corrected)


def test_gold_standard_tight_mask_is_corrected(simulated_halves: dict) -> None:
    s = _on_backend(simulated_halves)
    n, p = s["n"], s["p"]
    tight = threshold_mask(s["truth"], 0.05, 0.0, 2.0, p)  # no dilation: cuts into the density
    r = gold_standard_fsc(s["a"], s["b"], p, tight, seed=5)
    hi = slice(n // 4, None)
    # the mask alone correlates the phase-randomised maps at high frequency ...
    assert r.fsc_phase_randomized[hi].mean() > 0.02
    # ... so the raw masked FSC is inflated there, and the corrected one is lower
    assert (r.fsc_masked - r.fsc_corrected)[hi].mean() > 0.02
    start = r.randomize_shell + 2
    np.testing.assert_array_equal(r.fsc_corrected[:start], r.fsc_masked[:start])
    assert np.all(r.fsc_corrected[start:] <= r.fsc_masked[start:] + 0.02)
    assert r.res_0143 > resolution_at(r.fsc_masked, n, p, 0.143)


def test_fsc_result_to_csv(tmp_path, simulated_halves: dict) -> None:
    s = _on_backend(simulated_halves)
    loose = threshold_mask(s["truth"], 0.05, 6.0, 6.0, s["p"])
    path = tmp_path / "fsc.csv"
    r = gold_standard_fsc(s["a"], s["b"], s["p"], loose)
    r.to_csv(path)
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "shell",
        "freq_1_per_A",
        "resolution_A",
        "fsc_unmasked",
        "fsc_masked",
        "fsc_phase_randomized",
        "fsc_corrected",
    ]
    assert len(rows) == s["n"] // 2 + 1
    assert float(rows[16]["resolution_A"]) == pytest.approx(s["n"] * s["p"] / 16)
    assert float(rows[16]["fsc_corrected"]) == pytest.approx(r.fsc_corrected[16], abs=1e-6)
    gold_standard_fsc(s["a"], s["b"], s["p"]).to_csv(path)
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert rows[5]["fsc_masked"] == "" and rows[5]["fsc_unmasked"] != ""
