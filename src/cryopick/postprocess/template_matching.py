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
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cryopick.config import check, check_number, configure, is_number, set_field
from cryopick.postprocess.peaks import find_peaks
from cryopick.postprocess.rotations import rotate_template, rotation_matrices, rotations_2d, rotations_3d

# match_template and TemplateSearch are this module's own; the others are re-exported from where they now live
# (cryopick.postprocess.rotations, cryopick.postprocess.peaks) for existing imports.
__all__ = ["TemplateSearch", "match_template", "rotations_2d", "rotations_3d", "rotation_matrices", "rotate_template", "find_peaks"]


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


@dataclass(frozen=True)
class TemplateSearch:
    """How :func:`match_template` spends memory and time (none of it changes the scores).

    ``batch_size``: rotations per batch (``None``: from ``memory_mb``); ``tile``: tile edge in voxels (an int or
    one per axis; ``None``: the whole volume without a mask, else the edge that minimises the estimated work for
    the mask, small tiles for sparse masks); ``fill_value``: score written outside the mask; ``memory_mb``:
    rough budget (MiB) for the batched spectra.
    """

    batch_size: int | None = None
    tile: int | tuple[int, ...] | None = None
    fill_value: float = -np.inf
    memory_mb: float = 512.0

    def __post_init__(self) -> None:
        check_number(self, "batch_size", 1, integer=True, optional=True)
        tile = self.tile
        if tile is not None:
            tiles = list(tile) if isinstance(tile, (list, tuple)) else [tile]
            check(self, "tile", len(tiles) > 0 and all(is_number(t, integer=True) and t >= 1 for t in tiles),
                  "None, a whole number >= 1 or one per axis")
            set_field(self, "tile", tuple(int(t) for t in tile) if isinstance(tile, (list, tuple)) else int(tile))
        check(self, "fill_value", isinstance(self.fill_value, numbers.Real) and not isinstance(self.fill_value, bool),
              "a number")
        check_number(self, "memory_mb", 0, strict_lo=True)


