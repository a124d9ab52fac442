"""cryopick.io.copick: tomograms and picks of a copick project, through the copick library itself.

``make_project`` builds a small filesystem copick project with the copick API (also used by
tests/picker3d/test_copick.py)."""

import json
import os
import sys

import numpy as np
import pytest

from cryopick.errors import CryopickError
from cryopick.io import copick as C

copick = pytest.importorskip("copick")


def make_project(folder, volumes, voxel_spacing=10.0, tomo_type="wbp", objects=("blob", "other")):
    """A filesystem copick project under ``folder``: one run per ``volumes`` item (name -> (D, H, W)
    array) with a tomogram of ``tomo_type`` at ``voxel_spacing`` Å; returns the config path."""
    from copick.models import PickableObject

    config = folder / "config.json"
    pickable = [PickableObject(name=n, is_particle=True, label=i + 1, radius=40.0) for i, n in enumerate(objects)]
    root = copick.new_config(str(config), str(folder / "overlay"), pickable_objects=pickable)
    for name, volume in volumes.items():
        vs = root.new_run(name).new_voxel_spacing(voxel_spacing)
        vs.new_tomogram(tomo_type).from_numpy(np.asarray(volume, np.float32), levels=1)
    return config


@pytest.fixture
def project(tmp_path):
    rng = np.random.default_rng(0)
    vols = {"TS_01": rng.normal(size=(8, 12, 10)), "TS_02": rng.normal(size=(8, 12, 10))}
    return make_project(tmp_path, vols), vols


def test_tomograms_read_with_voxel_size_and_run_name(project):
    config, vols = project
    root = C.open_project(config)
    sources = C.find_tomograms(root, C.select_runs(root, None, config))  # the only spacing and type
    assert [s.name for s in sources] == ["TS_01", "TS_02"]
    image = sources[1].read()
    assert image.name == "TS_02" and image.pixel_size == 10.0 and image.shape == (8, 12, 10)
    np.testing.assert_allclose(image.data, vols["TS_02"].astype(np.float32))


def test_picks_written_in_angstrom_and_replaced_not_duplicated(project, tmp_path):
    config, _ = project
    root = C.open_project(config)
    run = C.select_runs(root, ["TS_01"], config)[0]
    xyz = np.array([[1.0, 2.0, 3.0], [4.5, 5.5, 6.5]]) * 10.0
    old = os.umask(0o022)
    try:
        path = C.write_picks(run, "blob", xyz, np.array([0.9, np.nan]), user_id="cryopick", session_id="1",
                             voxel_spacing=10.0)
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)  # the umask's mode, not mkstemp's 0600
    # Read back with copick itself, from a fresh root.
    sets = copick.from_file(str(config)).get_run("TS_01").get_picks(object_name="blob")
    assert [(p.user_id, p.session_id) for p in sets] == [("cryopick", "1")]
    np.testing.assert_allclose(sets[0].numpy()[0], xyz)
    assert sets[0].points[0].score == pytest.approx(0.9) and sets[0].points[1].score is None
    assert sets[0].meta.voxel_spacing == 10.0 and sets[0].meta.run_name == "TS_01"
    # Writing again replaces the set.
    C.write_picks(run, "blob", xyz[:1], None, user_id="cryopick", session_id="1", voxel_spacing=10.0)
    sets = copick.from_file(str(config)).get_run("TS_01").get_picks(object_name="blob")
    assert len(sets) == 1 and len(sets[0].points) == 1
    assert not [p for p in (tmp_path / "overlay").rglob("*") if p.name.startswith(".") and "tmp" in p.name]
    # ... and reads back as voxels.
    picks = C.read_picks(C.open_project(config).get_run("TS_01"), "blob", 10.0)
    np.testing.assert_allclose(picks.coords, [[1.0, 2.0, 3.0]])
    assert picks.micrographs == ["TS_01"] and picks.table["label"].tolist() == ["blob"]


def test_read_picks_needs_one_set(project):
    config, _ = project
    run = C.open_project(config).get_run("TS_01")
    with pytest.raises(CryopickError, match="no pick set.*'blob'"):
        C.read_picks(run, "blob", 10.0)
    for session in ("1", "2"):
        C.write_picks(run, "blob", np.zeros((1, 3)), user_id="ann", session_id=session, voxel_spacing=10.0)
    run = C.open_project(config).get_run("TS_01")
    with pytest.raises(CryopickError, match="several pick set.*--session-id"):
        C.read_picks(run, "blob", 10.0)
    assert len(C.read_picks(run, "blob", 10.0, session_id="2")) == 1


