"""CryoFSL: SAM2 (Hiera) image encoder + per-block adapters + SAM2 mask decoder, in plain PyTorch.

Registered ``picker2d`` models: ``sam2-hiera-{tiny,small,base-plus,large}``,
``sam2.1-hiera-{tiny,small,base-plus,large}`` (the eight official configs; load Meta's weights with
``checkpoint=``) and ``sam2-test-tiny`` (a miniature random-initialised model for tests).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from cryopick.errors import CryopickError
from cryopick.models.registry import register_model
from cryopick.models.sam2.checkpoint import load_into
from cryopick.models.sam2.configs import ALL_CONFIGS, OFFICIAL_CONFIGS, TEST_TINY, SAM2Config, get_config
from cryopick.models.sam2.picker import CryoFSL

__all__ = ["CryoFSL", "SAM2Config", "build_sam2_picker", "resolve_checkpoint", "get_config", "ALL_CONFIGS", "OFFICIAL_CONFIGS"]


def build_sam2_picker(name: str, checkpoint: str | None = None, image_size: int | None = None,
                      **kwargs) -> CryoFSL:
    """Build the CryoFSL picker for config ``name``, loading ``checkpoint`` if given.

    Parameters
    ----------
    name
        A key of :data:`ALL_CONFIGS`.
    checkpoint
        An official SAM2/SAM2.1 ``.pt`` file (encoder, decoder and prompt embeddings are loaded;
        adapters start at zero), a cryopick CryoFSL checkpoint (everything is loaded), or the
        name of a downloaded official file (``sam2.1-hiera-large``: taken from the weights cache).
    image_size
        Working size in pixels (multiple of 32); ``None`` keeps the config's (1024 for official models).
    **kwargs
        Passed to :class:`CryoFSL` (``adapter_reduction``, ``intensity_clip``,
        ``activation_checkpointing``, ``bf16``).
    """
    cfg = get_config(name)
    if image_size is not None:
        if int(image_size) % 32 or int(image_size) <= 0:
            raise CryopickError(f"--image-size {image_size} for {name} must be a positive multiple of 32")
        cfg = cfg.with_image_size(int(image_size))
    model = CryoFSL(cfg, **kwargs)
    if checkpoint is not None:
        checkpoint = resolve_checkpoint(checkpoint)
        load_into(model, checkpoint)
    elif name in OFFICIAL_CONFIGS:
        warnings.warn(
            f"{name} has RANDOM weights: no checkpoint was given. Picking with it is meaningless; get "
            f"Meta's weights with `cryopick weights download {name}` and pass "
            f"`--checkpoint $(cryopick weights path {name})`.",
            UserWarning, stacklevel=2,
        )
    return model


def resolve_checkpoint(checkpoint: str | os.PathLike) -> str:
    """A path as given, or, for a weights name such as ``sam2.1-hiera-large``, its file in the cache."""
    from cryopick.models.download import OFFICIAL_WEIGHTS, weights_path

    if Path(checkpoint).exists() or str(checkpoint) not in OFFICIAL_WEIGHTS:
        return str(checkpoint)
    cached = weights_path(str(checkpoint))
    if not cached.is_file():
        raise CryopickError(f"checkpoint {checkpoint} is not downloaded ({cached} missing); run "
                            f"`cryopick weights download {checkpoint}`")
    return str(cached)


def _register(name: str, default_size: int) -> None:
    def builder(checkpoint: str | None = None, image_size: int = default_size, **kwargs) -> CryoFSL:
        return build_sam2_picker(name, checkpoint=checkpoint, image_size=image_size, **kwargs)

    cfg = ALL_CONFIGS[name]
    if name == TEST_TINY.name:
        desc = "tiny random SAM2-structured picker for tests (not a real model)"
    else:
        desc = f"CryoFSL: frozen SAM2 Hiera ({name}) + adapters + SAM2 mask decoder; weights {cfg.weights_file}"
    builder.__name__ = f"build_{name.replace('-', '_').replace('.', '_')}"
    builder.__doc__ = desc
    register_model(name, task="picker2d", description=desc)(builder)


for _name in OFFICIAL_CONFIGS:
    _register(_name, 1024)
_register(TEST_TINY.name, TEST_TINY.image_size)
