"""Prompt similarity of a candidate: the sub-volume at a component's centre, encoded like the prompt.

The score is the mean of two cosines to the prompt (prompt-encoder embedding and the segmenter's prototype
features), in [-1, 1]; ProPicker-C keeps components above ``PickSettings.min_similarity``.
"""

from __future__ import annotations

import numpy as np
import torch

from cryopick.models.prompt_encoder import PROMPT_SIZE
from cryopick.models.promptable3d import ProPicker
from cryopick.preprocess import cut_cube


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
            subs = np.stack([cut_cube(self.volume, k, PROMPT_SIZE) for k in batch])
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



def encode_positions(model: ProPicker, volume, coords: np.ndarray, batch_size: int = 64,
                     bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Encoder embeddings (unit, ``(N, 32)``) and segmenter prototype features (``(N, P)``; ``(N, 0)``
    without prototypes) of the 37³ sub-volumes of ``volume`` (working scale) at ``coords`` (``x, y, z``)."""
    coords = np.asarray(coords, float).reshape(-1, 3)
    emb, proto = [], []
    device = next(model.parameters()).device.type
    for i in range(0, len(coords), batch_size):
        subs = np.stack([cut_cube(volume, c, PROMPT_SIZE) for c in coords[i : i + batch_size]])
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            emb.append(torch.nn.functional.normalize(model.encoder.embed(subs).float(), dim=1).cpu().numpy())
            if model.segmenter.prototype:
                proto.append(model.prototypes(subs).float().cpu().numpy())
    n_proto = sum(model.segmenter.widths[:-1]) if model.segmenter.prototype else 0
    return (np.concatenate(emb) if emb else np.zeros((0, model.segmenter.embed_dim)),
            np.concatenate(proto) if proto else np.zeros((len(coords), n_proto)))
