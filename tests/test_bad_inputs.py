"""A corpus of bad inputs across every command: each must end in ONE line naming the problem, exit != 0,
no traceback, and no partial output (the ``-o`` folder is not created, or holds nothing new).

Each case is ``(id, argv)``; ``{d}`` in an argument is replaced by the test's data folder, ``{o}`` by
a fresh output path. The data are made in the test (noise images, random bytes, small tables).
"""

from __future__ import annotations

import json
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
    (root / "settings_extra.json").write_text(json.dumps({"settings": {"threshold": 0.3, "bogus_key": 1}}))
    return root


CASES = [
    # train
    ("train-epochs-0", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "20",
                        "--epochs", "0", "-o", "{o}"]),
    ("train-diameter-nan", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "nan",
                            "-o", "{o}"]),
    ("train-diameter-huge", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "5000",
                             "-o", "{o}"]),
    ("train-lr-negative", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "20",
                           "--lr", "-1", "-o", "{o}"]),
    ("train-checkpoint-garbage", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter",
                                  "20", "--checkpoint", "{d}/random.bin", "-o", "{o}"]),
    ("train-no-micrographs", ["train", "--micrographs", "{d}/nothing_here", "--coords", "{d}/coords",
                              "--diameter", "20", "-o", "{o}"]),
    ("train-out-is-file", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter", "20",
                           "-o", "{d}/existing_file"]),
    ("train-labelled-fraction-2", ["train", "--micrographs", "{d}/mics", "--coords", "{d}/coords", "--diameter",
                                   "20", "--labelled-fraction", "2", "-o", "{o}"]),
    # pick
    ("pick-corrupt-model", ["pick", "--model", "{d}/bad_model", "--micrographs", "{d}/mics", "-o", "{o}"]),
    ("pick-missing-model", ["pick", "--model", "{d}/no_model", "--micrographs", "{d}/mics", "-o", "{o}"]),
    ("pick-threshold-nan", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "--threshold", "nan",
                            "-o", "{o}"]),
    ("pick-threshold-2", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "--threshold", "2",
                          "-o", "{o}"]),
    ("pick-border-negative", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "--border", "-1",
                              "-o", "{o}"]),
    ("pick-out-is-file", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "-o", "{d}/existing_file"]),
    ("pick-unknown-format", ["pick", "--model", "{d}/model", "--micrographs", "{d}/mics", "--format", "nope",
                             "-o", "{o}"]),
    ("pick-lying-mrc", ["pick", "--model", "{d}/model", "--micrographs", "{d}/lying.mrc", "-o", "{o}"]),
    # 3D
    ("pick3d-window-0", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc", "--window", "0",
                         "-o", "{o}"]),
    ("pick3d-stride-nan", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc", "--stride", "nan",
                           "-o", "{o}"]),
    ("pick3d-random-model", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc", "--model",
                             "{d}/random.bin", "-o", "{o}"]),
    ("pick3d-random-prompt", ["pick3d", "--prompt", "{d}/random.bin", "--tomograms", "{d}/tomo.mrc", "-o", "{o}"]),
    ("pick3d-unknown-settings-key", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc",
                                     "--settings", "{d}/settings_extra.json", "-o", "{o}"]),
    ("pick3d-threshold-minus", ["pick3d", "--prompt", "{d}/p.prompt", "--tomograms", "{d}/tomo.mrc",
                                "--threshold", "-0.5", "-o", "{o}"]),
    ("prompt-at-nan", ["prompt", "--tomogram", "{d}/tomo.mrc", "--at", "nan,10,10", "-o", "{o}.prompt"]),
    ("prompt-diameter-px-0", ["prompt", "--tomogram", "{d}/tomo.mrc", "--at", "30,30,20", "--diameter-px", "0",
                              "-o", "{o}.prompt"]),
    ("prompt-random-tomogram", ["prompt", "--tomogram", "{d}/random.mrc", "--at", "30,30,20", "-o", "{o}.prompt"]),
    ("prompt-outside", ["prompt", "--tomogram", "{d}/tomo.mrc", "--at", "1000,30,20", "--diameter-px", "8",
                        "-o", "{o}.prompt"]),
    ("calibrate3d-missing-truth", ["calibrate3d", "--prompt", "{d}/p.prompt", "--tomogram", "{d}/tomo.mrc",
                                   "--truth", "{d}/nothing.star", "-o", "{o}.json"]),
    ("train3d-steps-0", ["train3d", "--pool", "{d}/pool", "--steps", "0", "-o", "{o}"]),
    ("finetune3d-lr-nan", ["finetune3d", "--tomograms", "{d}/tomo.mrc", "--coords", "{d}/coords",
                           "--prompt", "{d}/p.prompt", "--lr", "nan", "-o", "{o}.pt"]),
    # convert / evaluate / simulate / baseline / weights
    ("convert-duplicate-column", ["convert", "{d}/dup.star", "-o", "{o}", "--to", "relion"]),
    ("convert-scale-0", ["convert", "{d}/coords/m0.csv", "-o", "{o}", "--to", "relion", "--scale", "0"]),
    ("convert-random-bytes", ["convert", "{d}/random.bin", "-o", "{o}", "--to", "relion"]),
    ("convert-empty-star", ["convert", "{d}/empty.star", "-o", "{o}", "--to", "relion"]),
    ("convert-over-existing-file", ["convert", "{d}/coords/m0.csv", "-o", "{d}/existing_file", "--to", "relion"]),
    ("evaluate-missing-picks", ["evaluate", "--picks", "{d}/nothing", "--truth", "{d}/coords", "--diameter", "20",
                                "-o", "{o}"]),
    ("evaluate-diameter-0", ["evaluate", "--picks", "{d}/coords", "--truth", "{d}/coords", "--diameter", "0",
                             "-o", "{o}"]),
    ("simulate-pixel-size-negative", ["simulate", "2d", "--pixel-size", "-2", "-o", "{o}"]),
    ("baseline-dog-huge-diameter", ["baseline", "dog", "--micrographs", "{d}/mics", "--diameter", "5000",
                                    "-o", "{o}"]),
    ("baseline-template-random", ["baseline", "template", "--micrographs", "{d}/mics", "--diameter", "20",
                                  "--templates", "{d}/random.bin", "-o", "{o}"]),
    ("weights-unknown", ["weights", "download", "no-such-model"]),
    ("demo-epochs-0", ["demo", "--epochs", "0", "-o", "{o}"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_error(argv, d, tmp_path, capsys):
    out = tmp_path / "out"
    args = [a.format(d=d, o=out) for a in argv]
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    try:
        code = cli_main(args)
    except SystemExit as exc:  # argparse rejects a bad value with exit code 2
        code = exc.code
    captured = capsys.readouterr()
    err = captured.err
    assert code not in (0, None), f"{argv[0]} accepted bad input: {args}\n{err}"
    assert "Traceback" not in err + captured.out
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    # No partial output: the output path was not created, and the inputs folder is unchanged.
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("out")]
    assert not leftovers or all(p.is_dir() and not any(p.rglob("*")) for p in leftovers), leftovers
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before
    assert (d / "existing_file").read_text() == "keep me\n"
