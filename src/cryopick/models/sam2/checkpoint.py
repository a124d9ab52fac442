"""Loading official SAM2 / SAM2.1 checkpoints and cryopick's own CryoFSL checkpoints.

Official files (``sam2_hiera_*.pt``, ``sam2.1_hiera_*.pt``) are ``{"model": state_dict}`` for the
full video model. The prompt-free picker takes, with strict key and shape checking:

- every ``image_encoder.*`` tensor (Hiera trunk + FPN neck),
- every ``sam_mask_decoder.*`` tensor,
- ``sam_prompt_encoder.no_mask_embed.weight`` and
  ``sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``.

Everything else (memory attention/encoder, object pointers, point/mask prompt embeddings) is not
used and ignored. A cryopick CryoFSL checkpoint (a state dict that also holds ``adapters.*``) is
loaded strictly as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from cryopick.errors import CryopickError
from cryopick.models.download import cache_dir, download_url, get_entry
from cryopick.models.sam2.configs import OFFICIAL_CONFIGS, get_config

SAM2_PREFIXES = ("image_encoder.", "sam_mask_decoder.")
PROMPT_KEYS = (
    "sam_prompt_encoder.no_mask_embed.weight",
    "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` a checkpoint on the CPU (tensors only), as a :class:`CryopickError` on failure."""
    path = Path(path)
    if not path.is_file():
        raise CryopickError(f"checkpoint {path} does not exist; download it with "
                            f"`cryopick weights download NAME` or pass the right path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip files, non-torch files
        raise CryopickError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120]}); re-download it") from None


def _tensor_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj) and \
            any(isinstance(v, torch.Tensor) for v in obj.values()):
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return None


def find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state dict inside a checkpoint: top level, or under ``model`` / ``state_dict``."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj:
                sd = _tensor_dict(obj[key])
                if sd is not None:
                    return sd
    return _tensor_dict(obj)


def describe_trunk(sd: dict[str, torch.Tensor]) -> str:
    """Human description of a checkpoint's Hiera trunk and the official configs it matches."""
    pos = sd.get("image_encoder.trunk.pos_embed")
    if pos is None:
        return "no Hiera trunk"
    depth = len({k.split(".")[3] for k in sd if k.startswith("image_encoder.trunk.blocks.")})
    matches = [name for name, cfg in OFFICIAL_CONFIGS.items()
               if cfg.trunk.embed_dim == pos.shape[1] and sum(cfg.trunk.stages) == depth]
    text = f"Hiera embed_dim {pos.shape[1]} with {depth} blocks"
    return text + (f" (matches {' / '.join(matches)})" if matches else " (no official config)")


def load_into(model: torch.nn.Module, path: str | os.PathLike) -> str:
    """Load ``path`` into a :class:`~cryopick.models.sam2.picker.CryoFSL`; returns ``"sam2"`` or ``"cryopick"``.

    Raises :class:`CryopickError` when the file is not a SAM2 checkpoint, or its tensors do not
    match the model's configuration (the message names the config the file does match).
    """
    return load_state(model, read_checkpoint(path), source=str(path))


def load_state(model: torch.nn.Module, obj: Any, source: str = "checkpoint") -> str:
    """Like :func:`load_into`, for an already ``torch.load``-ed checkpoint object ``obj``."""
    path = source
    sd = find_state_dict(obj)
    if sd is None or not any(k.startswith("image_encoder.trunk.") for k in sd):
        raise CryopickError(f"{path} is not a SAM2 checkpoint (no 'image_encoder.trunk.*' tensors under "
                            f"its 'model' key); use an official sam2_hiera_*.pt / sam2.1_hiera_*.pt file")
    own = model.state_dict()
    if any(k.startswith("adapters.") for k in sd):
        wanted = set(own)
        kind = "cryopick"
    else:
        wanted = {k for k in own if not k.startswith("adapters.")}
        kind = "sam2"
    selected = {k: v for k, v in sd.items() if k.startswith(SAM2_PREFIXES) or k in PROMPT_KEYS
                or (kind == "cryopick" and k.startswith("adapters."))}
    missing = sorted(wanted - set(selected))
    unexpected = sorted(set(selected) - wanted)
    mismatched = sorted(k for k in wanted & set(selected) if tuple(selected[k].shape) != tuple(own[k].shape))
    if missing or unexpected or mismatched:
        name = getattr(getattr(model, "sam2_config", None), "name", "this model")
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(f"{len(mismatched)} shape mismatches, e.g. {k} {tuple(selected[k].shape)} "
                           f"vs {tuple(own[k].shape)}")
        if missing:
            details.append(f"{len(missing)} missing tensors, e.g. {missing[0]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[0]}")
        raise CryopickError(f"{path} does not fit {name}: it holds {describe_trunk(sd)}; "
                            f"{'; '.join(details)}. Choose the backbone that matches the checkpoint")
    result = model.load_state_dict(selected, strict=False)
    leftover = [k for k in result.missing_keys if k in wanted]
    if leftover or result.unexpected_keys:  # cannot happen after the checks above
        raise RuntimeError(f"incomplete load: {leftover[:3]} {result.unexpected_keys[:3]}")
    return kind


def verify_sam2_checkpoint(name: str) -> Callable[[Path], None]:
    """A ``verify`` callback: the file must load and fit config ``name`` exactly (strict key/shape check)."""

    def check(path: Path) -> None:
        from cryopick.models.sam2.picker import CryoFSL

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise CryopickError(f"not a readable PyTorch checkpoint ({type(exc).__name__})") from None
        with torch.device("meta"):
            model = CryoFSL(get_config(name))
        meta = {"model": {k: v.to("meta") for k, v in (obj.get("model", {}) if isinstance(obj, dict) else {}).items()}}
        load_state(model, meta, source=path.name)

    return check


def download(name: str, cache: str | os.PathLike | None = None, url: str | None = None,
             sha256: str | None = None, progress: bool = True, retries: int = 3) -> Path:
    """Download the official checkpoint for model ``name`` into the cache; returns its path.

    ``url`` overrides Meta's URL (a mirror); ``sha256`` overrides the (unknown) expected checksum.
    """
    entry = get_entry(name)
    dest = cache_dir(cache) / entry.filename
    return download_url(url or entry.url, dest, sha256=sha256 or entry.sha256, size=entry.size,
                        verify=verify_sam2_checkpoint(entry.name), retries=retries, progress=progress)
