"""copick projects: read tomograms from, and write picks back into, a copick project (through ``copick``).

A copick project is a JSON config (a local folder, the CryoET Data Portal with a local overlay, ...)
opened with ``copick.from_file``. Its unit is the *run* (one tilt series): a run holds tomograms per
voxel spacing (Å) and type (``wbp``, ``denoised``, ...) and pick sets, one per pickable object, user
and session (``ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json`` on a filesystem).

Frames: a pick's location is in Å, ``voxel index × voxel spacing`` of the run's tomogram at that
spacing (``x`` = column, ``y`` = row, ``z`` = section, no half-voxel offset), the convention of
:mod:`cryopick.io.formats.copick`; cryopick's picks are voxels of that tomogram as stored, so
``Å = voxel × voxel spacing``. Read picks are the particle centres ``location + transform
translation`` (copick's ``full_positions``).

The ``copick`` package is optional (``pip install 'cryopick[copick]'``) and imported only here, on
first use. Picks are made and filled with copick's own objects (``run.new_picks``, ``CopickPoint``);
on a local filesystem the picks file is published atomically (temp file + rename, the umask's mode)
with the content copick's ``store()`` writes, elsewhere ``store()`` writes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.images import Image
from cryopick.picks import Picks

log = logging.getLogger(__name__)

INSTALL = "pip install 'cryopick[copick]'"
SPACING_TOLERANCE = 1e-3  # Å: voxel spacings are stored with three decimals (VoxelSpacing10.000)


def _copick():
    try:
        import copick
    except ImportError:
        raise CryopickError(f"copick projects need the copick package, which is not installed: {INSTALL}") from None
    return copick


def _brief(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic ValidationError: name the fields
        try:
            return "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errors()[:3])
        except Exception:  # noqa: BLE001 - fall back to the message
            pass
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def open_project(config: str | os.PathLike):
    """The copick root of the project described by the JSON file ``config``."""
    path = Path(config)
    if not path.is_file():
        raise CryopickError(f"{path}: no such copick config file; give the project's config JSON with --copick FILE")
    copick = _copick()
    try:
        json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CryopickError(f"{path}: not a readable JSON copick config ({_brief(exc)})") from None
    try:
        return copick.from_file(str(path))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CryopickError(f"{path}: not a usable copick config ({_brief(exc)}); see the copick documentation "
                            "for config_type, overlay_root and pickable_objects") from None


def object_names(root) -> list[str]:
    """Names of the project's pickable objects."""
    return [o.name for o in root.config.pickable_objects]


def check_objects(root, names: Sequence[str], config: str | os.PathLike) -> None:
    """Every name in ``names`` is a pickable object of the project, else one error naming the fix."""
    known = object_names(root)
    missing = [n for n in dict.fromkeys(names) if n not in known]
    if missing:
        raise CryopickError(
            f"{config}: no pickable object {', '.join(map(repr, missing))} (a prompt's label is the object name); "
            f"the project's objects: {', '.join(known) or '(none)'}; make the prompt with --label NAME of one of "
            "them, or add the object to the config's pickable_objects")


def check_id(value: str, option: str) -> str:
    """A copick user or session id as copick stores it (no spaces, underscores or ``<>:"/\\|?*``)."""
    _copick()
    from copick.util.escape import sanitize_name

    text = str(value)
    try:
        clean = sanitize_name(text, suppress_warnings=True)
    except ValueError:
        clean = ""
    if clean != text:
        hint = f"; e.g. {clean}" if clean else ""
        raise CryopickError(f"{option} {text!r}: copick ids cannot hold spaces, underscores or <>:\"/\\|?*{hint}")
    return text


def select_runs(root, names: Sequence[str] | None, config: str | os.PathLike) -> list:
    """The project's runs named in ``names`` (all runs when ``None``), in that order."""
    runs = root.runs
    if not runs:
        raise CryopickError(f"{config}: the project has no runs; check its overlay_root / static_root")
    if names is None:
        return list(runs)
    by_name = {r.name: r for r in runs}
    missing = [n for n in dict.fromkeys(names) if n not in by_name]
    if missing:
        shown = ", ".join(sorted(by_name)[:10]) + (" ..." if len(by_name) > 10 else "")
        raise CryopickError(f"{config}: no run {', '.join(map(repr, missing))}; the project's runs: {shown}")
    return [by_name[n] for n in dict.fromkeys(names)]


