"""Picking micrographs with a trained 2D picker.

>>> picker = Picker("model/")                       # weights + card.json written by `cryopick train`
>>> picks = picker.pick("mic001.mrc")               # Picks in original pixels, with scores
>>> picker.set_image(array, name="mic002")          # or step by step, like SAM's predictor:
>>> probability = picker.probability                #   (H', W') map at the working scale
>>> picks = picker.predict(threshold=0.3)           #   re-threshold without re-running the network
>>> summary = picker.pick_many(paths, "picks/")     # batch, resumable, per-micrograph STAR + index

Pipeline per micrograph: read -> Fourier-crop to the working scale recorded in the model card ->
robust normalisation -> network (tiled when the image is large) -> sigmoid -> Algorithm S1 with
per-pick scores and duplicate suppression -> coordinates back to original pixels.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.images import image_name, list_images, read_micrograph
from cryopick.picker2d.card import ModelCard, load_model
from cryopick.picker2d.predict import bf16_is_faster, fold_batchnorm, predict_probability
from cryopick.picks import Picks, filter_score
from cryopick.postprocess.peaks2d import Peaks2d, find_peaks_s1
from cryopick.preprocess import WorkingFrame

log = logging.getLogger(__name__)


STATE_DIR = ".cryopick"


# -- picking ----------------------------------------------------------------------------------
@dataclass
class PreparedImage:
    """A micrograph ready for the network."""

    name: str
    working: np.ndarray
    frame: WorkingFrame
    pixel_size: float | None
    path: Path | None = None


class Picker:
    """Stateful 2D picker: load a model directory once, pick many micrographs.

    Parameters
    ----------
    model_dir
        Directory written by ``cryopick train`` (``model.pt`` + ``card.json``).
    threshold
        Score threshold; default: the calibrated one in the card. ``0`` keeps every candidate.
    min_distance
        Duplicate suppression distance in original pixels; default: the card's (one radius).
    pixel_size
        Å/px of the micrographs to pick, overriding their headers. When both it (or the header) and
        the card's training pixel size are known, micrographs are resampled to the training working
        pixel size; otherwise the training downsampling factor is reused.
    bf16
        bfloat16 autocast for inference; ``None`` = when the CPU has native bf16 (AVX512-BF16/AMX).
    num_threads
        Torch CPU threads (``None`` leaves torch's default).
    """

    def __init__(self, model_dir: str | os.PathLike, threshold: float | None = None,
                 min_distance: float | None = None, pixel_size: float | None = None,
                 bf16: bool | None = None, num_threads: int | None = None, device: str = "cpu") -> None:
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.model_dir = Path(model_dir)
        self.model, self.card = load_model(self.model_dir, device=device)
        fold_batchnorm(self.model)
        self.threshold = self.card.score_threshold if threshold is None else float(threshold)
        self.min_distance = min_distance
        self.pixel_size = pixel_size
        self.bf16 = bf16_is_faster(self.model) if bf16 is None else bool(bf16)
        self.probability: np.ndarray | None = None
        self._image: PreparedImage | None = None

    # -- SAM-style two-step interface --
    def factor_for(self, pixel_size: float | None) -> float:
        """Downsampling factor for a micrograph of ``pixel_size`` Å/px (see class docstring)."""
        ps = self.pixel_size or pixel_size
        if ps and self.card.working_pixel_size:
            factor = self.card.working_pixel_size / ps
            if factor < 0.95:
                import warnings

                warnings.warn(f"micrographs at {ps:g} Å/px are coarser than the model's working scale "
                              f"({self.card.working_pixel_size:g} Å/px); particles will look smaller than in "
                              "training", stacklevel=2)
            return max(1.0, factor)
        return self.card.factor

    def prepare(self, image: np.ndarray | str | os.PathLike, name: str | None = None,
                pixel_size: float | None = None) -> PreparedImage:
        """Read (if a path) and bring a micrograph to the working scale."""
        from cryopick.picker2d.scale import prepare_image

        path = None
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            img = read_micrograph(path)
            pixel_size = pixel_size or img.pixel_size
            name = name or img.name
            data = img.load()
        else:
            data = np.asarray(image)
            if data.ndim != 2:
                raise CryopickError(f"expected a 2D micrograph array, got shape {data.shape}")
        factor = self.factor_for(pixel_size)
        clip = float(self.card.normalisation.get("clip_sigma", 4.0))
        working, frame = prepare_image(data, factor, clip_sigma=clip)
        return PreparedImage(name or "micrograph", working, frame, self.pixel_size or pixel_size, path)

    def set_image(self, image: np.ndarray | str | os.PathLike | PreparedImage, name: str | None = None,
                  pixel_size: float | None = None) -> None:
        """Run the network on one micrograph and keep its probability map."""
        prepared = image if isinstance(image, PreparedImage) else self.prepare(image, name, pixel_size)
        self._image = prepared
        self.probability = predict_probability(self.model, prepared.working, bf16=self.bf16)

    def predict(self, threshold: float | None = None, min_distance: float | None = None,
                **postprocess) -> Picks:
        """Picks from the current probability map (call :meth:`set_image` first).

        ``threshold`` and ``min_distance`` (original pixels) override the picker's; other keyword
        arguments go to :func:`cryopick.postprocess.peaks2d.find_peaks_s1`.
        """
        if self.probability is None or self._image is None:
            raise RuntimeError("call set_image() before predict()")
        peaks = self.peaks(threshold, min_distance, **postprocess)
        return self.to_picks(peaks)

    def peaks(self, threshold: float | None = None, min_distance: float | None = None, **postprocess) -> Peaks2d:
        """Post-processed picks in working pixels (see :meth:`predict`)."""
        card = self.card
        to_working = float(np.mean(self._image.frame.factors))  # working px per original px
        md = min_distance if min_distance is not None else self.min_distance
        md = md if md is not None else card.min_distance
        kwargs = dict(threshold=card.mask_threshold, score=card.score_method,
                      # default: one particle radius (not the smaller painted-blob radius)
                      min_distance=0.5 * card.working_diameter if md is None else md * to_working,
                      min_score=self.threshold if threshold is None else threshold)
        kwargs.update(postprocess)
        return find_peaks_s1(self.probability, card.target_radius, **kwargs)

    def to_picks(self, peaks: Peaks2d) -> Picks:
        """Working-pixel peaks -> :class:`Picks` in the original micrograph's pixels."""
        image = self._image
        coords = image.frame.to_original(peaks.coords) if len(peaks) else np.zeros((0, 2))
        diameter = self.card.working_diameter / float(np.mean(image.frame.factors))
        picks = Picks.from_arrays(image.name, coords, score=peaks.scores, diameter=diameter,
                                  pixel_size=image.pixel_size)
        return picks

    def pick(self, image: np.ndarray | str | os.PathLike, name: str | None = None,
             pixel_size: float | None = None, threshold: float | None = None,
             min_distance: float | None = None) -> Picks:
        """One micrograph (path or ``(H, W)`` array) -> :class:`Picks` in original pixels."""
        self.set_image(image, name=name, pixel_size=pixel_size)
        return self.predict(threshold=threshold, min_distance=min_distance)

    # -- batch --
    def pick_many(self, micrographs: Sequence[str | os.PathLike] | str | os.PathLike,
                  output_dir: str | os.PathLike, format: str = "relion", overlays: int = 0,
                  overlay_names: Iterable[str] | None = None, resume: bool = True,
                  progress: bool = True, threshold: float | None = None,
                  min_distance: float | None = None) -> dict:
        """Pick a list / directory of micrographs into ``output_dir``; see :func:`pick_micrographs`."""
        return pick_micrographs(self, micrographs, output_dir, format=format, overlays=overlays,
                                overlay_names=overlay_names, resume=resume, progress=progress,
                                threshold=threshold, min_distance=min_distance)


def _state_path(output_dir: Path, name: str) -> Path:
    return output_dir / STATE_DIR / f"{name}.json"


def pick_micrographs(picker: Picker, micrographs, output_dir: str | os.PathLike, format: str = "relion",
                     overlays: int = 0, overlay_names: Iterable[str] | None = None, resume: bool = True,
                     progress: bool = True, threshold: float | None = None,
                     min_distance: float | None = None, prefetch: bool = False) -> dict:
    """Batch picking with resume.

    For each micrograph: the coordinate file(s) in ``format`` (RELION: ``<name>_autopick.star``),
    then a small record ``.cryopick/<name>.json`` (counts, scores, timing) that marks it finished.
    On rerun, micrographs with a record and their output are skipped. At the end: the RELION
    ``autopick.star`` index over all finished micrographs (RELION format), ``summary.json``,
    ``summary.csv`` (picks per micrograph), ``score_histogram.png`` (all candidates, with the
    threshold) and overlay PNGs of the first
    ``overlays`` micrographs (or the ones named in ``overlay_names``) in ``overlays/``.
    All files are written atomically.
    """
    from cryopick.io.coords import format_module

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = list_images(micrographs) if not isinstance(micrographs, (list, tuple)) else list_images(list(micrographs))
    names = [image_name(p) for p in paths]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise CryopickError(f"several micrographs share the name(s) {', '.join(sorted(dupes)[:5])}; names must be unique")
    module = format_module(format)
    if 2 not in getattr(module, "NDIM", (2,)):
        raise CryopickError(f"format {module.NAME!r} holds 3D picks only; choose relion, cryolo, eman2, topaz, cryoppp or imod")
    wanted_overlays = set(overlay_names or names[: max(0, int(overlays))])

    def out_file(name: str) -> Path:
        return output_dir / f"{name}{module.DEFAULT_SUFFIX}"

    todo = []
    for p, n in zip(paths, names):
        if resume and _state_path(output_dir, n).exists() and out_file(n).exists():
            continue
        todo.append((p, n))
    skipped = len(paths) - len(todo)
    if skipped:
        log.info("%d of %d micrographs already picked in %s; skipping them", skipped, len(paths), output_dir)

    from tqdm.auto import tqdm

    start = time.perf_counter()
    total_picks = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Optionally read and resample the next micrograph while the network runs on the current
        # one (helps with slow disks; on few cores it competes with the network's threads).
        future = pool.submit(picker.prepare, todo[0][0], todo[0][1]) if todo and prefetch else None
        bar = tqdm(todo, desc="picking", unit="mic", disable=not progress)
        for i, (path, name) in enumerate(bar):
            t0 = time.perf_counter()
            prepared = future.result() if prefetch else picker.prepare(path, name)
            if prefetch and i + 1 < len(todo):
                future = pool.submit(picker.prepare, todo[i + 1][0], todo[i + 1][1])
            picker.set_image(prepared)
            # All candidates (for the score histogram), then the ones above the threshold.
            candidates = picker.predict(threshold=0.0, min_distance=min_distance)
            thr = picker.threshold if threshold is None else threshold
            picks = filter_score(candidates, thr)
            module.write(picks if len(picks) else Picks.empty(pixel_size=picks.pixel_size), out_file(name))
            if name in wanted_overlays:
                write_overlay(prepared, picks, output_dir / "overlays" / f"{name}.png", picker.card)
            record = {"micrograph": name, "path": str(path), "n_picks": len(picks), "threshold": thr,
                      "candidate_scores": np.round(candidates.scores, 3).tolist(),
                      "seconds": round(time.perf_counter() - t0, 3)}
            write_text(_state_path(output_dir, name), json.dumps(record) + "\n")
            total_picks += len(picks)
            bar.set_postfix(picks=len(picks))
    elapsed = time.perf_counter() - start
    summary = write_summary(output_dir, paths, names, module, picker, elapsed=elapsed, n_new=len(todo))
    return summary


def write_overlay(prepared: PreparedImage, picks: Picks, path: Path, card: ModelCard) -> None:
    """PNG of the working-scale micrograph with a circle of the particle diameter at each pick."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.collections import EllipseCollection

    from cryopick.io.atomic import atomic_path

    img = prepared.working
    h, w = img.shape
    coords = prepared.frame.to_working(picks.coords) if len(picks) else np.zeros((0, 2))
    d = card.working_diameter
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(img, cmap="gray", vmin=np.percentile(img, 1), vmax=np.percentile(img, 99), interpolation="nearest")
    if len(coords):
        scores = np.nan_to_num(picks.scores, nan=1.0)
        ec = EllipseCollection(np.full(len(coords), d), np.full(len(coords), d), np.zeros(len(coords)),
                               units="xy", offsets=coords, transOffset=ax.transData, facecolors="none",
                               edgecolors=plt.cm.viridis(np.clip(scores, 0, 1)), linewidths=1.2)
        ax.add_collection(ec)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _relative(path: Path) -> str:
    """Path relative to the current directory (the RELION project) when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def write_summary(output_dir: Path, paths: list[Path], names: list[str], module, picker: Picker,
                  elapsed: float, n_new: int) -> dict:
    """Run summary over all finished micrographs: JSON, CSV of counts, score histogram, RELION index."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from cryopick.io.atomic import atomic_path

    records = []
    for name in names:
        state = _state_path(output_dir, name)
        if state.exists():
            records.append(json.loads(state.read_text()))
    scores = np.concatenate([np.asarray(r["candidate_scores"], float) for r in records]) if records else np.zeros(0)
    counts = [r["n_picks"] for r in records]
    if module.NAME == "relion":
        from cryopick.io.formats.relion import write_autopick_index

        mapping = {_relative(Path(r["path"])): _relative(output_dir / f"{r['micrograph']}{module.DEFAULT_SUFFIX}")
                   for r in records}
        write_autopick_index(mapping, output_dir / "autopick.star")
    lines = ["micrograph,n_picks,seconds"] + [f"{r['micrograph']},{r['n_picks']},{r['seconds']}" for r in records]
    write_text(output_dir / "summary.csv", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(scores, bins=40, range=(0, 1), color="#4477aa")
    ax.axvline(picker.threshold, color="#cc3311", lw=1, label=f"threshold {picker.threshold:.3f}")
    ax.set_xlabel("pick score")
    ax.set_ylabel("picks")
    ax.set_title(f"{int(sum(counts))} picks kept of {len(scores)} candidates in {len(records)} micrographs",
                 fontsize=9)
    ax.legend(frameon=False)
    fig.tight_layout()
    with atomic_path(output_dir / "score_histogram.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    summary = {
        "n_micrographs": len(names),
        "n_finished": len(records),
        "n_picked_this_run": n_new,
        "n_picks": int(sum(counts)),
        "picks_per_micrograph": {"mean": float(np.mean(counts)) if counts else 0.0,
                                 "min": int(min(counts)) if counts else 0, "max": int(max(counts)) if counts else 0},
        "threshold": picker.threshold,
        "seconds_this_run": round(elapsed, 2),
        "micrographs_per_second": round(n_new / elapsed, 3) if elapsed > 0 and n_new else None,
        "model": str(picker.model_dir),
        "format": module.NAME,
    }
    write_text(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary

