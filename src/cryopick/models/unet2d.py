"""A compact 2D U-Net: the default CPU backbone of the 2D picker.

The network maps a robust-normalised micrograph at the working scale to per-pixel particle
logits of the same size (see the picker contract in :mod:`cryopick.models.registry`). With the
default 16 base channels and 3 poolings it has ~0.47 M parameters and a receptive field of about
70 working pixels, i.e. about 4 particle diameters at the default working scale (16 px per particle).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cryopick.models.registry import register_model
from cryopick.models.template_prior import TemplateCorrelation


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet2d(nn.Module):
    """U-Net with ``depth`` poolings; channel width doubles at each level.

    Parameters
    ----------
    base_channels
        Width of the first level.
    depth
        Number of 2x poolings; input height and width must be multiples of ``2**depth``.
    dropout
        Dropout probability in the bottleneck (regularises the few-shot regime).
    template_box, template_angles
        With ``template_box > 0`` the network also sees the template-matching response of the image
        (:class:`cryopick.models.template_prior.TemplateCorrelation`: a ``template_box``-pixel template in
        ``template_angles`` rotations, set from the user's particles before training) as a second input
        channel; ``0`` (default): the image alone.
    """

    def __init__(self, base_channels: int = 16, depth: int = 3, dropout: float = 0.1, template_box: int = 0,
                 template_angles: int = 24) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.config = {"base_channels": base_channels, "depth": depth, "dropout": dropout}
        self.prior = None
        if template_box:
            self.prior = TemplateCorrelation(int(template_box), int(template_angles))
            self.config.update(template_box=int(template_box), template_angles=int(template_angles))
        self.input_multiple = 2**depth
        self.down = nn.ModuleList([ConvBlock(1 if self.prior is None else 2, widths[0])])
        self.down.extend(ConvBlock(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.merge = nn.ModuleList(ConvBlock(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor, response: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, H, W)`` normalised image -> ``(B, 1, H, W)`` logits. With a template channel,
        ``response`` (``(B, 1, H, W)``) replaces its template-matching response (pretraining gives each
        sample its own micrograph's template)."""
        if self.prior is not None:
            x = torch.cat([x, (self.prior(x) if response is None else response).to(x.dtype)], dim=1)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = self.drop(skips.pop())
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


#: Weights of ``unet`` (default settings) pretrained on simulated micrographs at the working scale
#: (see ``weights/unet2d_pretrained.md``); few-shot training starts from them (``TrainConfig.init``).
PRETRAINED_2D = Path(__file__).resolve().parent.parent / "weights" / "unet2d_pretrained.pt"
#: The same for ``unet`` with the template-matching channel (``template_box > 0``), pretrained with each
#: corpus micrograph's own particle template; when absent such a model starts from :data:`PRETRAINED_2D`
#: with the template channel's weights at zero.
PRETRAINED_2D_TEMPLATE = PRETRAINED_2D.with_name("unet2d_pretrained_template.pt")
_FIRST = "down.0.0.weight"


def pretrained_path_2d(model: nn.Module) -> Path:
    """The shipped weights file for ``model``: the template-channel one when it has that channel and the file
    is there, else :data:`PRETRAINED_2D`."""
    if getattr(model, "prior", None) is not None and PRETRAINED_2D_TEMPLATE.is_file():
        return PRETRAINED_2D_TEMPLATE
    return PRETRAINED_2D


def weights_architecture_2d(weights: dict) -> dict:
    """``base_channels`` and ``depth`` of the ``UNet2d`` a state dict belongs to (read from its tensors)."""
    depth = sum(1 for k in weights if k.startswith("down.") and k.endswith(".0.weight") and k.count(".") == 3) - 1
    return {"base_channels": int(weights[_FIRST].shape[0]), "depth": depth}


def has_pretrained_2d(model: nn.Module, path: str | Path | None = None) -> bool:
    """Whether pretrained weights (default: the shipped file for ``model``) fit ``model``: the file is there
    and holds a ``UNet2d`` of the model's width and of its depth or shallower (a shallower network's weights
    start the levels the two share, :func:`grow_weights_2d`; dropout may differ, it holds no weights)."""
    path = Path(path or pretrained_path_2d(model))
    if not isinstance(model, UNet2d) or not path.is_file():
        return False
    config = getattr(model, "config", None) or {}
    try:
        weights = torch.load(path, map_location="cpu", weights_only=False)["model"]
        found = weights_architecture_2d(weights)
    except Exception:  # an unreadable file fits nothing; loading it reports why
        return False
    return config.get("base_channels") == found["base_channels"] and 0 < found["depth"] <= config.get("depth", 0)


def grow_weights_2d(weights: dict, depth: int) -> tuple[dict, int]:
    """Rename a ``UNet2d`` state dict for a network of the same width with ``depth`` poolings, ``depth`` at least
    the weights' own. Encoder levels keep their names; the decoder blocks (``up.k``, ``merge.k``, ordered from
    the deepest level) move down by the number of added levels, so each block keeps its resolution. The added
    encoder levels and their decoder blocks are absent and start from random. Returns the renamed weights and
    the number of added levels."""
    added = depth - weights_architecture_2d(weights)["depth"]
    if added < 0:
        raise ValueError(f"weights of depth {depth - added} do not fit a network of depth {depth}")
    grown = {}
    for key, value in weights.items():
        part = key.split(".")
        if part[0] in ("up", "merge"):
            part[1] = str(int(part[1]) + added)
        grown[".".join(part)] = value
    return grown, added


def load_weights_2d(model: nn.Module, weights: dict) -> int:
    """Load a ``UNet2d`` state dict into ``model`` in place. Weights of a network without the template channel
    fit one with it: that channel's first-layer weights start at zero (the network first computes what it did
    before) and its template is left as it is; the reverse drops the channel's weights and template. Weights of
    a shallower network of the same width start the levels the two share (:func:`grow_weights_2d`) and the added
    levels start from random, bridged (:func:`_bridge_added_levels`). Returns the number of added levels (0: every
    weight loaded)."""
    depth = model.config["depth"]
    weights, added = grow_weights_2d(dict(weights), depth)
    new = tuple(f"down.{depth - i}." for i in range(added)) + tuple(f"{block}.{i}." for block in ("up", "merge")
                                                                    for i in range(added))
    has_prior = getattr(model, "prior", None) is not None
    channels = weights[_FIRST].shape[1] if _FIRST in weights else None
    if has_prior and channels == 1:
        weights[_FIRST] = torch.cat([weights[_FIRST], torch.zeros_like(weights[_FIRST])], dim=1)
    elif not has_prior and channels == 2:
        weights[_FIRST] = weights[_FIRST][:, :1]
        weights = {k: v for k, v in weights.items() if not k.startswith("prior.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not k.startswith(("prior.", *new)) for k in missing):
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    if added:
        _bridge_added_levels(model, depth - added, added)
    return added


@torch.no_grad()
def _bridge_added_levels(model: UNet2d, old_depth: int, added: int) -> None:
    """Start a grown network computing about what the shallower one did: the old bottleneck's features pass
    through the decoder block that now merges them with the added level (a near-identity: centre taps on the
    skip half, batch norms set to undo each other with the features' expected mean and spread, which are read
    from the old bottleneck's last batch norm as a rectified normal), and the added level's up-convolution
    starts at zero so it joins in only as training moves it (its merge weights stay random, so it gets a
    gradient from the first step)."""
    merge, up = model.merge[added - 1], model.up[added - 1]
    bn = model.down[old_depth][4]
    gamma, beta = bn.weight.float().abs().clamp_min(1e-3), bn.bias.float()
    normal = torch.distributions.Normal(0.0, 1.0)
    a = beta / gamma
    cdf, pdf = normal.cdf(a), normal.log_prob(a).exp()
    mean = beta * cdf + gamma * pdf
    var = ((beta**2 + gamma**2) * cdf + beta * gamma * pdf - mean**2).clamp_min(1e-6)
    width = merge[0].out_channels
    for conv in (merge[0], merge[3]):
        conv.weight[:, :width].zero_()
        conv.weight[:, :width, 1, 1] = torch.eye(width)
    merge[1].weight.fill_(1.0)
    merge[1].bias.fill_(4.0)  # keeps the normalised features (>= -mean/spread) above the ReLU's cut
    merge[4].weight.copy_(var.sqrt())
    merge[4].bias.copy_(mean)
    up.weight.zero_()


def load_pretrained_2d(model: nn.Module, path: str | Path | None = None) -> dict:
    """Load the pretrained weights (float16 on disk; default :func:`pretrained_path_2d`) into ``model`` in
    place; returns their metadata (``file``, pretraining step and settings, validation F1 on simulated
    micrographs; ``added_levels`` when the network is deeper than the weights, see :func:`load_weights_2d`)."""
    path = Path(path or pretrained_path_2d(model))
    state = torch.load(path, map_location="cpu", weights_only=False)
    added = load_weights_2d(model, state["model"])
    meta = {k: v for k, v in (state.get("meta") or {}).items() if k != "pretrain_config"}
    return {"file": path.name, **meta, **({"added_levels": added} if added else {})}


def _load_checkpoint(model: nn.Module, checkpoint: str | None) -> nn.Module:
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        model.load_state_dict(state)
    return model


@register_model("unet", task="picker2d")
def build_unet(checkpoint: str | None = None, base_channels: int = 16, depth: int = 3,
               dropout: float = 0.1, template_box: int = 0, template_angles: int = 24) -> UNet2d:
    """Compact 2D U-Net (16 base channels, 3 levels, ~0.47 M parameters); CPU default."""
    return _load_checkpoint(UNet2d(base_channels, depth, dropout, template_box, template_angles), checkpoint)


@register_model("unet-small", task="picker2d")
def build_unet_small(checkpoint: str | None = None, base_channels: int = 8, depth: int = 3,
                     dropout: float = 0.1, template_box: int = 0, template_angles: int = 24) -> UNet2d:
    """Smaller 2D U-Net (8 base channels, ~0.12 M parameters) for quick runs and tests."""
    return _load_checkpoint(UNet2d(base_channels, depth, dropout, template_box, template_angles), checkpoint)
