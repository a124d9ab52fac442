"""The project folder model of ``cryopick app``: layouts opened in place, training inputs from the flags."""

from __future__ import annotations

import json

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


def test_suggestions_rank_uncertain_and_unlike_micrographs():
    from cryopick.app.suggest import rank

    t = 0.6
    confident = [0.99] * 10 + [0.05] * 30           # the model is sure here
    unsure = [0.55, 0.6, 0.62, 0.65, 0.7] * 4 + [0.05] * 20
    unsure_twin = list(unsure)
    other = [0.5, 0.7, 0.45] * 4 + [0.3] * 10      # fewer uncertain candidates, but another profile
    records = {"ann": confident, "a_confident": confident, "b_unsure": unsure, "c_twin": unsure_twin, "d_other": other}
    out = rank(records, t, annotated={"ann"}, excluded={"ann"}, top=4)
    names = [o["name"] for o in out]
    assert names[0] in ("b_unsure", "c_twin") and names[-1] == "a_confident"
    assert names.index("d_other") < names.index("a_confident")
    assert set(names[:3]) == {"b_unsure", "c_twin", "d_other"} and "ann" not in names
    assert "within 0.2 of the threshold 0.60" in out[0]["reason"]
    # the twin of a chosen micrograph is worth less than its uncertainty alone says
    twin = next(o for o in out if o["name"] in ("b_unsure", "c_twin") and o is not out[0])
    assert twin["diversity"] == 0.0 and twin["score"] < out[0]["score"]
    assert rank({}, t, set()) == []


def test_micrograph_names_are_plain_stems():
    from cryopick.app.project import check_name

    for ok in ("FoilHole_1_Data_2", "mic 1", "a..b", "x%2Fy"):
        assert check_name(ok) == ok
    for bad in ("..", ".", "", ".hidden", "a/b", "a\\b", "/etc/passwd", "a\0b", "x" * 201, None):
        with pytest.raises(ValueError):
            check_name(bad)


def test_the_train_job_passes_the_card_notes_on_and_complete_flags_turn_detection_off(project, tmp_path, monkeypatch):
    """Issue 27 item 1: the card's notes (sparse annotation detected, validation not measurable) reach the job's
    result and log; micrographs all marked complete are trained as complete (no detection)."""
    import logging

    import cryopick.picker2d.train as train2d
    from cryopick.app import jobs
    from cryopick.picker2d.card import ModelCard

    root, truth = project
    p = Project(root)
    annotate(p, "mic_0", 3)
    annotate(p, "mic_1", 3)
    seen = {}
    note = "sparse annotation detected: ~12 particles per micrograph, 3 annotated → positive-unlabelled training"

    def fake(paths, picks, diameter, out, detect_sparse=True, **kwargs):
        seen["detect_sparse"] = detect_sparse
        logging.getLogger("cryopick.picker2d.train").info(note)
        return ModelCard(diameter=diameter, notes=[note])

    monkeypatch.setattr(train2d, "train_from_files", fake)
    job = tmp_path / "job"
    job.mkdir()
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    try:  # run_job sets up the worker process's logging: undo it for the tests that follow
        jobs.run_job("train", str(root), str(job), {})
        result = json.loads((job / "result.json").read_text())
        assert result["state"] == "done" and result["notes"] == [note] and seen["detect_sparse"] is True
        assert note in (job / "log.txt").read_text()
        p.set_flag("mic_0", "complete")
        p.set_flag("mic_1", "complete")
        jobs.run_job("train", str(root), str(job), {})
        assert seen["detect_sparse"] is False
    finally:
        for h in root_logger.handlers:
            if h not in handlers:
                h.close()
        root_logger.handlers[:], root_logger.level = handlers, level
        logging.captureWarnings(False)
