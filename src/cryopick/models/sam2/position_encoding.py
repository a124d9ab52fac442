"""Positional encodings used by SAM2's image path.

- :class:`PositionEmbeddingSine` — fixed 2D sine/cosine encoding of the FPN levels (DETR style,
  normalised coordinates), the ``vision_pos_enc`` of SAM2's image encoder.
- :class:`PositionEmbeddingRandom` — the prompt encoder's random Fourier-feature encoding; its
  ``(2, C/2)`` Gaussian matrix is a checkpoint buffer and gives the decoder's ``image_pe``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine position encoding of a ``(B, C, H, W)`` feature map; returns ``(B, num_pos_feats, H, W)``.

    Channels are ``[y-encoding (num_pos_feats/2), x-encoding (num_pos_feats/2)]``; within each half,
    even channels are sines and odd channels cosines of ``coord / temperature^(2⌊i/2⌋/n)`` with the
    1-based pixel coordinate normalised to ``(0, 2π]``.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError("num_pos_feats must be even")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.scale = scale

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        eps = 1e-6
        y = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
        y = y / (y[-1] + eps) * self.scale
        xs = xs / (xs[-1] + eps) * self.scale
        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = xs[:, None] / dim_t  # (W, n)
        pos_y = y[:, None] / dim_t  # (H, n)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            (pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)), dim=2
        ).permute(2, 0, 1)
        return pos.unsqueeze(0).expand(b, -1, -1, -1)


class PositionEmbeddingRandom(nn.Module):
    """Random spatial-frequency encoding; ``forward((h, w))`` returns ``(C, h, w)`` with ``C = 2·num_pos_feats``.

    Pixel centres ``((j + 0.5)/w, (i + 0.5)/h)`` are mapped to ``[-1, 1]``, projected by the Gaussian
    matrix, multiplied by 2π and encoded as ``[sin, cos]``.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None):
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        dev = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, dtype=torch.float32, device=dev) + 0.5) / h
        x = (torch.arange(w, dtype=torch.float32, device=dev) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)
