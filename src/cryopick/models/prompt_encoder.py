"""Prompt encoders: a 37³ sub-volume around one particle -> a 32-d L2-normalised embedding.

Two encoders share one contract (``forward(x)`` with ``x`` of shape ``(B, 1, 37, 37, 37)``, float32,
already prepared by :meth:`prepare`, returns ``(B, 32)`` unit vectors):

- ``"tomotwin"`` — :class:`TomoTwinEncoder`, the TomoTwin ``SiameseNet3D`` layout, so a TomoTwin
  checkpoint (``.pth`` with ``model_state_dict``; keys with or without a ``module.`` prefix) loads
  unchanged. TomoTwin multiplies tomograms by −1 (dark particles become bright) and z-scores each
  window; :meth:`TomoTwinEncoder.prepare` does both.
- ``"prompt-encoder-small"`` — :class:`SmallPromptEncoder`, the CPU-sized encoder trained jointly
  with the segmentation network (:mod:`cryopick.picker3d.train`). It sees the same contrast as the
  segmenter (no inversion) and z-scores each window.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cryopick.errors import CryopickError
from cryopick.models.registry import register_model

PROMPT_SIZE = 37
EMBED_DIM = 32


def zscore_windows(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Z-score every sample of a ``(B, C, ...)`` batch over all its non-batch axes."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True)
    return (x - mean) / (std + eps)


class _PromptEncoderBase(nn.Module):
    """Shared preparation: ``(B, 37, 37, 37)`` or ``(B, 1, 37, 37, 37)`` raw voxels -> network input."""

    invert_contrast: bool = False

    def prepare(self, subvolumes: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(subvolumes, dtype=np.float32) if isinstance(subvolumes, np.ndarray) else subvolumes)
        x = x.float()
        if x.ndim == 3:
            x = x[None]
        if x.ndim == 4:
            x = x[:, None]
        if tuple(x.shape[-3:]) != (PROMPT_SIZE,) * 3:
            raise CryopickError(f"prompt sub-volumes must be {PROMPT_SIZE}³ voxels, got {tuple(x.shape[-3:])}")
        if self.invert_contrast:
            x = -x
        return zscore_windows(x)

    def embed(self, subvolumes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Raw ``(B, 37, 37, 37)`` sub-volumes -> ``(B, 32)`` unit embeddings (no gradient, eval mode)."""
        param = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self(self.prepare(subvolumes).to(param.device))
        finally:
            self.train(was_training)


class TomoTwinEncoder(_PromptEncoderBase):
    """TomoTwin's 3D Siamese encoder (77.6 M parameters), key-for-key compatible with its checkpoints.

    Input ``(B, 1, 37, 37, 37)`` is zero-padded to 40³ (1 before, 2 after on each axis); five blocks of
    two unpadded 3³ convolutions with 64, 128, 256, 512, 1024 channels, each conv followed by the
    block's single GroupNorm module (applied twice) and LeakyReLU; MaxPool(2) after block 0;
    AdaptiveAvgPool3d(2) -> 8192 -> Dropout -> Linear 2048 -> LeakyReLU -> Linear 2048 -> LeakyReLU
    -> Linear 32 -> L2 normalisation.
    """

    invert_contrast = True

    def __init__(self, output_channels: int = EMBED_DIM, num_groups: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        widths = [1, 64, 128, 256, 512, 1024]
        for i in range(5):
            norm = nn.GroupNorm(num_groups, widths[i + 1])
            block = nn.Sequential(
                nn.Conv3d(widths[i], widths[i + 1], kernel_size=3),
                norm,
                nn.LeakyReLU(),
                nn.Conv3d(widths[i + 1], widths[i + 1], kernel_size=3),
                norm,  # the same module twice: TomoTwin's layout (keys .1 and .4 share tensors)
                nn.LeakyReLU(),
            )
            setattr(self, f"conv_layer{i}", block)
        self.max_pooling = nn.MaxPool3d(2)
        self.adap_max_pool = nn.AdaptiveAvgPool3d(2)
        self.headnet = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(8 * 1024, 2048),
            nn.LeakyReLU(),
            nn.Linear(2048, 2048),
            nn.LeakyReLU(),
            nn.Linear(2048, output_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 2, 1, 2, 1, 2))
        x = self.max_pooling(self.conv_layer0(x))
        for i in range(1, 5):
            x = getattr(self, f"conv_layer{i}")(x)
        x = self.adap_max_pool(x).flatten(1)
        return F.normalize(self.headnet(x), p=2, dim=1)


