"""The one picks table, shared by 2D and 3D, and explicit unit / frame conversions.

Conventions
-----------
- Coordinates are in **pixels** (voxels in 3D) of the frame whose pixel size is ``Picks.pixel_size``
  (Å/px; ``None`` when unknown).
- ``x`` is the column (fast axis), ``y`` the row, ``z`` the section, all 0-based array indices of the
  pixel centre: a particle at ``x = 10.0`` sits on ``image[:, 10]``. numpy indexing is ``[z][y][x]``.
- ``diameter`` is in pixels of the same frame; ``score`` is a figure of merit (higher is better,
  NaN when the source has none).
- ``micrograph`` is the micrograph or tomogram *name*: the file stem, without directory or extension.

No conversion happens implicitly: use :func:`scale`, :func:`to_pixel_size`, :func:`flip_y`,
:func:`swap_xy` and friends, which return new tables and say in their names what they do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError

COLUMNS_2D = ["micrograph", "x", "y", "score", "diameter", "label"]
COLUMNS_3D = ["micrograph", "x", "y", "z", "score", "diameter", "label"]


@dataclass
class Picks:
    """A table of particle positions for one or many micrographs / tomograms.

    Parameters
    ----------
    table
        DataFrame with columns ``micrograph`` (str), ``x``, ``y`` [, ``z``] (float, pixels),
        ``score`` (float, NaN if unknown), ``diameter`` (float, pixels, NaN if unknown) and
        ``label`` (str class name, "" if none).
    pixel_size
        Å per pixel of the frame the coordinates are in, or ``None`` when unknown.
    ndim
        2 for micrographs, 3 for tomograms.
    """

    table: pd.DataFrame
    pixel_size: float | None = None
    ndim: int = 2
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        self.table = _normalise_table(self.table, self.ndim)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def empty(cls, ndim: int = 2, pixel_size: float | None = None) -> "Picks":
        cols = COLUMNS_3D if ndim == 3 else COLUMNS_2D
        return cls(pd.DataFrame({c: [] for c in cols}), pixel_size=pixel_size, ndim=ndim)

    @classmethod
    def from_arrays(
        cls,
        micrograph: str | Sequence[str],
        coords: np.ndarray,
        score: np.ndarray | float | None = None,
        diameter: np.ndarray | float | None = None,
        label: Sequence[str] | str | None = None,
        pixel_size: float | None = None,
    ) -> "Picks":
        """Build a table from an ``(N, ndim)`` array of ``x, y[, z]`` coordinates in pixels."""
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] not in (2, 3):
            if coords.size == 0:
                coords = coords.reshape(0, 2)
            else:
                raise ValueError(f"coords must have shape (N, 2) or (N, 3), got {coords.shape}")
        n, ndim = coords.shape
        data = {"micrograph": np.broadcast_to(np.asarray(micrograph, dtype=object), (n,)).copy()}
        for axis, name in enumerate("xyz"[:ndim]):
            data[name] = coords[:, axis]
        data["score"] = _column(score, n, np.nan)
        data["diameter"] = _column(diameter, n, np.nan)
        data["label"] = np.broadcast_to(np.asarray("" if label is None else label, dtype=object), (n,)).copy()
        return cls(pd.DataFrame(data), pixel_size=pixel_size, ndim=ndim)

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    @property
    def axes(self) -> list[str]:
        return ["x", "y", "z"][: self.ndim]

    @property
    def coords(self) -> np.ndarray:
        """``(N, ndim)`` float array of ``x, y[, z]`` in pixels."""
        return self.table[self.axes].to_numpy(dtype=np.float64)

    @property
    def scores(self) -> np.ndarray:
        return self.table["score"].to_numpy(dtype=np.float64)

    @property
    def micrographs(self) -> list[str]:
        """Names in order of first appearance."""
        return list(dict.fromkeys(self.table["micrograph"].tolist()))

    def for_micrograph(self, name: str) -> "Picks":
        return self._with(self.table[self.table["micrograph"] == name])

    def split(self) -> Iterator[tuple[str, "Picks"]]:
        """Yield ``(name, picks)`` per micrograph / tomogram."""
        for name in self.micrographs:
            yield name, self.for_micrograph(name)

    def _with(self, table: pd.DataFrame, **changes) -> "Picks":
        kwargs = dict(pixel_size=self.pixel_size, ndim=self.ndim, meta=dict(self.meta))
        kwargs.update(changes)
        return Picks(table.reset_index(drop=True), **kwargs)

    def copy(self) -> "Picks":
        return self._with(self.table.copy())

    def __repr__(self) -> str:
        ps = "unknown" if self.pixel_size is None else f"{self.pixel_size:g} Å/px"
        return f"Picks({len(self)} picks in {len(self.micrographs)} {'tomograms' if self.ndim == 3 else 'micrographs'}, pixel size {ps})"


def _column(value, n: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(n, default, dtype=np.float64)
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()


def _normalise_table(table: pd.DataFrame, ndim: int) -> pd.DataFrame:
    cols = COLUMNS_3D if ndim == 3 else COLUMNS_2D
    table = table.copy()
    for required in ["micrograph", "x", "y"] + (["z"] if ndim == 3 else []):
        if required not in table.columns:
            raise ValueError(f"picks table is missing column {required!r}")
    if "score" not in table.columns:
        table["score"] = np.nan
    if "diameter" not in table.columns:
        table["diameter"] = np.nan
    if "label" not in table.columns:
        table["label"] = ""
    table = table[cols]
    table["micrograph"] = table["micrograph"].astype(str).astype(object)
    table["label"] = table["label"].fillna("").astype(str).astype(object)
    for c in cols:
        if c not in ("micrograph", "label"):
            table[c] = pd.to_numeric(table[c], errors="raise").astype(np.float64)
    return table.reset_index(drop=True)


def check_finite(picks: Picks, source: str) -> Picks:
    """Raise a :class:`CryopickError` naming ``source`` if any coordinate is NaN or infinite."""
    bad = ~np.isfinite(picks.coords).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CryopickError(
            f"{source}: {int(bad.sum())} coordinate(s) are NaN or infinite (first at row {row + 1}); "
            "fix or remove those rows"
        )
    return picks


# -- explicit conversions -------------------------------------------------------------------
def concat(picks: Iterable[Picks]) -> Picks:
    """Concatenate tables with the same ``ndim`` and pixel size."""
    picks = list(picks)
    if not picks:
        return Picks.empty()
    ndims = {p.ndim for p in picks}
    sizes = {p.pixel_size for p in picks if p.pixel_size is not None}
    if len(ndims) > 1:
        raise CryopickError("cannot merge 2D and 3D picks")
    if len(sizes) > 1:
        raise CryopickError(f"cannot merge picks with different pixel sizes {sorted(sizes)}; rescale first")
    table = pd.concat([p.table for p in picks], ignore_index=True)
    return Picks(table, pixel_size=sizes.pop() if sizes else None, ndim=ndims.pop())


def scale(picks: Picks, factor: float) -> Picks:
    """Multiply coordinates and diameters by ``factor`` (pixel size is divided by it).

    ``factor = 0.5`` maps picks on a micrograph to the same micrograph binned by 2. The mapping is
    ``x -> x * factor``, the convention of Fourier cropping (sample 0 stays at 0) and of RELION/Topaz.
    """
    if factor <= 0:
        raise ValueError("scale factor must be positive")
    table = picks.table.copy()
    for axis in picks.axes:
        table[axis] = table[axis] * factor
    table["diameter"] = table["diameter"] * factor
    ps = None if picks.pixel_size is None else picks.pixel_size / factor
    return picks._with(table, pixel_size=ps)


def bin_picks(picks: Picks, binning: float) -> Picks:
    """Coordinates on the same image binned by ``binning`` (2 = half the pixels per axis)."""
    return scale(picks, 1.0 / binning)


def to_pixel_size(picks: Picks, pixel_size: float) -> Picks:
    """Re-express picks on the same image sampled at ``pixel_size`` Å/px."""
    if picks.pixel_size is None:
        raise CryopickError(
            "the picks have no pixel size; give it (e.g. --pixel-size) before converting between pixel sizes"
        )
    return scale(picks, picks.pixel_size / pixel_size)


def match_pixel_size(picks: Picks, pixel_size: float | None, rtol: float = 1e-3) -> Picks:
    """``picks`` re-expressed at ``pixel_size`` Å/px when both pixel sizes are known and differ by more
    than ``rtol`` (relative); otherwise unchanged (e.g. truth tables of an image at another sampling)."""
    if picks.pixel_size and pixel_size and abs(picks.pixel_size - pixel_size) > rtol * pixel_size:
        return to_pixel_size(picks, pixel_size)
    return picks


def flip_y(picks: Picks, height: int) -> Picks:
    """Mirror rows: ``y -> height - 1 - y`` (e.g. CryoPPP/TIFF frame <-> MRC frame)."""
    table = picks.table.copy()
    table["y"] = (height - 1) - table["y"]
    return picks._with(table)


def swap_xy(picks: Picks) -> Picks:
    table = picks.table.copy()
    table["x"], table["y"] = picks.table["y"].to_numpy(), picks.table["x"].to_numpy()
    return picks._with(table)


def filter_score(picks: Picks, min_score: float) -> Picks:
    """Keep picks with ``score >= min_score`` (picks without a score are kept)."""
    s = picks.table["score"]
    return picks._with(picks.table[(s >= min_score) | s.isna()])


def rename_micrographs(picks: Picks, mapping: dict[str, str]) -> Picks:
    table = picks.table.copy()
    table["micrograph"] = table["micrograph"].map(lambda n: mapping.get(n, n))
    return picks._with(table)
