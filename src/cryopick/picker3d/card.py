"""The trained 3D model and what its weights record: the 3D counterpart of :mod:`cryopick.picker2d.card`.

A 3D model is one checkpoint file (``.pt``, written by ``train3d`` / ``finetune3d``, or the shipped weights)
whose ``meta`` holds what picking needs besides the weights: the recommended settings
(``default_threshold``, ``default_min_factor``, ... read by :func:`cryopick.picker3d.settings.default_settings`)
and the scale it was trained at (:func:`trained_scale`). :func:`load_model` reads one with a clear error for
anything else, :func:`model_fingerprint` is what a run's resume record keeps of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryopick.errors import CryopickError
from cryopick.models.promptable3d import ProPicker
from cryopick.picker3d.scale import TrainedScale


def default_threshold(model: ProPicker) -> float:
    """The probability threshold recommended with ``model`` (``meta["default_threshold"]``, else 0.5)."""
    return float(model.meta.get("default_threshold", 0.5))


def trained_scale(model: ProPicker) -> TrainedScale | None:
    """The voxel sizes and particle diameters ``model`` was trained on (``meta["trained_voxel_size"]``,
    Å, and ``meta["trained_diameter_voxels"]``, voxels; written by ``train3d`` from its corpus), or ``None``
    for weights that do not record them (then nothing is rescaled by itself)."""
    vs, diameter = model.meta.get("trained_voxel_size"), model.meta.get("trained_diameter_voxels")
    try:
        vs, diameter = (float(vs[0]), float(vs[1])), (float(diameter[0]), float(diameter[1]))
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    if not (0 < vs[0] <= vs[1] and 0 < diameter[0] <= diameter[1]):
        return None
    return TrainedScale(vs, diameter)


def load_model(model: ProPicker | str | os.PathLike | None = None, device: str | None = None) -> ProPicker:
    """A :class:`ProPicker` from a checkpoint path (``None``: the shipped weights), or ``model`` as is.

    Any unreadable file (random bytes, truncated, another program's checkpoint) gives one
    :class:`CryopickError` naming the file and what it should be, without library advice."""
    from cryopick.models.promptable3d import load_propicker

    if model is None or isinstance(model, (str, os.PathLike)):
        path = model
        try:
            model = load_propicker(path)
        except CryopickError as exc:
            if path is None or not Path(path).is_file():
                raise
            raise CryopickError(
                f"{path}: not a readable cryopick ProPicker checkpoint (expected a .pt file written by "
                "`cryopick train3d` or `cryopick finetune3d`); give such a file, or leave --model out for "
                "the shipped weights") from exc.__cause__ or exc
        except Exception as exc:  # a checkpoint with the right tag but a broken state dict
            raise CryopickError(f"{path}: damaged ProPicker checkpoint ({type(exc).__name__}); write it again with "
                                "`cryopick train3d` or `cryopick finetune3d`") from exc
    if device is not None:
        model = model.to(resolve_device(device))
    return model


def resolve_device(device: str | None) -> str:
    """Check a torch device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``) is usable here."""
    import torch

    name = device or "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CryopickError(f"unknown device {name!r}; use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CryopickError(f"device {name!r}: no CUDA GPU is available to this PyTorch; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CryopickError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise CryopickError(f"device {name!r} is not supported; use cpu or cuda")
    return name


def model_fingerprint(model: ProPicker) -> str:
    """SHA-256 of a model's weights and recommended settings (what a run's fingerprint records)."""
    import hashlib

    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().float().numpy().tobytes())
    h.update(json.dumps({k: v for k, v in model.meta.items() if k.startswith("default_") or k in ("finetuned",
                                                                                                    "embedding")},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()