def match_template(volume, template, rotations=None, mask=None, template_mask=None, config: TemplateSearch | None = None,
                   *, device: str | torch.device | None = None, progress: bool = False,
                   **options) -> tuple[np.ndarray, np.ndarray]:
    """Max-over-rotations normalised cross-correlation of ``template`` with ``volume``.

    ``volume``: ``(H, W)`` or ``(D, H, W)`` image (numpy or torch), any scale (mean-centred internally);
    ``template``: same dimensionality, each axis ``<=`` the volume's, with the same contrast; ``rotations``:
    ``None`` (no rotation), an int (number of rotations), 2D angles in degrees, or ``(K, d, d)`` matrices (see
    :func:`rotation_matrices`, :func:`rotations_2d`, :func:`rotations_3d`); ``mask``: optional boolean array of
    the volume's shape, only voxels inside are scored (outside: ``fill_value`` and index ``-1``) and only tiles
    touching it are computed; ``template_mask``: optional array of the template's shape (nonzero = inside;
    default the inscribed disk / ball), rotated with the template (nearest neighbour) unless every rotation maps
    it onto itself. ``config``: the :class:`TemplateSearch` (batch size, tile, fill value, memory budget); its
    fields may also be given as keywords (``tile=8``), which replace those of ``config``. ``device``: torch device
    (default the volume's if a tensor, else CPU); ``progress``: a tqdm bar over rotation batches.

    Returns ``(scores, rotation_index)``: volume-shaped float32 NCC in ``[-1, 1]`` maximised over rotations, and
    int64 index of the best rotation (``-1`` outside ``mask``).
    """
    cfg = configure(TemplateSearch, config, options, "match_template")
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
    tmask_t, custom_mask = _template_mask(template_mask, tshape, mats, device)
    mask_np = _volume_mask(mask, shape)
    grid = _TileGrid(vol, tshape, mask_np, cfg.tile)
    scores = torch.full(shape, -np.inf, dtype=torch.float32, device=device)
    best = torch.full(shape, -1, dtype=torch.int64, device=device)
    if not grid.origins:
        return _finish(scores, best, mask_np, cfg.fill_value)
    if float(tmask_t.sum()) < 2:
        raise ValueError("template mask has fewer than 2 voxels")
    search = _Search(grid, tmpl, tmask_t, custom_mask, cfg.memory_mb)
    batch_size = cfg.batch_size
    if batch_size is None:
        per_rot = search.n_spec * 8 * 2 + int(np.prod(grid.fshape)) * 4 * 2  # spectrum product + inverse output
        batch_size = int(max(1, min(len(mats), cfg.memory_mb * 2**20 // max(per_rot, 1))))
    batches = range(0, len(mats), batch_size)
    for start in tqdm(batches, desc="template matching", unit="batch", disable=not progress):
        search.batch(mats[start : start + batch_size], start, scores, best)
    return _finish(scores, best, mask_np, cfg.fill_value)


def _template_mask(template_mask, tshape: tuple[int, ...], mats, device) -> tuple[torch.Tensor, bool]:
    """The template mask as a 0/1 tensor, and whether it must be rotated with the template (``False`` when every
    rotation maps it onto itself: a centred lattice ball, or a mask the given rotations keep; then the local
    statistics are shared over rotations, 3x less work, and a ball stays a ball)."""
    custom_mask = template_mask is not None
    tmask = np.asarray(template_mask if custom_mask else _default_template_mask(tshape), dtype=np.float32)
    if tmask.shape != tshape:
        raise ValueError(f"template_mask shape {tmask.shape} != template shape {tshape}")
    tmask_t = torch.as_tensor(tmask > 0, dtype=torch.float32, device=device)
    if custom_mask:
        same = _is_centred_ball(tmask > 0) or all(
            bool(torch.equal((rotate_template(tmask_t, mats[i: i + 256], order="nearest") > 0.5).float(),
                             tmask_t.expand(len(mats[i: i + 256]), *tshape)))
            for i in range(0, len(mats), 256)
        )
        custom_mask = not same
    return tmask_t, custom_mask


def _volume_mask(mask, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    mask_np = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask).astype(bool)
    if mask_np.shape != shape:
        raise ValueError(f"mask shape {mask_np.shape} != volume shape {shape}")
    return mask_np


class _TileGrid:
    """The mean-centred volume cut into tiles, padded for a valid correlation with the template: tile ``o``'s
    region is ``padded[o * tile : o * tile + tile + template - 1]`` (padded ``P[i] = I[i - c]``, ``c`` the
    template centre); ``origins`` are the tiles that need computing (those touching the mask)."""

    def __init__(self, vol: torch.Tensor, tshape: tuple[int, ...], mask_np: np.ndarray | None, tile) -> None:
        shape = tuple(vol.shape)
        if tile is None:
            tiles = shape if mask_np is None else _auto_tile(mask_np, tshape)
        else:
            tiles = tuple(int(tile) for _ in shape) if np.isscalar(tile) else tuple(int(t) for t in tile)
            tiles = tuple(min(max(1, t), n) for t, n in zip(tiles, shape))
        centre = [t // 2 for t in tshape]
        counts = [math.ceil(n / s) for n, s in zip(shape, tiles)]
        vol = vol - vol.mean()
        pad = []
        for n, s, t, c, k in reversed(list(zip(shape, tiles, tshape, centre, counts))):
            pad += [c, k * s + t - 1 - c - n]
        self.padded = F.pad(vol[None, None], pad)[0, 0]
        self.shape, self.tiles = shape, tiles
        self.region = tuple(s + t - 1 for s, t in zip(tiles, tshape))
        self.fshape = tuple(scipy.fft.next_fast_len(r, real=True) for r in self.region)
        self.axes = tuple(range(-len(shape), 0))
        origins = [tuple(o) for o in np.ndindex(*counts)]
        if mask_np is not None:
            origins = [o for o in origins
                       if mask_np[tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(o, tiles, shape))].any()]
        self.origins = origins

    def region_of(self, o) -> torch.Tensor:
        return self.padded[tuple(slice(i * s, i * s + r) for i, s, r in zip(o, self.tiles, self.region))]

    def out_slices(self, o):
        dst = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(o, self.tiles, self.shape))
        return dst, tuple(slice(0, d.stop - d.start) for d in dst)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:  # real (..., *region-or-smaller) -> rfft at fshape
        return torch.fft.rfftn(x, s=self.fshape, dim=self.axes)

    def valid(self, x: torch.Tensor) -> torch.Tensor:  # the valid part, (..., *tiles)
        return x[(..., *[slice(0, s) for s in self.tiles])]

    def correlate(self, img_spec: torch.Tensor, kern_spec: torch.Tensor) -> torch.Tensor:
        return self.valid(torch.fft.irfftn(img_spec * kern_spec.conj(), s=self.fshape, dim=self.axes))

    def local_std(self, img_region: torch.Tensor, mask_spec64: torch.Tensor, n_in) -> torch.Tensor:
        """Std of the image under the (rotated) template mask at every position, in float64: E[I^2] - E[I]^2
        cancels badly in float32."""
        r64 = img_region.double()
        s1 = torch.fft.irfftn(torch.fft.rfftn(r64, s=self.fshape, dim=self.axes) * mask_spec64.conj(), s=self.fshape,
                              dim=self.axes)
        s2 = torch.fft.irfftn(torch.fft.rfftn(r64 * r64, s=self.fshape, dim=self.axes) * mask_spec64.conj(),
                              s=self.fshape, dim=self.axes)
        var = self.valid(s2) / n_in - (self.valid(s1) / n_in) ** 2
        return torch.sqrt(torch.clamp(var, min=0.0)).float()


class _Search:
    """One rotation batch at a time over every tile: normalised rotated templates, correlation, local
    normalisation, and the running maximum over rotations. Tile spectra (and, for a shared mask, the local
    std) are computed once and cached while they fit in ``4 * memory_mb``."""

    def __init__(self, grid: _TileGrid, tmpl, tmask_t, custom_mask: bool, memory_mb: float) -> None:
        self.grid, self.tmpl, self.tmask_t, self.custom_mask = grid, tmpl, tmask_t, custom_mask
        self.n_tmask = float(tmask_t.sum())
        self.mask_spec64 = torch.fft.rfftn(tmask_t.double(), s=grid.fshape, dim=grid.axes)
        self.n_spec = int(np.prod(grid.fshape[:-1])) * (grid.fshape[-1] // 2 + 1)
        self.cache_ok = len(grid.origins) * self.n_spec * 8 <= 4 * memory_mb * 2**20
        self.cache: dict = {}

    def tile_data(self, o):
        if o in self.cache:
            return self.cache[o]
        reg = self.grid.region_of(o)
        spec = self.grid.spectrum(reg)
        std = None if self.custom_mask else self.grid.local_std(reg, self.mask_spec64, self.n_tmask)
        if self.cache_ok:
            self.cache[o] = (reg, spec, std)
        return reg, spec, std

    def batch(self, m, start: int, scores: torch.Tensor, best: torch.Tensor) -> None:
        grid, axes, ndim = self.grid, self.grid.axes, len(self.grid.shape)
        rot = rotate_template(self.tmpl, m)  # (B, *tshape)
        rmask = rotate_template(self.tmask_t, m, order="nearest") if self.custom_mask else self.tmask_t.expand_as(rot)
        rmask = (rmask > 0.5).float()
        n_in = rmask.sum(dim=axes, keepdim=True).clamp(min=1.0)
        mean = (rot * rmask).sum(dim=axes, keepdim=True) / n_in
        cen = (rot - mean) * rmask
        sd = torch.sqrt((cen**2).sum(dim=axes, keepdim=True) / n_in).clamp(min=1e-12)
        kern_spec = grid.spectrum(cen / sd)  # (B, ...)
        if self.custom_mask:
            rmask_spec64 = torch.fft.rfftn(rmask.double(), s=grid.fshape, dim=axes)
            n_in_flat = n_in.reshape(-1, *([1] * ndim)).double()
        for o in grid.origins:
            reg, spec, std = self.tile_data(o)
            num = grid.correlate(spec, kern_spec)  # (B, *tiles)
            if self.custom_mask:
                denom = n_in.reshape(-1, *([1] * ndim)) * grid.local_std(reg, rmask_spec64, n_in_flat)
            else:
                denom = self.n_tmask * std[None]
            ncc = torch.where(denom > 1e-6 * self.n_tmask, num / denom.clamp(min=1e-30), torch.zeros_like(num))
            val, idx = ncc.max(dim=0)
            dst, src = grid.out_slices(o)
            val, idx = val[src], idx[src] + start
            cur = scores[dst]
            better = val > cur
            scores[dst] = torch.where(better, val, cur)
            best[dst] = torch.where(better, idx, best[dst])


def _finish(scores: torch.Tensor, best: torch.Tensor, mask_np, fill_value: float):
    s = scores.cpu().numpy().astype(np.float32)
    b = best.cpu().numpy().astype(np.int64)
    if mask_np is not None:
        s[~mask_np] = fill_value
        b[~mask_np] = -1
    else:
        s[~np.isfinite(s)] = fill_value
    return s, b
