"""What the 2D and 3D trainers share: learning-rate schedule, weight averaging, seeds, atomic checkpoints,
and the clock of a time budget.

Both wings (:mod:`cryopick.picker2d.train`, :mod:`cryopick.picker3d.train`) build on these; none of
them knows about micrographs or tomograms.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cryopick.io.atomic import atomic_path


def cosine_schedule(step: int, total: int, warmup: int, floor: float = 0.01) -> float:
    """Learning-rate factor at ``step`` (0-based): linear warm-up over ``warmup`` steps to 1, then a
    cosine decay to ``floor`` at ``total`` steps (held there after). Dimensionless, in (0, 1]."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_seeds(seed: int) -> None:
    """Seed torch and numpy's global generator (data sampling uses its own ``default_rng``)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically (a reader sees the old or the new file, never half)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


class WeightAverage:
    """Exponential moving average (EMA) of a model's trainable parameters (and float buffers).

    Kept as a dict of tensors (no second model: a frozen multi-GB backbone is not duplicated);
    :meth:`swap` exchanges the averaged and live values in place, and swapping twice restores.

    Parameters
    ----------
    decay
        Weight of the average per update, in [0, 1).
    ramp
        If true the decay ramps up as ``min(decay, (1 + t) / (10 + t))`` so early steps are not
        over-weighted (2D); if false it is constant (3D).
    buffers
        Average floating-point buffers (BatchNorm statistics) too; if false the live buffers are used
        as they are.
    """

    def __init__(self, model: torch.nn.Module, decay: float, ramp: bool = True, buffers: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.ramp = ramp
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if buffers:
            named.update({n: b for n, b in model.named_buffers() if b.is_floating_point()})
        self.names = list(named)
        self.shadow = {n: t.detach().clone() for n, t in named.items()}

    def _live(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        tensors = dict(model.named_parameters())
        tensors.update(dict(model.named_buffers()))
        return {n: tensors[n] for n in self.names}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step)) if self.ramp else self.decay
        for n, t in self._live(model).items():
            self.shadow[n].mul_(d).add_(t.detach(), alpha=1 - d)

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        for n, t in self._live(model).items():
            tmp = t.detach().clone()
            t.copy_(self.shadow[n])
            self.shadow[n].copy_(tmp)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load averaged values; ``state`` may hold more entries (a whole model's state dict, as
        older 3D checkpoints saved), only the averaged names are taken."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"weight average lacks {len(missing)} tensors, e.g. {missing[0]}")
        self.shadow = {n: state[n].detach().clone().to(self.shadow[n].device) for n in self.names}


class BudgetClock:
    """Time charged to a training budget: wall time, less the time other processes kept this one
    off every core.

    Each interval between two :meth:`tick` calls is charged ``min(wall time, CPU time of this
    process)``. On an idle machine a training process keeps at least one core busy, so that is the
    wall time and ``--max-minutes`` means minutes. On a loaded machine, where the scheduler gives this
    process only part of a core, only that part is charged: load stretches the run instead of
    cutting its epochs (measured: with one other process on 2 cores the wall-clock budget stopped a
    30-epoch run after 1 epoch). Plain CPU time was not used because with several threads it runs
    faster than the wall clock (a 9-minute budget would stop after ~5 minutes on an idle machine);
    counting optimiser steps would not be in minutes at all. Waiting for the disk is not charged
    either (training reads nothing after loading). Tick often (every optimiser step): the minimum
    is taken per interval.

    Parameters
    ----------
    used
        Seconds already charged (a resumed run's earlier sessions).
    wall, cpu
        Clock functions in seconds (defaults ``time.monotonic`` and ``time.process_time``; tests inject
        fake ones).
    """

    def __init__(self, used: float = 0.0, wall: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.used = float(used)
        self._wall, self._cpu = wall, cpu
        self._last = (wall(), cpu())

    def tick(self) -> float:
        """Charge the time since the last tick; returns the seconds charged so far."""
        now = (self._wall(), self._cpu())
        self.used += max(0.0, min(now[0] - self._last[0], now[1] - self._last[1]))
        self._last = now
        return self.used
