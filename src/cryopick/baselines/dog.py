"""Difference-of-Gaussians picker (DoG Picker style, Voss et al. 2009): no training, one parameter
(the particle diameter).

The image is Fourier-cropped so the particle is ``working_diameter`` pixels wide, robustly
normalised, turned so particles are bright (``polarity="dark"`` for the usual dark particles on
a light background), and filtered with ``G(σ1) - G(k σ1)``. The band-pass peaks on blobs of radius
``r ≈ √2 · σ`` (the scale-normalised Laplacian's optimum, which the DoG approximates at
``σ = σ1 √k``); so ``σ1 = r / (√2 · √k)``. Peaks are local maxima at least ``min_distance`` apart;
their score is the DoG response divided by the robust standard deviation of the whole DoG map, so a
threshold means the same thing on every micrograph. Works on 2D micrographs and 3D tomograms.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from cryopick.errors import CryopickError
from cryopick.postprocess.peaks import find_peaks
from cryopick.preprocess import downsample, factor_for_diameter, normalize


def check_room(shape: tuple[int, ...], diameter: float, border: float) -> None:
    """Refuse an image on which no particle of ``diameter`` px (picks ``border`` px from every edge) fits."""
    if diameter <= 0 or not np.isfinite(diameter):
        raise CryopickError(f"particle diameter must be a number > 0 (pixels), got {diameter}")
    if 2 * border >= min(shape) or diameter > min(shape):
        size = " x ".join(str(n) for n in shape)
        raise CryopickError(
            f"a particle of diameter {diameter:g} px (picks at least {border:g} px from the edges) does not fit a "
            f"{size}-pixel image; give --diameter in pixels of these micrographs (or a smaller --exclude-border)")


def prepare(image: np.ndarray, diameter: float, working_diameter: float = 24.0,
            polarity: str = "dark") -> tuple[np.ndarray, float]:
    """Downsample, normalise and orient an image so particles are bright.

    Returns
    -------
    image : np.ndarray
        Working image (float32, zero median, unit robust σ, particles bright).
    factor : float
        Working pixels per original pixel along each axis (``<= 1``); multiply original coordinates by it.
    """
    if polarity not in ("dark", "bright"):
        raise CryopickError(f"polarity must be 'dark' or 'bright', got {polarity!r}")
    image = np.asarray(image, dtype=np.float32)
    factor = factor_for_diameter(diameter, working_diameter)
    small, frame = downsample(image, factor) if factor > 1 else (image.copy(), None)
    scale = float(np.mean(frame.factors)) if frame is not None else 1.0
    small = normalize(small)
    if polarity == "dark":
        small = -small
    return small, scale


def dog_map(image: np.ndarray, radius: float, sigma_ratio: float = 1.6) -> np.ndarray:
    """Scale-tuned difference of Gaussians, normalised by its robust σ (see module docstring).

    Parameters
    ----------
    image
        2D or 3D, bright particles.
    radius
        Particle radius in pixels of ``image``.
    """
    s1 = radius / (math.sqrt(2.0) * math.sqrt(sigma_ratio))
    dog = ndimage.gaussian_filter(image, s1, mode="reflect") - ndimage.gaussian_filter(image, s1 * sigma_ratio,
                                                                                      mode="reflect")
    med = float(np.median(dog))
    mad = float(np.median(np.abs(dog - med))) * 1.4826
    return ((dog - med) / (mad if mad > 0 else 1.0)).astype(np.float32)


def dog_pick(
    image: np.ndarray,
    diameter: float,
    *,
    working_diameter: float = 24.0,
    sigma_ratio: float = 1.6,
    polarity: str = "dark",
    min_distance: float | None = None,
    threshold: float | None = 0.0,
    max_peaks: int | None = None,
    exclude_border: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick particles with a difference of Gaussians.

    Parameters
    ----------
    image
        ``(H, W)`` micrograph or ``(D, H, W)`` tomogram.
    diameter
        Particle diameter in pixels of ``image``.
    working_diameter
        Diameter in pixels at which to filter (the image is Fourier-cropped to reach it; never upsampled).
    sigma_ratio
        ``k = σ2 / σ1``.
    polarity
        ``"dark"`` (particles darker than the background, as in raw cryo-EM) or ``"bright"``.
    min_distance
        Minimum distance between picks in original pixels; default ``0.5 × diameter``.
    threshold
        Keep peaks scoring at least this (robust σ units of the DoG map); ``None`` keeps all.
    max_peaks
        Keep at most this many (highest first); default: twice the number of particle-sized squares
        that fit in the image.
    exclude_border
        Drop picks within this many original pixels of the border; default the particle radius (a
        particle must fit inside the micrograph, as boxes must in RELION / EMAN2; CryoPPP-style
        annotations contain no particle closer to the edge).

    Returns
    -------
    coords : np.ndarray
        ``(N, ndim)`` ``x, y[, z]`` in original pixels, by decreasing score.
    scores : np.ndarray
        ``(N,)``.
    """
    border = 0.5 * diameter if exclude_border is None else exclude_border
    check_room(np.shape(image), diameter, border)
    work, scale = prepare(image, diameter, working_diameter, polarity)
    response = dog_map(work, diameter * scale / 2.0, sigma_ratio)
    min_distance = 0.5 * diameter if min_distance is None else min_distance
    if max_peaks is None:
        max_peaks = int(2 * np.prod(np.asarray(image.shape) / diameter)) + 1
    coords, scores = find_peaks(response, max(1.0, min_distance * scale), threshold=threshold, max_peaks=max_peaks,
                                exclude_border=int(round(border * scale)))
    return coords / scale, scores
