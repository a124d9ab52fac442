"""Judge pickers the way the papers do.

- :mod:`~cryopick.evaluate.matching` — optimal one-to-one matching (any admissible-pair rule).
- :mod:`~cryopick.evaluate.metrics` — particle-level P/R/F1 per micrograph and pooled; rules
  ``radius`` (tolerance in particle radii), ``iou3d`` (box IoU > 0.6), ``czii`` (0.5 radius, F-β=4).
- :mod:`~cryopick.evaluate.pixel` — Dice / IoU / precision / recall of masks or disks.
- :mod:`~cryopick.evaluate.curves` — exact PR curves, AUPRC, best-case F1 and its threshold.
- :mod:`~cryopick.evaluate.stats` — Wilcoxon signed-rank, r = z/√N, Benjamini–Hochberg, recall success rate.
- :mod:`~cryopick.evaluate.report` — everything above for several methods, as Markdown + PNG + JSON.
"""
