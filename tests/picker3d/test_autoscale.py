"""The 3D scale by itself (issue 25 items 1 and 4, issue 27 item 2).

`prompt` and `pick3d` work at the scale the weights were trained at (their metadata: 9-13 Å/voxel,
particles 6-33 voxels), whatever the tomogram's own voxel size; picks come back in the tomogram's voxels.
A particle the network cannot see is refused, one outside the trained range is warned about.

Fast tests use the stand-in segmenter of ``test_batch.py`` (probability = brightness), so the picks are
known exactly; the slow test runs the shipped network on a simulated tomogram at 2.5, 5 and 10 Å/voxel.
"""

import math

import numpy as np
import pytest

import cryopick.picker3d.pick as P
from cryopick.cli.main import main as cli
from cryopick.io.coords import read_picks
from cryopick.io.images import write_mrc
from cryopick.models.promptable3d import load_propicker
from cryopick.picker3d.card import trained_scale
from cryopick.picker3d.prompt import load_prompt
from cryopick.picker3d.scale import TrainedScale, choose_voxel_size
from cryopick.preprocess import downsample

from .test_batch import fake_segment

TRAINED = TrainedScale((9.0, 13.0), (6.0, 33.0))
CENTRES_A = np.array([(80.0, 90.0, 80.0), (240.0, 100.0, 90.0), (150.0, 240.0, 70.0), (260.0, 250.0, 85.0)])  # x,y,z Å
SHAPE_25 = (64, 128, 128)  # D, H, W at 2.5 Å/voxel: 160 x 320 x 320 Å


def test_shipped_weights_state_their_trained_scale():
    """The range comes from the weights' metadata (the card's "9-13 Å; particles 6-33 voxels")."""
    assert trained_scale(load_propicker()) == TRAINED


def test_train3d_records_the_scale_of_its_corpus(tmp_path):
    """train3d's checkpoints carry their corpus's ranges (corpus.json as make_corpus writes it, or the pool.json
    of corpora written before), so prompts made with a newly trained model follow its scale; a model without
    them is not rescaled."""
    import json
    from dataclasses import asdict, replace

    from cryopick.picker3d.train.corpus import CorpusConfig, corpus_scale

    cfg = replace(CorpusConfig(), voxel_size=(4.0, 6.0), min_diameter_px=8.0, max_diameter_px=40.0)
    for name in ("corpus.json", "pool.json"):
        (tmp_path / name).mkdir()
        (tmp_path / name / name).write_text(json.dumps({"seed": 1, "config": asdict(cfg)}))
        assert corpus_scale(tmp_path / name) == {"trained_voxel_size": [4.0, 6.0], "trained_diameter_voxels": [8.0, 40.0]}
    meta = corpus_scale(tmp_path / "pool.json")
    model = load_propicker()
    model.meta = {**model.meta, **meta}
    assert trained_scale(model) == TrainedScale((4.0, 6.0), (8.0, 40.0))
    model.meta = {k: v for k, v in model.meta.items() if not k.startswith("trained_")}
    assert trained_scale(model) is None and corpus_scale(tmp_path / "nothing") == {}


@pytest.mark.parametrize("source, diameter, expected", [
    (2.5, None, 10.0), (5.0, None, 10.0), (10.0, None, 10.0),  # bin 4, bin 2, as stored: one scale
    (1.35, None, 9.45), (12.0, None, 12.0), (20.0, None, 20.0),  # bin 7; in range; never upsampled
    (2.5, 234.0, 10.0),  # 23 voxels at 10 Å: in range, stays
    (2.5, 500.0, 500.0 / 33),  # 50 voxels at 10 Å: coarser, until it is 33 voxels
    (2.5, 40.0, 40.0 / 6),  # 4 voxels at 10 Å: finer, until it is 6 voxels
])
def test_choose_voxel_size(source, diameter, expected):
    assert choose_voxel_size(source, TRAINED, diameter) == pytest.approx(expected, rel=1e-6)


