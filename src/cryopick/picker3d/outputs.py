"""Files of a 3D picking run: coordinate files per format and class, the indexes over every finished
tomogram, old-style resume markers, and the annotated truth of a tomogram.

Layout of an output folder ``OUT`` (``<name>`` = the tomogram's ``_rlnTomoName``: from the
``tomograms.star`` it came from, else its file stem under the ``--tomo-name`` rule; ``<label>`` = the
prompt's label)::

    OUT/relion5/<label>/<name>_autopick.star      RELION 5 tomography STAR: centred Å (_rlnCenteredCoordinate*Angst)
    OUT/relion5/<label>/autopick.star             index over every finished tomogram
    OUT/relion5/<label>/particles.star            every finished tomogram's picks in one RELION 5 particles table
    OUT/relion5/<label>/optimisation_set.star     that table + OUT/relion5/tomograms.star, for RELION 5's jobs
    OUT/relion5/tomograms.star                    RELION 5 tomograms.star of every finished tomogram: its row of
                                                  the input tomograms.star, else bin-1 size = size as stored,
                                                  tilt-series pixel size = voxel size, binning 1
    OUT/relion4/<label>/<name>.star               RELION 4 tomography STAR: _rlnTomoName, _rlnCoordinateX/Y/Z in
                                                  bin-1 pixels (voxels x binning)
    OUT/imod/<label>/<name>.coords                x y z voxels as stored
    OUT/copick/ExperimentRuns/<name>/Picks/cryopick_0_<label>.json    copick, Å
    OUT/montage/<name>_<label>.png                z-slices with the picks
    OUT/.cryopick/<name>.json                     record of a finished tomogram (see cryopick.io.resume)

Every tomogram gets a file in every requested format and class, also with no picks (an empty, valid
file), so "no picks" is told apart from "not processed".
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from cryopick.errors import CryopickError
from cryopick.io.images import Image
from cryopick.io.resume import RunState
from cryopick.picks import Picks

log = logging.getLogger(__name__)

FORMATS = ("relion5", "relion4", "copick", "imod")
#: Old spellings of formats: ``relion3`` wrote voxels under ``_rlnMicrographName``, which RELION 4/5 do not
#: read for tomograms; it now means ``relion4``.
ALIASES = {"relion3": "relion4"}
LEGACY_DIR = ".done"  # resume markers of cryopick <= 0.1 (pick3d), still honoured


def check_formats(formats: Iterable[str]) -> list[str]:
    """The requested 3D output formats, checked and without duplicates (old spellings warned and mapped)."""
    formats = list(formats)
    for old in dict.fromkeys(f for f in formats if f in ALIASES):
        log.warning("3D output format %r is deprecated (RELION does not read its voxels under _rlnMicrographName "
                    "for tomograms); writing %r instead", old, ALIASES[old])
    out = list(dict.fromkeys(ALIASES.get(f, f) for f in formats))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise CryopickError(f"unknown 3D output format(s) {', '.join(bad) or '(none)'}; use {', '.join(FORMATS)}")
    return out


def label_folder(label: str | None) -> str:
    """Folder / file name part of a class label (``particle`` when empty)."""
    return label or "particle"


def output_path(out_dir: str | os.PathLike, fmt: str, label: str | None, name: str) -> Path:
    """Where the picks of tomogram ``name`` and class ``label`` go in format ``fmt``."""
    out_dir, folder = Path(out_dir), label_folder(label)
    if fmt == "relion5":
        return out_dir / "relion5" / folder / f"{name}_autopick.star"
    if fmt == "relion4":
        return out_dir / "relion4" / folder / f"{name}.star"
    if fmt == "imod":
        return out_dir / "imod" / folder / f"{name}.coords"
    if fmt == "copick":
        return out_dir / "copick" / "ExperimentRuns" / name / "Picks" / f"cryopick_0_{folder}.json"
    raise CryopickError(f"unknown 3D output format {fmt!r}; use {', '.join(FORMATS)}")


def write_tomogram_picks(picks: Picks, out_dir: str | os.PathLike, formats: Iterable[str], name: str,
                         labels: Sequence[str], tomo_shape: Sequence[int], geometry=None) -> list[Path]:
    """Write the picks of one tomogram ``name`` (shape ``(D, H, W)`` as stored), one file per format and
    label in ``labels`` — an empty, valid file for a class without picks. ``geometry``
    (:class:`~cryopick.io.formats.relion_tomo.TomoGeometry`, from a ``tomograms.star``) places its voxels
    in RELION's frame (default: as stored, binning 1). Returns the files."""
    from cryopick.io.formats import copick, imod, relion
    from cryopick.io.formats.relion_tomo import write_relion4

    written = []
    size = tuple(int(s) for s in tomo_shape[::-1])
    for label in labels:
        sub = picks._with(picks.table[(picks.table["label"] == label) & (picks.table["micrograph"] == name)])
        for fmt in check_formats(formats):
            path = output_path(out_dir, fmt, label, name)
            if fmt == "relion5":
                relion.write(sub, path, tomo_size=size, tomograms={name: geometry} if geometry else None)
            elif fmt == "relion4":
                write_relion4(sub, path, geometry)
            elif fmt == "imod":
                imod.write(sub, path)
            else:
                copick.write(sub, path, object_name=label_folder(label))
            written.append(path)
    return written


