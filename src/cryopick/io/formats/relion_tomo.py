"""RELION 4/5 tomography: ``tomograms.star`` in and out, the centred-Å convention, RELION 4 tomogram
coordinates, and tomogram names as RELION gives them.

What RELION 5 does (3dem/relion, branch ``ver5.0``, commit 73f0a3c0; see docs/formats.md)
------------------------------------------------------------------------------------------
- ``tomograms.star`` (``data_global``, one row per tomogram): ``_rlnTomoName``; ``_rlnTomoSize{X,Y,Z}``
  = "width/height/depth of a **bin-1** tomogram in pixels"; ``_rlnTomoTiltSeriesPixelSize`` = pixel
  size of the original tilt series; ``_rlnTomoTomogramBinning`` = binning of the reconstruction; the
  reconstruction ``_rlnTomoReconstructedTomogram`` (halves ``..Half1`` / ``..Half2``), denoised by the
  cryoCARE job as ``_rlnTomoReconstructedTomogramDenoised`` (``_rlnTomoDenoisedTomogram`` is registered
  too) -- ``src/metadata_label.h``; RELION's Reconstruct job names the files ``rec_<rlnTomoName>.mrc``
  (``rec_<name>_half1.mrc``) -- ``TomoBackprojectProgram::getOutputFileName``.
- Voxel ``(x, y, z)`` (0-based) of the reconstruction lies at bin-1 pixel ``binning * (x, y, z)``
  (``RealSpaceBackprojection::backproject``: ``origin + x * spacing``, origin 0).
- The tomogram centre is ``size / 2`` in bin-1 pixels (``TomogramSet::loadTomogram``:
  ``centre = (w0/2.0, h0/2.0, d0/2.0)``), and ``_rlnCenteredCoordinate{X,Y,Z}Angst`` =
  ``(bin-1 pixel - centre) * tilt-series pixel size``
  (``ParticleSet::setParticleCoordDecenteredPixel`` / ``getParticleCoordDecenteredPixel``); extraction
  goes back with ``pixel / binning`` (``SubtomoProgram::extractSubtomogramsAndReProject``). So::

      Å     = (voxel * binning - size / 2) * pixel_size
      voxel = (Å / pixel_size + size / 2) / binning

- RELION 4 particle files give ``_rlnCoordinate{X,Y,Z}`` in bin-1 pixels with ``_rlnTomoName``; RELION 5
  still reads them as such (``getParticleCoordDecenteredPixel``, "backwards compatibility with relion-4").
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.formats._star import find_block, fom, read_blocks, write_star
from cryopick.io.images import Image, image_name, read_tomogram
from cryopick.picks import Picks

log = logging.getLogger(__name__)

DESCRIPTION = "a RELION 5 tomograms.star (data_global with _rlnTomoName, _rlnTomoSize{X,Y,Z}, ...)"
SIZE = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")
PIXEL_SIZE, BINNING, NAME = "rlnTomoTiltSeriesPixelSize", "rlnTomoTomogramBinning", "rlnTomoName"
#: Which reconstruction to pick (``--tomogram-kind``) -> the tomograms.star columns that name it, in order.
KINDS = {"reconstructed": ("rlnTomoReconstructedTomogram",),
         "denoised": ("rlnTomoReconstructedTomogramDenoised", "rlnTomoDenoisedTomogram"),
         "half1": ("rlnTomoReconstructedTomogramHalf1",), "half2": ("rlnTomoReconstructedTomogramHalf2",)}
NAME_RULES = "relion, strip:TEXT[,TEXT...] or regex:PATTERN"
_NO_FILE = ("", "N/A", "None", "nan")  # cryoCARE's job writes N/A for a tomogram it has not denoised


@dataclass(frozen=True)
class TomoGeometry:
    """Where a tomogram's voxels lie in RELION's frame: ``size`` (X, Y, Z) in bin-1 (tilt-series)
    pixels, the tilt-series ``pixel_size`` (Å) and the reconstruction's ``binning``; ``row`` keeps the
    whole ``tomograms.star`` row it came from (written back unchanged)."""

    name: str
    size: tuple[float, float, float]
    pixel_size: float
    binning: float = 1.0
    row: dict = field(default_factory=dict, compare=False)

    @property
    def voxel_size(self) -> float:
        """Å per voxel of the reconstruction."""
        return self.pixel_size * self.binning

    def to_angstrom(self, voxels) -> np.ndarray:
        """Voxels (x, y, z, 0-based) of the reconstruction -> ``_rlnCenteredCoordinate*Angst``."""
        return (np.asarray(voxels, float) * self.binning - np.asarray(self.size) / 2.0) * self.pixel_size

    def to_voxels(self, angstrom) -> np.ndarray:
        """``_rlnCenteredCoordinate*Angst`` -> voxels (x, y, z, 0-based) of the reconstruction."""
        return (np.asarray(angstrom, float) / self.pixel_size + np.asarray(self.size) / 2.0) / self.binning

    def as_record(self) -> dict:
        """JSON-safe form (kept in pick3d's records)."""
        return {"name": self.name, "size": [float(s) for s in self.size], "pixel_size": self.pixel_size,
                "binning": self.binning, "row": self.row}

    @classmethod
    def from_record(cls, data: Mapping) -> "TomoGeometry":
        return cls(str(data["name"]), tuple(float(s) for s in data["size"]), float(data["pixel_size"]),
                   float(data.get("binning", 1.0)), dict(data.get("row") or {}))

    @classmethod
    def as_stored(cls, name: str, shape_xyz: Sequence[float], voxel_size: float) -> "TomoGeometry":
        """A tomogram known only as a file: its own voxels are the bin-1 pixels (binning 1)."""
        return cls(name, tuple(float(s) for s in shape_xyz), float(voxel_size), 1.0)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def read_tomograms_star(path: str | os.PathLike) -> dict[str, TomoGeometry]:
    """Every tomogram of a RELION 5 ``tomograms.star``, by ``_rlnTomoName`` (binning 1 when the file
    has no ``_rlnTomoTomogramBinning``)."""
    path = Path(path)
    table = find_block(read_blocks(path, DESCRIPTION), NAME)
    need = [NAME, *SIZE, PIXEL_SIZE]
    missing = [c for c in need if table is None or c not in table.columns]
    if missing:
        raise CryopickError(f"{path}: no {', '.join('_' + c for c in missing)} column(s); expected {DESCRIPTION}")
    out: dict[str, TomoGeometry] = {}
    for i, row in enumerate(table.to_dict("records")):
        name = str(row[NAME])
        try:
            values = [float(row[c]) for c in (*SIZE, PIXEL_SIZE)] + [float(row.get(BINNING, 1.0))]
        except (TypeError, ValueError):
            values = [math.nan]
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise CryopickError(f"{path}: row {i + 1} ({name}): _rlnTomoSize{{X,Y,Z}}, _{PIXEL_SIZE} and _{BINNING} "
                                "must be numbers > 0")
        if name in out:
            raise CryopickError(f"{path}: tomogram {name!r} is listed twice; each _rlnTomoName must be unique")
        out[name] = TomoGeometry(name, tuple(values[:3]), values[3], values[4], {k: _plain(v) for k, v in row.items()})
    return out


def write_tomograms_star(geometries: Iterable[TomoGeometry], path: str | os.PathLike,
                         paths: Mapping[str, str] | None = None) -> None:
    """Write a RELION 5 ``tomograms.star`` (``data_global``), atomically: each tomogram's row from the
    ``tomograms.star`` it came from (every column kept, so RELION can use the file), else name, bin-1
    size, tilt-series pixel size, binning and ``_rlnTomoReconstructedTomogram`` = ``paths[name]``.
    Columns that not every row has are left out."""
    rows = []
    for g in geometries:
        row = dict(g.row)
        row.update({NAME: g.name, SIZE[0]: int(round(g.size[0])), SIZE[1]: int(round(g.size[1])),
                    SIZE[2]: int(round(g.size[2])), PIXEL_SIZE: float(g.pixel_size), BINNING: float(g.binning)})
        if not g.row and paths and g.name in paths:
            row["rlnTomoReconstructedTomogram"] = str(paths[g.name])
        rows.append(row)
    first = [NAME, *SIZE, PIXEL_SIZE, BINNING]
    shared = [c for c in dict.fromkeys(c for r in rows for c in r) if all(c in r for r in rows)]
    columns = first + [c for c in shared if c not in first]
    write_star({"global": pd.DataFrame(rows, columns=columns)}, path)


# -- names -------------------------------------------------------------------------------------
def name_rule(rule: str | None) -> Callable[[str], str]:
    """How a tomogram file stem becomes its ``_rlnTomoName``: ``None`` keeps the stem; ``relion`` drops
    RELION's ``rec_`` prefix and ``_half1``/``_half2`` suffix (``rec_TS_01.mrc`` -> ``TS_01``);
    ``strip:A,B`` removes every ``A`` and ``B`` (as ``relion_tomo_import_coordinates --remove_substring``);
    ``regex:PATTERN`` keeps the first group (or the whole match) of ``PATTERN`` searched in the stem."""
    if not rule:
        return lambda stem: stem
    kind, _, arg = rule.partition(":")
    if rule == "relion":
        return lambda stem: re.sub(r"_half[12]$", "", stem[4:] if stem.startswith("rec_") else stem)
    if kind == "strip" and arg:
        parts = [p for p in arg.split(",") if p]

        def strip(stem: str) -> str:
            for p in parts:
                stem = stem.replace(p, "")
            return stem
        return strip
    if kind == "regex" and arg:
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise CryopickError(f"--tomo-name {rule!r}: not a regular expression ({exc}); use {NAME_RULES}") from None

        def search(stem: str) -> str:
            m = pattern.search(stem)
            if m is None:
                raise CryopickError(f"--tomo-name {rule!r} does not match the tomogram name {stem!r}")
            return m.group(1) if pattern.groups else m.group(0)
        return search
    raise CryopickError(f"--tomo-name {rule!r}: unknown rule; use {NAME_RULES}")


def tomo_name(path: str | os.PathLike, rule: str | None) -> str:
    """``_rlnTomoName`` of the tomogram file ``path`` under ``rule`` (see :func:`name_rule`)."""
    stem = image_name(path)
    name = name_rule(rule)(stem)
    if not name:
        raise CryopickError(f"{path}: --tomo-name {rule!r} leaves an empty name of {stem!r}")
    return name


# -- tomograms to pick ---------------------------------------------------------------------------
@dataclass
class NamedImage(Image):
    """A tomogram file read under its RELION name."""

    tomo_name: str = ""

    @property
    def name(self) -> str:
        return self.tomo_name or image_name(self.path)


@dataclass
class TomogramFile:
    """One tomogram to pick, by name: a source of :func:`cryopick.picker3d.batch.pick_tomograms`
    (``name``, ``path``, ``read()``); ``geometry`` (from ``tomograms.star``) places its voxels in
    RELION's frame and gives its voxel size."""

    name: str
    path: str
    geometry: TomoGeometry | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.path})"

    def read(self) -> NamedImage:
        if self.path in _NO_FILE:
            raise CryopickError(f"{self.name}: the tomograms.star gives no file for this tomogram ({self.path!r})")
        image = read_tomogram(self.path)
        vs, g = image.pixel_size, self.geometry
        if g is not None:
            expected = np.asarray(g.size) / g.binning
            shape = np.asarray(image.data.shape[::-1], float)
            if np.any(np.abs(shape - expected) > 1.0):
                raise CryopickError(
                    f"{self.path}: {'x'.join(map(str, image.data.shape[::-1]))} voxels, but the tomograms.star "
                    f"row of {g.name} says {'x'.join(f'{s:g}' for s in g.size)} bin-1 pixels at binning {g.binning:g} "
                    f"(= {'x'.join(f'{s:g}' for s in expected)}); fix _rlnTomoSize{{X,Y,Z}} / _{BINNING}")
            if vs is not None and abs(vs - g.voxel_size) > 0.01 * g.voxel_size:
                log.warning("%s: header voxel size %g Å, tomograms.star %g Å x binning %g = %g Å; using the latter",
                            self.path, vs, g.pixel_size, g.binning, g.voxel_size)
            vs = g.voxel_size
        return NamedImage(data=image.data, pixel_size=vs, path=image.path, tomo_name=self.name)


