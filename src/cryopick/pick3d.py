"""Promptable 3D picking: one clicked example -> every instance of that particle in the tomograms.

>>> prompt = make_prompt("TS_01.mrc", [(412, 388, 96)], label="ribosome")     # x, y, z voxels
>>> save_prompt(prompt, "ribosome.prompt")
>>> picks = pick_tomogram("TS_02.mrc", [load_prompt("ribosome.prompt")], settings=PickSettings(mode="cluster"))

Frames and units
----------------
- Positions given by the user (``--at``, coordinate files) and the picks returned are voxels of the
  tomogram as stored (0-based ``x, y, z`` of the voxel centre, ``x`` = column), with
  ``Picks.pixel_size`` = its voxel size.
- The network works at the *working voxel size* of the prompt (``binning`` × the voxel size of the
  prompt's tomogram). Other tomograms are Fourier-cropped to that voxel size when their header
  states a voxel size, else binned by the prompt's ``binning``. Particle diameters and size limits
  (``diameter``, ``min_size``, ``max_size``) are in **working** voxels, stated as such.
- Contrast: the network and the prompt see the tomogram with dark particles (the usual
  reconstruction). For tomograms with bright particles give ``invert=True`` when making the prompt.

Settings (thresholds and size limits) come from :mod:`cryopick.calibrate3d` JSON files, from
arguments, or default to the model's recommended settings (:func:`default_settings`: threshold and
size limits as multiples of the sphere volume of the prompt's diameter, chosen on held-out classes when
the weights were made; 0.5, 0.1× and 1.2× when the weights carry none).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path
from cryopick.io.images import Image, read_tomogram
from cryopick.models.prompt_encoder import PROMPT_SIZE
from cryopick.models.promptable3d import ProPicker, load_propicker
from cryopick.picks import Picks
from cryopick.postprocess.cluster3d import cluster_picks, sphere_volume
from cryopick.predict3d import predict_tomogram, read_block

log = logging.getLogger(__name__)

PROMPT_FORMAT = "cryopick-prompt3d-v1"


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
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def load_prompt(path: str | os.PathLike) -> Prompt:
    path = Path(path)
    if not path.exists():
        raise CryopickError(f"{path}: no such prompt file; make one with `cryopick prompt`")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            subvolumes, positions = data["subvolumes"], data["positions"]
    except Exception as exc:
        raise CryopickError(f"{path}: not a cryopick prompt file ({exc}); make one with `cryopick prompt`") from exc
    if header.pop("format", None) != PROMPT_FORMAT:
        raise CryopickError(f"{path}: not a cryopick prompt file; make one with `cryopick prompt`")
    return Prompt(subvolumes=subvolumes, positions=positions, **header)


# -- tomograms at the working scale ------------------------------------------------------------------------
@dataclass
class WorkingTomogram:
    """A tomogram at the working voxel size; ``binning`` = working voxel size / stored voxel size."""

    volume: np.ndarray
    name: str
    voxel_size: float | None
    source_voxel_size: float | None
    binning: float
    source_shape: tuple[int, int, int]

    def to_working(self, coords: np.ndarray) -> np.ndarray:
        return np.asarray(coords, float) * self.factors

    def to_source(self, coords: np.ndarray) -> np.ndarray:
        return np.asarray(coords, float) / self.factors

    @property
    def factors(self) -> np.ndarray:
        """Per-axis ``x, y, z`` factor (exact shape ratio after Fourier cropping)."""
        return np.asarray(self.volume.shape[::-1], float) / np.asarray(self.source_shape[::-1], float)


def working_tomogram(image: Image | str | os.PathLike, binning: float | None = None,
                     voxel_size: float | None = None, invert: bool = False) -> WorkingTomogram:
    """Bring a tomogram to the working scale: ``voxel_size`` (Å) when both sizes are known, else ``binning``.

    No resampling (the memory map is used as is) when the factor is 1 and ``invert`` is False.
    """
    from cryopick.preprocess import downsample

    image = image if isinstance(image, Image) else read_tomogram(image)
    src = image.pixel_size
    if voxel_size is not None and src is not None:
        factor = voxel_size / src
    else:
        factor = binning or 1.0
    if factor < 0.99:
        raise CryopickError(
            f"{image.path}: voxel size {src:g} Å is coarser than the prompt's working voxel size {voxel_size:g} Å; "
            "make the prompt on a tomogram at this or a finer voxel size"
        )
    if abs(factor - 1.0) < 0.01:
        vol = image.data
        factor = 1.0
    else:
        vol, _ = downsample(np.asarray(image.data, dtype=np.float32), factor)
    if invert:
        vol = -np.asarray(vol, dtype=np.float32)
    work_vs = None if src is None else src * factor
    return WorkingTomogram(vol, image.name, work_vs, src, float(factor), tuple(image.data.shape))


def make_prompt(tomogram: str | os.PathLike | Image, positions: Sequence[Sequence[float]], label: str = "particle",
                binning: float = 1.0, voxel_size: float | None = None, diameter_A: float | None = None,
                diameter_px: float | None = None, invert: bool = False, model: ProPicker | None = None,
                estimate: bool = True) -> Prompt:
    """Cut 37³ prompt sub-volumes around ``positions`` (``x, y, z`` voxels of ``tomogram`` as stored).

    Parameters
    ----------
    binning, voxel_size
        Working scale: bin by ``binning`` or go to ``voxel_size`` Å/voxel.
    diameter_A, diameter_px
        Particle diameter, in Å or in voxels of ``tomogram`` as stored. When neither is given and
        ``estimate`` is true, it is estimated by :func:`estimate_diameter` with ``model`` (default:
        the shipped weights) and ``meta["diameter_estimated"]`` is set.
    """
    image = tomogram if isinstance(tomogram, Image) else read_tomogram(tomogram)
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    if len(positions) == 0:
        raise CryopickError("give at least one example position (--at x,y,z)")
    shape_xyz = np.asarray(image.data.shape[::-1])
    bad = np.any((positions < 0) | (positions > shape_xyz - 1), axis=1)
    if bad.any():
        raise CryopickError(
            f"{image.path}: position {positions[bad][0].tolist()} is outside the tomogram "
            f"(x, y, z size {shape_xyz.tolist()}); give x,y,z in voxels"
        )
    work = working_tomogram(image, binning=binning if voxel_size is None else None, voxel_size=voxel_size,
                            invert=invert)
    centres = work.to_working(positions)
    subs = np.stack([cut_prompt(work.volume, c) for c in centres])
    diameter = None
    if diameter_A is not None:
        if work.voxel_size is None:
            raise CryopickError(f"{image.path}: no voxel size in the header; give the diameter in voxels")
        diameter = diameter_A / work.voxel_size
    elif diameter_px is not None:
        diameter = diameter_px / work.binning
    prompt = Prompt(subs, positions, image.name, work.voxel_size, work.binning, diameter, label, invert)
    if diameter is None and estimate:
        prompt.diameter = estimate_diameter(model or load_propicker(), prompt, work)
        prompt.meta["diameter_estimated"] = True
    return prompt


def cut_prompt(volume, centre_xyz: Sequence[float]) -> np.ndarray:
    """The 37³ sub-volume centred on the voxel nearest ``centre_xyz`` (reflection at the borders)."""
    c = np.round(np.asarray(centre_xyz, float)[::-1]).astype(int) - PROMPT_SIZE // 2
    return read_block(volume, tuple(c), (PROMPT_SIZE,) * 3)


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
    """Diameter (working voxels) of the sphere with the volume of the segmented component under each
    example (median over examples), segmenting a ``window``³ block around each example in ``work``,
    the prompt's own tomogram at the working scale."""
    from cryopick.postprocess.cluster3d import SIX_CONNECTED
    from scipy import ndimage

    z = prompt_embedding(model, prompt)[None]
    threshold = default_threshold(model) if threshold is None else threshold
    sizes = []
    for c in work.to_working(prompt.positions):
        prob = predict_tomogram(model.segmenter, _Crop(work.volume, c, window), z, window=window, stride=window,
                                progress=False)[0]
        labels, _ = ndimage.label(prob > threshold, structure=SIX_CONNECTED)
        centre = window // 2
        lab = labels[centre, centre, centre]
        if lab == 0:  # take the nearest component within a few voxels
            near = labels[centre - 3 : centre + 4, centre - 3 : centre + 4, centre - 3 : centre + 4]
            vals = near[near > 0]
            lab = int(np.bincount(vals).argmax()) if len(vals) else 0
        if lab:
            sizes.append(float((labels == lab).sum()))
    if not sizes:
        return None
    return float((6.0 * np.median(sizes) / math.pi) ** (1.0 / 3.0))


