"""The working frame of a tomogram: Fourier-cropped or binned to the prompt's working voxel size.

:class:`WorkingTomogram` is a :class:`cryopick.preprocess.WorkingFrame` (the one frame class of 2D and
3D) that also carries the working volume: ``to_working`` maps voxels of the tomogram as stored to
working voxels, ``to_original`` maps back (``x_stored = x_working / factor``, voxel centres).
:func:`check_tomogram` refuses tomograms a network cannot pick in (non-finite or constant voxels).

The working scale by itself: :class:`TrainedScale` is what a model was trained on (voxel sizes in Å and
particle diameters in voxels, from the weights' metadata); :func:`choose_voxel_size` picks the working
voxel size for a tomogram and particle, and :func:`check_particle_scale` warns about (or refuses) a
particle the network cannot see at the working scale, saying what to do.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.images import Image, read_tomogram
from cryopick.preprocess import WorkingFrame

log = logging.getLogger(__name__)

#: The smallest particle (working voxels) a 3D network can be asked for at all: below it the particle is
#: less than a voxel across after the network's own stride-2 stem.
MIN_VISIBLE_DIAMETER = 2.0


# -- the scale a model knows -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedScale:
    """Voxel sizes (Å, ``(lo, hi)``) and particle diameters (voxels at those sizes, ``(lo, hi)``) of a
    model's training tomograms (``meta["trained_voxel_size"]`` and ``meta["trained_diameter_voxels"]``)."""

    voxel_size: tuple[float, float]
    diameter: tuple[float, float]

    def describe(self) -> str:
        return (f"{self.voxel_size[0]:g}-{self.voxel_size[1]:g} Å/voxel, particles "
                f"{self.diameter[0]:g}-{self.diameter[1]:g} voxels across")


def choose_voxel_size(source: float, trained: TrainedScale, diameter_A: float | None = None) -> float:
    """The working voxel size (Å) for a tomogram at ``source`` Å/voxel.

    The tomogram's own voxel size when the model was trained at it; a finer tomogram is binned by the
    least whole factor that reaches the trained voxel sizes (2.5 and 5 Å/voxel both go to 10 Å, like
    the usual bin 4 and bin 2: the same particles are picked alike), or to the finest trained voxel size
    when no whole factor lands in the range. When the particle's diameter ``diameter_A`` is known, the
    voxel size then moves as little as puts the particle in the trained diameter range (its size in
    voxels matters more to the network than the voxel size). Never finer than ``source`` (no upsampling)."""
    lo, hi = trained.voxel_size
    if source >= lo:
        vs = source
    else:
        whole = math.ceil(lo / source - 1e-6) * source
        vs = whole if whole <= hi else lo
    if diameter_A is not None and diameter_A > 0:
        dlo, dhi = trained.diameter
        if diameter_A / vs > dhi:
            vs = diameter_A / dhi
        elif diameter_A / vs < dlo:
            vs = diameter_A / dlo
    return round(max(vs, source), 6)


def choose_binning(diameter_vox: float | None, trained: TrainedScale) -> float:
    """Binning of a tomogram without a voxel size in its header: 1, or the least that brings a particle
    of ``diameter_vox`` stored voxels into the trained diameter range."""
    if diameter_vox is None or diameter_vox <= trained.diameter[1]:
        return 1.0
    return diameter_vox / trained.diameter[1]


