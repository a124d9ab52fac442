"""A corpus of bad inputs across every command: each must end in ONE line naming the problem, exit != 0,
no traceback, and no partial output (the ``-o`` folder is not created, or holds nothing new).

Each case is ``(id, argv, message)``; ``{d}`` in an argument is replaced by the test's data folder, ``{o}``
by a fresh output path. The data are made in the test (noise images, random bytes, small tables). The
error line must contain ``message`` (so a case cannot pass because some other input was bad), and it
must be the only thing on stderr besides progress bars: no argparse usage block, no warning, no second
error. Every case but the bad value itself is valid input: with a good value in its place the command
runs (a pool for train3d, 3D coordinates for finetune3d).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryopick.cli.main import main as cli_main

DATA = Path(__file__).parent / "data" / "models"


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    (root / "mics").mkdir()
    for i in range(2):
        with mrcfile.new(root / "mics" / f"m{i}.mrc") as m:
            m.set_data(rng.normal(size=(96, 96)).astype(np.float32))
            m.voxel_size = 2.0
    (root / "coords").mkdir()
    for i in range(2):
        (root / "coords" / f"m{i}.csv").write_text("x,y\n30,30\n60,60\n")
    (root / "random.bin").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "random.mrc").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "empty.star").write_text("")
    (root / "existing_file").write_text("keep me\n")
    (root / "dup.star").write_text("data_\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateX #2\n1 2\n")
    # MRC header claims 100x100 but holds 384x384 floats.
    with mrcfile.new(root / "lying.mrc") as m:
        m.set_data(np.zeros((384, 384), np.float32))
    with mrcfile.open(root / "lying.mrc", "r+", permissive=True) as m:
        m.header.nx = 100
        m.header.ny = 100
    with mrcfile.new(root / "tomo.mrc") as m:
        m.set_data(rng.normal(size=(48, 64, 64)).astype(np.float32))
        m.voxel_size = 10.0
    with mrcfile.new(root / "nan_tomo.mrc") as m:
        m.set_data(np.full((48, 64, 64), np.nan, np.float32))
        m.voxel_size = 10.0
    # A 2D model folder whose weights are random bytes, and a good one.
    shutil.copytree(DATA / "unet_v0_1_0", root / "model")
    shutil.copytree(DATA / "unet_v0_1_0", root / "bad_model")
    (root / "bad_model" / "model.pt").write_bytes(b"\x00garbage" * 50)
    shutil.copy(DATA / "prompt_v0_1_0.prompt", root / "p.prompt")
    (root / "coords3d").mkdir()  # 3D picks in the tomogram (finetune3d)
    (root / "coords3d" / "tomo.star").write_text(
        "data_\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n30 30 20\n40 20 25\n")
    from cryopick.picker3d.train.corpus import CorpusConfig, make_corpus

    make_corpus(root / "pool", 1, seed=5, progress=False,  # one tiny simulated tomogram (train3d)
              config=CorpusConfig(shape=(32, 48, 48), classes_per_tomogram=3, n_particles=(6, 8),
                                diameter_A=(60, 120), membranes=(0, 0), gold_beads=(0, 1)))
    (root / "settings_extra.json").write_text(json.dumps({"settings": {"threshold": 0.3, "bogus_key": 1}}))
    return root


CASES = [
    # train
    ("train-epochs-0", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "20",
                        "--epochs", "0", "-o", "{o}"],
     "argument --epochs: must be >= 1, got 0"),
    ("train-diameter-nan", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "nan",
                            "-o", "{o}"],
     "argument --diameter: expected a finite number, got 'nan'"),
    ("train-diameter-huge", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "5000",
                             "-o", "{o}"],
     "{d}/mics/m0.mrc: a particle diameter of 5000 px does not fit this 96x96 px micrograph"),
    ("train-lr-negative", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "20",
                           "--lr", "-1", "-o", "{o}"],
     "argument --lr: must be > 0, got -1"),
    ("train-checkpoint-garbage", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter",
                                  "20", "--checkpoint", "{d}/random.bin", "-o", "{o}"],
     "--checkpoint {d}/random.bin: not usable as base weights of backbone 'unet'"),
    ("train-no-micrographs", ["train", "--micrographs", "{d}/nothing_here", "--coords", "{d}/coords",
                              "--diameter", "20", "-o", "{o}"],
     "{d}/nothing_here: no such file or directory"),
    ("train-out-is-file", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "20",
                           "-o", "{d}/existing_file"],
     "{d}/existing_file: is a file, not a model directory"),
    ("train-labelled-fraction-2", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter",
                                   "20", "--labelled-fraction", "2", "-o", "{o}"],
     "argument --labelled-fraction: must be > 0 and <= 1, got 2"),
    # pick
    ("pick-corrupt-model", ["pick", "--model", "{d}/bad_model", "--micrographs", "{d}/mics", "-o", "{o}"],
     "{d}/bad_model/model.pt: not readable as model weights"),
    ("pick-missing-model", ["pick", "--model", "{d}/no_model", "--micrographs", "{d}/mics", "-o", "{o}"],
     "{d}/no_model: no such model folder"),
    ("pick-threshold-nan", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "--threshold", "nan",
                            "-o", "{o}"],
     "argument --threshold: expected a finite number, got 'nan'"),
    ("pick-threshold-2", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "--threshold", "2",
                          "-o", "{o}"],
     "argument --threshold: must be between 0 and 1, got 2"),
    ("pick-border-negative", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "--border", "-1",
                              "-o", "{o}"],
     "argument --border: must be >= 0, got -1"),
    ("pick-out-is-file", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "-o", "{d}/existing_file"],
     "{d}/existing_file: exists and is a file; the output (-o) must be a folder"),
    ("pick-unknown-format", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "--format", "nope",
                             "-o", "{o}"],
     "unknown coordinate format 'nope'"),
    ("pick-lying-mrc", ["pick", "--model", "{d}/model", "--micrographs", "{d}/lying.mrc", "-o", "{o}"],
     "{d}/lying.mrc: the MRC header announces 100 x 100 x 1 float32"),
    # 3D
    ("pick3d-window-0", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc", "--window", "0",
                         "-o", "{o}"],
     "argument --window: must be >= 1, got 0"),
    ("pick3d-stride-nan", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc", "--stride", "nan",
                           "-o", "{o}"],
     "argument --stride: expected a whole number, got 'nan'"),
    ("pick3d-random-model", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc", "--model",
                             "{d}/random.bin", "-o", "{o}"],
     "{d}/random.bin: not a readable cryopick ProPicker checkpoint"),
    ("pick3d-random-prompt", ["pick3d", "--prompt", "{d}/random.bin", "--tomograms", "{d}/tomo.mrc", "-o", "{o}"],
     "{d}/random.bin: not a cryopick prompt file"),
    ("pick3d-unknown-settings-key", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc",
                                     "--settings", "{d}/settings_extra.json", "-o", "{o}"],
     "{d}/settings_extra.json: unknown setting(s) 'bogus_key'"),
    ("pick3d-threshold-minus", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc",
                                "--threshold", "-0.5", "-o", "{o}"],
     "argument --threshold: must be between 0 and 1, got -0.5"),
    ("prompt-at-nan", ["prompt", "--tomogram", "{d}/tomo.mrc", "--at", "nan,10,10", "-o", "{o}.prompt"],
     "argument --at: expected finite x,y,z voxel numbers, got 'nan,10,10'"),
    ("prompt-diameter-px-0", ["prompt", "--tomogram", "{d}/tomo.mrc", "--at", "30,30,20", "--diameter-vox", "0",
                              "-o", "{o}.prompt"],
     "argument --diameter-vox: must be > 0, got 0"),
    ("prompt-random-tomogram", ["prompt", "--tomogram", "{d}/random.mrc", "--at", "30,30,20", "-o", "{o}.prompt"],
     "{d}/random.mrc: not a readable MRC header"),
    ("prompt-outside", ["prompt", "--tomogram", "{d}/tomo.mrc", "--at", "1000,30,20", "--diameter-vox", "8",
                        "-o", "{o}.prompt"],
     "{d}/tomo.mrc: position [1000.0, 30.0, 20.0] is outside the tomogram"),
    ("calibrate3d-missing-truth", ["calibrate3d", "--prompt", "{d}/p.prompt", "--tomogram", "{d}/tomo.mrc",
                                   "--truth", "{d}/nothing.star", "-o", "{o}.json"],
     "{d}/nothing.star: no such file or directory"),
    ("train3d-steps-0", ["train3d", "--pool", "{d}/pool", "--steps", "0", "-o", "{o}"],
     "argument --steps: must be >= 1, got 0"),
    ("finetune3d-lr-nan", ["finetune3d", "--tomograms", "{d}/tomo.mrc", "--coords", "{d}/coords3d/tomo.star",
                           "--prompt", "{d}/p.prompt", "--lr", "nan", "-o", "{o}.pt"],
     "argument --lr: expected a finite number, got 'nan'"),
    # convert / evaluate / simulate / baseline / weights
    ("convert-duplicate-column", ["convert", "{d}/dup.star", "-o", "{o}", "--to", "relion"],
     "{d}/dup.star: column(s) _rlnCoordinateX appear more than once"),
    ("convert-scale-0", ["convert", "{d}/coords/m0.csv", "-o", "{o}", "--to", "relion", "--scale", "0"],
     "argument --scale: must be > 0, got 0"),
    ("convert-random-bytes", ["convert", "{d}/random.bin", "-o", "{o}", "--to", "relion"],
     "{d}/random.bin: unknown coordinate file extension '.bin'"),
    ("convert-empty-star", ["convert", "{d}/empty.star", "-o", "{o}", "--to", "relion"],
     "{d}/empty.star: no data table found"),
    ("convert-over-existing-file", ["convert", "{d}/coords/m0.csv", "-o", "{d}/existing_file", "--to", "relion"],
     "{d}/existing_file: is an existing file, but relion output goes into a directory"),
    ("evaluate-missing-picks", ["evaluate", "--picks", "{d}/nothing", "--truth", "{d}/coords", "--diameter", "20",
                                "-o", "{o}"],
     "{d}/nothing: no such file or directory"),
    ("evaluate-diameter-0", ["evaluate", "--picks", "{d}/coords", "--truth", "{d}/coords", "--diameter", "0",
                             "-o", "{o}"],
     "argument --diameter: must be > 0, got 0"),
    ("simulate-pixel-size-negative", ["simulate", "2d", "--pixel-size", "-2", "-o", "{o}"],
     "argument --pixel-size: must be > 0, got -2"),
    ("baseline-dog-huge-diameter", ["baseline", "dog", "--micrographs", "{d}/mics", "--diameter", "5000",
                                    "-o", "{o}"],
     "{d}/mics/m0.mrc: a particle of diameter 5000 px"),
    ("baseline-template-random", ["baseline", "template", "--micrographs", "{d}/mics", "--diameter", "20",
                                  "--templates", "{d}/random.bin", "-o", "{o}"],
     "{d}/random.bin: not a cryopick template file"),
    ("weights-unknown", ["weights", "download", "no-such-model"],
     "unknown weights 'no-such-model'"),
    ("demo-epochs-0", ["demo", "--epochs", "0", "-o", "{o}"],
     "argument --epochs: must be >= 1, got 0"),
]


PROGRESS_BAR = re.compile(r"^[^:]+: +\d+%\|")  # a tqdm bar, e.g. "loading:  50%|#####     | 1/2 [...]"


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_error(argv, message, d, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    args = [a.format(d=d, o=out) for a in argv]
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    caplog.set_level(logging.INFO)
    try:
        code = cli_main(args)
    except SystemExit as exc:  # argparse rejects a bad value with exit code 2
        code = exc.code
    captured = capsys.readouterr()
    err = captured.err
    assert code not in (0, None), f"{argv[0]} accepted bad input: {args}\n{err}"
    assert "Traceback" not in err + captured.out
    lines = [s for s in re.split(r"[\r\n]", err) if s.strip() and not PROGRESS_BAR.match(s)]
    assert len(lines) == 1, err  # nothing but the error line (argparse's usage block included)
    assert lines[0].startswith(f"cryopick {argv[0]}: error: ") and message.format(d=d) in lines[0], lines[0]
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noise, noise  # no warning said next to the error
    # No partial output: the output path was not created, and the inputs folder is unchanged.
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("out")]
    assert not leftovers or all(p.is_dir() and not any(p.rglob("*")) for p in leftovers), leftovers
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before
    assert (d / "existing_file").read_text() == "keep me\n"
