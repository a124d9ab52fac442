"""Run a baseline picker over many micrographs: resumable, with optional threshold calibration.

Each micrograph's raw peaks (all scores above a low floor) are cached under
``<out>/.cryopick_partial/<name>.npz``; a rerun skips micrographs already done. The threshold is
either given, or calibrated as the best-F1 threshold on the annotated micrographs (those with
``truth``), the fair variant of "best-case F1".
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cryopick.errors import CryopickError
from cryopick.evaluate.curves import pr_curve
from cryopick.io.atomic import atomic_path
from cryopick.io.images import MissingPixelSizeWarning, image_name, read_micrograph
from cryopick.picks import Picks, concat

log = logging.getLogger(__name__)

PARTIAL_DIR = ".cryopick_partial"


@dataclass
class BaselineRun:
    """All peaks found (``picks``, unthresholded) and the threshold chosen (``None``: keep all)."""

    picks: Picks
    threshold: float | None
    calibration: dict | None = None

    def thresholded(self) -> Picks:
        if self.threshold is None:
            return self.picks
        s = self.picks.table["score"]
        return self.picks._with(self.picks.table[s >= self.threshold])


def load_image(path: Path, header_only: bool = False):
    """Read a micrograph without the missing-pixel-size warning (baselines work in pixels only).

    Returns the float32 pixels, or with ``header_only`` the :class:`Image` (memory-mapped when possible).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingPixelSizeWarning)
        image = read_micrograph(path)
        return image if header_only else image.load()


def pick_all(
    paths: list[Path],
    picker: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    diameter: float,
    cache_dir: Path | None = None,
    progress: bool = True,
    load: Callable[[Path], np.ndarray] | None = None,
) -> Picks:
    """Apply ``picker(image) -> (coords, scores)`` to every image, caching results in ``cache_dir``.

    ``picks.meta["seconds"]`` holds each micrograph's read + pick time (from the run that computed it).
    """
    from tqdm.auto import tqdm

    load = load or load_image
    tables, seconds = [], {}
    for path in tqdm(paths, desc="picking", unit="micrograph", disable=not progress):
        name = image_name(path)
        cached = cache_dir / f"{name}.npz" if cache_dir is not None else None
        result = _read_cache(cached) if cached is not None else None
        if result is not None:
            coords, scores, seconds[name] = result
        else:
            t0 = time.perf_counter()
            try:
                coords, scores = picker(load(path))
            except CryopickError as exc:
                raise CryopickError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from exc
            seconds[name] = time.perf_counter() - t0
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(cached) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, coords=coords, scores=scores, seconds=seconds[name])
        tables.append(Picks.from_arrays(name, coords, score=scores, diameter=diameter))
    picks = concat(tables)
    picks.meta["seconds"] = seconds
    return picks


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Cached peaks of one micrograph, or ``None`` when missing or unreadable (then picked again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            coords, scores = np.asarray(z["coords"], np.float64), np.asarray(z["scores"], np.float64)
            secs = float(z["seconds"]) if "seconds" in z.files else float("nan")
    except Exception:  # a zero-byte or truncated file left by a full disk or a kill
        log.warning("%s is damaged; picking that micrograph again", path)
        return None
    if coords.ndim != 2 or len(coords) != len(scores):
        log.warning("%s is damaged; picking that micrograph again", path)
        return None
    return coords, scores, secs


def calibrate_score_threshold(picks: Picks, truth: Picks, diameter: float, tolerance: float = 1.0) -> dict:
    """Threshold maximising F1 of ``picks`` on the micrographs of ``truth``.

    Returns :meth:`PRCurve.best` plus ``auprc`` and ``micrographs``; ``threshold`` is set to the
    best F1's ``margin_threshold`` (halfway to the next lower score; same picks on the annotated
    micrographs, less tied to their weakest true particle), ``best_threshold`` keeps the raw value.
    """
    names = [n for n in truth.micrographs if n in set(picks.micrographs)]
    if not names:
        raise CryopickError("none of the annotated micrographs was picked; cannot calibrate a threshold")
    curve = pr_curve(picks, truth, diameter, tolerance=tolerance, micrographs=names)
    best = curve.best()
    best["best_threshold"] = best["threshold"]
    best["threshold"] = best["margin_threshold"]
    best["auprc"] = curve.auprc
    best["micrographs"] = names
    return best
