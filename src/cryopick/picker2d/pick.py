"""Picking micrographs with a trained 2D picker.

>>> summary = pick_folder("model/", "mics/", "picks/")   # what `cryopick pick` does: batch, resumable
>>> picker = Picker("model/")                       # weights + card.json written by `cryopick train`
>>> picks = picker.pick("mic001.mrc")               # Picks in original pixels, with scores
>>> picker.set_image(array, name="mic002")          # or step by step, like SAM's predictor:
>>> probability = picker.probability                #   (H', W') map at the working scale
>>> picks = picker.predict(threshold=0.3)           #   re-threshold without re-running the network

Pipeline per micrograph: read -> find the valid region (padding bands at the edges, see
:func:`cryopick.postprocess.peaks2d.valid_region`) -> Fourier-crop to the working scale recorded in the
model card -> robust normalisation -> network (tiled when the image is large) -> sigmoid -> Algorithm
S1 with per-pick scores; centres in padding bands or within ``border`` (default one particle radius)
of the valid region's edge are dropped before duplicate suppression -> coordinates back to original
pixels, with the particle diameter of the model card.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.images import read_micrograph
from cryopick.picker2d.card import load_model
from cryopick.picker2d.predict import TTA_MODES, bf16_is_faster, fold_batchnorm, predict_probability
from cryopick.picks import Picks, filter_score
from cryopick.postprocess.peaks2d import PEAK_METHODS, Peaks2d, find_peaks_2d, valid_region
from cryopick.preprocess import WorkingFrame
from cryopick.runtime import configure_threads

log = logging.getLogger(__name__)

Region = tuple[float, float, float, float]


@dataclass
class PreparedImage:
    """A micrograph ready for the network.

    ``region`` is the part of the micrograph that is not padding (``(x0, y0, x1, y1)``, inclusive
    original pixels); ``display``/``display_frame`` a copy for drawing overlays (only when asked for).
    """

    name: str
    working: np.ndarray
    frame: WorkingFrame
    pixel_size: float | None
    path: Path | None = None
    region: Region | None = None
    display: np.ndarray | None = None
    display_frame: WorkingFrame | None = None


def check_number(name: str, value, lo: float = -math.inf, hi: float = math.inf, low_open: bool = False):
    """``value`` as a float when it is a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``low_open``),
    ``None`` unchanged; otherwise a :class:`CryopickError` naming the option."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CryopickError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < lo or v > hi or (low_open and v == lo):
        bound = ("> " if low_open else ">= ") + f"{lo:g}" if math.isfinite(lo) else ""
        if math.isfinite(hi):
            bound = f"between {lo:g} and {hi:g}"
        raise CryopickError(f"{name} must be a finite number {bound}, got {value!r}".rstrip())
    return v


