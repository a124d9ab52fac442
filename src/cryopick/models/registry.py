"""Models are built by name: ``build_model("unet", checkpoint=None, **kwargs)``.

A builder module registers itself with :func:`register_model`. Builders take keyword arguments
with defaults and an optional ``checkpoint`` path; they return a ``torch.nn.Module``.

Contract for 2D picking backbones (``task="picker2d"``)
-------------------------------------------------------
``forward(x)`` with ``x`` of shape ``(B, 1, H, W)`` (float32, robust-normalised micrograph patch at
the working scale) returns logits of shape ``(B, 1, H, W)``. The module exposes
``trainable_parameters()`` (what the optimiser updates; frozen parts are excluded) and may expose
``input_multiple`` (H and W must be multiples of it) and ``preferred_size`` (a square training
patch size in pixels, e.g. 1024 for SAM2).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from cryopick.errors import CryopickError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    task: str
    description: str


_REGISTRY: dict[str, ModelEntry] = {}

# Modules whose import registers models. Imported lazily so `cryopick --help` stays fast.
_BUILDER_MODULES = [
    "cryopick.models.unet2d",
    "cryopick.models.sam2",
    "cryopick.models.promptable3d",
    "cryopick.models.prompt_encoder",
]


def register_model(name: str, task: str, description: str = "") -> Callable:
    """Decorator: register ``builder(checkpoint=None, **kwargs) -> nn.Module`` under ``name``."""

    def decorate(builder: Callable) -> Callable:
        _REGISTRY[name] = ModelEntry(name, builder, task, description or (builder.__doc__ or "").strip().split("\n")[0])
        return builder

    return decorate


def _load_builders() -> None:
    for module in _BUILDER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real missing dependency inside an existing module
                raise


def available_models(task: str | None = None) -> dict[str, ModelEntry]:
    _load_builders()
    return {k: v for k, v in sorted(_REGISTRY.items()) if task is None or v.task == task}


def build_model(name: str, checkpoint: str | None = None, **kwargs):
    """Build a registered model; ``checkpoint`` is passed to the builder, which loads it."""
    models = available_models()
    if name not in models:
        raise CryopickError(f"unknown model {name!r}; available: {', '.join(models) or 'none'}")
    return models[name].builder(checkpoint=checkpoint, **kwargs)
