"""Evaluation on small synthetic cases whose scores are computed by hand in the comments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryopick.evaluate.curves import average_precision, pr_curve, pr_curve_arrays
from cryopick.evaluate.matching import match_points
from cryopick.evaluate.metrics import box_iou, evaluate_picks, f_beta, match
from cryopick.evaluate.pixel import disk_mask, evaluate_pixels, mask_scores
from cryopick.evaluate.report import evaluate_methods, write_report
from cryopick.picks import Picks, concat

TRUTH = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
# distances to their nearest truth: 5, 9, far, 6
PICKS = np.array([[3.0, 4.0], [100.0, 9.0], [50.0, 50.0], [0.0, 106.0]])


def test_radius_rule_hand_computed():
    # diameter 20 -> radius 10. Tolerance 1.0 (10 px): picks 0, 1, 3 match -> TP 3, FP 1, FN 0.
    r = match(PICKS, TRUTH, diameter=20, rule="radius", tolerance=1.0)
    assert (r.tp, r.fp, r.fn) == (3, 1, 0)
    assert r.precision == pytest.approx(3 / 4) and r.recall == 1.0
    assert r.f1 == pytest.approx(2 * 0.75 / 1.75)
    assert sorted(zip(r.pred_index.tolist(), r.truth_index.tolist())) == [(0, 0), (1, 1), (3, 2)]
    # Tolerance 0.5 (5 px, inclusive): only pick 0 (distance exactly 5) -> P 1/4, R 1/3, F1 2/7.
    r = match(PICKS, TRUTH, diameter=20, rule="radius", tolerance=0.5)
    assert r.tp == 1
    assert (r.precision, r.recall, r.f1) == pytest.approx((1 / 4, 1 / 3, 2 / 7))


def test_one_to_one_optimal_not_greedy():
    truth = np.array([[0.0, 0.0], [12.0, 0.0]])
    # pick 0 is 5 px from truth 0 and 7 px from truth 1; pick 1 only reaches truth 0 (4 px).
    # Greedy nearest-first from pick 0 gets 1 TP; the optimal assignment gets 2.
    pred = np.array([[5.0, 0.0], [-4.0, 0.0]])
    r = match(pred, truth, diameter=20)
    assert r.tp == 2 and dict(zip(r.pred_index.tolist(), r.truth_index.tolist())) == {0: 1, 1: 0}
    # duplicates: three picks on one particle -> 1 TP, 2 FP
    r = match(np.array([[0.0, 0], [1, 0], [0, 1]]), truth[:1], diameter=20)
    assert (r.tp, r.fp, r.fn) == (1, 2, 0)
    # agrees with the core matcher
    assert match_points(pred, truth, 10).tp == 2


def test_matching_is_a_maximum_matching_of_least_distance_on_mixed_crowded_and_isolated_points():
    """Against one dense assignment over every pair (no components, no shortcut for isolated pairs):
    the same number of pairs, the same summed distance, each pair within the tolerance, one-to-one."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(7)
    for trial in range(40):
        truth = rng.uniform(0, 60, (int(rng.integers(5, 40)), 2))
        pred = np.vstack([truth[: len(truth) // 2] + rng.normal(0, 1.5, (len(truth) // 2, 2)),  # isolated pairs
                          rng.uniform(0, 60, (int(rng.integers(0, 30)), 2))])  # crowded / stray picks
        tol = float(rng.uniform(1.0, 6.0))
        r = match_points(pred, truth, tol)
        d = np.linalg.norm(pred[:, None] - truth[None], axis=2)
        big = d.max() * (len(pred) + len(truth)) + 1.0
        a, b = linear_sum_assignment(np.where(d <= tol, d - big, 2 * big))
        ok = d[a, b] <= tol
        assert r.tp == int(ok.sum()), trial
        assert r.distances.sum() == pytest.approx(d[a[ok], b[ok]].sum()), trial
        assert len(set(r.pred_index.tolist())) == r.tp == len(set(r.truth_index.tolist()))
        np.testing.assert_allclose(d[r.pred_index, r.truth_index], r.distances)
        assert (r.distances <= tol).all()


def test_iou3d_rule_hand_computed():
    # Cubes of edge 10: offset (1,1,1): 9^3 / (2000 - 729) = 0.574 (no); (1,1,0): 810/1190 = 0.681 (yes);
    # (2,0,0): 800/1200 = 0.667 (yes); (3,0,0): 700/1300 = 0.538 (no).
    assert box_iou(np.array([[1, 1, 1], [1, 1, 0], [2, 0, 0], [3, 0, 0]]), 10) == pytest.approx(
        [729 / 1271, 810 / 1190, 800 / 1200, 700 / 1300])
    truth = np.array([[0, 0, 0], [50, 0, 0], [0, 50, 0], [0, 0, 50]], float)
    pred = truth + np.array([[1, 1, 1], [1, 1, 0], [2, 0, 0], [3, 0, 0]])
    r = match(pred, truth, diameter=10, rule="iou3d")
    assert r.tp == 2 and sorted(r.pred_index.tolist()) == [1, 2]


def test_czii_rule_and_fbeta():
    # radius 10 -> 0.5 x radius = 5 px. Picks at 4 px (yes), 6 px (no), far (no): TP 1 of 2 truths.
    truth = np.array([[0.0, 0.0, 0.0], [40.0, 0.0, 0.0]])
    pred = np.array([[4.0, 0.0, 0.0], [40.0, 6.0, 0.0], [90.0, 90.0, 90.0]])
    t = Picks.from_arrays("tomo", truth)
    p = Picks.from_arrays("tomo", pred)
    ev = evaluate_picks(p, t, diameter=20, rule="czii")
    assert ev.pooled["tp"] == 1
    # P 1/3, R 1/2, F4 = 17 * (1/6) / (16/3 + 1/2) = 17/35
    assert ev.pooled["fbeta"] == pytest.approx(17 / 35)
    assert ev.settings["beta"] == 4.0
    assert f_beta(0.5, 0.5, 1) == pytest.approx(0.5)


def test_per_micrograph_and_pooled():
    truth = concat([Picks.from_arrays("a", TRUTH, diameter=20), Picks.from_arrays("b", TRUTH[:2], diameter=20)])
    pred = concat([Picks.from_arrays("a", PICKS), Picks.from_arrays("b", np.zeros((0, 2))),
                   Picks.from_arrays("c", TRUTH)])  # "c" has no truth: ignored with a warning
    with pytest.warns(UserWarning, match="no ground truth"):
        ev = evaluate_picks(pred, truth)  # diameter from the truth table
    per = ev.per_micrograph.set_index("micrograph")
    assert per.loc["a", "tp"] == 3 and per.loc["a", "f1"] == pytest.approx(6 / 7)
    assert per.loc["b", "tp"] == 0 and per.loc["b", "precision"] == 1.0 and per.loc["b", "recall"] == 0
    # pooled: TP 3, 4 picks, 5 truths -> P 0.75, R 0.6, F1 2/3
    assert (ev.pooled["precision"], ev.pooled["recall"], ev.pooled["f1"]) == pytest.approx((0.75, 0.6, 2 / 3))
    assert ev.pooled["mean_f1"] == pytest.approx((6 / 7 + 0) / 2)


def test_pr_curve_known_steps():
    truth = Picks.from_arrays("m", TRUTH)
    # scores 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.5 TP
    pred = Picks.from_arrays("m", np.array([[0, 1], [60, 60], [100, 2], [40, 40], [1, 99.0]]),
                             score=[0.9, 0.8, 0.7, 0.6, 0.5])
    c = pr_curve(pred, truth, diameter=20)
    assert c.thresholds.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert c.precision == pytest.approx([1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
    assert c.recall == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45
    assert c.auprc == pytest.approx(34 / 45)
    best = c.best()
    assert best["threshold"] == 0.5 and best["f1"] == pytest.approx(0.75) and best["margin_threshold"] == 0.5
    # F-0.5 favours precision: 0.714 at 0.9 (vs 0.667 at 0.7, 0.652 at 0.5); margin halfway to 0.8
    best = c.best(beta=0.5)
    assert best["threshold"] == 0.9 and best["f1"] == pytest.approx(1.25 / 3 / (0.25 + 1 / 3))
    assert best["margin_threshold"] == pytest.approx(0.85)
    assert c.at_threshold(0.65)["f1"] == pytest.approx(2 / 3)
    assert c.at_threshold(0.95)["recall"] == 0
    assert average_precision([1.0, 0.5], [0.5, 1.0]) == pytest.approx(0.75)


def test_pr_curve_ties_and_augmenting_path():
    truth = np.array([[0.0, 0.0], [12.0, 0.0]])
    # pick 0 (score 0.9) reaches both truths, pick 1 (0.8) only truth 0: the exact matching at
    # threshold 0.8 has 2 TP (a nearest-first assignment would leave pick 1 unmatched).
    c = pr_curve_arrays([(np.array([[5.0, 0.0], [-4.0, 0.0]]), np.array([0.9, 0.8]), truth)], diameter=20)
    assert c.tp.tolist() == [1, 2]
    # tied scores give one point
    c = pr_curve_arrays([(np.array([[0.0, 0], [50, 50], [12, 0]]), np.array([0.5, 0.5, 0.2]), truth)], diameter=20)
    assert c.thresholds.tolist() == [0.5, 0.2] and c.tp.tolist() == [1, 2] and c.n_pred.tolist() == [2, 3]


def test_pr_curve_equals_rematching_every_prefix():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 100, (40, 2))
    pred = rng.uniform(0, 100, (60, 2))
    score = rng.uniform(size=60)
    c = pr_curve_arrays([(pred, score, truth)], diameter=20)
    order = np.argsort(-score)
    assert c.tp.tolist() == [match_points(pred[order[: k + 1]], truth, 10).tp for k in range(60)]


def test_disks_and_pixel_scores():
    assert disk_mask(np.array([[5.0, 5.0]]), (11, 11), 2).sum() == 13  # 5 + 2*3 + 2 lattice points
    a = disk_mask(np.array([[5.0, 5.0]]), (11, 11), 1)
    b = disk_mask(np.array([[6.0, 5.0]]), (11, 11), 1)
    assert a.sum() == 5 and b.sum() == 5
    # overlap {(5,5), (6,5)}: Dice 2*2/10, IoU 2/8
    s = mask_scores(b, a)
    assert (s["dice"], s["iou"], s["precision"], s["recall"]) == pytest.approx((0.4, 0.25, 0.4, 0.4))
    assert disk_mask(np.array([[1.0, 1.0, 1.0]]), (3, 3, 3), 1).sum() == 7  # a 3D ball of radius 1
    truth = Picks.from_arrays("m", np.array([[5.0, 5.0]]))
    # a given predicted mask: the full 3x3 square around the centre (9 px) vs the 5-px disk
    pred = np.zeros((11, 11), bool)
    pred[4:7, 4:7] = True
    table, pooled = evaluate_pixels({"m": pred}, truth, {"m": (11, 11)}, diameter=2)
    assert pooled["precision"] == pytest.approx(5 / 9) and pooled["recall"] == 1.0
    assert pooled["dice"] == pytest.approx(10 / 14)


def test_report_renders(tmp_path):
    truth = concat([Picks.from_arrays("a", TRUTH + 20, diameter=20), Picks.from_arrays("b", TRUTH + 20, diameter=20)])
    good = concat([Picks.from_arrays("a", PICKS + 20, score=[0.9, 0.8, 0.1, 0.7]),
                   Picks.from_arrays("b", TRUTH + 21, score=[0.5, 0.6, 0.7])])
    bad = concat([Picks.from_arrays("a", np.array([[70.0, 70.0]]), score=0.3),
                  Picks.from_arrays("b", TRUTH[:1] + 20, score=0.2)])
    methods = {"good": good, "bad": bad}
    summary = evaluate_methods(methods, truth, shapes={"a": (140, 140), "b": (140, 140)})
    images = {"a": np.random.default_rng(0).normal(size=(140, 140))}
    paths = write_report(summary, tmp_path, images=images, methods=methods, truth=truth)
    assert paths
    for name in ("report.md", "report.json", "pr_curves.png", "per_micrograph_boxplot.png", "grouped_bars.png",
                 "overlay_a.png"):
        assert (tmp_path / name).stat().st_size > 500, name
    data = json.loads((tmp_path / "report.json").read_text())
    g = data["methods"]["good"]["pooled"]["radius@1"]
    # a: TP 3 of 4 picks; b: TP 3 of 3 -> pooled P 6/7, R 1
    assert (g["tp"], g["n_pred"], g["n_truth"]) == (6, 7, 6)
    assert g["precision"] == pytest.approx(6 / 7) and g["recall"] == 1.0
    # at tolerance 0.5 (5 px): a: only the pick at 5 px; b: all three (1.4 px) -> TP 4
    assert data["methods"]["good"]["pooled"]["radius@0.5"]["tp"] == 4
    b = data["methods"]["bad"]["pooled"]["radius@1"]
    assert (b["tp"], b["n_pred"]) == (1, 2)
    assert data["methods"]["good"]["recall_success_rate"] == {"0.6": 1.0, "0.8": 1.0}
    assert data["methods"]["bad"]["recall_success_rate"]["0.6"] == 0.0
    # best F1 of "good" drops the 0.1-scored false pick: 6 TP / 6 picks
    assert data["methods"]["good"]["curve"]["best"]["f1"] == pytest.approx(1.0)
    assert data["methods"]["good"]["curve"]["best"]["threshold"] == pytest.approx(0.5)
    assert len(data["statistics"]) == 3 and data["statistics"][0]["n"] == 2
    assert "| good | 7 |" in (tmp_path / "report.md").read_text()
    assert set(data["figures"].values()) >= {"pr_curves.png", "overlay_a.png"}


def test_evaluate_cli(tmp_path, capsys):
    from cryopick.cli.main import main
    from cryopick.io.coords import write_picks
    from cryopick.io.images import write_mrc

    truth = concat([Picks.from_arrays("a", TRUTH + 20, diameter=20), Picks.from_arrays("b", TRUTH + 20, diameter=20)])
    good = concat([Picks.from_arrays("a", PICKS + 20, score=[0.9, 0.8, 0.1, 0.7]),
                   Picks.from_arrays("b", TRUTH + 21, score=[0.5, 0.6, 0.7])])
    write_picks(truth, tmp_path / "truth", "cryoppp")
    write_picks(good, tmp_path / "methods" / "good", "relion")
    write_picks(good.for_micrograph("a"), tmp_path / "methods" / "half", "topaz")  # only micrograph a
    for name in "ab":
        write_mrc(tmp_path / "mics" / f"{name}.mrc", np.zeros((140, 140), np.float32), pixel_size=1.0)
    out = tmp_path / "report"
    assert main(["evaluate", "--methods-dir", str(tmp_path / "methods"), "--truth", str(tmp_path / "truth"),
                 "--diameter", "20", "--images", str(tmp_path / "mics"), "--pixel", "-o", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["methods"]["good"]["pooled"]["radius@1"]["tp"] == 6
    half = data["methods"]["half"]["pooled"]["radius@1"]
    assert (half["tp"], half["n_truth"]) == (3, 6)  # micrograph b counts with recall 0
    assert data["methods"]["good"]["pixel"]["pooled"]["dice"] > 0.5
    assert (out / "overlay_a.png").exists() and "good" in capsys.readouterr().out
    # --only-picked, 3D rule on 2D data is refused only by matching rules that need 3D? iou works in 2D too
    assert main(["evaluate", "--picks", f"half={tmp_path / 'methods' / 'half'}", "--truth", str(tmp_path / "truth"),
                 "--diameter", "20", "--only-picked", "--rule", "iou3d", "-o", str(tmp_path / "r2")]) == 0
    data = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert data["settings"]["micrographs"] == ["a"]
    # offsets (3,4) -> IoU 17*16/(800-272) = 0.515 (no); (0,9), (0,6): 11/29 and 14/26 (no): 0 TP
    assert data["methods"]["half"]["pooled"]["iou3d"]["tp"] == 0
    # user errors exit 2 with a one-line message
    assert main(["evaluate", "--truth", str(tmp_path / "truth"), "-o", str(tmp_path / "r3")]) == 2
    assert "--picks" in capsys.readouterr().err


def test_report_3d_iou_and_czii(tmp_path):
    rng = np.random.default_rng(5)
    truth_xyz = rng.uniform(10, 54, (12, 3))
    truth = Picks.from_arrays("tomo", truth_xyz, diameter=10)
    pred = Picks.from_arrays("tomo", np.concatenate([truth_xyz[:9] + 1.0, rng.uniform(0, 64, (3, 3))]),
                             score=np.r_[np.linspace(0.9, 0.5, 9), [0.3, 0.2, 0.1]])
    for rule, key in (("iou3d", "iou3d"), ("czii", "czii")):
        summary = evaluate_methods({"m": pred}, truth, rule=rule)
        pooled = summary["methods"]["m"]["pooled"][key]
        # offset (1,1,1) in a 10-px cube: IoU 729/1271 < 0.6 -> no match; distance 1.73 <= 2.5 -> CZII match
        assert pooled["tp"] == (0 if rule == "iou3d" else 9)
        out = tmp_path / rule
        write_report(summary, out, images={"tomo": rng.normal(size=(64, 64, 64))}, methods={"m": pred}, truth=truth)
        assert (out / "overlay_tomo.png").exists() and (out / "report.md").exists()
    data = json.loads((tmp_path / "czii" / "report.json").read_text())
    p = data["methods"]["m"]["pooled"]["czii"]
    assert p["fbeta"] == pytest.approx(f_beta(9 / 12, 9 / 12, 4))
    assert "F-β" in (tmp_path / "czii" / "report.md").read_text()


def test_evaluate_cli_3d_formats_and_scale(tmp_path):
    from cryopick.cli.main import main
    from cryopick.io.coords import write_picks
    from cryopick.picks import scale

    rng = np.random.default_rng(7)
    xyz = rng.uniform(20, 180, (10, 3))
    truth = Picks.from_arrays("tomo1", xyz, diameter=20)
    picks = Picks.from_arrays("tomo1", np.concatenate([xyz[:8] + [3.0, 0, 0], [[100.0, 5, 5]]]),
                              score=np.linspace(1, 0.2, 9), pixel_size=10.0)
    write_picks(truth, tmp_path / "truth", "imod")
    # picks on 2x binned 100^3 tomograms (20 Å voxels), RELION 5 centred Å coordinates
    write_picks(scale(picks, 0.5), tmp_path / "binned", "relion", tomo_size=(100, 100, 100))
    out = tmp_path / "r"
    # (the per-tomogram file; reading the directory's autopick.star index loses --tomo-size, a reader issue)
    assert main(["evaluate", "--picks", f"bin2={tmp_path / 'binned' / 'tomo1_autopick.star'}", "--picks-scale", "2",
                 "--truth",
                 str(tmp_path / "truth"), "--diameter", "20", "--rule", "czii", "--tomo-size", "100,100,100", "--voxel-size", "20",
                 "-o", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    p = data["methods"]["bin2"]["pooled"]["czii"]
    # offsets of 3 px <= 0.5 x radius (5 px): 8 TP of 9 picks, 10 truths; F-beta with beta 4
    assert (p["tp"], p["n_pred"], p["n_truth"]) == (8, 9, 10)
    assert p["fbeta"] == pytest.approx(f_beta(8 / 9, 8 / 10, 4))


def _pick_folder(tmp_path, threshold: float):
    """A folder laid out as `cryopick pick` writes it: RELION STAR, summary.json with the threshold."""
    from cryopick.io.coords import write_picks

    truth = Picks.from_arrays("a", TRUTH + 20, diameter=20)
    every = Picks.from_arrays("a", PICKS + 20, score=[0.9, 0.8, 0.1, 0.3])
    kept = every._with(every.table[every.table["score"] >= threshold])
    folder = tmp_path / f"picks_{threshold:g}"
    write_picks(kept, folder, "relion")
    (folder / "summary.json").write_text(json.dumps({"threshold": threshold, "n_picks": len(kept)}))
    write_picks(truth, tmp_path / "truth", "cryoppp", overwrite=True)
    return folder


def test_report_says_where_the_curve_of_thresholded_picks_stops(tmp_path, capsys, caplog):
    from cryopick.cli.main import main

    folder = _pick_folder(tmp_path, 0.5)  # the picks at 0.1 and 0.3 (one a true particle) were not written
    out = tmp_path / "report"
    assert main(["evaluate", "--picks", str(folder), "--truth", str(tmp_path / "truth"), "--diameter", "20",
                 "-o", str(out)]) == 0
    scope = json.loads((out / "report.json").read_text())["methods"][folder.name]["curve"]["scope"]
    assert scope["written_threshold"] == 0.5 and not scope["complete"]
    assert scope["max_recall"] == pytest.approx(2 / 3) and scope["threshold_source"].endswith("summary.json")
    assert "not threshold-free" in scope["note"] and "--threshold 0" in scope["note"]
    markdown = (out / "report.md").read_text()
    assert "curve ends at recall" in markdown and "not threshold-free" in markdown
    assert "curve ends at recall 0.667" in capsys.readouterr().out
    assert "not threshold-free" in caplog.text


def test_report_calls_a_curve_over_every_candidate_complete(tmp_path):
    from cryopick.cli.main import main

    folder = _pick_folder(tmp_path, 0.0)
    out = tmp_path / "report"
    assert main(["evaluate", "--picks", str(folder), "--truth", str(tmp_path / "truth"), "--diameter", "20",
                 "-o", str(out)]) == 0
    scope = json.loads((out / "report.json").read_text())["methods"][folder.name]["curve"]["scope"]
    assert scope["complete"] and scope["max_recall"] == pytest.approx(1.0)
    assert "covers all scores" in scope["note"]


def test_curve_scope_of_picks_of_unknown_origin():
    from cryopick.evaluate.curves import curve_scope

    picks = Picks.from_arrays("a", PICKS, score=[0.9, 0.8, 0.1, 0.7])
    truth = Picks.from_arrays("a", TRUTH)
    scope = curve_scope(picks, pr_curve(picks, truth, diameter=20))
    assert scope["written_threshold"] is None and not scope["complete"] and scope["lowest_score"] == 0.1
    assert "if they were thresholded when written" in scope["note"]


@pytest.mark.parametrize("option, value", [("--diameter", "0"), ("--diameter", "nan"), ("--tolerance", "-1"),
                                           ("--min-score", "nan"), ("--height", "0"), ("--picks-scale", "0"),
                                           ("--voxel-size", "-3"), ("--tomo-size", "1,2"), ("--tomo-size", "1,2,0")])
def test_numeric_options_are_validated(tmp_path, capsys, option, value):
    from cryopick.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--picks", "p", "--truth", "t", "-o", str(tmp_path / "r"), option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and option in err and "Traceback" not in err
