"""FPN neck and image encoder (trunk + neck + scalp), matching SAM2's ``ImageEncoder``.

The neck projects each trunk stage to ``d_model`` channels with a 1×1 convolution, adds a 2×
upsampled copy of the next-coarser level at the ``fpn_top_down_levels``, and attaches a sine
positional encoding to every level. ``scalp`` drops that many of the coarsest levels, so with the
official settings (scalp 1) the encoder returns three levels at strides 4, 8 and 16 and the image
embedding (``vision_features``) is the stride-16 level (64×64 at 1024² input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cryopick.models.sam2.configs import NeckConfig, SAM2Config
from cryopick.models.sam2.hiera import BlockHook, Hiera
from cryopick.models.sam2.position_encoding import PositionEmbeddingSine


class FpnNeck(nn.Module):
    """``forward(stage_maps)`` -> ``(features, positions)``, both lists finest level first."""

    def __init__(self, cfg: NeckConfig):
        super().__init__()
        if cfg.fuse_type not in ("sum", "avg"):
            raise ValueError("fuse_type must be 'sum' or 'avg'")
        self.cfg = cfg
        self.position_encoding = PositionEmbeddingSine(cfg.d_model)
        self.convs = nn.ModuleList()
        for dim in cfg.backbone_channel_list:
            level = nn.Sequential()
            level.add_module("conv", nn.Conv2d(dim, cfg.d_model, kernel_size=1))
            self.convs.append(level)
        self.backbone_channel_list = list(cfg.backbone_channel_list)

    def forward(self, xs: list[torch.Tensor], with_pos: bool = True):
        n = len(self.convs) - 1
        if len(xs) != n + 1:
            raise ValueError(f"expected {n + 1} trunk levels, got {len(xs)}")
        out: list[torch.Tensor] = [None] * (n + 1)  # type: ignore[list-item]
        pos: list[torch.Tensor | None] = [None] * (n + 1)
        prev = None
        for i in range(n, -1, -1):  # coarsest level first
            lateral = self.convs[n - i](xs[i])
            if i in self.cfg.fpn_top_down_levels and prev is not None:
                mode = self.cfg.fpn_interp_model
                top_down = F.interpolate(prev.to(torch.float32), scale_factor=2.0, mode=mode,
                                         align_corners=None if mode == "nearest" else False, antialias=False)
                prev = lateral + top_down
                if self.cfg.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            if with_pos:
                pos[i] = self.position_encoding(prev).to(prev.dtype)
        return out, pos


class ImageEncoder(nn.Module):
    """SAM2 image encoder: Hiera trunk + FPN neck; parameter names ``trunk.*`` / ``neck.*``."""

    def __init__(self, cfg: SAM2Config):
        super().__init__()
        self.trunk = Hiera(cfg.trunk)
        self.neck = FpnNeck(cfg.neck)
        self.scalp = cfg.scalp
        if list(self.trunk.channel_list) != list(cfg.neck.backbone_channel_list):
            raise ValueError(f"neck channels {cfg.neck.backbone_channel_list} do not match trunk "
                             f"{self.trunk.channel_list}")

    def forward(self, image: torch.Tensor, hook: BlockHook | None = None, checkpoint_blocks: bool = False,
                with_pos: bool = True) -> dict[str, object]:
        """``image (B, 3, S, S)`` -> dict with ``vision_features`` ``(B, d, S/16, S/16)``,
        ``backbone_fpn`` (list, strides 4/8/16) and ``vision_pos_enc`` (same shapes; ``None``
        entries when ``with_pos`` is False)."""
        features, pos = self.neck(self.trunk(image, hook=hook, checkpoint_blocks=checkpoint_blocks),
                                  with_pos=with_pos)
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
