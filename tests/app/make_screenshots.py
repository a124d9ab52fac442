"""Regenerate the README's screenshots of ``cryopick app`` (docs/app_*.png) from the browser tests.

    python tests/app/make_screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

if __name__ == "__main__":
    env = dict(os.environ, CRYOPICK_APP_SCREENSHOTS=str(ROOT / "docs"))
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              str(ROOT / "tests" / "app" / "test_browser.py"),
                              str(ROOT / "tests" / "app" / "test_tomo.py")], cwd=ROOT, env=env))
