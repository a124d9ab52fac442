"""Preprocessing shared by all pickers: Fourier-crop downsampling, robust normalisation, low-pass,
and the mapping of coordinates between the original frame and the working frame.

All functions work on 2D micrographs and 3D tomograms alike (numpy ``[z][y][x]`` order).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from cryopick.errors import CryopickError


@dataclass(frozen=True)
class WorkingFrame:
    """How a working-scale image relates to the original one.

    A coordinate ``x_orig`` (pixels of the original image) is ``x_orig * factor`` in the working
    image, where ``factor = working_shape / original_shape`` per axis (Fourier cropping keeps
    sample 0 at 0). ``factor < 1`` means downsampling.
    """

    original_shape: tuple[int, ...]
    working_shape: tuple[int, ...]

    @property
    def factors(self) -> np.ndarray:
        """Per-axis factor in ``x, y[, z]`` order (the order of picks coordinates)."""
        return (np.asarray(self.working_shape, float) / np.asarray(self.original_shape, float))[::-1]

    def to_working(self, coords: np.ndarray) -> np.ndarray:
        """``(N, ndim)`` ``x, y[, z]`` original pixels -> working pixels."""
        return np.asarray(coords, float) * self.factors

    def to_original(self, coords: np.ndarray) -> np.ndarray:
        """``(N, ndim)`` ``x, y[, z]`` working pixels -> original pixels."""
        return np.asarray(coords, float) / self.factors


_FFT_WORKERS: contextvars.ContextVar[int] = contextvars.ContextVar("fft_workers", default=-1)


@contextlib.contextmanager
def fft_workers(n: int) -> Iterator[None]:
    """Threads of :func:`fourier_crop`'s FFTs in this thread (and context) for the ``with`` block
    (default ``-1``: every core). A pipeline that preprocesses in several threads next to the network
    sets 1, so the threads do not fight over the cores."""
    token = _FFT_WORKERS.set(int(n))
    try:
        yield
    finally:
        _FFT_WORKERS.reset(token)


def fourier_crop(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Downsample by cropping the Fourier transform to ``shape`` (anti-aliased, no phase shift).

    Parameters
    ----------
    image
        Real array, 2D or 3D.
    shape
        Target shape, each axis ``<=`` the input's. Equal shape returns a float32 copy.
    """
    image = np.asarray(image, dtype=np.float32)
    shape = tuple(int(s) for s in shape)
    if len(shape) != image.ndim:
        raise ValueError(f"target shape {shape} does not match image dimensionality {image.ndim}")
    if shape == image.shape:
        return image.copy()
    if any(s > n for s, n in zip(shape, image.shape)):
        raise ValueError(f"fourier_crop only downsamples: {image.shape} -> {shape}")
    import scipy.fft  # float32-preserving and multi-threaded: ~10x faster than np.fft on 4096^2

    workers = _FFT_WORKERS.get()
    # Keep the low frequencies: on full axes, the first ceil(s/2) and the last floor(s/2) bins;
    # on the last (half) axis, the first s//2 + 1 bins. The real FFT along the last axis first, then
    # the other axes only over the kept bins: the values of rfftn, in about half the time at 4096^2.
    out_full = [np.r_[0 : (s + 1) // 2, n - s // 2 : n] for s, n in zip(shape[:-1], image.shape[:-1])]
    cropped = scipy.fft.rfft(image, axis=-1, workers=workers)[..., : shape[-1] // 2 + 1]
    for axis, keep in enumerate(out_full):
        cropped = np.take(scipy.fft.fft(cropped, axis=axis, workers=workers), keep, axis=axis)
    result = scipy.fft.irfftn(cropped, s=shape, axes=tuple(range(len(shape))), workers=workers)
    result *= np.prod(shape) / np.prod(image.shape)
    return result.astype(np.float32)


def downsample(image: np.ndarray, factor: float) -> tuple[np.ndarray, WorkingFrame]:
    """Fourier-crop ``image`` by ``factor`` (``>= 1``; 2 halves every axis).

    Returns the working image and the :class:`WorkingFrame` that maps coordinates.
    """
    if factor < 1:
        raise CryopickError(f"downsampling factor must be >= 1, got {factor:g}")
    shape = tuple(max(1, int(round(n / factor))) for n in image.shape)
    return fourier_crop(image, shape), WorkingFrame(tuple(image.shape), shape)


def factor_for_pixel_size(pixel_size: float, target_pixel_size: float) -> float:
    """Downsampling factor that takes ``pixel_size`` Å/px to ``target_pixel_size`` (never upsamples)."""
    return max(1.0, target_pixel_size / pixel_size)


def factor_for_diameter(diameter_px: float, target_diameter_px: float) -> float:
    """Downsampling factor so a particle of ``diameter_px`` becomes ``target_diameter_px`` wide."""
    if diameter_px <= 0:
        raise CryopickError(f"particle diameter must be positive, got {diameter_px:g} px")
    return max(1.0, diameter_px / target_diameter_px)


def normalize(image: np.ndarray, clip_sigma: float = 4.0, sample: int = 1_000_000) -> np.ndarray:
    """Robust zero-mean, unit-variance normalisation.

    Centre by the median and scale by 1.4826 × MAD (the σ of Gaussian noise), estimated on at most
    ``sample`` pixels, then clip to ±``clip_sigma`` so hot pixels, carbon and ice crystals do not
    dominate. Constant images come back as zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    flat = image.ravel()
    if flat.size > sample:
        flat = flat[:: flat.size // sample]
    med = float(np.median(flat))
    mad = float(np.median(np.abs(flat - med))) * 1.4826
    if not np.isfinite(mad) or mad <= 0:
        std = float(flat.std())
        mad = std if std > 0 else 1.0
    out = (image - med) / mad
    if clip_sigma:
        np.clip(out, -clip_sigma, clip_sigma, out=out)
    return out.astype(np.float32, copy=False)


def lowpass(image: np.ndarray, cutoff: float, falloff: float = 0.05) -> np.ndarray:
    """Low-pass filter with a raised-cosine edge.

    Parameters
    ----------
    cutoff
        Cut-off frequency in cycles per pixel (0.5 = Nyquist, i.e. no filtering).
    falloff
        Width of the cosine edge, cycles per pixel.
    """
    image = np.asarray(image, dtype=np.float32)
    freqs = np.meshgrid(
        *[np.fft.fftfreq(n) for n in image.shape[:-1]], np.fft.rfftfreq(image.shape[-1]), indexing="ij"
    )
    radius = np.sqrt(sum(f**2 for f in freqs))
    edge = np.clip((radius - cutoff) / max(falloff, 1e-6), 0, 1)
    mask = 0.5 * (1 + np.cos(np.pi * edge))
    return np.fft.irfftn(np.fft.rfftn(image) * mask, s=image.shape, axes=tuple(range(image.ndim))).astype(np.float32)


def highpass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Remove gradients (ice thickness) slower than ``sigma_px`` pixels by subtracting a Gaussian blur."""
    from scipy.ndimage import gaussian_filter

    image = np.asarray(image, dtype=np.float32)
    return image - gaussian_filter(image, sigma_px, mode="reflect")


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Map any integer indices into ``[0, length)`` by mirror reflection without edge repeat."""
    index = np.asarray(index)
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    index = np.mod(index, period)
    return np.where(index >= length, period - index, index)


def read_block(volume, starts: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Read ``volume[s:s+n]`` on each axis with reflection outside the volume, as float32."""
    slices, index = [], []
    for s, n, length in zip(starts, size, volume.shape):
        idx = reflect_index(np.arange(s, s + n), length)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        slices.append(slice(lo, hi))
        index.append(idx - lo)
    block = np.asarray(volume[tuple(slices)], dtype=np.float32)
    return block[np.ix_(*index)]


def cut_cube(volume, centre_xyz: Sequence[float], size: int) -> np.ndarray:
    """The ``size``³ block of ``volume`` (``(D, H, W)``) centred on the voxel nearest ``centre_xyz``.

    ``centre_xyz`` is ``x, y, z`` in voxels (0-based, voxel centres); the block starts at
    ``round(centre) - size // 2`` on each axis and is read with mirror reflection outside the volume.
    Returns float32 ``(size, size, size)`` indexed ``[z, y, x]``.
    """
    start = np.round(np.asarray(centre_xyz, float)[::-1]).astype(int) - size // 2
    return read_block(volume, tuple(int(s) for s in start), (size,) * 3)


def diameter_in_pixels(diameter: float, unit: str = "px", pixel_size: float | None = None,
                       source: str = "--diameter") -> float:
    """Convert a user diameter to original pixels (``unit`` = ``"px"`` or ``"A"``/``"Å"``)."""
    unit = unit.lower()
    if unit in ("px", "pixel", "pixels"):
        return float(diameter)
    if unit in ("a", "å", "angstrom", "angstroms"):
        if not pixel_size:
            raise CryopickError(
                f"{source} is in Å but the pixel size is unknown; give --pixel-size (Å/px) or the diameter in pixels"
            )
        return float(diameter) / float(pixel_size)
    raise CryopickError(f"unknown diameter unit {unit!r}; use 'px' or 'A'")