def _blobs_25(seed=0, radius_A=40.0):
    """Bright balls at CENTRES_A in noise, at 2.5 Å/voxel."""
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 0.3, SHAPE_25).astype(np.float32)
    zz, yy, xx = np.indices(SHAPE_25) * 2.5
    for x, y, z in CENTRES_A:
        vol[(xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 <= radius_A ** 2] = 5.0
    return vol


def _three_scales(root, vol25):
    """The same tomogram at 2.5, 5 and 10 Å/voxel (Fourier-cropped, as bin 2 and bin 4 are)."""
    paths = {}
    for vs in (2.5, 5.0, 10.0):
        v = vol25 if vs == 2.5 else downsample(vol25, vs / 2.5)[0]
        paths[vs] = root / f"t{vs:g}.mrc"
        write_mrc(paths[vs], v.astype(np.float32), pixel_size=vs)
    return paths


def test_prompt_and_pick3d_agree_in_angstrom_at_three_voxel_sizes(tmp_path, monkeypatch):
    """Defaults only: every tomogram is brought to 10 Å, the prompt box holds the particle (80 Å = 32
    voxels at 2.5 Å, 8 at the working scale) and the picks, back in each tomogram's own voxels, are the
    same particles in Å."""
    monkeypatch.setattr(P, "segment", fake_segment)
    monkeypatch.chdir(tmp_path)
    paths = _three_scales(tmp_path, _blobs_25())
    found = {}
    for vs, path in paths.items():
        at = ",".join(f"{c / vs:.2f}" for c in CENTRES_A[0])
        assert cli(["prompt", "--tomogram", str(path), "--at", at, "--diameter", "80", "-o", f"p{vs:g}.prompt",
                    "--label", "blob", "--threads", "1"]) == 0
        prompt = load_prompt(f"p{vs:g}.prompt")
        assert prompt.voxel_size == pytest.approx(10.0) and prompt.binning == pytest.approx(10.0 / vs)
        assert prompt.diameter == pytest.approx(8.0) and prompt.meta["scale"] == "auto"
        assert cli(["pick3d", "--prompt", f"p{vs:g}.prompt", "--tomograms", str(path), "-o", f"out{vs:g}",
                    "--no-similarity", "--no-montage", "--format", "imod", "--threads", "1"]) == 0
        picks = read_picks(tmp_path / f"out{vs:g}" / "imod" / "blob" / f"t{vs:g}.coords")
        found[vs] = np.array(sorted(picks.coords.tolist())) * vs  # Å
    truth = np.array(sorted(CENTRES_A.tolist()))
    for vs, angstrom in found.items():
        np.testing.assert_allclose(angstrom, truth, atol=5.0, err_msg=f"{vs} Å/voxel")
    np.testing.assert_allclose(found[2.5], found[10.0], atol=1.0)
    np.testing.assert_allclose(found[5.0], found[10.0], atol=1.0)


def test_min_distance_in_angstrom_and_in_tomogram_voxels(tmp_path, monkeypatch):
    """--min-distance is Å, --min-distance-vox voxels of the tomogram: both become the same working
    distance (here 200 Å = 80 voxels at 2.5 Å = 20 working voxels, wider than two particles' spacing)."""
    from cryopick.picker3d.settings import resolve_settings

    monkeypatch.setattr(P, "segment", fake_segment)
    monkeypatch.chdir(tmp_path)
    path = _three_scales(tmp_path, _blobs_25())[2.5]
    at = ",".join(f"{c / 2.5:.2f}" for c in CENTRES_A[0])
    assert cli(["prompt", "--tomogram", str(path), "--at", at, "--diameter", "80", "-o", "p.prompt",
                "--label", "blob", "--threads", "1"]) == 0
    prompt = load_prompt("p.prompt")
    model = load_propicker()
    by_A = resolve_settings(model, None, 1, {"min_distance_A": 200.0}, prompt=prompt)[0]
    by_vox = resolve_settings(model, None, 1, {"min_distance_vox": 80.0}, prompt=prompt)[0]
    assert by_A.min_distance == pytest.approx(20.0) and by_vox.min_distance == pytest.approx(20.0)
    counts = {}
    for flag, value in (("--min-distance", "200"), ("--min-distance-vox", "80"), ("--min-distance", "20")):
        out = f"out{flag}{value}"
        assert cli(["pick3d", "--prompt", "p.prompt", "--tomograms", str(path), "-o", out, "--no-similarity",
                    "--no-montage", "--format", "imod", "--threads", "1", flag, value]) == 0
        counts[flag, value] = len(read_picks(tmp_path / out / "imod" / "blob" / "t2.5.coords"))
    # particles 150-170 Å apart: 200 Å suppresses some, 20 Å none
    assert counts["--min-distance", "200"] == counts["--min-distance-vox", "80"] < len(CENTRES_A)
    assert counts["--min-distance", "20"] == len(CENTRES_A)


def test_diameter_of_voxels_given_in_angstrom_is_refused(tmp_path, capsys):
    """Issue 27: `prompt --diameter 12` meant voxels; at 10 Å that is 1.2 voxels, which the network
    cannot see: refused (exit 2) with the fix, nothing written."""
    write_mrc(tmp_path / "t.mrc", np.random.default_rng(0).normal(size=(32, 48, 48)).astype(np.float32),
              pixel_size=10.0)
    out = tmp_path / "p.prompt"
    code = cli(["prompt", "--tomogram", str(tmp_path / "t.mrc"), "--at", "20,20,16", "--diameter", "12",
                "-o", str(out), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "1.2 voxels" in err and "too small for the network to see" in err and "--diameter-vox 12" in err
    assert cli(["prompt", "--tomogram", str(tmp_path / "t.mrc"), "--at", "20,20,16", "--diameter-vox", "12",
                "-o", str(out), "--threads", "1"]) == 0
    assert load_prompt(out).diameter == pytest.approx(12.0)


def test_pick3d_refuses_an_old_prompt_too_small_to_see(tmp_path, monkeypatch, capsys):
    """A prompt made before `prompt` refused it (1.2 working voxels) made pick3d find nothing with exit 0;
    now pick3d refuses it with the fix and writes nothing."""
    from cryopick.picker3d.prompt import save_prompt

    monkeypatch.chdir(tmp_path)
    write_mrc(tmp_path / "t.mrc", np.random.default_rng(0).normal(size=(32, 48, 48)).astype(np.float32),
              pixel_size=10.0)
    assert cli(["prompt", "--tomogram", "t.mrc", "--at", "20,20,16", "--diameter", "80", "-o", "p.prompt",
                "--threads", "1"]) == 0
    prompt = load_prompt("p.prompt")
    prompt.diameter = 1.2
    save_prompt(prompt, "old.prompt")
    capsys.readouterr()
    code = cli(["pick3d", "--prompt", "old.prompt", "--tomograms", "t.mrc", "-o", "out", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out").exists()
    assert "1.2 voxels at the working voxel size 10 Å is too small for the network to see" in err
    assert "remake the prompt with the diameter in Å (--diameter)" in err


def test_particle_outside_the_trained_range_is_warned_about(tmp_path, caplog):
    """A 234 Å particle at --voxel-size 2.5 (94 voxels) is cut by the 37-voxel prompt box; a 60 Å
    particle on a 20 Å tomogram is 3 voxels. Each gets one warning that says what to do; the
    defaults on the same 2.5 Å tomogram need none."""
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "fine.mrc", rng.normal(size=(48, 64, 64)).astype(np.float32), pixel_size=2.5)
    write_mrc(tmp_path / "coarse.mrc", rng.normal(size=(32, 48, 48)).astype(np.float32), pixel_size=20.0)
    cases = [("fine.mrc", ["--diameter", "234", "--voxel-size", "2.5"],
              "larger than the prompt box (37 voxels)", "give a coarser --voxel-size >= 7.1 Å"),
             ("coarse.mrc", ["--diameter", "60"], "3.0 voxels at the working voxel size 20 Å",
              "use a tomogram with a voxel size <= 10.0 Å"),
             ("fine.mrc", ["--diameter", "234"], None, None)]
    for name, extra, what, fix in cases:
        caplog.clear()
        assert cli(["prompt", "--tomogram", str(tmp_path / name), "--at", "20,20,16", *extra, "-o",
                    str(tmp_path / "p.prompt"), "--threads", "1"]) == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if what is None:
            assert warnings == []
            assert math.isclose(load_prompt(tmp_path / "p.prompt").voxel_size, 10.0)
        else:
            assert len(warnings) == 1 and what in warnings[0] and fix in warnings[0], warnings


def test_old_spelling_diameter_px_still_works_with_one_line(tmp_path, capsys):
    write_mrc(tmp_path / "t.mrc", np.random.default_rng(0).normal(size=(32, 48, 48)).astype(np.float32),
              pixel_size=10.0)
    assert cli(["prompt", "--tomogram", str(tmp_path / "t.mrc"), "--at", "20,20,16", "--diameter-px", "9",
                "-o", str(tmp_path / "p.prompt"), "--threads", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "deprecated" in ln]
    assert lines == ["cryopick: warning: --diameter-px is deprecated; use --diameter-vox (same meaning)"]
    assert load_prompt(tmp_path / "p.prompt").diameter == pytest.approx(9.0)


@pytest.mark.slow
def test_shipped_network_finds_the_same_particles_at_three_voxel_sizes(tmp_path, monkeypatch):
    """Issue 25's case with the real network: particles of 200 Å simulated at 2.5 Å/voxel (80 voxels
    across, more than twice the largest the network was trained on, and more than the 37-voxel prompt
    box), the same tomogram at 5 and 10 Å (bin 2, bin 4). `prompt` (no diameter: estimated) + `pick3d`
    with defaults: the same picks, in Å, at all three, each on a particle. (The shipped network's
    default settings find few of these particles, the prompted one among them; what this test holds is
    that the tomogram's voxel size no longer changes what is found.)"""
    from cryopick.simulate.shapes import procedural_class
    from cryopick.simulate.tomogram import simulate_tomogram

    monkeypatch.chdir(tmp_path)
    cls = procedural_class("blob", "globular", 200.0, 2.5, seed=1)
    tomo = simulate_tomogram([cls], shape=(128, 256, 256), voxel_size=2.5, seed=1, n_particles=5, snr=1.0,
                             membranes=0, gold_beads=0, crowding=0.1)
    truth = tomo.picks.coords * 2.5  # Å
    paths = _three_scales(tmp_path, tomo.volume.astype(np.float32))
    found = {}
    for vs, path in paths.items():
        at = ",".join(f"{c / vs:.2f}" for c in truth[0])
        assert cli(["prompt", "--tomogram", str(path), "--at", at, "-o", f"p{vs:g}.prompt", "--label", "blob",
                    "--threads", "1"]) == 0
        assert load_prompt(f"p{vs:g}.prompt").voxel_size == pytest.approx(10.0)
        assert cli(["pick3d", "--prompt", f"p{vs:g}.prompt", "--tomograms", str(path), "-o", f"out{vs:g}",
                    "--no-montage", "--format", "imod", "--threads", "1"]) == 0
        picks = read_picks(tmp_path / f"out{vs:g}" / "imod" / "blob" / f"t{vs:g}.coords")
        found[vs] = np.array(sorted(picks.coords.tolist())).reshape(-1, 3) * vs
    assert len(found[10.0]) >= 1
    for vs in (2.5, 5.0):
        assert found[vs].shape == found[10.0].shape, (vs, found)
        np.testing.assert_allclose(found[vs], found[10.0], atol=10.0)  # one working voxel
    assert (np.linalg.norm(found[10.0][:, None] - truth[None], axis=2).min(1) < 50.0).all(), (found[10.0], truth)


def test_estimated_diameter_outside_the_range_moves_the_scale_once(tmp_path, monkeypatch):
    """No diameter given: the estimate at the first scale (10 Å) says 50 voxels = 500 Å, more than the
    trained 33, so the examples are cut again at 500/33 Å and measured there."""
    import cryopick.picker3d.prompt as PR

    calls = []

    def estimate(model, prompt, work, **kw):
        calls.append(work.voxel_size)
        return 50.0 if len(calls) == 1 else 31.0

    monkeypatch.setattr(PR, "estimate_diameter", estimate)
    write_mrc(tmp_path / "t.mrc", np.random.default_rng(0).normal(size=(64, 96, 96)).astype(np.float32),
              pixel_size=5.0)
    prompt = PR.make_prompt(tmp_path / "t.mrc", [(40, 40, 30)])
    assert calls == [pytest.approx(10.0), pytest.approx(500 / 33, rel=1e-3)]
    assert prompt.voxel_size == pytest.approx(500 / 33, rel=1e-3) and prompt.diameter == 31.0
    assert prompt.binning == pytest.approx(prompt.voxel_size / 5.0) and prompt.meta["diameter_estimated"]
