"""Bad input to the 3D commands: one-line errors naming the option or file, never a traceback, never a
wrong success (NaN prompts, zero diameters, misspelt settings)."""

import json
import warnings

import numpy as np
import pytest

from cryopick import CryopickError
from cryopick.cli.main import main as cli
from cryopick.io.images import write_mrc

LEAKS = ("Traceback", "allow_pickle", "file an issue", "pickle", "weights_only")


@pytest.fixture
def tomo(tmp_path):
    path = tmp_path / "t.mrc"
    write_mrc(path, np.random.default_rng(0).normal(size=(32, 40, 40)).astype(np.float32), pixel_size=10.0)
    return path


@pytest.fixture
def prompt(tmp_path, tomo):
    path = tmp_path / "p.prompt"
    assert cli(["prompt", "--tomogram", str(tomo), "--at", "20,20,16", "--diameter-vox", "8", "-o", str(path)]) == 0
    return path


def _argparse_error(argv, capsys, option):
    with pytest.raises(SystemExit) as exc:
        cli(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and option in err and "Traceback" not in err, err


@pytest.mark.parametrize("option,value", [
    ("--window", "0"), ("--stride", "-1"), ("--batch", "0"), ("--threshold", "nan"), ("--threshold", "1.5"),
    ("--min-size", "-1"), ("--max-size", "0"), ("--min-factor", "inf"), ("--max-factor", "0"),
    ("--min-similarity", "nan"), ("--min-distance", "-2"), ("--tm-threshold", "nan"), ("--tm-angle", "0"),
    ("--refine", "-1"), ("--threads", "0"), ("--bf16", "maybe"),
])
def test_pick3d_numeric_options_are_checked(tmp_path, prompt, capsys, option, value):
    _argparse_error(["pick3d", "--prompt", str(prompt), "--tomograms", str(tmp_path), "-o", str(tmp_path / "o"),
                     option, value], capsys, option)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,option", [
    (["prompt", "--tomogram", "t.mrc", "-o", "p.prompt", "--at", "nan,10,10"], "--at"),
    (["prompt", "--tomogram", "t.mrc", "-o", "p.prompt", "--at", "1,2,3", "--diameter-vox", "0"], "--diameter-vox"),
    (["prompt", "--tomogram", "t.mrc", "-o", "p.prompt", "--at", "1,2,3", "--diameter", "-5"], "--diameter"),
    (["prompt", "--tomogram", "t.mrc", "-o", "p.prompt", "--at", "1,2,3", "--binning", "0"], "--binning"),
    (["calibrate3d", "--prompt", "p", "--tomogram", "t", "--truth", "x", "--stride", "0"], "--stride"),
    (["calibrate3d", "--prompt", "p", "--tomogram", "t", "--truth", "x", "--tolerance", "nan"], "--tolerance"),
    (["finetune3d", "--tomograms", "t", "--coords", "c", "--prompt", "p", "-o", "f.pt", "--steps", "0"], "--steps"),
    (["finetune3d", "--tomograms", "t", "--coords", "c", "--prompt", "p", "-o", "f.pt", "--lr", "-1"], "--lr"),
    (["train3d", "--pool", "p", "-o", "o", "--lr", "nan"], "--lr"),
    (["train3d", "--pool", "p", "-o", "o", "--batch", "0"], "--batch"),
    (["train3d", "--pool", "p", "-o", "o", "--freeze-bn-after", "-5"], "--freeze-bn-after"),
])
def test_numeric_options_of_the_other_3d_commands_are_checked(argv, option, capsys):
    _argparse_error(argv, capsys, option)


def test_window_must_suit_the_network(tmp_path, prompt, capsys):
    base = ["pick3d", "--prompt", str(prompt), "--tomograms", str(tmp_path / "t.mrc"), "-o", str(tmp_path / "o")]
    assert cli(base + ["--min-similarity", "5"]) == 2  # in range only for -1..1 (checked with the settings)
    assert "min_similarity must be a number between -1 and 1" in capsys.readouterr().err
    assert cli(base + ["--window", "20"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
    assert cli(base + ["--window", "32", "--stride", "48"]) == 2
    assert "stride" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("what", ["random", "truncated"])
def test_garbage_model_and_prompt_files(tmp_path, tomo, prompt, capsys, what):
    from cryopick.models.promptable3d import DEFAULT_WEIGHTS

    bad = tmp_path / "bad.pt"
    if what == "random":
        bad.write_bytes(np.random.default_rng(1).bytes(4096))
    else:
        bad.write_bytes(DEFAULT_WEIGHTS.read_bytes()[:50_000])
    base = ["pick3d", "--tomograms", str(tomo), "-o", str(tmp_path / "o")]
    assert cli(base + ["--prompt", str(prompt), "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "ProPicker checkpoint" in err and err.count("\n") == 1
    assert not any(leak in err for leak in LEAKS), err
    assert cli(base + ["--prompt", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "cryopick prompt" in err and err.count("\n") == 1
    assert not any(leak in err for leak in LEAKS), err
    assert not (tmp_path / "o").exists()


def test_make_prompt_rejects_nan_positions_and_bad_diameters(tomo):
    from cryopick.picker3d.prompt import make_prompt

    with pytest.raises(CryopickError, match="finite"):
        make_prompt(tomo, [(np.nan, 10, 10)], diameter_px=8)
    for key in ("diameter_px", "diameter_A"):
        with pytest.raises(CryopickError, match=key):
            make_prompt(tomo, [(10, 10, 10)], **{key: 0.0})
    with pytest.raises(CryopickError, match="folder name"):
        make_prompt(tomo, [(10, 10, 10)], diameter_px=8, label="../x")
    from cryopick.io.images import Image

    vol = np.random.default_rng(0).normal(size=(64, 40, 40)).astype(np.float32)
    vol[:16] = np.nan  # a failed slab of a reconstruction
    with pytest.raises(CryopickError, match="NaN or constant"):
        make_prompt(Image(vol, 10.0, tomo), [(20, 20, 8)], diameter_px=8)
    assert make_prompt(Image(vol, 10.0, tomo), [(20, 20, 50)], diameter_px=8).subvolumes.shape == (1, 37, 37, 37)


def test_settings_files_are_checked(tmp_path):
    from cryopick.picker3d.settings import PickSettings

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"settings": {"threshhold": 0.5}}))
    with pytest.raises(CryopickError, match="threshhold"):
        PickSettings.load(path)
    path.write_text(json.dumps({"threshold": 2.0}))
    with pytest.raises(CryopickError, match="threshold must be"):
        PickSettings.load(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(CryopickError, match="not a settings file"):
        PickSettings.load(path)
    path.write_bytes(b"\x00\xff garbage")
    with pytest.raises(CryopickError, match="cannot read settings"):
        PickSettings.load(path)
    # A calibrate3d file (settings plus information at the top level) still loads.
    path.write_text(json.dumps({"settings": {"mode": "cluster", "threshold": 0.4, "min_factor": 0.1,
                                             "max_factor": None, "min_similarity": 0.6, "refine": 0},
                                "tomogram": "t", "best_case": {"f1": 0.5}}))
    s = PickSettings.load(path)
    assert (s.threshold, s.max_factor, s.min_similarity) == (0.4, None, 0.6)


def test_shipped_weights_and_old_prompt_files_still_load(tmp_path, tomo):
    import io

    from cryopick.picker3d.card import load_model
    from cryopick.picker3d.prompt import PROMPT_FORMAT, load_prompt

    assert load_model().meta["default_threshold"] > 0
    # A prompt file as the first version wrote it (no "meta" key).
    header = {"tomogram": "t", "voxel_size": 10.0, "binning": 1.0, "diameter": 8.0, "label": "old", "invert": False,
              "format": PROMPT_FORMAT}
    buf = io.BytesIO()
    np.savez_compressed(buf, subvolumes=np.zeros((1, 37, 37, 37), np.float32), positions=np.zeros((1, 3)),
                        header=np.array(json.dumps(header)))
    (tmp_path / "old.prompt").write_bytes(buf.getvalue())
    assert load_prompt(tmp_path / "old.prompt").label == "old"


def test_working_tomogram_is_the_shared_working_frame(tomo):
    from cryopick.io.images import read_tomogram
    from cryopick.picker3d.scale import working_tomogram
    from cryopick.preprocess import WorkingFrame

    work = working_tomogram(read_tomogram(tomo), binning=2.0)
    assert isinstance(work, WorkingFrame) and work.working_shape == work.volume.shape == (16, 20, 20)
    xyz = np.array([[3.0, 5.0, 7.0]])
    np.testing.assert_allclose(work.to_original(work.to_working(xyz)), xyz)
    np.testing.assert_allclose(work.to_working(xyz), xyz / 2)
    with pytest.raises(CryopickError, match="binning"):
        working_tomogram(read_tomogram(tomo), binning=0.5)


def test_check_tomogram_refuses_nan_and_constant(tmp_path):
    from cryopick.io.images import read_tomogram
    from cryopick.picker3d.scale import check_tomogram

    vol = np.random.default_rng(0).normal(size=(20, 16, 16)).astype(np.float32)
    vol[17, 3, 4] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_mrc(tmp_path / "inf.mrc", vol, pixel_size=1.0)
        write_mrc(tmp_path / "flat.mrc", np.zeros((20, 16, 16), np.float32), pixel_size=1.0)
    with pytest.raises(CryopickError, match="1 of 5120 voxels"):
        check_tomogram(read_tomogram(tmp_path / "inf.mrc"))
    with pytest.raises(CryopickError, match="same value"):
        check_tomogram(read_tomogram(tmp_path / "flat.mrc"))


def test_tm_mode_copes_with_read_only_maps_without_a_pytorch_warning(tmp_path):
    from cryopick.io.images import read_tomogram
    from cryopick.postprocess.propicker_tm import tm_pick

    vol = np.random.default_rng(0).normal(size=(20, 24, 24)).astype(np.float32)
    write_mrc(tmp_path / "v.mrc", vol, pixel_size=10.0)
    data = read_tomogram(tmp_path / "v.mrc").data
    assert not data.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coords, _ = tm_pick(data, vol[:9, :9, :9].copy(), angle_step=90, min_score=0.5)
    assert len(coords) >= 1


def test_pick3d_help_states_units_files_and_defaults(capsys):
    with pytest.raises(SystemExit):
        cli(["pick3d", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "<tomogram>_autopick.star" in text and "Å from the tomogram centre" in text
    assert "voxels as stored" in text and "Coordinates are voxels of each tomogram" not in text
    for option in ("--stride", "--window", "--batch"):
        start = text.rindex(f"{option} {option[2:].upper()} ")  # the option's help, not the usage line
        assert "default" in text[start : start + 200], option
    assert "--redo" in text and "--bf16" in text and "--overwrite" not in text and "--no-bf16" not in text


def test_unwritable_outputs_are_one_line_errors(tmp_path, tomo, prompt, capsys):
    (tmp_path / "file").write_text("x")  # a file where a folder should be: cannot be written into, even by root
    assert cli(["prompt", "--tomogram", str(tomo), "--at", "20,20,16", "--diameter-vox", "8",
                "-o", str(tmp_path / "file" / "p.prompt")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the prompt file" in err and "Traceback" not in err


def test_prompt_output_that_is_a_folder(tmp_path, tomo, capsys):
    assert cli(["prompt", "--tomogram", str(tomo), "--at", "20,20,16", "--diameter-vox", "8", "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_train3d_init_from_a_damaged_checkpoint(tmp_path):
    from cryopick.picker3d.train.loop import TrainConfig, _build

    bad = tmp_path / "init.pt"
    bad.write_bytes(b"\x80\x04garbage" * 100)
    with pytest.raises(CryopickError) as exc:
        _build(TrainConfig(init=str(bad)))
    assert str(bad) in str(exc.value) and not any(leak in str(exc.value) for leak in LEAKS)