class _Crop:
    """A ``window``³ view of ``volume`` centred on ``centre`` (x, y, z), read with reflection."""

    def __init__(self, volume, centre, window: int):
        c = np.round(np.asarray(centre, float)[::-1]).astype(int) - window // 2
        self._data = read_block(volume, tuple(c), (window,) * 3)
        self.shape = self._data.shape

    def __getitem__(self, item):
        return self._data[item]


class PromptSimilarity:
    """How much the particle at a candidate position looks like the prompt, in the model's own terms.

    For each candidate centre, the 37³ sub-volume around it (working voxels) is encoded as the
    prompt was, and its similarity is the cosine between its code and the prompt's code: the mean
    of the cosines of the prompt-encoder embeddings and, for a prototype-matching segmenter, of the
    segmenter's prototype features. Range -1..1; the segmentation map localises particles, this
    tells the prompted particle from others the map also lights up. Results are cached per voxel, so
    a threshold sweep that revisits a component pays once.

    Parameters
    ----------
    model
        The :class:`ProPicker` that made the map.
    volume
        ``(D, H, W)`` working-scale tomogram (dark particles), array or memory map.
    code
        ``(code_dim,)`` prompt code (:func:`prompt_embedding`).
    """

    def __init__(self, model: ProPicker, volume, code: torch.Tensor, batch_size: int = 64, bf16: bool = True):
        self.model, self.volume, self.batch_size, self.bf16 = model, volume, batch_size, bf16
        code = torch.as_tensor(code, dtype=torch.float32).reshape(-1)
        e = model.segmenter.embed_dim
        self._embedding = torch.nn.functional.normalize(code[:e], dim=0)
        self._prototypes = code[e:] if model.segmenter.prototype and code.numel() > e else None
        self._cache: dict[tuple[int, int, int], float] = {}

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        """``(N, 3)`` ``x, y, z`` working voxels -> ``(N,)`` similarities."""
        keys = [tuple(int(v) for v in np.round(c)) for c in np.asarray(coords, float).reshape(-1, 3)]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        for i in range(0, len(missing), self.batch_size):
            batch = missing[i : i + self.batch_size]
            subs = np.stack([cut_prompt(self.volume, k) for k in batch])
            for k, v in zip(batch, self._similarity(subs)):
                self._cache[k] = float(v)
        return np.asarray([self._cache[k] for k in keys], dtype=np.float64)

    def _similarity(self, subs: np.ndarray) -> np.ndarray:
        F = torch.nn.functional
        device = next(self.model.parameters()).device.type
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=self.bf16):
            emb = self.model.encoder.embed(subs)
            proto = self.model.prototypes(subs) if self._prototypes is not None else None
        sim = F.normalize(emb.float().cpu(), dim=1) @ self._embedding
        if proto is not None:
            sim = 0.5 * (sim + F.cosine_similarity(proto.float().cpu(), self._prototypes[None], dim=1))
        return sim.numpy()


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


