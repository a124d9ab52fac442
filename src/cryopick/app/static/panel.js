// cryopick app: the side panel — suggestions, background jobs (train / pick) with live progress, model card.
// Loaded after app.js (shares its globals) and starts the page.
"use strict";

$("suggest").onclick = async () => {
  const r = await api("GET", "/api/suggestions");
  const ol = $("suggestions"); ol.innerHTML = "";
  if (!r.ok) { ol.textContent = r.data.error; return; }
  if (!r.data.suggestions.length) { ol.textContent = r.data.why; return; }
  for (const sug of r.data.suggestions) {
    const li = document.createElement("li");
    const a = document.createElement("a"); a.href = "#"; a.textContent = sug.name;
    a.onclick = (e) => { e.preventDefault(); openMicrograph(sug.name); };
    const why = document.createElement("div"); why.className = "dim"; why.textContent = sug.reason;
    li.append(a, why); ol.append(li);
  }
};

// ---- jobs -------------------------------------------------------------------------------------------
function num(id) { const v = $(id).value; return v === "" ? null : parseFloat(v); }
$("train").onclick = () => startJob("train", { epochs: num("epochs"), steps_per_epoch: num("steps"),
  max_minutes: num("max-minutes"), particles_per_micrograph: num("ppm") || null, patch_size: num("patch"),
  batch_size: num("batch") });
$("pick").onclick = () => {
  const which = $("pick-which").value;
  let names = null;
  if (which === "current") names = [S.current];
  else if (which === "unannotated") names = S.mics.filter((m) => !m.annotated && m.flag !== "empty").map((m) => m.name);
  startJob("pick", names ? { names } : {});
};
$("cancel").onclick = async () => { const r = await api("POST", "/api/jobs/cancel"); showJob(r.ok ? r.data : S.job); };

async function startJob(kind, params) {
  const job = await postJob(kind, params);
  if (job) { showJob(job); openStream(); }
}
function openStream() { followJob(S, showJob, finished); }
async function finished(job) {
  if (job.kind === "train" && job.card) showCard(job.card);
  if (job.kind === "train" && job.notes && job.notes.length) {
    $("job-state").textContent += ` · ${job.notes.length} note(s) from training: see Train`;
  }
  S.thresholdTouched = false;
  await loadList();
  if (S.current) openMicrograph(S.current);
}
function showJob(job) {
  S.job = job;
  const running = job.state === "running";
  $("cancel").hidden = !running;
  $("train").disabled = running; $("pick").disabled = running;
  if (job.state === "none") { $("job-state").textContent = "no job"; return; }
  let text = `${job.kind}: ${job.state}`;
  const prog = $("job-progress");
  if (job.kind === "train") {
    const h = job.history || [];
    const last = h[h.length - 1];
    if (last) text += ` · epoch ${last.epoch + 1} · loss ${last.loss.toFixed(3)}` +
      (last.f1 !== null && last.f1 !== undefined ? ` · validation F1 ${last.f1.toFixed(3)}` : "");
    prog.max = num("epochs") || 1; prog.value = h.length;
    drawCurve(h);
  } else {
    text += ` · ${job.done}/${job.total} micrographs`;
    prog.max = job.total || 1; prog.value = job.done || 0;
  }
  const res = job.result || {};
  if (job.kind === "train" && res.micrographs) {
    text += ` · trained on ${res.micrographs.length} micrograph(s), ${res.particles} particles` +
      (res.accepted ? ` (${res.accepted} accepted in review)` : "") + (res.negatives ? `, ${res.negatives} empty` : "");
  }
  if (job.message) text += ` — ${job.message}`;
  $("job-state").textContent = text;
  $("job-log").textContent = (job.log || []).join("\n");
}
function drawCurve(h) {
  const c = $("curve"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (h.length < 1) return;
  const maxLoss = Math.max(...h.map((e) => e.loss), 1e-6);
  const plot = (vals, color, top) => {
    g.strokeStyle = color; g.beginPath();
    vals.forEach((v, i) => { if (v === null || v === undefined) return;
      const x = h.length === 1 ? c.width / 2 : (i / (h.length - 1)) * (c.width - 4) + 2;
      const y = c.height - 2 - (v / top) * (c.height - 4); i ? g.lineTo(x, y) : g.moveTo(x, y);
      g.fillStyle = color; g.fillRect(x - 2, y - 2, 4, 4); });
    g.stroke();
  };
  g.font = "10px sans-serif"; g.fillStyle = "#c62828"; g.fillText("loss", 2, 10);
  g.fillStyle = "#2e7d32"; g.fillText("validation F1", 30, 10);
  plot(h.map((e) => e.loss), "#c62828", maxLoss);
  plot(h.map((e) => e.f1), "#2e7d32", 1);
}
// The card's notes (sparse annotation detected, validation F1 not measurable, default threshold used, ...):
// a visible notice under the card, so what training decided by itself is never only in a file.
function showNotes(notes) {
  const box = $("model-notes"); box.innerHTML = "";
  for (const n of notes || []) { const li = document.createElement("li"); li.textContent = n; box.append(li); }
  box.hidden = !box.children.length;
}
function showCard(card) {
  showNotes(card && card.notes);
  if (!card) { $("model-card").textContent = "no model yet"; return; }
  const t = card.training || {};
  $("model-card").textContent = `model: ${card.backbone}, threshold ${(+card.score_threshold).toFixed(3)}` +
    (t.best_val_f1 !== undefined && t.best_val_f1 !== null ? `, validation F1 ${(+t.best_val_f1).toFixed(3)}` : "") +
    (card.created ? ` (${card.created})` : "");
}

loadProject().then(loadList);
