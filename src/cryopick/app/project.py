"""The project folder of ``cryopick app``: the single source of truth, in standard formats.

Layout (created on demand; an existing folder of micrographs or RELION project is opened in place)::

    PROJECT/                      micrographs here, or in PROJECT/micrographs/
    PROJECT/annotations/<name>_manualpick.star   RELION per-micrograph coordinates (readable by RELION)
    PROJECT/annotations/flags.json               per micrograph: "complete" | "partial" | "empty"
    PROJECT/app.json                             settings: particle diameter (px); the tomogram page's state
    PROJECT/model/                               `cryopick train` output
    PROJECT/picks/                               `cryopick pick` output
    PROJECT/export/<format>/                     exports (same writers as `cryopick convert`)
    PROJECT/.cryopick-app/                       caches and job records (safe to delete)

Every write is atomic (:mod:`cryopick.io.atomic`). Annotation writes are versioned: the version of a
micrograph's annotations is a digest of its STAR file; a write that names an older version is refused
with :class:`Conflict`, which carries the current state, so two tabs never silently clobber each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.images import IMAGE_SUFFIXES, image_name
from cryopick.io.jsonutil import dumps

ANNOTATION_SUFFIX = "_manualpick.star"
FLAGS = ("complete", "partial", "empty")
MAX_PARTICLES = 20000  # per micrograph and request
MAX_NAME = 200
DEFAULT_DIAMETER = 40.0


class Busy(Exception):
    """The request conflicts with the project's current state (HTTP 409)."""


class Conflict(Busy):
    """A versioned write named a version that is no longer current."""

    def __init__(self, current: dict) -> None:
        super().__init__("the annotations changed since they were read")
        self.current = current


