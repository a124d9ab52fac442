"""Promptable 3D picking: one clicked example -> every instance of that particle in the tomograms.

>>> prompt = make_prompt("TS_01.mrc", [(412, 388, 96)], label="ribosome")     # x, y, z voxels
>>> picker = TomogramPicker()                       # the shipped weights (or a checkpoint path)
>>> picker.set_tomogram("TS_02.mrc")                # read and check once
>>> picks = picker.predict([prompt])                # segment, then ProPicker-C with the model's settings
>>> picks = picker.predict([prompt], PickSettings(threshold=0.7))   # re-uses the probability map

Many tomograms (resumable, every format, locally or on Dask): :func:`cryopick.picker3d.batch.pick_tomograms`.

Frames and units
----------------
- Positions given by the user (``--at``, coordinate files) and the picks returned are voxels of the
  tomogram as stored (0-based ``x, y, z`` of the voxel centre, ``x`` = column), with
  ``Picks.pixel_size`` = its voxel size. Output files convert them (RELION 5: Å from the centre).
- The network works at the *working voxel size* of the prompt (``binning`` × the voxel size of the
  prompt's tomogram; :func:`make_prompt` chooses it for the scale the weights were trained at, see
  :func:`cryopick.picker3d.scale.choose_voxel_size`). Other tomograms are Fourier-cropped to that voxel size when their header
  states a voxel size, else binned by the prompt's ``binning``. Particle diameters and size limits
  (``diameter``, ``min_size``, ``max_size``) are in **working** voxels, stated as such.
- Contrast: the network and the prompt see the tomogram with dark particles (the usual
  reconstruction). For tomograms with bright particles give ``invert=True`` when making the prompt.

Settings (thresholds and size limits) come from :mod:`cryopick.picker3d.sweep` JSON files, from
arguments, or default to the model's recommended settings (:func:`default_settings`: threshold and
size limits as multiples of the sphere volume of the prompt's diameter, chosen on held-out classes when
the weights were made; 0.5, 0.1× and 1.2× when the weights carry none).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cryopick.errors import CryopickError
from cryopick.io.images import Image, read_tomogram
from cryopick.models.promptable3d import ProPicker
from cryopick.picker3d.card import load_model
from cryopick.picker3d.predict import check_window, predict_tomogram, resolve_bf16
from cryopick.picker3d.prompt import (
    Prompt,
    check_label,
    cut_prompt,
    estimate_diameter,
    flipped_views,
    prompt_embedding,
    prompt_fingerprint,
)
from cryopick.picker3d.scale import WorkingTomogram, check_tomogram, working_tomogram
from cryopick.picker3d.settings import PickSettings, default_settings, resolve_settings
from cryopick.picker3d.similarity import PromptSimilarity
from cryopick.picks import Picks
from cryopick.postprocess.cluster3d import cluster_picks

log = logging.getLogger(__name__)


# -- one tomogram -------------------------------------------------------------------------------------------------
class TomogramPicker:
    """Stateful 3D picker: load a model once, pick many tomograms, re-threshold without re-segmenting.

    Parameters
    ----------
    model
        A :class:`ProPicker`, a checkpoint path, or ``None`` for the shipped weights.
    stride, window
        Sliding-window spacing and edge in working voxels (``window`` a multiple of the network's
        input multiple, 16 for the shipped weights; ``stride <= window``).
    batch_size
        Windows per forward pass.
    bf16
        bfloat16 autocast; ``None`` = where this device runs it natively (see :func:`resolve_bf16`).
    device
        torch device for the model (``None``: leave it where it is).
    """

    def __init__(self, model: ProPicker | str | os.PathLike | None = None, *, stride: int = 32, window: int = 64,
                 batch_size: int = 4, bf16: bool | None = None, device: str | None = None,
                 progress: bool = True) -> None:
        self.model = load_model(model, device)
        check_window(self.model, window, stride)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise CryopickError(f"batch size must be a whole number >= 1, got {batch_size!r}")
        self.stride, self.window, self.batch_size, self.progress = stride, window, batch_size, progress
        self.bf16 = resolve_bf16(bf16, next(self.model.parameters()).device)
        self.image: Image | None = None
        self.probability: np.ndarray | None = None
        self._work: dict[tuple, WorkingTomogram] = {}
        self._maps: dict[tuple, tuple[np.ndarray, torch.Tensor]] = {}

    def set_tomogram(self, tomogram: str | os.PathLike | Image, check: bool = True) -> None:
        """Use ``tomogram`` (path or :class:`Image`) for the next :meth:`predict` calls.

        ``check``: refuse a tomogram holding NaN/infinite voxels or one constant value
        (:func:`check_tomogram`), which would give no picks without saying why."""
        self.image, self.probability = None, None
        self._work.clear()
        self._maps.clear()
        image = tomogram if isinstance(tomogram, Image) else read_tomogram(tomogram)
        if check:
            check_tomogram(image)
        self.image = image

    def set_working(self, image: Image, work: WorkingTomogram, prompt: Prompt) -> None:
        """Use ``image``, already checked and brought to ``prompt``'s working scale as ``work``
        (:func:`~cryopick.picker3d.prefetch.prepare_tomogram`, e.g. in a prefetch thread)."""
        self.set_tomogram(image, check=False)
        self._work[(prompt.binning, prompt.voxel_size, prompt.invert)] = work

    def working(self, prompt: Prompt) -> WorkingTomogram:
        """The current tomogram at ``prompt``'s working scale and contrast (cached)."""
        if self.image is None:
            raise RuntimeError("call set_tomogram() before predict()")
        key = (prompt.binning, prompt.voxel_size, prompt.invert)
        if key not in self._work:
            self._work[key] = working_tomogram(self.image, binning=prompt.binning, voxel_size=prompt.voxel_size,
                                               invert=prompt.invert)
        return self._work[key]

    def segment(self, prompts: Sequence[Prompt], refine: Sequence[int]) -> tuple[np.ndarray, torch.Tensor]:
        """``(P, D, H, W)`` probability maps and prompt codes for ``prompts`` (cached per prompt set)."""
        work = self.working(prompts[0])
        key = tuple((str(sorted(prompt_fingerprint(p).items())), int(n)) for p, n in zip(prompts, refine))
        if key not in self._maps:
            self._maps[key] = segment(self.model, work.volume, prompts, list(refine), window=self.window,
                                      stride=self.stride, batch_size=self.batch_size, bf16=self.bf16,
                                      progress=self.progress)
        return self._maps[key]

    def predict(self, prompts: Prompt | Sequence[Prompt], settings: PickSettings | Sequence[PickSettings] | None = None,
                *, refine: int | None = None, save_maps: str | os.PathLike | None = None,
                adapted: dict | None = None) -> Picks:
        """Pick every prompt's particle in the current tomogram.

        ``settings``: one for all prompts or one per prompt (default: the model's recommended
        settings); ``refine`` (default: each settings' ``refine``) > 0 segments twice, the second time
        prompted with the prompt plus the ``refine`` first-pass picks most similar to it
        (:func:`refined_code`). ``adapted``: ``{label: AdaptedModel}`` learned from answers
        (:mod:`cryopick.picker3d.answers`); those prompts keep the candidates its classifier accepts.

        Returns
        -------
        Picks
            3D picks in voxels of the tomogram as stored (``pixel_size`` = its voxel size), ``label`` =
            the prompt's label, ``score`` = mean probability of the component (cluster mode) or NCC
            (TM mode), ``diameter`` in stored voxels when known.
        """
        import pandas as pd

        prompts = [prompts] if isinstance(prompts, Prompt) else list(prompts)
        check_prompts(prompts)
        settings_list = resolve_settings(self.model, settings, len(prompts))
        n_refine = [s.refine if refine is None else int(refine) for s in settings_list]
        work = self.working(prompts[0])
        prob, z = self.segment(prompts, n_refine)
        self.probability = prob
        if save_maps:
            from cryopick.io.images import write_mrc

            for p, m in zip(prompts, prob):
                write_mrc(Path(save_maps) / f"{work.name}_{p.label}_prob.mrc", m, pixel_size=work.voxel_size)
        tables = []
        for k, (p, s) in enumerate(zip(prompts, settings_list)):
            diameter = p.diameter
            if diameter is None:
                diameter = estimate_diameter(self.model, p, work) if p.tomogram == work.name else None
                if diameter is not None:
                    log.info("%s: estimated diameter of %s: %.1f working voxels", work.name, p.label, diameter)
            similarity = (PromptSimilarity(self.model, work.volume, z[k], bf16=self.bf16)
                          if s.min_similarity is not None else None)
            if (adapted or {}).get(p.label) is not None:  # score = the classifier's probability
                coords, scores = adapted[p.label].pick(self.model, prob[k], work.volume, bf16=self.bf16)
            else:
                coords, scores = postprocess(prob[k], work.volume, p, s, diameter, similarity)
            src = work.to_original(coords) if len(coords) else np.zeros((0, 3))
            d_src = None if diameter is None else diameter * work.binning
            tables.append(Picks.from_arrays(work.name, src, score=scores, diameter=d_src, label=p.label,
                                            pixel_size=self.image.pixel_size).table)
        return Picks(pd.concat(tables, ignore_index=True), pixel_size=self.image.pixel_size, ndim=3)


