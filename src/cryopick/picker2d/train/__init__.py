"""Few-shot training of the 2D picker.

>>> from cryopick.picker2d.train import TrainConfig, train_from_files
>>> card = train_from_files("mics/", "manual/", diameter=108, output_dir="model/")

Modules: :mod:`.data` (working scale, targets, validation split), :mod:`.augment` (patches),
:mod:`.losses` (balanced BCE, nnPU for sparse labels), :mod:`.calibrate` (score threshold),
:mod:`.loop` (the resumable training loop).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

from cryopick.errors import CryopickError
from cryopick.picker2d.scale import WorkingScale
from cryopick.picker2d.train.config import TrainConfig
from cryopick.picker2d.train.data import TrainingMicrograph, load_training_micrograph, report_outside
from cryopick.picker2d.train.loop import clear_training_outputs, train_picker
from cryopick.picks import Picks
from cryopick.preprocess import diameter_in_pixels

__all__ = ["TrainConfig", "WorkingScale", "load_training_set", "read_coordinates", "train_from_files",
           "train_picker"]

log = logging.getLogger(__name__)

MIN_DIAMETER_PX = 4.0  # a smaller particle is a unit mix-up; the network could not see it


def load_training_set(micrographs: str | os.PathLike | Sequence[str | os.PathLike], picks: Picks,
                      scale: WorkingScale, negatives: str | os.PathLike | Sequence | None = None,
                      progress: bool = False, unlabelled: str | os.PathLike | Sequence | None = None,
                      unlabelled_max: int | None = None, seed: int = 0) -> list[TrainingMicrograph]:
    """Read annotated micrographs (and optional particle-free and unannotated ones) at the working scale.

    Coordinates are matched to images by name (see :func:`cryopick.io.coords.match_micrograph_names`).
    Coordinates of micrographs not given are skipped, with a note of how many (train on a subset of an
    annotated folder by passing only those micrographs). Images without any coordinates, and the
    ``unlabelled`` ones (directory, glob or files), form the unlabelled pool for self-training: at most
    ``unlabelled_max`` of them (default :attr:`TrainConfig.unlabelled_max`; ``0``: none), chosen with
    ``seed`` (:mod:`.pool`), returned last with ``unlabelled=True``. Give particle-free images as
    ``negatives`` to train on them as background. Coordinates outside their image are reported per file
    (:func:`cryopick.picker2d.train.data.report_outside`).
    """
    from tqdm.auto import tqdm

    from cryopick.io.coords import match_micrograph_names, normalise_name
    from cryopick.io.images import image_name, list_images
    from cryopick.picker2d.train.pool import load_pool, pool_candidates

    paths = list_images(micrographs if isinstance(micrographs, (str, os.PathLike)) else list(micrographs))
    names = [image_name(p) for p in paths]
    source = picks.meta.get("source", "the coordinates")
    given = list(picks.micrographs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        picks = match_micrograph_names(picks, paths, allow_unmatched=True)
    annotated = set(picks.micrographs)
    if not annotated:
        raise CryopickError(
            f"{source}: its {len(given)} micrograph name(s) (e.g. {', '.join(given[:3])}) match no image of the "
            f"{len(names)} given (named like: {', '.join(names[:3])}); name the coordinate files after the "
            "micrographs or pass the micrographs they belong to"
        )
    if len(annotated) < len(given):
        keys = {normalise_name(n).lower() for n in names}
        skipped = [n for n in given if normalise_name(n).lower() not in keys]
        log.info("%s: %d of %d annotated micrographs are not among the micrographs given and are skipped%s",
                 source, len(given) - len(annotated), len(given),
                 f" (e.g. {', '.join(skipped[:3])})" if skipped else "")
    if unlabelled_max is None:
        unlabelled_max = TrainConfig().unlabelled_max
    missing = [(p, n) for p, n in zip(paths, names) if n not in annotated]
    if missing and unlabelled_max > 0:
        log.info("%d micrograph(s) have no coordinates: %s%s; they are used as unannotated micrographs for "
                 "self-training (up to unlabelled_max)", len(missing), ", ".join(n for _, n in missing[:5]),
                 " ..." if len(missing) > 5 else "")
    elif missing:
        warnings.warn(f"{len(missing)} micrograph(s) have no coordinates and are not used: "
                      f"{', '.join(n for _, n in missing[:5])}{' ...' if len(missing) > 5 else ''} (pass "
                      "particle-free micrographs with --negatives; --unlabelled-max N uses up to N of them "
                      "unannotated for self-training)", stacklevel=2)
    if unlabelled and unlabelled_max <= 0:
        raise CryopickError(
            f"--unlabelled {unlabelled if isinstance(unlabelled, (str, os.PathLike)) else f'({len(unlabelled)} files)'}: "
            "unannotated micrographs are used only for self-training, which is off (--unlabelled-max is 0, the "
            "default, or --no-self-training was given); add --unlabelled-max N (N > 0) to use up to N of them")
    mics = []
    items = [(p, n) for p, n in zip(paths, names) if n in annotated]
    for p, n in tqdm(items, desc="loading", unit="mic", disable=not progress):
        mics.append(load_training_micrograph(p, picks.for_micrograph(n).coords, scale, name=n))
    mics = report_outside(mics)
    neg_paths = []
    if negatives:
        neg_paths = list_images(negatives if isinstance(negatives, (str, os.PathLike)) else list(negatives))
        for p in tqdm(neg_paths, desc="loading negatives", unit="mic", disable=not progress):
            mics.append(load_training_micrograph(p, None, scale, negative=True))
    if unlabelled_max > 0:
        candidates = pool_candidates(missing, unlabelled, annotated, {Path(p).resolve() for p in neg_paths})
        mics += load_pool(candidates, scale, unlabelled_max, seed=seed, progress=progress)
    return mics


def read_coordinates(coords: str | os.PathLike, coords_format: str | None = None, **read_opts) -> Picks:
    """Coordinates from a file, a directory or a glob pattern (``"manual/*.star"``)."""
    import glob

    from cryopick.io.coords import read_picks
    from cryopick.picks import concat

    text = str(coords)
    if any(ch in text for ch in "*?[") and not Path(text).exists():
        files = sorted(p for p in glob.glob(text) if Path(p).is_file())
        if not files:
            raise CryopickError(f"--coords {text!r}: the pattern matches no file")
        picks = concat([read_picks(f, format=coords_format, **read_opts) for f in files])
        picks.meta["source"] = text
        return picks
    return read_picks(coords, format=coords_format, **read_opts)


def train_from_files(micrographs, coords: str | os.PathLike | Picks, diameter: float, output_dir: str | os.PathLike,
                     diameter_unit: str = "px", pixel_size: float | None = None, coords_format: str | None = None,
                     negatives=None, config: TrainConfig | None = None, resume: bool = True, redo: bool = False,
                     particles_per_micrograph: float | None = None, unlabelled=None, detect_sparse: bool = True,
                     **read_opts):
    """Read images and coordinates, choose the working scale, train, write the model directory.

    Parameters
    ----------
    micrographs
        Directory, glob or list of micrograph files (any supported image format).
    coords
        Coordinate file, directory or glob pattern (any supported format) or a :class:`Picks` table,
        in the micrographs' pixels. Coordinates of micrographs not in ``micrographs`` are skipped.
    diameter
        Particle diameter, in ``diameter_unit`` (``"px"`` of the micrographs or ``"A"``).
    pixel_size
        Å/px of the micrographs (overrides their headers; needed for a diameter in Å when the
        headers do not state it).
    particles_per_micrograph
        Expected number of particles per annotated micrograph, for sparse annotation when the
        labelled fraction is not known: it becomes ``labelled / (this x micrographs)``.
    detect_sparse
        When neither ``particles_per_micrograph`` nor ``config.labelled_fraction`` (< 1) says how complete
        the annotation is, estimate what the annotated micrographs hold (:mod:`.sparse`) and, when far more
        particles are there than annotated, train as with ``particles_per_micrograph`` = that estimate
        (positive-unlabelled loss, PU-corrected calibration); logged and recorded in the card's ``notes``.
    unlabelled
        Unannotated micrographs of the same data set (directory, glob or files) for self-training;
        with the ``micrographs`` that have no coordinates they form the unlabelled pool, at most
        ``config.unlabelled_max`` (see :class:`TrainConfig`).
    **read_opts
        Conversion options for :func:`cryopick.io.coords.read_picks` (e.g. ``flip_y=True, height=4096``).
    """
    from cryopick.io.images import list_images, read_micrograph

    if particles_per_micrograph is not None and not (math.isfinite(particles_per_micrograph)
                                                     and particles_per_micrograph > 0):
        raise CryopickError(f"--particles-per-micrograph must be a number > 0, got {particles_per_micrograph}")
    paths = list_images(micrographs if isinstance(micrographs, (str, os.PathLike)) else list(micrographs))
    if pixel_size is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixel_size = read_micrograph(paths[0]).pixel_size
    diameter_px = diameter_in_pixels(diameter, diameter_unit, pixel_size)
    if not diameter_px >= MIN_DIAMETER_PX:  # also NaN
        raise CryopickError(f"--diameter: a particle {diameter_px:g} px wide is too small to pick (at least "
                            f"{MIN_DIAMETER_PX:g} px of the micrographs); check the value and its unit (--diameter-unit)")
    config = (config or TrainConfig()).validate()
    scale = WorkingScale.from_diameter(diameter_px, pixel_size, config.target_diameter)
    picks = coords if isinstance(coords, Picks) else read_coordinates(coords, coords_format, **read_opts)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no pixel size.*")
        mics = load_training_set(paths, picks, scale, negatives=negatives, progress=config.progress,
                                 unlabelled=unlabelled, seed=config.seed,
                                 unlabelled_max=config.unlabelled_max if config.self_training else 0)
    notes: list[str] = []
    from cryopick.picker2d.train.sizecheck import check_diameter, column_diameter

    notes += check_diameter(mics, scale.working_diameter, scale.factor, diameter_px, column_diameter(picks),
                            source=str(picks.meta.get("source", "the coordinate files")),
                            given=f"--diameter {diameter:g}{' A' if diameter_unit == 'A' else ''}")
    if detect_sparse and particles_per_micrograph is None and config.labelled_fraction >= 1:
        particles_per_micrograph = _detect_sparse(mics, scale, notes)
    if particles_per_micrograph:
        annotated = [m for m in mics if not m.negative and not m.unlabelled]
        n_lab = sum(len(m.coords) for m in annotated)
        config.labelled_fraction = float(min(1.0, n_lab / (particles_per_micrograph * len(annotated))))
        log.info("labelled fraction %.3f (%d labelled, %g expected per micrograph)", config.labelled_fraction,
                 n_lab, particles_per_micrograph)
    n_pool = sum(m.unlabelled for m in mics)
    log.info("training on %d micrographs (%d particles)%s, working scale 1/%.2f: particle %.1f px",
             len(mics) - n_pool, sum(len(m.coords) for m in mics), f" + {n_pool} unannotated" if n_pool else "",
             scale.factor, scale.working_diameter)
    if redo:
        clear_training_outputs(output_dir)
    return train_picker(mics, scale, output_dir, config, resume=resume, notes=notes)


def _detect_sparse(mics: list[TrainingMicrograph], scale: WorkingScale, notes: list[str]) -> float | None:
    """Particles per micrograph to train with when the annotation is detected as sparse (:mod:`.sparse`),
    else ``None``; says so in the log and in ``notes``."""
    from cryopick.picker2d.train.sparse import detect_sparse_annotation

    found = detect_sparse_annotation(mics, scale.working_diameter)
    if found is None or not found.sparse:
        return None
    message = found.message()
    log.info("%s (from a blob count at the given diameter; --particles-per-micrograph N sets the number, "
             "--no-sparse-detection turns this off)", message)
    notes.append(f"{message}; estimated from a blob count at the given diameter, per micrograph: "
                 + ", ".join(f"{k} {v:.0f}" for k, v in found.counts.items()))
    return found.per_micrograph
