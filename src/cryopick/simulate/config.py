"""What a simulated micrograph or tomogram is drawn with: :class:`MicrographSimulation`,
:class:`TomogramSimulation` (frozen, checked when made; see :mod:`cryopick.config`).

A field given as a ``(low, high)`` pair is drawn uniformly per image (from the image's seed); a single number
is used as is. Units are in the field names (``_A`` Å, ``_um`` µm, ``_kv`` kV, ``_mm`` mm); sizes of the
image are pixels (2D) or voxels (3D).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, Union

from cryopick.config import check, check_number, check_span, is_number, set_field

Span = Union[float, Tuple[float, float]]

#: Phase shift per Å of protein over ice at 300 kV: sigma (6.5e-4 rad/(V Å)) x ~2 V contrast.
PHASE_PER_A = 1.3e-3


def _span(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _check_shape(cfg, ndim: int, minimum: int, what: str, unit: str) -> None:
    shape = cfg.shape
    ok = isinstance(shape, (list, tuple)) and len(shape) == ndim
    ok = ok and all(is_number(s) and float(s).is_integer() and s >= minimum for s in shape)
    check(cfg, "shape", ok, f"{ndim} sizes >= {minimum} {unit}", what)
    set_field(cfg, "shape", tuple(int(s) for s in shape))


def _check_weights(cfg) -> None:
    w = cfg.class_weights
    if w is None:
        return
    ok = isinstance(w, (list, tuple)) and all(is_number(v) and v >= 0 for v in w) and sum(w) > 0
    check(cfg, "class_weights", ok, "None or non-negative numbers with a positive sum (one per class)")
    set_field(cfg, "class_weights", tuple(float(v) for v in w))


def _check_common(cfg) -> None:
    check_number(cfg, "n_particles", 0, integer=True)
    check_number(cfg, "crowding", 0, 1)
    check_number(cfg, "voltage_kv", 0, strict_lo=True)
    check_number(cfg, "cs_mm", 0)
    check_number(cfg, "amplitude_contrast", 0, 1)
    check_number(cfg, "bfactor", 0)
    check_number(cfg, "mask_threshold", 0, 1)
    check_number(cfg, "max_attempts_per_particle", 1, integer=True)
    _check_weights(cfg)


@dataclass(frozen=True)
class MicrographSimulation:
    """How :func:`~cryopick.simulate.micrograph.simulate_micrograph` draws a micrograph.

    ``shape`` ``(H, W)`` pixels; ``pixel_size`` Å/px; ``n_particles`` wanted (fewer when they do not fit: a
    :class:`~cryopick.simulate.placement.PlacementWarning` says how many); ``dose`` e⁻/Å² (shot noise);
    ``defocus_um`` mean defocus (positive = underfocus) and ``astigmatism_um`` the difference ``du - dv``
    (angle uniform); ``ice_thickness_A`` mean ice thickness and ``ice_gradient`` its relative linear change
    across the image (0.5 = ±25%); ``ice_noise`` scale of the ice's structural phase noise (0: no Thon rings
    from the ice); ``clutter_A`` standard deviation (Å of protein-equivalent thickness) of background clutter on
    10-40 Å scales (0: none); ``dqe`` detector quantum efficiency (noise of ``dose * dqe`` electrons);
    ``carbon_edge`` a curved edge of the support film's hole across the image (no particles on the carbon);
    ``ice_crystals``, ``aggregates`` numbers of those distractors; ``crowding`` probability in [0, 1] that a
    particle is placed touching an existing one; ``class_weights`` relative abundance per class (default
    equal); ``voltage_kv``, ``cs_mm``, ``amplitude_contrast``, ``bfactor`` (Å², CTF envelope) the optics;
    ``phase_per_A`` phase shift (rad) per Å of projected protein over ice; ``mask_threshold`` fraction of a
    particle's maximum projection that defines its mask; ``max_attempts_per_particle`` placement tries.
    """

    shape: tuple[int, int] = (1024, 1024)
    pixel_size: float = 2.0
    n_particles: int = 200
    dose: Span = 30.0
    defocus_um: Span = (1.0, 2.5)
    astigmatism_um: Span = (0.0, 0.1)
    ice_thickness_A: Span = (300.0, 600.0)
    ice_gradient: Span = (0.0, 0.5)
    ice_noise: float = 1.0
    clutter_A: float = 25.0
    dqe: float = 0.5
    carbon_edge: bool = False
    ice_crystals: int = 0
    aggregates: int = 0
    crowding: float = 0.3
    class_weights: Sequence[float] | None = None
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    bfactor: float = 60.0
    phase_per_A: float = PHASE_PER_A
    mask_threshold: float = 0.2
    max_attempts_per_particle: int = 100

    def __post_init__(self) -> None:
        _check_shape(self, 2, 16, "micrograph shape", "pixels")
        check_number(self, "pixel_size", 0, strict_lo=True)
        for name, lo, strict in (("dose", 0, True), ("defocus_um", 0, False), ("astigmatism_um", None, False),
                                 ("ice_thickness_A", 0, True), ("ice_gradient", 0, False)):
            check_span(self, name, lo, strict_lo=strict)
            set_field(self, name, _span(getattr(self, name)))
        check_number(self, "ice_noise", 0)
        check_number(self, "clutter_A", 0)
        check_number(self, "dqe", 0, 1, strict_lo=True)
        check(self, "carbon_edge", isinstance(self.carbon_edge, (bool, int)), "True or False")
        check_number(self, "ice_crystals", 0, integer=True)
        check_number(self, "aggregates", 0, integer=True)
        check_number(self, "phase_per_A", 0)
        _check_common(self)


@dataclass(frozen=True)
class TomogramSimulation:
    """How :func:`~cryopick.simulate.tomogram.simulate_tomogram` draws a tomogram.

    ``shape`` ``(D, H, W)`` voxels (D along the beam); ``voxel_size`` Å/voxel; ``n_particles`` wanted (fewer
    when they do not fit: a :class:`~cryopick.simulate.placement.PlacementWarning` says how many);
    ``tilt_range`` ``(min, max)`` tilt angles in degrees, tilt axis y (``(-90, 90)``: no missing wedge);
    ``snr`` signal-to-noise ratio (see :mod:`cryopick.simulate.tomogram`; ``inf``: no noise); ``defocus_um``
    defocus (positive = underfocus; 0 disables the CTF); ``membranes``, ``gold_beads`` numbers of vesicles
    and gold fiducials (distractors, never picks); ``crowding`` probability in [0, 1] that a particle is
    placed touching an already placed one; ``class_weights`` relative abundance per class (default equal);
    ``min_gap_A`` minimum surface-to-surface gap between particles' bounding spheres; ``mask_threshold``
    fraction of a particle's maximum density that defines its occupancy mask; ``ctf_correction``
    ``"phaseflip"`` (transfer ``-|CTF|``) or ``"none"`` (raw CTF); ``voltage_kv``, ``cs_mm``,
    ``amplitude_contrast``, ``bfactor`` (Å², CTF envelope) the optics; ``max_attempts_per_particle``
    placement tries; ``counts`` the exact number of particles of each class (replaces ``n_particles`` and
    ``class_weights``; fewer where they do not fit, with the shortfall warning).
    """

    shape: tuple[int, int, int] = (128, 256, 256)
    voxel_size: float = 10.0
    n_particles: int = 100
    tilt_range: tuple[float, float] = (-60.0, 60.0)
    snr: Span = 1.0
    defocus_um: Span = 4.0
    membranes: int = 2
    gold_beads: int = 5
    crowding: float = 0.3
    class_weights: Sequence[float] | None = None
    min_gap_A: float = 0.0
    mask_threshold: float = 0.25
    ctf_correction: str = "phaseflip"
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    bfactor: float = 100.0
    max_attempts_per_particle: int = 200
    counts: Sequence[int] | None = None

    def __post_init__(self) -> None:
        _check_shape(self, 3, 8, "tomogram shape", "voxels")
        if self.counts is not None:
            ok = (not isinstance(self.counts, (str, bytes)) and len(self.counts) > 0
                  and all(is_number(v) and float(v) >= 0 and float(v) == int(v) for v in self.counts))
            check(self, "counts", ok, "None or one whole number >= 0 per class")
            set_field(self, "counts", tuple(int(v) for v in self.counts))
        check_number(self, "voxel_size", 0, strict_lo=True)
        tilt = self.tilt_range
        ok = isinstance(tilt, (list, tuple)) and len(tilt) == 2 and all(is_number(t) and -90 <= t <= 90 for t in tilt)
        check(self, "tilt_range", ok, "two angles within -90 .. 90 degrees")
        set_field(self, "tilt_range", tuple(tilt))
        check_span(self, "snr", 0, finite=False)
        check_span(self, "defocus_um", 0)
        for name in ("snr", "defocus_um"):
            set_field(self, name, _span(getattr(self, name)))
        check_number(self, "membranes", 0, integer=True)
        check_number(self, "gold_beads", 0, integer=True)
        check_number(self, "min_gap_A", 0)
        check(self, "ctf_correction", self.ctf_correction in ("phaseflip", "none"), "'phaseflip' or 'none'")
        _check_common(self)
