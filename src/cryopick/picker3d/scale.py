"""The working frame of a tomogram: Fourier-cropped or binned to the prompt's working voxel size.

:class:`WorkingTomogram` maps working voxels back to voxels of the tomogram as stored
(``x_source = x_working * factor``, voxel centres).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.images import Image, read_tomogram


# -- tomograms at the working scale ------------------------------------------------------------------------
@dataclass
class WorkingTomogram:
    """A tomogram at the working voxel size; ``binning`` = working voxel size / stored voxel size."""

    volume: np.ndarray
    name: str
    voxel_size: float | None
    source_voxel_size: float | None
    binning: float
    source_shape: tuple[int, int, int]

    def to_working(self, coords: np.ndarray) -> np.ndarray:
        return np.asarray(coords, float) * self.factors

    def to_source(self, coords: np.ndarray) -> np.ndarray:
        return np.asarray(coords, float) / self.factors

    @property
    def factors(self) -> np.ndarray:
        """Per-axis ``x, y, z`` factor (exact shape ratio after Fourier cropping)."""
        return np.asarray(self.volume.shape[::-1], float) / np.asarray(self.source_shape[::-1], float)


def working_tomogram(image: Image | str | os.PathLike, binning: float | None = None,
                     voxel_size: float | None = None, invert: bool = False) -> WorkingTomogram:
    """Bring a tomogram to the working scale: ``voxel_size`` (Å) when both sizes are known, else ``binning``.

    No resampling (the memory map is used as is) when the factor is 1 and ``invert`` is False.
    """
    from cryopick.preprocess import downsample

    image = image if isinstance(image, Image) else read_tomogram(image)
    src = image.pixel_size
    if voxel_size is not None and src is not None:
        factor = voxel_size / src
    else:
        factor = binning or 1.0
    if factor < 0.99:
        raise CryopickError(
            f"{image.path}: voxel size {src:g} Å is coarser than the prompt's working voxel size {voxel_size:g} Å; "
            "make the prompt on a tomogram at this or a finer voxel size"
        )
    if abs(factor - 1.0) < 0.01:
        vol = image.data
        factor = 1.0
    else:
        vol, _ = downsample(np.asarray(image.data, dtype=np.float32), factor)
    if invert:
        vol = -np.asarray(vol, dtype=np.float32)
    work_vs = None if src is None else src * factor
    return WorkingTomogram(vol, image.name, work_vs, src, float(factor), tuple(image.data.shape))