# -- picking ------------------------------------------------------------------------------------------------------
def pick_tomogram(
    tomogram: str | os.PathLike | Image,
    prompts: Sequence[Prompt],
    model: ProPicker | None = None,
    settings: PickSettings | Sequence[PickSettings] | None = None,
    *,
    stride: int = 32,
    window: int = 64,
    batch_size: int = 4,
    bf16: bool = True,
    progress: bool = True,
    save_maps: str | os.PathLike | None = None,
    refine: int | None = None,
) -> Picks:
    """Pick every prompt's particle in one tomogram.

    ``refine`` (default: each prompt's ``settings.refine``) > 0 segments twice: the first pass's
    ``refine`` picks most similar to the prompt under the model's default settings
    (:func:`refined_code`) join the prompt's examples, and the second pass uses the combined code
    (self-prompting with instances from this tomogram, in their own orientations; twice the time).

    Returns
    -------
    Picks
        3D picks in voxels of the tomogram as stored (``pixel_size`` = its voxel size), ``label`` =
        the prompt's label, ``score`` = mean probability of the component (cluster mode) or NCC
        (TM mode), ``diameter`` in stored voxels when known.
    """
    model = model or load_propicker()
    prompts = list(prompts)
    if not prompts:
        raise CryopickError("give at least one prompt")
    first = prompts[0]
    for p in prompts[1:]:
        if (p.voxel_size or 0) != (first.voxel_size or 0) or p.invert != first.invert:
            raise CryopickError("all prompts of one run must share the working voxel size and contrast; run them separately")
    settings_list = (list(settings) if isinstance(settings, (list, tuple))
                     else [settings or default_settings(model)] * len(prompts))
    settings_list = [s if s.threshold is not None else replace(s, threshold=default_threshold(model))
                     for s in settings_list]
    image = tomogram if isinstance(tomogram, Image) else read_tomogram(tomogram)
    work = working_tomogram(image, binning=first.binning, voxel_size=first.voxel_size, invert=first.invert)
    n_refine = [s.refine if refine is None else refine for s in settings_list]
    prob, z = segment(model, work.volume, prompts, n_refine, window=window, stride=stride, batch_size=batch_size,
                      bf16=bf16, progress=progress)
    if save_maps:
        from cryopick.io.images import write_mrc

        for p, m in zip(prompts, prob):
            write_mrc(Path(save_maps) / f"{work.name}_{p.label}_prob.mrc", m, pixel_size=work.voxel_size)
    tables = []
    for k, (p, s) in enumerate(zip(prompts, settings_list)):
        diameter = p.diameter
        if diameter is None:
            diameter = estimate_diameter(model, p, work) if p.tomogram == work.name else None
            if diameter is not None:
                log.info("%s: estimated diameter of %s: %.1f working voxels", work.name, p.label, diameter)
        similarity = PromptSimilarity(model, work.volume, z[k], bf16=bf16) if s.min_similarity is not None else None
        coords, scores = postprocess(prob[k], work.volume, p, s, diameter, similarity)
        src = work.to_source(coords) if len(coords) else np.zeros((0, 3))
        d_src = None if diameter is None else diameter * work.binning
        tables.append(Picks.from_arrays(work.name, src, score=scores, diameter=d_src, label=p.label,
                                        pixel_size=image.pixel_size).table)
    import pandas as pd

    return Picks(pd.concat(tables, ignore_index=True), pixel_size=image.pixel_size, ndim=3)


