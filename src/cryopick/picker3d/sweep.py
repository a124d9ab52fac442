"""Calibration of ProPicker post-processing on an annotated tomogram.

*Best-case F1* (the paper's protocol): the best F1 over a grid of threshold × minimum component size ×
maximum component size (× minimum prompt similarity of a component, when a similarity function is
given: :class:`cryopick.pick3d.PromptSimilarity`), on the tomogram being scored. *Fair protocol*: calibrate on one annotated
tomogram, save the settings (:func:`save_settings`, a small JSON file ``pick3d --settings``
reads) and apply them unchanged to the others. The settings saved are not simply the best on the
calibration tomogram: :func:`choose_settings` keeps the model's recommended settings unless a setting beats
them by more than the noise that the number of annotated particles leaves (two particles cannot tell
settings apart).

A pick is correct when it lies within ``tolerance`` voxels (default: one particle radius) of a
ground-truth centre, matched one-to-one (:func:`cryopick.evaluate.matching.match_points`).
All sizes and distances are in working voxels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.evaluate.matching import match_points
from cryopick.io.atomic import write_text
from cryopick.io.jsonutil import dumps
from cryopick.postprocess.cluster3d import components, select, sphere_volume
from cryopick.postprocess.nms import nms_points

log = logging.getLogger(__name__)

# Up to 0.99: well-trained segmenters are confident, and their best threshold can sit above 0.95.
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.1, 0.951, 0.05), 3)) + (0.97, 0.98, 0.99)
DEFAULT_MIN_FACTORS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
DEFAULT_MAX_FACTORS = (0.8, 1.0, 1.2, 1.5, 2.0, 3.0, np.inf)
#: Minimum prompt similarities swept when a similarity function is given (``None``: no check).
DEFAULT_MIN_SIMILARITIES = (None,) + tuple(np.round(np.arange(0.0, 0.91, 0.1), 2))


@dataclass
class SweepResult:
    """All grid points (``table``: threshold, min_size, max_size, precision, recall, f1, n_pred) and the best."""

    table: pd.DataFrame
    best: dict


def sweep_cluster(prob: np.ndarray, truth: np.ndarray, diameter: float, *,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                  min_factors: Sequence[float] = DEFAULT_MIN_FACTORS,
                  max_factors: Sequence[float] = DEFAULT_MAX_FACTORS,
                  min_distance: float | None = None, tolerance: float | None = None,
                  similarity: Callable[[np.ndarray], np.ndarray] | None = None,
                  min_similarities: Sequence[float | None] = DEFAULT_MIN_SIMILARITIES,
                  ignore: np.ndarray | None = None) -> SweepResult:
    """Best-case F1 sweep of ProPicker-C on one ``(D, H, W)`` probability map.

    Parameters
    ----------
    truth
        ``(M, 3)`` true centres ``x, y, z`` (working voxels).
    diameter
        Particle diameter (working voxels); size limits are ``factor × sphere volume``.
    min_distance
        NMS distance applied to the picks (default: the radius, as :func:`cryopick.pick3d.pick_tomogram`).
    tolerance
        Match distance (default: the radius).
    similarity
        Prompt similarity of component centroids (:class:`cryopick.pick3d.PromptSimilarity`); when
        given, ``min_similarities`` is swept too (column ``min_similarity``, NaN = no check).
    ignore
        ``(K, 3)`` positions (working voxels) left out of the scoring: true particles and picks within
        ``tolerance`` of them count neither way (e.g. the prompt's own examples, see
        :func:`calibrate_tomogram`).
    """
    radius = diameter / 2.0
    tolerance = radius if tolerance is None else tolerance
    truth = _outside(truth, ignore, tolerance)
    min_distance = radius if min_distance is None else min_distance
    vol = sphere_volume(diameter)
    rows = []
    prob = np.asarray(prob)
    for t in thresholds:
        comp = components(prob, float(t))
        for fmin in min_factors:
            for fmax in max_factors:
                if fmax <= fmin:
                    continue
                keep = select(comp, fmin * vol, fmax * vol)
                coords, scores = comp.centroids[keep], comp.scores[keep]
                sims = similarity(coords) if similarity is not None and len(coords) else np.zeros(len(coords))
                for smin in (min_similarities if similarity is not None else (None,)):
                    ok = slice(None) if smin is None else sims >= smin
                    c = coords[ok]
                    if min_distance and len(c):
                        c = c[nms_points(c, scores[ok], min_distance)]
                    c = _outside(c, ignore, tolerance)
                    m = match_points(c, truth, tolerance)
                    rows.append({"threshold": float(t), "min_size": fmin * vol, "max_size": fmax * vol,
                                 "min_factor": fmin, "max_factor": fmax,
                                 "min_similarity": np.nan if smin is None else float(smin),
                                 "precision": m.precision, "recall": m.recall, "f1": m.f1, "n_pred": len(c),
                                 "n_truth": len(truth)})
    table = pd.DataFrame(rows)
    best = table.sort_values(["f1", "threshold"], ascending=[False, True], kind="stable").iloc[0].to_dict()
    return SweepResult(table, best)


def sweep_scores(coords: np.ndarray, scores: np.ndarray, truth: np.ndarray, tolerance: float,
                 thresholds: Sequence[float] | None = None, ignore: np.ndarray | None = None) -> SweepResult:
    """Best F1 over minimum-score thresholds of scored picks (ProPicker-TM, exhaustive TM); ``ignore``
    as in :func:`sweep_cluster`."""
    truth = _outside(truth, ignore, tolerance)
    keep = _outside_mask(coords, ignore, tolerance)
    coords, scores = np.asarray(coords).reshape(-1, 3)[keep], np.asarray(scores)[keep]
    if thresholds is None:
        thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, 101))) if len(scores) else [0.0]
    rows = []
    for t in thresholds:
        keep = scores >= t
        m = match_points(coords[keep], truth, tolerance)
        rows.append({"tm_threshold": float(t), "precision": m.precision, "recall": m.recall, "f1": m.f1,
                     "n_pred": int(keep.sum()), "n_truth": len(truth)})
    table = pd.DataFrame(rows)
    return SweepResult(table, table.sort_values("f1", ascending=False, kind="stable").iloc[0].to_dict())


def _outside_mask(points: np.ndarray, ignore: np.ndarray | None, tolerance: float) -> np.ndarray:
    points = np.asarray(points, float).reshape(-1, 3)
    if ignore is None or len(ignore) == 0 or len(points) == 0:
        return np.ones(len(points), bool)
    d = np.linalg.norm(points[:, None, :] - np.asarray(ignore, float).reshape(-1, 3)[None], axis=2)
    return d.min(axis=1) > tolerance


def _outside(points: np.ndarray, ignore: np.ndarray | None, tolerance: float) -> np.ndarray:
    """``points`` farther than ``tolerance`` from every ``ignore`` position."""
    return np.asarray(points, float).reshape(-1, 3)[_outside_mask(points, ignore, tolerance)]


def score_points(coords: np.ndarray, truth: np.ndarray, tolerance: float) -> dict:
    m = match_points(coords, truth, tolerance)
    return {"precision": m.precision, "recall": m.recall, "f1": m.f1, "n_pred": len(coords), "n_truth": len(truth)}


def settings_from_best(best: dict, mode: str = "cluster") -> dict:
    """The keys of :class:`cryopick.pick3d.PickSettings` from a sweep's best row."""
    if mode == "cluster":
        smin = best.get("min_similarity", np.nan)
        return {"mode": "cluster", "threshold": best["threshold"], "min_factor": best["min_factor"],
                "max_factor": None if not np.isfinite(best["max_factor"]) else best["max_factor"],
                "min_similarity": None if smin is None or not np.isfinite(smin) else float(smin)}
    return {"mode": "tm", "tm_threshold": best["tm_threshold"]}


