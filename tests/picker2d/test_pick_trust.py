"""`pick` you can trust: padding bands and borders, damaged model files, bad output folders, damaged
resume records, reruns with other settings, validated options, index paths as given, readable
overlays, picks that carry their diameter."""

import json
import os

import numpy as np
import pytest

from cryopick import CryopickError, Picks
from cryopick.cli.main import main as cli
from cryopick.io.coords import read_picks, write_picks
from cryopick.io.images import write_mrc
from cryopick.picker2d.batch import pick_folder
from cryopick.picker2d.pick import Picker
from cryopick.postprocess.edges import inside_region

DIAMETER = 24.0
TRAIN_ARGS = ["--backbone", "unet-small", "--target-diameter", "12", "--patch-size", "64", "--batch-size", "4",
              "--epochs", "4", "--steps-per-epoch", "12", "--lr", "5e-3", "--threads", "1", "--bf16", "off",
              "--no-progress"]
PICK_ARGS = ["--threads", "1", "--no-progress"]


def synthetic(seed: int, size: int = 320, n: int = 28):
    """Dark blurred disks on noise; ``(image, (N, 2) x, y)``."""
    rng = np.random.default_rng(seed)
    centres = []
    while len(centres) < n:
        p = rng.uniform(DIAMETER, size - DIAMETER, 2)
        if all(np.hypot(*(p - q)) > 1.3 * DIAMETER for q in centres):
            centres.append(p)
    centres = np.array(centres)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(0, 2.0, (size, size)).astype(np.float32) + 10
    for x, y in centres:
        image -= 2.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (DIAMETER / 3.5) ** 2))
    return image, centres


def padded(image: np.ndarray, band: int = 40) -> np.ndarray:
    """Padding bands on all four sides: streaks (edge replication) left and top, a constant fill at the
    bottom, zeros on the right, as motion correction leaves them."""
    img = image.copy()
    img[:, :band] = img[:, band : band + 1]
    img[:band, :] = img[band : band + 1, :]
    img[-band:, :] = img.mean()
    img[:, -band:] = 0
    return img


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust2d")
    for i in range(2):
        image, centres = synthetic(i)
        write_mrc(root / "train" / f"train{i}.mrc", image, pixel_size=3.0)
        write_picks(Picks.from_arrays(f"train{i}", centres), root / "coords" / f"train{i}_manualpick.star", "relion")
    for i in range(2):
        write_mrc(root / "mics" / f"mic{i}.mrc", synthetic(10 + i)[0], pixel_size=3.0)
    assert cli(["train", "--micrographs", str(root / "train"), "--coords", str(root / "coords"), "--diameter",
                str(DIAMETER), "-o", str(root / "model"), *TRAIN_ARGS]) == 0
    return root


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for advice in ("allow_pickle", "file an issue", "weights_only", "torch.load"):
        assert advice not in err, err
    return err


# -- item 5: edge artefacts ------------------------------------------------------------------------
def test_padding_bands_and_the_border_get_no_picks(ws):
    band, size = 40, 384
    image = padded(synthetic(20, size=size, n=40)[0], band)
    interior = (band, band, size - 1 - band, size - 1 - band)
    old = Picker(ws / "model", num_threads=1, bf16=False, detect_padding=False, border=0).pick(image, name="x")
    assert (~inside_region(old.coords, interior)).sum() >= 1  # what `pick` did before: picks in the bands

    picker = Picker(ws / "model", num_threads=1, bf16=False)
    assert picker.prepare(image).region == interior
    new = picker.pick(image, name="x")
    radius = DIAMETER / 2
    assert len(new) >= 10 and inside_region(new.coords, interior, radius).all()
    # Without padding detection, the border alone still keeps picks a radius from the image edge.
    no_pad = Picker(ws / "model", num_threads=1, bf16=False, detect_padding=False).pick(image, name="x")
    assert inside_region(no_pad.coords, (0, 0, size - 1, size - 1), radius).all()
    # --border widens the excluded rim; the dropped centres are reported.
    wide = Picker(ws / "model", num_threads=1, bf16=False, border=60)
    wide.set_image(image, name="x")
    peaks = wide.peaks()
    assert inside_region(wide.to_picks(peaks).coords, interior, 60).all() and len(peaks.edge_scores) > 0


