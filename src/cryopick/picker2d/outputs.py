"""Outputs of a 2D picking run besides the coordinate files: the output folder check, pick overlays,
the score histogram, ``summary.json``/``summary.csv`` and the RELION ``autopick.star`` index.

Overlays are drawn on a display copy of the micrograph itself (Fourier-cropped so the longest side is
at most :data:`DISPLAY_SIZE` pixels, never the network's working scale), one circle of the particle
diameter per pick, coloured by score with a colour bar, and a dashed frame around the area where picks
are allowed (inside padding bands and the border). Every file is written atomically.

Index paths are written as the user gave them (micrograph paths as listed, the output folder as given),
or relative to ``project_dir`` when one is given; symbolic links are never resolved, so the names match
the micrographs of the user's RELION project.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path, write_text
from cryopick.io.jsonutil import dumps
from cryopick.io.resume import RunState
from cryopick.picks import Picks
from cryopick.preprocess import WorkingFrame, downsample

DISPLAY_SIZE = 1024  # longest side of an overlay's micrograph, pixels


def display_image(data: np.ndarray, size: int = DISPLAY_SIZE) -> tuple[np.ndarray, WorkingFrame]:
    """A copy of micrograph ``data`` for drawing: Fourier-cropped to at most ``size`` px on its longest
    side (smaller micrographs are kept as they are), with the frame mapping original pixels to it."""
    data = np.asarray(data, dtype=np.float32)
    factor = max(1.0, max(data.shape) / float(size))
    if factor == 1.0:
        return data.copy(), WorkingFrame(tuple(data.shape), tuple(data.shape))
    return downsample(data, factor)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def write_overlay(display: np.ndarray, frame: WorkingFrame, picks: Picks, path: str | os.PathLike,
                  diameter: float, threshold: float | None = None,
                  area: tuple[float, float, float, float] | None = None, title: str | None = None) -> Path:
    """PNG of a micrograph with a circle of the particle diameter at each pick, coloured by score.

    Parameters
    ----------
    display, frame
        The display image and its frame (from :func:`display_image`).
    picks
        Picks in original micrograph pixels.
    diameter
        Particle diameter in original pixels.
    threshold
        Lower end of the colour bar (default 0).
    area
        ``(x0, y0, x1, y1)`` original pixels where picks are allowed, drawn as a dashed frame when it is
        smaller than the micrograph.
    title
        Text in the top-left corner (e.g. the micrograph name and pick count).
    """
    plt = _pyplot()
    from matplotlib.collections import EllipseCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    h, w = display.shape
    scale = float(np.mean(frame.factors))  # display px per original px
    bar = 110  # px of the figure for the colour bar
    fig = plt.figure(figsize=((w + bar) / 100, h / 100), dpi=100)
    ax = fig.add_axes([0, 0, w / (w + bar), 1])
    finite = display[np.isfinite(display)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    ax.imshow(display, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="antialiased")
    norm = Normalize(vmin=float(threshold or 0.0), vmax=1.0)
    cmap = plt.get_cmap("viridis")
    if len(picks):
        coords = frame.to_working(picks.coords)
        d = np.full(len(coords), diameter * scale)
        colours = cmap(norm(np.nan_to_num(picks.scores, nan=1.0)))
        ax.add_collection(EllipseCollection(d, d, np.zeros(len(coords)), units="xy", offsets=coords,
                                            offset_transform=ax.transData, facecolors="none",
                                            edgecolors=colours, linewidths=1.5))
    if area is not None:
        x0, y0, x1, y1 = (np.asarray(area, float).reshape(2, 2) * frame.factors).ravel()
        if x0 > 0.5 or y0 > 0.5 or x1 < w - 1.5 or y1 < h - 1.5:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="#ee7733", ls="--", lw=1.2))
    if title:
        ax.text(8, 8, title, color="white", fontsize=10, va="top",
                bbox=dict(facecolor="black", alpha=0.5, edgecolor="none"))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    cax = fig.add_axes([(w + 20) / (w + bar), 0.1, 18 / (w + bar), 0.8])
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="pick score")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def write_score_histogram(scores: np.ndarray, threshold: float, n_kept: int, n_micrographs: int,
                          path: str | os.PathLike) -> Path:
    """Histogram of all candidate scores of a run with the threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(np.asarray(scores, float), bins=40, range=(0, 1), color="#4477aa")
    ax.axvline(threshold, color="#cc3311", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("pick score")
    ax.set_ylabel("picks")
    ax.set_title(f"{n_kept} picks kept of {len(scores)} candidates in {n_micrographs} micrographs", fontsize=9)
    ax.legend(frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# -- output folder, summary, index ----------------------------------------------------------------
def check_output_dir(output_dir: str | os.PathLike, create: bool = True) -> Path:
    """Check that picks can be written to ``output_dir`` (one-line :class:`CryopickError` if not).

    With ``create`` the folder is made and a probe file written and removed; without it nothing is
    created (for checking before a long step): the folder, or its nearest existing parent, must be a
    writable folder.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise CryopickError(f"{out}: exists and is a file; the output (-o) must be a folder: give a new folder name")
    if not create:
        parent = out
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            reason = "not a folder" if not parent.is_dir() else "no write permission"
            raise CryopickError(f"{out}: cannot write there ({parent}: {reason}); choose an output folder you "
                                "can write to")
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".cryopick-write-test-"):
            pass
    except OSError as exc:
        raise CryopickError(f"{out}: cannot write there ({exc.strerror or exc}); choose an output folder you "
                            "can write to") from None
    return out


def _micrograph_path(record: dict, given: dict[str, str]) -> str:
    """The micrograph path for the index: as given in this run, else as recorded by an earlier run
    (its absolute form when the recorded relative path no longer points at the file from here)."""
    name = record.get("micrograph", "")
    if name in given:
        return given[name]
    path = str(record.get("path", name))
    if os.path.exists(path) or "abspath" not in record:
        return path
    return str(record["abspath"])


def write_summary(output_dir: str | os.PathLike, given: dict[str, str], module, threshold: float,
                  model_dir: str | os.PathLike, elapsed: float, n_new: int, settings: dict | None = None,
                  project_dir: str | os.PathLike | None = None, run: dict | None = None) -> dict:
    """Summary over every finished micrograph of the folder (this run's and earlier runs'):
    ``summary.json``, ``summary.csv`` (picks per micrograph), ``score_histogram.png`` and, for RELION
    output, the ``autopick.star`` index. Damaged records count as unfinished (see :class:`RunState`).

    ``given`` maps the names of this run's micrographs to their paths as the user gave them; ``run``
    (this run's ``n_picked``, ``n_skipped``, ``n_failed`` and ``failed`` list, see
    :class:`cryopick.distribute.summary.RunTally`) goes into ``summary.json`` as it is.
    """
    output_dir = Path(output_dir)
    records = [r for r in RunState(output_dir).records() if "micrograph" in r]
    scores = np.concatenate([np.asarray(r.get("candidate_scores") or [], float) for r in records]) \
        if records else np.zeros(0)
    scores = scores[np.isfinite(scores)]
    counts = [int(r.get("n_picks", 0)) for r in records]
    if module.NAME == "relion":
        from cryopick.io.formats.relion import write_autopick_index

        mapping = {_micrograph_path(r, given): (output_dir / f"{r['micrograph']}{module.DEFAULT_SUFFIX}").as_posix()
                   for r in records}
        write_autopick_index(mapping, output_dir / "autopick.star", project_dir=project_dir)
    lines = ["micrograph,n_picks,seconds"] + [f"{r['micrograph']},{r.get('n_picks', 0)},{r.get('seconds', '')}"
                                              for r in records]
    write_text(output_dir / "summary.csv", "\n".join(lines) + "\n")
    write_score_histogram(scores, threshold, int(sum(counts)), len(records), output_dir / "score_histogram.png")
    diameters = [r["diameter_px"] for r in records if isinstance(r.get("diameter_px"), (int, float))]
    summary = {
        "n_micrographs": len(given),
        "n_finished": len(records),
        "n_picked_this_run": n_new,
        "n_picks": int(sum(counts)),
        "picks_per_micrograph": {"mean": float(np.mean(counts)) if counts else 0.0,
                                 "min": int(min(counts)) if counts else 0,
                                 "median": float(np.median(counts)) if counts else 0.0,
                                 "max": int(max(counts)) if counts else 0},
        "n_dropped_at_edges": int(sum(int(r.get("n_edge", 0) or 0) for r in records)),
        "threshold": threshold,
        "diameter_px": float(np.median(diameters)) if diameters else None,
        "settings": settings or {},
        "seconds_this_run": round(elapsed, 2),
        "micrographs_per_second": round(n_new / elapsed, 3) if elapsed > 0 and n_new else None,
        "model": str(model_dir),
        "format": module.NAME,
        **(run or {}),
    }
    write_text(output_dir / "summary.json", dumps(summary, indent=2) + "\n")
    return summary
