"""Progress and the end-of-run tally of a batch run: one overall bar (throughput, ETA) and the
picked / skipped / failed counts with the failures' reasons and a per-input count's spread.

:class:`RunTally` is fed one :class:`~cryopick.distribute.engine.Outcome` at a time (thread-safe) and
keeps only counts and failures, so it stays small for 50,000 inputs. Exit codes of the batch
commands: :data:`EXIT_OK` when every input finished, :data:`EXIT_FAILURES` when the run went
through but some inputs failed (they are listed; rerun to retry only them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryopick.distribute.engine import Outcome
from cryopick.errors import FinishedWithFailures

EXIT_OK = 0
#: the same code as ``pick3d`` (:class:`cryopick.errors.FinishedWithFailures`)
EXIT_FAILURES = FinishedWithFailures.exit_code


def spread(values) -> dict[str, float]:
    """``min``, ``median``, ``max`` and ``mean`` of a list of counts (zeros when empty)."""
    v = np.asarray(list(values), float)
    if not v.size:
        return {"min": 0, "median": 0.0, "max": 0, "mean": 0.0}
    return {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max()), "mean": float(v.mean())}


@dataclass
class RunTally:
    """Counts of one run: ``done`` (finished now), ``skipped`` (finished earlier), ``failed``
    (``[{"input", "path", "error"}]``, sorted by input in :meth:`to_dict`); ``bar``: a tqdm bar to
    advance (or ``None``)."""

    skipped: int = 0
    done: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    bar: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            if outcome.ok:
                self.done += 1
            else:
                self.failed.append({"input": outcome.task.key, "path": outcome.task.path, "error": outcome.error})
            if self.bar is not None:
                self.bar.update(1)
                if self.failed:
                    self.bar.set_postfix(failed=len(self.failed), refresh=False)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.failed else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {"n_picked": self.done, "n_skipped": self.skipped, "n_failed": len(self.failed),
                "failed": sorted(self.failed, key=lambda f: str(f["input"]))}


def progress_bar(total: int | None, unit: str = "mic", desc: str = "picking", enabled: bool = True):
    """One overall tqdm bar (throughput and ETA; no ETA when ``total`` is unknown, e.g. watch mode)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, smoothing=0.1, dynamic_ncols=True)
