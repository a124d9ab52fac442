"""Warnings reach the user as one line each, once per run, never through a progress bar (issue 27 item 4).

Before: every PNG printed "<path>: no pixel size in the file header" (20 lines for 15 micrographs), written
into the middle of the progress bar, and the app's job log got raw Python warnings
(``images.py:128: MissingPixelSizeWarning: ...`` plus the source line).
"""

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from cryopick.io.images import read_micrograph
from cryopick.runtime import show_warnings

MODEL = Path(__file__).parent / "data" / "models" / "unet_v0_1_0"
EXAMPLE_PNG = (Path(__file__).parents[1] / "src" / "cryopick" / "data" / "example" / "test" / "micrographs"
               / "Falcon_2012_06_12-15_43_48_0.png")


def _pngs(folder: Path, n: int = 3, side: int = 320) -> list[Path]:
    """``n`` small PNG micrographs (crops of a bundled example micrograph): no pixel size in their header."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(PILImage.open(EXAMPLE_PNG))
    paths = []
    for i in range(n):
        path = folder / f"mic{i}.png"
        PILImage.fromarray(pixels[i * 200:i * 200 + side, i * 200:i * 200 + side]).save(path)
        paths.append(path)
    return paths


def test_missing_pixel_size_is_said_once_naming_the_first_file(tmp_path):
    paths = _pngs(tmp_path, side=64)
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        show_warnings(lines.append)
        for path in paths:
            read_micrograph(path)
        warnings.warn("a different problem")
        warnings.warn("a different problem")  # the same message again: not repeated
        warnings.warn("another problem")
    assert lines == [f"{paths[0]}: no pixel size in the file header; give it explicitly (e.g. --pixel-size) "
                     "(said once; other files without it are not named)", "a different problem", "another problem"]


def test_pick_cli_says_missing_pixel_size_once_above_the_progress_bar(tmp_path):
    mics = tmp_path / "mics"
    _pngs(mics)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CRYOPICK_DEBUG", None)
    run = subprocess.run([sys.executable, "-m", "cryopick.cli.main", "pick", "--model", str(MODEL), "--micrographs",
                          str(mics), "-o", str(tmp_path / "picks"), "--overlays", "0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    err = run.stderr
    assert err.count("no pixel size") == 1, err
    # the first file read names it (prefetch threads read several at once: any of them may be first)
    assert any(f"cryopick: warning: {mics / f'mic{i}.png'}: no pixel size in the file header" in err
               for i in range(3)), err
    assert "MissingPixelSizeWarning" not in err and "images.py" not in err, err
    # Never written into a bar: every warning starts its own line (tqdm.write clears the bar first).
    segments = re.split(r"[\r\n]", err)
    assert all(s.startswith("cryopick: warning: ") for s in segments if "warning:" in s), err
    assert "picking:" in err  # the bar was there to be interleaved with
    # Nothing was asked of --threads, so nothing says "as requested".
    assert "as requested" not in run.stdout + err
    assert "the network uses" in run.stdout + err


def test_app_job_log_gets_one_line_per_warning_not_python_warnings(tmp_path, monkeypatch):
    from cryopick.app import jobs

    paths = _pngs(tmp_path / "mics", side=64)

    def fake_pick(root, out, params):  # what a pick job does with the files, minus the network
        for path in paths:
            read_micrograph(path)
        return {}

    monkeypatch.setattr(jobs, "_pick", fake_pick)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()  # the interpreter's defaults, as in the job's worker process
            jobs.run_job("pick", str(tmp_path), str(tmp_path), {})
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    log = (tmp_path / "log.txt").read_text().splitlines()
    assert log == [f"warning: {paths[0]}: no pixel size in the file header; give it explicitly (e.g. --pixel-size) "
                   "(said once; other files without it are not named)"]
