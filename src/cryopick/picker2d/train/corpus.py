"""The simulated pretraining corpus of the default 2D backbone: diverse micrographs at the working scale.

Every corpus micrograph is drawn from its index alone (:func:`draw_settings`, deterministic for a corpus
seed), simulated at its own pixel size with :func:`cryopick.simulate.micrograph.simulate_micrograph`,
rendered the way real data reach a picker (raw counts, float sums, or low-passed 8-bit / JPEG exports
like denoised CryoPPP micrographs) and brought to the working scale exactly as a user's micrograph is
(:func:`cryopick.picker2d.scale.prepare_image`: Fourier crop to a particle of ``target_diameter``
working pixels, robust normalisation). What varies per micrograph: shape family and diameter of the
particle, pixel size, dose, defocus and astigmatism, ice thickness and gradient, background clutter,
B-factor, particle contrast, crowding from sparse to touching, aggregates, ice crystals, a carbon edge,
and sometimes a second, unlabelled particle of another size (the network should pick the size it was
told, not every blob).

Leave-one-out honesty: the shape families of the benchmark's test "proteins"
(``benchmarks/bench_fewshot_loo.py``: ``dihedral``, ``elongated``, ``globular``) are excluded by default
(:data:`HELD_OUT_KINDS`), so the pretrained network has never seen those families as particles; no real
micrograph is used. One overlap remains inside the simulator: its aggregates are clumps of 8-30 small
``globular``-family fragments (60-140 Å), never labelled as particles.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np

from cryopick.picker2d.scale import prepare_image
from cryopick.picker2d.train.data import TrainingMicrograph
from cryopick.simulate.config import PHASE_PER_A, MicrographSimulation
from cryopick.simulate.micrograph import simulate_micrograph
from cryopick.simulate.shapes import SHAPE_KINDS, procedural_class

#: Shape families of the leave-one-out test "proteins" (sim_raw, sim_denoised, sim_crowded), kept out.
HELD_OUT_KINDS = ("dihedral", "elongated", "globular")
#: Renderings: raw counts (16-bit-like), float sums, low-passed 8-bit PNG or JPEG (denoised-looking).
RENDERS = ("raw", "float", "denoised8", "jpeg")


def corpus_kinds(exclude: tuple[str, ...] = HELD_OUT_KINDS) -> tuple[str, ...]:
    """Shape families used for particles: every simulator family except ``exclude``."""
    kinds = tuple(k for k in SHAPE_KINDS if k not in set(exclude))
    if not kinds:
        raise ValueError("the exclusion leaves no shape family for the corpus")
    return kinds


def draw_settings(index: int, seed: int = 0, kinds: tuple[str, ...] | None = None,
                  working_size: int = 224, target_diameter: float = 16.0,
                  contrast_range: tuple[float, float] = (0.5, 1.1)) -> dict:
    """Simulation and rendering settings of corpus micrograph ``index`` (deterministic).

    ``contrast_range``: particle contrast as a multiple of the simulator's default, drawn uniformly; a
    lower range makes the particles harder to see without changing any other draw of the micrograph.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 90210]))
    kinds = kinds or corpus_kinds()
    pixel_size = float(rng.uniform(1.0, 4.5))
    lo, hi = max(80.0, 24 * pixel_size), min(450.0, 100 * pixel_size)
    diameter_A = float(np.exp(rng.uniform(math.log(lo), math.log(max(hi, lo * 1.01)))))
    diameter_px = diameter_A / pixel_size
    factor = max(1.0, diameter_px / target_diameter)
    side = int(round(working_size * factor / 8)) * 8
    regime = rng.choice(["sparse", "medium", "dense"], p=[0.35, 0.35, 0.3])
    coverage = {"sparse": (0.02, 0.1), "medium": (0.1, 0.3), "dense": (0.3, 0.55)}[regime]
    crowding = {"sparse": (0.0, 0.3), "medium": (0.3, 0.6), "dense": (0.6, 0.9)}[regime]
    n = int(rng.uniform(*coverage) * side * side / (math.pi * (diameter_px / 2) ** 2))
    render = str(rng.choice(RENDERS, p=[0.3, 0.2, 0.3, 0.2]))
    distractor = None
    if rng.random() < 0.25:
        ratio = float(rng.uniform(0.35, 0.6) if rng.random() < 0.5 else rng.uniform(1.8, 3.0))
        distractor = {"kind": str(rng.choice(kinds)), "diameter_A": diameter_A * ratio,
                      "share": float(rng.uniform(0.15, 0.4))}
    return {
        "index": int(index), "kind": str(rng.choice(kinds)), "diameter_A": diameter_A, "pixel_size": pixel_size,
        "factor": factor, "side": side, "n_particles": max(1, min(n, 1500)), "crowding": float(rng.uniform(*crowding)),
        "regime": str(regime), "dose": float(rng.uniform(8, 25) if render == "raw" else rng.uniform(15, 60)),
        "defocus_um": float(rng.uniform(0.5, 3.5)), "astigmatism_um": float(rng.uniform(0.0, 0.15)),
        "ice_thickness_A": float(rng.uniform(150, 900)), "ice_gradient": float(rng.uniform(0.0, 0.8)),
        "ice_noise": float(rng.uniform(0.5, 1.5)), "clutter_A": float(rng.uniform(10, 45)),
        "bfactor": float(rng.uniform(30, 150)), "contrast": float(rng.uniform(*contrast_range)),
        "aggregates": int(rng.choice([0, 0, 1, 2, 4])), "ice_crystals": int(rng.choice([0, 0, 0, 1, 2])),
        "carbon_edge": bool(rng.random() < 0.25), "render": render, "lowpass": float(rng.uniform(0.8, 2.5)),
        "jpeg_quality": int(rng.integers(70, 96)), "distractor": distractor, "shape_seed": int(rng.integers(2**31)),
        "sim_seed": int(rng.integers(2**31)),
    }


