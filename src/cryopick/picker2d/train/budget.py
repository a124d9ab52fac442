"""The time budget of a 2D training run: what fits, when to stop, and what the user is told.

``--max-minutes`` is charged by :class:`cryopick.training.BudgetClock` (wall time, less the share of the
cores other processes took; its docstring says why), shared by the stages (each later
stage gets an equal share of what the earlier ones left), and never stops a stage before
``min_epochs`` epochs. The user hears about it three times:

1. after the first optimiser steps, what an epoch costs and how many epochs the budget fits;
2. after the first epoch (validation included), a warning when not all epochs will fit, with the
   ``--max-minutes`` that would fit them (at a terminal: Ctrl-C and a rerun with it resumes the run);
3. when the budget did stop a stage early, a warning with the fix, also stored in ``card.json``.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from dataclasses import dataclass, field

from cryopick.picker2d.train.config import TrainConfig
from cryopick.training import BudgetClock

log = logging.getLogger(__name__)

MARGIN = 1.15  # the next epoch may be a little slower than the last one
ESTIMATE_AFTER_STEPS = 4  # optimiser steps timed for the first estimate (the first one is not counted)
CLOCK = "wall time less the share of the cores other processes took"


def _interactive() -> bool:
    """Whether a person at a terminal runs this (so Ctrl-C and a rerun are theirs to do): not in the
    app's job process or a batch job, whose standard input is not a terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


