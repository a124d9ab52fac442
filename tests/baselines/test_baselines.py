"""Baseline pickers on synthetic micrographs with known particle positions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryopick.baselines.dog import dog_pick
from cryopick.baselines.template2d import (
    TemplateSet,
    align_and_average,
    build_templates,
    extract_boxes,
    template_pick,
)
from cryopick.evaluate.metrics import match
from cryopick.postprocess.rotations import rotate_template, rotation_matrices

torch.set_num_threads(1)


def _particle(size: int, diameter: float) -> np.ndarray:
    """A dark, asymmetric particle: a disk plus an off-centre lobe (so rotations are distinguishable)."""
    yy, xx = np.mgrid[:size, :size] - size // 2
    r = diameter / 2
    body = np.exp(-(xx**2 + yy**2) / (2 * (0.45 * r) ** 2))
    lobe = np.exp(-((xx - 0.45 * r) ** 2 + (yy + 0.25 * r) ** 2) / (2 * (0.25 * r) ** 2))
    return -(body + 0.8 * lobe).astype(np.float32)


def _micrograph(n: int, shape=(384, 384), diameter=32.0, noise=0.25, seed=0):
    """Particles on a grid with jitter (never overlapping), random in-plane rotations, Gaussian noise."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0, noise, shape).astype(np.float32)
    size = int(diameter * 1.5) | 1
    p = _particle(size, diameter)
    half = size // 2
    grid = [(x, y) for y in range(40, shape[0] - 40, 56) for x in range(40, shape[1] - 40, 56)]
    picks = rng.permutation(len(grid))[:n]
    coords = []
    for i in picks:
        x, y = grid[i]
        x, y = x + int(rng.integers(-6, 7)), y + int(rng.integers(-6, 7))
        rot = rotate_template(p, rotation_matrices([rng.uniform(0, 360)], 2))[0].numpy()
        img[y - half: y + half + 1, x - half: x + half + 1] += rot
        coords.append((x, y))
    return img + 100.0, np.array(coords, float)  # an offset: pickers must normalise


def test_dog_finds_particles():
    img, truth = _micrograph(20)
    coords, scores = dog_pick(img, 32, working_diameter=16, threshold=3.0)
    r = match(coords, truth, 32, tolerance=0.5)
    assert r.tp == 20 and r.fp <= 1
    assert np.all(np.diff(scores) <= 0)
    # bright particles with polarity "bright": same answer on the inverted image
    coords_b, _ = dog_pick(200.0 - img, 32, working_diameter=16, threshold=3.0, polarity="bright")
    assert match(coords_b, truth, 32, tolerance=0.5).tp == 20
    # and the wrong polarity does not pick them at their centres
    coords_w, _ = dog_pick(img, 32, working_diameter=16, threshold=3.0, polarity="bright")
    assert match(coords_w, truth, 32, tolerance=0.5).tp < 5


def test_min_distance_is_respected():
    img, _ = _micrograph(20)
    coords, _ = dog_pick(img, 32, threshold=None, min_distance=30)
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    assert d[np.triu_indices(len(coords), 1)].min() >= 30 - 1e-6


def test_alignment_recovers_rotated_template():
    p = _particle(25, 16)
    rng = np.random.default_rng(0)
    angles = rng.choice(np.arange(0, 360, 15), 40)
    stack = rotate_template(p, rotation_matrices(angles, 2)).numpy() + rng.normal(0, 0.3, (40, 25, 25))
    plain = stack.mean(0)
    aligned, counts = align_and_average(stack.astype(np.float32), n_templates=1, angle_step=15)
    assert counts == [40]
    # the aligned average matches the particle (some rotation of it) far better than the plain average
    best = max(np.corrcoef(rotate_template(aligned[0], rotation_matrices([a], 2))[0].numpy().ravel(),
                           p.ravel())[0, 1] for a in range(0, 360, 15))
    assert best > 0.95
    assert np.corrcoef(plain.ravel(), p.ravel())[0, 1] < best - 0.05


