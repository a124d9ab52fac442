"""The training corpus of the promptable 3D picker: simulated tomograms written to disk once.

(The 2D wing's :mod:`cryopick.picker2d.train.corpus` is its simulated pretraining corpus, the same idea.)

Data: a *corpus* folder of simulated tomograms written once (:func:`make_corpus`), ``corpus.json`` (how they
were drawn: seed and :class:`CorpusConfig`; corpora written before this name hold ``pool.json``, still
read) and one folder per tomogram with ``volume.npy`` (float16, z-scored, protein dark), ``class_mask.npy`` (int16, 0 =
background, ``c`` = class ``c - 1``) and ``picks.npz`` (centres ``x, y, z`` voxels, class index,
diameters). Every ``share`` consecutive tomograms use the same freshly drawn set of
structurally different classes (:func:`cryopick.simulate.tomogram.random_particle_classes`), so
prompts can come from another tomogram as well as from another place in the same one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path, write_text

#: how a corpus was drawn, in its folder; corpora written before the module was named ``corpus`` hold
#: the same content as ``pool.json``
CORPUS_JSON, OLD_CORPUS_JSON = "corpus.json", "pool.json"


# -- the corpus of simulated tomograms --------------------------------------------------------------
@dataclass
class CorpusConfig:
    """How the simulated training tomograms are drawn (ranges are sampled per tomogram / class set)."""

    shape: tuple[int, int, int] = (96, 192, 192)
    classes_per_tomogram: int = 12
    share: int = 2
    voxel_size: tuple[float, float] = (9.0, 13.0)
    diameter_A: tuple[float, float] = (70.0, 350.0)
    max_diameter_px: float = 33.0
    min_diameter_px: float = 6.0
    n_particles: tuple[int, int] = (120, 200)
    snr: tuple[float, float] = (0.2, 1.5)
    defocus_um: tuple[float, float] = (2.0, 6.0)
    tilt_max: tuple[float, float] = (45.0, 70.0)
    crowding: tuple[float, float] = (0.1, 0.6)
    membranes: tuple[int, int] = (0, 3)
    gold_beads: tuple[int, int] = (0, 8)
    raw_ctf_fraction: float = 0.2


def make_corpus(directory: str | os.PathLike, n_tomograms: int, seed: int = 0, config: CorpusConfig | None = None,
              progress: bool = True) -> list[Path]:
    """Simulate ``n_tomograms`` training tomograms into ``directory`` (existing ones are kept).

    Class sets come from ``random_particle_classes`` seeded by ``(seed, set index)``: use different
    ``seed`` values for training and held-out corpora so their classes never coincide.
    """
    from cryopick.simulate.config import TomogramSimulation
    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    cfg = config or CorpusConfig()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_text(directory / CORPUS_JSON, json.dumps({"seed": seed, "config": asdict(cfg)}, indent=1))
    paths = []
    classes, set_id = None, -1
    for i in tqdm(range(n_tomograms), desc="simulating corpus", disable=not progress):
        path = directory / f"tomo_{i:04d}"
        paths.append(path)
        rng = np.random.default_rng([seed, i, 11])
        if i // cfg.share != set_id:
            set_id = i // cfg.share
            set_rng = np.random.default_rng([seed, set_id, 13])
            voxel = float(set_rng.uniform(*cfg.voxel_size))
            lo = max(cfg.diameter_A[0], cfg.min_diameter_px * voxel)
            hi = min(cfg.diameter_A[1], cfg.max_diameter_px * voxel)
            classes = None  # built lazily: skip the work when the whole set exists
        if (path / "picks.npz").exists():
            continue
        if classes is None:
            classes = random_particle_classes(cfg.classes_per_tomogram, seed=int(seed * 100_003 + set_id),
                                              voxel_size=voxel, diameter_range_A=(lo, hi))
        tilt = float(rng.uniform(*cfg.tilt_max))
        sim_seed = int(rng.integers(2**31))
        simulation = TomogramSimulation(
            shape=cfg.shape, voxel_size=voxel, n_particles=int(rng.integers(cfg.n_particles[0], cfg.n_particles[1] + 1)),
            tilt_range=(-tilt, tilt), snr=tuple(cfg.snr), defocus_um=tuple(cfg.defocus_um),
            membranes=int(rng.integers(cfg.membranes[0], cfg.membranes[1] + 1)),
            gold_beads=int(rng.integers(cfg.gold_beads[0], cfg.gold_beads[1] + 1)),
            crowding=float(rng.uniform(*cfg.crowding)),
            ctf_correction="none" if rng.uniform() < cfg.raw_ctf_fraction else "phaseflip")
        tomo = simulate_tomogram(classes, simulation, seed=sim_seed, name=path.name)
        write_tomogram(path, tomo, set_id)
    return paths


def write_tomogram(path: Path, tomo, set_id: int = 0) -> None:
    """Store a simulated :class:`~cryopick.simulate.tomogram.Tomogram` in the corpus layout."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(tomo.class_names)
    labels = np.array([names.index(n) for n in tomo.picks.table["label"]], dtype=np.int64)
    with atomic_path(path / "volume.npy") as tmp:
        np.save(tmp, tomo.volume.astype(np.float16))
    with atomic_path(path / "class_mask.npy") as tmp:
        np.save(tmp, tomo.class_mask.astype(np.int16))
    with atomic_path(path / "picks.npz") as tmp:  # written last: marks the tomogram complete
        np.savez(tmp, coords=tomo.picks.coords, labels=labels, diameters=tomo.picks.table["diameter"].to_numpy(),
                 class_names=np.array(names), set_id=set_id, voxel_size=tomo.voxel_size)


def corpus_scale(directory: str | os.PathLike) -> dict:
    """The voxel sizes (Å) and particle diameters (voxels) a corpus was drawn with, as model metadata
    (``trained_voxel_size``, ``trained_diameter_voxels``; empty for a folder without ``corpus.json`` or the
    ``pool.json`` of older corpora)."""
    directory = Path(directory)
    path = next((directory / n for n in (CORPUS_JSON, OLD_CORPUS_JSON) if (directory / n).is_file()), None)
    try:
        cfg = json.loads(path.read_text())["config"]
        return {"trained_voxel_size": [float(v) for v in cfg["voxel_size"]],
                "trained_diameter_voxels": [float(cfg["min_diameter_px"]), float(cfg["max_diameter_px"])]}
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        return {}


@dataclass
class CorpusTomogram:
    volume: np.ndarray      # (D, H, W) float16 memory map
    class_mask: np.ndarray  # (D, H, W) int16 memory map
    coords: np.ndarray      # (N, 3) x, y, z
    labels: np.ndarray      # (N,) class index
    n_classes: int
    set_id: int
    name: str


def load_corpus(directory: str | os.PathLike) -> list[CorpusTomogram]:
    directory = Path(directory)
    tomos = []
    for path in sorted(directory.glob("tomo_*")):
        if not (path / "picks.npz").exists():
            continue
        meta = np.load(path / "picks.npz")
        tomos.append(CorpusTomogram(
            volume=np.load(path / "volume.npy", mmap_mode="r"),
            class_mask=np.load(path / "class_mask.npy", mmap_mode="r"),
            coords=meta["coords"], labels=meta["labels"], n_classes=len(meta["class_names"]),
            set_id=int(meta["set_id"]), name=path.name,
        ))
    if not tomos:
        raise CryopickError(f"{directory}: no simulated tomograms; create them with `cryopick train3d --make-pool`")
    return tomos

