"""``evaluate`` refuses picks or truth of other micrographs instead of reporting F1 0.000 (issue 27 item 8).

Before: picks of micrographs the truth does not describe were all dropped with a warning ("3 of 3
micrograph name(s) match no image", then "0 picks on 0 micrographs") and F1 0.000 was reported with exit
0; truth whose micrographs are not among --images became empty and scored F1 1.000.
"""

import json
import logging
from pathlib import Path

from cryopick.cli.main import main

EXAMPLE = Path(__file__).parents[2] / "src" / "cryopick" / "data" / "example"
TRAIN, TEST = EXAMPLE / "train", EXAMPLE / "test"  # CryoPPP CSVs of 3 + 3 different micrographs


class Run:
    def __init__(self, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr


def _evaluate(capsys, caplog, *args) -> Run:
    """``cryopick evaluate ARGS`` in this process: exit code and what reached stderr (log lines included)."""
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        rc = main(["evaluate", *map(str, args)])
    err = capsys.readouterr().err
    return Run(rc, "".join(f"{r.getMessage()}\n" for r in caplog.records) + err)


def test_picks_of_other_micrographs_are_an_error_naming_both_sides(tmp_path, capsys, caplog):
    run = _evaluate(capsys, caplog, "--picks", TEST / "coordinates", "--truth", TRAIN / "coordinates", "--diameter", "27",
                    "-o", tmp_path / "report")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"cryopick evaluate: error: {TEST / 'coordinates'} (1974 picks read as cryoppp): none of its 3 micrograph "
        "name(s) (e.g. 'Falcon_2012_06_12-15_43_48_0') is a micrograph of the ground truth "
        f"{TRAIN / 'coordinates'} (named like 'Falcon_2012_06_12-14_33_35_0', 'Falcon_2012_06_12-14_57_34_0', "
        "'Falcon_2012_06_12-15_07_41_0'); give files of the same micrographs, or rename one side to the other's "
        "file stems"]
    assert not (tmp_path / "report").exists()


def test_truth_of_micrographs_not_among_the_images_is_an_error(tmp_path, capsys, caplog):
    run = _evaluate(capsys, caplog, "--picks", TEST / "coordinates", "--truth", TRAIN / "coordinates", "--images",
                    TEST / "micrographs", "--diameter", "27", "-o", tmp_path / "report")
    assert run.returncode == 2
    [line] = run.stderr.splitlines()
    assert line.startswith(f"cryopick evaluate: error: --truth {TRAIN / 'coordinates'}: none of its 3 micrograph "
                           f"name(s) (e.g. 'Falcon_2012_06_12-14_33_35_0') is an image in --images {TEST / 'micrographs'}")


def test_a_folder_of_cryoppp_csvs_is_read_and_scored(tmp_path, capsys, caplog):
    run = _evaluate(capsys, caplog, "--picks", f"same={TEST / 'coordinates'}", "--truth", TEST / "coordinates", "--diameter", "27",
                    "-o", tmp_path / "report")
    assert run.returncode == 0, run.stderr
    assert f"same: 1974 picks on 3 micrographs ({TEST / 'coordinates'})" in run.stderr
    pooled = json.loads((tmp_path / "report" / "report.json").read_text())["methods"]["same"]["pooled"]["radius@1"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["f1"]) == (1974, 0, 0, 1.0)


def test_some_micrographs_without_truth_are_a_warning_not_an_error(tmp_path, capsys, caplog):
    mixed = tmp_path / "picks"
    mixed.mkdir()
    for src in [*sorted((TRAIN / "coordinates").glob("*.csv"))[:1], *sorted((TEST / "coordinates").glob("*.csv"))]:
        (mixed / src.name).write_bytes(src.read_bytes())
    run = _evaluate(capsys, caplog, "--picks", mixed, "--truth", TEST / "coordinates", "--diameter", "27", "-o", tmp_path / "report")
    assert run.returncode == 0, run.stderr
    assert "1 of 4 micrograph name(s) match no image: Falcon_2012_06_12-14_33_35_0" in run.stderr
    pooled = json.loads((tmp_path / "report" / "report.json").read_text())["methods"]["picks"]["pooled"]["radius@1"]
    assert pooled["f1"] == 1.0