@dataclass
class StageBudget:
    """Budget bookkeeping of one training stage.

    Attributes
    ----------
    config
        The run's settings (``epochs``, ``steps_per_epoch``, ``max_minutes``, ``min_epochs``).
    clock
        The run's clock (seconds charged so far, all sessions).
    stage, n_stages
        This stage (0-based) and how many the run has.
    stage_start
        Seconds charged when this stage started.
    """

    config: TrainConfig
    clock: BudgetClock
    stage: int = 0
    n_stages: int = 1
    stage_start: float = 0.0
    warned: bool = False
    estimate: dict = field(default_factory=dict)

    @property
    def min_epochs(self) -> int:
        """Epochs this stage trains whatever the budget."""
        return min(self.config.min_epochs, self.config.epochs)

    @property
    def limit(self) -> float | None:
        """Charged seconds at which this stage should be done, or ``None`` without a budget."""
        if self.config.max_minutes is None:
            return None
        total = 60.0 * self.config.max_minutes
        return self.stage_start + max(0.0, total - self.stage_start) / (self.n_stages - self.stage)

    def _label(self) -> str:
        return "" if self.n_stages == 1 else f" of stage {self.stage + 1}/{self.n_stages}"

    def fits(self, epochs_done: int, epoch_seconds: float, reserve: float) -> int:
        """Epochs of this stage the budget is expected to fit, given the cost of one."""
        if self.limit is None or epoch_seconds <= 0:
            return self.config.epochs
        room = self.limit - self.clock.used - reserve
        more = max(0, int(math.floor(room / (MARGIN * epoch_seconds))))
        return int(min(self.config.epochs, max(self.min_epochs, epochs_done + more)))

    def needed_minutes(self, epochs_done: int, epoch_seconds: float, reserve: float) -> int:
        """``--max-minutes`` that would fit every epoch of this and the later stages (rounded up)."""
        later = self.n_stages - self.stage - 1
        seconds = (self.clock.used + (self.config.epochs - epochs_done) * epoch_seconds * MARGIN + reserve
                   + later * (self.config.epochs * epoch_seconds * MARGIN + 2 * reserve))
        return int(math.ceil(seconds / 60.0))

    def announce(self, step_seconds: float, threads: int, epochs_done: int,
                 wall_step_seconds: float | None = None) -> str:
        """The first estimate, from the first optimiser steps; logged and returned.

        ``step_seconds`` is charged to the budget (the free share of the wall time); the durations
        told to the user are wall time (``wall_step_seconds``, measured at the current load), and the
        total is said to be a lower bound: validation is not in it, and more load stretches it."""
        c = self.config
        epoch = step_seconds * c.steps_per_epoch
        wall = (wall_step_seconds if wall_step_seconds is not None else step_seconds) * c.steps_per_epoch
        left = c.epochs - epochs_done
        self.estimate = {"seconds_per_step": round(step_seconds, 3), "threads": threads,
                         "wall_seconds_per_step": round(wall / c.steps_per_epoch, 3),
                         "seconds_per_epoch_without_validation": round(epoch, 1)}
        text = (f"~{wall / c.steps_per_epoch:.2f} s per optimiser step with {_plural(threads, 'thread')} at the "
                f"current load: an epoch ({c.steps_per_epoch} steps) takes ~{wall:.0f} s plus validation, "
                f"{_plural(left, 'epoch')}{self._label()} at least ~{left * wall / 60:.1f} min (validation and "
                "a busier machine add to it); ")
        if self.limit is None:
            text += "no time budget"
        else:
            fit = self.fits(epochs_done, epoch, 0.0)
            self.estimate["epochs_that_fit"] = fit
            text += (f"the time budget (--max-minutes {c.max_minutes:g}"
                     + (f", shared by {self.n_stages} stages" if self.n_stages > 1 else "")
                     + f") fits ~{fit} of {c.epochs}; at least {_plural(self.min_epochs, 'epoch')} "
                     f"{'is' if self.min_epochs == 1 else 'are'} trained whatever the budget")
        log.info(text)
        return text

    def after_first_epoch(self, epochs_done: int, epoch_seconds: float, reserve: float) -> str | None:
        """Once per stage and session: a warning when the budget will not fit every epoch."""
        if self.warned or self.limit is None:
            return None
        self.warned = True
        fit = self.fits(epochs_done, epoch_seconds, reserve)
        self.estimate.update(seconds_per_epoch=round(epoch_seconds, 1), epochs_that_fit=fit)
        if fit >= self.config.epochs:
            return None
        need = self.needed_minutes(epochs_done, epoch_seconds, reserve)
        text = (f"warning: at ~{epoch_seconds:.0f} s per epoch the time budget (--max-minutes "
                f"{self.config.max_minutes:g}) fits ~{fit} of {self.config.epochs} epochs{self._label()}; "
                f"to train them all allow --max-minutes {need} or ask for fewer --epochs"
                + (" (Ctrl-C now and rerun with it: training resumes from its checkpoint)" if _interactive() else ""))
        log.warning(text)
        return text

    def should_stop(self, epochs_done: int, epoch_seconds: float, reserve: float) -> bool:
        """True when another epoch (and the ``reserve`` for calibration) would overrun this stage's
        share of the budget, and the stage has trained its minimum epochs."""
        if self.limit is None or epochs_done < self.min_epochs:
            return False
        return self.clock.used + MARGIN * epoch_seconds + reserve > self.limit

    def cut_short(self, epochs_done: int, epoch_seconds: float, reserve: float, threads: int) -> str:
        """The warning when the budget stopped this stage early (also issued with ``warnings.warn``)."""
        c = self.config
        need = self.needed_minutes(epochs_done, epoch_seconds, reserve)
        text = (f"training{self._label()} stopped by the time budget after {epochs_done} of {c.epochs} epochs "
                f"(--max-minutes {c.max_minutes:g}; {self.clock.used / 60:.1f} min charged, ~{epoch_seconds:.0f} s "
                f"per epoch with {_plural(threads, 'thread')}), so the model may be under-trained; to train all "
                f"{c.epochs} epochs rerun with --redo --max-minutes {need}, or ask for fewer --epochs")
        warnings.warn(text, stacklevel=2)
        return text


def close_bar(bar, label: str, stopped: str, done: int, epochs: int) -> None:
    """Close a stage's progress bar; when early stopping or the budget ended the stage before its last
    epoch, at 100 % and saying so ("stopped early at epoch 7/30"), not stuck at 23 %."""
    if stopped != "epochs" and not bar.disable:
        bar.total = bar.n
        bar.set_description(f"{label}: stopped early at epoch {done}/{epochs} ({stopped})", refresh=True)
    bar.close()


def budget_record(config: TrainConfig, clock: BudgetClock, wall_seconds: float, records: list[dict]) -> dict:
    """What ``card.json`` says about the budget (``training["budget"]``)."""
    warnings_ = [r["budget_warning"] for r in records if r.get("budget_warning")]
    return {
        "max_minutes": config.max_minutes,
        "min_epochs": config.min_epochs,
        "epochs_requested": config.epochs,
        "clock": CLOCK,
        "charged_minutes": round(clock.used / 60, 2),
        "wall_minutes": round(wall_seconds / 60, 2),
        "cut_short": bool(warnings_),
        "warnings": warnings_,
        "estimates": [r.get("budget_estimate", {}) for r in records],
    }
