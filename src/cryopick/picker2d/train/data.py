"""Training data for the 2D picker: micrographs at the working scale, their labels and the
validation split.

The working scale is chosen from the particle diameter: micrographs are Fourier-cropped so that a
particle is about ``target_diameter`` working pixels wide (default 16), whatever the detector or
pixel size. The model paints a disk of ``target_radius_fraction x`` the particle radius at every
particle centre; small disks stay separate even when particles touch, so the post-processing
sees one blob per particle.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.images import read_micrograph
from cryopick.picker2d.scale import WorkingScale, prepare_image
from cryopick.preprocess import WorkingFrame


@dataclass
class TrainingMicrograph:
    """One micrograph at the working scale with its labels.

    Attributes
    ----------
    name
        Micrograph name (file stem).
    image
        ``(H, W)`` float32 normalised working image.
    coords
        ``(N, 2)`` labelled particle centres ``x, y`` in working pixels (empty for a negative).
    frame
        Mapping back to the original pixels.
    negative
        True when the micrograph is known to contain no particles (all pixels are negatives).
    val_box
        ``(y0, y1, x0, x1)`` of the held-out validation strip in working pixels, or ``None``.
    train_coords
        Training targets when they differ from the labels (self-training pseudo-labels); the
        validation always uses ``coords``.
    unlabelled
        True for a micrograph of the unlabelled pool (no annotation; :mod:`.pool`): never validated or
        calibrated on, never a negative, trained on only once it has pseudo-labels (``train_coords``).
    ignore_coords
        Centres of uncertain pseudo-labels: pixels within a particle radius of them are left out of the
        loss (neither particle nor background).
    """

    name: str
    image: np.ndarray
    coords: np.ndarray
    frame: WorkingFrame
    negative: bool = False
    val_box: tuple[int, int, int, int] | None = None
    train_coords: np.ndarray | None = None
    unlabelled: bool = False
    ignore_coords: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    def in_val(self, coords: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Boolean ``(N,)``: which ``x, y`` working coordinates lie in the validation strip
        (shrunk by ``margin`` pixels on its inner sides)."""
        coords = np.asarray(coords, float).reshape(-1, 2)
        if self.val_box is None:
            return np.zeros(len(coords), bool)
        y0, y1, x0, x1 = self.val_box
        return ((coords[:, 0] >= x0 + margin) & (coords[:, 0] < x1 - margin)
                & (coords[:, 1] >= y0 + margin) & (coords[:, 1] < y1 - margin))


def load_training_micrograph(path: str | os.PathLike, coords: np.ndarray | None, scale: WorkingScale,
                             negative: bool = False, name: str | None = None,
                             clip_sigma: float = 4.0) -> TrainingMicrograph:
    """Read a micrograph, bring it to the working scale and map its ``(N, 2)`` original-pixel
    coordinates into the working frame.

    Coordinates outside the image are not used; how many, and how far out they reach, is recorded in
    ``meta`` (``n_given``, ``n_outside``, ``extent``) for :func:`report_outside` to tell the user.

    Raises
    ------
    CryopickError
        Non-finite coordinates, or a particle diameter larger than half the micrograph's shorter side
        (a unit mix-up; it would leave no image to train on).
    """
    image = read_micrograph(path)
    data = image.load()
    h, w = data.shape
    if scale.diameter > min(h, w) / 2:
        raise CryopickError(
            f"{path}: a particle diameter of {scale.diameter:g} px does not fit this {w}x{h} px micrograph (it must be "
            f"at most half the shorter side, {min(h, w) / 2:g} px); check --diameter and its unit "
            "(--diameter-unit A with --pixel-size for Å)"
        )
    work, frame = prepare_image(data, scale.factor, clip_sigma=clip_sigma)
    xy = np.zeros((0, 2)) if coords is None or negative else np.asarray(coords, float).reshape(-1, 2)
    if not np.isfinite(xy).all():
        raise CryopickError(f"coordinates for {path} contain NaN or infinite values; fix or remove those rows")
    inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= h - 0.5)
    meta = {"n_given": int(len(xy)), "n_outside": int((~inside).sum()), "original_shape": [int(h), int(w)],
            "extent": [float(xy[:, 0].min()), float(xy[:, 0].max()), float(xy[:, 1].min()), float(xy[:, 1].max())]
            if len(xy) else None}
    return TrainingMicrograph(name=name or image.name, image=work, coords=frame.to_working(xy[inside]),
                              frame=frame, negative=negative, source=str(path), meta=meta)


