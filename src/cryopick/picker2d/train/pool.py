"""The unlabelled pool of 2D training: micrographs of the data set that nobody annotated.

Users always have many more micrographs than they annotate. Opt-in (``unlabelled_max`` > 0; the default 0
is off because it measured no gain on the leave-one-out benchmark): those given to training without
coordinates (instead of being skipped) and those given as ``unlabelled`` form the pool, capped at
:attr:`TrainConfig.unlabelled_max <cryopick.picker2d.train.config.TrainConfig>` micrographs chosen
deterministically and spread over the list (:func:`choose_spread`). The pool is loaded at the working
scale like the annotated micrographs (``TrainingMicrograph.unlabelled``) but is never held out for
validation or calibration, never a negative, and weighs nothing in training until it has pseudo-labels.

With fully annotated micrographs the run then has two stages (:mod:`.loop`): the first is trained and
calibrated as without a pool; its picks above the calibrated threshold on the pool micrographs become
their labels (:mod:`.pseudo`, stored so an interrupted second stage resumes with the same labels); the
second network trains on the annotated plus the pseudo-labelled micrographs and is validated and
calibrated on the true labels only. :func:`shipped_stage` ships the stage with the better validation
F1, so the pool never costs validation F1. :func:`pool_record` is what the card says about it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cryopick.picker2d.scale import WorkingScale
from cryopick.picker2d.train.data import TrainingMicrograph, load_training_micrograph

log = logging.getLogger(__name__)


def choose_spread(items: Sequence, limit: int, seed: int = 0) -> list:
    """At most ``limit`` of ``items``, spread over the list: one drawn (with ``seed``) from each of
    ``limit`` consecutive, equal bins, in list order; every item when there are not more."""
    items = list(items)
    if limit <= 0:
        return []
    if len(items) <= limit:
        return items
    rng = np.random.default_rng(seed)
    edges = np.round(np.linspace(0, len(items), limit + 1)).astype(int)
    return [items[int(rng.integers(a, b))] for a, b in zip(edges[:-1], edges[1:])]


def pool_candidates(without_coords: list[tuple[Path, str]], unlabelled, exclude: set[str],
                    exclude_paths: set[Path]) -> list[tuple[Path, str]]:
    """``(path, name)`` of every possible pool micrograph: the given micrographs without coordinates,
    then the ``unlabelled`` ones (directory, glob or list of files); annotated names (``exclude``),
    negatives (``exclude_paths``) and repeated names are left out."""
    from cryopick.io.images import image_name, list_images

    items = list(without_coords)
    if unlabelled:
        paths = list_images(unlabelled if isinstance(unlabelled, (str, os.PathLike)) else list(unlabelled))
        items += [(p, image_name(p)) for p in paths]
    seen, out, skipped = set(exclude), [], []
    for path, name in items:
        if name in seen or Path(path).resolve() in exclude_paths:
            skipped.append(name)
            continue
        seen.add(name)
        out.append((Path(path), name))
    if skipped:
        log.info("%d unlabelled micrograph(s) are annotated, negatives or repeated names and are not in the pool "
                 "(e.g. %s)", len(skipped), ", ".join(skipped[:3]))
    return out


def load_pool(items: list[tuple[Path, str]], scale: WorkingScale, limit: int, seed: int = 0,
              progress: bool = False) -> list[TrainingMicrograph]:
    """Choose at most ``limit`` of ``items`` (:func:`choose_spread`) and read them at the working scale
    as unlabelled micrographs; logs what was chosen."""
    from tqdm.auto import tqdm

    chosen = choose_spread(items, limit, seed)
    if not chosen:  # nothing to choose from (load_training_set calls this only with limit > 0)
        return []
    log.info("%d unannotated micrograph(s) are used for self-training (the unlabelled pool)%s: %s%s", len(chosen),
             f", {len(chosen)} of {len(items)} chosen (unlabelled_max {limit})" if len(chosen) < len(items) else "",
             ", ".join(n for _, n in chosen[:5]), " ..." if len(chosen) > 5 else "")
    pool = []
    for path, name in tqdm(chosen, desc="loading unlabelled", unit="mic", disable=not progress):
        m = load_training_micrograph(path, None, scale, name=name)
        m.unlabelled = True
        pool.append(m)
    return pool


def shipped_stage(records: list[dict], best_of_stages: bool) -> int:
    """Index of the stage whose weights and threshold are shipped: the last one, or with
    ``best_of_stages`` the one with the best calibrated validation F1 (the earlier one on a tie or
    without validation F1s)."""
    if not best_of_stages or len(records) == 1:
        return len(records) - 1
    best, best_f1 = 0, records[0]["calibration"].get("f1")
    for i, record in enumerate(records[1:], 1):
        f1 = record["calibration"].get("f1")
        if f1 is not None and (best_f1 is None or f1 > best_f1):
            best, best_f1 = i, f1
    return best


def pool_record(mics: list[TrainingMicrograph], records: list[dict], shipped: int) -> dict | None:
    """``card.training["unlabelled_pool"]``: the pool, its pseudo-labels and which stage was shipped."""
    pool = [m for m in mics if m.unlabelled]
    if not pool:
        return None
    per = {m.name: int(len(m.train_coords)) if m.train_coords is not None else 0 for m in pool}
    return {
        "n_micrographs": len(pool),
        "names": [m.name for m in pool],
        "sources": [m.source for m in pool],
        "n_pseudo_labels": int(sum(per.values())),
        "pseudo_labels_per_micrograph": per,
        "n_uncertain": int(sum(len(m.ignore_coords) for m in pool if m.ignore_coords is not None)),
        "used": len(records) > 1,
        "stage_validation_f1": [r["calibration"].get("f1") for r in records],
        "shipped_stage": shipped + 1,
        "shipped": records[shipped]["stage"],
    }
