"""A slice montage of 3D picks: a few z-sections through a tomogram with a circle at each pick.

The tomogram's depth is cut into ``n_slices`` equal z-ranges; each panel shows the mean of the
sections within one particle radius of its range's centre (a thin slab: particles stand out of the
noise) and a circle of the particle's diameter at every pick whose centre lies in that range — solid
when the centre is within the shown slab, dashed when it lies above or below it. Circle colour =
score (colour bar). Every pick appears in exactly one panel.

:func:`write_question_png`: the three orthogonal slices through one question of ``cryopick ask3d``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from cryopick.io.atomic import write_bytes
from cryopick.io.images import Image
from cryopick.picks import Picks


def write_montage(image: Image, picks: Picks, path: str | os.PathLike, *, label: str = "", n_slices: int = 6,
                  max_pixels: int = 360) -> Path:
    """Write the montage PNG of ``picks`` (voxels of ``image`` as stored) to ``path``, atomically.

    ``max_pixels``: sections larger than this are shown subsampled (edge length in pixels per panel).
    """
    path = Path(path)
    write_bytes(path, montage_png(image, picks, label=label, n_slices=n_slices, max_pixels=max_pixels))
    return path


def montage_png(image: Image, picks: Picks, *, label: str = "", n_slices: int = 6, max_pixels: int = 360) -> bytes:
    """The montage of :func:`write_montage` as PNG bytes (drawn where the tomogram is, e.g. on a Dask
    worker, and written by the client)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Circle

    depth, height, width = (int(s) for s in image.shape)
    coords = picks.coords if len(picks) else np.zeros((0, 3))
    diam = picks.table["diameter"].to_numpy(float) if len(picks) else np.zeros(0)
    finite = diam[np.isfinite(diam) & (diam > 0)]
    radius = 0.5 * float(np.median(finite)) if len(finite) else max(3.0, 0.03 * min(height, width))
    n = max(1, min(int(n_slices), depth))
    edges = np.linspace(0, depth, n + 1)
    step = max(1, math.ceil(max(height, width) / max_pixels))
    scores = picks.scores if len(picks) else np.zeros(0)
    ok = np.isfinite(scores)
    lo, hi = (float(scores[ok].min()), float(scores[ok].max())) if ok.any() else (0.0, 1.0)
    lo, hi = (min(lo, 0.0), max(hi, 1.0)) if lo >= -1 else (lo, hi)
    norm = matplotlib.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    cmap = plt.get_cmap("viridis")
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    aspect = height / max(width, 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols + 0.8, 3.3 * nrows * aspect + 0.7), dpi=100,
                             squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        z_lo, z_hi = edges[k], edges[k + 1]
        centre = 0.5 * (z_lo + z_hi)
        s0 = int(max(0, math.floor(centre - radius)))
        s1 = int(min(depth, max(s0 + 1, math.ceil(centre + radius))))
        section = np.asarray(image.data[s0:s1, ::step, ::step], dtype=np.float32).mean(axis=0)
        good = np.isfinite(section)
        vmin, vmax = np.percentile(section[good], [1, 99]) if good.any() else (0.0, 1.0)
        ax.imshow(section, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest",
                  extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        inside = (coords[:, 2] >= z_lo) & ((coords[:, 2] < z_hi) | ((k == n - 1) & (coords[:, 2] <= z_hi)))
        for (x, y, z), s in zip(coords[inside], scores[inside]):
            colour = cmap(norm(s)) if np.isfinite(s) else "#ff4040"
            near = s0 - 0.5 <= z <= s1 - 0.5
            ax.add_patch(Circle((x, y), radius, fill=False, lw=1.3, ec=colour, ls="-" if near else "--"))
        ax.set_title(f"z {s0}–{s1 - 1} (picks z {z_lo:.0f}–{z_hi:.0f}): {int(inside.sum())}", fontsize=8)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="score")
    what = f"{label}: " if label else ""
    fig.suptitle(f"{image.name} — {what}{len(picks)} picks (solid: centre in the shown slab)", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_question_png(image, xyz, diameter: float, path: Path, title: str = "") -> Path:
    """Three orthogonal slices (xy, xz, yz) through ``xyz`` (voxels of ``image`` as stored), a box of
    three diameters (at least 32 voxels), each the mean of the slices within a quarter diameter, a
    circle of the ``diameter`` (stored voxels) at the centre."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Circle

    from cryopick.io.atomic import atomic_path
    from cryopick.preprocess import cut_cube

    half = max(16, int(math.ceil(1.5 * diameter)))
    cube = cut_cube(image.data, xyz, 2 * half + 1).astype(np.float32)  # (z, y, x)
    t = max(0, int(round(diameter / 4)))
    c = slice(half - t, half + t + 1)
    views = (("xy (z = %.0f)" % xyz[2], cube[c].mean(0)), ("xz (y = %.0f)" % xyz[1], cube[:, c].mean(1)),
             ("yz (x = %.0f)" % xyz[0], cube[:, :, c].mean(2)))
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8), dpi=100)
    for ax, (name, img) in zip(axes, views):
        lo, hi = np.percentile(img, [1, 99])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.add_patch(Circle((half, half), diameter / 2, fill=False, ec="#ffcc00", lw=1.2, ls="--"))
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title or f"x, y, z = {xyz[0]:.0f}, {xyz[1]:.0f}, {xyz[2]:.0f}", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
