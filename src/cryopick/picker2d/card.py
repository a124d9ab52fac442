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
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import cryopick
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
    calibration: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    cryopick_version: str = cryopick.__version__
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


def load_card(directory: str | os.PathLike) -> ModelCard:
    path = Path(directory) / CARD_NAME
    if not path.exists():
        raise CryopickError(f"{directory}: not a cryopick model directory (no {CARD_NAME}); train one with `cryopick train`")
    try:
        return ModelCard.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CryopickError(f"{path}: unreadable model card ({exc}); retrain or restore the file") from exc


def load_model(directory: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Build the backbone named in the card and load ``model.pt``; returns ``(model in eval mode, card)``."""
    from cryopick.models.registry import build_model

    directory = Path(directory)
    card = load_card(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.exists():
        raise CryopickError(f"{directory}: {WEIGHTS_NAME} is missing; training did not finish, rerun `cryopick train` to resume")
    kwargs = dict(card.backbone_kwargs)
    if card.backbone_checkpoint:
        kwargs["checkpoint"] = card.backbone_checkpoint
    model = build_model(card.backbone, **kwargs)
    state = torch.load(weights, map_location=device, weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (missing and not card.backbone_checkpoint):
        raise CryopickError(
            f"{weights}: weights do not fit backbone {card.backbone!r} "
            f"(missing {len(missing)}, unexpected {len(unexpected)} keys); the model directory is inconsistent"
        )
    model.to(device).eval()
    return model, card
