"""Fixtures of the app tests: a small project of synthetic micrographs (bright discs on noise) made here.

The browser tests skip (saying why) where chromium or playwright is missing; under CI (``CI=true``, which
``.ci/run`` exports) such a skip is a failure, so a CI run cannot pass without them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

DIAMETER = 20.0
BROWSER_WORDS = ("chromium", "playwright")  # a skip whose reason names one of these is a missing browser


def under_ci() -> bool:
    """``CI`` set to true (GitHub Actions, GitLab, ``.ci/run``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _browser_skip(report) -> str | None:
    """The reason of a skip for a missing browser, else ``None``."""
    if not report.skipped:
        return None
    longrepr = report.longrepr
    reason = str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)
    reason = reason.removeprefix("Skipped: ")
    return reason if any(w in reason.lower() for w in BROWSER_WORDS) else None


def _ci_message(reason: str) -> str:
    return f"CI=true: the browser tests must run here, but they would be skipped: {reason}"


def _fail_under_ci(report) -> None:
    reason = _browser_skip(report) if under_ci() else None
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = _ci_message(reason)


class BrowserMissing(pytest.Item):
    """Stands for a test module skipped for a missing browser under CI: one failing test (a failed
    collection would stop the whole run)."""

    def __init__(self, *, reason: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        pytest.fail(_ci_message(self.reason), pytrace=False)

    def reportinfo(self):
        return self.path, None, f"{self.name}: {self.reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module skipped for a missing browser (``pytest.skip(..., allow_module_level=True)``) is, under
    CI, one failing test."""
    outcome = yield
    report = outcome.get_result()
    reason = _browser_skip(report) if under_ci() and isinstance(collector, pytest.Module) else None
    if reason is not None:
        report.outcome, report.longrepr = "passed", None
        report.result = [BrowserMissing.from_parent(collector, name="browser_missing", reason=reason)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test skipped for a missing browser fails under CI."""
    outcome = yield
    _fail_under_ci(outcome.get_result())


def make_project(root, n: int = 3, size: int = 256, seed: int = 0):
    """``root/micrographs/mic_<i>.mrc`` with discs at known positions; returns {name: (N, 2) centres}."""
    from cryopick.io.images import write_mrc

    rng = np.random.default_rng(seed)
    (root / "micrographs").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    truth = {}
    for i in range(n):
        img = rng.normal(0, 1, (size, size)).astype(np.float32)
        centres = []
        while len(centres) < 12:
            c = rng.uniform(20, size - 20, 2)
            if all(np.hypot(*(c - d)) > DIAMETER * 1.3 for d in centres):
                centres.append(c)
        for x, y in centres:
            img += 3.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (DIAMETER / 4) ** 2))
        write_mrc(root / "micrographs" / f"mic_{i}.mrc", img, pixel_size=2.0)
        truth[f"mic_{i}"] = np.array(centres)
    (root / "app.json").write_text('{"diameter": %g}\n' % DIAMETER)
    return truth


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "proj"
    truth = make_project(root)
    return root, truth
