"""Contrast transfer function (weak-phase approximation) for 2D micrographs and 3D tomograms.

Conventions
-----------
- Defocus in Å, **positive = underfocus** (RELION / CTFFIND convention).
- ``chi(k) = pi * lambda * defocus(theta) * k^2 - pi/2 * Cs * lambda^3 * k^4 + phase_shift``
  with ``defocus(theta) = (du + dv)/2 + (du - dv)/2 * cos(2 (theta - angle))``.
- ``CTF(k) = -[sqrt(1 - A^2) sin(chi) + A cos(chi)] * exp(-B k^2 / 4)``.

With this sign, an image ``1 + CTF * projected_potential`` shows protein (positive potential)
**dark** at low frequency, as in real underfocused cryo-EM images. Phase flipping multiplies each
frequency by ``-sign(CTF)`` so the corrected transfer is ``-|CTF|``: protein stays dark.

Zeros (Cs = 0): ``chi = n pi - atan(A / sqrt(1 - A^2))`` -> ``k_n = sqrt((n pi - alpha) / (pi lambda df))``.
"""

from __future__ import annotations

import numpy as np


def electron_wavelength(voltage_kv: float = 300.0) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV (300 kV -> 0.01969 Å)."""
    v = voltage_kv * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def frequency_grid(shape: tuple[int, ...], pixel_size: float, rfft: bool = True) -> list[np.ndarray]:
    """Broadcastable spatial-frequency axes (1/Å) in numpy order, for ``rfftn`` (default) or ``fftn``.

    Returns one array per axis, shaped to broadcast against the (r)fft of an array of ``shape``.
    """
    ndim = len(shape)
    axes = []
    for i, n in enumerate(shape):
        f = np.fft.rfftfreq(n, d=pixel_size) if (rfft and i == ndim - 1) else np.fft.fftfreq(n, d=pixel_size)
        view = [1] * ndim
        view[i] = len(f)
        axes.append(f.astype(np.float32).reshape(view))
    return axes


def ctf_1d(k: np.ndarray, defocus: float, voltage_kv: float = 300.0, cs_mm: float = 2.7,
           amplitude_contrast: float = 0.07, phase_shift: float = 0.0, bfactor: float = 0.0) -> np.ndarray:
    """CTF at spatial frequencies ``k`` (1/Å) for ``defocus`` Å (no astigmatism)."""
    k = np.asarray(k, dtype=np.float64)
    return _ctf(k * k, defocus, voltage_kv, cs_mm, amplitude_contrast, phase_shift, bfactor)


def ctf_2d(shape: tuple[int, int], pixel_size: float, defocus_u: float, defocus_v: float | None = None,
           astigmatism_angle: float = 0.0, voltage_kv: float = 300.0, cs_mm: float = 2.7,
           amplitude_contrast: float = 0.07, phase_shift: float = 0.0, bfactor: float = 0.0,
           rfft: bool = True) -> np.ndarray:
    """2D CTF on the (r)fft grid of an image of ``shape`` ``(H, W)``.

    Parameters
    ----------
    defocus_u, defocus_v
        Defocus along the major / minor axes in Å (positive = underfocus). ``defocus_v`` defaults
        to ``defocus_u`` (no astigmatism).
    astigmatism_angle
        Angle of the ``u`` axis from the x axis, degrees.
    phase_shift
        Additional phase shift in radians (phase plate).
    bfactor
        Envelope B-factor in Å².
    """
    defocus_v = defocus_u if defocus_v is None else defocus_v
    ky, kx = frequency_grid(shape, pixel_size, rfft=rfft)
    k2 = kx * kx + ky * ky
    theta = np.arctan2(ky, kx)
    df = 0.5 * (defocus_u + defocus_v) + 0.5 * (defocus_u - defocus_v) * np.cos(2 * (theta - np.radians(astigmatism_angle)))
    return _ctf(k2, df, voltage_kv, cs_mm, amplitude_contrast, phase_shift, bfactor).astype(np.float32)


def ctf_3d(shape: tuple[int, int, int], voxel_size: float, defocus: float, voltage_kv: float = 300.0,
           cs_mm: float = 2.7, amplitude_contrast: float = 0.07, bfactor: float = 0.0) -> np.ndarray:
    """Isotropic 3D CTF ``CTF(|k|)`` on the rfft grid of a volume ``(D, H, W)``.

    In the central-slice picture each tilt image samples a plane of 3D Fourier space, and a 3D
    frequency ``k`` inside that plane is modulated by the tilt image's CTF at ``|k|``; ignoring the
    defocus gradient across tilted images, the reconstruction is the volume filtered by ``CTF(|k|)``.
    """
    kz, ky, kx = frequency_grid(shape, voxel_size, rfft=True)
    k2 = kx * kx + ky * ky + kz * kz
    return _ctf(k2, defocus, voltage_kv, cs_mm, amplitude_contrast, 0.0, bfactor).astype(np.float32)


def _ctf(k2, defocus, voltage_kv, cs_mm, amplitude_contrast, phase_shift, bfactor):
    lam = electron_wavelength(voltage_kv)
    cs = cs_mm * 1e7
    chi = np.pi * lam * defocus * k2 - 0.5 * np.pi * cs * lam**3 * k2 * k2 + phase_shift
    a = amplitude_contrast
    ctf = -(np.sqrt(1.0 - a * a) * np.sin(chi) + a * np.cos(chi))
    if bfactor:
        ctf = ctf * np.exp(-bfactor * k2 / 4.0)
    return ctf


def ctf_zeros(defocus: float, n: int = 3, voltage_kv: float = 300.0, amplitude_contrast: float = 0.07) -> np.ndarray:
    """First ``n`` zeros of the CTF in 1/Å, neglecting spherical aberration (Cs = 0)."""
    lam = electron_wavelength(voltage_kv)
    alpha = np.arctan(amplitude_contrast / np.sqrt(1 - amplitude_contrast**2))
    order = np.arange(1, n + 1)
    return np.sqrt((order * np.pi - alpha) / (np.pi * lam * defocus))


def phase_flip(ctf: np.ndarray) -> np.ndarray:
    """Transfer after phase flipping: ``-|CTF|`` (keeps the low-frequency, dark-protein contrast)."""
    return -np.abs(ctf)


def radial_profile(power: np.ndarray, pixel_size: float, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rotational average of a centred (``fftshift``-ed) full 2D or 3D power spectrum.

    Returns ``(k, mean)`` with ``k`` the bin centres in 1/Å, up to Nyquist.
    """
    shape = power.shape
    grids = np.meshgrid(*[np.fft.fftshift(np.fft.fftfreq(n, d=pixel_size)) for n in shape], indexing="ij")
    k = np.sqrt(sum(g * g for g in grids))
    nyq = 0.5 / pixel_size
    n_bins = n_bins or min(shape) // 2
    edges = np.linspace(0, nyq, n_bins + 1)
    which = np.digitize(k.ravel(), edges) - 1
    ok = (which >= 0) & (which < n_bins)
    total = np.bincount(which[ok], weights=power.ravel()[ok], minlength=n_bins)
    count = np.bincount(which[ok], minlength=n_bins)
    return 0.5 * (edges[1:] + edges[:-1]), total / np.maximum(count, 1)
