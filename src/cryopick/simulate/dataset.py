"""Write simulated data sets to disk (resumable) and read their ground truth back.

Layout of a 2D data set (``cryopick simulate 2d -o DIR``)::

    DIR/classes.csv                      index, name, kind, symmetry, diameter_A, source
    DIR/classes/<class>.mrc              each class's 3D density at the pixel size
    DIR/micrographs/<name>.mrc           float32 counts, pixel size in the header
    DIR/coordinates/<name>_autopick.star RELION per-micrograph coordinates (pixels)
    DIR/particles/<name>.csv             full truth: x, y, diameter (px), class, Euler angles (deg)
    DIR/masks/<name>.mrc                 uint16 particle support (0 background, k = particle k-1)
    DIR/params/<name>.json               drawn imaging parameters

A 3D data set has ``tomograms/``, ``masks/<name>_instances.mrc`` (uint16) and
``masks/<name>_classes.mrc`` (int16, class index + 1), ``coordinates/<class>/<name>.star``
(RELION 5 tomography STAR per class) and ``particles/<name>.csv`` with ``z`` as well.

Each item is finished when its ``particles/<name>.csv`` exists (written last), so an interrupted
run resumes where it stopped. Every file is written atomically. ``DIR/summary.json`` gives the
particles requested and placed per item (``n_requested``, ``n_placed``, also in ``params/``); when
fewer fit than requested, one warning says so for the whole run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from cryopick.config import configure
from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.images import write_mrc, write_png
from cryopick.io.jsonutil import dumps
from cryopick.picks import Picks, concat
from cryopick.simulate.config import MicrographSimulation, TomogramSimulation
from cryopick.simulate.densities import ParticleClass
from cryopick.simulate.placement import PlacementWarning
from cryopick.simulate.rotations import matrix_to_euler_zyz

log = logging.getLogger(__name__)


def item_seed(seed: int, index: int) -> int:
    """Seed of item ``index`` of a data set with ``seed`` (independent streams, stable under resume)."""
    return int(np.random.SeedSequence([int(seed), int(index), 99]).generate_state(1)[0])


def write_classes(classes: Sequence[ParticleClass], out: Path, voxel_size: float) -> None:
    """``classes.csv`` and ``classes/<name>.mrc`` (density at ``voxel_size``); existing files are kept."""
    rows = []
    for i, c in enumerate(classes):
        rows.append(dict(index=i + 1, name=c.name, kind=c.kind, symmetry=c.symmetry,
                         diameter_A=round(float(c.diameter), 3), source=c.meta.get("source", "procedural")))
        path = out / "classes" / f"{c.name}.mrc"
        if not path.exists():
            write_mrc(path, c.render(voxel_size), pixel_size=voxel_size)
    write_text(out / "classes.csv", pd.DataFrame(rows).to_csv(index=False))


def _particles_table(picks: Picks, orientations: np.ndarray) -> pd.DataFrame:
    table = picks.table.drop(columns=["score"]).rename(columns={"label": "class"})
    angles = matrix_to_euler_zyz(orientations) if len(orientations) else np.zeros((0, 3))
    table["rot"], table["tilt"], table["psi"] = angles[:, 0], angles[:, 1], angles[:, 2]
    return table


def write_micrograph_item(m, out: Path, png: bool = False) -> None:
    """Write one simulated :class:`~cryopick.simulate.micrograph.Micrograph` (truth CSV last)."""
    from cryopick.io.coords import write_picks

    name = m.name
    write_mrc(out / "micrographs" / f"{name}.mrc", m.image, pixel_size=m.pixel_size)
    write_mrc(out / "masks" / f"{name}.mrc", _as_uint16(m.mask, name), pixel_size=m.pixel_size)
    write_picks(m.picks, out / "coordinates" / f"{name}_autopick.star", "relion")
    write_text(out / "params" / f"{name}.json", dumps(m.params, indent=1, strict=False))
    if png:
        write_png(out / "png" / f"{name}.png", m.image)
    write_text(out / "particles" / f"{name}.csv", _particles_table(m.picks, m.orientations).to_csv(index=False))


def write_tomogram_item(t, out: Path, png: bool = False) -> None:
    """Write one simulated :class:`~cryopick.simulate.tomogram.Tomogram` (truth CSV last)."""
    from cryopick.io.coords import write_picks

    name = t.name
    D, H, W = t.volume.shape
    write_mrc(out / "tomograms" / f"{name}.mrc", t.volume, pixel_size=t.voxel_size)
    write_mrc(out / "masks" / f"{name}_instances.mrc", _as_uint16(t.instance_mask, name), pixel_size=t.voxel_size)
    write_mrc(out / "masks" / f"{name}_classes.mrc", t.class_mask.astype(np.int16), pixel_size=t.voxel_size)
    labels = t.picks.table["label"]
    for cls in t.class_names:
        sub = t.picks._with(t.picks.table[labels == cls])
        write_picks(sub, out / "coordinates" / cls / f"{name}.star", "relion", tomo_size=(W, H, D))
    write_text(out / "params" / f"{name}.json", dumps(t.params, indent=1, strict=False))
    if png:
        write_png(out / "png" / f"{name}.png", t.volume[D // 2])
    write_text(out / "particles" / f"{name}.csv", _particles_table(t.picks, t.orientations).to_csv(index=False))


def is_done(out: Path, name: str) -> bool:
    return (out / "particles" / f"{name}.csv").exists()


def read_ground_truth(directory: str | os.PathLike) -> Picks:
    """All particles of a simulated data set, with class labels, from ``particles/*.csv``."""
    directory = Path(directory)
    files = sorted((directory / "particles").glob("*.csv"))
    if not files:
        raise CryopickError(f"{directory}: no particles/*.csv; is it a directory written by cryopick simulate?")
    params = json.loads((directory / "params" / f"{files[0].stem}.json").read_text())
    pixel_size = params.get("pixel_size", params.get("voxel_size"))
    tables = []
    for f in files:
        t = pd.read_csv(f, dtype={"micrograph": str, "class": str}, keep_default_na=False)
        tables.append(Picks(t.rename(columns={"class": "label"}), pixel_size=pixel_size,
                            ndim=3 if "z" in t.columns else 2))
    return concat(tables)


def _as_uint16(mask: np.ndarray, name: str) -> np.ndarray:
    if mask.max(initial=0) > np.iinfo(np.uint16).max:
        raise CryopickError(f"{name}: more than 65535 particles do not fit a uint16 MRC mask; simulate fewer")
    return mask.astype(np.uint16)


@contextlib.contextmanager
def _placement_notes(said: set[str]):
    """Collect the placement shortfall warnings of one item (the data set reports them once, together);
    other warnings pass on, each text once per data set (``said``)."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PlacementWarning)
        yield notes
    for w in caught:
        if w.category is PlacementWarning:
            notes.append(str(w.message))
        elif str(w.message) not in said:  # e.g. a class too large for every item: say it once
            said.add(str(w.message))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _summarise(out: Path, names: list[str], shortfalls: list[str], what: str) -> dict:
    """``summary.json``: particles requested and placed per item (from ``params/``); one warning when
    some items got fewer particles than requested in this run."""
    items = {}
    for name in names:
        path = out / "params" / f"{name}.json"
        if path.exists():
            p = json.loads(path.read_text())
            items[name] = {"n_requested": p.get("n_requested"), "n_placed": p.get("n_placed")}
    requested = sum(v["n_requested"] or 0 for v in items.values())
    placed = sum(v["n_placed"] or 0 for v in items.values())
    summary = {"n_items": len(items), "n_requested": requested, "n_placed": placed, "items": items}
    write_text(out / "summary.json", dumps(summary, indent=1) + "\n")
    short = [v for v in items.values() if None not in v.values() and v["n_placed"] < v["n_requested"]]
    if shortfalls and short:
        low, high = min(v["n_placed"] for v in short), max(v["n_placed"] for v in short)
        warnings.warn(f"{len(short)} of {len(items)} {what}s got fewer particles than requested "
                      f"({low if low == high else f'{low}-{high}'} placed); e.g. {shortfalls[0]} "
                      f"(numbers per {what}: {out / 'summary.json'})", PlacementWarning, stacklevel=3)
    return summary


def simulate_dataset_2d(out: str | os.PathLike, n: int, seed: int, classes: Sequence[ParticleClass],
                        png: bool = False, carbon_edge_fraction: float = 0.3,
                        config: MicrographSimulation | None = None, **options) -> list[str]:
    """Simulate ``n`` micrographs into ``out`` (skipping finished ones); returns all item names.

    ``carbon_edge_fraction`` of the micrographs (chosen per item seed) get a carbon edge; ``config`` and
    ``options`` (its fields as keywords) are the :class:`~cryopick.simulate.config.MicrographSimulation` of
    :func:`~cryopick.simulate.micrograph.simulate_micrograph`, checked before anything is written.
    """
    from cryopick.simulate.micrograph import simulate_micrograph

    cfg = configure(MicrographSimulation, config, options, "simulate_dataset_2d")
    out = Path(out)
    names = [f"mic_{i:05d}" for i in range(n)]
    shortfalls: list[str] = []
    said: set[str] = set()
    todo = [(i, nm) for i, nm in enumerate(names) if not is_done(out, nm)]
    if len(todo) < n:
        log.info("%d of %d micrographs already exist; simulating the other %d", n - len(todo), n, len(todo))
    for i, name in tqdm(todo, desc="micrographs", unit="mic", disable=not todo):
        s = item_seed(seed, i)
        edge = bool(np.random.default_rng(s).uniform() < carbon_edge_fraction)
        with _placement_notes(said) as notes:
            m = simulate_micrograph(classes, replace(cfg, carbon_edge=edge), seed=s, name=name)
        write_micrograph_item(m, out, png=png)
        shortfalls += notes
    write_classes(classes, out, cfg.pixel_size)  # after the items: a bad setting leaves nothing
    _summarise(out, names, shortfalls, "micrograph")
    return names


def simulate_dataset_3d(out: str | os.PathLike, n: int, seed: int, classes: Sequence[ParticleClass],
                        png: bool = False, config: TomogramSimulation | None = None, **options) -> list[str]:
    """Simulate ``n`` tomograms into ``out`` (skipping finished ones); returns all item names. ``config`` and
    ``options`` (its fields as keywords): the :class:`~cryopick.simulate.config.TomogramSimulation`."""
    from cryopick.simulate.tomogram import simulate_tomogram

    cfg = configure(TomogramSimulation, config, options, "simulate_dataset_3d")
    out = Path(out)
    names = [f"tomo_{i:04d}" for i in range(n)]
    shortfalls: list[str] = []
    said: set[str] = set()
    todo = [(i, nm) for i, nm in enumerate(names) if not is_done(out, nm)]
    if len(todo) < n:
        log.info("%d of %d tomograms already exist; simulating the other %d", n - len(todo), n, len(todo))
    for i, name in tqdm(todo, desc="tomograms", unit="tomo", disable=not todo):
        with _placement_notes(said) as notes:
            t = simulate_tomogram(classes, cfg, seed=item_seed(seed, i), name=name)
        write_tomogram_item(t, out, png=png)
        shortfalls += notes
    write_classes(classes, out, cfg.voxel_size)
    _summarise(out, names, shortfalls, "tomogram")
    return names