@dataclass
class RunImage(Image):
    """A copick run's tomogram: the name of the picks is the run's name."""

    run: str = ""

    @property
    def name(self) -> str:
        return self.run


@dataclass
class RunTomogram:
    """One run's tomogram at one voxel spacing and type: what ``pick3d --copick`` picks.

    ``name`` and ``path`` (both the run's name: the tomogram's name in records and RELION indexes)
    and :meth:`read` make it a source of :func:`cryopick.picker3d.batch.pick_tomograms`."""

    run: Any
    tomogram: Any
    voxel_spacing: float
    tomo_type: str

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def path(self) -> str:
        return self.run.name

    def __str__(self) -> str:
        return f"copick run {self.run.name} ({self.tomo_type} at {self.voxel_spacing:g} Å)"

    def read(self) -> RunImage:
        """The tomogram at full resolution (zarr group ``0``) in memory, with its voxel spacing."""
        try:
            data = np.asarray(self.tomogram.numpy(), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - any failure of the store makes this one run unreadable
            raise CryopickError(f"{self}: cannot read the tomogram ({_brief(exc)})") from None
        if data.ndim != 3 or min(data.shape) < 2:
            raise CryopickError(f"{self}: expected a 3D tomogram, found shape {data.shape}")
        return RunImage(data=data, pixel_size=float(self.voxel_spacing), path=Path(self.run.name), run=self.run.name)


def _spacings(run) -> list:
    return list(run.voxel_spacings)


def _match(values, wanted: float):
    return [v for v in values if abs(float(v.voxel_size) - float(wanted)) <= SPACING_TOLERANCE]


def _one(found: set, what: str, option: str, where: str):
    if len(found) == 1:
        return next(iter(found))
    if not found:
        raise CryopickError(f"{where}: the runs hold no tomograms; add tomograms to the project or choose other "
                            "runs with --runs")
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(found))
    raise CryopickError(f"{where}: the runs hold several {what} ({shown}); choose one with {option}")


def find_tomograms(root, runs: Sequence, voxel_spacing: float | None = None, tomo_type: str | None = None, *,
                   explicit: bool = False, config: str | os.PathLike = "copick") -> list[RunTomogram]:
    """The tomogram of each run at ``voxel_spacing`` (Å) and of ``tomo_type``.

    Either may be left out when the runs hold only one (else an error lists them). A run without
    that tomogram is an error when the runs were named (``explicit``), else it is skipped with a
    warning; none at all is an error."""
    where = f"{config}"
    spacings = {round(float(v.voxel_size), 3) for r in runs for v in _spacings(r) if v.tomograms}
    if voxel_spacing is None:
        voxel_spacing = _one(spacings, "voxel spacings", "--voxel-spacing", where)
    at = {r.name: _match(_spacings(r), voxel_spacing) for r in runs}
    if tomo_type is None:
        types = {t.tomo_type for vs in at.values() for v in vs for t in v.tomograms}
        if not types and spacings:
            raise CryopickError(f"{where}: the runs hold no tomograms at {voxel_spacing:g} Å (their voxel spacings: "
                                f"{', '.join(f'{v:g}' for v in sorted(spacings))} Å); choose one with --voxel-spacing")
        tomo_type = _one(types, f"tomogram types at {voxel_spacing:g} Å", "--tomo-type", where)
    found, missing = [], []
    for run in runs:
        tomos = [(v, t) for v in at[run.name] for t in v.get_tomograms(tomo_type)]
        if tomos:
            found.append(RunTomogram(run, tomos[0][1], float(tomos[0][0].voxel_size), tomo_type))
        else:
            missing.append(run)
    if missing and (explicit or not found):
        run = missing[0]
        has = ", ".join(f"{t.tomo_type} at {v.voxel_size:g} Å" for v in _spacings(run) for t in v.tomograms)
        raise CryopickError(
            f"{where}: run(s) {', '.join(r.name for r in missing[:5])} have no {tomo_type!r} tomogram at "
            f"{voxel_spacing:g} Å (run {run.name} has: {has or 'no tomograms'}); choose --voxel-spacing and "
            "--tomo-type it has, or other --runs")
    for run in missing:
        log.warning("copick run %s: no %r tomogram at %g Å; skipped", run.name, tomo_type, voxel_spacing)
    return found


