"""RELION STAR coordinates: 3.x per-micrograph files, the 4+/5 ``autopick.star`` index, particle
tables, and RELION 5 tomography particles.

Variants (all read by :func:`read`, which recognises them from their columns)
-----------------------------------------------------------------------------
- **Per-micrograph coordinate file** (RELION 3.x and later, ``<mic>_autopick.star`` /
  ``<mic>_manualpick.star``): one loop with ``_rlnCoordinateX``, ``_rlnCoordinateY`` and optionally
  ``_rlnAutopickFigureOfMerit``, ``_rlnClassNumber``, ``_rlnAnglePsi``. The micrograph name is the
  file stem without ``_autopick`` / ``_manualpick``.
- **Index** (RELION 4+/5 ``autopick.star`` / ``manualpick.star``): block ``data_coordinate_files`` with
  ``_rlnMicrographName`` -> ``_rlnMicrographCoordinates`` (a per-micrograph file, path relative to the
  RELION project directory).
- **Particle table** (``particles.star``, with or without ``data_optics``): ``_rlnMicrographName`` plus
  coordinates, many micrographs in one file.
- **RELION 5 tomography** particles: ``_rlnTomoName`` and ``_rlnCenteredCoordinate{X,Y,Z}Angst``, Å
  from the tomogram centre. Converting to voxels needs where the tomogram lies in RELION's frame: a
  ``tomograms.star`` (bin-1 size, tilt-series pixel size, binning), else the size as stored and the
  voxel size (binning 1): ``voxel = (Å / pixel_size + size / 2) / binning``, RELION 5's own convention
  (:mod:`cryopick.io.formats.relion_tomo` cites the source).
- **RELION 4 tomography** particles: ``_rlnTomoName`` and ``_rlnCoordinate{X,Y,Z}`` in bin-1 pixels
  (divided by the binning when a ``tomograms.star`` is given).

Coordinates are pixels of the micrograph (no half-pixel offset, no y-flip relative to the MRC array).
RELION writes ``-999`` for "no value"; a figure of merit of ``-999`` is read as no score.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.formats._common import (
    finish,
    micrograph_name_from_path,
    numeric,
    single_micrograph,
    voxel_size_for,
)
from cryopick.io.formats._star import FOM as _FOM
from cryopick.io.formats._star import find_block, fom, read_blocks, scores, write_star
from cryopick.io.formats.relion_tomo import TomoGeometry, read_tomograms_star
from cryopick.io.images import image_name
from cryopick.picks import Picks, concat

NAME = "relion"
EXTENSIONS = (".star",)
DEFAULT_SUFFIX = "_autopick.star"
MULTI_MICROGRAPH = True
NDIM = (2, 3)
INDEX_NAME = "autopick.star"
DESCRIPTION = "a RELION STAR file (loop_ with _rlnCoordinateX/_rlnCoordinateY or a coordinate index)"


TomoSize = Sequence[float] | Mapping[str, Sequence[float]]


# -- reading -----------------------------------------------------------------------------------
def _read_blocks(path: Path) -> dict[str, pd.DataFrame]:
    return read_blocks(path, DESCRIPTION)


_find_block = find_block


def read(path: str | os.PathLike, micrograph: str | None = None, pixel_size: float | None = None,
         tomo_size: TomoSize | None = None, voxel_size: float | None = None,
         tomograms_star: str | os.PathLike | None = None, project_dir: str | os.PathLike | None = None,
         diameter: float | None = None, **_: object) -> Picks:
    """Read any RELION coordinate STAR file (variant detected from its columns).

    Parameters
    ----------
    path
        A per-micrograph coordinate file, an ``autopick.star``-style index, a particle table or a
        RELION 5 tomography particle file.
    micrograph
        Name for a per-micrograph file (default: its stem without ``_autopick``/``_manualpick``).
    pixel_size
        Å/px of the micrographs, when the file does not say (``_rlnMicrographPixelSize``).
    tomo_size
        ``(X, Y, Z)`` tomogram size in voxels, or ``{tomo_name: (X, Y, Z)}``; needed for centred Å
        coordinates.
    voxel_size
        Å/voxel of that tomogram; needed for centred Å coordinates.
    tomograms_star
        Alternatively, a RELION 5 ``tomograms.star`` giving ``_rlnTomoSize{X,Y,Z}`` (bin-1 pixels),
        ``_rlnTomoTiltSeriesPixelSize`` and ``_rlnTomoTomogramBinning`` per tomogram: centred Å and
        RELION 4 ``_rlnCoordinate{X,Y,Z}`` (bin-1 pixels, with ``_rlnTomoName``) are then read as voxels of
        the reconstruction (:mod:`cryopick.io.formats.relion_tomo`).
    project_dir
        RELION project directory that index paths are relative to (default: tried from the current
        directory and the index file's parent directories).
    diameter
        Diameter in pixels given to every pick (RELION coordinate files do not store one).
    """
    path = Path(path)
    blocks = _read_blocks(path)
    index = _find_block(blocks, "rlnMicrographName", "rlnMicrographCoordinates")
    if index is not None:
        return _read_index(path, index, pixel_size=pixel_size, project_dir=project_dir, diameter=diameter,
                           tomo_size=tomo_size, voxel_size=voxel_size, tomograms_star=tomograms_star)
    tomo = _find_block(blocks, "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                       "rlnCenteredCoordinateZAngst")
    if tomo is not None:
        return _read_centred(path, tomo, tomo_size, voxel_size, tomograms_star, diameter)
    table = _find_block(blocks, "rlnCoordinateX", "rlnCoordinateY")
    if table is None:
        cols = sorted({c for b in blocks.values() for c in b.columns})
        raise CryopickError(
            f"{path}: no RELION coordinate columns (_rlnCoordinateX/_rlnCoordinateY, "
            f"_rlnCenteredCoordinate*Angst or _rlnMicrographCoordinates); found: {', '.join(cols) or 'none'}"
        )
    if pixel_size is None:
        pixel_size = _optics_pixel_size(blocks)
    n = len(table)
    is_3d = "rlnCoordinateZ" in table.columns
    if "rlnTomoName" in table.columns:
        names = table["rlnTomoName"].astype(str).to_numpy()
    elif "rlnMicrographName" in table.columns:
        names = np.array([image_name(str(m)) for m in table["rlnMicrographName"]], dtype=object)
    else:
        names = np.full(n, micrograph or micrograph_name_from_path(path), dtype=object)
    frame = pd.DataFrame({"micrograph": names,
                          "x": numeric(table["rlnCoordinateX"], path, "rlnCoordinateX"),
                          "y": numeric(table["rlnCoordinateY"], path, "rlnCoordinateY")})
    if is_3d:
        frame["z"] = numeric(table["rlnCoordinateZ"], path, "rlnCoordinateZ")
        if tomograms_star is not None and "rlnTomoName" in table.columns:  # RELION 4: bin-1 pixels
            geometry = _tomo_geometry(list(dict.fromkeys(names)), path, None, None, tomograms_star)
            binning = np.array([geometry[n].binning for n in names], dtype=np.float64)
            frame[["x", "y", "z"]] = frame[["x", "y", "z"]].to_numpy(float) / binning[:, None]
            pixel_size = _one_voxel_size(path, [geometry[n].voxel_size for n in names], pixel_size)
    frame["score"] = scores(table, path)
    frame["diameter"] = np.nan if diameter is None else float(diameter)
    return finish(Picks(frame, pixel_size=pixel_size, ndim=3 if is_3d else 2), path)


def _optics_pixel_size(blocks: dict[str, pd.DataFrame]) -> float | None:
    optics = blocks.get("optics")
    if optics is None or "rlnMicrographPixelSize" not in optics.columns or len(optics) == 0:
        return None
    sizes = pd.to_numeric(optics["rlnMicrographPixelSize"], errors="coerce").dropna().unique()
    return float(sizes[0]) if len(sizes) == 1 else None


def _resolve(entry: str, index_path: Path, project_dir: str | os.PathLike | None) -> Path | None:
    p = Path(entry)
    if p.is_absolute():
        return p if p.exists() else None
    bases = [Path(project_dir)] if project_dir is not None else []
    bases += [Path.cwd(), index_path.parent, *index_path.resolve().parent.parents]
    for base in bases:
        if (base / p).exists():
            return base / p
    return None


def _read_index(path: Path, index: pd.DataFrame, pixel_size, project_dir, diameter, **tomo_opts) -> Picks:
    """Read every coordinate file an index lists; ``tomo_opts`` reach RELION 5 tomography files."""
    parts = []
    for mic, coord in zip(index["rlnMicrographName"].astype(str), index["rlnMicrographCoordinates"].astype(str)):
        resolved = _resolve(coord, path, project_dir)
        if resolved is None:
            raise CryopickError(
                f"{path}: coordinate file {coord!r} listed for {mic!r} not found; run from the RELION project "
                "directory or give project_dir (--project-dir)"
            )
        parts.append(read(resolved, micrograph=image_name(mic), pixel_size=pixel_size, diameter=diameter,
                          **tomo_opts))
    if not parts:
        return Picks.empty(pixel_size=pixel_size)
    return concat(parts)


def _tomo_geometry(names: Sequence[str], path: Path, tomo_size, voxel_size, tomograms_star) -> dict[str, TomoGeometry]:
    """Per tomogram: where its voxels lie in RELION's frame (from ``tomograms_star``, else its size as
    stored with ``voxel_size``)."""
    table = read_tomograms_star(tomograms_star) if tomograms_star is not None else {}
    out = {}
    for name in names:
        if name in table:
            out[name] = table[name]
            continue
        size = tomo_size.get(name) if isinstance(tomo_size, Mapping) else tomo_size
        if size is None or voxel_size is None:
            where = f"{tomograms_star} has no row {name!r}" if tomograms_star is not None else "give --tomo-size X,Y,Z "\
                "--voxel-size A (or --tomograms-star tomograms.star)"
            raise CryopickError(
                f"{path}: RELION 5 centred coordinates (Å from the tomogram centre) of tomogram {name!r} need "
                f"the tomogram size and voxel size; {where}")
        size = np.asarray(size, dtype=np.float64)
        if size.shape != (3,):
            raise CryopickError(f"{path}: tomo_size must be three numbers X,Y,Z, got {size.tolist()}")
        out[name] = TomoGeometry.as_stored(name, size, float(voxel_size))
    return out


def _one_voxel_size(path, sizes, default):
    spacing = sorted({round(float(v), 9) for v in sizes})
    if len(spacing) > 1:
        raise CryopickError(f"{path}: tomograms with different voxel sizes {spacing}; convert them separately")
    return spacing[0] if spacing else default


def _read_centred(path, table, tomo_size, voxel_size, tomograms_star, diameter) -> Picks:
    if "rlnTomoName" not in table.columns:
        raise CryopickError(f"{path}: centred tomography coordinates without a _rlnTomoName column")
    names = table["rlnTomoName"].astype(str).to_numpy()
    geometry = _tomo_geometry(list(dict.fromkeys(names)), path, tomo_size, voxel_size, tomograms_star)
    angst = np.stack([numeric(table[f"rlnCenteredCoordinate{a}Angst"], path, f"rlnCenteredCoordinate{a}Angst")
                      for a in "XYZ"], axis=1)
    coords = np.zeros((len(names), 3))
    for name, g in geometry.items():
        rows = names == name
        coords[rows] = g.to_voxels(angst[rows])
    frame = pd.DataFrame({"micrograph": names, "x": coords[:, 0], "y": coords[:, 1], "z": coords[:, 2],
                          "score": scores(table, path),
                          "diameter": np.nan if diameter is None else float(diameter)})
    ps = _one_voxel_size(path, [geometry[n].voxel_size for n in names], voxel_size)
    return finish(Picks(frame, pixel_size=ps, ndim=3), path)


def is_index(path: str | os.PathLike) -> bool:
    """Whether a STAR file is a coordinate index (``_rlnMicrographCoordinates``)."""
    try:
        with open(path, errors="replace") as fh:
            return any("_rlnMicrographCoordinates" in line for line in fh)
    except OSError:
        return False


# -- writing -----------------------------------------------------------------------------------
def _write_star(blocks: dict[str, pd.DataFrame], path: str | os.PathLike, float_format: str) -> None:
    write_star(blocks, path, float_format)


def _fom(picks: Picks) -> np.ndarray:
    return fom(picks.table["score"].to_numpy(dtype=np.float64))


def write(picks: Picks, path: str | os.PathLike, micrograph_paths: Mapping[str, str] | None = None,
          micrograph_suffix: str = ".mrc", tomo_size: TomoSize | None = None, voxel_size: float | None = None,
          decimals: int = 6, micrograph_column: bool | None = None,
          tomograms: Mapping[str, TomoGeometry] | None = None, **_: object) -> None:
    """Write a RELION STAR file, atomically.

    - 2D picks of one micrograph: a RELION 3.x-style per-micrograph coordinate file
      (``_rlnCoordinateX/Y``, ``_rlnAutopickFigureOfMerit``; ``-999`` where there is no score).
    - 2D picks of several micrographs (or ``micrograph_column=True``): one ``data_particles`` table
      with ``_rlnMicrographName`` = ``micrograph_paths[name]`` or ``name + micrograph_suffix``.
    - 3D picks: RELION 5 tomography particles (``_rlnTomoName``, ``_rlnCenteredCoordinate{X,Y,Z}Angst``),
      placed by ``tomograms`` (name -> :class:`TomoGeometry`, e.g. from a ``tomograms.star``), else by
      ``tomo_size`` (voxels) and the voxel size (the picks' pixel size, else ``voxel_size``), binning 1.
    """
    fmt = f"%.{decimals}f"
    if picks.ndim == 3:
        _write_centred(picks, path, tomo_size, voxel_size, fmt, tomograms or {})
        return
    t = picks.table
    if micrograph_column is None:
        micrograph_column = len(picks.micrographs) > 1
    if not micrograph_column:
        single_micrograph(picks, path, "RELION per-micrograph STAR")
        block = pd.DataFrame({"rlnCoordinateX": t["x"].to_numpy(), "rlnCoordinateY": t["y"].to_numpy(),
                              _FOM: _fom(picks)})
        _write_star({"": block}, path, fmt)
        return
    paths = micrograph_paths or {}
    block = pd.DataFrame({
        "rlnMicrographName": [paths.get(n, n + micrograph_suffix) for n in t["micrograph"]],
        "rlnCoordinateX": t["x"].to_numpy(), "rlnCoordinateY": t["y"].to_numpy(), _FOM: _fom(picks)})
    _write_star({"particles": block}, path, fmt)


def _write_centred(picks: Picks, path, tomo_size, voxel_size, fmt: str, tomograms) -> None:
    names = picks.table["micrograph"].astype(str).to_numpy()
    unplaced = [n for n in dict.fromkeys(names) if n not in tomograms]
    geometry = dict(tomograms)
    if unplaced:
        voxel_size = voxel_size_for(picks, voxel_size, path, "RELION 5 tomography STAR")
        geometry.update(_tomo_geometry(unplaced, Path(path), tomo_size, voxel_size, None))
    angst = np.zeros((len(names), 3))
    for name in dict.fromkeys(names):
        rows = names == name
        angst[rows] = geometry[name].to_angstrom(picks.coords.reshape(-1, 3)[rows])
    block = pd.DataFrame({"rlnTomoName": names,
                          "rlnCenteredCoordinateXAngst": angst[:, 0],
                          "rlnCenteredCoordinateYAngst": angst[:, 1],
                          "rlnCenteredCoordinateZAngst": angst[:, 2],
                          _FOM: _fom(picks)})
    _write_star({"particles": block}, path, fmt)


def write_autopick_index(mapping: Mapping[str, str | os.PathLike], path: str | os.PathLike,
                         project_dir: str | os.PathLike | None = None) -> None:
    """Write a RELION 4+/5 coordinate index (``autopick.star``), atomically.

    Parameters
    ----------
    mapping
        Micrograph name or path (as RELION's micrographs STAR names it) -> coordinate file path
        (relative to the RELION project directory, or absolute).
    path
        Output STAR file, e.g. ``AutoPick/job010/autopick.star``.
    project_dir
        When given, paths (both columns) are written relative to it when they lie inside it (relative
        paths count from the current directory), else absolute. Without it they are written as given.
        Symbolic links are never resolved, so the names stay those of the user's RELION project.
    """

    def in_project(p: str | os.PathLike) -> str:
        if project_dir is None:
            return Path(p).as_posix()
        absolute, base = os.path.abspath(p), os.path.abspath(project_dir)
        if os.path.commonpath([absolute, base]) == base:
            return Path(os.path.relpath(absolute, base)).as_posix()
        return Path(absolute).as_posix()

    block = pd.DataFrame({"rlnMicrographName": [in_project(k) for k in mapping],
                          "rlnMicrographCoordinates": [in_project(v) for v in mapping.values()]})
    _write_star({"coordinate_files": block}, path, "%.6f")


def write_index(written: Mapping[str, Path], directory: str | os.PathLike,
                micrograph_paths: Mapping[str, str] | None = None, micrograph_suffix: str = ".mrc",
                project_dir: str | os.PathLike | None = None, index_name: str = INDEX_NAME, **_: object) -> Path:
    """Index for per-micrograph files just written (called by :func:`cryopick.io.coords.write_picks`).

    Coordinate paths are written relative to ``project_dir`` (default: the current directory, i.e. run
    cryopick from the RELION project directory) when they lie inside it, else absolute.
    """
    base = Path(project_dir) if project_dir is not None else Path.cwd()
    paths = micrograph_paths or {}
    mapping = {}
    for name, coord in written.items():
        coord = Path(coord).resolve()
        try:
            rel = coord.relative_to(base.resolve()).as_posix()
        except ValueError:
            rel = coord.as_posix()
        mapping[paths.get(name, name + micrograph_suffix)] = rel
    out = Path(directory) / index_name
    write_autopick_index(mapping, out)
    return out
