"""pick3d --copick / prompt --copick: tomograms from a copick project the test builds, picks back into it,
read with copick itself (object, user, session, Å).

Most tests use the position-faithful stand-in segmenter of test_batch (picks known exactly, seconds);
``test_round_trip_with_shipped_weights`` runs the real network on small simulated tomograms.
"""

import json

import numpy as np
import pytest

import cryopick.picker3d.pick as P
from cryopick.cli.main import main as cli
from cryopick.evaluate.matching import match_points
from cryopick.io.coords import read_picks
from cryopick.io.images import write_mrc
from tests.io.test_copick import make_project
from tests.picker3d.test_batch import CENTRES, _tomogram, fake_segment

copick = pytest.importorskip("copick")

RUNS = {"TS_01": "t0", "TS_02": "t1", "TS_03": "t2"}  # copick run -> the test_batch tomogram it holds


@pytest.fixture
def env(tmp_path, monkeypatch):
    from cryopick.picker3d.prompt import make_prompt, save_prompt

    monkeypatch.setattr(P, "segment", fake_segment)
    monkeypatch.chdir(tmp_path)
    vols = {run: _tomogram(CENTRES[t], k) for k, (run, t) in enumerate(RUNS.items())}
    config = make_project(tmp_path / "project", vols)
    write_mrc(tmp_path / "t0.mrc", vols["TS_01"], pixel_size=10.0)
    save_prompt(make_prompt(tmp_path / "t0.mrc", [CENTRES["t0"][0]], label="blob", diameter_px=8),
                tmp_path / "blob.prompt")
    return tmp_path, config


def pick3d(config, *extra):
    return cli(["pick3d", "--prompt", "blob.prompt", "--copick", str(config), "--window", "32", "--no-similarity",
                "--no-montage", *extra])


def rows(points):
    """Points in one order, each kept whole (sorting columns separately would mix them)."""
    points = np.asarray(points, float).reshape(-1, 3)
    return points[np.lexsort(points.T[::-1])]


def copick_sets(config, run, object_name="blob"):
    return copick.from_file(str(config)).get_run(run).get_picks(object_name=object_name)


def test_picks_land_in_the_project_in_angstrom_and_rerun_adds_nothing(env):
    tmp, config = env
    assert pick3d(config, "--session-id", "1", "--user-id", "robot", "-o", "out", "--format", "imod") == 0
    for run, t in RUNS.items():
        sets = copick_sets(config, run)
        assert [(s.pickable_object_name, s.user_id, s.session_id) for s in sets] == [("blob", "robot", "1")]
        xyz_A = sets[0].numpy()[0]
        np.testing.assert_allclose(rows(xyz_A), rows(np.array(CENTRES[t], float) * 10.0), atol=1.0)
        # The same picks as cryopick's own output of the run, × the voxel spacing.
        voxels = read_picks(tmp / "out" / "imod" / "blob" / f"{run}.coords").coords
        np.testing.assert_allclose(rows(xyz_A), rows(voxels * 10.0), atol=1e-6)
        assert np.all(sets[0].scores() > 0) and sets[0].meta.voxel_spacing == 10.0
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert summary["source"] == {"copick": {"tomo_type": "wbp", "voxel_spacing": 10.0, "user_id": "robot",
                                            "session_id": "1"}}
    assert summary["n_picked_this_run"] == 3
    record = json.loads((tmp / "out" / ".cryopick" / "TS_02.json").read_text())
    assert record["copick"][0].endswith("ExperimentRuns/TS_02/Picks/robot_1_blob.json")
    # Rerun: finished runs are skipped, the project keeps one pick set per run.
    picked = tmp / "project" / "overlay" / "ExperimentRuns" / "TS_01" / "Picks" / "robot_1_blob.json"
    before = picked.stat().st_mtime_ns
    assert pick3d(config, "--session-id", "1", "--user-id", "robot", "-o", "out", "--format", "imod") == 0
    assert picked.stat().st_mtime_ns == before
    assert json.loads((tmp / "out" / "summary.json").read_text())["n_skipped"] == 3
    # --redo picks again into the same set: replaced, not added.
    assert pick3d(config, "--session-id", "1", "--user-id", "robot", "-o", "out", "--format", "imod", "--redo") == 0
    assert picked.stat().st_mtime_ns != before
    assert all(len(copick_sets(config, run)) == 1 for run in RUNS)
    assert len(copick_sets(config, "TS_01")[0].points) == len(CENTRES["t0"])