def test_cli_border_option_and_edge_count_in_summary(ws, tmp_path):
    write_mrc(tmp_path / "mics" / "pad.mrc", padded(synthetic(21, size=384, n=40)[0]), pixel_size=3.0)
    out = tmp_path / "picks"
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(tmp_path / "mics"), "-o", str(out),
                "--border", "30", *PICK_ARGS]) == 0
    picks = read_picks(out / "pad_autopick.star")
    assert inside_region(picks.coords, (40, 40, 343, 343), 30).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["border"] == 30 and summary["n_dropped_at_edges"] >= 1
    record = json.loads((out / ".cryopick" / "pad.json").read_text())
    assert record["region"] == [40, 40, 343, 343]


# -- tracebacks -> one-line errors -----------------------------------------------------------------
def copy_model(ws, dest):
    dest.mkdir()
    for name in ("model.pt", "card.json"):
        (dest / name).write_bytes((ws / "model" / name).read_bytes())
    return dest


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "pickle"])
def test_damaged_weights_are_one_line_errors(ws, tmp_path, capsys, damage):
    model = copy_model(ws, tmp_path / "m")
    weights = model / "model.pt"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                         "random": np.random.default_rng(0).bytes(4096),
                         "pickle": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01a\x94."}[damage])
    assert cli(["pick", "--model", str(model), "--micrographs", str(ws / "mics"), "-o", str(tmp_path / "o"),
                *PICK_ARGS]) == 2
    err = one_line_error(capsys)
    assert "model.pt" in err and "cryopick train" in err
    assert not (tmp_path / "o").exists()  # nothing written for a run that could not start


@pytest.mark.parametrize("card", [b"", b"\xff\xfe\x00garbage", b"{not json", b"[1, 2]", b'{"factor": "x"}',
                                  b'{"diameter": -3}', b'{"score_threshold": NaN}', b'{"task": "picker3d"}',
                                  b'{"backbone": "no-such-net"}', b'{"backbone_kwargs": {"bogus": 1}}', None])
def test_damaged_or_missing_card_is_a_one_line_error(ws, tmp_path, capsys, card):
    model = copy_model(ws, tmp_path / "m")
    if card is None:
        (model / "card.json").unlink()
    else:
        good = json.loads((ws / "model" / "card.json").read_text())
        try:
            edit = json.loads(card)
            card = json.dumps({**good, **edit}).encode() if isinstance(edit, dict) else card
        except ValueError:
            pass
        (model / "card.json").write_bytes(card)
    assert cli(["pick", "--model", str(model), "--micrographs", str(ws / "mics"), "-o", str(tmp_path / "o"),
                *PICK_ARGS]) == 2
    assert "card.json" in one_line_error(capsys)


def test_output_that_is_a_file_or_not_writable(ws, tmp_path, capsys):
    existing = tmp_path / "picks.star"
    existing.write_text("x")
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(ws / "mics"), "-o", str(existing),
                *PICK_ARGS]) == 2
    assert "is a file" in one_line_error(capsys) and existing.read_text() == "x"
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(ws / "mics"), "-o",
                str(existing / "sub"), *PICK_ARGS]) == 2
    assert "cannot write" in one_line_error(capsys)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(ws / "mics"), "-o", str(locked),
                    *PICK_ARGS]) == 2
        assert "cannot write" in one_line_error(capsys)