def test_template_picker_from_annotations(tmp_path):
    train, train_truth = _micrograph(16, seed=1)
    test, test_truth = _micrograph(20, seed=2)
    ts = build_templates([train], [train_truth], 32, working_diameter=16, n_templates=1)
    assert ts.templates.shape == (1, 21, 21) and ts.n_particles == [16]
    ts.save(tmp_path / "t.npz")
    ts2 = TemplateSet.load(tmp_path / "t.npz")
    assert np.array_equal(ts2.templates, ts.templates) and ts2.diameter == 32
    coords, scores = template_pick(test, ts2, angle_step=15, threshold=0.5)
    r = match(coords, test_truth, 32, tolerance=0.5)
    assert r.tp == 20 and r.fp <= 1
    assert scores.max() <= 1.0 + 1e-6


def test_extract_boxes_skips_border_and_3d():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    boxes = extract_boxes(img, np.array([[5, 4], [0, 0]]), 3)
    assert boxes.shape == (1, 3, 3) and boxes[0, 1, 1] == img[4, 5]
    vol = np.zeros((9, 9, 9), np.float32)
    vol[4, 5, 6] = 1
    assert extract_boxes(vol, np.array([[6, 5, 4]]), 3)[0, 1, 1, 1] == 1


def test_template_picker_3d():
    rng = np.random.default_rng(3)
    obj = np.zeros((9, 9, 9), np.float32)
    obj[2:7, 3:6, 3:6] = 1
    obj[2:4, 3:6, 6:8] = 1
    vol = rng.normal(0, 0.2, (40, 40, 40)).astype(np.float32)
    truth = np.array([[10, 10, 10], [28, 12, 20], [15, 29, 28]], float)
    for x, y, z in truth.astype(int):
        vol[z - 4: z + 5, y - 4: y + 5, x - 4: x + 5] += obj
    ts = build_templates([vol], [truth], 9, working_diameter=9, angle_step=90, iterations=1)
    coords, _ = template_pick(vol, ts, angle_step=90, threshold=0.4)
    assert match(coords, truth, 9, tolerance=0.5).tp == 3


def test_baseline_cli_template_and_dog(tmp_path):
    from cryopick.cli.main import main
    from cryopick.io.coords import read_picks, write_picks
    from cryopick.io.images import write_mrc
    from cryopick.picks import Picks, concat

    mics = tmp_path / "mics"
    truths = []
    for i in range(3):
        img, coords = _micrograph(16, seed=10 + i)
        write_mrc(mics / f"mic{i}.mrc", img, pixel_size=2.0)
        truths.append(Picks.from_arrays(f"mic{i}", coords, diameter=32))
    write_picks(concat(truths[:1]), tmp_path / "train", "cryoppp")  # annotations on mic0 only
    out = tmp_path / "tm"
    args = ["baseline", "template", "--micrographs", str(mics), "--coords", str(tmp_path / "train"), "--diameter",
            "32", "--working-diameter", "16", "--angle-step", "15", "-o", str(out)]
    assert main(args) == 0
    picks = read_picks(out)
    assert sorted(picks.micrographs) == ["mic0", "mic1", "mic2"]
    for truth in truths[1:]:
        r = match(picks.for_micrograph(truth.micrographs[0]).coords, truth.coords, 32, tolerance=0.5)
        assert r.recall >= 0.9 and r.precision >= 0.9
    info = json.loads((out / "baseline.json").read_text())
    assert info["calibration"]["micrographs"] == ["mic0"] and info["calibration"]["f1"] >= 0.95
    assert (out / "templates.npz").exists()
    # resumable: a rerun reuses the cached peaks (delete an image: it is not read again)
    cached = sorted((out / ".cryopick_partial").rglob("*.npz"))
    assert len(cached) == 3
    assert main(args) == 0
    # DoG with a fixed threshold, without annotations
    assert main(["baseline", "dog", "--micrographs", str(mics), "--diameter", "32", "--working-diameter", "16",
                 "--threshold", "3", "-o", str(tmp_path / "dog"), "--format", "topaz"]) == 0
    dog = read_picks(tmp_path / "dog")
    assert match(dog.for_micrograph("mic2").coords, truths[2].coords, 32, tolerance=0.5).tp >= 15


