"""Saying so when fewer particles fit than were asked for.

The simulators place non-overlapping particles by random sequential addition, which jams when about
half of the free area (or volume) is covered: 200 particles of 150-250 Å on a 1024² micrograph at
2 Å/px would need 150 % of its area, and about 75 fit. (An exhaustive search of the gaps left at
that point, tried on those settings, placed no further particle: the shortfall is the geometry, not
too few random tries.) :func:`shortfall_message` states the numbers and the options that fix it.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from cryopick.errors import CryopickError


class PlacementWarning(UserWarning):
    """Fewer particles were placed than requested (no room for more)."""


class ClassTooLargeWarning(PlacementWarning):
    """A particle class does not fit the image at all and is left out."""


def fitting_weights(radii_px: np.ndarray, weights: np.ndarray, shape: Sequence[int], class_names: Sequence[str],
                    name: str, what: str = "micrograph") -> np.ndarray:
    """Class weights with the classes too large for the image set to 0 (with a warning); an error when
    no class fits. ``shape`` is in array order, ``radii_px`` in pixels."""
    radii_px = np.asarray(radii_px, dtype=np.float64)
    room = (min(int(n) for n in shape) - 1) / 2.0
    too_big = radii_px > room
    if not too_big.any():
        return weights
    sizes = ", ".join(f"{n} ({2 * r:.0f} px)" for n, r, big in zip(class_names, radii_px, too_big) if big)
    if too_big.all():
        raise CryopickError(f"{name}: no particle class fits the {' x '.join(map(str, shape))}-pixel {what}: "
                            f"{sizes}; give a larger --shape, smaller --diameter or a larger --pixel-size")
    warnings.warn(f"class(es) {sizes} do not fit the {' x '.join(map(str, shape))}-pixel {what} and are left out",
                  ClassTooLargeWarning, stacklevel=3)
    weights = np.where(too_big, 0.0, weights)
    return weights / weights.sum()


def shortfall_message(name: str, placed: int, requested: int, radii_px: np.ndarray, shape: Sequence[int],
                      what: str = "micrograph", blocked_share: float | None = None) -> str:
    """One line: how many particles were placed, why not more, and how to get more."""
    radii_px = np.asarray(radii_px, dtype=np.float64)
    ndim = len(shape)
    unit = np.pi * radii_px**2 if ndim == 2 else 4.0 / 3.0 * np.pi * radii_px**3
    share = float(unit.sum()) / float(np.prod(shape)) if len(unit) else 0.0
    size = "area" if ndim == 2 else "volume"
    diameter = 2 * float(radii_px.mean()) if len(radii_px) else float("nan")
    blocked = (f" and carbon, ice crystals and aggregates block at least {blocked_share:.0%}" if blocked_share else "")
    return (f"{name}: placed {placed} of {requested} requested particles; the {placed} particles (mean diameter "
            f"{diameter:.0f} px) fill {share:.0%} of the {what}'s {size}{blocked}, and there is no room for another "
            "without overlap; ask for fewer particles (--particles), a larger image (--shape), smaller particles "
            "(--diameter) or a larger pixel size (--pixel-size)")
