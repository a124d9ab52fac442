"""The prompt: one particle type given by one or more clicked examples.

A :class:`Prompt` holds the example sub-volumes (``PROMPT_SIZE``³ working voxels, dark particles), the
working voxel size and binning they were cut at, and the particle diameter (working voxels). It is saved as
one ``.prompt`` file (``PROMPT_FORMAT``, an ``.npz``); :func:`make_prompt` cuts it from a tomogram at
user positions (voxels of the tomogram as stored, ``x, y, z``), :func:`prompt_embedding` encodes it and
:func:`estimate_diameter` measures the particle from the network's own segmentation.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path
from cryopick.io.images import Image, read_tomogram
from cryopick.models.prompt_encoder import PROMPT_SIZE
from cryopick.models.promptable3d import ProPicker, load_propicker
from cryopick.picker3d.card import default_threshold, trained_scale
from cryopick.picker3d.predict import predict_tomogram
from cryopick.picker3d.scale import (
    TrainedScale,
    WorkingTomogram,
    check_particle_scale,
    choose_binning,
    choose_voxel_size,
    working_tomogram,
)
from cryopick.preprocess import cut_cube

PROMPT_FORMAT = "cryopick-prompt3d-v1"

log = logging.getLogger(__name__)


# -- prompts -------------------------------------------------------------------------------------------
@dataclass
class Prompt:
    """One particle type, given by one or more examples.

    Attributes
    ----------
    subvolumes
        ``(K, 37, 37, 37)`` float32 sub-volumes around the examples at the working voxel size, in
        the network's contrast (dark particles).
    positions
        ``(K, 3)`` example centres ``x, y, z`` in voxels of the source tomogram as stored.
    tomogram
        Name of the source tomogram.
    voxel_size
        Working Å/voxel (``None`` when the source header had none).
    binning
        Working voxel size / source voxel size.
    diameter
        Particle diameter in working voxels (given, or estimated from the segmentation of the
        examples; ``None`` if unknown).
    label
        Class name used in outputs.
    invert
        Whether tomograms are multiplied by -1 before use (bright-particle data).
    """

    subvolumes: np.ndarray
    positions: np.ndarray
    tomogram: str
    voxel_size: float | None
    binning: float = 1.0
    diameter: float | None = None
    label: str = "particle"
    invert: bool = False
    meta: dict = field(default_factory=dict)


def save_prompt(prompt: Prompt, path: str | os.PathLike) -> Path:
    """Write a prompt file (numpy ``.npz`` layout, any extension; ``.prompt`` by convention)."""
    path = Path(path)
    header = {k: v for k, v in asdict(prompt).items() if k not in ("subvolumes", "positions")}
    header["format"] = PROMPT_FORMAT
    buf = io.BytesIO()
    np.savez_compressed(buf, subvolumes=prompt.subvolumes.astype(np.float32), positions=prompt.positions,
                        header=np.array(json.dumps(header)))
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())
    except OSError as exc:
        raise CryopickError(f"{path}: cannot write the prompt file ({exc.strerror or exc}); choose another -o") from None
    return path


def load_prompt(path: str | os.PathLike) -> Prompt:
    """Read a prompt file written by :func:`save_prompt` (``cryopick prompt``)."""
    path = Path(path)
    fix = "make one with `cryopick prompt --tomogram TOMO --at X,Y,Z -o NAME.prompt`"
    if not path.is_file():
        raise CryopickError(f"{path}: no such prompt file; {fix}")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            subvolumes, positions = np.asarray(data["subvolumes"]), np.asarray(data["positions"])
    except Exception:  # numpy/zipfile/json raise many kinds on foreign or damaged files
        raise CryopickError(f"{path}: not a cryopick prompt file (unreadable or damaged); {fix}") from None
    if not isinstance(header, dict) or header.pop("format", None) != PROMPT_FORMAT:
        raise CryopickError(f"{path}: not a cryopick prompt file ({PROMPT_FORMAT}); {fix}")
    unknown = sorted(set(header) - set(Prompt.__dataclass_fields__))
    if unknown:
        raise CryopickError(f"{path}: prompt file with unknown field(s) {', '.join(unknown)} (written by a newer "
                            f"cryopick?); {fix}")
    try:
        prompt = Prompt(subvolumes=subvolumes, positions=positions, **header)
    except TypeError:
        raise CryopickError(f"{path}: incomplete prompt file; {fix}") from None
    if (subvolumes.ndim != 4 or subvolumes.shape[1:] != (PROMPT_SIZE,) * 3 or len(subvolumes) == 0
            or not np.isfinite(subvolumes).all() or positions.shape != (len(subvolumes), 3)):
        raise CryopickError(f"{path}: damaged prompt file (sub-volumes of shape {subvolumes.shape}); {fix}")
    return prompt


def prompt_fingerprint(prompt: Prompt) -> dict:
    """What identifies a prompt's picks: label, scale, contrast, diameter and a hash of its examples."""
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(prompt.subvolumes, dtype=np.float32).tobytes()).hexdigest()
    return {"label": prompt.label, "examples_sha256": digest, "n_examples": int(len(prompt.subvolumes)),
            "voxel_size": prompt.voxel_size, "binning": prompt.binning, "diameter": prompt.diameter,
            "invert": prompt.invert}