def test_bad_projects_and_selections(project, tmp_path):
    config, _ = project
    with pytest.raises(CryopickError, match="no such copick config file"):
        C.open_project(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CryopickError, match="not a readable JSON copick config"):
        C.open_project(bad)
    bad.write_text(json.dumps({"config_type": "filesystem", "name": "x"}))  # no overlay_root
    with pytest.raises(CryopickError, match="not a usable copick config.*overlay_root"):
        C.open_project(bad)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"config_type": "filesystem", "name": "x", "overlay_root": f"local://{tmp_path}/void",
                                 "pickable_objects": []}))
    with pytest.raises(CryopickError, match="has no runs; check its overlay_root"):
        C.select_runs(C.open_project(empty), None, empty)
    root = C.open_project(config)
    with pytest.raises(CryopickError, match="no run 'TS_09'.*TS_01, TS_02"):
        C.select_runs(root, ["TS_01", "TS_09"], config)
    with pytest.raises(CryopickError, match="no pickable object 'ribosome'.*blob, other"):
        C.check_objects(root, ["blob", "ribosome"], config)
    with pytest.raises(CryopickError, match="--user-id 'my user'.*e.g. my-user"):
        C.check_id("my user", "--user-id")
    runs = C.select_runs(root, None, config)
    with pytest.raises(CryopickError, match="no 'wbp' tomogram at 7 Å.*wbp at 10 Å"):
        C.find_tomograms(root, runs, 7.0, "wbp", config=config)
    with pytest.raises(CryopickError, match="no 'denoised' tomogram at 10 Å"):
        C.find_tomograms(root, runs, 10.0, "denoised", config=config)


def test_choices_needed_when_runs_differ(project):
    config, _ = project
    root = C.open_project(config)
    extra = root.get_run("TS_02").new_voxel_spacing(7.5)
    extra.new_tomogram("denoised").from_numpy(np.ones((4, 4, 4), np.float32), levels=1)
    root.get_run("TS_01").new_voxel_spacing(5.0)  # segmentations only, say: no tomograms, not a choice
    root = C.open_project(config)
    runs = C.select_runs(root, None, config)
    with pytest.raises(CryopickError, match=r"several voxel spacings \(7.5, 10\); choose one with --voxel-spacing"):
        C.find_tomograms(root, runs)
    # A run lacking the tomogram is skipped when all runs are picked, an error when it was named.
    assert [s.name for s in C.find_tomograms(root, runs, 7.5)] == ["TS_02"]
    with pytest.raises(CryopickError, match="run.*TS_01 have no 'denoised' tomogram at 7.5"):
        C.find_tomograms(root, runs, 7.5, explicit=True)


def test_unreadable_tomogram_is_one_error(project, tmp_path):
    config, _ = project
    for chunk in (tmp_path / "overlay" / "ExperimentRuns" / "TS_01").rglob("wbp.zarr/0/.zarray"):
        chunk.write_text("{garbage")
    root = C.open_project(config)
    source = C.find_tomograms(root, C.select_runs(root, ["TS_01"], config), 10.0, "wbp")[0]
    with pytest.raises(CryopickError, match="copick run TS_01 .wbp at 10 Å.: cannot read the tomogram"):
        source.read()


def test_missing_copick_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "copick", None)
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(CryopickError, match=r"pip install 'cryopick\[copick\]'"):
        C.open_project(tmp_path / "c.json")


def test_picks_json_written_by_the_format_writer_reads_back_with_the_copick_library(project, tmp_path):
    """``io/formats/copick.py`` writes copick JSON by hand (``cryopick convert --to copick``, ``pick3d
    --format copick``): the copick library itself must read what it writes, points, scores and metadata."""
    import pandas as pd

    from cryopick.io.coords import write_picks
    from cryopick.picks import Picks

    config, _ = project
    voxels = np.array([[1.0, 2.0, 3.0], [4.5, 5.5, 6.5], [7.0, 0.0, 2.25]])
    table = pd.DataFrame({"micrograph": ["TS_01", "TS_01", "TS_02"], "x": voxels[:, 0], "y": voxels[:, 1],
                          "z": voxels[:, 2], "score": [0.9, np.nan, 0.25], "diameter": np.nan,
                          "label": ["blob", "blob", "other"]})
    write_picks(Picks(table, pixel_size=10.0, ndim=3), tmp_path / "overlay", format="copick", user_id="cryopick",
                session_id="7")
    root = copick.from_file(str(config))  # a fresh root: only what is on disk
    [ts1] = root.get_run("TS_01").get_picks(object_name="blob")
    [ts2] = root.get_run("TS_02").get_picks(object_name="other")
    assert root.get_run("TS_01").get_picks(object_name="other") == []
    for picks, rows in ((ts1, [0, 1]), (ts2, [2])):
        positions, transforms = picks.numpy()  # loads the file (copick reads the metadata lazily)
        np.testing.assert_allclose(positions, voxels[rows] * 10.0)  # Å: voxel index x voxel size
        np.testing.assert_allclose(transforms, np.broadcast_to(np.eye(4), (len(rows), 4, 4)))
        assert (picks.pickable_object_name, picks.user_id, picks.session_id) == (
            table["label"][rows[0]], "cryopick", "7")
        assert picks.meta.run_name == table["micrograph"][rows[0]] and picks.meta.voxel_spacing == 10.0
        assert picks.meta.unit == "angstrom" and picks.meta.trust_orientation is False
    assert [p.score for p in ts1.points] == [pytest.approx(0.9), None] and ts2.points[0].score == 0.25
