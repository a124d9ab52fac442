"""Template-matching response as a network input: a protein-specific prior from the first training step.

:class:`TemplateCorrelation` holds a bank of in-plane rotations of one particle template (built from the
user's annotated particles at the working scale, see :func:`cryopick.picker2d.train.template.particle_template`)
and maps a normalised image ``(B, 1, H, W)`` to its normalised cross-correlation with the bank, maximum
over the rotations, ``(B, 1, H, W)`` in ``[-1, 1]`` (times ``gain``). The correlation is computed under
a disk mask inscribed in the ``box x box`` template, so it is invariant to the brightness and contrast
of the image and, up to the angular step, to in-plane rotation of the particle. The bank is a buffer:
it is saved with the weights and never trained.

A bank of zeros (no template set) gives a response of zeros: the network then sees only the image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Scale of the response fed to the network (peaks of a good match reach ~0.5 NCC; the image channel is
#: robust-normalised to unit spread).
DEFAULT_GAIN = 3.0
#: In-plane rotations of the template bank (15 degrees apart).
DEFAULT_ANGLES = 24


def rotated_bank(template: np.ndarray, n_angles: int) -> np.ndarray:
    """``(n_angles, box, box)`` copies of a ``(box, box)`` template rotated in-plane by ``k x 360 / n_angles``
    degrees (bilinear, about ``box // 2``), each zero-mean with unit norm under the disk mask and zero
    outside it (so a correlation with it is a normalised cross-correlation once divided by the local spread)."""
    from cryopick.postprocess.rotations import rotate_template, rotation_matrices, rotations_2d
    from cryopick.postprocess.template_matching import _default_template_mask  # the disk match_template uses

    template = np.asarray(template, np.float32)
    box = template.shape[0]
    if template.shape != (box, box) or box % 2 == 0:
        raise ValueError(f"template must be a square of odd side, got shape {template.shape}")
    mats = torch.as_tensor(rotation_matrices(rotations_2d(360.0 / n_angles), 2), dtype=torch.float32)
    bank = rotate_template(torch.as_tensor(template), mats).numpy()
    mask = _default_template_mask((box, box))
    n = mask.sum()
    bank = bank * mask
    bank -= (bank.sum(axis=(1, 2), keepdims=True) / n) * mask
    norm = np.sqrt((bank**2).sum(axis=(1, 2), keepdims=True))
    return np.where(norm > 1e-8, bank / np.maximum(norm, 1e-8), 0.0).astype(np.float32)


class TemplateCorrelation(nn.Module):
    """Normalised cross-correlation with a rotated template bank, maximum over the rotations.

    Parameters
    ----------
    box
        Template side in working pixels (odd).
    n_angles
        In-plane rotations in the bank (``360 / n_angles`` degrees apart).
    gain
        Factor applied to the NCC before it is returned.
    """

    def __init__(self, box: int, n_angles: int = DEFAULT_ANGLES, gain: float = DEFAULT_GAIN) -> None:
        super().__init__()
        if box < 3 or box % 2 == 0 or n_angles < 1:
            raise ValueError(f"template box must be odd and >= 3 and n_angles >= 1, got {box}, {n_angles}")
        from cryopick.postprocess.template_matching import _default_template_mask  # imported only when used

        self.box, self.n_angles, self.gain = int(box), int(n_angles), float(gain)
        mask = torch.as_tensor(_default_template_mask((box, box)))
        self.register_buffer("bank", torch.zeros(n_angles, 1, box, box))
        self.register_buffer("mean_kernel", (mask / mask.sum())[None, None])
        self.n_mask = float(mask.sum())

    @property
    def is_set(self) -> bool:
        """Whether a template was set (a bank of zeros gives a zero response)."""
        return bool(self.bank.abs().sum() > 0)

    def set_template(self, template: np.ndarray) -> None:
        """Fill the bank from a ``(box, box)`` template (in place)."""
        bank = rotated_bank(template, self.n_angles)
        if bank.shape[1:] != (self.box, self.box):
            raise ValueError(f"template of shape {np.shape(template)} does not fit box {self.box}")
        self.bank.copy_(torch.as_tensor(bank)[:, None])

    def forward(self, x: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, H, W)`` image -> ``(B, 1, H, W)`` gain x NCC (float32, zero padding at the edges), with
        the module's bank or another ``(n_angles, 1, box, box)`` one (:func:`rotated_bank`)."""
        bank = self.bank if bank is None else bank.to(self.bank)
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            pad = self.box // 2
            mean = F.conv2d(x, self.mean_kernel, padding=pad)
            square = F.conv2d(x * x, self.mean_kernel, padding=pad)
            spread = (square - mean * mean).clamp_min(1e-6).sqrt() * math.sqrt(self.n_mask)
            response = F.conv2d(x, bank, padding=pad).amax(dim=1, keepdim=True)
            return self.gain * (response / spread).clamp(-1.0, 1.0)
