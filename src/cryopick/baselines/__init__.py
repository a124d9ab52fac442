"""Training-free baseline pickers shipped with cryopick, so comparisons need no other install.

- :mod:`~cryopick.baselines.dog` — Difference-of-Gaussians blob picker (DoG Picker style).
- :mod:`~cryopick.baselines.template2d` — classic template matching (RELION / EMAN2 / Scipion style):
  aligned class averages of annotated particles, FFT NCC over rotations, peaks with a minimum distance.
- :mod:`~cryopick.baselines.pipeline` — resumable picking of many micrographs, threshold calibration.
"""