def write_picks3d(picks: Picks, out_dir: str | os.PathLike, formats: Iterable[str],
                  tomo_shape: Sequence[int] | None = None) -> list[Path]:
    """Write 3D picks per tomogram and class (see the module docstring for the layout; ``relion5``
    needs ``tomo_shape`` (D, H, W) for its centred coordinates). Indexes are written by
    :func:`rebuild_indexes`."""
    labels = list(dict.fromkeys(picks.table["label"].tolist()))
    written = []
    for name in picks.micrographs:
        if tomo_shape is None and "relion5" in formats:
            raise CryopickError("relion5 output needs the tomogram shape (tomo_shape) for its centred coordinates")
        written += write_tomogram_picks(picks, out_dir, formats, name, labels, tomo_shape or (0, 0, 0))
    return written


def tomo_geometry(record: dict):
    """Where a finished tomogram (its record) lies in RELION's frame: from its ``tomograms.star`` row,
    else as stored (binning 1); ``None`` when its size or voxel size is unknown."""
    from cryopick.io.formats.relion_tomo import TomoGeometry

    if record.get("relion"):
        return TomoGeometry.from_record(record["relion"])
    if record.get("shape") and record.get("voxel_size"):
        return TomoGeometry.as_stored(record["tomogram"], record["shape"][::-1], record["voxel_size"])
    return None


