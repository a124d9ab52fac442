"""The working scale of a 2D picker: how far micrographs are Fourier-cropped for a given particle diameter.

:class:`WorkingScale` is chosen from the diameter (pixels of the micrograph) at training time and stored in
the model card; :func:`prepare_image` brings a micrograph to it (``WorkingFrame`` maps picks back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cryopick.errors import CryopickError
from cryopick.preprocess import (
    WorkingFrame,
    downsample,
    normalize,
)


@dataclass(frozen=True)
class WorkingScale:
    """How micrographs are resampled for the network.

    Attributes
    ----------
    factor
        Downsampling factor: original pixels per working pixel (``>= 1``).
    diameter
        Particle diameter in original pixels.
    pixel_size
        Original pixel size in Å, or ``None`` when unknown.
    """

    factor: float
    diameter: float
    pixel_size: float | None = None

    @property
    def working_diameter(self) -> float:
        """Particle diameter in working pixels."""
        return self.diameter / self.factor

    @property
    def working_pixel_size(self) -> float | None:
        return None if self.pixel_size is None else self.pixel_size * self.factor

    @classmethod
    def from_diameter(cls, diameter: float, pixel_size: float | None = None,
                      target_diameter: float = 16.0) -> "WorkingScale":
        """Choose the factor so the particle is ``target_diameter`` working pixels wide (never
        upsampling: small particles keep the original sampling)."""
        if not diameter or diameter <= 0 or not math.isfinite(diameter):
            raise CryopickError(f"particle diameter must be a positive number of pixels, got {diameter}")
        return cls(factor=max(1.0, float(diameter) / float(target_diameter)), diameter=float(diameter),
                   pixel_size=pixel_size)


def prepare_image(data: np.ndarray, factor: float, clip_sigma: float = 4.0) -> tuple[np.ndarray, WorkingFrame]:
    """Original micrograph ``(H, W)`` -> normalised working image and its frame.

    Fourier-crop by ``factor`` (anti-aliased; it also averages away most shot noise), then
    robust-normalise (median / MAD, clipped at ``clip_sigma``).
    """
    small, frame = downsample(np.asarray(data, dtype=np.float32), factor)
    # Any NaN or inf in the input spreads over the whole Fourier-cropped image: checking the small
    # image is enough and cheap.
    if not np.isfinite(small).all():
        raise CryopickError("micrograph contains NaN or infinite pixel values; re-export it or mask the bad pixels")
    return normalize(small, clip_sigma=clip_sigma), frame