def test_zero_byte_record_is_picked_again_and_the_index_is_written(ws, tmp_path):
    out = tmp_path / "picks"
    args = ["pick", "--model", str(ws / "model"), "--micrographs", str(ws / "mics"), "-o", str(out), *PICK_ARGS]
    assert cli(args) == 0
    (out / ".cryopick" / "mic1.json").write_bytes(b"")
    (out / "autopick.star").unlink()
    assert cli(args) == 0
    assert json.loads((out / "summary.json").read_text())["n_picked_this_run"] == 1
    assert json.loads((out / ".cryopick" / "mic1.json").read_text())["micrograph"] == "mic1"
    assert set(read_picks(out / "autopick.star").micrographs) == {"mic0", "mic1"}


def test_rerun_with_other_settings_or_model_is_refused_unless_redo(ws, tmp_path, capsys):
    out = tmp_path / "picks"
    base = ["pick", "--micrographs", str(ws / "mics"), "-o", str(out), *PICK_ARGS]
    assert cli([*base, "--model", str(ws / "model")]) == 0
    stamp = os.stat(out / "mic0_autopick.star").st_mtime_ns
    assert cli([*base, "--model", str(ws / "model"), "--threshold", "0.2"]) == 2
    err = one_line_error(capsys)
    assert "threshold" in err and "--redo" in err
    other = copy_model(ws, tmp_path / "other")
    card = json.loads((other / "card.json").read_text())
    (other / "card.json").write_text(json.dumps({**card, "created": "another training"}))
    assert cli([*base, "--model", str(other)]) == 2
    assert "model" in one_line_error(capsys)
    assert os.stat(out / "mic0_autopick.star").st_mtime_ns == stamp  # nothing was overwritten
    assert cli([*base, "--model", str(ws / "model"), "--threshold", "0.2", "--redo"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_picked_this_run"] == 2 and summary["threshold"] == 0.2


def test_folder_from_an_earlier_version_still_resumes(ws, tmp_path):
    out = tmp_path / "picks"
    args = ["pick", "--model", str(ws / "model"), "--micrographs", str(ws / "mics"), "-o", str(out), *PICK_ARGS]
    assert cli(args) == 0
    (out / ".cryopick" / "run.json").unlink()  # earlier versions wrote only the per-micrograph records
    for name in ("mic0", "mic1"):
        path = out / ".cryopick" / f"{name}.json"
        record = json.loads(path.read_text())
        path.write_text(json.dumps({k: record[k] for k in ("micrograph", "path", "n_picks", "threshold",
                                                            "candidate_scores", "seconds")}))
    assert cli(args) == 0
    assert json.loads((out / "summary.json").read_text())["n_picked_this_run"] == 0


# -- wrong success: every numeric option is checked ------------------------------------------------
@pytest.mark.parametrize("option,value", [("--threshold", "nan"), ("--threshold", "1.5"), ("--threshold", "-0.1"),
                                          ("--min-distance", "-1"), ("--min-distance", "inf"), ("--border", "nan"),
                                          ("--border", "-2"), ("--pixel-size", "0"), ("--pixel-size", "-1.2"),
                                          ("--overlays", "-1"), ("--overlays", "2.5")])
def test_bad_numbers_are_rejected(ws, tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        cli(["pick", "--model", str(ws / "model"), "--micrographs", str(ws / "mics"), "-o", str(tmp_path / "o"),
             option, value, *PICK_ARGS])
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_format_fails_before_anything_is_written(ws, tmp_path, capsys):
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(ws / "mics"), "-o", str(tmp_path / "o"),
                "--format", "nonsense", *PICK_ARGS]) == 2
    assert "nonsense" in one_line_error(capsys) and not (tmp_path / "o").exists()


def test_library_checks_numbers_and_overlay_names(ws, tmp_path):
    for kwargs in ({"threshold": float("nan")}, {"min_distance": -1}, {"border": float("inf")}, {"pixel_size": 0}):
        with pytest.raises(CryopickError, match=next(iter(kwargs))):
            Picker(ws / "model", **kwargs)
    with pytest.raises(CryopickError, match="no such micrograph"):
        pick_folder(ws / "model", ws / "mics", tmp_path / "o", overlay_names=["mic7"], progress=False)


def test_help_states_defaults_and_units(capsys):
    with pytest.raises(SystemExit):
        cli(["pick", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("default: one particle radius", "micrograph pixels", "default: 3", "0 to 1", "Å/px",
                   "--no-padding-check", "--project-dir", "--redo"):
        assert phrase in text, phrase


# -- friction: index paths, overlays, diameters ----------------------------------------------------
def test_index_paths_are_written_as_given_not_through_symlinks(ws, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "MotionCorr").mkdir(parents=True)
    (project / "MotionCorr" / "Movies").symlink_to(ws / "mics", target_is_directory=True)
    monkeypatch.chdir(project)
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", "MotionCorr/Movies", "-o", "AutoPick/job010",
                *PICK_ARGS]) == 0
    import starfile

    index = starfile.read(project / "AutoPick" / "job010" / "autopick.star")
    assert index["rlnMicrographName"].tolist() == ["MotionCorr/Movies/mic0.mrc", "MotionCorr/Movies/mic1.mrc"]
    assert index["rlnMicrographCoordinates"].tolist() == ["AutoPick/job010/mic0_autopick.star",
                                                          "AutoPick/job010/mic1_autopick.star"]
    # Absolute paths with --project-dir: relative to the project, links kept.
    monkeypatch.chdir(tmp_path)
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(project / "MotionCorr" / "Movies"),
                "-o", str(project / "AutoPick" / "job011"), "--project-dir", str(project), *PICK_ARGS]) == 0
    index = starfile.read(project / "AutoPick" / "job011" / "autopick.star")
    assert index["rlnMicrographName"].tolist() == ["MotionCorr/Movies/mic0.mrc", "MotionCorr/Movies/mic1.mrc"]
    assert index["rlnMicrographCoordinates"].tolist()[0] == "AutoPick/job011/mic0_autopick.star"
    monkeypatch.chdir(project)
    assert len(read_picks(project / "AutoPick" / "job011" / "autopick.star")) > 0


