"""JSON for cryopick's records, cards, settings and reports: numpy values, paths and dataclasses in,
standard JSON out.

``dumps(obj)`` writes non-finite floats as ``null`` (strict JSON, readable by any tool); with
``strict=False`` they stay ``NaN``/``Infinity`` (Python's extension, for files that cryopick alone reads
back into float fields).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import PurePath
from typing import Any

import numpy as np


def to_jsonable(obj: Any, strict: bool = True) -> Any:
    """``obj`` as plain dicts, lists, str, int, float, bool and None.

    numpy scalars and arrays become Python numbers and lists, tuples lists, paths strings, dataclasses
    dicts, dict keys strings; with ``strict`` non-finite floats become ``None``.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, strict) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), strict)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return None if strict and not math.isfinite(f) else f
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), strict)
    return obj


def dumps(obj: Any, indent: int | None = None, strict: bool = True) -> str:
    """JSON text of ``obj`` (see :func:`to_jsonable`); objects of other types fall back to ``str``."""
    return json.dumps(to_jsonable(obj, strict), indent=indent, allow_nan=not strict, default=str)