def test_without_output_folder_records_live_in_the_overlay(env):
    tmp, config = env
    assert pick3d(config, "--runs", "TS_02,TS_03") == 0
    assert copick_sets(config, "TS_01") == []
    sets = copick_sets(config, "TS_03")
    assert [(s.user_id, s.session_id) for s in sets] == [("cryopick", "0")]  # copick's tool session
    records = tmp / "project" / "overlay" / "cryopick" / "pick3d_cryopick_0"
    summary = json.loads((records / "summary.json").read_text())
    assert summary["n_finished"] == 2 and summary["formats"] == [] and not (records / "relion5").exists()
    # All runs now: the two finished are skipped, TS_01 is picked; still one set per run.
    assert pick3d(config) == 0
    summary = json.loads((records / "summary.json").read_text())
    assert summary["n_picked_this_run"] == 1 and summary["n_skipped"] == 2
    assert all(len(copick_sets(config, run)) == 1 for run in RUNS)


def test_other_tomogram_type_for_the_same_session_is_refused_unless_redo(env, capsys):
    tmp, config = env
    root = copick.from_file(str(config))
    for run, t in RUNS.items():
        vol = _tomogram(CENTRES[t][:1], 7)  # one particle only
        root.get_run(run).get_voxel_spacing(10.0).new_tomogram("denoised").from_numpy(vol, levels=1)
    assert pick3d(config, "--tomo-type", "wbp") == 0
    capsys.readouterr()
    assert pick3d(config, "--tomo-type", "denoised") == 2
    err = capsys.readouterr().err
    assert "other source" in err and "--redo" in err and "Traceback" not in err
    assert len(copick_sets(config, "TS_03")[0].points) == len(CENTRES["t2"])  # untouched
    assert pick3d(config, "--tomo-type", "denoised", "--redo") == 0
    sets = copick_sets(config, "TS_03")
    assert len(sets) == 1 and len(sets[0].points) == 1


def test_a_corrupt_run_fails_alone(env, capsys):
    tmp, config = env
    (tmp / "project" / "overlay" / "ExperimentRuns" / "TS_02" / "VoxelSpacing10.000" / "wbp.zarr" / "0" /
     ".zarray").write_text("{garbage")
    assert pick3d(config, "-o", "out") == 3  # finished with failures
    err = capsys.readouterr().err
    assert "1 of 3 tomogram(s) not picked" in err and "TS_02" in err and "Traceback" not in err
    assert copick_sets(config, "TS_02") == []
    assert len(copick_sets(config, "TS_01")) == 1 and len(copick_sets(config, "TS_03")) == 1
    failed = json.loads((tmp / "out" / "summary.json").read_text())["failed"]
    assert [f["tomogram"] for f in failed] == ["TS_02"] and "cannot read the tomogram" in failed[0]["error"]