def _resolve(entry: str, star: Path, project_dir: str | os.PathLike | None) -> Path | None:
    p = Path(entry)
    if p.is_absolute():
        return p if p.exists() else None
    bases = [Path(project_dir)] if project_dir is not None else [Path.cwd(), *star.resolve().parents]
    found = next((b / p for b in bases if (b / p).exists()), None)
    return None if found is None else Path(os.path.abspath(found))  # Dask workers have their own folder


def star_tomograms(star: str | os.PathLike, kind: str = "reconstructed", names: Sequence[str] | None = None,
                   project_dir: str | os.PathLike | None = None) -> list[TomogramFile]:
    """The tomograms a RELION 5 ``tomograms.star`` lists (``names``: only these), each with its
    geometry. ``kind`` picks the column (:data:`KINDS`); paths in it are relative to ``project_dir``
    (default: the current folder, else a folder above the file: RELION's project folder)."""
    star = Path(star)
    if kind not in KINDS:
        raise CryopickError(f"unknown tomogram kind {kind!r}; use {', '.join(KINDS)}")
    geometry = read_tomograms_star(star)
    if names is not None:
        unknown = [n for n in names if n not in geometry]
        if unknown:
            raise CryopickError(f"{star}: no tomogram {', '.join(map(repr, unknown))}; it lists "
                                f"{', '.join(list(geometry)[:10])}{' ...' if len(geometry) > 10 else ''}")
        geometry = {n: geometry[n] for n in names}
    rows = next(iter(geometry.values())).row if geometry else {}
    column = next((c for c in KINDS[kind] if c in rows), None)
    if column is None:
        present = [k for k, cols in KINDS.items() if any(c in rows for c in cols)]
        raise CryopickError(f"{star}: no {' / '.join('_' + c for c in KINDS[kind])} column (the {kind} tomograms); "
                            + (f"it has {', '.join(present)}: give --tomogram-kind {present[0]}" if present else
                               "reconstruct the tomograms in RELION first"))
    out, found = [], 0
    for name, g in geometry.items():
        entry = str(g.row.get(column, ""))
        resolved = None if entry in _NO_FILE else _resolve(entry, star, project_dir)
        found += resolved is not None
        out.append(TomogramFile(name, str(resolved or entry), g))
    if out and not found:
        raise CryopickError(f"{star}: none of the tomograms in _{column} found (e.g. {out[0].path!r}); run from "
                            "the RELION project folder or give --project-dir")
    return out


