"""Under CI a missing browser fails the browser tests instead of skipping them (issue 27 item 5).

Before: without chromium the README's test command passed with "2 skipped", in CI as on a laptop. The rule
(tests/app/conftest.py) is run here on a throwaway test folder whose tests skip the way the browser tests do.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]

SKIPPING = '''
import pytest
pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
'''
SKIPPING_IN_TEST = '''
import pytest
def test_needs_playwright():
    pytest.importorskip("no_such_playwright_module", reason="playwright is not installed (pip install playwright)")
def test_needs_something_else():
    pytest.skip("needs a GPU")
'''


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    folder = tmp_path / f"t_{ci}"
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text("from tests.app.conftest import pytest_make_collect_report, "
                                        "pytest_runtest_makereport  # noqa: F401\n")
    (folder / "test_browser_missing.py").write_text(SKIPPING)
    (folder / "test_in_test_skip.py").write_text(SKIPPING_IN_TEST)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-c",
                           str(folder / "pytest.ini"), str(folder)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=folder)


def test_missing_browser_is_a_skip_outside_ci(tmp_path):
    run = _run(tmp_path, None)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 skipped" in run.stdout and "chromium is not installed" in run.stdout


def test_missing_browser_is_a_failure_under_ci_and_other_skips_stay(tmp_path):
    run = _run(tmp_path, "true")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 failed" in run.stdout and "1 skipped" in run.stdout, run.stdout
    assert ("CI=true: the browser tests must run here, but they would be skipped: Debian's chromium is "
            "not installed") in run.stdout
    assert "they would be skipped: playwright is not installed" in run.stdout
    assert "needs a GPU" in run.stdout  # an unrelated skip is still a skip


def test_ci_run_exports_ci_and_installs_chromium():
    text = (REPO / ".ci" / "run").read_text()
    assert "export CI=true" in text.splitlines()
    assert "apt-get install" in text and "chromium" in text