class SmallPromptEncoder(_PromptEncoderBase):
    """A small 3D CNN (about 0.2 M parameters at the defaults) for CPU training and inference.

    37³ input, zero-padded to 40³; stages of two padded 3³ convs (GroupNorm, LeakyReLU) with widths
    ``widths``, MaxPool(2) between stages (40 -> 20 -> 10 -> 5); adaptive average pooling to 2³ (as
    TomoTwin; a *global* pool after GroupNorm would average every channel to nearly the same value
    for any input, and the embedding would collapse); a two-layer head to ``output_channels``; L2
    normalisation. Use it in ``eval()`` mode for inference (BatchNorm running statistics).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 64), output_channels: int = EMBED_DIM) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool3d(2))
            layers += [
                nn.Conv3d(cin, w, 3, padding=1), nn.GroupNorm(max(1, w // 8), w), nn.LeakyReLU(0.1),
                nn.Conv3d(w, w, 3, padding=1), nn.GroupNorm(max(1, w // 8), w), nn.LeakyReLU(0.1),
            ]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(2)
        # BatchNorm centres the features over the batch of prompts. Without it the features of all
        # prompts share a large common component, the embeddings start almost identical (cosine
        # ~0.99) and metric-learning training collapses them to one point within a few steps.
        self.head = nn.Sequential(nn.Linear(8 * cin, 128), nn.BatchNorm1d(128), nn.LeakyReLU(0.1),
                                  nn.Linear(128, output_channels, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(F.pad(x, (1, 2, 1, 2, 1, 2))))
        return F.normalize(self.head(x.flatten(1)), p=2, dim=1)


# -- TomoTwin checkpoints ----------------------------------------------------------------------
def tomotwin_state_dict(checkpoint: dict | str | os.PathLike) -> dict[str, torch.Tensor]:
    """Extract the encoder state dict from a TomoTwin checkpoint (path or loaded dict).

    Accepts ``{"model_state_dict": ...}`` (TomoTwin's format) or a bare state dict, with keys with or
    without a leading ``module.`` (multi-GPU) or ``model.`` prefix.
    """
    if not isinstance(checkpoint, dict):
        path = str(checkpoint)
        if not os.path.exists(path):
            raise CryopickError(f"{path}: no such TomoTwin checkpoint")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CryopickError(f"{path}: cannot load as a torch checkpoint ({exc})") from exc
    state = checkpoint.get("model_state_dict", checkpoint)
    config = checkpoint.get("tomotwin_config", {})
    out_ch = config.get("network_config", {}).get("output_channels", EMBED_DIM) if isinstance(config, dict) else EMBED_DIM
    if out_ch != EMBED_DIM:
        raise CryopickError(f"TomoTwin checkpoint has {out_ch}-d embeddings; cryopick expects {EMBED_DIM}")
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def load_tomotwin(checkpoint: dict | str | os.PathLike, model: TomoTwinEncoder | None = None) -> TomoTwinEncoder:
    """Load TomoTwin weights into ``model`` (a new :class:`TomoTwinEncoder` when ``None``), strictly."""
    state = tomotwin_state_dict(checkpoint)
    if model is None:  # allocate without the (slow, 78 M parameter) random initialisation
        with torch.device("meta"):
            model = TomoTwinEncoder()
        model = model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CryopickError(
            f"not a TomoTwin SiameseNet3D checkpoint: missing keys {sorted(missing)[:3]}, "
            f"unexpected keys {sorted(unexpected)[:3]}"
        )
    return model.eval()


@register_model("tomotwin", task="prompt-encoder3d", description="TomoTwin SiameseNet3D encoder (loads TomoTwin .pth checkpoints)")
def build_tomotwin(checkpoint: str | None = None, **kwargs) -> TomoTwinEncoder:
    return load_tomotwin(checkpoint) if checkpoint else TomoTwinEncoder(**kwargs)


@register_model("prompt-encoder-small", task="prompt-encoder3d", description="small CPU prompt encoder (trained with propicker-small)")
def build_small_encoder(checkpoint: str | None = None, **kwargs) -> SmallPromptEncoder:
    model = SmallPromptEncoder(**kwargs)
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state))
    return model