def render(image: np.ndarray, settings: dict) -> np.ndarray:
    """Counts -> what a picker is given: raw counts, float, or low-passed 8-bit (optionally JPEG)."""
    kind = settings["render"]
    if kind == "raw":
        return np.clip(np.round(image), 0, 65535).astype(np.uint16).astype(np.float32)
    if kind == "float":
        return image.astype(np.float32)
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image.astype(np.float32), settings["lowpass"])
    lo, hi = np.percentile(smooth, [0.1, 99.9])
    eight = np.clip(np.round((smooth - lo) / max(hi - lo, 1e-6) * 255), 0, 255).astype(np.uint8)
    if kind == "jpeg":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(eight).save(buf, format="JPEG", quality=settings["jpeg_quality"])
        eight = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    return eight.astype(np.float32)


def simulate_corpus_micrograph(settings: dict, name: str | None = None) -> TrainingMicrograph:
    """Simulate, render and bring one corpus micrograph to the working scale; only the target particle is
    labelled (aggregates, crystals, carbon and the distractor particle are background)."""
    ps = settings["pixel_size"]
    target = procedural_class("target", settings["kind"], settings["diameter_A"], ps, settings["shape_seed"])
    classes, weights = [target], [1.0]
    d = settings.get("distractor")
    if d:
        classes.append(procedural_class("other", d["kind"], d["diameter_A"], ps, settings["shape_seed"] + 1))
        weights = [1.0 - d["share"], d["share"]]
    side = settings["side"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # placement shortfalls in dense settings are expected
        config = MicrographSimulation(
            shape=(side, side), pixel_size=ps, n_particles=settings["n_particles"], dose=settings["dose"],
            defocus_um=settings["defocus_um"], astigmatism_um=settings["astigmatism_um"],
            ice_thickness_A=settings["ice_thickness_A"], ice_gradient=settings["ice_gradient"],
            ice_noise=settings["ice_noise"], clutter_A=settings["clutter_A"], carbon_edge=settings["carbon_edge"],
            ice_crystals=settings["ice_crystals"], aggregates=settings["aggregates"], crowding=settings["crowding"],
            class_weights=weights, bfactor=settings["bfactor"], phase_per_A=PHASE_PER_A * settings["contrast"])
        m = simulate_micrograph(classes, config, seed=settings["sim_seed"], name=name or f"corpus{settings['index']:06d}")
    table = m.picks.table
    coords = m.picks.coords[(table["label"] == "target").to_numpy()]
    work, frame = prepare_image(render(m.image, settings), settings["factor"])
    return TrainingMicrograph(name=m.name, image=work, coords=frame.to_working(coords), frame=frame,
                              source="simulated", meta={"settings": settings})