def outside_hint(micrographs: list[TrainingMicrograph]) -> str:
    """The likely cause of coordinates outside their images, from how far out they reach."""
    ratios, below = [], False
    for m in micrographs:
        extent, shape = m.meta.get("extent"), m.meta.get("original_shape")
        if not extent or not shape:
            continue
        x0, x1, y0, y1 = extent
        ratios.append(max(x1 / shape[1], y1 / shape[0]))
        below = below or x0 < -0.5 or y0 < -0.5
    ratio = max(ratios, default=0.0)
    hints = []
    if ratio > 1.3:
        hints.append(f"they reach {ratio:.1f}x the image size, as for a {ratio:.0f}x larger (unbinned) micrograph: "
                     f"rescale them (cryopick convert --scale {1 / ratio:.2g}) or give the matching micrographs")
    if below:
        hints.append("some are negative: y may count from the other edge (--flip-y) or x and y be swapped")
    hints.append("check that each coordinate file belongs to the micrograph of the same name, at the same pixel "
                 "size (--flip-y, cryopick convert --scale / --to-pixel-size)")
    return "; ".join(hints)


def report_outside(micrographs: list[TrainingMicrograph]) -> list[TrainingMicrograph]:
    """Warn, per file, about coordinates outside their image; drop micrographs whose coordinates all lie
    outside (they are not particle-free: training on them as background would teach the network to
    ignore particles). Returns the micrographs kept.

    Raises
    ------
    CryopickError
        When no annotated micrograph keeps a coordinate, naming the files and the likely cause.
    """
    import warnings

    partial = [m for m in micrographs if not m.negative and 0 < m.meta.get("n_outside", 0) < m.meta.get("n_given", 0)]
    lost = [m for m in micrographs if not m.negative and m.meta.get("n_given", 0)
            and m.meta.get("n_outside", 0) == m.meta["n_given"]]

    def describe(m: TrainingMicrograph) -> str:
        h, w = m.meta["original_shape"]
        return (f"{m.source or m.name}: {m.meta['n_outside']} of {m.meta['n_given']} coordinates lie outside the "
                f"{w}x{h} px image")

    lost_ids = {id(m) for m in lost}
    kept = [m for m in micrographs if id(m) not in lost_ids]
    if lost and not any(len(m.coords) for m in kept if not m.negative):
        listing = "; ".join(describe(m) for m in lost[:5]) + (f"; (+{len(lost) - 5} more)" if len(lost) > 5 else "")
        raise CryopickError(f"all coordinates lie outside their micrographs ({listing}); {outside_hint(lost)}")
    for m in partial:
        warnings.warn(f"{describe(m)} and are not used; {outside_hint([m])}", stacklevel=2)
    for m in lost:
        warnings.warn(f"{describe(m)}, so the micrograph is not used; {outside_hint([m])}", stacklevel=2)
    return kept


def assign_validation(micrographs: list[TrainingMicrograph], fraction: float = 0.2, seed: int = 0,
                      min_micrographs: int = 3) -> str:
    """Choose the held-out validation data (in place); returns ``"micrographs"`` or ``"strips"``.

    With at least ``min_micrographs`` annotated micrographs, ``round(fraction x n)`` (at least one)
    whole micrographs are held out and never seen in training: the score threshold is then
    calibrated on micrographs as unseen as the ones to be picked (a network is more confident on
    images it was trained on, even in regions without labels, which biases a threshold chosen
    there). With fewer micrographs, a strip of each is held out instead
    (:func:`assign_validation_strips`).
    """
    annotated = [m for m in micrographs if not m.negative and not m.unlabelled]
    if fraction <= 0 or len(annotated) < min_micrographs:
        assign_validation_strips(micrographs, fraction, seed)
        return "strips"
    for m in micrographs:
        m.val_box = None
    rng = np.random.default_rng(seed)
    k = max(1, int(round(fraction * len(annotated))))
    for i in rng.choice(len(annotated), size=k, replace=False):
        h, w = annotated[i].shape
        annotated[i].val_box = (0, h, 0, w)
    return "micrographs"