def rebuild_indexes(out_dir: str | os.PathLike, records: Sequence[dict], labels: Sequence[str],
                    formats: Iterable[str], project_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the RELION files over every finished tomogram (``records``: the run's finished-tomogram
    records, from every run into ``out_dir``): ``relion5/<label>/autopick.star`` listing each
    tomogram's coordinate file (paths relative to ``project_dir``, default the current directory, when
    inside it), ``relion5/<label>/particles.star`` with all their picks, and ``relion5/tomograms.star``
    (each tomogram's row of the ``tomograms.star`` it came from, else its size and voxel size)."""
    import pandas as pd
    import starfile

    from cryopick.io.formats._star import write_star
    from cryopick.io.formats.relion import write_index
    from cryopick.io.formats.relion_tomo import write_optimisation_set, write_tomograms_star

    out_dir = Path(out_dir)
    if "relion5" not in formats:
        return []
    written = []
    for label in labels:
        coords = {r["tomogram"]: output_path(out_dir, "relion5", label, r["tomogram"]) for r in records}
        coords = {n: p for n, p in coords.items() if p.is_file()}
        tomo_paths = {r["tomogram"]: r.get("path") or f"{r['tomogram']}.mrc" for r in records}
        folder = out_dir / "relion5" / label_folder(label)
        written.append(write_index(coords, folder, micrograph_paths=tomo_paths, project_dir=project_dir))
        tables = [starfile.read(p, always_dict=True, parse_as_string=["rlnTomoName"]).get("particles")
                  for p in coords.values()]
        tables = [t for t in tables if isinstance(t, pd.DataFrame) and len(t)]
        if tables:
            write_star({"particles": pd.concat(tables, ignore_index=True)}, folder / "particles.star")
            written.append(folder / "particles.star")
        else:
            (folder / "particles.star").unlink(missing_ok=True)
            (folder / "optimisation_set.star").unlink(missing_ok=True)
    geometry = [g for g in map(tomo_geometry, records) if g is not None]
    if geometry:
        path = out_dir / "relion5" / "tomograms.star"
        write_tomograms_star(geometry, path, {r["tomogram"]: r["path"] for r in records if r.get("path")})
        written.append(path)
        for particles in [p for p in written if p.name == "particles.star"]:
            written.append(particles.parent / "optimisation_set.star")
            write_optimisation_set(particles, path, written[-1], project_dir)
    return written


def migrate_legacy_markers(out_dir: str | os.PathLike, state: RunState) -> int:
    """Turn ``OUT/.done/<name>.json`` markers of earlier versions into :class:`RunState` records, so
    half-done runs of those versions resume (their tomograms count as finished). Returns how many."""
    from cryopick.io.images import read_tomogram

    legacy = Path(out_dir) / LEGACY_DIR
    if not legacy.is_dir():
        return 0
    n = 0
    for marker in sorted(legacy.glob("*.json")):
        name = marker.stem
        if state.record(name) is None:
            try:
                old = json.loads(marker.read_text())
            except (OSError, UnicodeDecodeError, ValueError):
                log.warning("%s is damaged; %s will be picked again", marker, name)
                marker.unlink(missing_ok=True)
                continue
            record = {"tomogram": name, "path": old.get("tomogram"), "picks": old.get("picks", {}), "legacy": True}
            try:
                image = read_tomogram(old.get("tomogram"))
                record.update(shape=list(image.shape), voxel_size=image.pixel_size)
            except (CryopickError, OSError, TypeError):
                pass  # the tomogram moved: the index lists it, tomograms.star cannot
            state.mark_done(name, record)
            n += 1
        marker.unlink(missing_ok=True)
    if not any(legacy.iterdir()):
        legacy.rmdir()
    if n:
        log.info("%s: %d tomogram(s) finished by an earlier cryopick version count as done", out_dir, n)
    return n


def remove_outputs(records: Sequence[dict], out_dir: str | os.PathLike | None = None) -> int:
    """Delete the files listed in ``records`` (outputs of a run being replaced with ``redo``, or of a
    tomogram that failed half-way); with ``out_dir`` also its RELION indexes (rebuilt at the end)."""
    files = [Path(f) for r in records for f in r.get("files", [])]
    if out_dir is not None:
        files += sorted(Path(out_dir).glob("relion5/*/autopick.star")) + [Path(out_dir) / "relion5" / "tomograms.star"]
        files += sorted(Path(out_dir).glob("relion5/*/particles.star"))
        files += sorted(Path(out_dir).glob("relion5/*/optimisation_set.star"))
    n = 0
    for p in files:
        if p.is_file():
            p.unlink()
            n += 1
    return n


def read_truth(path: str | os.PathLike, image: Image, label: str | None = None) -> Picks:
    """Annotated 3D picks of ``image`` from any coordinate file, in voxels of ``image`` as stored.

    RELION 5 centred coordinates are converted with the tomogram's size and voxel size; rows of
    other tomograms are dropped (a file naming one other tomogram is taken as this one's); ``label``
    keeps only rows of that class.
    """
    from cryopick import picks as P
    from cryopick.io.coords import read_picks

    size = tuple(int(s) for s in image.shape[::-1])
    truth = read_picks(path, tomo_size=size, voxel_size=image.pixel_size)
    if truth.ndim != 3:
        raise CryopickError(f"{path}: 2D coordinates; 3D picking needs x, y, z")
    if image.name in truth.micrographs:
        truth = truth.for_micrograph(image.name)
    elif len(truth.micrographs) > 1:
        raise CryopickError(f"{path}: no rows for tomogram {image.name!r} (it names {truth.micrographs[:3]} ...)")
    if label:
        labels = set(truth.table["label"])
        truth = truth._with(truth.table[truth.table["label"] == label])
        if not len(truth):
            raise CryopickError(f"{path}: no rows with label {label!r} (labels: {', '.join(sorted(map(str, labels)))})")
    truth = P.match_pixel_size(truth, image.pixel_size)
    return truth


def picks_counts(picks: Picks, labels: Sequence[str]) -> dict[str, int]:
    """Picks per label (every label present, zeros included)."""
    counts = picks.table["label"].value_counts().to_dict()
    return {label: int(counts.get(label, 0)) for label in labels}

