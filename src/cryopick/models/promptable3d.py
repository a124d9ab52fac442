"""ProPicker's promptable segmentation network: a FiLM-conditioned residual 3D U-Net.

:class:`PromptableUNet3d` maps a tomogram window ``x`` of shape ``(B, 1, D, H, W)`` (float32, z-scored
per window; D, H, W multiples of ``2 ** (levels - 1)``, 64 by default) and prompt embeddings ``z`` of
shape ``(P, 32)`` (same prompts for every window) or ``(B, P, 32)`` to logits ``(B, P, D, H, W)``:
one occupancy map per prompt. The encoder runs once per window; the decoder runs once per prompt.

Architecture (after the ProPicker repository): residual blocks (two 3³ convs, GroupNorm with 4
channels per group — instance-norm-like — LeakyReLU, 1³ projection on the skip when widths change),
CoordConv (3 channels of normalised window coordinates concatenated before every block), AvgPool3d
downsampling with the pooled raw input concatenated at every encoder level, ConvTranspose3d
upsampling, skip connections summed, and FiLM after every upsampling:
``h -> h * (1 + A z) + B z`` with ``A, B`` of shape ``(C, 32)`` (the ``1 +`` starts training at the
identity; it is the paper's ``h * (A' z) + B z`` with ``A' z = 1 + A z``).

:class:`ProPicker` bundles a prompt encoder and the segmenter in one module and one checkpoint.
Registered names: ``"propicker-small"`` (default, CPU-sized: stride-2 stem, then widths 16-32-64-64 at
half resolution, no CoordConv, small prompt encoder) and ``"propicker-paper"`` (full resolution,
widths 108-216-432-864, CoordConv, the TomoTwin encoder; for GPU users).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cryopick.errors import CryopickError
from cryopick.models.prompt_encoder import EMBED_DIM, SmallPromptEncoder, TomoTwinEncoder, load_tomotwin
from cryopick.models.registry import register_model

CHECKPOINT_FORMAT = "cryopick-propicker-v1"
SMALL_WIDTHS = (16, 32, 64, 64)
SMALL_ENCODER_WIDTHS = (8, 16, 32, 64)
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "propicker_small.pt"


def _groups(channels: int) -> int:
    return max(1, channels // 4)


_COORD_CACHE: dict[tuple, torch.Tensor] = {}


def coord_channels(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """``(1, 3, D, H, W)`` grid of z, y, x window coordinates in [-1, 1] (cached per shape/dtype)."""
    key = (tuple(shape), like.device, like.dtype)
    grid = _COORD_CACHE.get(key)
    if grid is None:
        axes = [torch.linspace(-1.0, 1.0, n, device=like.device, dtype=like.dtype) for n in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
        if len(_COORD_CACHE) > 32:
            _COORD_CACHE.clear()
        _COORD_CACHE[key] = grid
    return grid


class ResBlock3d(nn.Module):
    """Two 3³ convs with GroupNorm and LeakyReLU, a residual connection, CoordConv inputs."""

    def __init__(self, cin: int, cout: int, coord: bool = True) -> None:
        super().__init__()
        self.coord = coord
        extra = 3 if coord else 0
        self.conv1 = nn.Conv3d(cin + extra, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv3d(cout + extra, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def _cat(self, x: torch.Tensor) -> torch.Tensor:
        if not self.coord:
            return x
        grid = coord_channels(x.shape[2:], x).expand(x.shape[0], -1, -1, -1, -1)
        return torch.cat([x, grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.norm1(self.conv1(self._cat(x))), 0.1)
        h = self.norm2(self.conv2(self._cat(h)))
        return F.leaky_relu(h + self.skip(x), 0.1)


class FiLM(nn.Module):
    """``h * (1 + A z) + B z`` per channel; ``z`` is ``(B, 32)``."""

    def __init__(self, channels: int, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.scale = nn.Linear(embed_dim, channels, bias=False)
        self.shift = nn.Linear(embed_dim, channels, bias=False)
        nn.init.normal_(self.scale.weight, std=0.02)
        nn.init.normal_(self.shift.weight, std=0.02)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        shape = (z.shape[0], -1) + (1,) * (h.ndim - 2)
        return h * (1 + self.scale(z).view(shape)) + self.shift(z).view(shape)


class PromptableUNet3d(nn.Module):
    """FiLM-conditioned residual 3D U-Net (see module docstring for shapes).

    Parameters
    ----------
    widths
        Channels per level, top to bottom; ``len(widths)`` levels, ``len(widths) - 1`` poolings.
    embed_dim
        Prompt embedding size.
    coord
        CoordConv channels before every block.
    stem
        1: the top level works at full resolution (the paper). 2: a learned stride-2 convolution
        (4³ kernel) feeds a U-Net at half resolution and the logits are upsampled trilinearly; about
        4x cheaper, fine for particles of 6 voxels and more.
    prototype
        Also match the prompt in feature space: the prompt sub-volume goes through this network's
        encoder once (:meth:`prompt_features`), its centre features at every decoder level are the
        level's *prototype*, and each decoder block receives one extra input channel, the cosine
        similarity of the window's features with the prototype (few-shot segmentation by prototype
        matching). The conditioning code is then ``[z (32), prototypes]`` (:attr:`code_dim`).
    """

    def __init__(self, widths: Sequence[int] = (8, 16, 32, 64), embed_dim: int = EMBED_DIM, coord: bool = True,
                 stem: int = 1, prototype: bool = False) -> None:
        super().__init__()
        self.widths = list(widths)
        self.embed_dim = embed_dim
        self.prototype = bool(prototype)
        self.stem_stride = int(stem)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem must be 1 or 2, got {stem}")
        self.stem = nn.Conv3d(1, self.widths[0], 4, stride=2, padding=1) if self.stem_stride == 2 else None
        self.down = nn.ModuleList()
        cin = self.widths[0] if self.stem is not None else 1
        for i, w in enumerate(self.widths):
            self.down.append(ResBlock3d(cin + (1 if i > 0 else 0), w, coord))
            cin = w
        self.up = nn.ModuleList()
        self.film = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(self.widths) - 1, 0, -1):
            self.up.append(nn.ConvTranspose3d(self.widths[i], self.widths[i - 1], 2, stride=2))
            self.film.append(FiLM(self.widths[i - 1], embed_dim))
            self.dec.append(ResBlock3d(self.widths[i - 1] + int(self.prototype), self.widths[i - 1], coord))
        self.bottom_film = FiLM(self.widths[-1], embed_dim)
        self.head = nn.Conv3d(self.widths[0], 1, 1)

    @property
    def input_multiple(self) -> int:
        return self.stem_stride * 2 ** (len(self.widths) - 1)

    @property
    def code_dim(self) -> int:
        """Length of the conditioning code: the embedding, plus the prototypes when ``prototype``."""
        return self.embed_dim + (sum(self.widths[:-1]) if self.prototype else 0)

    def prompt_features(self, prompts: torch.Tensor) -> torch.Tensor:
        """``(P, 1, s, s, s)`` z-scored prompt sub-volumes -> ``(P, sum(widths[:-1]))`` prototypes.

        The sub-volume is zero-padded (zero = its mean) to the next multiple of :attr:`input_multiple`;
        a level's prototype is the mean feature over the central 2³ voxels of that level.
        """
        m = self.input_multiple
        size = prompts.shape[-1]
        total = -(-size // m) * m
        lo = (total - size) // 2
        x = F.pad(prompts, (lo, total - size - lo) * 3)
        feats = self.encode(x)
        protos = []
        for f in feats[:-1]:
            c = f.shape[-1] // 2
            protos.append(f[..., c - 1 : c + 1, c - 1 : c + 1, c - 1 : c + 1].mean(dim=(2, 3, 4)))
        return torch.cat(protos, dim=1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 1, D, H, W)`` -> feature maps of every level (top first)."""
        feats = []
        if self.stem is not None:
            raw, h = F.avg_pool3d(x, 2), F.leaky_relu(self.stem(x), 0.1)
        else:
            raw, h = x, x
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.avg_pool3d(h, 2)
                raw = F.avg_pool3d(raw, 2)
                h = torch.cat([h, raw], dim=1)
            h = block(h)
            feats.append(h)
        return feats

    def decode(self, feats: list[torch.Tensor], code: torch.Tensor) -> torch.Tensor:
        """Features of a batch and one code per window ``(B, code_dim)`` -> logits ``(B, 1, D, H, W)``."""
        z = code[:, : self.embed_dim]
        protos = None
        if self.prototype:
            protos = torch.split(code[:, self.embed_dim :], self.widths[:-1], dim=1)
        h = self.bottom_film(feats[-1], z)
        for k, (up, film, dec) in enumerate(zip(self.up, self.film, self.dec)):
            skip = feats[-2 - k]
            h = film(up(h) + skip, z)
            if protos is not None:
                proto = protos[-1 - k].to(skip.dtype)
                sim = F.cosine_similarity(skip, proto[:, :, None, None, None], dim=1, eps=1e-6)[:, None]
                h = torch.cat([h, sim.to(h.dtype)], dim=1)
            h = dec(h)
        out = self.head(h)
        if self.stem is not None:
            out = F.interpolate(out, scale_factor=self.stem_stride, mode="trilinear", align_corners=False)
        return out

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, P, D, H, W)`` for windows ``x`` and prompt codes ``z`` ``(P, code_dim)`` or
        ``(B, P, code_dim)`` (``code_dim`` = 32 without ``prototype``)."""
        m = self.input_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"window shape {tuple(x.shape[2:])} must be a multiple of {m}")
        if z.ndim == 2:
            z = z[None].expand(x.shape[0], -1, -1)
        feats = self.encode(x)
        z = z.to(feats[0].dtype)
        return torch.cat([self.decode(feats, z[:, p]) for p in range(z.shape[1])], dim=1)


class ProPicker(nn.Module):
    """Prompt encoder + promptable segmenter, saved and loaded as one checkpoint.

    ``model.embed(subvolumes)`` turns raw ``(P, 37, 37, 37)`` prompt sub-volumes into ``(P, code_dim)``
    conditioning codes (the 32-d encoder embedding, plus prototypes for a ``prototype`` segmenter);
    ``model.segmenter(windows, codes)`` gives logits ``(B, P, D, H, W)``.
    """

    def __init__(self, encoder: nn.Module, segmenter: PromptableUNet3d, name: str = "", config: dict | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.segmenter = segmenter
        self.name = name
        self.config = dict(config or {})
        self.meta: dict = {}

    def embed(self, subvolumes) -> torch.Tensor:
        """Raw ``(P, 37, 37, 37)`` sub-volumes -> ``(P, code_dim)`` codes (no gradient)."""
        z = self.encoder.embed(subvolumes)
        if not self.segmenter.prototype:
            return z
        with torch.no_grad():
            return torch.cat([z, self.prototypes(subvolumes)], dim=1)

    def prototypes(self, subvolumes) -> torch.Tensor:
        """The segmenter's prompt prototypes of raw sub-volumes (differentiable)."""
        from cryopick.models.prompt_encoder import zscore_windows

        x = torch.as_tensor(subvolumes, dtype=torch.float32)
        x = x.reshape(-1, 1, *x.shape[-3:]).to(next(self.segmenter.parameters()).device)
        return self.segmenter.prompt_features(zscore_windows(x))

    def combine(self, codes: torch.Tensor) -> torch.Tensor:
        """One code from several examples' codes ``(K, code_dim)``: the mean, embedding renormalised."""
        code = codes.mean(0)
        e = self.segmenter.embed_dim
        return torch.cat([F.normalize(code[:e], dim=0), code[e:]])

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.segmenter(x, z)

    def save(self, path: str | os.PathLike, meta: dict | None = None, half: bool = False) -> None:
        """Write a self-describing checkpoint atomically (``half``: store float16 weights)."""
        from cryopick.io.atomic import atomic_path

        state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in self.state_dict().items()}
        payload = {"format": CHECKPOINT_FORMAT, "name": self.name, "config": self.config,
                   "state_dict": state, "meta": dict(meta if meta is not None else self.meta)}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
            os.chmod(tmp, 0o644)  # readable like any package / data file (temp files start as 0600)


