"""Read and write particle coordinates in every supported format.

>>> picks = read_picks("AutoPick/job006/autopick.star")           # format from extension / content
>>> picks = read_picks("coordinates/", format="cryoppp", flip_y=True, height=4096)
>>> write_picks(picks, "out/", "relion")                          # <mic>_autopick.star + autopick.star

Each format lives in ``cryopick.io.formats.<name>`` with ``read(path, **opts) -> Picks`` and
``write(picks, path, **opts)``; format modules never convert frames. The explicit conversions a user
may ask for are applied here, by :func:`apply_options`, in this fixed order:

1. ``pixel_size`` — state the Å/px of the coordinates (when the file does not);
2. ``swap_xy`` — exchange x and y;
3. ``flip_y`` — ``y -> height - 1 - y`` (needs ``height``, the image height in pixels of the frame
   the coordinates are in at this step);
4. ``scale`` (multiply coordinates and diameters) or ``to_pixel_size`` (rescale to that Å/px);
5. ``min_score`` — drop picks scoring below it (picks without a score are kept).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Mapping

import numpy as np

from cryopick import picks as P
from cryopick.errors import CryopickError
from cryopick.io.formats._common import split_by_micrograph
from cryopick.io.names import match_micrograph_names as match_micrograph_names  # re-exported
from cryopick.io.names import normalise_name as normalise_name  # re-exported
from cryopick.io.runinfo import run_diameter, run_threshold
from cryopick.picks import Picks

log = logging.getLogger(__name__)

#: format name -> (module, one-line description)
FORMATS: dict[str, str] = {
    "relion": "RELION STAR: 3.x per-micrograph _autopick.star, 4+/5 autopick.star index, particles, RELION 5 tomo",
    "cryoppp": "CryoPPP CSV: X-Coordinate,Y-Coordinate,Diameter (y from the top of the JPEG)",
    "eman2": "EMAN2 .box: lower-left corner x, y, box width, height",
    "cryolo": "crYOLO .cbox: STAR-like, lower-left corner, _EstWidth/_EstHeight/_Confidence",
    "topaz": "Topaz txt: image_name x_coord y_coord score (tab separated)",
    "imod": "IMOD text .coords: x y z per line (model2point)",
    "copick": "copick picks JSON: locations in Å (needs the pixel size)",
}

ALIASES = {"star": "relion", "csv": "cryoppp", "box": "eman2", "cbox": "cryolo", "txt": "topaz",
           "coords": "imod", "json": "copick", "crYOLO": "cryolo", "eman": "eman2"}

_BY_EXTENSION = {".star": "relion", ".csv": "cryoppp", ".box": "eman2", ".cbox": "cryolo", ".txt": "topaz",
                 ".tsv": "topaz", ".coords": "imod", ".json": "copick"}


def format_module(name: str) -> ModuleType:
    """The module implementing format ``name`` (aliases such as ``star`` or ``box`` accepted)."""
    key = ALIASES.get(name, ALIASES.get(name.lower(), name.lower()))
    if key not in FORMATS:
        raise CryopickError(f"unknown coordinate format {name!r}; choose one of {', '.join(FORMATS)}")
    return importlib.import_module(f"cryopick.io.formats.{key}")


def guess_format(path: str | os.PathLike) -> str:
    """Format name from a file's extension (and, for ``.txt``, its first line) or a directory's files."""
    path = Path(path)
    if path.is_dir():
        files = [p for p in _files(path) if p.suffix.lower() in _BY_EXTENSION]
        if not files:
            raise CryopickError(f"{path}: no coordinate files found (looked for {', '.join(_BY_EXTENSION)})")
        ext = Counter(p.suffix.lower() for p in files).most_common(1)[0][0]
        return guess_format(next(p for p in files if p.suffix.lower() == ext))
    ext = path.suffix.lower()
    if ext not in _BY_EXTENSION:
        raise CryopickError(
            f"{path}: unknown coordinate file extension {ext or '(none)'!r}; give the format "
            f"(--from / format=) as one of {', '.join(FORMATS)}"
        )
    if ext in (".txt", ".tsv") and path.is_file():
        first = _first_data_line(path)
        if first is not None and "image_name" not in first and re.fullmatch(r"[\s\d.eE+-]+", first):
            return "imod"
    return _BY_EXTENSION[ext]


def _first_data_line(path: Path) -> str | None:
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                if line.strip() and not line.lstrip().startswith("#"):
                    return line.strip()
    except OSError:
        return None
    return None


def _files(directory: Path) -> list[Path]:
    top = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if any(p.suffix.lower() in _BY_EXTENSION for p in top):
        return top
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


# -- options ---------------------------------------------------------------------------------
def apply_options(picks: Picks, *, pixel_size: float | None = None, swap_xy: bool = False, flip_y: bool = False,
                  height: float | None = None, scale: float | None = None, to_pixel_size: float | None = None,
                  min_score: float | None = None, source: str = "picks") -> Picks:
    """Apply the explicit conversions in the documented order (see module docstring)."""
    for key, value in (("pixel_size", pixel_size), ("height", height), ("scale", scale),
                       ("to_pixel_size", to_pixel_size)):
        if value is not None and not (np.isfinite(float(value)) and float(value) > 0):
            raise CryopickError(f"{source}: {key} must be a number > 0, got {value}")
    if min_score is not None and np.isnan(float(min_score)):
        raise CryopickError(f"{source}: min_score must be a number, got {min_score}")
    if pixel_size is not None:
        picks = picks._with(picks.table, pixel_size=float(pixel_size))
    if swap_xy:
        picks = P.swap_xy(picks)
    if flip_y:
        if height is None:
            raise CryopickError(f"{source}: flipping y needs the image height in pixels (--height H / height=)")
        picks = P.flip_y(picks, height)
    if scale is not None and to_pixel_size is not None:
        raise CryopickError(f"{source}: give either a scale factor or a target pixel size, not both")
    if scale is not None:
        picks = P.scale(picks, float(scale))
    if to_pixel_size is not None:
        picks = P.to_pixel_size(picks, float(to_pixel_size))
    if min_score is not None:
        picks = P.filter_score(picks, float(min_score))
    return picks


_OPTION_KEYS = ("swap_xy", "flip_y", "height", "scale", "to_pixel_size", "min_score")


def _split_options(opts: dict) -> tuple[dict, dict]:
    conv = {k: opts.pop(k) for k in _OPTION_KEYS if k in opts}
    return conv, opts


# -- reading ---------------------------------------------------------------------------------
def read_picks(path_or_dir: str | os.PathLike, format: str | None = None, **opts) -> Picks:
    """Read coordinates from a file, or from a directory of per-micrograph files.

    Parameters
    ----------
    path_or_dir
        A coordinate file, or a directory whose coordinate files (of one format) are read and
        concatenated; each file's micrograph name is its stem without ``_autopick`` /
        ``_manualpick`` / ``_particles`` (formats that name the micrograph inside keep that name).
    format
        Format name (see :data:`FORMATS`, aliases like ``star``, ``box`` accepted); default: guessed
        from the extension (``.txt`` content decides between Topaz and IMOD).
    **opts
        Conversion options (``pixel_size``, ``swap_xy``, ``flip_y`` + ``height``, ``scale`` or
        ``to_pixel_size``, ``min_score``; see :func:`apply_options`) and format options passed to the
        format's ``read`` (e.g. ``diameter``, ``tomo_size``, ``voxel_size``, ``micrograph``).

    Returns
    -------
    Picks
        With ``meta["source"]`` set to the path read; picks from a cryopick output folder that states
        them also get ``meta["written_threshold"]`` (and ``"threshold_source"``) and, when they have no
        diameter, the folder's diameter (``meta["diameter_source"]``).

    Raises
    ------
    CryopickError
        Missing file, unknown format, missing columns, non-numeric or NaN coordinates.
    """
    path = Path(path_or_dir)
    if not path.exists():
        raise CryopickError(f"{path}: no such file or directory")
    conv, fmt_opts = _split_options(dict(opts))
    pixel_size = fmt_opts.get("pixel_size")
    name = format or guess_format(path)
    module = format_module(name)
    if path.is_dir() and format is None:
        _warn_other_formats(path, module)
    if path.is_dir():
        picks = _read_directory(path, module, fmt_opts)
    else:
        picks = module.read(path, **fmt_opts)
    if pixel_size is not None and picks.pixel_size is None:
        conv["pixel_size"] = pixel_size
    if fmt_opts.get("diameter") is None:
        picks = _fill_run_diameter(picks, path)
    picks = apply_options(picks, source=str(path), **conv)
    picks.meta["source"] = str(path)
    picks.meta["format"] = module.NAME
    written = run_threshold(path)
    if written is not None:
        picks.meta["written_threshold"], picks.meta["threshold_source"] = written[0], str(written[1])
    return picks


def _warn_other_formats(directory: Path, module: ModuleType) -> None:
    """A folder guessed as one format that also holds coordinate files of another (say RELION ``.star``
    beside cryoPPP ``.csv``) reads only the first kind: say which files are left out and how to read them.
    (``.json`` files are left out of this: output folders hold JSON manifests beside their coordinates.)"""
    others = Counter(p.suffix.lower() for p in _files(directory)
                     if p.suffix.lower() in _BY_EXTENSION and p.suffix.lower() not in module.EXTENSIONS
                     and p.suffix.lower() != ".json")
    if others:
        left = ", ".join(f"{n} {ext}" for ext, n in sorted(others.items()))
        choices = ", ".join(sorted({_BY_EXTENSION[ext] for ext in others}))
        log.warning("%s: read as %s (%s files); left out %s file(s) of another format: give the format "
                    "(--from / format=) %s to read those instead", directory, module.NAME,
                    "/".join(module.EXTENSIONS), left, choices)


def _fill_run_diameter(picks: Picks, path: Path) -> Picks:
    """Picks without a diameter, read from a cryopick output folder that states it, get that diameter."""
    missing = ~np.isfinite(picks.table["diameter"].to_numpy(dtype=np.float64))
    if not missing.any():
        return picks
    found = run_diameter(path)
    if found is None:
        return picks
    diameter, source = found
    table = picks.table.copy()
    table.loc[missing, "diameter"] = diameter
    out = picks._with(table)
    out.meta["diameter_source"] = str(source)
    log.info("%s: particle diameter %g px from %s", path, diameter, source)
    return out


def _read_directory(directory: Path, module: ModuleType, opts: dict) -> Picks:
    if hasattr(module, "read_directory"):
        return module.read_directory(directory, **opts)
    files = [p for p in _files(directory) if p.suffix.lower() in module.EXTENSIONS]
    if not files:
        raise CryopickError(
            f"{directory}: no {module.NAME} coordinate files ({', '.join(module.EXTENSIONS)}) in this directory"
        )
    if hasattr(module, "is_index"):
        indexes = [p for p in files if module.is_index(p)]
        if indexes:  # an index already lists the per-micrograph files; reading both would duplicate
            files = indexes
    parts = [module.read(p, **opts) for p in files]
    picks = P.concat(parts)
    layouts = {part.meta.get("csv_layout") for part in parts}
    if len(layouts) == 1 and None not in layouts:
        picks.meta["csv_layout"] = layouts.pop()
    return picks


# -- writing ---------------------------------------------------------------------------------
def write_picks(picks: Picks, path_or_dir: str | os.PathLike, format: str | None = None,
                per_micrograph: bool = True, overwrite: bool = True, **opts) -> list[Path]:
    """Write picks, atomically (an interrupted write never leaves a half-written file).

    Parameters
    ----------
    picks
        The picks to write (conversion options, if any, are applied first; see :func:`apply_options`).
    path_or_dir
        A file path with the format's extension writes one file (formats that hold one micrograph per
        file need ``per_micrograph=True`` and picks of one micrograph, or see below). Any other path is
        a directory that receives one file per micrograph, ``<name><suffix>`` (RELION also gets an
        ``autopick.star`` index; copick gets its ``ExperimentRuns/<run>/Picks/`` tree).
    format
        Format name; default: guessed from the file extension.
    per_micrograph
        ``True`` (split): one file per micrograph when ``path_or_dir`` is a directory.
        ``False`` (merge): a single file holding all micrographs (RELION particles table, Topaz txt,
        CryoPPP CSV with a ``Micrograph`` column); formats that cannot hold several micrographs refuse.
    overwrite
        ``False``: refuse (before writing anything) when a file this call would write exists already.
    **opts
        Conversion options and format options (e.g. ``diameter``/``box_size``, ``tomo_size``,
        ``voxel_size``, ``micrograph_paths``, ``decimals``).

    Returns
    -------
    list of Path
        The files written (the index last, for RELION).
    """
    path = Path(path_or_dir)
    conv, fmt_opts = _split_options(dict(opts))
    before = picks
    picks = apply_options(picks, source=str(path), **conv)
    if fmt_opts.get("tomo_size") is not None and (conv.get("scale") or conv.get("to_pixel_size")):
        # the tomogram size is given in the frame before rescaling, like the picks
        factor = conv.get("scale") or before.pixel_size / conv["to_pixel_size"]
        fmt_opts["tomo_size"] = _scale_size(fmt_opts["tomo_size"], factor)
    module = format_module(format or guess_format(path))
    is_file = _is_file_target(path, module)
    if not per_micrograph and not is_file:
        raise CryopickError(
            f"{path}: merging into one file needs a file name ending in {' or '.join(module.EXTENSIONS)}"
        )
    if is_file:
        if len(picks.micrographs) > 1 and not module.MULTI_MICROGRAPH:
            merge_option = getattr(module, "MERGE_OPTION", None)
            if per_micrograph or merge_option is None:
                raise CryopickError(
                    f"{path}: {len(picks.micrographs)} micrographs cannot go into one {module.NAME} file; give a "
                    "directory to write one file per micrograph (--split)"
                    + (" or merge them into one file (--merge)" if merge_option else "")
                )
            fmt_opts.setdefault(merge_option, True)
        if not overwrite:
            _refuse_existing([path], path)
        try:
            module.write(picks, path, **fmt_opts)
        except OSError as exc:
            raise _write_error(exc, path) from exc
        return [path]
    if path.exists() and not path.is_dir():
        raise CryopickError(
            f"{path}: is an existing file, but {module.NAME} output goes into a directory (one file per "
            f"micrograph); give a directory name, or a file name ending in {' or '.join(module.EXTENSIONS)} "
            "to write one file"
        )
    if not overwrite:
        _refuse_existing(_planned_files(picks, path, module, fmt_opts), path)
    existed = path.exists()
    before = set(path.rglob("*")) if existed else set()
    try:
        if hasattr(module, "write_directory"):
            return module.write_directory(picks, path, **fmt_opts)
        path.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for name, sub in split_by_micrograph(picks):
            out = path / f"{name}{module.DEFAULT_SUFFIX}"
            module.write(sub, out, **fmt_opts)
            written[name] = out
        files = list(written.values())
        if hasattr(module, "write_index"):
            files.append(module.write_index(written, path, **fmt_opts))
        return files
    except BaseException as exc:
        _remove_new(path, before, existed)  # all or nothing: no partial set of files from this call
        if isinstance(exc, OSError):
            raise _write_error(exc, path) from exc
        raise


def _planned_files(picks: Picks, directory: Path, module: ModuleType, opts: dict) -> list[Path]:
    """The files writing ``picks`` into ``directory`` would create or replace."""
    if hasattr(module, "directory_paths"):
        return module.directory_paths(picks, directory, **opts)
    files = [directory / f"{name}{module.DEFAULT_SUFFIX}" for name in picks.micrographs]
    if hasattr(module, "write_index"):
        files.append(directory / opts.get("index_name", module.INDEX_NAME))
    return files


def _refuse_existing(files: list[Path], target: Path) -> None:
    existing = [f for f in files if f.exists() or f.is_symlink()]
    if existing:
        shown = ", ".join(str(f) for f in existing[:3]) + (f" (+{len(existing) - 3} more)" if len(existing) > 3 else "")
        raise CryopickError(f"{target}: {len(existing)} output file(s) exist already ({shown}); choose another "
                            "output or add --force to overwrite them")


def _write_error(exc: OSError, target: Path) -> CryopickError:
    where = exc.filename or target
    return CryopickError(f"{where}: cannot write ({exc.strerror or exc}); choose an output location you can write to")


def _remove_new(directory: Path, before: set[Path], existed: bool) -> None:
    if not directory.exists():
        return
    new = sorted(set(directory.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True)
    for p in new:
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    if not existed and not any(directory.iterdir()):
        directory.rmdir()


def _scale_size(size, factor: float):
    if isinstance(size, Mapping):
        return {k: tuple(float(v) * factor for v in s) for k, s in size.items()}
    return tuple(float(v) * factor for v in size)


def _is_file_target(path: Path, module: ModuleType) -> bool:
    if path.is_dir():
        return False
    return path.suffix.lower() in module.EXTENSIONS