class Picker:
    """Stateful 2D picker: load a model directory once, pick many micrographs.

    Parameters
    ----------
    model_dir
        Directory written by ``cryopick train`` (``model.pt`` + ``card.json``).
    threshold
        Score threshold in [0, 1]; default: the calibrated one in the card. ``0`` keeps every candidate.
    min_distance
        Duplicate suppression distance in original pixels; default: the card's (one radius).
    pixel_size
        Å/px of the micrographs to pick, overriding their headers. When both it (or the header) and
        the card's training pixel size are known, micrographs are resampled to the training working
        pixel size; otherwise the training downsampling factor is reused.
    border
        Picks closer than this many original pixels to the edge of the valid region are dropped
        (their particle would be cut off). Default (``None``): one particle radius; ``0`` = off.
    detect_padding
        Find constant or striped padding bands at the micrograph edges (left by motion correction)
        and treat them as background: the valid region then excludes them (default on).
    bf16
        bfloat16 autocast for inference; ``None`` = when the CPU has native bf16 (AVX512-BF16/AMX).
    num_threads
        Torch CPU threads (``None``: as many as there are free cores now, see :mod:`cryopick.runtime`).
    tta, peak_method
        Test-time augmentation (``"none"``, ``"flips"``, ``"d4"``; see
        :data:`cryopick.picker2d.predict.TTA_MODES`) and post-processing (``"s1"`` or ``"peaks"``);
        default: the card's (chosen at calibration). With another choice than the card's, the default
        threshold is the one calibrated for that choice when the card records it.
    """

    def __init__(self, model_dir: str | os.PathLike, threshold: float | None = None,
                 min_distance: float | None = None, pixel_size: float | None = None,
                 bf16: bool | None = None, num_threads: int | None = None, device: str = "cpu",
                 border: float | None = None, detect_padding: bool = True, tta: str | None = None,
                 peak_method: str | None = None) -> None:
        threshold = check_number("threshold", threshold, 0.0, 1.0)
        self.min_distance = check_number("min_distance", min_distance, 0.0)
        self.pixel_size = check_number("pixel_size", pixel_size, 0.0, low_open=True)
        self.border = check_number("border", border, 0.0)
        self.detect_padding = bool(detect_padding)
        configure_threads(num_threads)  # None: as many as there are free cores now (cryopick.runtime)
        self.model_dir = Path(model_dir)
        self.model, self.card = load_model(self.model_dir, device=device)
        fold_batchnorm(self.model)
        self.tta = self.card.tta if tta is None else tta
        self.peak_method = self.card.peak_method if peak_method is None else peak_method
        if self.tta not in TTA_MODES:
            raise CryopickError(f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")
        if self.peak_method not in PEAK_METHODS:
            raise CryopickError(f"peak_method must be one of {', '.join(PEAK_METHODS)}, got {self.peak_method!r}")
        self.threshold = self._card_threshold() if threshold is None else threshold
        self.bf16 = bf16_is_faster(self.model) if bf16 is None else bool(bf16)
        self.probability: np.ndarray | None = None
        self._image: PreparedImage | None = None

    def _card_threshold(self) -> float:
        """The card's calibrated threshold for this picker's TTA mode and peak method."""
        card = self.card
        if (self.tta, self.peak_method) == (card.tta, card.peak_method):
            return card.score_threshold
        variant = (card.calibration.get("variants") or {}).get(f"{self.peak_method}/tta={self.tta}") or {}
        value = variant.get("threshold")
        return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else card.score_threshold

    def settings(self) -> dict:
        """The settings that decide the picks (recorded with a batch run, see :func:`pick_micrographs`)."""
        settings = {"threshold": self.threshold, "min_distance": self.min_distance, "pixel_size": self.pixel_size,
                    "border": self.border, "detect_padding": self.detect_padding}
        # The card's own choices are covered by the model digest; record only overrides (so folders
        # picked before these options existed still resume).
        if self.tta != self.card.tta:
            settings["tta"] = self.tta
        if self.peak_method != self.card.peak_method:
            settings["peak_method"] = self.peak_method
        return settings

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
                pixel_size: float | None = None, display: bool = False) -> PreparedImage:
        """Read (if a path) and bring a micrograph to the working scale; ``display`` also keeps a
        copy for overlays (:func:`cryopick.picker2d.outputs.display_image`)."""
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
        h, w = data.shape
        region = valid_region(data) if self.detect_padding else (0, 0, w - 1, h - 1)
        shown, shown_frame = None, None
        if display:
            from cryopick.picker2d.outputs import display_image

            shown, shown_frame = display_image(data)
        return PreparedImage(name or "micrograph", working, frame, self.pixel_size or pixel_size, path,
                             region, shown, shown_frame)

    def set_image(self, image: np.ndarray | str | os.PathLike | PreparedImage, name: str | None = None,
                  pixel_size: float | None = None) -> None:
        """Run the network on one micrograph and keep its probability map."""
        prepared = image if isinstance(image, PreparedImage) else self.prepare(image, name, pixel_size)
        self._image = prepared
        self.probability = predict_probability(self.model, prepared.working, bf16=self.bf16, tta=self.tta)

    def diameter(self, image: PreparedImage | None = None) -> float:
        """Particle diameter in original pixels of ``image`` (default: the current one)."""
        image = image or self._image
        return self.card.working_diameter / float(np.mean(image.frame.factors))

    def border_px(self, image: PreparedImage | None = None) -> float:
        """The border in original pixels: ``border``, or one particle radius."""
        return 0.5 * self.diameter(image) if self.border is None else self.border

    def predict(self, threshold: float | None = None, min_distance: float | None = None,
                **postprocess) -> Picks:
        """Picks from the current probability map (call :meth:`set_image` first).

        ``threshold`` and ``min_distance`` (original pixels) override the picker's; other keyword
        arguments go to :func:`cryopick.postprocess.peaks2d.find_peaks_2d`.
        """
        if self.probability is None or self._image is None:
            raise RuntimeError("call set_image() before predict()")
        peaks = self.peaks(threshold, min_distance, **postprocess)
        return self.to_picks(peaks)

    def peaks(self, threshold: float | None = None, min_distance: float | None = None, **postprocess) -> Peaks2d:
        """Post-processed picks in working pixels (see :meth:`predict`); centres outside the valid
        region or within the border are dropped (their scores are in ``edge_scores``)."""
        card, image = self.card, self._image
        to_working = float(np.mean(image.frame.factors))  # working px per original px
        md = min_distance if min_distance is not None else self.min_distance
        md = md if md is not None else card.min_distance
        h, w = self.probability.shape
        region = image.region or (0, 0, image.frame.original_shape[1] - 1, image.frame.original_shape[0] - 1)
        fx, fy = image.frame.factors
        kwargs = dict(threshold=card.mask_threshold, score=card.score_method,
                      # default: one particle radius (not the smaller painted-blob radius)
                      min_distance=0.5 * card.working_diameter if md is None else md * to_working,
                      min_score=self.threshold if threshold is None else threshold,
                      region=(region[0] * fx, region[1] * fy, region[2] * fx, region[3] * fy),
                      border=self.border_px(image) * to_working)
        kwargs.update(postprocess)
        kwargs.setdefault("method", self.peak_method)
        return find_peaks_2d(self.probability, card.target_radius, **kwargs)

    def to_picks(self, peaks: Peaks2d) -> Picks:
        """Working-pixel peaks -> :class:`Picks` in the original micrograph's pixels (with the diameter)."""
        image = self._image
        coords = image.frame.to_original(peaks.coords) if len(peaks) else np.zeros((0, 2))
        return Picks.from_arrays(image.name, coords, score=peaks.scores, diameter=self.diameter(image),
                                 pixel_size=image.pixel_size)

    def pick(self, image: np.ndarray | str | os.PathLike, name: str | None = None,
             pixel_size: float | None = None, threshold: float | None = None,
             min_distance: float | None = None) -> Picks:
        """One micrograph (path or ``(H, W)`` array) -> :class:`Picks` in original pixels."""
        self.set_image(image, name=name, pixel_size=pixel_size)
        return self.predict(threshold=threshold, min_distance=min_distance)

    # -- batch --
    def pick_many(self, micrographs, output_dir: str | os.PathLike, **options) -> dict:
        """Pick a list / directory / glob of micrographs into ``output_dir``; see :func:`pick_micrographs`."""
        return pick_micrographs(self, micrographs, output_dir, **options)