def test_overlays_are_drawn_on_the_micrograph_with_a_colour_bar(ws, tmp_path):
    from PIL import Image

    write_mrc(tmp_path / "big" / "big.mrc", np.tile(synthetic(30)[0], (5, 4)), pixel_size=3.0)  # 1600 x 1280
    out = tmp_path / "picks"
    pick_folder(ws / "model", [ws / "mics" / "mic0.mrc", tmp_path / "big" / "big.mrc"], out, overlays=2,
                num_threads=1, progress=False)
    small = Image.open(out / "overlays" / "mic0.png")
    assert small.size[1] == 320 and small.size[0] > 320 + 60  # the micrograph's own size (not 160) + colour bar
    big = Image.open(out / "overlays" / "big.png")
    assert big.size[1] == 1024 and big.size[0] > 1280 / 1.5625  # longest side 1600 -> 1024
    pixels = np.asarray(small.convert("RGB"), float)
    assert pixels[:, 320:].std() > 10  # the colour bar is drawn


@pytest.mark.parametrize("fmt,suffix", [("cryolo", ".cbox"), ("eman2", ".box"), ("cryoppp", ".csv")])
def test_picks_carry_the_model_diameter(ws, tmp_path, fmt, suffix):
    out = tmp_path / "picks"
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(ws / "mics"), "-o", str(out),
                "--format", fmt, *PICK_ARGS]) == 0
    picks = read_picks(out / f"mic0{suffix}", format=fmt)
    assert len(picks) and np.allclose(picks.table["diameter"], DIAMETER, atol=0.01)
    assert json.loads((out / "summary.json").read_text())["diameter_px"] == pytest.approx(DIAMETER)
