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
from cryopick.runtime import cpu_sample


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


def saved_settings(saved, defaults: dict, added_later: tuple[str, ...]):
    """A checkpoint's recorded settings (``resume_key()``) with the ``defaults`` of the settings in
    ``added_later`` that it predates, so a run written before a setting existed still resumes when that
    setting keeps its default. Anything but a dict is returned as it is (it then matches nothing)."""
    if not isinstance(saved, dict):
        return saved
    return {**{k: v for k, v in defaults.items() if k in added_later}, **saved}


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


def machine_counters() -> tuple[float, float] | None:
    """``(busy, total)`` core-seconds so far, summed over the cores this process may use (from
    ``/proc/stat``), or ``None`` where that cannot be read."""
    sample = cpu_sample()
    return None if sample is None else (sample.busy, sample.total)


class BudgetClock:
    """Time charged to a training budget: wall time, less the share of it that other processes took.

    Each interval between two :meth:`tick` calls is charged ``min(CPU time of this process, wall time
    x the fraction of the cores that other processes left free)``. On an idle machine that is the wall
    time, so ``--max-minutes`` means minutes. On a loaded machine the run drops to one thread per free
    core and gets only a share of them; charging only the free share of the wall time makes load
    stretch the run instead of cutting its epochs: with one other busy process on 2 cores half the
    wall time is charged, and one thread on the free core does more than half the work of two threads
    on an idle machine. (A plain wall-clock budget stopped a 30-epoch run after 1 epoch with one
    other process on 2 cores; the previous ``min(wall, CPU)`` charge let a one-thread loaded run fit
    only the epochs one thread does in the budget.) Plain CPU time is not the charge because with
    several threads it runs faster than the wall clock (a 9-minute budget would stop after ~5 minutes
    on an idle machine); it is a bound, so waiting for the disk is not charged either. Where the
    machine's counters cannot be read the charge is ``min(wall, CPU)``. Tick often (every optimiser
    step): the charge is taken per interval.

    Parameters
    ----------
    used
        Seconds already charged (a resumed run's earlier sessions).
    wall, cpu
        Clock functions in seconds (defaults ``time.monotonic`` and ``time.process_time``).
    machine
        ``() -> (busy, total)`` core-seconds of the cores this process may use, or ``None`` when not
        known (default :func:`machine_counters`; tests inject fake clocks and counters).
    """

    def __init__(self, used: float = 0.0, wall: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time,
                 machine: Callable[[], tuple[float, float] | None] | None = machine_counters) -> None:
        self.used = float(used)
        self._wall, self._cpu, self._machine = wall, cpu, machine or (lambda: None)
        self._last = (wall(), cpu(), self._machine())

    def tick(self) -> float:
        """Charge the time since the last tick; returns the seconds charged so far."""
        now = (self._wall(), self._cpu(), self._machine())
        wall, cpu = now[0] - self._last[0], now[1] - self._last[1]
        free = 1.0
        if now[2] is not None and self._last[2] is not None and wall > 0:
            busy, total = now[2][0] - self._last[2][0], now[2][1] - self._last[2][1]
            if total > 0:  # cores = total / wall; others = (busy - cpu) / wall
                free = min(1.0, max(0.0, 1.0 - max(0.0, busy - cpu) / total))
        self.used += max(0.0, min(cpu, wall * free))
        self._last = now
        return self.used