KNOBS = ("threshold", "min_factor", "max_factor", "min_similarity")


#: choose_settings: a setting replaces the defaults when it beats them by this many standard errors of the
#: difference (bench_answers3d.py sparse / dense sets and the simulator check in test_calibrate_shrink.py)
NOISE_FACTOR = 2.0


def f1_noise(f1: float, n_truth: int) -> float:
    """Standard error of an F1 measured on ``n_truth`` annotated particles: binomial, with one found and one
    missed particle added (Laplace), so that finding both of two particles is not certainty (±0.31)."""
    n = max(int(n_truth), 1)
    p = (float(f1) * n + 1) / (n + 2)
    return float(np.sqrt(p * (1 - p) / n))


def _knob_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The swept knobs as numbers that sort as the settings do (no check / no upper limit: -1 / inf)."""
    out = pd.DataFrame({k: pd.to_numeric(frame[k], errors="coerce") if k in frame else np.nan for k in KNOBS})
    return out.fillna({"min_similarity": -1.0, "max_factor": np.inf, "min_factor": 0.0})


def choose_settings(table: pd.DataFrame, defaults, *, noise_factor: float = NOISE_FACTOR) -> tuple[dict, dict]:
    """The grid row of a cluster sweep to save: the ``defaults`` (:class:`PickSettings`) unless a setting
    beats them on the annotated particles by more than the noise of that comparison.

    The F1 of a setting on a few particles is noisy (:func:`f1_noise` with the sweep's ``n_truth``). A row
    replaces the defaults only when its F1 exceeds the defaults' F1 by more than ``noise_factor`` times the
    noise of the difference (``sqrt(noise(F1_row)**2 + noise(F1_defaults)**2)``); among such rows the one
    closest to the defaults and within the noise of the best of them wins (grid steps of each knob, summed;
    ties: the higher F1). With two or three
    particles that almost never happens (finding both of two where the defaults find one of them is within
    the noise), with many it does. Where the defaults are not on the grid, the rows within the noise of the
    best are as good and the closest to the defaults of them wins. The result never scores below the
    defaults on this tomogram. Returns the row and a report: ``n_truth``, ``f1_best``, ``f1_defaults``,
    ``f1_chosen``, ``f1_noise`` (the margin the chosen setting had to beat, or the noise of the best when
    the defaults were kept), ``steps_from_defaults``, ``kept_defaults``."""
    if table.empty:
        raise CryopickError("the calibration sweep is empty; nothing to choose from")
    knobs = _knob_values(table)
    swept = [k for k in KNOBS if k in table and table[k].notna().any()] or ["threshold"]
    want = _knob_values(pd.DataFrame([{k: getattr(defaults, k) for k in KNOBS}])).iloc[0]
    is_default = np.ones(len(table), bool)
    steps = np.zeros(len(table))
    for k in swept:
        grid = np.unique(knobs[k].to_numpy())
        is_default &= np.isclose(knobs[k].to_numpy(), want[k]) | (knobs[k].to_numpy() == want[k])
        steps += np.abs(np.searchsorted(grid, knobs[k].to_numpy()) - np.searchsorted(grid, want[k]))
    f1 = table["f1"].to_numpy(float)
    n_truth = int(table["n_truth"].iloc[0]) if "n_truth" in table else 0
    best = float(f1.max())
    noise_row = np.array([f1_noise(v, n_truth) for v in f1])
    if is_default.any():
        d = int(np.flatnonzero(is_default)[np.argmax(f1[is_default])])
        f1_default = float(f1[d])
        margin = noise_factor * np.sqrt(noise_row**2 + noise_row[d] ** 2)
        beats = f1 > f1_default + margin + 1e-9
        if beats.any():  # of those, the ones within the noise of the best of them are as good
            top = f1[beats].max()
            ok = beats & (f1 >= top - noise_factor * f1_noise(top, n_truth) - 1e-9)
        else:
            ok = np.arange(len(f1)) == d
    else:
        f1_default, margin = -np.inf, np.full(len(f1), noise_factor * f1_noise(best, n_truth))
        ok = f1 >= best - margin - 1e-9
    order = np.lexsort((knobs["threshold"].to_numpy(), -f1, steps))  # last key first: steps, then F1
    i = int(next(j for j in order if ok[j]))
    row = table.iloc[i].to_dict()
    noise = float(margin[i]) if not is_default[i] else noise_factor * f1_noise(best, n_truth)
    report = {"n_truth": n_truth, "f1_best": best, "f1_defaults": None if not np.isfinite(f1_default) else f1_default,
              "f1_chosen": float(f1[i]), "f1_noise": round(noise, 3), "steps_from_defaults": int(steps[i]),
              "kept_defaults": bool(is_default[i])}
    return row, report


def calibration_summary(report: dict) -> str:
    """One line for the user: how many particles, how sure, what was kept."""
    n, noise = report["n_truth"], report["f1_noise"]
    what = ("kept the recommended settings (no setting is better by more than the noise)" if report["kept_defaults"]
            else f"settings {report['steps_from_defaults']} grid step(s) from the recommended ones")
    d = report["f1_defaults"]
    return (f"calibrated on {n} annotated particle(s): F1 here {report['f1_chosen']:.3f} ± {noise:.2f} "
            f"(best {report['f1_best']:.3f}" + ("" if d is None else f", recommended settings {d:.3f}") + f"); {what}"
            + ("; annotate more particles to calibrate further" if noise >= 0.15 else ""))


def save_settings(path: str | os.PathLike, settings: dict, **info) -> Path:
    """Write ``{"settings": {...}, ...info}`` as JSON, atomically (what ``pick3d --settings`` reads)."""
    path = Path(path)
    payload = {"settings": settings, **info}
    try:
        write_text(path, dumps(payload, indent=1) + "\n")
    except OSError as exc:
        raise CryopickError(f"{path}: cannot write the settings ({exc.strerror or exc}); choose another -o") from None
    return path


# -- one annotated tomogram, end to end ----------------------------------------------------------------
def calibrate_tomogram(tomogram, truth, prompt, model=None, *, mode: str = "cluster", stride: int = 32,
                       window: int = 64, tolerance: float | None = None, tm_angle: float = 30.0,
                       bf16: bool | None = None,
                       similarity: bool = True, refine: int = 0, progress: bool = True,
                       exclude_prompt: bool | None = None, adapted: bool = False) -> tuple[SweepResult, dict]:
    """Segment ``tomogram`` for ``prompt`` and sweep the post-processing against ``truth``.

    Parameters
    ----------
    tomogram
        Path or :class:`~cryopick.io.images.Image`.
    truth
        :class:`~cryopick.picks.Picks` of the prompted particle in this tomogram (voxels of the
        tomogram as stored, or any pixel size stated in ``truth.pixel_size``).
    stride, window, bf16
        Segmentation as :class:`~cryopick.picker3d.pick.TomogramPicker` (``bf16=None``: where the
        device runs it natively); calibrate with the values you pick with.
    mode
        ``"cluster"``: threshold × min size × max size (× minimum prompt similarity when
        ``similarity``, see :class:`cryopick.pick3d.PromptSimilarity`); ``"tm"``: ProPicker-TM NCC
        threshold (mask threshold 0.5).
    refine
        Segment as ``pick_tomogram(refine=refine)`` does (self-prompting with the first pass's most
        similar picks under the model's default settings); calibrate with the value you pick with.
    exclude_prompt
        Leave the prompt's own example particles out of the scoring: the truth particles at the
        prompt's positions and any pick within the tolerance of them count neither as found nor as
        false (finding the particle one clicked says little, and with few annotated particles it
        decides the calibration). Default (``None``): when the prompt was cut from this tomogram.
    adapted
        Also fit the answer loop's classifier with every candidate of this tomogram labelled by the
        truth (:func:`adapt_to_truth`; ``payload["adapted"]``, an
        :class:`~cryopick.picker3d.answers.AdaptedModel` for ``pick3d --adapted`` on the other tomograms).

    Returns
    -------
    The sweep and the settings dict for :func:`save_settings` (with ``info``: F1, tomogram, prompt).
    """
    from cryopick import picks as P
    from cryopick.io.images import Image, read_tomogram
    from cryopick.picker3d.card import load_model
    from cryopick.picker3d.pick import segment
    from cryopick.picker3d.predict import check_window, resolve_bf16
    from cryopick.picker3d.scale import check_tomogram, working_tomogram
    from cryopick.picker3d.settings import default_settings
    from cryopick.picker3d.similarity import PromptSimilarity

    model = load_model(model)
    check_window(model, window, stride)
    bf16 = resolve_bf16(bf16, next(model.parameters()).device)
    if mode not in ("cluster", "tm"):
        raise CryopickError(f"unknown mode {mode!r}; use cluster or tm")
    image = tomogram if isinstance(tomogram, Image) else read_tomogram(tomogram)
    check_tomogram(image)
    truth = P.match_pixel_size(truth, image.pixel_size)
    if len(truth) == 0:
        raise CryopickError(f"no ground-truth picks for tomogram {image.name}")
    if prompt.diameter is None:
        raise CryopickError("the prompt has no particle diameter; remake it with --diameter")
    work = working_tomogram(image, binning=prompt.binning, voxel_size=prompt.voxel_size, invert=prompt.invert)
    truth_w = work.to_working(truth.coords)
    tol = prompt.diameter / 2 if tolerance is None else tolerance
    if exclude_prompt is None:
        exclude_prompt = prompt.tomogram == image.name
    ignore = work.to_working(prompt.positions) if exclude_prompt else None
    n_excluded = len(truth_w) - len(_outside(truth_w, ignore, tol))
    if exclude_prompt and n_excluded == 0:
        log.warning("%s: no annotated particle lies at the prompt's example(s); nothing left out of the truth",
                    image.name)
    if n_excluded and n_excluded == len(truth_w):
        raise CryopickError(f"{image.name}: every annotated particle is a prompt example; annotate more particles "
                            "or score them all (--include-prompt)")
    probs, z = segment(model, work.volume, [prompt], [refine], window=window, stride=stride, bf16=bf16,
                       progress=progress)
    prob = probs[0]
    report = None
    if mode == "cluster":
        sim = PromptSimilarity(model, work.volume, z[0], bf16=bf16) if similarity else None
        d = default_settings(model)
        grid = {"thresholds": sorted(set(DEFAULT_THRESHOLDS) | {round(float(d.threshold), 3)}),
                "min_factors": sorted(set(DEFAULT_MIN_FACTORS) | {float(d.min_factor)}),
                "max_factors": sorted(set(DEFAULT_MAX_FACTORS) | {np.inf if d.max_factor is None else d.max_factor})}
        if d.min_similarity is not None:
            grid["min_similarities"] = [None] + sorted(set(DEFAULT_MIN_SIMILARITIES[1:]) | {d.min_similarity})
        result = sweep_cluster(prob, truth_w, prompt.diameter, tolerance=tol, similarity=sim, ignore=ignore, **grid)
        chosen, report = choose_settings(result.table, d)
    elif mode == "tm":
        from cryopick.postprocess.propicker_tm import tm_in_mask

        coords, scores = tm_in_mask(work.volume, prob, prompt.subvolumes, diameter=prompt.diameter,
                                    angle_step=tm_angle, min_score=None, progress=progress)
        result = sweep_scores(coords, scores, truth_w, tol, ignore=ignore)
    else:
        raise CryopickError(f"unknown mode {mode!r}; use cluster or tm")
    settings = settings_from_best(result.best if report is None else chosen, mode)
    settings["refine"] = refine
    if mode == "tm":
        settings["tm_angle"] = tm_angle
    info = {"tomogram": image.name, "prompt": prompt.label, "best_case": {k: result.best[k] for k in
            ("precision", "recall", "f1", "n_pred", "n_truth")}, "diameter_working_voxels": prompt.diameter,
            "tolerance_working_voxels": tol, "stride": stride, "window": window, "prompt_excluded": bool(exclude_prompt),
            "n_truth_excluded": int(n_excluded)}
    if report is not None:
        info["calibration"] = {**report, "summary": calibration_summary(report)}
    payload = {"settings": settings, "info": info}
    if adapted:
        payload["adapted"] = adapt_to_truth(model, prompt, work, prob, truth_w, tol, bf16=bf16,
                                            code=z[0].detach().float().numpy() if refine == 0 else None)
        payload["adapted"].info.update(tomogram=image.name, from_truth=True, refine=refine)
    return result, payload


def adapt_to_truth(model, prompt, work, prob: np.ndarray, truth: np.ndarray, tolerance: float, *,
                   candidate_threshold: float | None = None, bf16: bool = False, code=None):
    """The answer loop's classifier (:func:`cryopick.picker3d.answers.adapt`) fitted on every candidate
    of ``prob`` (the prompt's map of ``work``, a working tomogram), each labelled by whether a true
    centre (``truth``, working voxels) lies within ``tolerance``: the truth as the complete set of
    answers. Candidates as ``ask3d`` finds them (``candidate_threshold``: default half the model's
    recommended threshold)."""
    from cryopick.picker3d.answers import adapt
    from cryopick.picker3d.candidates import CandidateSet, component_table, find_candidates
    from cryopick.picker3d.settings import default_settings

    thr = default_settings(model).threshold / 2 if candidate_threshold is None else candidate_threshold
    coords = find_candidates(prob, prompt.diameter, thr)
    if not len(coords):
        raise CryopickError(f"{work.name}: no candidate above the threshold {thr:g}; nothing to learn from")
    pool = CandidateSet.at(model, work.volume, prob, coords, label=prompt.label, tomogram=work.name,
                           diameter=prompt.diameter, threshold=thr, bf16=bf16, table=component_table(prob, thr))
    truth = np.asarray(truth, float).reshape(-1, 3)
    y = ((np.linalg.norm(coords[:, None] - truth[None], axis=2).min(1) <= tolerance).astype(int) if len(truth)
         else np.zeros(len(coords), int))
    return adapt(model, prompt, pool, pool, y, candidate_threshold=thr, code=code)
