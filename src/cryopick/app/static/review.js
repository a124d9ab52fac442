// cryopick app: the review's one visibility rule, for the micrograph page (app.js), the tomogram page
// (tomo.js) and the server (cryopick.app.review.visible, the same rule in Python). Both are checked
// against the cases of tests/data/review/visible.json.
//
// A pick is shown when its score is at least `threshold` (a pick without a score only at threshold 0)
// and no rejected pick lies within `near` of it (a quarter of the particle diameter on both pages);
// with a minimum distance, the best-scoring pick of any closer pair is kept (greedy by score, ties in
// the given order). Distances are Euclidean over the coordinates given (x, y or x, y, z).
// Returns the indices of the picks shown, in that order.
"use strict";

function reviewVisibleIndex(coords, scores, rejected, threshold, minDistance, near) {
  const dist = (a, b) => Math.hypot(...a.map((v, k) => v - b[k]));
  const passes = (s) => (s === null || s === undefined ? threshold <= 0 : s >= threshold);
  const idx = [];
  coords.forEach((c, i) => { if (passes(scores[i]) && !(rejected || []).some((r) => dist(c, r) <= near)) idx.push(i); });
  if (!(minDistance > 0)) return idx;
  const key = (i) => (scores[i] === null || scores[i] === undefined ? Infinity : -scores[i]);
  idx.sort((a, b) => key(a) - key(b) || a - b);
  const kept = [];
  for (const i of idx) if (!kept.some((k) => dist(coords[i], coords[k]) < minDistance)) kept.push(i);
  return kept;
}
// The picks shown (their coordinates), as reviewVisibleIndex.
function reviewVisible(coords, scores, rejected, threshold, minDistance, near) {
  return reviewVisibleIndex(coords, scores, rejected, threshold, minDistance, near).map((i) => coords[i]);
}
if (typeof module !== "undefined") module.exports = { reviewVisible, reviewVisibleIndex }; // node (the tests)