def segment(model: ProPicker, volume, prompts: Sequence[Prompt], refine: Sequence[int], *, window: int = 64,
            stride: int = 32, batch_size: int = 4, bf16: bool = True,
            progress: bool = True) -> tuple[np.ndarray, torch.Tensor]:
    """Probability maps ``(P, D, H, W)`` of ``prompts`` in ``volume`` (working scale) and the ``(P, code_dim)``
    codes that made them.

    One pass with the prompts' codes; when any ``refine[k]`` > 0 a second pass with each prompt's
    :func:`refined_code` (first-pass candidates under the model's :func:`default_settings`, so that
    calibration and picking refine alike; prompts with 0 keep their code).
    """
    z = torch.stack([prompt_embedding(model, p) for p in prompts])
    prob = predict_tomogram(model.segmenter, volume, z, window=window, stride=stride, batch_size=batch_size,
                            bf16=bf16, progress=progress)
    if max(refine, default=0) > 0:
        first_pass = default_settings(model)
        z = torch.stack([refined_code(model, volume, prob[k], p, first_pass, n, bf16=bf16, code=z[k])
                         for k, (p, n) in enumerate(zip(prompts, refine))])
        prob = predict_tomogram(model.segmenter, volume, z, window=window, stride=stride, batch_size=batch_size,
                                bf16=bf16, progress=progress)
    return prob, z


