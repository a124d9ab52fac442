"""Fine-tuning the promptable 3D picker on a few annotated tomograms, and choosing its recommended settings.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cryopick.errors import CryopickError
from cryopick.models.prompt_encoder import zscore_windows
from cryopick.models.promptable3d import ProPicker
from cryopick.picker3d.train.corpus import CorpusTomogram, load_corpus
from cryopick.picker3d.train.losses import segmentation_loss
from cryopick.picker3d.train.sampling import _augment
from cryopick.preprocess import read_block


# -- fine-tuning on annotated tomograms ----------------------------------------------------------------------
def occupancy_from_picks(shape: tuple[int, int, int], coords: np.ndarray, diameter: float,
                         fraction: float = 0.8) -> np.ndarray:
    """``(D, H, W)`` uint8 target: balls of ``fraction × diameter`` (voxels) at ``coords`` (x, y, z)."""
    target = np.zeros(shape, np.uint8)
    r = max(1.0, fraction * diameter / 2)
    ri = int(math.ceil(r))
    g = np.arange(-ri, ri + 1)
    ball = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) <= r * r
    for x, y, z in np.round(coords).astype(int):
        sl, bl = [], []
        for c, n in zip((z, y, x), shape):
            lo, hi = c - ri, c + ri + 1
            sl.append(slice(max(0, lo), min(n, hi)))
            bl.append(slice(max(0, lo) - lo, (2 * ri + 1) - (hi - min(n, hi))))
        if all(s.stop > s.start for s in sl):
            target[tuple(sl)] |= ball[tuple(bl)]
    return target


def finetune(model: ProPicker, volumes: list[np.ndarray], targets: list[np.ndarray], prompt_volumes: np.ndarray,
             out_path: str | os.PathLike, steps: int = 300, lr: float = 5e-4, window: int = 48, batch: int = 2,
             bf16: bool = True, seed: int = 0, progress: bool = True) -> ProPicker:
    """Fine-tune the segmenter (and FiLM) for one particle; prompt and encoder stay fixed.

    ``volumes``: working-scale tomograms (contrast as in training); ``targets``: matching uint8
    occupancy masks (e.g. :func:`occupancy_from_picks`); ``prompt_volumes``: ``(K, 37, 37, 37)``.
    Saves a ProPicker checkpoint to ``out_path`` whose ``meta["embedding"]`` is the fixed prompt
    embedding (mean of the ``K`` prompts, renormalised).
    """
    from cryopick.picker3d.predict import check_window

    check_window(model, window)
    if steps < 1 or not lr > 0:
        raise CryopickError(f"fine-tuning needs steps >= 1 and a learning rate > 0 (got {steps}, {lr})")
    z = model.combine(model.embed(prompt_volumes))[None]
    params = list(model.segmenter.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-5)
    model.train()
    centres = [np.argwhere(t > 0) for t in targets]
    for step in tqdm(range(steps), desc="fine-tuning", disable=not progress):
        rng = np.random.default_rng([seed, step])
        xs, ts = [], []
        for _ in range(batch):
            i = int(rng.integers(len(volumes)))
            vol, tgt = volumes[i], targets[i]
            shape = np.array(vol.shape)
            if len(centres[i]) and rng.uniform() < 0.8:
                c = centres[i][int(rng.integers(len(centres[i])))] + rng.uniform(-0.35, 0.35, 3) * window
            else:
                c = rng.uniform(0, shape)
            start = np.clip(np.round(c - window / 2).astype(int), 0, np.maximum(shape - window, 0))
            v = read_block(vol, tuple(start), (window,) * 3)
            t = read_block(tgt, tuple(start), (window,) * 3)
            v, t = _augment([v, t], rng, True)
            xs.append(v)
            ts.append(t.astype(np.float32))
        x = zscore_windows(torch.from_numpy(np.stack(xs))[:, None].float())
        tt = torch.from_numpy(np.stack(ts))[:, None]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model.segmenter(x, z.detach())
        loss = segmentation_loss(logits, tt, torch.zeros(batch, 1, dtype=torch.bool), 1.0, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    model.meta = {**model.meta, "finetuned": True, "embedding": z[0].tolist(), "finetune_steps": steps}
    try:
        model.save(out_path)
    except OSError as exc:
        raise CryopickError(f"{out_path}: cannot write the checkpoint ({exc.strerror or exc}); choose another -o") from None
    return model


def recommend_settings(model: ProPicker, val_pool_dir: str | os.PathLike, min_instances: int = 5,
                       stride: int = 32, similarity: bool = True, progress: bool = False) -> dict:
    """ProPicker-C settings to use without calibration, chosen on held-out classes.

    Every class of the validation pool is prompted from one tomogram of its set and picked on the
    sibling tomogram over the :func:`cryopick.picker3d.sweep.sweep_cluster` grid (threshold × minimum ×
    maximum size factor, × minimum prompt similarity when ``similarity``). The default is the one grid point with the best *mean* F1 over classes
    (what a user who cannot calibrate gets on average), not a per-class optimum.

    Returns
    -------
    dict
        ``default_threshold``, ``default_min_factor``, ``default_max_factor`` (``None`` = no upper
        limit), ``default_min_similarity`` (``None`` = no check), ``val_pick_default_f1_mean`` (mean F1 at those settings), ``val_pick_best_f1_mean``
        (mean best-case F1) and ``val_pick_classes``.
    """
    from cryopick.picker3d.predict import predict_tomogram
    from cryopick.picker3d.prompt import cut_prompt, flipped_views
    from cryopick.picker3d.similarity import PromptSimilarity
    from cryopick.picker3d.sweep import sweep_cluster

    pool = load_corpus(val_pool_dir)
    by_set: dict[int, list[CorpusTomogram]] = {}
    for t in pool:
        by_set.setdefault(t.set_id, []).append(t)
    tables = []
    for tomos in by_set.values():
        if len(tomos) < 2:
            continue
        src, dst = tomos[0], tomos[1]
        diam = np.load(Path(val_pool_dir) / src.name / "picks.npz")["diameters"]
        classes, codes, diameters = [], [], []
        for c in range(src.n_classes):
            idx = np.flatnonzero(src.labels == c)
            if len(idx) == 0 or (dst.labels == c).sum() < min_instances:
                continue
            sub = cut_prompt(src.volume, src.coords[idx[0]])
            codes.append(model.combine(model.embed(flipped_views(sub[None]))))
            classes.append(c)
            diameters.append(float(diam[idx[0]]))
        if not classes:
            continue
        prob = predict_tomogram(model.segmenter, dst.volume, torch.stack(codes), stride=stride, progress=progress)
        for k, (c, d) in enumerate(zip(classes, diameters)):
            sim = PromptSimilarity(model, dst.volume, codes[k]) if similarity else None
            table = sweep_cluster(prob[k], dst.coords[dst.labels == c], d, similarity=sim).table
            tables.append(table.assign(cls=len(tables)))
    if not tables:
        raise CryopickError(f"{val_pool_dir}: no class with enough instances to recommend settings")
    import pandas as pd

    grid = ["threshold", "min_factor", "max_factor", "min_similarity"]
    allrows = pd.concat(tables, ignore_index=True)
    if "min_similarity" not in allrows:
        allrows["min_similarity"] = np.nan
    mean_f1 = allrows.groupby(grid, sort=True, dropna=False)["f1"].mean()
    threshold, min_factor, max_factor, min_similarity = mean_f1.idxmax()
    best_per_class = allrows.groupby("cls")["f1"].max()
    return {"default_threshold": float(threshold), "default_min_factor": float(min_factor),
            "default_max_factor": None if not np.isfinite(max_factor) else float(max_factor),
            "default_min_similarity": None if not np.isfinite(min_similarity) else float(min_similarity),
            "val_pick_default_f1_mean": float(mean_f1.max()), "val_pick_best_f1_mean": float(best_per_class.mean()),
            "val_pick_classes": int(len(tables))}

