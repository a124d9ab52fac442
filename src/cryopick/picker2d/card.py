"""A trained 2D picker on disk: ``model.pt`` (weights) + ``card.json`` (everything needed to use it).

The card records how micrographs must be prepared (working scale, normalisation), what the
network was trained to paint, the calibrated score threshold and post-processing settings, and
a summary of the training data, so that a model directory alone reproduces the picks.

Units: ``diameter`` is in *original* micrograph pixels, ``working_diameter`` in working pixels
(``diameter / factor``), pixel sizes in Å/px (``None`` when unknown), ``min_distance`` in original
pixels.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cryopick._version import __version__
from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path, write_text
from cryopick.io.jsonutil import dumps

CARD_NAME = "card.json"
WEIGHTS_NAME = "model.pt"


@dataclass
class ModelCard:
    """Metadata of a trained 2D picker. See the module docstring for units."""

    backbone: str = "unet"
    backbone_kwargs: dict = field(default_factory=dict)
    backbone_checkpoint: str | None = None
    factor: float = 1.0
    diameter: float = 0.0
    pixel_size: float | None = None
    target_radius_fraction: float = 0.5
    normalisation: dict = field(default_factory=lambda: {"method": "fourier_crop+median_mad", "clip_sigma": 4.0})
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    min_distance: float | None = None
    score_method: str = "mean_top"
    #: post-processing (``"s1"`` or ``"peaks"``, see :func:`cryopick.postprocess.peaks2d.find_peaks_2d`) and
    #: test-time augmentation (:data:`cryopick.picker2d.predict.TTA_MODES`) chosen at calibration; cards
    #: written before these existed get S1 without augmentation
    peak_method: str = "s1"
    tta: str = "none"
    calibration: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    #: sentences a person must read about this model (sparse annotation detected, validation that could not
    #: be measured, default threshold, time budget cut): shown by the CLI, the app's job log and model panel
    notes: list = field(default_factory=list)
    cryopick_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    task: str = "picker2d"

    @property
    def working_diameter(self) -> float:
        return self.diameter / self.factor

    @property
    def working_pixel_size(self) -> float | None:
        return None if self.pixel_size is None else self.pixel_size * self.factor

    @property
    def target_radius(self) -> float:
        """Radius of the painted target blob in working pixels (the ``r`` of post-processing)."""
        return 0.5 * self.working_diameter * self.target_radius_fraction

    def to_dict(self) -> dict:
        d = asdict(self)
        d["working_diameter"] = self.working_diameter
        d["working_pixel_size"] = self.working_pixel_size
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def save_card(directory: str | os.PathLike, card: ModelCard) -> Path:
    path = Path(directory) / CARD_NAME
    write_text(path, dumps(card.to_dict(), indent=2, strict=False) + "\n")
    return path


def save_weights(directory: str | os.PathLike, model: torch.nn.Module, name: str = WEIGHTS_NAME,
                 trainable_only: bool = False) -> Path:
    """Save the model's state dict atomically.

    ``trainable_only`` keeps the parameters that require gradients plus all buffers: for a large
    frozen backbone loaded from its own checkpoint (SAM2) only the fine-tuned part is stored.
    """
    path = Path(directory) / name
    state = model.state_dict()
    if trainable_only:
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        state = {k: v for k, v in state.items() if k not in frozen}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def save_model(directory: str | os.PathLike, model: torch.nn.Module, card: ModelCard) -> Path:
    """Write ``model.pt`` and ``card.json`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory, model, trainable_only=bool(card.backbone_checkpoint))
    save_card(directory, card)
    return directory


def _check_card(card: ModelCard, path: Path) -> ModelCard:
    """Reject a card whose numbers cannot describe a 2D picker (hand-edited or damaged)."""

    def number(name: str, lo: float, hi: float = math.inf, optional: bool = False) -> None:
        value = getattr(card, name)
        if value is None and optional:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not lo <= value <= hi:
            rng = f"between {lo:g} and {hi:g}" if math.isfinite(hi) else f">= {lo:g}"
            raise CryopickError(f"{path}: {name} must be a number {rng}, found {value!r}; "
                                "the model card is damaged: retrain with `cryopick train` or restore the file")

    if card.task != "picker2d":
        raise CryopickError(f"{path}: a model for {card.task!r}, not a 2D picker; give a folder written by "
                            "`cryopick train`")
    if not isinstance(card.backbone, str) or not isinstance(card.backbone_kwargs, dict) \
            or not isinstance(card.normalisation, dict):
        raise CryopickError(f"{path}: backbone, backbone_kwargs or normalisation has the wrong type; "
                            "the model card is damaged: retrain with `cryopick train` or restore the file")
    from cryopick.picker2d.predict import TTA_MODES
    from cryopick.postprocess.peaks2d import PEAK_METHODS

    for name, known in (("peak_method", PEAK_METHODS), ("tta", tuple(TTA_MODES))):
        if getattr(card, name) not in known:
            raise CryopickError(f"{path}: {name} must be one of {', '.join(known)}, found {getattr(card, name)!r}; "
                                "the model card is damaged or from a newer cryopick: retrain or restore the file")
    number("factor", 1e-6)
    number("diameter", 1e-6)
    number("pixel_size", 1e-6, optional=True)
    number("target_radius_fraction", 1e-6)
    number("score_threshold", 0.0, 1.0)
    number("mask_threshold", 0.0, 1.0)
    number("min_distance", 0.0, optional=True)
    return card


def load_card(directory: str | os.PathLike) -> ModelCard:
    """Read and check ``card.json`` of a model folder (one-line :class:`CryopickError` when missing or damaged)."""
    directory = Path(directory)
    path = directory / CARD_NAME
    if not directory.is_dir():
        raise CryopickError(f"{directory}: no such model folder; give the folder written by `cryopick train`")
    if not path.is_file():
        raise CryopickError(f"{directory}: not a cryopick model directory (no {CARD_NAME}); train one with `cryopick train`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc
        raise CryopickError(f"{path}: unreadable model card ({reason}); retrain or restore the file") from None
    if not isinstance(data, dict):
        raise CryopickError(f"{path}: unreadable model card (not a JSON object); retrain or restore the file")
    try:
        card = ModelCard.from_dict(data)
    except TypeError as exc:  # a field of the wrong kind
        raise CryopickError(f"{path}: unreadable model card ({exc}); retrain or restore the file") from None
    return _check_card(card, path)


def _load_state(weights: Path, device: str) -> dict:
    """``model.pt`` as a state dict; a truncated, corrupt or foreign file is a one-line error (no torch advice)."""
    hint = "retrain with `cryopick train` or restore the file from a backup"
    if weights.stat().st_size == 0:
        raise CryopickError(f"{weights}: empty file (an interrupted copy?); {hint}")
    try:
        with warnings.catch_warnings():  # torch warns with library advice ("file an issue") on odd pickles
            warnings.simplefilter("ignore")
            state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises assorted errors (zip, unpickling, EOF) on damaged files
        raise CryopickError(f"{weights}: not readable as model weights ({type(exc).__name__}: the file is "
                            f"truncated, corrupt or not a cryopick model.pt); {hint}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CryopickError(f"{weights}: does not hold model weights (a state dict of tensors); {hint}")
    return dict(state)


def load_model(directory: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Build the backbone named in the card and load ``model.pt``; returns ``(model in eval mode, card)``."""
    from cryopick.models.registry import available_models, build_model

    directory = Path(directory)
    card = load_card(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CryopickError(f"{directory}: {WEIGHTS_NAME} is missing; training did not finish, rerun `cryopick train` to resume")
    known = available_models(task="picker2d")
    if card.backbone not in known:
        raise CryopickError(f"{directory / CARD_NAME}: backbone {card.backbone!r} is not a 2D picker of this cryopick "
                            f"(known: {', '.join(known)}); the card is damaged or from a newer version")
    state = _load_state(weights, device)
    kwargs = dict(card.backbone_kwargs)
    if card.backbone_checkpoint:
        kwargs["checkpoint"] = card.backbone_checkpoint
    try:
        model = build_model(card.backbone, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CryopickError(f"{directory / CARD_NAME}: backbone {card.backbone!r} cannot be built with the recorded "
                            f"settings ({exc}); the model card is damaged: retrain or restore it") from None
    inconsistent = (f"{weights}: weights do not fit backbone {card.backbone!r}; the model directory is "
                    "inconsistent (model.pt and card.json from different trainings?): retrain or restore both")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # shape mismatch
        raise CryopickError(inconsistent) from None
    if unexpected or (missing and not card.backbone_checkpoint):
        raise CryopickError(f"{inconsistent} (missing {len(missing)}, unexpected {len(unexpected)} keys)")
    model.to(device).eval()
    return model, card


def model_digest(directory: str | os.PathLike) -> str:
    """Short SHA-256 of ``model.pt`` and ``card.json``: which model made the picks of a folder."""
    import hashlib

    digest = hashlib.sha256()
    for name in (WEIGHTS_NAME, CARD_NAME):
        with open(Path(directory) / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]