def star_tomogram(star: str | os.PathLike, name: str, kind: str = "reconstructed",
                  project_dir: str | os.PathLike | None = None) -> TomogramFile:
    """One tomogram of a ``tomograms.star`` (``prompt --tomograms-star STAR --tomo-name NAME``)."""
    return star_tomograms(star, kind, [name], project_dir)[0]


def named_tomograms(paths: Sequence[str | os.PathLike], rule: str | None) -> list[TomogramFile]:
    """Tomogram files named by ``rule`` (:func:`name_rule`)."""
    return [TomogramFile(tomo_name(p, rule), str(p)) for p in paths]


# -- RELION 4 coordinates --------------------------------------------------------------------------
def write_relion4(picks: Picks, path: str | os.PathLike, geometry: TomoGeometry | None = None) -> None:
    """RELION 4 tomography particles, atomically: ``_rlnTomoName`` and ``_rlnCoordinate{X,Y,Z}`` in
    bin-1 (tilt-series) pixels = voxels x ``geometry.binning`` (voxels as stored without a geometry)."""
    t = picks.table
    binning = 1.0 if geometry is None else geometry.binning
    xyz = picks.coords.reshape(-1, 3) * binning
    block = pd.DataFrame({NAME: t["micrograph"].astype(str).to_numpy(), "rlnCoordinateX": xyz[:, 0],
                          "rlnCoordinateY": xyz[:, 1], "rlnCoordinateZ": xyz[:, 2],
                          "rlnAutopickFigureOfMerit": fom(t["score"].to_numpy(float))})
    write_star({"particles": block}, path)


