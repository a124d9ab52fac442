"""CryoFSL adapters for the frozen Hiera trunk.

Before every Hiera block ``i`` the block input is replaced by::

    x + shared[g](GELU(unshared[i](x)))

``unshared[i]`` is a per-block ``Linear(C, C // reduction)``; ``shared[g]`` is a
``Linear(C // reduction, C)`` shared by all adapters that act on features of width ``C``.

Which adapters share: Hiera's stages hold 2/6/36/4 blocks (Hiera-L), but the first block of
stages 2–4 is the block that pools and widens — its *input* still has the previous stage's width
(e.g. block 2 of Hiera-L reads 144-channel features and writes 288). An adapter placed before it
must therefore act in the previous stage's width, and can only share that width's projection.
So there is exactly one adapter per block (48 for Hiera-L; 2/6/36/4 per Hiera stage by the block
they precede), grouped by input width into 3/6/36/3 per shared projection.

The shared projections are zero-initialised, so a freshly built model computes exactly the
pretrained SAM2 encoder (the adapter output is 0 at step 0); the unshared layers get the default
PyTorch initialisation so gradients reach them after the first update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cryopick.models.sam2.hiera import Hiera


class HieraAdapters(nn.Module):
    """One bottleneck adapter per Hiera block, with shared up-projections per input width.

    Parameters
    ----------
    trunk
        The Hiera trunk the adapters are built for (read for block widths only).
    reduction
        Bottleneck factor: hidden width ``max(1, C // reduction)`` (SAM-Adapter uses 32).
    """

    def __init__(self, trunk: Hiera, reduction: int = 32):
        super().__init__()
        widths = [blk.dim for blk in trunk.blocks]
        self.group_widths = sorted(set(widths))
        self.block_group = [self.group_widths.index(w) for w in widths]
        hidden = [max(1, w // reduction) for w in self.group_widths]
        self.unshared = nn.ModuleList(nn.Linear(w, hidden[g]) for w, g in zip(widths, self.block_group))
        self.shared = nn.ModuleList(nn.Linear(h, w) for h, w in zip(hidden, self.group_widths))
        for lin in self.shared:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Adapt the channels-last input ``x (B, H, W, C)`` of block ``index``."""
        return x + self.shared[self.block_group[index]](F.gelu(self.unshared[index](x)))

    def counts_per_group(self) -> list[int]:
        """Number of adapters sharing each projection, e.g. ``[3, 6, 36, 3]`` for Hiera-L."""
        return [self.block_group.count(g) for g in range(len(self.group_widths))]
