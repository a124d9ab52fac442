// Score histogram shared by the micrograph review (app.js) and the tomogram review (tomo.js):
// 40 bins over scores 0..1 drawn into `canvas` (6 px per bin), then a vertical line for each
// [score, colour] in `lines` (lines whose score is null or undefined are skipped).
function drawScoreHistogram(canvas, scores, lines) {
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const kept = scores.filter((s) => s !== null);
  if (!kept.length) return;
  const bins = new Array(40).fill(0);
  for (const s of kept) bins[Math.min(39, Math.floor(s * 40))]++;
  const top = Math.max(...bins);
  g.fillStyle = "#789";
  bins.forEach((b, i) => { const bh = (b / top) * (canvas.height - 4); g.fillRect(i * 6, canvas.height - bh, 5, bh); });
  for (const [t, color] of lines) {
    if (t === null || t === undefined) continue;
    g.strokeStyle = color; g.beginPath(); g.moveTo(t * 240, 0); g.lineTo(t * 240, canvas.height); g.stroke();
  }
}
