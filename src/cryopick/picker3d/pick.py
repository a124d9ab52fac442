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

Settings (thresholds and size limits) come from :mod:`cryopick.picker3d.calibrate` JSON files, from
arguments, or default to the model's recommended settings (:func:`default_settings`: threshold and
size limits as multiples of the sphere volume of the prompt's diameter, chosen on held-out classes when
the weights were made; 0.5, 0.1× and 1.2× when the weights carry none).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path
from cryopick.io.images import Image, read_tomogram
from cryopick.models.promptable3d import ProPicker, load_propicker
from cryopick.picker3d.card import PickSettings, default_settings, default_threshold
from cryopick.picker3d.predict import predict_tomogram
from cryopick.picker3d.prompt import Prompt, cut_prompt, estimate_diameter, flipped_views, prompt_embedding
from cryopick.picker3d.scale import working_tomogram
from cryopick.picker3d.similarity import PromptSimilarity
from cryopick.picks import Picks
from cryopick.postprocess.cluster3d import cluster_picks

log = logging.getLogger(__name__)


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