def write_picks(run, object_name: str, positions_A: np.ndarray, scores: np.ndarray | None = None, *,
                user_id: str, session_id: str, voxel_spacing: float) -> str:
    """Replace the pick set ``(object_name, user_id, session_id)`` of ``run`` with ``positions_A``
    (``(N, 3)`` x, y, z in Å) and ``scores`` (non-finite -> no score); returns where it is stored.

    A rerun overwrites the same set, never adds a second one."""
    from copick.models import CopickLocation, CopickPoint

    positions_A = np.asarray(positions_A, dtype=float).reshape(-1, 3)
    scores = np.full(len(positions_A), np.nan) if scores is None else np.asarray(scores, dtype=float)
    try:
        picks = run.new_picks(object_name, session_id, user_id, exist_ok=True)
    except ValueError as exc:
        raise CryopickError(f"copick run {run.name}: cannot make picks of {object_name!r} ({_brief(exc)})") from None
    picks.meta.points = [CopickPoint(location=CopickLocation(x=float(x), y=float(y), z=float(z)),
                                     score=float(s) if math.isfinite(s) else None)
                         for (x, y, z), s in zip(positions_A, scores)]
    picks.meta.run_name = run.name
    picks.meta.voxel_spacing = float(voxel_spacing)
    picks.meta.trust_orientation = False  # positions only; the transforms are identities
    return _store(picks)


def _store(picks) -> str:
    from fsspec.implementations.local import LocalFileSystem

    from cryopick.io.atomic import write_text

    fs = getattr(picks, "fs", None)
    where = getattr(picks, "path", f"{picks.run.name}: {picks.pickable_object_name}")
    if getattr(picks, "read_only", False):
        raise CryopickError(f"{where}: these picks are in the project's read-only static part; give another "
                            "--session-id or --user-id")
    try:
        if isinstance(getattr(fs, "_fs", fs), LocalFileSystem):  # copick wraps it in a ReconnectingFileSystem
            write_text(Path(where), json.dumps(picks.meta.model_dump(), indent=4))
        else:
            picks.store()
    except OSError as exc:
        raise CryopickError(f"{where}: cannot write the picks ({exc.strerror or exc})") from None
    return str(where)


def read_picks(run, object_name: str, voxel_spacing: float, *, user_id: str | None = None,
               session_id: str | None = None) -> Picks:
    """The pick set of ``object_name`` in ``run`` (narrowed by ``user_id`` / ``session_id`` when
    several exist) as voxels of the run's tomogram at ``voxel_spacing`` Å."""
    sets = run.get_picks(object_name=object_name, user_id=user_id, session_id=session_id)
    if len(sets) != 1:
        have = ", ".join(f"{p.pickable_object_name} by {p.user_id} session {p.session_id}" for p in run.picks)
        what = "no" if not sets else "several"
        raise CryopickError(
            f"copick run {run.name}: {what} pick set(s) of {object_name!r}"
            f"{f' by {user_id}' if user_id else ''}{f' session {session_id}' if session_id else ''} "
            f"(the run has: {have or 'no picks'}); choose one with --object, --user-id and --session-id")
    try:
        centres = sets[0].full_positions()
        scores = sets[0].scores()
    except Exception as exc:  # noqa: BLE001 - a damaged picks file of the project
        raise CryopickError(f"copick run {run.name}: cannot read the picks of {object_name!r} ({_brief(exc)})") \
            from None
    return Picks.from_arrays(run.name, np.asarray(centres, float).reshape(-1, 3) / float(voxel_spacing),
                             score=scores, label=object_name, pixel_size=float(voxel_spacing))


def local_overlay(root) -> Path | None:
    """The project's overlay folder when it is on this machine's filesystem, else ``None``."""
    from fsspec.implementations.local import LocalFileSystem

    fs = getattr(root, "fs_overlay", None)
    folder = getattr(root, "root_overlay", None)
    if folder and isinstance(getattr(fs, "_fs", fs), LocalFileSystem):
        return Path(folder)
    return None