def check_prompts(prompts: Sequence[Prompt]) -> None:
    """Prompts of one run: at least one, distinct labels usable as folder names, one working scale."""
    if not prompts:
        raise CryopickError("give at least one prompt")
    labels = [p.label for p in prompts]
    if len(set(labels)) != len(labels):
        raise CryopickError(f"prompts share a label ({labels}); give distinct --label values when making them")
    for label in labels:
        if label:
            check_label(label)
    first = prompts[0]
    for p in prompts[1:]:
        if (p.voxel_size or 0) != (first.voxel_size or 0) or p.invert != first.invert or p.binning != first.binning:
            raise CryopickError("all prompts of one run must share the working voxel size and contrast; run them separately")


def pick_tomogram(
    tomogram: str | os.PathLike | Image,
    prompts: Sequence[Prompt],
    model: ProPicker | None = None,
    settings: PickSettings | Sequence[PickSettings] | None = None,
    *,
    stride: int = 32,
    window: int = 64,
    batch_size: int = 4,
    bf16: bool | None = None,
    progress: bool = True,
    save_maps: str | os.PathLike | None = None,
    refine: int | None = None,
) -> Picks:
    """Pick every prompt's particle in one tomogram (:class:`TomogramPicker` for one call; see its
    :meth:`~TomogramPicker.predict`)."""
    picker = TomogramPicker(model, stride=stride, window=window, batch_size=batch_size, bf16=bf16,
                            progress=progress)
    picker.set_tomogram(tomogram)
    return picker.predict(prompts, settings, refine=refine, save_maps=save_maps)


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

