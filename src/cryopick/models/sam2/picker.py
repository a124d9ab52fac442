"""CryoFSL: a frozen SAM2 image encoder with per-block adapters and SAM2's mask decoder, used
without prompts, as a 2D particle-picking backbone (``task="picker2d"``).

Input mapping (a robust z-scored micrograph -> what SAM2 was trained on)
-----------------------------------------------------------------------
SAM2 expects an RGB image scaled to ``[0, 1]`` and then normalised with the ImageNet mean/std,
at ``image_size``² pixels. The picker input ``x`` is a single-channel micrograph normalised by
:func:`cryopick.preprocess.normalize` (median 0, robust σ 1, clipped at ±4σ). We map

    v = (clip(x, -c, c) + c) / (2c)            c = intensity_clip (default 4.0, the normalize() clip)

so ``[-c, c]`` fills ``[0, 1]`` the way the CryoFSL authors' min–max stretch of an 8-bit image does
for a clipped micrograph, but with a fixed, outlier-robust scale instead of the per-image extremes.
``v`` is replicated to three channels and normalised channel-wise with mean (0.485, 0.456, 0.406)
and std (0.229, 0.224, 0.225).

Geometry: a non-square input is zero-padded (z = 0, the median grey) at the bottom/right to a
square, so particles keep their aspect ratio (the authors' code squashes it), resized to
``image_size``² (bilinear, antialiased when shrinking), and the decoder's logits (``image_size/4``²)
are resized back bilinearly and cropped to the input ``(H, W)``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from cryopick.models.sam2.adapters import HieraAdapters
from cryopick.models.sam2.configs import SAM2Config
from cryopick.models.sam2.mask_decoder import MaskDecoder
from cryopick.models.sam2.neck import ImageEncoder
from cryopick.models.sam2.position_encoding import PositionEmbeddingRandom

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PromptFreeEmbeddings(nn.Module):
    """The two tensors of SAM2's prompt encoder that the prompt-free path needs.

    Stored as ``sam_prompt_encoder`` so the names match the checkpoint:
    ``no_mask_embed.weight (1, C)`` and ``pe_layer.positional_encoding_gaussian_matrix (2, C/2)``.
    """

    def __init__(self, embed_dim: int, embedding_size: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.embedding_size = embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def image_pe(self) -> torch.Tensor:
        """``(1, C, h, w)`` positional encoding of the image-embedding grid (``get_dense_pe``)."""
        s = self.embedding_size
        return self.pe_layer((s, s)).unsqueeze(0)

    def sparse(self, batch: int, device, dtype=torch.float32) -> torch.Tensor:
        """No point or box prompts: ``(B, 0, C)``."""
        return torch.empty(batch, 0, self.embed_dim, device=device, dtype=dtype)

    def dense(self, batch: int) -> torch.Tensor:
        """``no_mask_embed`` broadcast over the embedding grid: ``(B, C, h, w)``."""
        s = self.embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, s, s)


class CryoFSL(nn.Module):
    """SAM2 + adapters particle picker.

    Parameters
    ----------
    cfg
        Model configuration; ``cfg.image_size`` is the working size in pixels (multiple of 32).
    adapter_reduction
        Adapter bottleneck factor (hidden width = C // reduction).
    use_adapters
        Build the adapters (False gives the plain SAM2 image path, e.g. for exactness tests).
    intensity_clip
        ``c`` of the input mapping above, in units of the micrograph's robust σ.
    activation_checkpointing
        Recompute each Hiera block in the backward pass instead of storing its activations
        (much less memory, ~1 extra encoder forward per step).
    bf16
        Run encoder and decoder under ``torch.autocast(dtype=bfloat16)``; logits are returned as float32.
    """

    def __init__(self, cfg: SAM2Config, adapter_reduction: int = 32, use_adapters: bool = True,
                 intensity_clip: float = 4.0, activation_checkpointing: bool = False, bf16: bool = False):
        super().__init__()
        if cfg.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {cfg.image_size}")
        if cfg.neck.d_model != cfg.decoder.transformer_dim:
            raise ValueError("neck.d_model must equal decoder.transformer_dim")
        if intensity_clip <= 0:
            raise ValueError("intensity_clip must be positive")
        self.sam2_config = cfg
        # Registry convention: ``config`` holds the builder keyword arguments that define the
        # weights' meaning, so a trained model can be rebuilt from its model card.
        self.config = {"image_size": cfg.image_size, "adapter_reduction": adapter_reduction,
                       "intensity_clip": float(intensity_clip)}
        self.image_encoder = ImageEncoder(cfg)
        self.sam_prompt_encoder = PromptFreeEmbeddings(cfg.decoder.transformer_dim, cfg.embedding_size)
        self.sam_mask_decoder = MaskDecoder(cfg.decoder)
        self.adapters = HieraAdapters(self.image_encoder.trunk, adapter_reduction) if use_adapters else None
        self.intensity_clip = float(intensity_clip)
        self.activation_checkpointing = activation_checkpointing
        self.bf16 = bf16
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        nn.init.trunc_normal_(self.image_encoder.trunk.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.image_encoder.trunk.pos_embed_window, std=0.02)
        for p in list(self.image_encoder.parameters()) + list(self.sam_prompt_encoder.parameters()):
            p.requires_grad_(False)

    # --- picker2d contract -------------------------------------------------------------------
    @property
    def preferred_size(self) -> int:
        """Square training patch size in pixels (the encoder's working size)."""
        return self.sam2_config.image_size

    @property
    def input_multiple(self) -> int:
        """Any H, W works: inputs are padded to a square and resized to ``image_size`` internally."""
        return 1

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Adapters + mask decoder (the encoder and prompt embeddings stay frozen)."""
        params = list(self.sam_mask_decoder.parameters())
        if self.adapters is not None:
            params = list(self.adapters.parameters()) + params
        return params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, 1, H, W)`` robust-normalised micrograph -> particle logits ``(B, 1, H, W)``."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected (B, 1, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        side = max(h, w)
        image = self.to_sam_input(x)
        with self._autocast(x.device):
            backbone = self.encode(image, with_pos=False)
            masks, _, _, _ = self.decode(backbone)
        logits = F.interpolate(masks.float(), size=(side, side), mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    # --- pieces ----------------------------------------------------------------------------
    def to_sam_input(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 1, H, W)`` z-scores to SAM2's ``(B, 3, S, S)`` normalised RGB (S = image_size)."""
        x = x.float()
        h, w = x.shape[-2:]
        side = max(h, w)
        if (h, w) != (side, side):
            x = F.pad(x, (0, side - w, 0, side - h))  # z = 0: median grey
        c = self.intensity_clip
        v = (x.clamp(-c, c) + c) / (2 * c)
        s = self.sam2_config.image_size
        if side != s:
            v = F.interpolate(v, size=(s, s), mode="bilinear", align_corners=False, antialias=side > s)
        return (v.expand(-1, 3, -1, -1) - self.pixel_mean) / self.pixel_std

    def encode(self, image: torch.Tensor, with_pos: bool = True) -> dict[str, object]:
        """Run the (adapted) image encoder on a SAM2-normalised ``(B, 3, S, S)`` image."""
        checkpoint_blocks = self.activation_checkpointing and self.training
        return self.image_encoder(image, hook=self.adapters, checkpoint_blocks=checkpoint_blocks, with_pos=with_pos)

    def decode(self, backbone: dict[str, object], multimask_output: bool = False):
        """Prompt-free mask decoding of :meth:`encode`'s output.

        Returns ``(low_res_masks (B, 1, S/4, S/4), iou_predictions (B, 1), sam_tokens, object_score_logits (B, 1))``.
        The high-resolution features are ``conv_s0``/``conv_s1`` of the same batch's FPN levels.
        """
        fpn = backbone["backbone_fpn"]
        emb = backbone["vision_features"]
        b = emb.shape[0]
        dec = self.sam_mask_decoder
        high_res = (dec.conv_s0(fpn[0]), dec.conv_s1(fpn[1])) if dec.use_high_res_features else None
        pe = self.sam_prompt_encoder
        return dec(emb, pe.image_pe(), pe.sparse(b, emb.device, emb.dtype), pe.dense(b),
                   multimask_output=multimask_output, high_res_features=high_res)

    def _autocast(self, device: torch.device):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    # --- checkpoints -----------------------------------------------------------------------
    def sam2_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors that come from an official SAM2 checkpoint (everything except the adapters)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("adapters.")}

    def extra_repr(self) -> str:
        return f"config={self.sam2_config.name!r}, image_size={self.sam2_config.image_size}"
