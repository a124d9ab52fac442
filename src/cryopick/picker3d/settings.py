"""Typed picking settings of a 3D model: threshold, size limits, minimum similarity, refinement.

:class:`PickSettings` is what ``calibrate3d`` writes (:mod:`cryopick.picker3d.sweep`) and ``pick3d`` reads;
:func:`default_settings` gives the settings recommended with the weights (their ``meta``, read through
:mod:`cryopick.picker3d.card`); :func:`resolve_settings` turns what a run was given into one checked
:class:`PickSettings` per prompt. Settings files written by earlier versions (``{"settings": {...}}`` or the
bare keys) load unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cryopick.errors import CryopickError
from cryopick.models.promptable3d import ProPicker
from cryopick.picker3d.card import default_threshold
from cryopick.postprocess.cluster3d import sphere_volume

log = logging.getLogger(__name__)


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
        """Read a settings file (``calibrate3d`` output ``{"settings": {...}, ...}`` or the bare keys).

        Unknown keys are refused (a misspelt key would otherwise be ignored silently), and every value
        is checked (:meth:`validate`)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a JSON file"
            raise CryopickError(f"{path}: cannot read settings ({reason}); write them with "
                                "`cryopick calibrate3d`") from None
        if isinstance(data, dict) and isinstance(data.get("settings"), dict):
            data = data["settings"]
        if not isinstance(data, dict):
            raise CryopickError(f"{path}: not a settings file (expected a JSON object of picking settings); "
                                "write one with `cryopick calibrate3d`")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise CryopickError(f"{path}: unknown setting(s) {', '.join(map(repr, unknown))}; known: "
                                f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**data).validate(str(path))

    def validate(self, source: str = "settings") -> "PickSettings":
        """Check every value (types and ranges); raise a :class:`CryopickError` naming ``source``."""
        def number(key: str, lo: float | None = None, hi: float | None = None, optional: bool = True,
                   strict_lo: bool = False) -> None:
            value = getattr(self, key)
            if value is None and optional:
                return
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (lo is None or (value > lo if strict_lo else value >= lo)) and (hi is None or value <= hi)
            if not ok:
                span = f"{'>' if strict_lo else '>='} {lo:g}" if hi is None else f"between {lo:g} and {hi:g}"
                raise CryopickError(f"{source}: {key} must be a number {span}, got {value!r}")

        number("threshold", 0.0, 1.0)
        number("min_size", 0.0)
        number("max_size", 0.0, strict_lo=True)
        number("min_factor", 0.0, optional=False)
        number("max_factor", 0.0, strict_lo=True)
        number("min_similarity", -1.0, 1.0)
        number("min_distance", 0.0)
        number("tm_threshold", -1.0, 1.0, optional=False)
        number("tm_angle", 0.0, 180.0, optional=False, strict_lo=True)
        if not isinstance(self.refine, int) or isinstance(self.refine, bool) or self.refine < 0:
            raise CryopickError(f"{source}: refine must be a whole number >= 0, got {self.refine!r}")
        if self.mode not in ("cluster", "tm"):
            raise CryopickError(f"{source}: unknown picking mode {self.mode!r}; use cluster or tm")
        if self.min_size is not None and self.max_size is not None and self.max_size <= self.min_size:
            raise CryopickError(f"{source}: max_size ({self.max_size:g}) must be larger than min_size "
                                f"({self.min_size:g})")
        if self.max_factor is not None and self.max_factor <= self.min_factor:
            raise CryopickError(f"{source}: max_factor ({self.max_factor:g}) must be larger than min_factor "
                                f"({self.min_factor:g})")
        return self


