"""Self-training pseudo-labels of the 2D picker: the first network's calibrated picks plus the labels
become the training targets of the second (validation keeps the true labels); on the unlabelled pool
(:mod:`.pool`) the picks alone are the labels. Stored atomically in ``pseudo_labels.npz`` so an
interrupted second stage resumes with the same targets.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path
from cryopick.picker2d.train.data import TrainingMicrograph
from cryopick.postprocess.peaks2d import PeakFinding, find_peaks_s1

PSEUDO_NAME = "pseudo_labels.npz"


def make_pseudo_labels(model, mics: list[TrainingMicrograph], threshold: float, records: list[dict], path: Path, *,
                       radius: float, mask_threshold: float, score_method: str, min_distance: float,
                       match_tolerance: float, bf16: bool, only_unlabelled: bool = False,
                       ignore_below: float | None = None) -> None:
    """Picks above ``threshold`` on every training micrograph (those within half a match tolerance
    of a label dropped), plus the labels, written to ``path`` and applied to ``mics``.

    ``only_unlabelled``: label only the micrographs of the unlabelled pool (fully annotated micrographs
    keep their labels). ``ignore_below``: picks scoring in ``[ignore_below, threshold)`` on pool
    micrographs are stored as uncertain (``ignore_coords``: left out of the loss, not background).
    """
    from scipy.spatial import cKDTree

    from cryopick.picker2d.predict import predict_probability

    model.eval()
    finding = PeakFinding(threshold=mask_threshold, score=score_method)
    coords, ignore = {}, {}
    for m in mics:
        if m.negative or (only_unlabelled and not m.unlabelled):
            continue
        prob = predict_probability(model, m.image, bf16=bf16)
        low = threshold if ignore_below is None or not m.unlabelled else min(ignore_below, threshold)
        peaks = find_peaks_s1(prob, radius, finding, min_distance=min_distance, min_score=low)
        sure = peaks.scores >= threshold
        pseudo = peaks.coords[sure]
        if len(pseudo) and len(m.coords):
            d, _ = cKDTree(m.coords).query(pseudo)
            pseudo = pseudo[d > match_tolerance / 2]
        coords[m.name] = np.concatenate([m.coords, pseudo.reshape(-1, 2)])
        if m.unlabelled and ignore_below is not None:
            ignore[m.name] = peaks.coords[~sure].reshape(-1, 2)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, records=json.dumps(records, default=float), **{f"mic:{k}": v for k, v in coords.items()},
                     **{f"ign:{k}": v for k, v in ignore.items()})
    apply_pseudo_labels(mics, coords, ignore)


def apply_pseudo_labels(mics: list[TrainingMicrograph], coords: dict, ignore: dict | None = None) -> None:
    for m in mics:
        if m.name in coords:
            m.train_coords = coords[m.name]
        if ignore and m.name in ignore:
            m.ignore_coords = ignore[m.name]


def load_pseudo_labels(path: Path, mics: list[TrainingMicrograph]) -> list[dict] | None:
    """Apply stored pseudo-labels to ``mics``; returns the stage records stored with them, or ``None``
    when there is no file. A damaged file is a :class:`CryopickError` that says how to start over."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            coords = {k[4:]: data[k] for k in data.files if k.startswith("mic:")}
            ignore = {k[4:]: data[k] for k in data.files if k.startswith("ign:")}
            records = json.loads(str(data["records"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CryopickError(
            f"{path}: the self-training labels of an unfinished run are unreadable ({type(exc).__name__}); "
            f"rerun with --redo to start over (replaces the model files in {path.parent}) or write to another -o folder"
        ) from None
    apply_pseudo_labels(mics, coords, ignore)
    return records