def make_prompt(tomogram: str | os.PathLike | Image, positions: Sequence[Sequence[float]], label: str = "particle",
                binning: float | None = None, voxel_size: float | None = None, diameter_A: float | None = None,
                diameter_px: float | None = None, invert: bool = False, model: ProPicker | None = None,
                estimate: bool = True) -> Prompt:
    """Cut 37³ prompt sub-volumes around ``positions`` (``x, y, z`` voxels of ``tomogram`` as stored).

    Parameters
    ----------
    binning, voxel_size
        Working scale: bin by ``binning`` or go to ``voxel_size`` Å/voxel. Neither (the default): the
        scale ``model`` was trained at (:func:`~cryopick.picker3d.card.trained_scale`), the nearest one
        that puts the particle in its trained diameter range (:func:`choose_voxel_size`); a tomogram
        without a voxel size in its header is binned only as far as a particle of known voxel diameter
        needs (:func:`choose_binning`). A diameter estimated outside the trained range moves the scale
        once more. ``meta["scale"]`` says ``"auto"`` or ``"given"``.
    diameter_A, diameter_px
        Particle diameter, in Å or in voxels of ``tomogram`` as stored. When neither is given and
        ``estimate`` is true, it is estimated by :func:`estimate_diameter` with ``model`` (default:
        the shipped weights) and ``meta["diameter_estimated"]`` is set.

    A particle under 2 working voxels is refused; one outside the trained range or larger than the
    prompt box gets a warning saying what to do (:func:`check_particle_scale`).
    """
    check_label(label)
    image = tomogram if isinstance(tomogram, Image) else read_tomogram(tomogram)
    positions = _check_positions(image, positions)
    for key, value in (("diameter_A", diameter_A), ("diameter_px", diameter_px), ("binning", binning),
                       ("voxel_size", voxel_size)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CryopickError(f"{image.path}: {key} must be a number > 0, got {value!r}")
    auto = binning is None and voxel_size is None
    if model is None and (auto or (diameter_A is None and diameter_px is None and estimate)):
        model = load_propicker()
    trained = trained_scale(model) if model is not None else None
    src = image.pixel_size
    if diameter_A is not None and src is None:
        raise CryopickError(f"{image.path}: no voxel size in the header; give the diameter in voxels")
    if auto:
        d_A = diameter_A if diameter_A is not None else (diameter_px * src if diameter_px and src else None)
        binning, voxel_size = _auto_scale(src, trained, d_A, diameter_px)
    work, subs = _cut_examples(image, positions, binning, voxel_size, invert)
    diameter = None
    if diameter_A is not None:
        diameter = diameter_A / work.voxel_size
    elif diameter_px is not None:
        diameter = diameter_px / work.binning
    prompt = Prompt(subs, positions, image.name, work.voxel_size, work.binning, diameter, label, invert,
                    meta={"scale": "auto" if auto else "given"})
    if diameter is None and estimate:
        diameter = estimate_diameter(model, prompt, work)
        if auto and trained is not None and diameter is not None and not (
                trained.diameter[0] <= diameter <= trained.diameter[1]):
            # the particle is outside the trained range at the first scale: move once, measure again
            stored = diameter * work.binning  # voxels of the tomogram as stored
            b2, v2 = _auto_scale(src, trained, stored * src if src else None, stored)
            if abs((v2 / work.voxel_size if v2 else b2 / work.binning) - 1.0) > 0.05:
                work, subs = _cut_examples(image, positions, b2, v2, invert)
                prompt.subvolumes, prompt.voxel_size, prompt.binning = subs, work.voxel_size, work.binning
                diameter = estimate_diameter(model, prompt, work) or stored / work.binning
        prompt.diameter = diameter
        prompt.meta["diameter_estimated"] = True
    given = (f"--diameter {diameter_A:g}" if diameter_A is not None else
             f"--diameter-vox {diameter_px:g}" if diameter_px is not None else "")
    check_particle_scale(prompt.diameter, prompt.voxel_size, trained, str(image.path), box=PROMPT_SIZE, given=given)
    return prompt


def _auto_scale(src: float | None, trained: TrainedScale | None, diameter_A: float | None,
                diameter_vox: float | None) -> tuple[float | None, float | None]:
    """``(binning, voxel_size)`` chosen by :func:`make_prompt` when the user gave neither."""
    if trained is None:
        return 1.0, None
    if src is not None:
        return None, choose_voxel_size(src, trained, diameter_A)
    return choose_binning(diameter_vox, trained), None


def _check_positions(image: Image, positions) -> np.ndarray:
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    if len(positions) == 0:
        raise CryopickError("give at least one example position (--at x,y,z)")
    if not np.isfinite(positions).all():
        bad = positions[~np.isfinite(positions).all(axis=1)][0].tolist()
        raise CryopickError(f"{image.path}: example position {bad} is not a finite number; give x,y,z in voxels")
    shape_xyz = np.asarray(image.data.shape[::-1])
    bad = np.any((positions < 0) | (positions > shape_xyz - 1), axis=1)
    if bad.any():
        raise CryopickError(
            f"{image.path}: position {positions[bad][0].tolist()} is outside the tomogram "
            f"(x, y, z size {shape_xyz.tolist()}); give x,y,z in voxels"
        )
    return positions


def _cut_examples(image: Image, positions: np.ndarray, binning: float | None, voxel_size: float | None,
                  invert: bool) -> tuple[WorkingTomogram, np.ndarray]:
    """The tomogram at the working scale and the 37³ sub-volumes around ``positions`` (stored voxels)."""
    work = working_tomogram(image, binning=(binning or 1.0) if voxel_size is None else None, voxel_size=voxel_size,
                            invert=invert)
    subs = np.stack([cut_prompt(work.volume, c) for c in work.to_working(positions)])
    for sub, at in zip(subs, positions):
        if not np.isfinite(sub).all() or not sub.std() > 0:
            raise CryopickError(f"{image.path}: the tomogram around {at.tolist()} holds NaN or constant voxels; "
                                "click a particle in a region with data")
    if work.voxel_size is not None or work.binning != 1.0:
        log.debug("%s: working voxel size %s (binning %.2f of the tomogram as stored)", image.name,
                 "unknown" if work.voxel_size is None else f"{work.voxel_size:.2f} Å", work.binning)
    return work, subs


def describe_diameters(prompts: Sequence[Prompt], model: ProPicker | None = None) -> dict:
    """Each prompt's particle diameter (working voxels, Å, estimated or given), logged once per class:
    the size limits and the NMS distance of picking follow from it. With ``model``, a particle outside
    the scale it was trained on gets the warning of :func:`check_particle_scale` (a prompt made before
    ``prompt`` chose the scale by itself, or with an explicit --voxel-size); a particle under 2 working
    voxels is refused (a prompt made before ``prompt`` refused it: nothing could be picked)."""
    out = {}
    trained = trained_scale(model) if model is not None else None
    for p in prompts:
        angstrom = p.diameter * p.voxel_size if p.diameter and p.voxel_size else None
        out[p.label] = d = {"working_voxels": p.diameter, "angstrom": angstrom,
                            "estimated": bool(p.meta.get("diameter_estimated"))}
        text = "unknown" if p.diameter is None else f"{p.diameter:.1f} working voxels" + (
            f" = {angstrom:.0f} Å" if angstrom else "")
        logging.getLogger("cryopick.picker3d.batch").info(
            "%s: particle diameter %s", p.label, text + (" (estimated by `cryopick prompt`; remake the prompt with "
                                                         "--diameter to set it)" if d["estimated"] else " (given)"))
        check_particle_scale(p.diameter, p.voxel_size, trained, f"prompt {p.label!r}", box=PROMPT_SIZE)
    return out


def check_label(label: str) -> str:
    """A class label usable as a folder and file name part (no path separators, not hidden)."""
    if not isinstance(label, str) or "/" in label or "\\" in label or label.startswith(".") or label.strip() != label:
        raise CryopickError(f"class label {label!r} cannot be a folder name; give another --label "
                            "(letters, digits, - and _)")
    return label


def cut_prompt(volume, centre_xyz: Sequence[float]) -> np.ndarray:
    """The 37³ sub-volume centred on the voxel nearest ``centre_xyz`` (reflection at the borders)."""
    return cut_cube(volume, centre_xyz, PROMPT_SIZE)


class _Crop:
    """A ``window``³ view of ``volume`` centred on ``centre`` (x, y, z), read with reflection."""

    def __init__(self, volume, centre, window: int):
        self._data = cut_cube(volume, centre, window)
        self.shape = self._data.shape

    def __getitem__(self, item):
        return self._data[item]


def prompt_embedding(model: ProPicker, prompt: Prompt, flips: bool = True) -> torch.Tensor:
    """``(code_dim,)`` conditioning code of a prompt: its examples' codes combined (:meth:`ProPicker.combine`),
    each example also seen mirrored along every combination of axes when ``flips`` (8 views; makes the
    code less dependent on the example's orientation); a fine-tuned model's own fixed code."""
    if "embedding" in model.meta and model.meta.get("finetuned"):
        return torch.tensor(model.meta["embedding"], dtype=torch.float32)
    return model.combine(model.embed(flipped_views(prompt.subvolumes) if flips else prompt.subvolumes))


def flipped_views(subvolumes: np.ndarray) -> np.ndarray:
    """``(K, s, s, s)`` -> ``(8K, s, s, s)``: each sub-volume mirrored along every subset of its axes."""
    subvolumes = np.asarray(subvolumes, dtype=np.float32).reshape(-1, *np.shape(subvolumes)[-3:])
    views = []
    for mask in range(8):
        axes = tuple(1 + a for a in range(3) if mask >> a & 1)
        views.append(np.flip(subvolumes, axis=axes) if axes else subvolumes)
    return np.ascontiguousarray(np.concatenate(views))


def estimate_diameter(model: ProPicker, prompt: Prompt, work: WorkingTomogram, threshold: float | None = None,
                      window: int = 64) -> float | None:
    """Diameter (working voxels) of the particle under each example (median over examples), from the
    segmentation of a ``window``³ block around it in ``work``, the prompt's own tomogram at the working
    scale (:func:`component_diameter`)."""
    z = prompt_embedding(model, prompt)[None]
    threshold = default_threshold(model) if threshold is None else threshold
    sizes = []
    for c in work.to_working(prompt.positions):
        prob = predict_tomogram(model.segmenter, _Crop(work.volume, c, window), z, window=window, stride=window,
                                progress=False)[0]
        d = component_diameter(prob, threshold)
        if d is not None:
            sizes.append(d)
    return float(np.median(sizes)) if sizes else None


def component_diameter(prob: np.ndarray, threshold: float, search: int = PROMPT_SIZE // 2,
                       min_voxels: int = 27) -> float | None:
    """Diameter of the component of ``prob > threshold`` nearest the block's centre (within ``search``
    voxels; components under ``min_voxels`` are noise), its enclosed cavities filled: twice the 95th
    percentile of its voxels' distances from its centroid, plus one voxel; ``None`` without one.

    The particle's diameter is its largest extent (what a user measures, and what the size limits and
    the match radius assume); the diameter of the sphere of the component's volume is biased low for
    any particle that is not a ball (0.65 × on the simulator's generalisation classes, e.g. 146 Å for a
    217 Å particle), the 95th-percentile extent is not (0.95 ×) and ignores a stray voxel.
    A hollow particle (a shell, a cage) is segmented as its wall: the centre voxel is empty, so the
    nearest component is taken (not only one through the centre) and its cavity counts."""
    from scipy import ndimage

    from cryopick.postprocess.cluster3d import SIX_CONNECTED

    labels, n = ndimage.label(np.asarray(prob) > threshold, structure=SIX_CONNECTED)
    if n == 0:
        return None
    small = np.flatnonzero(np.bincount(labels.ravel(), minlength=n + 1) < min_voxels)
    labels[np.isin(labels, small[small > 0])] = 0
    centre = np.asarray(labels.shape) // 2
    lo, hi = np.maximum(centre - search, 0), centre + search + 1
    block = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    pts = np.argwhere(block > 0)
    if not len(pts):
        return None
    nearest = np.argmin(np.linalg.norm(pts + lo - centre, axis=1))
    mask = ndimage.binary_fill_holes(labels == block[tuple(pts[nearest])])
    pts = np.argwhere(mask).astype(float)
    r = np.linalg.norm(pts - pts.mean(0), axis=1)
    return float(2.0 * np.percentile(r, 95) + 1.0)
