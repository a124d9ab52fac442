"""Sampling one training batch of windows, prompts and targets from the pool.

One step (:func:`sample_batch`):

1. pick ``batch`` windows (``window``³ voxels, centred near a random particle, random flips and
   90° turns about z);
2. for each window draw up to ``prompts`` classes present in it and, with probability
   ``negative_prompt_prob`` per slot, classes of the tomogram absent from it;
3. the prompt of a class is the 37³ sub-volume around a **different instance** of the class (not one
   whose centre lies in the window), from this tomogram or its sibling, randomly flipped;
4. the target of a prompt is that class's occupancy mask in the window. Channels whose target is
   empty are weighted by ``empty_weight``: 0 masks them out of the loss, as ProPicker does. The
   default 0.5 keeps half of their signal: with fully masked empty channels every window the
   network is trained on contains the prompted class, which rewards "mark whatever looks most like
   the prompt" — false positives in the many windows of a tomogram without that class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from cryopick.models.prompt_encoder import PROMPT_SIZE, zscore_windows
from cryopick.picker3d.train.corpus import CorpusTomogram
from cryopick.preprocess import cut_cube, read_block


# -- sampling -----------------------------------------------------------------------------------------
@dataclass
class SampleConfig:
    window: int = 48
    batch: int = 2
    prompts: int = 3
    negative_prompt_prob: float = 0.25
    jitter: float = 0.35          # window centre offset from the chosen particle, fraction of the window
    rot90: bool = True            # random 90° turns about z (moves the tilt axis from y to x)


@dataclass
class Batch:
    """One training batch (shapes: B windows, P prompts per window, w = window edge).

    ``windows`` ``(B, 1, w, w, w)`` z-scored; ``prompts`` and ``positives`` ``(B, P, 37, 37, 37)`` raw
    (``positives``: another instance of the same class); ``targets`` ``(B, P, w, w, w)`` in {0, 1};
    ``empty`` ``(B, P)`` bool; ``class_ids`` ``(B, P)`` int64, unique per class across the pool (-1:
    the class had no instance to cut a prompt from).
    """

    windows: torch.Tensor
    prompts: torch.Tensor
    targets: torch.Tensor
    empty: torch.Tensor
    positives: torch.Tensor
    class_ids: torch.Tensor

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in
                       ("windows", "prompts", "targets", "empty", "positives", "class_ids")))


def _augment(arrays: Sequence[np.ndarray], rng: np.random.Generator, rot90: bool) -> list[np.ndarray]:
    """The same random flips (all axes) and 90° turn about z applied to every ``(D, H, W)`` array."""
    flips = [ax for ax in range(3) if rng.uniform() < 0.5]
    k = int(rng.integers(4)) if rot90 else 0
    out = []
    for a in arrays:
        if flips:
            a = np.flip(a, axis=flips)
        if k:
            a = np.rot90(a, k, axes=(1, 2))
        out.append(np.ascontiguousarray(a))
    return out


def _prompt_volume(tomo: CorpusTomogram, centre: np.ndarray) -> np.ndarray:
    return cut_cube(tomo.volume, centre, PROMPT_SIZE)


def sample_batch(pool: list[CorpusTomogram], rng: np.random.Generator, cfg: SampleConfig) -> Batch:
    """One training batch (see :class:`Batch`); deterministic for a given ``rng`` state."""
    w = cfg.window
    by_set: dict[int, list[CorpusTomogram]] = {}
    for t in pool:
        by_set.setdefault(t.set_id, []).append(t)
    windows, prompts, targets, empty, positives, ids = [], [], [], [], [], []
    for _ in range(cfg.batch):
        tomo = pool[int(rng.integers(len(pool)))]
        shape = np.array(tomo.volume.shape)
        if len(tomo.coords) and rng.uniform() < 0.9:
            centre = tomo.coords[int(rng.integers(len(tomo.coords)))][::-1]  # z, y, x
            centre = centre + rng.uniform(-cfg.jitter, cfg.jitter, 3) * w
        else:
            centre = rng.uniform(0, shape)
        start = np.clip(np.round(centre - w / 2).astype(int), 0, np.maximum(shape - w, 0))
        vol = read_block(tomo.volume, tuple(start), (w, w, w))
        cmask = read_block(tomo.class_mask, tuple(start), (w, w, w)).astype(np.int16)
        counts = np.bincount(cmask.ravel().astype(np.int64), minlength=tomo.n_classes + 1)[1:]
        present = np.flatnonzero(counts > 0)
        absent = np.setdiff1d(np.arange(tomo.n_classes), present)
        chosen: list[int] = []
        order = rng.permutation(present)
        for slot in range(cfg.prompts):
            if len(absent) and (rng.uniform() < cfg.negative_prompt_prob or slot >= len(order)):
                chosen.append(int(absent[int(rng.integers(len(absent)))]))
            elif slot < len(order):
                chosen.append(int(order[slot]))
            else:
                chosen.append(int(rng.integers(tomo.n_classes)))
        vol, cmask = _augment([vol, cmask], rng, cfg.rot90)
        siblings = by_set[tomo.set_id]
        p_list, t_list, e_list, q_list, i_list = [], [], [], [], []
        for c in chosen:
            sources = []
            for sib in siblings:
                idx = np.flatnonzero(sib.labels == c)
                if sib is tomo:  # an instance whose centre is outside this window
                    inside = np.all((sib.coords[idx][:, ::-1] >= start) & (sib.coords[idx][:, ::-1] < start + w), axis=1)
                    idx = idx[~inside]
                sources += [(sib, i) for i in idx]
            if sources:
                pick = rng.permutation(len(sources))[:2]
                sib, i = sources[int(pick[0])]
                pv = _prompt_volume(sib, sib.coords[i])
                sib2, i2 = sources[int(pick[-1])]  # the same instance when it is the only one
                qv = _prompt_volume(sib2, sib2.coords[i2])
                i_list.append(tomo.set_id * 1000 + c)
            else:  # the class has no other instance: the prompt is noise, the channel is masked
                pv = qv = rng.standard_normal((PROMPT_SIZE,) * 3).astype(np.float32)
                i_list.append(-1)
            p_list.append(_augment([pv], rng, True)[0])
            q_list.append(_augment([qv], rng, True)[0])
            tgt = (cmask == c + 1).astype(np.float32)
            t_list.append(tgt)
            e_list.append(not tgt.any() or not sources)
        windows.append(vol)
        prompts.append(np.stack(p_list))
        targets.append(np.stack(t_list))
        empty.append(e_list)
        positives.append(np.stack(q_list))
        ids.append(i_list)
    x = zscore_windows(torch.from_numpy(np.stack(windows))[:, None].float())
    return Batch(x, torch.from_numpy(np.stack(prompts)), torch.from_numpy(np.stack(targets)), torch.tensor(empty),
                 torch.from_numpy(np.stack(positives)), torch.tensor(ids, dtype=torch.int64))