def open_tomogram(path: str | os.PathLike | None = None, tomograms_star: str | os.PathLike | None = None,
                  name: str | None = None, kind: str = "reconstructed",
                  project_dir: str | os.PathLike | None = None) -> Image:
    """The tomogram ``prompt`` cuts from: the ``name`` row of ``tomograms_star`` (its file, RELION name and
    voxel size), or the file ``path`` named ``name`` (a name, or a :func:`name_rule`; default its stem)."""
    if tomograms_star is not None:
        if not name:
            names = list(read_tomograms_star(tomograms_star))
            raise CryopickError(f"{tomograms_star}: give the tomogram with --tomo-name (one of {', '.join(names[:10])}"
                                f"{' ...' if len(names) > 10 else ''})")
        return star_tomogram(tomograms_star, name, kind, project_dir).read()
    if path is None:
        raise CryopickError("give the tomogram with --tomogram FILE or --tomograms-star STAR --tomo-name NAME")
    if kind != "reconstructed":
        raise CryopickError(f"--tomogram-kind {kind} chooses a column of --tomograms-star; give --tomograms-star")
    if not name:
        return read_tomogram(path)
    is_rule = name == "relion" or name.startswith(("strip:", "regex:"))
    return TomogramFile(tomo_name(path, name) if is_rule else name, str(path)).read()


def write_optimisation_set(particles: str | os.PathLike, tomograms: str | os.PathLike, path: str | os.PathLike,
                           project_dir: str | os.PathLike | None = None) -> None:
    """A RELION 5 ``optimisation_set.star`` (``_rlnTomoParticlesFile``, ``_rlnTomoTomogramsFile``), as
    RELION's picking job writes next to its ``particles.star``; paths relative to ``project_dir``
    (default: the current folder) when inside it, else absolute."""
    base = Path(project_dir if project_dir is not None else Path.cwd()).resolve()

    def rel(p) -> str:
        p = Path(p).resolve()
        return p.relative_to(base).as_posix() if p.is_relative_to(base) else p.as_posix()

    write_star({"optimisation_set": pd.DataFrame({"rlnTomoParticlesFile": [rel(particles)],
                                                  "rlnTomoTomogramsFile": [rel(tomograms)]})}, path)
