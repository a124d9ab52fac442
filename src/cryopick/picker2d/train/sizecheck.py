"""Does the given particle diameter fit the annotated particles? (issue 27 item 2)

A diameter off by a unit or a binning factor (``--diameter 108`` on micrographs binned 4x, where the
particles are 27 px) trains without complaint and picks badly. Two checks, each a warning with the likely
value (:func:`check_diameter`):

- the ``Diameter`` column of the coordinate files (CryoPPP, crYOLO ``.cbox``, STAR ``_rlnDiameter`` ...),
  when it states one;
- the particles themselves (:func:`estimate_diameter`): the average of boxes around the annotated centres at
  the working scale and its radial profile. A particle in a micrograph is a disc of one contrast ringed by
  a halo of the other (defocus fringes, or the ice the particle displaces), and on crowded micrographs by
  the shell of its neighbours. The profile bounds the size from both sides: the strongest ring ends
  inside the particle's edge or at it (*smallest*), and the outermost ring deviating from the background
  by at least ``settle`` (15 %) of the largest deviation lies at the edge or beyond it (*largest*). The
  diameter is said to be wrong only outside those bounds (by ``RATIO``). On the real training sets with
  the diameters of their coordinate files: EMPIAR-10017 (108 px) 60-115 px, EMPIAR-10059 (36 px, crowded)
  25-44 px, EMPIAR-10146 (61 px, raw, strong fringes) 75-217 px: no warning; the outermost ring alone
  (the rule before) said "about 217 px" for the correct 61. Given 4x too large (10017) or 4x too small
  (10017, 10059) is warned about; 2-4x on raw apoferritin without a Diameter column may go unsaid (its
  fringes make the upper bound loose). On the bundled EMPIAR-10017 example (labelled 27 px) the largest
  bound is 27-34 px whatever diameter was given between 8 and 108 px.

The warning fires beyond ``RATIO`` (1.5x) either way (``RATIO_FEW``, 2.5x, from fewer than 50 particles).
The boxes reach ``BOX_RADII`` given radii from the centre (pixels outside the micrograph are left out of the average); a profile that never settles inside
them (noise, or a diameter given more than ~5x too small) gives no estimate and no warning.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from cryopick.picker2d.train.data import TrainingMicrograph

log = logging.getLogger(__name__)

#: Given and estimated diameters further apart than this factor get a warning; from fewer than
#: ``FEW_PARTICLES`` annotated particles the profile is noisier (5 clicks on each of 3 simulated raw
#: micrographs gave 82 px for 50 px particles), so only a factor beyond ``RATIO_FEW`` is said.
RATIO = 1.5
RATIO_FEW = 2.5
FEW_PARTICLES = 50
#: Box half-side in given particle radii; the outer quarter of it is the background.
BOX_RADII = 8.0
MIN_PARTICLES = 3


def radial_profile(mics: list[TrainingMicrograph], half: int, max_particles: int = 2000) -> tuple[np.ndarray, int]:
    """Radial profile (1-pixel rings, ``0 .. half``) of the average ``(2 half + 1)``-pixel box around the
    annotated centres of ``mics`` (working pixels), and how many particles went into it."""
    box = 2 * half + 1
    total, count, n = np.zeros((box, box)), np.zeros((box, box)), 0
    for m in mics:
        if m.negative or m.unlabelled or not len(m.coords):
            continue
        padded = np.pad(m.image.astype(np.float64), half, constant_values=np.nan)
        height, width = m.image.shape
        for x, y in m.coords[: max(0, max_particles - n)]:
            if not (-1 < x < width and -1 < y < height):
                continue  # a centre outside the image: nothing of it to average
            # a centre in the last half pixel rounds to the image's size: it is in the edge pixel
            cx, cy = min(max(int(round(x)), 0), width - 1) + half, min(max(int(round(y)), 0), height - 1) + half
            cut = padded[cy - half: cy + half + 1, cx - half: cx + half + 1]
            ok = np.isfinite(cut)
            total[ok] += cut[ok]
            count[ok] += 1
            n += 1
    mean = total / np.maximum(count, 1)
    yy, xx = np.mgrid[:box, :box] - half
    ring = np.round(np.hypot(xx, yy)).astype(int).ravel()
    weights = (count > 0).ravel().astype(float)
    sums = np.bincount(ring, mean.ravel() * weights)
    norm = np.bincount(ring, weights)
    return (sums / np.maximum(norm, 1))[: half + 1], n


def estimate_diameter(mics: list[TrainingMicrograph], working_diameter: float,
                      settle: float = 0.15) -> tuple[tuple[float, float] | None, bool]:
    """``((smallest, largest) plausible diameter in working pixels, unsettled)`` of the annotated particles
    from their average's radial profile (module docstring).

    *largest*: twice the outermost radius whose deviation from the background is at least ``settle`` of the
    largest deviation (the particle with its halo; defocus fringes of raw micrographs and the shell of
    neighbours in crowded ones reach further, so this only bounds the size from above). *smallest*: twice
    the radius where the strongest ring of the profile (the lobe holding its largest deviation) ends, by
    falling below ``settle`` or changing sign (the particle without its fringes bounds it from below).
    ``(None, False)`` with fewer than :data:`MIN_PARTICLES` particles or a profile within noise;
    ``(None, True)`` when it never settles inside the box (too noisy to tell)."""
    half = max(8, int(math.ceil(BOX_RADII * 0.5 * working_diameter)))
    profile, n = radial_profile(mics, half)
    if n < MIN_PARTICLES:
        return None, False
    outer = int(0.75 * half)
    background = float(np.median(profile[outer:]))
    signed = profile[:outer] - background
    deviation = np.abs(signed)
    amplitude = float(deviation.max())
    noise = float(np.std(profile[outer:]))
    if not amplitude > 3 * noise or amplitude == 0:
        return None, False
    rel = deviation / amplitude
    above = np.flatnonzero(rel >= settle)
    last = int(above[-1])  # the outermost ring still part of the particle
    if last >= outer - 2:  # never settles: noise, or a particle beyond the box; nothing to say
        return None, True
    largest = _crossing(rel, last, settle)
    peak = int(np.argmax(deviation))
    lobe = np.sign(signed[peak]) * signed / amplitude  # the strongest ring's sign is positive
    end = peak
    while end + 1 < outer and lobe[end + 1] >= settle:
        end += 1
    smallest = _crossing(lobe, end, settle) if end + 1 < outer else float(end)
    return (2.0 * min(smallest, largest), 2.0 * largest), False


def _crossing(values: np.ndarray, i: int, level: float) -> float:
    """Where ``values`` falls through ``level`` between rings ``i`` (at or above it) and ``i + 1``, interpolated."""
    return i + (values[i] - level) / max(values[i] - values[i + 1], 1e-9)


def check_diameter(mics: list[TrainingMicrograph], working_diameter: float, factor: float,
                   diameter_px: float, column: float | None = None, source: str = "the coordinate file",
                   given: str | None = None) -> list[str]:
    """Warnings (logged and returned) when ``diameter_px`` (original pixels) is more than :data:`RATIO` off
    the coordinate files' ``Diameter`` (``column``, original pixels) or the particles' own size.
    ``given``: how the user wrote it (e.g. ``"--diameter 190 A"``)."""
    given = given or f"--diameter {diameter_px:g}"
    said = []
    if column is not None and math.isfinite(column) and column > 0 and not 1 / RATIO <= column / diameter_px <= RATIO:
        said.append(f"{given} ({diameter_px:.0f} px) does not match the Diameter column of {source}: "
                    f"{column:g} px; check the value and its unit (--diameter-unit), or the coordinates' pixel size")
    estimate, _ = estimate_diameter(mics, working_diameter)
    n = sum(len(m.coords) for m in mics if not m.negative and not m.unlabelled)
    limit = RATIO if n >= FEW_PARTICLES else RATIO_FEW
    if estimate is not None:  # said only when the diameter is outside what the profile allows, either way
        smallest, largest = estimate[0] * factor, estimate[1] * factor
        wrong = "small" if diameter_px * limit < smallest else "large" if diameter_px > largest * limit else None
        if wrong:
            likely = f"about {smallest if wrong == 'small' else largest:.0f}"
            said.append(f"{given} ({diameter_px:.0f} px) looks too {wrong}: the "
                        f"annotated particles are {likely} px across (radial profile of their average); check "
                        "the value and its unit (--diameter-unit)")
    for text in said:
        log.warning(text)
    return said


def column_diameter(picks) -> float | None:
    """The median ``diameter`` of a coordinate table (original pixels), or ``None`` when it states none."""
    values = np.asarray(picks.table["diameter"], float) if "diameter" in picks.table else np.zeros(0)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.median(values)) if len(values) else None
