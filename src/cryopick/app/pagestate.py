"""The tomogram page's state, kept in the project folder (``PROJECT/app.json``, key ``tomogram_page``) so
that a reload, another tab or a restarted server shows what the user left: the tomogram and slice, the
view axis and slab, the class clicks add to, the particle diameter (Å, or voxels of the tomogram), the
review's class and each class's score threshold. The thresholds decide what the review keeps, so the
server reads them too (:func:`near_vox` for the rejection radius).

Each field is checked on write (a bad one is a 400 naming it); unknown keys are refused.
"""

from __future__ import annotations

import math

from cryopick.app.project import _read_json, check_name
from cryopick.io.atomic import write_text
from cryopick.io.jsonutil import dumps

KEY = "tomogram_page"
DEFAULT_DIAMETER_VOX = 16.0
UNITS = ("A", "vox")
AXES = ("z", "y", "x")
MAX_SLAB = 32
MAX_CLASSES = 1000


def _number(value, key: str, lo: float, hi: float, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi or (integer and not float(value).is_integer()):
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{key} must be {kind} between {lo:g} and {hi:g}, got {str(value)[:40]}")
    return int(value) if integer else float(value)


def _label(value, key: str) -> str:
    # the class names pick3d accepts (picker3d.prompt.check_label), checked here without importing torch:
    # the page saves its state while the user types
    if (not isinstance(value, str) or not value or len(value) > 200 or any(c in value for c in "/\\\0")
            or value.startswith(".") or value.strip() != value):
        raise ValueError(f"{key} must be a class name (no / or \\, not starting with a dot or a space), "
                         f"got {str(value)[:40]!r}")
    return value


def _thresholds(value, key: str) -> dict:
    if not isinstance(value, dict) or len(value) > MAX_CLASSES:
        raise ValueError(f"{key} must be an object {{class: threshold 0..1}}")
    return {_label(k, f"{key} class"): _number(v, f"{key}[{k[:40]!r}]", 0, 1) for k, v in value.items()}


def _choice(options: tuple):
    def check(value, key: str) -> str:
        if value not in options:
            raise ValueError(f"{key} must be one of {', '.join(options)}, got {str(value)[:40]!r}")
        return value

    return check


CHECKS = {
    "tomogram": lambda v, k: check_name(v),
    "axis": _choice(AXES),
    "index": lambda v, k: _number(v, k, 0, 1e6, integer=True),
    "slab": lambda v, k: _number(v, k, 0, MAX_SLAB, integer=True),
    "label": _label,
    "review_class": _label,
    "diameter": lambda v, k: _number(v, k, 0.1, 1e5),
    "unit": _choice(UNITS),
    "thresholds": _thresholds,
}
DEFAULTS = {"tomogram": None, "axis": "z", "index": None, "slab": 0, "label": None, "review_class": None,
            "diameter": None, "unit": "A", "thresholds": {}}


def page_state(project) -> dict:
    """The saved state, every field present (:data:`DEFAULTS` for the ones never set or no longer valid)."""
    saved = _read_json(project.root / "app.json").get(KEY)
    out = dict(DEFAULTS, thresholds={})
    if isinstance(saved, dict):
        for key, check in CHECKS.items():
            if saved.get(key) is not None:
                try:
                    out[key] = check(saved[key], key)
                except ValueError:
                    pass
    return out


def set_page_state(project, changes) -> dict:
    """Merge ``changes`` (some of the fields; ``thresholds`` merged per class, a class set to null removed)
    into the saved state and return it."""
    if not isinstance(changes, dict):
        raise ValueError("send the page state as an object")
    unknown = sorted(set(changes) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown page state field(s): {', '.join(k[:40] for k in unknown[:5])}; "
                         f"known: {', '.join(CHECKS)}")
    with project.lock:
        state = page_state(project)
        for key, value in changes.items():
            if key == "thresholds":
                if not isinstance(value, dict):
                    raise ValueError("thresholds must be an object {class: threshold 0..1}")
                merged = {**state["thresholds"], **value}
                state["thresholds"] = _thresholds({k: v for k, v in merged.items() if v is not None}, key)
            else:
                state[key] = None if value is None else CHECKS[key](value, key)
        data = _read_json(project.root / "app.json")
        data[KEY] = state
        write_text(project.root / "app.json", dumps(data, indent=1) + "\n")
    return state


def diameter_vox(state: dict, voxel_size: float | None) -> float:
    """The page's particle diameter in voxels of a tomogram of ``voxel_size`` Å (None: not known)."""
    d = state.get("diameter")
    if d is None:
        return DEFAULT_DIAMETER_VOX
    if state.get("unit") == "A":
        return d / voxel_size if voxel_size else DEFAULT_DIAMETER_VOX
    return d


def near_vox(state: dict, voxel_size: float | None) -> float:
    """The review's rejection radius in voxels: a quarter of the particle diameter (as on micrographs)."""
    return diameter_vox(state, voxel_size) / 4