@pytest.mark.parametrize("extra,message", [
    (["--runs", "TS_01,TS_09"], "no run 'TS_09'"),
    (["--voxel-spacing", "7"], "no tomograms at 7 Å (their voxel spacings: 10 Å)"),
    (["--voxel-spacing", "7", "--tomo-type", "wbp"], "no 'wbp' tomogram at 7 Å"),
    (["--tomo-type", "denoised"], "no 'denoised' tomogram"),
    (["--session-id", "a_b"], "--session-id 'a_b'"),
])
def test_bad_selection_is_one_line(env, capsys, extra, message):
    _, config = env
    assert pick3d(config, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_bad_config_or_object_is_one_line(env, capsys):
    tmp, config = env
    assert pick3d(tmp / "nope.json") == 2
    assert "nope.json: no such copick config file" in capsys.readouterr().err
    from cryopick.picker3d.prompt import load_prompt, save_prompt

    prompt = load_prompt(tmp / "blob.prompt")
    prompt.label = "ribosome"
    save_prompt(prompt, tmp / "blob.prompt")
    assert pick3d(config) == 2
    err = capsys.readouterr().err
    assert "no pickable object 'ribosome'" in err and "blob, other" in err and "Traceback" not in err
    # copick options without --copick, and no -o without --copick.
    assert cli(["pick3d", "--prompt", "blob.prompt", "--tomograms", "t0.mrc", "-o", "o", "--runs", "TS_01"]) == 2
    assert "give --copick CONFIG" in capsys.readouterr().err
    assert cli(["pick3d", "--prompt", "blob.prompt", "--tomograms", "t0.mrc"]) == 2
    assert "-o OUT" in capsys.readouterr().err
    assert pick3d(config, "--format", "imod") == 2  # files in a folder not given
    assert "--format writes files into the output folder; give -o OUT" in capsys.readouterr().err


def test_prompt_from_copick_picks(env, capsys):
    from copick.models import CopickLocation, CopickPoint

    from cryopick.picker3d.prompt import load_prompt

    tmp, config = env
    picks = copick.from_file(str(config)).get_run("TS_01").new_picks("blob", "5", "curator")
    x, y, z = CENTRES["t0"][0]
    picks.points = [CopickPoint(location=CopickLocation(x=x * 10.0, y=y * 10.0, z=z * 10.0))]
    picks.store()
    assert cli(["prompt", "--copick", str(config), "--run", "TS_01", "--object", "blob", "--diameter-vox", "8",
                "-o", "from_copick.prompt"]) == 0
    made = load_prompt(tmp / "from_copick.prompt")
    same = load_prompt(tmp / "blob.prompt")  # cut from the same tomogram at the same voxel
    assert made.label == "blob" and made.tomogram == "TS_01"
    np.testing.assert_allclose(made.subvolumes, same.subvolumes, atol=1e-5)
    assert cli(["prompt", "--copick", str(config), "--run", "TS_02", "--object", "blob", "-o", "x.prompt"]) == 2
    assert "no pick set(s) of 'blob'" in capsys.readouterr().err


def test_round_trip_with_shipped_weights(tmp_path, monkeypatch):
    """The real network: simulated tomograms in a copick project -> prompt from a copick pick -> pick3d --copick."""
    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    monkeypatch.chdir(tmp_path)
    classes = random_particle_classes(2, seed=424242, voxel_size=10.0, diameter_range_A=(150.0, 250.0))
    sims = {f"TS_0{k}": simulate_tomogram(classes, shape=(48, 64, 64), voxel_size=10.0, seed=k, n_particles=8,
                                          snr=3.0, membranes=0, gold_beads=0, name=f"TS_0{k}") for k in (1, 2)}
    config = make_project(tmp_path / "project", {n: s.volume for n, s in sims.items()}, objects=("target",))
    truth = sims["TS_01"].picks.table
    first = truth[truth["label"] == classes[0].name].iloc[0]
    root = copick.from_file(str(config))
    root.get_run("TS_01").new_picks("target", "1", "curator").from_numpy(
        np.array([[first.x, first.y, first.z]]) * 10.0)
    assert cli(["prompt", "--copick", str(config), "--run", "TS_01", "--object", "target", "--user-id", "curator",
                "--diameter", f"{classes[0].diameter:.0f}", "-o", "target.prompt", "--threads", "1"]) == 0
    assert cli(["pick3d", "--prompt", "target.prompt", "--copick", str(config), "--session-id", "2", "-o", "out",
                "--format", "imod", "--no-montage", "--threads", "1"]) == 0
    for run in sims:
        sets = copick_sets(config, run, "target")
        ours = [s for s in sets if s.user_id == "cryopick"]
        assert [(s.session_id, s.pickable_object_name) for s in ours] == [("2", "target")]
        voxels = read_picks(tmp_path / "out" / "imod" / "target" / f"{run}.coords").coords
        assert len(voxels) > 0
        np.testing.assert_allclose(rows(ours[0].numpy()[0]), rows(voxels * 10.0), atol=1e-6)
        table = sims[run].picks.table
        target = table[table["label"] == classes[0].name][["x", "y", "z"]].to_numpy(float) * 10.0
        f1 = match_points(ours[0].numpy()[0], target, classes[0].diameter / 2).f1  # Å
        assert f1 >= 0.3, (run, f1)  # the prompted class, in Å (0.6 and 0.44 when written)


def test_adapted_classifier_with_copick(env, capsys):
    """--adapted (a classifier from ask3d answers) works on copick runs; --answers (needs files) is refused."""
    from cryopick.models.promptable3d import load_propicker
    from cryopick.picker3d.answers import adapt
    from cryopick.picker3d.prompt import load_prompt
    from tests.picker3d.test_answers import _two_classes

    tmp, config = env
    model, prompt = load_propicker(), load_prompt(tmp / "blob.prompt")
    pool, y = _two_classes(model, prompt, 40, seed=3)
    adapt(model, prompt, pool, pool.subset(np.arange(8)), y[:8], candidate_threshold=0.1).save(tmp / "a.adapted.npz")
    assert pick3d(config, "--adapted", "a.adapted.npz", "--runs", "TS_01", "-o", "out") == 0
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert summary["adapted"]["blob"]["n_positive"] == 4 and summary["n_finished"] == 1
    assert [s.session_id for s in copick_sets(config, "TS_01")] == ["0"]
    assert pick3d(config, "--answers", "answers.csv") == 2
    assert "with --copick give --adapted FILE" in capsys.readouterr().err