def _model_digest(model_dir: Path) -> str:
    """Short SHA-256 of ``model.pt`` and ``card.json``: which model made the picks of a folder."""
    from cryopick.picker2d.card import CARD_NAME, WEIGHTS_NAME

    digest = hashlib.sha256()
    for name in (WEIGHTS_NAME, CARD_NAME):
        with open(model_dir / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def pick_micrographs(picker: Picker, micrographs, output_dir: str | os.PathLike, format: str = "relion",
                     overlays: int = 3, overlay_names: Iterable[str] | None = None, redo: bool = False,
                     resume: bool = True, project_dir: str | os.PathLike | None = None, progress: bool = True,
                     threshold: float | None = None, min_distance: float | None = None,
                     prefetch: bool = False) -> dict:
    """Batch picking with resume.

    For each micrograph: the coordinate file in ``format`` (RELION: ``<name>_autopick.star``; every pick
    carries the particle diameter, so formats with a size column get it), then its record
    ``.cryopick/<name>.json`` (counts, scores, diameter, valid region, timing; :class:`RunState`) that
    marks it finished. A rerun skips finished micrographs; a damaged record counts as unfinished. A rerun
    with another model or other settings into a folder with finished picks is refused unless ``redo``
    (which picks everything again; ``resume=False`` is the same). At the end (see
    :func:`cryopick.picker2d.outputs.write_summary`), over every finished micrograph of the folder:
    the RELION ``autopick.star`` index (paths as given, or relative to ``project_dir``), ``summary.json``,
    ``summary.csv``, ``score_histogram.png``; and overlay PNGs (``overlays/<name>.png``) of the first
    ``overlays`` micrographs or of those named in ``overlay_names``. All files are written atomically.
    """
    from tqdm.auto import tqdm

    from cryopick.io.coords import format_module
    from cryopick.io.images import image_name, list_images
    from cryopick.io.resume import RunState
    from cryopick.picker2d.outputs import check_output_dir, write_overlay, write_summary

    paths = list_images(list(micrographs) if isinstance(micrographs, (list, tuple)) else micrographs)
    names = [image_name(p) for p in paths]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise CryopickError(f"several micrographs share the name(s) {', '.join(sorted(dupes)[:5])}; names must be unique")
    module = format_module(format)
    if 2 not in getattr(module, "NDIM", (2,)):
        raise CryopickError(f"format {module.NAME!r} holds 3D picks only; choose relion, cryolo, eman2, topaz, cryoppp or imod")
    threshold = check_number("threshold", threshold, 0.0, 1.0)
    min_distance = check_number("min_distance", min_distance, 0.0)
    n_overlays = int(check_number("overlays", overlays, 0.0) or 0)
    unknown = sorted(set(overlay_names or ()) - set(names))
    if unknown:
        raise CryopickError(f"--overlay {', '.join(unknown[:5])}: no such micrograph among the {len(names)} given "
                            f"(names are file names without extension, e.g. {names[0]})")
    wanted_overlays = set(overlay_names or names[:n_overlays])
    output_dir = check_output_dir(output_dir)
    state = RunState(output_dir)
    thr = picker.threshold if threshold is None else threshold
    settings = {**picker.settings(), "threshold": thr,
                "min_distance": picker.min_distance if min_distance is None else min_distance}
    redo = redo or not resume
    if not state.check_fingerprint({"model": _model_digest(picker.model_dir), **settings}, redo=redo):
        redo = True

    def out_file(name: str) -> Path:
        return output_dir / f"{name}{module.DEFAULT_SUFFIX}"

    todo = [(p, n) for p, n in zip(paths, names) if redo or not state.is_done(n, out_file(n))]
    if len(todo) < len(paths):
        log.info("%d of %d micrographs already picked in %s; skipping them", len(paths) - len(todo), len(paths),
                 output_dir)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Optionally read and resample the next micrograph while the network runs on the current
        # one (helps with slow disks; on few cores it competes with the network's threads).
        def prepare(i: int):
            return picker.prepare(todo[i][0], todo[i][1], display=todo[i][1] in wanted_overlays)

        future = pool.submit(prepare, 0) if todo and prefetch else None
        bar = tqdm(todo, desc="picking", unit="mic", disable=not progress)
        for i, (path, name) in enumerate(bar):
            t0 = time.perf_counter()
            prepared = future.result() if prefetch else prepare(i)
            if prefetch and i + 1 < len(todo):
                future = pool.submit(prepare, i + 1)
            picker.set_image(prepared)
            # All candidates (for the score histogram), then the ones above the threshold.
            peaks = picker.peaks(threshold=0.0, min_distance=min_distance)
            candidates = picker.to_picks(peaks)
            picks = filter_score(candidates, thr)
            n_edge = int(np.sum(peaks.edge_scores >= thr))
            diameter, area = picker.diameter(prepared), _picking_area(prepared.region, picker.border_px(prepared))
            try:
                module.write(picks if len(picks) else Picks.empty(pixel_size=picks.pixel_size), out_file(name))
                if name in wanted_overlays:
                    write_overlay(prepared.display, prepared.display_frame, picks,
                                  output_dir / "overlays" / f"{name}.png", diameter, threshold=thr, area=area,
                                  title=f"{name}: {len(picks)} picks")
                state.mark_done(name, {
                    "micrograph": name, "path": str(path), "abspath": os.path.abspath(path), "n_picks": len(picks),
                    "n_edge": n_edge, "threshold": thr, "diameter_px": round(diameter, 3),
                    "pixel_size": prepared.pixel_size, "region": list(prepared.region),
                    "candidate_scores": np.round(candidates.scores, 3), "seconds": round(time.perf_counter() - t0, 3)})
            except OSError as exc:
                raise CryopickError(f"{output_dir}: cannot write the picks of {name} ({exc.strerror or exc}); free "
                                    "space or fix permissions and rerun: finished micrographs are kept") from None
            bar.set_postfix(picks=len(picks))
    total_edge = sum(int(r.get("n_edge", 0) or 0) for r in state.records([n for _, n in todo]))
    if total_edge:
        log.info("dropped %d picks in padding bands or within %s of the micrograph edges (border)",
                 total_edge, "one particle radius" if picker.border is None else f"{picker.border:g} px")
    return write_summary(output_dir, {n: str(p) for p, n in zip(paths, names)}, module, thr, picker.model_dir,
                         time.perf_counter() - start, len(todo), settings=settings, project_dir=project_dir)


def _picking_area(region: Region, border: float) -> Region:
    x0, y0, x1, y1 = region
    return (x0 + border, y0 + border, x1 - border, y1 - border)


def pick_folder(model_dir: str | os.PathLike, micrographs, output_dir: str | os.PathLike, *,
                threshold: float | None = None, min_distance: float | None = None,
                pixel_size: float | None = None, border: float | None = None, detect_padding: bool = True,
                bf16: bool | None = None, num_threads: int | None = None, tta: str | None = None,
                peak_method: str | None = None, **options) -> dict:
    """What ``cryopick pick`` does: load the model, pick ``micrographs`` into ``output_dir``, summarise.

    Picking settings go to :class:`Picker`; ``options`` (``format``, ``overlays``, ``overlay_names``,
    ``redo``, ``project_dir``, ``progress``) to :func:`pick_micrographs`. The output folder and the
    format are checked before the model is loaded, so a bad ``-o`` fails at once and leaves nothing.
    """
    from cryopick.io.coords import format_module
    from cryopick.picker2d.outputs import check_output_dir

    check_output_dir(output_dir, create=False)
    format_module(options.get("format", "relion"))
    picker = Picker(model_dir, threshold=threshold, min_distance=min_distance, pixel_size=pixel_size,
                    border=border, detect_padding=detect_padding, bf16=bf16, num_threads=num_threads,
                    tta=tta, peak_method=peak_method)
    return pick_micrographs(picker, micrographs, output_dir, **options)
