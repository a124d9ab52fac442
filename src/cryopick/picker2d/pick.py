"""Picking micrographs with a trained 2D picker.

>>> from cryopick.picker2d.batch import pick_folder        # whole data sets (what `cryopick pick` does):
>>> summary = pick_folder("model/", "mics/", "picks/")   #   pipelined, resumable, or on Dask
>>> picker = Picker("model/")                       # weights + card.json written by `cryopick train`
>>> picks = picker.pick("mic001.mrc")               # Picks in original pixels, with scores
>>> picker.set_image(array, name="mic002")          # or step by step, like SAM's predictor:
>>> probability = picker.probability                #   (H', W') map at the working scale
>>> picks = picker.predict(threshold=0.3)           #   re-threshold without re-running the network

Pipeline per micrograph: read -> find the valid region (padding bands at the edges, see
:func:`cryopick.postprocess.edges.valid_region`) -> Fourier-crop to the working scale recorded in the
model card -> robust normalisation -> network (tiled when the image is large) -> sigmoid -> Algorithm
S1 with per-pick scores; centres in padding bands or within ``border`` (default one particle radius)
of the valid region's edge are dropped before duplicate suppression -> coordinates back to original
pixels, with the particle diameter of the model card.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.images import read_micrograph
from cryopick.picker2d.card import load_model
from cryopick.picker2d.predict import TTA_MODES, bf16_is_faster, fold_batchnorm, predict_probability
from cryopick.picks import Picks
from cryopick.postprocess.edges import valid_region
from cryopick.postprocess.peaks2d import PEAK_METHODS, Peaks2d, find_peaks_2d
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
                 peak_method: str | None = None, threads_reason: str | None = None) -> None:
        threshold = check_number("threshold", threshold, 0.0, 1.0)
        self.min_distance = check_number("min_distance", min_distance, 0.0)
        self.pixel_size = check_number("pixel_size", pixel_size, 0.0, low_open=True)
        self.border = check_number("border", border, 0.0)
        self.detect_padding = bool(detect_padding)
        # None: as many as there are free cores now (cryopick.runtime); threads_reason: what chose num_threads
        configure_threads(num_threads, reason=threads_reason)
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
        """The settings that decide the picks (recorded with a batch run, see
        :func:`cryopick.picker2d.batch.pick_micrographs`)."""
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
        self.probability = self.probability_map(prepared)

    # -- stateless steps (thread-safe: a pipeline runs them on different micrographs at once) --
    def probability_map(self, prepared: PreparedImage) -> np.ndarray:
        """The network's ``(H', W')`` probability map of a prepared micrograph (nothing is kept)."""
        return predict_probability(self.model, prepared.working, bf16=self.bf16, tta=self.tta)

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
        return self.peaks_of(self._image, self.probability, threshold, min_distance, **postprocess)

    def peaks_of(self, image: PreparedImage, probability: np.ndarray, threshold: float | None = None,
                 min_distance: float | None = None, **postprocess) -> Peaks2d:
        """:meth:`peaks` of a given micrograph and probability map (nothing is kept)."""
        card = self.card
        to_working = float(np.mean(image.frame.factors))  # working px per original px
        md = min_distance if min_distance is not None else self.min_distance
        md = md if md is not None else card.min_distance
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
        return find_peaks_2d(probability, card.target_radius, **kwargs)

    def to_picks(self, peaks: Peaks2d, image: PreparedImage | None = None) -> Picks:
        """Working-pixel peaks -> :class:`Picks` in the original micrograph's pixels (with the diameter)
        of ``image`` (default: the current one)."""
        image = image or self._image
        coords = image.frame.to_original(peaks.coords) if len(peaks) else np.zeros((0, 2))
        return Picks.from_arrays(image.name, coords, score=peaks.scores, diameter=self.diameter(image),
                                 pixel_size=image.pixel_size)

    def pick(self, image: np.ndarray | str | os.PathLike, name: str | None = None,
             pixel_size: float | None = None, threshold: float | None = None,
             min_distance: float | None = None) -> Picks:
        """One micrograph (path or ``(H, W)`` array) -> :class:`Picks` in original pixels."""
        self.set_image(image, name=name, pixel_size=pixel_size)
        return self.predict(threshold=threshold, min_distance=min_distance)