def refined_code(model: ProPicker, volume, prob: np.ndarray, prompt: Prompt, settings: PickSettings, n: int,
                 bf16: bool = True, code: torch.Tensor | None = None) -> torch.Tensor:
    """Prompt code made from the prompt's examples plus the ``n`` first-pass picks most similar to it.

    Candidates are ProPicker-C components of ``prob`` under ``settings`` (threshold, size limits
    from the prompt's diameter, minimum similarity); they are ranked by :class:`PromptSimilarity` and
    the best ``n`` are cut from ``volume`` (working scale) and combined with the examples
    (:meth:`ProPicker.combine`, each seen in its 8 mirror views). With no candidate, or for a
    fine-tuned model with a fixed code, the prompt's own code is returned. ``code``: the prompt's
    code when already computed (:func:`prompt_embedding`).
    """
    code = prompt_embedding(model, prompt) if code is None else code
    if model.meta.get("finetuned") or n <= 0:
        return code
    similarity = PromptSimilarity(model, volume, code, bf16=bf16)
    lo, hi = settings.size_limits(prompt.diameter)
    radius = prompt.diameter / 2 if prompt.diameter else None
    coords, _ = cluster_picks(np.asarray(prob), threshold=settings.threshold, min_size=lo, max_size=hi,
                              min_distance=radius, similarity=similarity, min_similarity=settings.min_similarity)
    if len(coords) == 0:
        return code
    best = coords[np.argsort(-similarity(coords), kind="stable")[:n]]
    subs = np.concatenate([prompt.subvolumes, np.stack([cut_prompt(volume, c) for c in best])])
    return model.combine(model.embed(flipped_views(subs)))


