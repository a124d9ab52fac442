"""Typed picking settings of a 3D model: threshold, size limits, minimum similarity, refinement.

:class:`PickSettings` is what ``calibrate3d`` writes and ``pick3d`` reads; :func:`default_settings` gives
the settings recommended with the weights (their ``meta``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryopick.errors import CryopickError
from cryopick.models.promptable3d import ProPicker
from cryopick.postprocess.cluster3d import sphere_volume


# -- settings ---------------------------------------------------------------------------------------------------
@dataclass
class PickSettings:
    """Post-processing settings (a calibration JSON file holds these keys).

    ``threshold``: probability for ProPicker-C / mask for ProPicker-TM (``None``: the model's
    recommended value, :func:`default_threshold`); ``min_size``, ``max_size``: component size limits
    in working voxels; ``min_factor``, ``max_factor``: the same as multiples of the volume of a sphere
    of the prompt's diameter, used where ``min_size`` / ``max_size`` are not set (defaults 0.1 and
    1.2; calibration files store factors, so one file serves prompts of any size); ``min_similarity``:
    cluster mode drops components whose :class:`PromptSimilarity` to the prompt (cosine, -1..1) is
    below this (``None``: no such check); ``refine``: self-prompting with this many first-pass
    picks (:func:`refined_code`; 0 = one pass); ``min_distance``: NMS
    distance in working voxels (``None``: the particle radius); ``tm_threshold``: minimum NCC score
    of a ProPicker-TM pick; ``tm_angle``: angular step (degrees) of its rotational search.
    """

    threshold: float | None = None
    min_size: float | None = None
    max_size: float | None = None
    min_factor: float = 0.1
    max_factor: float | None = 1.2
    min_similarity: float | None = None
    refine: int = 0
    min_distance: float | None = None
    tm_threshold: float = 0.15
    tm_angle: float = 30.0
    mode: str = "cluster"

    def size_limits(self, diameter: float | None) -> tuple[float | None, float | None]:
        """``(min_size, max_size)`` in working voxels: the explicit sizes where set, else the factors
        times the sphere volume of ``diameter`` (no diameter: only explicit sizes; ``None`` = no limit
        from this side, and ``max_factor=None`` means no upper limit)."""
        lo, hi = self.min_size, self.max_size
        if diameter:
            vol = sphere_volume(diameter)
            lo = self.min_factor * vol if lo is None else lo
            hi = (np.inf if self.max_factor is None else self.max_factor * vol) if hi is None else hi
        return lo, hi

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PickSettings":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CryopickError(f"{path}: cannot read settings ({exc}); write them with `cryopick calibrate3d`") from exc
        data = data.get("settings", data)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def default_threshold(model: ProPicker) -> float:
    """The probability threshold recommended with ``model`` (``meta["default_threshold"]``, else 0.5)."""
    return float(model.meta.get("default_threshold", 0.5))


def default_settings(model: ProPicker) -> PickSettings:
    """ProPicker-C settings recommended with ``model``, for picking without a calibration file.

    ``meta["default_threshold"]``, ``meta["default_min_factor"]`` and ``meta["default_max_factor"]``
    (and ``meta["default_min_similarity"]``) are the single setting with the best mean F1 over
    held-out classes when the weights were made (:func:`cryopick.train3d.recommend_settings`); absent
    keys fall back to 0.5, 0.1, 1.2 and no similarity check.
    """
    meta, fallback = model.meta, PickSettings()
    max_factor = meta.get("default_max_factor", fallback.max_factor)
    min_similarity = meta.get("default_min_similarity")
    return PickSettings(threshold=default_threshold(model),
                        min_factor=float(meta.get("default_min_factor", fallback.min_factor)),
                        max_factor=None if max_factor is None or not math.isfinite(max_factor) else float(max_factor),
                        min_similarity=None if min_similarity is None else float(min_similarity))