class Project:
    """A project folder: micrographs, annotations, flags and settings."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise CryopickError(f"{root}: is a file; give a project folder (new, empty, or with micrographs)")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.lock = threading.RLock()
        self.app_dir = self.root / ".cryopick-app"
        self.annotations_dir = self.root / "annotations"
        self.model_dir = self.root / "model"
        self.picks_dir = self.root / "picks"
        self.export_dir = self.root / "export"
        self._score_cache: dict[tuple, list[float]] = {}
        self._annotation_cache: dict[tuple, list[list[float]]] = {}

    # -- paths ---------------------------------------------------------------------------
    def confined(self, path: Path) -> Path:
        """``path`` resolved (symlinks followed) if it stays inside the project, else an error."""
        resolved = Path(path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise PermissionError(f"{path}: outside the project folder")
        return resolved

    @property
    def micrograph_dir(self) -> Path:
        """``micrographs/``, else the folder itself, else (a RELION project) the newest MotionCorr job."""
        sub = self.root / "micrographs"
        if sub.is_dir():
            return sub
        if not any(_is_image(p) for p in self.root.iterdir()):
            jobs = sorted((self.root / "MotionCorr").glob("job*/"), key=lambda p: p.stat().st_mtime)
            if jobs:
                return jobs[-1]
        return self.root

    def micrographs(self) -> dict[str, Path]:
        """Micrograph name -> file, for the image files inside the project (symlinks out of it are skipped).

        In a RELION MotionCorr job folder the images are looked for in its subfolders too, without the
        power spectra (``*_PS.mrc``)."""
        folder = self.micrograph_dir
        relion = folder.parent.name == "MotionCorr"
        files = folder.rglob("*") if relion else folder.iterdir()
        return self.named_files(files, lambda p: _is_image(p) and not (relion and image_name(p).endswith("_PS")))

    def named_files(self, files: Iterable[Path], accept: Callable[[Path], bool]) -> dict[str, Path]:
        """Image name -> file for the ``files`` that ``accept`` keeps and that stay inside the project
        (symlinks out of it are skipped); of several files with one name, the first in sorted order wins."""
        found: dict[str, Path] = {}
        for p in sorted(files):
            if not accept(p):
                continue
            try:
                self.confined(p)
            except PermissionError:
                continue
            found.setdefault(image_name(p), p)
        return found

    def micrograph(self, name: str) -> Path:
        check_name(name)
        path = self.micrographs().get(name)
        if path is None:
            raise KeyError(name)
        return self.confined(path)

    def annotation_path(self, name: str) -> Path:
        check_name(name)
        path = self.annotations_dir / f"{name}{ANNOTATION_SUFFIX}"
        if self.annotations_dir.exists():
            self.confined(self.annotations_dir)
            if path.exists() or path.is_symlink():
                self.confined(path)
        return path

    # -- settings and flags ----------------------------------------------------------------
    def settings(self) -> dict:
        data = _read_json(self.root / "app.json")
        diameter = data.get("diameter")
        ok = isinstance(diameter, (int, float)) and math.isfinite(diameter) and diameter > 0
        return {"diameter": float(diameter) if ok else DEFAULT_DIAMETER}

    def set_settings(self, diameter: float) -> dict:
        with self.lock:  # the file's other keys (the tomogram page's state) are kept
            data = _read_json(self.root / "app.json")
            data["diameter"] = float(diameter)
            write_text(self.root / "app.json", dumps(data, indent=1) + "\n")
        return self.settings()

    def flags(self) -> dict[str, str]:
        data = _read_json(self.annotations_dir / "flags.json")
        return {k: v for k, v in data.items() if isinstance(k, str) and v in FLAGS}

    def set_flag(self, name: str, flag: str | None) -> dict[str, str]:
        check_name(name)
        if flag is not None and flag not in FLAGS:
            raise ValueError(f"flag must be one of {', '.join(FLAGS)} or null, got {flag!r}")
        with self.lock:
            flags = self.flags()
            if flag is None:
                flags.pop(name, None)
            else:
                flags[name] = flag
            self.annotations_dir.mkdir(parents=True, exist_ok=True)
            self.confined(self.annotations_dir)
            write_text(self.annotations_dir / "flags.json", dumps(flags, indent=1) + "\n")
        return flags

    # -- annotations ----------------------------------------------------------------------
    def annotations(self, name: str) -> dict:
        """``{"name", "version", "coords": [[x, y], ...]}`` (original pixels)."""
        path = self.annotation_path(name)
        if not path.is_file():
            return {"name": name, "version": "0", "coords": []}
        data = path.read_bytes()
        version = _digest(data)
        key = (name, version)
        if key not in self._annotation_cache:  # parsed once per file content
            if len(self._annotation_cache) > 5000:
                self._annotation_cache.clear()
            self._annotation_cache[key] = _read_coords(path)
        return {"name": name, "version": version, "coords": [list(c) for c in self._annotation_cache[key]]}

    def save_annotations(self, name: str, coords, version: str) -> dict:
        """Write the annotations of ``name`` if ``version`` is current; raise :class:`Conflict` otherwise."""
        from cryopick.io.coords import write_picks
        from cryopick.picks import Picks

        arr = check_coords(coords)
        with self.lock:
            current = self.annotations(name)
            if str(version) != current["version"]:
                raise Conflict(current)
            self.annotations_dir.mkdir(parents=True, exist_ok=True)
            self.confined(self.annotations_dir)
            picks = Picks.from_arrays(name, arr, diameter=self.settings()["diameter"])
            write_picks(picks, self.annotation_path(name), format="relion")
            return self.annotations(name)

    def all_annotations(self):
        """One :class:`~cryopick.picks.Picks` table of every annotated micrograph that still exists."""
        from cryopick.picks import Picks, concat

        tables = []
        mics = self.micrographs()
        for name in mics:
            coords = self.annotations(name)["coords"]
            if coords:
                tables.append(Picks.from_arrays(name, np.asarray(coords, float), diameter=self.settings()["diameter"]))
        return concat(tables) if tables else Picks.empty()

    # -- picks ------------------------------------------------------------------------------
    def picks(self, name: str) -> dict:
        """Picks of the last pick run for ``name`` with their scores, and the model's calibrated threshold."""
        check_name(name)
        path = self.picks_dir / f"{name}_autopick.star"
        out = {"name": name, "coords": [], "scores": [], "threshold": self.threshold(),
               "rejected": self.rejected().get(name, [])}
        if path.is_file():
            self.confined(path)
            from cryopick.io.coords import read_picks

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = read_picks(path, format="relion", diameter=self.settings()["diameter"])
            out["coords"] = p.table[["x", "y"]].to_numpy(float).tolist()
            out["scores"] = [None if not math.isfinite(s) else float(s) for s in p.table["score"]]
        return out

    def rejected(self) -> dict[str, list[list[float]]]:
        """Picks rejected in review, per micrograph (``picks/rejected.json``; matched within a quarter diameter)."""
        data = _read_json(self.picks_dir / "rejected.json")
        return {k: v for k, v in data.items() if isinstance(v, list)}

    def reject(self, name: str, xy, undo: bool = False) -> list[list[float]]:
        """Reject the pick at ``xy`` of ``name`` (or take the rejection back); returns its rejected picks."""
        check_name(name)
        (x, y), = check_coords([xy]).tolist()
        near = self.settings()["diameter"] / 4
        with self.lock:
            data = self.rejected()
            rows = [r for r in data.get(name, []) if np.hypot(r[0] - x, r[1] - y) > near]
            if not undo:
                rows.append([round(x, 2), round(y, 2)])
            data[name] = rows[:MAX_PARTICLES]
            self.picks_dir.mkdir(parents=True, exist_ok=True)
            self.confined(self.picks_dir)
            write_text(self.picks_dir / "rejected.json", dumps(data) + "\n")
        return data[name]

    def threshold(self) -> float | None:
        card = _read_json(self.model_dir / "card.json")
        t = card.get("score_threshold")
        return float(t) if isinstance(t, (int, float)) and math.isfinite(t) else None

    def model_card(self) -> dict | None:
        card = _read_json(self.model_dir / "card.json")
        if not card:
            return None
        keep = ("backbone", "diameter", "factor", "score_threshold", "calibration", "training", "created")
        return {**{k: card.get(k) for k in keep}, "notes": card_notes(card)}

    def pick_counts(self) -> dict[str, int]:
        """Picks per micrograph of the last pick run at or above the model's calibrated threshold."""
        if not self.picks_dir.is_dir():
            return {}
        threshold = self.threshold() or 0.0
        counts = {}
        for name in self.micrographs():
            path = self.picks_dir / f"{name}_autopick.star"
            if not path.is_file():
                continue
            key = (str(path), path.stat().st_mtime_ns)
            if key not in self._score_cache:
                try:
                    self._score_cache[key] = [s for s in self.picks(name)["scores"] if s is not None]
                except CryopickError:
                    continue
            counts[name] = sum(1 for s in self._score_cache[key] if s >= threshold)
        return counts

    def suggestions(self, top: int = 5) -> dict:
        """Micrographs to annotate next (:func:`cryopick.app.suggest.rank`), from the last pick run."""
        from cryopick.app.suggest import rank
        from cryopick.io.resume import RunState

        threshold = self.threshold()
        if threshold is None or not (self.picks_dir / ".cryopick").is_dir():
            return {"suggestions": [], "why": "train a model and pick first: suggestions use its scores"}
        mics = self.micrographs()
        records = {r["micrograph"]: r["candidate_scores"] for r in RunState(self.picks_dir).records()
                   if r.get("micrograph") in mics and isinstance(r.get("candidate_scores"), list)}
        records = {n: [v for v in s if isinstance(v, (int, float))] for n, s in records.items()}
        annotated = {n for n in mics if self.annotations(n)["coords"]}
        empty = {n for n, f in self.flags().items() if f == "empty"}
        out = rank(records, threshold, annotated, excluded=annotated | empty, top=top)
        why = "" if out else "every picked micrograph is annotated; pick more micrographs for suggestions"
        return {"suggestions": out, "threshold": threshold, "why": why}

    def summary(self) -> list[dict]:
        """Per micrograph: particles annotated, picks at the calibrated threshold (None: not picked) and
        the flag (:func:`cryopick.app.review.summary` adds the review's counts)."""
        flags = self.flags()
        picked = self.pick_counts()
        rows = []
        for name in self.micrographs():
            row = {"name": name, "annotated": 0, "flag": flags.get(name), "picked": picked.get(name)}
            try:
                row["annotated"] = len(self.annotations(name)["coords"])
            except CryopickError as exc:  # one damaged file must not hide the others
                row["error"] = str(exc)
            rows.append(row)
        return rows