def check_particle_scale(diameter: float | None, voxel_size: float | None, trained: TrainedScale | None,
                         source: str, box: int | None = None, given: str = "") -> None:
    """Refuse a particle under :data:`MIN_VISIBLE_DIAMETER` working voxels; warn (once, naming ``source``
    and the fix) when it is outside the ``trained`` diameter range or larger than the prompt ``box``.

    ``diameter``: working voxels; ``voxel_size``: working Å/voxel (``None``: unknown); ``given``: how the
    user gave the diameter (e.g. ``"--diameter 12"``), quoted in the messages."""
    if diameter is None:
        return
    at = f"at the working voxel size {voxel_size:g} Å" if voxel_size else "at the working scale"
    size = f"{diameter:.1f} voxels {at}"
    what = f"particle diameter {given + ' = ' if given else ''}{size}"
    if diameter < MIN_VISIBLE_DIAMETER:
        hint = "; remake the prompt with the diameter in Å (--diameter) or in voxels of the tomogram (--diameter-vox)"
        if given.startswith("--diameter "):
            hint = f"; --diameter is in Å: if {given.split()[1]} is voxels, give --diameter-vox {given.split()[1]}"
        known = "" if trained is None else f", and was trained on {trained.diameter[0]:g}-{trained.diameter[1]:g}"
        raise CryopickError(f"{source}: {what} is too small for the network to see (it needs >= "
                            f"{MIN_VISIBLE_DIAMETER:g} voxels{known}){hint}")
    dlo, dhi = trained.diameter if trained is not None else (MIN_VISIBLE_DIAMETER, box or np.inf)
    if diameter > dhi or (box is not None and diameter > box):
        fit = f" >= {diameter * voxel_size / dhi:.1f} Å" if voxel_size else ""
        why = (f"larger than the prompt box ({box} voxels), which cuts it" if box is not None and diameter > box
               else f"larger than the particles the model was trained on ({dlo:g}-{dhi:g} voxels)")
        log.warning("%s: %s is %s; leave --voxel-size/--binning out (cryopick then works at a voxel size that "
                    "fits the particle) or give a coarser --voxel-size%s", source, what, why, fit)
    elif diameter < dlo:
        finer = f"<= {diameter * voxel_size / dlo:.1f} Å" if voxel_size else "finer"
        log.warning("%s: %s is smaller than the particles the model was trained on (%g-%g voxels), so it may be "
                    "missed; use a tomogram with a voxel size %s, or check the diameter (--diameter is in Å, "
                    "--diameter-vox in voxels of the tomogram as stored)", source, what, dlo, dhi, finer)


# -- tomograms at the working scale ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class WorkingTomogram(WorkingFrame):
    """A tomogram at the working voxel size.

    ``original_shape`` / ``working_shape``: ``(D, H, W)`` of the stored and the working tomogram;
    ``binning`` = working voxel size / stored voxel size; ``voxel_size`` and ``source_voxel_size``
    in Å (``None`` when the header has none).
    """

    volume: np.ndarray = field(default=None, repr=False)
    name: str = ""
    voxel_size: float | None = None
    source_voxel_size: float | None = None
    binning: float = 1.0


def working_tomogram(image: Image | str | os.PathLike, binning: float | None = None,
                     voxel_size: float | None = None, invert: bool = False) -> WorkingTomogram:
    """Bring a tomogram to the working scale: ``voxel_size`` (Å) when both sizes are known, else ``binning``.

    No resampling (the memory map is used as is) when the factor is 1 and ``invert`` is False.
    """
    from cryopick.preprocess import downsample

    image = image if isinstance(image, Image) else read_tomogram(image)
    src = image.pixel_size
    if voxel_size is not None and src is not None:
        factor = voxel_size / src
    else:
        factor = binning or 1.0
    if factor < 0.99:
        if voxel_size is not None and src is not None:
            raise CryopickError(
                f"{image.path}: voxel size {src:g} Å is coarser than the prompt's working voxel size "
                f"{voxel_size:g} Å; remake the prompt with --voxel-size {src:g} (or coarser)")
        raise CryopickError(f"{image.path}: binning {factor:g} would upsample the tomogram; give a binning >= 1")
    if abs(factor - 1.0) < 0.01:
        vol = image.data
        factor = 1.0
    else:
        vol, _ = downsample(np.asarray(image.data, dtype=np.float32), factor)
    if invert:
        vol = -np.asarray(vol, dtype=np.float32)
    work_vs = None if src is None else src * factor
    return WorkingTomogram(tuple(int(s) for s in image.data.shape), tuple(int(s) for s in vol.shape), vol,
                           image.name, work_vs, src, float(factor))


def check_tomogram(image: Image, slab: int = 16) -> None:
    """Raise a :class:`CryopickError` naming the file when ``image`` holds NaN or infinite voxels or
    is constant (an empty or failed reconstruction: nothing could be picked in it).

    Reads the (memory-mapped) volume ``slab`` sections at a time, so memory stays bounded.
    """
    data = image.data
    lo, hi, bad = np.inf, -np.inf, 0
    for z in range(0, data.shape[0], slab):
        block = np.asarray(data[z : z + slab], dtype=np.float32)
        finite = np.isfinite(block)
        if not finite.all():
            bad += int(block.size - finite.sum())
            block = block[finite]
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if bad:
        raise CryopickError(f"{image.path}: {bad} of {data.size} voxels are NaN or infinite; "
                            "reconstruct the tomogram again (or fill those voxels) before picking")
    if not hi > lo:
        raise CryopickError(f"{image.path}: every voxel has the same value ({lo:g}); "
                            "an empty or failed reconstruction holds nothing to pick")
