"""Small frozen settings dataclasses ("configs") of the library's long functions, and how those take them.

A function with many tuning parameters (:func:`~cryopick.simulate.tomogram.simulate_tomogram`,
:func:`~cryopick.postprocess.peaks2d.find_peaks_s1`, :func:`~cryopick.postprocess.template_matching.match_template`,
the batch pickers) takes one config object of them and still accepts each parameter as a keyword of the same
name, which replaces that field: ``simulate_tomogram(classes, TomogramSimulation(shape=(64, 96, 96)))`` and
``simulate_tomogram(classes, shape=(64, 96, 96))`` are the same call (:func:`configure`). A config checks its
fields when it is made, so a bad value fails before any work, with a :class:`~cryopick.errors.ConfigError`
naming the class and the field (:func:`check`, :func:`check_number`, :func:`check_span`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import fields, replace
from typing import Any, Mapping, TypeVar

from cryopick.errors import ConfigError

C = TypeVar("C")


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def configure(cls: type[C], config: C | None, options: Mapping[str, Any], caller: str) -> C:
    """``config`` (``None``: the defaults of ``cls``) with the fields named in ``options`` replaced.

    A keyword that is no field of ``cls`` is a ``TypeError`` naming ``caller``, as for any function."""
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"{caller}(): config must be a {cls.__name__}, got {type(config).__name__}")
    unknown = sorted(set(options) - set(field_names(cls)))
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    base = cls() if config is None else config
    return replace(base, **options) if options else base


def split_options(options: Mapping[str, Any], classes: tuple[type, ...], caller: str) -> list[dict]:
    """``options`` shared out to ``classes`` by field name (one dict per class, in order); a keyword that is
    a field of none of them is a ``TypeError`` naming ``caller``."""
    parts: list[dict] = [{} for _ in classes]
    for key, value in options.items():
        owner = next((i for i, cls in enumerate(classes) if key in field_names(cls)), None)
        if owner is None:
            raise TypeError(f"{caller}() got an unexpected keyword argument {key!r}")
        parts[owner][key] = value
    return parts


def fail(config, name: str, expected: str, what: str | None = None) -> ConfigError:
    """The error for field ``name`` of ``config``: ``"<what> (Class.name) must be <expected>, got <value>"``."""
    label = f"{type(config).__name__}.{name}"
    subject = f"{what} ({label})" if what else label
    return ConfigError(f"{subject} must be {expected}, got {getattr(config, name)!r}")


def check(config, name: str, ok: bool, expected: str, what: str | None = None) -> None:
    if not ok:
        raise fail(config, name, expected, what)


def is_number(value, integer: bool = False, finite: bool = True) -> bool:
    """A real number (``integer``: a whole one), not NaN (``finite``: nor infinite); ``bool`` is no number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        return False
    return not math.isnan(value) and (math.isfinite(value) or not finite)


def _within(v, lo, hi, strict_lo: bool) -> bool:
    return (lo is None or (v > lo if strict_lo else v >= lo)) and (hi is None or v <= hi)


def _bounds(lo, hi, strict_lo: bool) -> str:
    parts = ([] if lo is None else [f"{'>' if strict_lo else '>='} {lo:g}"]) + ([] if hi is None else [f"<= {hi:g}"])
    return " and ".join(parts)


def check_number(config, name: str, lo: float | None = None, hi: float | None = None, *, strict_lo: bool = False,
                 optional: bool = False, integer: bool = False, finite: bool = True) -> None:
    """Field ``name`` is a number (``integer``: a whole one) within ``[lo, hi]`` (``strict_lo``: above ``lo``);
    ``optional``: ``None`` is allowed; ``finite=False`` allows +inf."""
    value = getattr(config, name)
    if value is None and optional:
        return
    if not (is_number(value, integer, finite) and _within(value, lo, hi, strict_lo)):
        expected = f"{'a whole number' if integer else 'a number'} {_bounds(lo, hi, strict_lo)}".strip()
        raise fail(config, name, expected + (" or None" if optional else ""))


def check_span(config, name: str, lo: float | None = None, hi: float | None = None, *, strict_lo: bool = False,
               integer: bool = False, finite: bool = True) -> None:
    """Field ``name`` is one number or a ``(low, high)`` range to draw from, each within the bounds and
    ``low <= high``."""
    value = getattr(config, name)
    pair = isinstance(value, (tuple, list))
    values = list(value) if pair else [value]
    ok = len(values) in (1, 2) and all(is_number(v, integer, finite) and _within(v, lo, hi, strict_lo) for v in values)
    if not (ok and (len(values) < 2 or values[0] <= values[1])):
        bounds = _bounds(lo, hi, strict_lo)
        raise fail(config, name, "a number or a (low, high) range with low <= high" + (f", {bounds}" if bounds else ""))


def set_field(config, name: str, value) -> None:
    """Normalise a field of a frozen dataclass in ``__post_init__`` (e.g. a list to a tuple)."""
    object.__setattr__(config, name, value)
