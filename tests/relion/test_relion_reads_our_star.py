"""RELION reads what cryolive writes: a refinement's particles.star, opened by relion_reconstruct started in the
folder the job was started from, gives back cryolive's map."""

from __future__ import annotations

import os

import numpy as np

from cryolive.io import read_map
from cryolive.jobs.refine import refine_job
from cryolive.refinement.refine import RefineParams
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.simulator.relion import relion_reconstruct

from .conftest import APIX, BOX, needs_relion

pytestmark = needs_relion


def test_relion_reconstruct_reads_a_refinement_star(relion_c1, tmp_path, monkeypatch) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for name in ("particles.star", "particles.mrcs", "truth.mrc"):
        os.symlink(relion_c1.folder / name, project / "data" / name)
    # the data STAR names its images relative to its own folder (relion_project ran there): give it the names
    # a RELION project holds, relative to the project folder
    text = (relion_c1.folder / "particles.star").read_text().replace("@particles.mrcs", "@data/particles.mrcs")
    (project / "data" / "particles.star").unlink()
    (project / "data" / "particles.star").write_text(text)
    monkeypatch.chdir(project)
    params = RefineParams(use_input_poses=True, max_iter=2, seed=0)
    gen = refine_job("data/particles.star", "data/truth.mrc", "jobs", params)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        result = stop.value
    (job_dir,) = sorted((project / "jobs").glob("job_refine_*"))
    star = job_dir / "particles.star"
    names = [ln.split()[0] for ln in star.read_text().splitlines() if "@" in ln]
    assert all(n.split("@")[1] == "data/particles.mrcs" for n in names), names[:3]
    theirs = relion_reconstruct(star, tmp_path / "relion_from_ours.mrc", cwd=project)
    ours = read_map(job_dir / "map.mrc")[0]
    curve = fsc(ours, theirs)
    res = result.final.resolution_A
    shells = np.arange(len(curve))
    inside = (shells >= 1) & (shells <= BOX * APIX / res)
    print(f"reported {res:.2f} Å; FSC(cryolive map, RELION's map from our STAR) >= {curve[inside].min():.3f} to it; "
          f"0.5 at {resolution_at(curve, BOX, APIX, 0.5):.2f} Å")
    assert curve[inside].min() >= 0.95
