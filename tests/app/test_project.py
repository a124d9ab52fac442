"""The project folder model of ``cryopick app``: layouts opened in place, training inputs from the flags."""

from __future__ import annotations

import numpy as np
import pytest

from cryopick.app.jobs import training_inputs
from cryopick.app.project import Project
from cryopick.errors import CryopickError
from cryopick.io.images import write_mrc


def annotate(project, name, n):
    project.save_annotations(name, [[10.0 + 20 * i, 30.0] for i in range(n)], project.annotations(name)["version"])


def test_flags_feed_training(project):
    root, truth = project
    p = Project(root)
    with pytest.raises(CryopickError, match="no annotated micrograph"):
        training_inputs(p, {})
    annotate(p, "mic_0", 6)
    annotate(p, "mic_1", 3)
    p.set_flag("mic_2", "empty")
    paths, picks, negatives, ppm = training_inputs(p, {})
    assert [x.name for x in paths] == ["mic_0.mrc", "mic_1.mrc"] and len(picks) == 9
    assert [x.name for x in negatives] == ["mic_2.mrc"] and ppm is None  # all complete: labelled fraction 1
    p.set_flag("mic_1", "partial")
    with pytest.raises(CryopickError, match="marked partial"):
        training_inputs(p, {})
    assert training_inputs(p, {"particles_per_micrograph": 8.0})[3] == 8.0
    p.set_flag("mic_0", "complete")
    assert training_inputs(p, {})[3] == 6.0  # the mean count of the complete micrographs


def test_opens_a_plain_folder_and_a_relion_project_in_place(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    write_mrc(flat / "a.mrc", np.zeros((16, 16), np.float32))
    (flat / "notes.txt").write_text("x")
    assert list(Project(flat).micrographs()) == ["a"]
    relion = tmp_path / "relion"
    movies = relion / "MotionCorr" / "job002" / "Movies"
    movies.mkdir(parents=True)
    for name in ("m1", "m2", "m1_PS"):
        write_mrc(movies / f"{name}.mrc", np.zeros((16, 16), np.float32))
    (relion / "default_pipeline.star").write_text("data_\n")
    p = Project(relion)
    assert list(p.micrographs()) == ["m1", "m2"]
    annotate(p, "m1", 2)
    assert (relion / "annotations" / "m1_manualpick.star").is_file()
    assert Project(tmp_path / "new" / "project").micrographs() == {}  # a new folder becomes an empty project
