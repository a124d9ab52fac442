"""Type aliases used across cryopick's signatures."""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from numpy.typing import NDArray

PathLike = Union[str, "os.PathLike[str]"]
"""A file or folder path."""

ImageLike = Union[PathLike, NDArray[np.floating]]
"""A micrograph: a path to an image file, or a ``(H, W)`` array (y, x)."""

VolumeLike = Union[PathLike, NDArray[np.floating]]
"""A tomogram: a path to a volume file, or a ``(D, H, W)`` array (z, y, x); memory maps work too."""

CoordsArray = NDArray[np.floating]
"""Particle centres ``(N, 2)`` as ``x, y`` or ``(N, 3)`` as ``x, y, z``: pixels (voxels), 0-based, pixel centres."""