def default_settings(model: ProPicker) -> PickSettings:
    """ProPicker-C settings recommended with ``model``, for picking without a calibration file.

    ``meta["default_threshold"]``, ``meta["default_min_factor"]`` and ``meta["default_max_factor"]``
    (and ``meta["default_min_similarity"]``) are the single setting with the best mean F1 over
    held-out classes when the weights were made (:func:`cryopick.picker3d.train.finetune.recommend_settings`);
    absent keys fall back to 0.5, 0.1, 1.2 and no similarity check.
    """
    meta, fallback = model.meta, PickSettings()
    max_factor = meta.get("default_max_factor", fallback.max_factor)
    min_similarity = meta.get("default_min_similarity")
    return PickSettings(threshold=default_threshold(model),
                        min_factor=float(meta.get("default_min_factor", fallback.min_factor)),
                        max_factor=None if max_factor is None or not math.isfinite(max_factor) else float(max_factor),
                        min_similarity=None if min_similarity is None else float(min_similarity))


def resolve_settings(model: ProPicker, settings: PickSettings | str | os.PathLike | Sequence | None, n_prompts: int,
                     overrides: Mapping[str, Any] | None = None, prompt=None) -> list[PickSettings]:
    """One :class:`PickSettings` per prompt, checked, threshold resolved.

    ``settings``: ``None`` (the model's :func:`default_settings`), one settings object or file (for
    every prompt), or one per prompt. ``overrides`` (e.g. from command-line options) replace those
    keys in each; unknown keys are refused. ``min_distance_A`` (Å) and ``min_distance_vox`` (voxels of the
    tomogram as stored) are converted to ``min_distance`` (working voxels) at ``prompt``'s scale (the
    :class:`~cryopick.picker3d.prompt.Prompt` of the run: every prompt of a run shares one scale).
    """
    overrides = working_distance(dict(overrides or {}), prompt)
    items = list(settings) if isinstance(settings, (list, tuple)) else [settings]
    if not items:
        items = [None]
    if len(items) not in (1, n_prompts):
        raise CryopickError(f"give one settings file, or one per prompt in the same order ({n_prompts} prompts, "
                            f"{len(items)} settings)")
    out = []
    for item in items:
        if item is None:
            s = default_settings(model)
        elif isinstance(item, PickSettings):
            s = item
        else:
            s = PickSettings.load(item)
        out.append(s)
    if len(out) == 1:
        out = out * n_prompts
    unknown = sorted(set(overrides) - set(PickSettings.__dataclass_fields__))
    if unknown:
        raise CryopickError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(PickSettings.__dataclass_fields__)}")
    out = [replace(s, **overrides) for s in out]
    out = [s if s.threshold is not None else replace(s, threshold=default_threshold(model)) for s in out]
    return [s.validate("picking settings" if not overrides else "picking settings (with the options given)")
            for s in out]


def working_distance(overrides: dict, prompt) -> dict:
    """``overrides`` with ``min_distance_A`` / ``min_distance_vox`` replaced by ``min_distance`` in working
    voxels of ``prompt`` (see :func:`resolve_settings`)."""
    given = {k: overrides.pop(k) for k in ("min_distance_A", "min_distance_vox") if overrides.get(k) is not None}
    for k in ("min_distance_A", "min_distance_vox"):
        overrides.pop(k, None)
    if not given:
        return overrides
    if len(given) > 1 or "min_distance" in overrides:
        raise CryopickError("give the NMS distance once: --min-distance (Å) or --min-distance-vox")
    if prompt is None:
        raise CryopickError("a distance in Å or tomogram voxels needs the prompt's working scale")
    (key, value), = given.items()
    if key == "min_distance_A":
        if prompt.voxel_size is None:
            raise CryopickError(f"prompt {prompt.label!r}: its tomogram had no voxel size in the header, so a "
                                "distance in Å cannot be converted; give --min-distance-vox (voxels)")
        overrides["min_distance"] = value / prompt.voxel_size
        if 0 < value / prompt.voxel_size < 1:
            log.warning("--min-distance %g Å is less than one working voxel (%.2f Å); --min-distance is in Å "
                        "(use --min-distance-vox for voxels of the tomogram)", value, prompt.voxel_size)
    else:
        overrides["min_distance"] = value / prompt.binning
    return overrides






