"""Which micrograph to annotate next: uncertainty of the current model, and diversity.

From the last pick run's records (``picks/.cryopick/<name>.json``: every candidate's score), for each
micrograph not annotated yet (nor marked empty):

- **uncertainty**: the mass of candidate scores near the calibrated threshold ``t``: the sum over
  candidates of ``max(0, 1 - |s - t| / band)`` (a triangle of half-width ``band``), i.e. how many
  particles the model is unsure about there;
- **diversity**: how unlike the micrographs already annotated (and those suggested before it) its
  score profile is: the smallest L1 distance between normalised 10-bin histograms of candidate
  scores (0: same profile, 2: disjoint).

Micrographs are chosen greedily by ``uncertainty x (0.5 + diversity)``, so a second suggestion does
not repeat the first. Each suggestion says why. Measured against random choice on simulated
micrographs with atypical ones in the pool (``benchmarks/active_learning.md``): higher held-out F1
than the average random order at every number annotated, 95% of the whole-pool F1 with 3 micrographs
(random orders 2 to more than 5, mean 3.5), no better than the luckier random orders: a heuristic with
a modest, measured gain on one simulated data set.
"""

from __future__ import annotations

import numpy as np

BAND = 0.2
BINS = np.linspace(0.0, 1.0, 11)


def _profile(scores: np.ndarray) -> np.ndarray:
    hist = np.histogram(np.clip(scores, 0, 1), bins=BINS)[0].astype(float)
    return hist / hist.sum() if hist.sum() else hist


def rank(records: dict[str, list[float]], threshold: float, annotated: set[str], excluded: set[str] = frozenset(),
         top: int = 5, band: float = BAND) -> list[dict]:
    """Suggestions, best first: ``{"name", "score", "uncertain", "diversity", "reason"}``.

    ``records`` maps every picked micrograph to its candidate scores; ``annotated`` ones are the
    reference for diversity; ``excluded`` ones (annotated or marked empty) are never suggested.
    """
    profiles = {n: _profile(np.asarray(s, float)) for n, s in records.items()}
    chosen = [profiles[n] for n in annotated if n in profiles]
    pool = []
    for name, scores in records.items():
        if name in excluded or name in annotated:
            continue
        s = np.asarray(scores, float)
        s = s[np.isfinite(s)]
        near = np.clip(1 - np.abs(s - threshold) / band, 0, None)
        pool.append((name, float(near.sum()), int((near > 0).sum())))
    out = []
    while pool and len(out) < top:
        best = None
        for name, mass, n_near in pool:
            div = min((float(np.abs(profiles[name] - c).sum()) for c in chosen), default=1.0)
            value = mass * (0.5 + div)
            if best is None or value > best[0]:
                best = (value, name, mass, n_near, div)
        value, name, mass, n_near, div = best
        pool = [p for p in pool if p[0] != name]
        chosen.append(profiles[name])
        out.append({"name": name, "score": round(value, 3), "uncertain": round(mass, 2), "diversity": round(div, 3),
                    "reason": f"{n_near} candidate(s) scored within {band:g} of the threshold {threshold:.2f} "
                              f"(uncertainty {mass:.1f}); score profile "
                              + ("unlike the annotated micrographs" if div >= 0.5 else
                                 "close to the annotated ones" if div < 0.2 else "partly like the annotated ones")
                              + f" (distance {div:.2f})"})
    return out