def _build(name: str, config: dict) -> ProPicker:
    if name == "propicker-paper":
        encoder = TomoTwinEncoder()
        widths = config.get("widths", (108, 216, 432, 864))
    else:
        encoder = SmallPromptEncoder(widths=config.get("encoder_widths", SMALL_ENCODER_WIDTHS))
        widths = config.get("widths", SMALL_WIDTHS)
    # CoordConv ties the network to one window size; the small model trains on smaller windows
    # than it infers on, so it goes without (translation equivariant).
    coord = config.get("coord", name == "propicker-paper")
    stem = config.get("stem", 1 if name == "propicker-paper" else 2)
    prototype = bool(config.get("prototype", False))
    segmenter = PromptableUNet3d(widths=widths, coord=coord, stem=stem, prototype=prototype)
    full = {"widths": list(widths), "coord": coord, "stem": stem, "prototype": prototype}
    if name != "propicker-paper":
        full["encoder_widths"] = list(config.get("encoder_widths", SMALL_ENCODER_WIDTHS))
    return ProPicker(encoder, segmenter, name=name, config=full)


def load_propicker(checkpoint: str | os.PathLike | None = None) -> ProPicker:
    """Load a ProPicker checkpoint written by :meth:`ProPicker.save` (``None``: the shipped weights)."""
    path = Path(checkpoint) if checkpoint else DEFAULT_WEIGHTS
    if not path.exists():
        raise CryopickError(f"{path}: no such ProPicker checkpoint" + (
            "; the package was installed without its default weights" if checkpoint is None else ""))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CryopickError(f"{path}: cannot load as a cryopick ProPicker checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CryopickError(f"{path}: not a cryopick ProPicker checkpoint (train one with `cryopick train3d`)")
    model = _build(payload["name"], payload["config"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    model.load_state_dict(state)
    model.meta = dict(payload.get("meta", {}))
    return model.eval()


@register_model("propicker-small", task="promptable3d", description="CPU-sized ProPicker (stride-2 stem, widths 16-32-64-64, small prompt encoder)")
def build_propicker_small(checkpoint: str | None = None, **config) -> ProPicker:
    return load_propicker(checkpoint) if checkpoint else _build("propicker-small", config)


@register_model("propicker-paper", task="promptable3d", description="paper-size ProPicker (widths 108-216-432-864, TomoTwin encoder)")
def build_propicker_paper(checkpoint: str | None = None, tomotwin: str | None = None, **config) -> ProPicker:
    """``checkpoint``: a cryopick ProPicker checkpoint; ``tomotwin``: a TomoTwin .pth for the encoder."""
    if checkpoint:
        return load_propicker(checkpoint)
    model = _build("propicker-paper", config)
    if tomotwin:
        load_tomotwin(tomotwin, model.encoder)
    return model
