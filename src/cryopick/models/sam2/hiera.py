"""Hiera trunk of SAM2's image encoder (hierarchical ViT with windowed attention and query pooling).

Layout: a 7×7 stride-4 patch embedding, a windowed absolute position embedding (a bicubically
resized background embedding plus a tiled per-window embedding), then ``sum(stages)`` blocks.
The first block of every stage after the first pools queries 2×2 (halving H and W) and widens the
channels by ``dim_mul``. Blocks use window attention except those listed in ``global_att_blocks``.
Features are channels-last ``(B, H, W, C)`` inside the trunk; the trunk returns one
``(B, C, H, W)`` map per stage, highest resolution first (strides 4, 8, 16, 32).

Parameter names match Meta's checkpoints (``patch_embed.proj``, ``blocks.N.attn.qkv`` ...).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from cryopick.models.sam2.configs import HieraConfig


class MLP(nn.Module):
    """``num_layers`` linear layers with ``activation`` between them (not after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 activation: type[nn.Module] = nn.ReLU, sigmoid_output: bool = False):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> ``(B·nWin, window, window, C)``, zero-padding H and W up to a multiple."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded_hw: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x


def _pool(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Apply a 2D pooling module to a channels-last ``(B, H, W, C)`` tensor."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be max-pooled (at stage transitions)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = torch.unbind(self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1), 2)
        if self.q_pool is not None:
            q = _pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block: (windowed, optionally q-pooled) attention + GELU MLP."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float = 4.0,
                 q_stride: tuple[int, int] | None = None, window_size: int = 0):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool(self.proj(x), self.pool)
        window = self.window_size
        if window > 0:
            h, w = x.shape[1:3]
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if self.q_stride:
            # queries were pooled: windows shrank and the output grid is the shortcut's grid
            window = self.window_size // self.q_stride[0]
            h, w = shortcut.shape[1:3]
            padded = (h + (-h) % window, w + (-w) % window) if window > 0 else (h, w)
        if self.window_size > 0:
            x = window_unpartition(x, window, padded, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """7×7 convolution, stride 4, padding 3; returns channels-last ``(B, H/4, W/4, C)``."""

    def __init__(self, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


# An adapter hook: ``hook(block_index, x) -> x`` applied to each block's input.
BlockHook = Callable[[int, torch.Tensor], torch.Tensor]


class Hiera(nn.Module):
    """Hiera trunk; ``forward(x)`` with ``x (B, 3, H, W)`` returns per-stage maps, finest first.

    Parameters
    ----------
    cfg
        Trunk settings (see :class:`~cryopick.models.sam2.configs.HieraConfig`).
    """

    def __init__(self, cfg: HieraConfig):
        super().__init__()
        if len(cfg.stages) != len(cfg.window_spec):
            raise ValueError("stages and window_spec must have the same length")
        self.cfg = cfg
        depth = sum(cfg.stages)
        self.stage_ends = [sum(cfg.stages[: i + 1]) - 1 for i in range(len(cfg.stages))]
        self.q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]][: cfg.q_pool]
        self.patch_embed = PatchEmbed(cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, cfg.window_spec[0], cfg.window_spec[0]))

        self.blocks = nn.ModuleList()
        embed_dim, num_heads, stage = cfg.embed_dim, cfg.num_heads, 0
        self.block_stage: list[int] = []  # Hiera stage (0-based) each block belongs to
        for i in range(depth):
            dim_out = embed_dim
            # The window size lags one block: a stage's first block still uses the previous
            # stage's window (on its input grid) before its queries are pooled.
            window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * cfg.dim_mul)
                num_heads = int(num_heads * cfg.head_mul)
                stage += 1
            self.blocks.append(MultiScaleBlock(
                embed_dim, dim_out, num_heads, mlp_ratio=cfg.mlp_ratio,
                q_stride=cfg.q_stride if i in self.q_pool_blocks else None, window_size=window,
            ))
            self.block_stage.append(stage)
            embed_dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        win = self.pos_embed_window.shape[-1]
        if h % win or w % win:
            raise ValueError(f"Hiera grid {h}x{w} must be a multiple of the {win}-pixel window embedding")
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos = pos + self.pos_embed_window.tile(1, 1, h // win, w // win)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor, hook: BlockHook | None = None,
                checkpoint_blocks: bool = False) -> list[torch.Tensor]:
        """Run the trunk.

        Parameters
        ----------
        x
            ``(B, 3, H, W)`` normalised image; H and W multiples of 32.
        hook
            Optional ``hook(i, x)`` applied to the input of block ``i`` (the adapters).
        checkpoint_blocks
            Recompute each (hook + block) in the backward pass instead of storing its activations.
        """
        x = self.patch_embed(x)
        x = x + self._pos_embed(x.shape[1:3])
        outputs = []
        for i, blk in enumerate(self.blocks):
            fn = _HookedBlock(blk, hook, i)
            if checkpoint_blocks and torch.is_grad_enabled():
                x = activation_checkpoint(fn, x, use_reentrant=False)
            else:
                x = fn(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class _HookedBlock:
    def __init__(self, block: nn.Module, hook: BlockHook | None, index: int):
        self.block, self.hook, self.index = block, hook, index

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.hook is not None:
            x = self.hook(self.index, x)
        return self.block(x)