def test_baseline_cli_errors(tmp_path, capsys):
    from cryopick.cli.main import main
    from cryopick.io.images import write_mrc

    img, _ = _micrograph(4)
    write_mrc(tmp_path / "m.mrc", img)
    assert main(["baseline", "template", "--micrographs", str(tmp_path / "m.mrc"), "--diameter", "32",
                 "-o", str(tmp_path / "o")]) == 2
    assert "--coords" in capsys.readouterr().err


def _one_micrograph(tmp_path):
    from cryopick.io.images import write_mrc

    img, coords = _micrograph(8, seed=3)
    write_mrc(tmp_path / "mics" / "m.mrc", img, pixel_size=2.0)
    return tmp_path / "mics" / "m.mrc", coords


def test_dog_diameter_larger_than_the_micrograph_is_an_error(tmp_path, capsys):
    from cryopick.cli.main import main

    mic, _ = _one_micrograph(tmp_path)
    assert main(["baseline", "dog", "--micrographs", str(mic), "--diameter", "5000", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "m.mrc: a particle of diameter 5000 px" in err and "does not fit a 384 x 384-pixel image" in err
    assert "Traceback" not in err and not (tmp_path / "o" / "autopick.star").exists()


def test_no_pick_above_the_threshold_is_a_warning(tmp_path):
    from cryopick.cli.main import main

    mic, _ = _one_micrograph(tmp_path)
    with pytest.warns(UserWarning, match=r"dog: no pick scores at least 1e\+06 on 1 micrograph\(s\); the \d+ peaks"):
        assert main(["baseline", "dog", "--micrographs", str(mic), "--diameter", "32", "--threshold", "1e6",
                     "-o", str(tmp_path / "o")]) == 0


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY random", b"PK\x03\x04 not a zip", np.random.default_rng(0)
                                     .integers(0, 256, 4000, dtype=np.uint8).tobytes()])
def test_random_bytes_as_templates_give_our_message(tmp_path, capsys, content):
    from cryopick.cli.main import main

    mic, _ = _one_micrograph(tmp_path)
    (tmp_path / "t.npz").write_bytes(content)
    assert main(["baseline", "template", "--micrographs", str(mic), "--diameter", "32", "--templates",
                 str(tmp_path / "t.npz"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "t.npz: not a cryopick template file" in err and len(err.splitlines()) == 1
    assert not any(word in err for word in ("allow_pickle", "pickle", "Traceback", "file an issue"))


def test_damaged_peak_cache_is_recomputed(tmp_path):
    from cryopick.baselines.pipeline import pick_all

    mic, _ = _one_micrograph(tmp_path)
    calls = []

    def picker(image):
        calls.append(1)
        return np.array([[10.0, 20.0]]), np.array([0.5])

    cache = tmp_path / "cache"
    pick_all([mic], picker, 32, cache_dir=cache, progress=False)
    (cache / "m.npz").write_bytes(b"")  # a zero-byte file left by a full disk
    picks = pick_all([mic], picker, 32, cache_dir=cache, progress=False)
    assert len(calls) == 2 and len(picks) == 1


@pytest.mark.parametrize("option, value", [
    ("--diameter", "0"), ("--diameter", "nan"), ("--threshold", "nan"), ("--min-distance", "0"),
    ("--working-diameter", "-1"), ("--exclude-border", "-1"), ("--sigma-ratio", "1"), ("--n-templates", "0"),
    ("--angle-step", "0"), ("--angle-step", "400"), ("--max-particles", "0"),
])
def test_baseline_numeric_options_are_validated(tmp_path, capsys, option, value):
    from cryopick.cli.main import main

    argv = ["baseline", "dog", "--micrographs", "m.mrc", "--diameter", "32", "-o", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as info:
        main(argv + [option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and option in err and "Traceback" not in err
