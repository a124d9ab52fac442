"""N-D (2D and 3D) FFT normalised cross-correlation with batched template rotations, in torch.

Conventions
-----------
- Arrays are numpy order: ``(H, W)`` micrographs, ``(D, H, W)`` tomograms. Rotations act on
  coordinates in ``x, y[, z]`` order (x = column), the order of :class:`cryopick.picks.Picks`.
- The template's centre is the voxel ``shape // 2`` on every axis (the exact middle for odd sizes).
  ``scores[p]`` is the correlation with the template centred on voxel ``p``, so a peak is directly a
  particle centre.
- A rotation ``R`` (``(d, d)`` matrix) maps the template to ``T_R(c + u) = T(c + R^T u)``: the
  object in the template turned by ``R``. ``rotation_index[p] = k`` means the best match at ``p``
  is the template turned by ``rotations[k]``. In 2D an angle ``a`` (degrees) is
  ``R = [[cos a, -sin a], [sin a, cos a]]`` in the ``(x, y)`` plane.
- Score: the masked (local) normalised cross-correlation of Roseman (2003) / Padfield (2012):
  the template is normalised to zero mean and unit variance inside its mask, the image is
  normalised by its local mean and standard deviation under the same mask at every position.
  Scores lie in ``[-1, 1]``; where the image is flat under the mask the score is 0. The image
  outside its borders is taken as its global mean.

Rotation sets and template rotation live in :mod:`cryopick.postprocess.rotations`, peak finding
in :mod:`cryopick.postprocess.peaks` (both re-exported here).

Speed
-----
The image spectrum is computed once per tile; rotated templates are made on the fly with
``grid_sample`` in batches; the per-batch work is one batched complex product and one batched
inverse FFT. With ``mask`` the image is cut into tiles and only tiles that contain mask voxels are
computed; the result inside the mask is identical to the unmasked result (up to float rounding).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cryopick.postprocess.peaks import find_peaks
from cryopick.postprocess.rotations import rotate_template, rotation_matrices, rotations_2d, rotations_3d

# match_template is this module's own; the others are re-exported from where they now live
# (cryopick.postprocess.rotations, cryopick.postprocess.peaks) for existing imports.
__all__ = ["match_template", "rotations_2d", "rotations_3d", "rotation_matrices", "rotate_template", "find_peaks"]


# -- matching ----------------------------------------------------------------------------------------
def _default_template_mask(shape: Sequence[int]) -> np.ndarray:
    """Disk / ball inscribed in the template box, centred on ``shape // 2`` (rotation invariant)."""
    radius = min(shape) / 2.0
    grids = np.meshgrid(*[np.arange(s) - s // 2 for s in shape], indexing="ij")
    return (sum(g.astype(np.float64) ** 2 for g in grids) <= (radius - 0.5) ** 2 + 1e-9).astype(np.float32)


def _is_centred_ball(mask: np.ndarray) -> bool:
    """True when ``mask`` is exactly the lattice points within some radius of ``shape // 2`` and that
    ball fits inside the box (so every rotation maps it onto itself)."""
    if not mask.any():
        return False
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in mask.shape], indexing="ij")
    d2 = sum(g.astype(np.float64) ** 2 for g in grids)
    r2_in = d2[mask].max()
    r2_out = d2[~mask].min() if (~mask).any() else np.inf
    room = min(min(n // 2, n - 1 - n // 2) for n in mask.shape)
    return bool(r2_in < r2_out and r2_in <= room**2)


def _auto_tile(mask: np.ndarray, tshape: Sequence[int], overhead_voxels: float = 2e4) -> tuple[int, ...]:
    """Tile edge minimising the estimated work for ``mask``: (tiles touching the mask) × (FFT size
    of a tile plus its template halo, plus a fixed per-tile overhead). Sparse masks get small
    tiles, dense ones large tiles (up to the whole volume)."""
    shape = mask.shape
    best, best_cost = tuple(shape), None
    for edge in (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, max(shape)):
        tiles = tuple(min(edge, n) for n in shape)
        counts = [math.ceil(n / t) for n, t in zip(shape, tiles)]
        padded = np.zeros([c * t for c, t in zip(counts, tiles)], dtype=bool)
        padded[tuple(slice(0, n) for n in shape)] = mask
        blocks = padded.reshape([x for c, t in zip(counts, tiles) for x in (c, t)])
        touched = int(blocks.any(axis=tuple(range(1, 2 * len(shape), 2))).sum())
        fft = float(np.prod([scipy.fft.next_fast_len(t + k - 1, real=True) for t, k in zip(tiles, tshape)]))
        cost = touched * (fft * math.log2(max(fft, 2.0)) + overhead_voxels)
        if best_cost is None or cost < best_cost:
            best, best_cost = tiles, cost
    return best


def match_template(
    volume,
    template,
    rotations=None,
    mask=None,
    template_mask=None,
    *,
    batch_size: int | None = None,
    tile: int | Sequence[int] | None = None,
    device: str | torch.device | None = None,
    fill_value: float = -np.inf,
    memory_mb: float = 512.0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Max-over-rotations normalised cross-correlation of ``template`` with ``volume``.

    Parameters
    ----------
    volume
        ``(H, W)`` or ``(D, H, W)`` image (numpy or torch). Any scale; it is mean-centred internally.
    template
        Same dimensionality, each axis ``<=`` the volume's. Contrast must match the volume
        (e.g. both with dark or both with bright particles).
    rotations
        ``None`` (no rotation), an int (number of rotations), 2D angles in degrees, or
        ``(K, d, d)`` matrices; see :func:`rotation_matrices`, :func:`rotations_2d`, :func:`rotations_3d`.
    mask
        Optional boolean array of the volume's shape. Only voxels inside it are scored; outside,
        ``scores = fill_value`` and ``rotation_index = -1``. Only tiles that touch the mask are
        computed, so a sparse mask is proportionally cheaper.
    template_mask
        Optional array of the template's shape (nonzero = inside); default: the inscribed disk/ball.
        A non-default mask is rotated with the template (nearest neighbour); if every rotation
        maps it onto itself (a centred sphere) the local statistics are shared over rotations.
    batch_size
        Rotations per batch; default from ``memory_mb``.
    tile
        Tile edge in voxels (int or per-axis); default: the whole volume without ``mask``, else
        the edge that minimises the estimated work for that mask (small tiles for sparse masks).
    device
        Torch device; default the volume's device if it is a tensor, else CPU.
    fill_value
        Score written outside ``mask``.
    memory_mb
        Rough budget for the batched spectra (MiB).
    progress
        Show a tqdm bar over rotation batches.

    Returns
    -------
    scores : np.ndarray
        Volume-shaped float32, NCC in ``[-1, 1]`` maximised over rotations.
    rotation_index : np.ndarray
        Volume-shaped int64, index into the rotation matrices of the best rotation (``-1`` outside ``mask``).
    """
    if device is None:
        device = volume.device if torch.is_tensor(volume) else torch.device("cpu")
    vol = torch.as_tensor(volume if torch.is_tensor(volume) else np.asarray(volume), dtype=torch.float32, device=device)
    tmpl = torch.as_tensor(template if torch.is_tensor(template) else np.asarray(template), dtype=torch.float32,
                           device=device)
    ndim = vol.ndim
    if ndim not in (2, 3) or tmpl.ndim != ndim:
        raise ValueError(f"volume and template must both be 2D or both 3D, got {tuple(vol.shape)} and {tuple(tmpl.shape)}")
    shape, tshape = tuple(vol.shape), tuple(tmpl.shape)
    if any(t > n for t, n in zip(tshape, shape)):
        raise ValueError(f"template {tshape} is larger than the volume {shape}")
    mats = rotation_matrices(rotations, ndim)

    custom_mask = template_mask is not None
    tmask = np.asarray(template_mask if custom_mask else _default_template_mask(tshape), dtype=np.float32)
    if tmask.shape != tshape:
        raise ValueError(f"template_mask shape {tmask.shape} != template shape {tshape}")
    tmask_t = torch.as_tensor(tmask > 0, dtype=torch.float32, device=device)
    if custom_mask:
        # A mask that every rotation maps onto itself (a centred lattice ball, or any mask that the
        # given rotations map exactly onto itself) shares the local statistics over rotations:
        # 3x less work than recomputing them per rotation, and a ball stays a ball.
        same = _is_centred_ball(tmask > 0) or all(
            bool(torch.equal((rotate_template(tmask_t, mats[i: i + 256], order="nearest") > 0.5).float(),
                             tmask_t.expand(len(mats[i: i + 256]), *tshape)))
            for i in range(0, len(mats), 256)
        )
        custom_mask = not same

    if mask is not None:
        mask_np = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask).astype(bool)
        if mask_np.shape != shape:
            raise ValueError(f"mask shape {mask_np.shape} != volume shape {shape}")
    else:
        mask_np = None

    if tile is None:
        tiles = shape if mask_np is None else _auto_tile(mask_np, tshape)
    else:
        tiles = tuple(int(tile) for _ in shape) if np.isscalar(tile) else tuple(int(t) for t in tile)
        tiles = tuple(min(max(1, t), n) for t, n in zip(tiles, shape))
    centre = [t // 2 for t in tshape]
    # Padded image P[i] = I[i - c]; the region of a tile at origin o is P[o : o + s + t - 1].
    counts = [math.ceil(n / s) for n, s in zip(shape, tiles)]
    vol = vol - vol.mean()
    pad = []
    for n, s, t, c, k in reversed(list(zip(shape, tiles, tshape, centre, counts))):
        pad += [c, k * s + t - 1 - c - n]
    padded = F.pad(vol[None, None], pad)[0, 0]

    region = tuple(s + t - 1 for s, t in zip(tiles, tshape))
    fshape = tuple(scipy.fft.next_fast_len(r, real=True) for r in region)
    axes = tuple(range(-ndim, 0))

    # Tile origins that need computing.
    origins = [tuple(o) for o in np.ndindex(*counts)]
    if mask_np is not None:
        keep = []
        for o in origins:
            sl = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(o, tiles, shape))
            if mask_np[sl].any():
                keep.append(o)
        origins = keep
    scores = torch.full(shape, -np.inf, dtype=torch.float32, device=device)
    best = torch.full(shape, -1, dtype=torch.int64, device=device)
    if not origins:
        return _finish(scores, best, mask_np, fill_value)

    n_tmask = float(tmask_t.sum())
    if n_tmask < 2:
        raise ValueError("template mask has fewer than 2 voxels")

    def region_of(o):
        sl = tuple(slice(i * s, i * s + r) for i, s, r in zip(o, tiles, region))
        return padded[sl]

    def out_slices(o):
        dst = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(o, tiles, shape))
        src = tuple(slice(0, d.stop - d.start) for d in dst)
        return dst, src

    def spectrum(x):  # real (..., *region-or-smaller) -> rfft at fshape
        return torch.fft.rfftn(x, s=fshape, dim=axes)

    def correlate(img_spec, kern_spec):  # valid correlation, (..., *tiles)
        out = torch.fft.irfftn(img_spec * kern_spec.conj(), s=fshape, dim=axes)
        return out[(..., *[slice(0, s) for s in tiles])]

    # Local mean / std of the image under the template mask (shared over rotations when the mask is
    # rotation invariant). Computed in float64: E[I^2] - E[I]^2 cancels badly in float32.
    def local_std(img_region, mask_spec64):
        r64 = img_region.double()
        s1 = torch.fft.irfftn(torch.fft.rfftn(r64, s=fshape, dim=axes) * mask_spec64.conj(), s=fshape, dim=axes)
        s2 = torch.fft.irfftn(torch.fft.rfftn(r64 * r64, s=fshape, dim=axes) * mask_spec64.conj(), s=fshape, dim=axes)
        sl = (..., *[slice(0, s) for s in tiles])
        var = s2[sl] / n_tmask - (s1[sl] / n_tmask) ** 2
        std = torch.sqrt(torch.clamp(var, min=0.0))
        return std.float()

    mask_spec64 = torch.fft.rfftn(tmask_t.double(), s=fshape, dim=axes)
    n_spec = int(np.prod(fshape[:-1])) * (fshape[-1] // 2 + 1)
    if batch_size is None:
        per_rot = n_spec * 8 * 2 + int(np.prod(fshape)) * 4 * 2  # spectrum product + inverse output
        batch_size = int(max(1, min(len(mats), memory_mb * 2**20 // max(per_rot, 1))))
    cache_ok = len(origins) * n_spec * 8 <= 4 * memory_mb * 2**20
    tile_cache: dict = {}

    def tile_data(o):
        if o in tile_cache:
            return tile_cache[o]
        reg = region_of(o)
        spec = spectrum(reg)
        std = None if custom_mask else local_std(reg, mask_spec64)
        if cache_ok:
            tile_cache[o] = (reg, spec, std)
        return reg, spec, std

    batches = range(0, len(mats), batch_size)
    for start in tqdm(batches, desc="template matching", unit="batch", disable=not progress):
        m = mats[start : start + batch_size]
        rot = rotate_template(tmpl, m)  # (B, *tshape)
        rmask = rotate_template(tmask_t, m, order="nearest") if custom_mask else tmask_t.expand_as(rot)
        rmask = (rmask > 0.5).float()
        n_in = rmask.sum(dim=axes, keepdim=True).clamp(min=1.0)
        mean = (rot * rmask).sum(dim=axes, keepdim=True) / n_in
        cen = (rot - mean) * rmask
        sd = torch.sqrt((cen**2).sum(dim=axes, keepdim=True) / n_in).clamp(min=1e-12)
        kern_spec = spectrum(cen / sd)  # (B, ...)
        if custom_mask:
            rmask_spec64 = torch.fft.rfftn(rmask.double(), s=fshape, dim=axes)
            n_in_flat = n_in.reshape(-1, *([1] * ndim)).double()
        for o in origins:
            reg, spec, std = tile_data(o)
            num = correlate(spec, kern_spec)  # (B, *tiles)
            if custom_mask:
                r64 = reg.double()
                s1 = torch.fft.irfftn(torch.fft.rfftn(r64, s=fshape, dim=axes) * rmask_spec64.conj(), s=fshape, dim=axes)
                s2 = torch.fft.irfftn(torch.fft.rfftn(r64 * r64, s=fshape, dim=axes) * rmask_spec64.conj(), s=fshape,
                                      dim=axes)
                sl = (..., *[slice(0, s) for s in tiles])
                var = s2[sl] / n_in_flat - (s1[sl] / n_in_flat) ** 2
                std_b = torch.sqrt(torch.clamp(var, min=0.0)).float()
                denom = n_in.reshape(-1, *([1] * ndim)) * std_b
            else:
                denom = n_tmask * std[None]
            ncc = torch.where(denom > 1e-6 * n_tmask, num / denom.clamp(min=1e-30), torch.zeros_like(num))
            val, idx = ncc.max(dim=0)
            dst, src = out_slices(o)
            val, idx = val[src], idx[src] + start
            cur = scores[dst]
            better = val > cur
            scores[dst] = torch.where(better, val, cur)
            best[dst] = torch.where(better, idx, best[dst])
    return _finish(scores, best, mask_np, fill_value)


def _finish(scores: torch.Tensor, best: torch.Tensor, mask_np, fill_value: float):
    s = scores.cpu().numpy().astype(np.float32)
    b = best.cpu().numpy().astype(np.int64)
    if mask_np is not None:
        s[~mask_np] = fill_value
        b[~mask_np] = -1
    else:
        s[~np.isfinite(s)] = fill_value
    return s, b