def postprocess(prob: np.ndarray, volume, prompt: Prompt, settings: PickSettings,
                diameter: float | None, similarity: PromptSimilarity | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probability map -> ``(N, 3)`` working-voxel ``x, y, z`` picks and scores (cluster or TM mode).

    ``similarity`` is needed when ``settings.min_similarity`` is set (cluster mode)."""
    radius = diameter / 2 if diameter else None
    if settings.threshold is None:
        raise ValueError("settings.threshold must be resolved before post-processing (see default_threshold)")
    min_distance = settings.min_distance if settings.min_distance is not None else radius
    if settings.mode == "cluster":
        lo, hi = settings.size_limits(diameter)
        return cluster_picks(np.asarray(prob), threshold=settings.threshold, min_size=lo, max_size=hi,
                             min_distance=min_distance, similarity=similarity, min_similarity=settings.min_similarity)
    if settings.mode == "tm":
        from cryopick.postprocess.propicker_tm import tm_in_mask

        return tm_in_mask(volume, prob, prompt.subvolumes, threshold=settings.threshold, diameter=diameter,
                          angle_step=settings.tm_angle, min_score=settings.tm_threshold, min_distance=min_distance)
    raise CryopickError(f"unknown picking mode {settings.mode!r}; use cluster or tm")


# -- outputs -------------------------------------------------------------------------------------------------------
def write_picks3d(picks: Picks, out_dir: str | os.PathLike, formats: Iterable[str],
                  tomo_shape: Sequence[int] | None = None) -> list[Path]:
    """Write 3D picks per class: ``relion5`` (tomography STAR, centred Å; needs ``tomo_shape`` (D, H, W)),
    ``relion3`` (``_rlnCoordinateX/Y/Z`` voxels + ``_rlnMicrographName``), ``copick`` (overlay tree),
    ``imod`` (``.coords``). Files go to ``out_dir/<format>/<label>/`` (copick: its own tree)."""
    from cryopick.io.coords import write_picks

    out_dir = Path(out_dir)
    written: list[Path] = []
    labels = list(dict.fromkeys(picks.table["label"].tolist()))
    for fmt in formats:
        if fmt == "copick":
            if len(picks):
                written += write_picks(picks, out_dir / "copick", "copick")
            continue
        for label in labels:
            sub = picks._with(picks.table[picks.table["label"] == label])
            if not len(sub):
                continue
            folder = out_dir / fmt / (label or "particle")
            if fmt == "relion5":
                size = None if tomo_shape is None else tuple(int(s) for s in tomo_shape[::-1])
                written += write_picks(sub, folder, "relion", tomo_size=size)
            elif fmt == "imod":
                written += write_picks(sub, folder, "imod")
            elif fmt == "relion3":
                written += _write_relion3_tomo(sub, folder)
            else:
                raise CryopickError(f"unknown 3D output format {fmt!r}; use relion5, relion3, copick or imod")
    return written


def _write_relion3_tomo(picks: Picks, folder: Path) -> list[Path]:
    """RELION 3-style sub-tomogram picking STAR per tomogram (voxel coordinates, no centring)."""
    import starfile

    written = []
    for name, sub in picks.split():
        table = sub.table
        import pandas as pd

        df = pd.DataFrame({"rlnMicrographName": [f"{name}.mrc"] * len(table),
                           "rlnCoordinateX": table["x"].to_numpy(), "rlnCoordinateY": table["y"].to_numpy(),
                           "rlnCoordinateZ": table["z"].to_numpy(),
                           "rlnAutopickFigureOfMerit": table["score"].fillna(-999).to_numpy()})
        path = folder / f"{name}.star"
        with atomic_path(path) as tmp:
            starfile.write({"particles": df}, tmp, overwrite=True)
        written.append(path)
    return written


def read_truth(path: str | os.PathLike, image: Image, label: str | None = None) -> Picks:
    """Annotated 3D picks of ``image`` from any coordinate file, in voxels of ``image`` as stored.

    RELION 5 centred coordinates are converted with the tomogram's size and voxel size; rows of
    other tomograms are dropped (a file naming one other tomogram is taken as this one's); ``label``
    keeps only rows of that class.
    """
    from cryopick import picks as P
    from cryopick.io.coords import read_picks

    size = tuple(int(s) for s in image.shape[::-1])
    truth = read_picks(path, tomo_size=size, voxel_size=image.pixel_size)
    if truth.ndim != 3:
        raise CryopickError(f"{path}: 2D coordinates; 3D picking needs x, y, z")
    if image.name in truth.micrographs:
        truth = truth.for_micrograph(image.name)
    elif len(truth.micrographs) > 1:
        raise CryopickError(f"{path}: no rows for tomogram {image.name!r} (it names {truth.micrographs[:3]} ...)")
    if label:
        truth = truth._with(truth.table[truth.table["label"] == label])
    if truth.pixel_size and image.pixel_size and abs(truth.pixel_size - image.pixel_size) > 1e-3 * image.pixel_size:
        truth = P.to_pixel_size(truth, image.pixel_size)
    return truth