def card_notes(card: dict) -> list[str]:
    """What a model card says the user should know (its ``notes`` and its calibration's ``note``, e.g. "no
    labelled particles in the validation data; default threshold used"), once each, for the page."""
    notes = card.get("notes") if isinstance(card.get("notes"), list) else []
    calibration = card.get("calibration") if isinstance(card.get("calibration"), dict) else {}
    out: list[str] = []
    for note in [*notes, calibration.get("note")]:
        if isinstance(note, str) and note.strip() and note.strip() not in out:
            out.append(note.strip())
    return out


def check_name(name: str) -> str:
    """A micrograph name from the browser: a plain file stem, never a path."""
    if (not isinstance(name, str) or not name or len(name) > MAX_NAME or name in (".", "..")
            or any(c in name for c in "/\\\0") or name.startswith(".")):
        raise ValueError(f"bad micrograph name {str(name)[:60]!r}: give a name from the list, not a path")
    return name


def check_coords(coords) -> np.ndarray:
    """``[[x, y], ...]`` of finite numbers, at most :data:`MAX_PARTICLES`, as an ``(N, 2)`` array."""
    if not isinstance(coords, list):
        raise ValueError("coords must be a list of [x, y] pairs")
    if len(coords) > MAX_PARTICLES:
        raise ValueError(f"too many particles ({len(coords)}); at most {MAX_PARTICLES} per micrograph")
    out = np.zeros((len(coords), 2))
    for i, c in enumerate(coords):
        if (not isinstance(c, list) or len(c) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c)
                or not all(math.isfinite(v) and abs(v) < 1e7 for v in c)):
            raise ValueError(f"coords[{i}] must be [x, y] with two finite numbers (pixels), got {str(c)[:60]}")
        out[i] = c
    return out


def _read_coords(path: Path) -> list[list[float]]:
    from cryopick.io.coords import read_picks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        picks = read_picks(path, format="relion")
    return picks.table[["x", "y"]].to_numpy(float).round(3).tolist()


def _is_image(p: Path) -> bool:
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
