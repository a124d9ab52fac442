"""SAM2 model configurations: the eight official Hiera configs and a tiny test config.

Values are Meta's official SAM2 / SAM2.1 YAML settings (``sam2/configs/sam2*/sam2*_hiera_{t,s,b+,l}.yaml``)
for the parts CryoFSL uses: the Hiera trunk, the FPN neck, and the SAM mask decoder. SAM2 and SAM2.1
share the architecture of these parts; the two families differ only in their trained weights (and in
memory/tracking modules that are not used here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk settings (Meta's ``Hiera`` constructor arguments; defaults are its defaults)."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (2, 3, 16, 3)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0

    @property
    def stage_dims(self) -> list[int]:
        """Channel width of each stage's output, e.g. ``[144, 288, 576, 1152]`` for Hiera-L."""
        return [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]


@dataclass(frozen=True)
class NeckConfig:
    """FPN neck settings (``FpnNeck``); ``backbone_channel_list`` is ordered lowest resolution first."""

    d_model: int = 256
    backbone_channel_list: tuple[int, ...] = (768, 384, 192, 96)
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    fpn_interp_model: str = "nearest"
    fuse_type: str = "sum"


@dataclass(frozen=True)
class DecoderConfig:
    """SAM mask decoder + two-way transformer settings (``MaskDecoder`` / ``TwoWayTransformer``)."""

    transformer_dim: int = 256
    depth: int = 2
    mlp_dim: int = 2048
    num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    use_high_res_features: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    iou_prediction_use_sigmoid: bool = True
    attention_downsample_rate: int = 2


@dataclass(frozen=True)
class SAM2Config:
    """Everything needed to build the prompt-free SAM2 image path.

    ``image_size`` is the square input size in pixels the encoder runs at (1024 for the official
    models); it must be a multiple of 32 (patch stride 4 × three 2× poolings, and the 8-pixel
    window positional embedding at stride 4).
    """

    name: str
    trunk: HieraConfig = field(default_factory=HieraConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    scalp: int = 1
    image_size: int = 1024
    weights_file: str | None = None  # official checkpoint file name, e.g. "sam2.1_hiera_large.pt"

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding fed to the decoder (64 at 1024² input)."""
        return self.image_size // 16

    def with_image_size(self, image_size: int) -> "SAM2Config":
        return replace(self, image_size=int(image_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "custom") -> "SAM2Config":
        """Build from a nested dict (``trunk`` / ``neck`` / ``decoder`` / ``scalp`` / ``image_size``).

        Accepts the layout of ``mini_golden.pt``'s ``config`` (extra keys such as
        ``prompt_encoder`` are checked for consistency and otherwise ignored).
        """

        def tup(v):
            return tuple(v) if isinstance(v, (list, tuple)) else v

        trunk = HieraConfig(**{k: tup(v) for k, v in d.get("trunk", {}).items()})
        neck = NeckConfig(**{k: tup(v) for k, v in d.get("neck", {}).items()})
        decoder = DecoderConfig(**{k: tup(v) for k, v in d.get("decoder", {}).items()})
        cfg = cls(name=d.get("name", name), trunk=trunk, neck=neck, decoder=decoder,
                  scalp=int(d.get("scalp", 1)), image_size=int(d.get("image_size", 1024)),
                  weights_file=d.get("weights_file"))
        pe = d.get("prompt_encoder")
        if pe is not None:
            if int(pe["embed_dim"]) != decoder.transformer_dim:
                raise ValueError("prompt_encoder.embed_dim must equal decoder.transformer_dim")
            if tuple(pe["image_embedding_size"]) != (cfg.embedding_size, cfg.embedding_size):
                raise ValueError("prompt_encoder.image_embedding_size must be image_size // 16")
        return cfg


# Per-size trunk settings of the official configs (identical for SAM2 and SAM2.1).
_TRUNKS = {
    "tiny": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                        window_pos_embed_bkg_spatial_size=(7, 7)),
    "small": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                         window_pos_embed_bkg_spatial_size=(7, 7)),
    "base-plus": HieraConfig(embed_dim=112, num_heads=2),  # Hiera class defaults otherwise
    "large": HieraConfig(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                         window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}
_FILE_SIZE = {"tiny": "tiny", "small": "small", "base-plus": "base_plus", "large": "large"}


def _official(family: str, size: str) -> SAM2Config:
    trunk = _TRUNKS[size]
    channels = tuple(reversed(trunk.stage_dims))
    prefix = "sam2" if family == "sam2" else "sam2.1"
    return SAM2Config(
        name=f"{prefix}-hiera-{size}",
        trunk=trunk,
        neck=NeckConfig(d_model=256, backbone_channel_list=channels),
        decoder=DecoderConfig(),
        scalp=1,
        image_size=1024,
        weights_file=f"{prefix}_hiera_{_FILE_SIZE[size]}.pt",
    )


OFFICIAL_CONFIGS: dict[str, SAM2Config] = {
    cfg.name: cfg for cfg in (_official(fam, size) for fam in ("sam2", "sam2.1") for size in _TRUNKS)
}

# A miniature model with the same structure (4 stages, windowed + global attention, q-pooling,
# FPN with scalp, high-res decoder features) that trains in seconds on a CPU. Random weights only.
TEST_TINY = SAM2Config(
    name="sam2-test-tiny",
    trunk=HieraConfig(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
                      window_pos_embed_bkg_spatial_size=(4, 4), window_spec=(8, 4, 4, 2)),
    neck=NeckConfig(d_model=16, backbone_channel_list=(64, 32, 16, 8)),
    decoder=DecoderConfig(transformer_dim=16, depth=1, mlp_dim=32, num_heads=2, iou_head_hidden_dim=16),
    scalp=1,
    image_size=128,
)

ALL_CONFIGS: dict[str, SAM2Config] = {**OFFICIAL_CONFIGS, TEST_TINY.name: TEST_TINY}


def get_config(name: str) -> SAM2Config:
    """Look up a config by model name (``sam2.1-hiera-large``, ``sam2-test-tiny`` ...)."""
    try:
        return ALL_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown SAM2 config {name!r}; known: {', '.join(ALL_CONFIGS)}") from None