def assign_validation_strips(micrographs: list[TrainingMicrograph], fraction: float = 0.2,
                             seed: int = 0) -> None:
    """Hold out a strip of ``fraction`` of each micrograph's width for validation (in place).

    The strip position rotates over the micrographs (left, ..., right) so the held-out data are not
    all from one edge; with a single micrograph the split still works. ``fraction = 0`` disables it.
    Micrographs of the unlabelled pool are never held out (they have no labels to validate on).
    """
    for m in micrographs:
        m.val_box = None
    micrographs = [m for m in micrographs if not m.unlabelled]
    if fraction <= 0:
        return
    if not 0 < fraction < 1:
        raise CryopickError(f"validation fraction must be in [0, 1), got {fraction}")
    slots = max(1, int(round(1 / fraction)))
    rng = np.random.default_rng(seed)
    offset = int(rng.integers(slots))
    for i, m in enumerate(micrographs):
        h, w = m.shape
        width = max(1, int(round(w * fraction)))
        slot = (i + offset) % slots
        x0 = min(int(round(slot * w / slots)), w - width)
        m.val_box = (0, h, x0, x0 + width)


def disk_target(shape: tuple[int, int], coords: np.ndarray, radius: float) -> np.ndarray:
    """``(H, W)`` uint8 mask: 1 within ``radius`` working pixels of any ``x, y`` centre."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    coords = np.asarray(coords, float).reshape(-1, 2)
    if len(coords) == 0:
        return mask
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    for x, y in coords:
        cx, cy = int(round(x)), int(round(y))
        ys, xs = cy + dy, cx + dx
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w) & ((xs - x) ** 2 + (ys - y) ** 2 <= radius**2)
        mask[ys[inside], xs[inside]] = 1
    return mask


def positive_prior(micrographs: list[TrainingMicrograph], radius: float, labelled_fraction: float,
                   max_prior: float = 0.7) -> float:
    """Expected fraction of *unlabelled* training pixels that belong to a particle disk.

    With a fraction ``f`` of the particles labelled, the total number of particles is about
    ``n_labelled / f``; each paints ``pi radius^2`` pixels. Used by the positive-unlabelled loss.
    """
    if labelled_fraction >= 1:
        return 0.0
    annotated = [m for m in micrographs if not m.negative and not m.unlabelled]
    area = sum(m.image.size for m in annotated)
    if area == 0:
        return 0.0
    n_lab = sum(len(m.coords) for m in annotated)
    disk = math.pi * radius**2
    labelled_area = n_lab * disk
    total_pos = min(labelled_area / max(labelled_fraction, 1e-6), max_prior * area)
    return float(np.clip((total_pos - labelled_area) / max(area - labelled_area, 1.0), 0.0, max_prior))


def summarise(micrographs: list[TrainingMicrograph]) -> dict:
    """Training data summary for the model card (the unlabelled pool apart: ``unlabelled_micrographs``)."""
    pool = [m.name for m in micrographs if m.unlabelled]
    micrographs = [m for m in micrographs if not m.unlabelled]
    return {
        "n_micrographs": len(micrographs),
        "n_unlabelled_micrographs": len(pool),
        "unlabelled_micrographs": pool,
        "n_negative_micrographs": sum(m.negative for m in micrographs),
        "n_particles": int(sum(len(m.coords) for m in micrographs)),
        "micrographs": [
            {"name": m.name, "n_particles": int(len(m.coords)), "negative": m.negative,
             "original_shape": m.meta.get("original_shape"), "working_shape": list(m.shape),
             "val_box": list(m.val_box) if m.val_box else None}
            for m in micrographs
        ],
    }

