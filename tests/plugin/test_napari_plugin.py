"""The napari side: manifest, reader, writer and sample data, in a real viewer under Xvfb."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cryolive.io import read_map, write_map
from cryolive.sample import sample_path

pytestmark = pytest.mark.gui
REPO = Path(__file__).resolve().parents[2]


def test_manifest_found_by_npe2():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("cryolive")
    assert mf.name == "cryolive"
    keys = {s.key for s in mf.contributions.sample_data}
    assert keys == {"sample_map", "sample_particles"}
    patterns = mf.contributions.readers[0].filename_patterns
    assert {"*.mrc", "*.mrcs", "*.map", "*.star", "*.cs"} <= set(patterns)


def test_reader_opens_map_with_voxel_size(make_napari_viewer, tmp_path):
    vol = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
    path = tmp_path / "m.mrc"
    write_map(path, vol, 1.7)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="cryolive")
    assert len(layers) == 1
    np.testing.assert_allclose(layers[0].scale, (1.7, 1.7, 1.7))
    np.testing.assert_array_equal(np.asarray(layers[0].data), vol)


def test_writer_round_trip(make_napari_viewer, tmp_path):
    vol = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    viewer = make_napari_viewer()
    layer = viewer.add_image(vol, scale=(2.5, 2.5, 2.5), name="v")
    out = tmp_path / "saved.mrc"
    layer.save(str(out), plugin="cryolive")
    back, apix = read_map(out)
    assert abs(apix - 2.5) < 1e-4
    np.testing.assert_array_equal(back, vol)


def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    ref, apix = read_map(sample_path("reference.mrc"))
    assert viewer.layers[-1].data.shape == ref.shape
    np.testing.assert_allclose(viewer.layers[-1].scale, (apix,) * 3)
    viewer.open_sample("cryolive", "sample_particles")
    stack_layer = viewer.layers["particles"]
    assert stack_layer.data.shape[0] == stack_layer.metadata["n_particles"] == 2000
    assert stack_layer.data.shape[1:] == ref.shape[1:]


def test_particle_file_opens_as_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(str(sample_path("particles.star")), plugin="cryolive")
    first = np.asarray(layers[0].data[:3])
    box = read_map(sample_path("reference.mrc"))[0].shape[0]
    assert first.shape == (3, box, box) and np.isfinite(first).all()


@pytest.mark.slow
def test_built_wheel_contains_manifest_and_sample_data(tmp_path):
    out = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(tmp_path), "."],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("cryolive-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "cryolive/napari.yaml" in names
    assert "cryolive/sample_data/particles.mrcs" in names and "cryolive/sample_data/particles.star" in names
    text = zipfile.ZipFile(wheel).read("cryolive/napari.yaml").decode()
    assert "name: cryolive" in text  # a real file, not a dangling link
    # installed from the wheel (not the editable checkout), npe2 loads the manifest and the sample data exist
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          str(wheel)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    code = ("import cryolive, npe2; from cryolive.sample import sample_path; "
            "mf = npe2.PluginManifest.from_distribution('cryolive'); "
            "print(cryolive.__file__); print(mf.name, len(mf.contributions.readers)); "
            "print(sample_path('particles.star').is_file())")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.split("\n")
    assert lines[0].startswith(str(target)), lines[0]
    assert lines[1] == "cryolive 1" and lines[2] == "True"
