// cryopick app, tomograms: slice viewer, clicked prompts per class, pick3d in the background, review.
"use strict";
// Loaded after common.js ($, api, postJob, followJob) and review.js (reviewVisible: the review's one rule).
// The page's state (tomogram, slice, view, slab, class, diameter, each class's threshold) is kept in the
// project (PUT /api/tomograms-page, PROJECT/app.json) and restored on load: the server reads the thresholds
// too, and an accept sends the picks shown, which the server checks against what it would write.

const COLORS = ["#00e5ff", "#ff4081", "#76ff03", "#ffea00", "#e040fb", "#ff9100"];
const DEFAULT_DIAMETER_VOX = 16;
const T = { tomos: [], current: null, shape: null, img: null, prompts: {}, picks: {}, stream: null, thresholds: {},
  page: null, diam: { value: null, unit: "A" }, restoring: null, pendingState: {}, stateTimer: null };
window.cryotomo = T;

const say = (t) => { $("state").textContent = t; };

// ---- the page's state, kept in the project --------------------------------------------------------
function saveState(changes) {
  for (const [k, v] of Object.entries(changes)) {
    T.pendingState[k] = k === "thresholds" ? { ...(T.pendingState.thresholds || {}), ...v } : v;
  }
  clearTimeout(T.stateTimer);
  T.stateTimer = setTimeout(flushState, 250);
}
async function flushState() {
  const body = T.pendingState; T.pendingState = {};
  if (!Object.keys(body).length) return;
  const r = await api("PUT", "/api/tomograms-page", body);
  if (!r.ok) say("page state not saved: " + r.data.error); else T.page = r.data;
}
// leaving the page (reload, close) within the debounce: send what is pending, surviving the unload
window.addEventListener("pagehide", () => {
  if (!Object.keys(T.pendingState).length) return;
  clearTimeout(T.stateTimer);
  fetch("/api/tomograms-page", { method: "PUT", keepalive: true, headers: { "Content-Type": "application/json" },
    body: JSON.stringify(T.pendingState) });
  T.pendingState = {};
});
function restore(page) {
  T.page = page;
  $("axis").value = page.axis || "z";
  $("slab").value = page.slab || 0;
  const classes = Object.keys(T.prompts);
  $("label").value = page.label || classes[0] || "particle"; // never a new class behind the user's back
  T.thresholds = { ...(page.thresholds || {}) };
  T.diam = { value: page.diameter, unit: page.unit || "A" };
  T.restoring = page;
}

// ---- the diameter: Å when the tomogram's voxel size is known, else (or by choice) voxels -----------
const voxelSize = () => { const t = T.tomos.find((t) => t.name === T.current); return t && t.voxel_size; };
function diameterVox() {
  const d = T.diam.value, vs = voxelSize();
  if (d === null || d === undefined) return DEFAULT_DIAMETER_VOX;
  if (T.diam.unit === "A") return vs ? d / vs : DEFAULT_DIAMETER_VOX;
  return d;
}
function showDiameter() {
  const vs = voxelSize(), inA = T.diam.unit === "A" && vs, dv = diameterVox();
  $("diameter-unit").disabled = !vs;
  $("diameter-unit").value = inA ? "A" : "vox";
  $("diameter").value = inA ? +(dv * vs).toFixed(1) : +dv.toFixed(2);
  $("diameter-note").textContent = !vs ? "(no voxel size in the header)" : inA ? `= ${dv.toFixed(1)} vox at ${vs.toFixed(2)} Å/vox`
    : `= ${(dv * vs).toFixed(0)} Å at ${vs.toFixed(2)} Å/vox`;
}
$("diameter").onchange = () => {
  const v = parseFloat($("diameter").value);
  if (!(v > 0)) { say("the diameter must be a number > 0"); showDiameter(); return; }
  T.diam = { value: v, unit: $("diameter-unit").value === "A" && voxelSize() ? "A" : "vox" };
  saveState({ diameter: T.diam.value, unit: T.diam.unit }); showDiameter(); draw();
};
$("diameter-unit").onchange = () => {
  const dv = diameterVox(), vs = voxelSize(), unit = $("diameter-unit").value;
  T.diam = unit === "A" && vs ? { value: +(dv * vs).toFixed(2), unit: "A" } : { value: +dv.toFixed(2), unit: "vox" };
  saveState({ diameter: T.diam.value, unit: T.diam.unit }); showDiameter(); draw();
};

async function loadList() {
  const r = await api("GET", "/api/tomograms");
  if (!r.ok) { say(r.data.error); return; }
  T.tomos = r.data.tomograms; T.prompts = r.data.prompts;
  if (!T.page) restore(r.data.page);
  const ul = $("tomo-list"); ul.innerHTML = "";
  for (const t of T.tomos) {
    const li = document.createElement("li"); li.dataset.name = t.name;
    if (t.error) { li.textContent = `${t.name}: ${t.error}`; li.className = "dim"; ul.append(li); continue; }
    const counts = Object.entries(t.picked || {}).map(([l, n]) => {
      const r = (t.reviewed || {})[l];
      return ` · ${l}: ${n} picked` + (r ? `, ${r.accepted} accepted, ${r.rejected} rejected` : ", to review");
    }).join("");
    li.textContent = `${t.name} (${t.shape[2]}×${t.shape[1]}×${t.shape[0]})${counts}`;
    li.className = t.name === T.current ? "current" : "";
    li.onclick = () => openTomo(t.name); ul.append(li);
  }
  T.tomos = T.tomos.filter((t) => !t.error);
  $("totals").textContent = T.tomos.length ? `${T.tomos.length} tomograms` : "no tomograms yet: put MRC files in PROJECT/tomograms/";
  showPrompts();
  if (!T.current && T.tomos.length) {
    const saved = T.restoring && T.tomos.find((t) => t.name === T.restoring.tomogram);
    openTomo(saved ? saved.name : T.tomos[0].name, saved ? T.restoring.index : null);
  }
}

async function openTomo(name, index = null) {
  T.current = name; T.shape = T.tomos.find((t) => t.name === name).shape;
  $("tomo-name").textContent = name;
  for (const li of $("tomo-list").children) li.className = li.dataset.name === name ? "current" : "";
  showDiameter();
  setAxis(index);
  await loadPicks();
}

const axisIndex = () => ({ z: 0, y: 1, x: 2 })[$("axis").value];
function setAxis(index = null) {
  const n = T.shape[axisIndex()];
  $("index").max = n - 1;
  $("index").value = index !== null && index !== undefined && index >= 0 && index < n ? index : Math.floor(n / 2);
  loadSlice();
}
// image columns/rows of the current view, as voxel axes (numpy order z, y, x = 0, 1, 2)
function viewAxes() { return { z: [2, 1], y: [2, 0], x: [1, 0] }[$("axis").value]; }

function loadSlice() {
  $("index-value").textContent = $("index").value;
  if (T.current) saveState({ tomogram: T.current, axis: $("axis").value, index: +$("index").value, slab: +$("slab").value || 0 });
  const img = new Image();
  img.onload = () => { T.img = img; draw(); };
  img.src = `/api/tomograms/${encodeURIComponent(T.current)}/slice?axis=${$("axis").value}` +
    `&index=${$("index").value}&slab=${$("slab").value || 0}`;
}

const canvas = $("canvas"), ctx = canvas.getContext("2d");
function geometry() {
  const [c, r] = viewAxes();
  const cols = T.shape[c], rows = T.shape[r];
  const zoom = Math.min(canvas.clientWidth / cols, canvas.clientHeight / rows);
  return { c, r, zoom, ox: (canvas.clientWidth - cols * zoom) / 2, oy: (canvas.clientHeight - rows * zoom) / 2 };
}
// a voxel [x, y, z] -> screen position and its distance from the shown slice
function project(xyz) {
  const g = geometry(), v = [xyz[2], xyz[1], xyz[0]]; // z, y, x
  return [g.ox + (v[g.c] + 0.5) * g.zoom, g.oy + (v[g.r] + 0.5) * g.zoom, v[axisIndex()] - +$("index").value];
}
function unproject(sx, sy) {
  const g = geometry(), v = [0, 0, 0];
  v[g.c] = (sx - g.ox) / g.zoom - 0.5; v[g.r] = (sy - g.oy) / g.zoom - 0.5; v[axisIndex()] = +$("index").value;
  return [v[2], v[1], v[0]].map((a) => Math.round(a * 10) / 10); // x, y, z
}

const near3 = (a, b, r) => Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]) <= r;
// Each class has its own threshold (the slider shows the class chosen under Review); the picks shown follow
// the review's one rule (review.js), rejections matched within a quarter diameter as on micrographs.
const thresholdOf = (label) => T.thresholds[label] ?? 0;
function visible(label) {
  const p = T.picks[label];
  if (!p) return [];
  return reviewVisible(p.coords, p.scores, p.rejected || [], thresholdOf(label), 0, diameterVox() / 4);
}
// Slices (along the current view's axis) that hold the centre of a shown pick or of a prompt example.
function slicesWithPicks() {
  const a = axisIndex(), out = new Set();
  const add = (xyz) => out.add(Math.round([xyz[2], xyz[1], xyz[0]][a]));
  for (const label of Object.keys(T.picks)) visible(label).forEach(add);
  for (const e of Object.values(T.prompts)) if (e.tomogram === T.current) e.positions.forEach(add);
  return [...out].sort((x, y) => x - y);
}
function jumpToPicks(direction) {
  const i = +$("index").value, slices = slicesWithPicks();
  const to = direction > 0 ? slices.find((s) => s > i) : slices.filter((s) => s < i).pop();
  if (to === undefined) { say(`no ${direction > 0 ? "later" : "earlier"} slice with picks`); return; }
  $("index").value = to; loadSlice();
}
$("next-picks").onclick = () => jumpToPicks(1);
$("prev-picks").onclick = () => jumpToPicks(-1);
function draw() {
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.fillStyle = "#111"; ctx.fillRect(0, 0, w, h);
  if (!T.img || !T.shape) return;
  const g = geometry(), [c, r] = viewAxes();
  ctx.drawImage(T.img, g.ox, g.oy, T.shape[c] * g.zoom, T.shape[r] * g.zoom);
  const R = diameterVox() / 2;
  Object.keys(T.picks).forEach((label, k) => {
    ctx.strokeStyle = COLORS[k % COLORS.length]; ctx.lineWidth = 1.5; ctx.setLineDash([4, 3]);
    for (const xyz of visible(label)) {
      const [sx, sy, d] = project(xyz);
      if (Math.abs(d) >= R) continue; // the sphere's section in this slice
      ctx.beginPath(); ctx.arc(sx, sy, Math.max(2, Math.sqrt(R * R - d * d) * g.zoom), 0, 2 * Math.PI); ctx.stroke();
    }
    ctx.setLineDash([]);
    ctx.strokeStyle = "#e53935"; ctx.lineWidth = 2;  // rejected in review
    for (const xyz of T.picks[label].rejected || []) {
      const [sx, sy, d] = project(xyz);
      if (Math.abs(d) >= R) continue;
      ctx.beginPath(); ctx.moveTo(sx - 6, sy - 6); ctx.lineTo(sx + 6, sy + 6); ctx.moveTo(sx + 6, sy - 6);
      ctx.lineTo(sx - 6, sy + 6); ctx.stroke();
    }
  });
  Object.entries(T.prompts).forEach(([label, e], k) => {
    if (e.tomogram !== T.current) return;
    ctx.strokeStyle = COLORS[k % COLORS.length]; ctx.lineWidth = 2.5;
    for (const xyz of e.positions) {
      const [sx, sy, d] = project(xyz);
      if (Math.abs(d) > Math.max(R, 2)) continue;
      ctx.beginPath(); ctx.moveTo(sx - 8, sy); ctx.lineTo(sx + 8, sy); ctx.moveTo(sx, sy - 8); ctx.lineTo(sx, sy + 8); ctx.stroke();
    }
  });
  counts();
}
function counts() {
  $("threshold-value").textContent = (+$("threshold").value).toFixed(2);
  const labels = Object.keys(T.picks);
  $("pick-count").textContent = labels.length ? labels.map((l) => `${visible(l).length} ${l} picks ≥ ` +
    `${thresholdOf(l).toFixed(2)}`).join(" · ") : "no picks";
  const slices = slicesWithPicks(), here = slices.includes(+$("index").value);
  $("pick-slices").textContent = slices.length ? `${slices.length} slice(s) with picks${here ? " (this one too)" : ""}` : "";
  drawHistogram();
}
function drawHistogram() {
  const p = T.picks[$("review-class").value];
  drawScoreHistogram($("histogram"), p ? p.scores : [], [[+$("threshold").value, "#ff6f00"]]);
}
function showClasses() {
  const sel = $("review-class"), labels = Object.keys(T.picks);
  const was = sel.value || (T.page && T.page.review_class);
  sel.innerHTML = "";
  for (const l of labels) { const o = document.createElement("option"); o.value = o.textContent = l; sel.append(o); }
  if (labels.includes(was)) sel.value = was;
  $("threshold").value = thresholdOf(sel.value);
}
function showPrompts() {
  const entries = Object.entries(T.prompts);
  $("prompts").textContent = entries.length ? entries.map(([l, e]) =>
    `${l}: ${e.positions.length} example(s) in ${e.tomogram}`).join("; ") : "none: click a particle";
}

async function editPrompt(xyz, remove) {
  const r = await api("POST", `/api/tomograms/${encodeURIComponent(T.current)}/prompts`,
    { label: $("label").value, xyz, remove, diameter: +diameterVox().toFixed(2) });
  if (!r.ok) { say(r.data.error); return; }
  if (!remove) saveState({ label: $("label").value });
  T.prompts = r.data.prompts; showPrompts(); draw(); say(remove ? "example removed" : "example added");
}
canvas.addEventListener("click", (e) => editPrompt(unproject(e.offsetX, e.offsetY), false));
// right-click: remove a prompt example of the class near the click, else reject (or restore) a pick there
canvas.addEventListener("contextmenu", (e) => {
  e.preventDefault();
  const xyz = unproject(e.offsetX, e.offsetY), R = diameterVox() / 2;
  const entry = T.prompts[$("label").value];
  if (entry && entry.tomogram === T.current && entry.positions.some((p) => near3(p, xyz, 4))) {
    editPrompt(xyz, true); return;
  }
  for (const label of Object.keys(T.picks)) {
    const back = (T.picks[label].rejected || []).find((c) => near3(c, xyz, R));
    if (back) { reject(label, back, true); return; }
    const hit = visible(label).find((c) => near3(c, xyz, R));
    if (hit) { reject(label, hit, false); return; }
  }
});
async function reject(label, xyz, undo) {
  const r = await api("POST", `/api/tomograms/${encodeURIComponent(T.current)}/reject`, { label, xyz, undo });
  if (!r.ok) { say(r.data.error); return; }
  T.picks[label].rejected = r.data.rejected; say(undo ? "pick restored" : "pick rejected"); draw();
}
$("accept3d").onclick = async () => {
  const label = $("review-class").value;
  if (!label) { say("no picks to accept: run Pick 3D first"); return; }
  const r = await api("POST", `/api/tomograms/${encodeURIComponent(T.current)}/accept`,
    { label, threshold: thresholdOf(label), shown: visible(label) }); // the server writes these or nothing
  if (!r.ok) { say(r.data.error); if (r.status === 409) loadPicks(); return; }
  say(`accepted ${r.data.accepted} ${label} picks as answers (${r.data.rejected} rejected: no) in ${r.data.answers}`);
  loadList();
};
$("export").onclick = async () => {
  const r = await api("POST", "/api/tomograms-export", { threshold: 0, thresholds: T.thresholds });
  $("export-result").textContent = r.ok ? `wrote ${r.data.n} picks: ${r.data.files.slice(0, 3).join(", ")}` +
    (r.data.files.length > 3 ? ` … (${r.data.files.length} files)` : "") : r.data.error;
};
canvas.addEventListener("wheel", (e) => { e.preventDefault(); stepSlice(e.deltaY > 0 ? 1 : -1); }, { passive: false });
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT") return;
  if (e.key === "ArrowUp") stepSlice(1); else if (e.key === "ArrowDown") stepSlice(-1);
  else if (e.key === "]") jumpToPicks(1); else if (e.key === "[") jumpToPicks(-1);
});
function stepSlice(d) {
  const i = Math.min(+$("index").max, Math.max(0, +$("index").value + d));
  $("index").value = i; loadSlice();
}
$("index").oninput = loadSlice; $("slab").onchange = loadSlice; $("axis").onchange = () => setAxis();
$("threshold").oninput = () => {
  const label = $("review-class").value;
  if (!label) return;
  T.thresholds[label] = +$("threshold").value; saveState({ thresholds: { [label]: +$("threshold").value } }); draw();
};
$("review-class").onchange = () => {
  $("threshold").value = thresholdOf($("review-class").value); saveState({ review_class: $("review-class").value }); draw();
};
$("label").onchange = () => { if ($("label").value) saveState({ label: $("label").value }); };
window.addEventListener("resize", draw);

async function loadPicks() {
  const r = await api("GET", `/api/tomograms/${encodeURIComponent(T.current)}/picks`);
  T.picks = r.ok ? r.data.picks : {}; showClasses(); draw();
}
$("pick3d").onclick = async () => {
  const job = await postJob("pick3d", { answers: $("use-answers").checked });
  if (job) { showJob(job); openStream(); }
};
function openStream() { followJob(T, showJob, () => { loadPicks(); loadList(); }); }
function showJob(job) {
  if (job.state === "none") return;
  $("pick3d").disabled = job.state === "running";
  const adapted = (job.result || {}).adapted || [];
  $("job-state").textContent = `${job.kind}: ${job.state}` + (job.total ? ` · ${job.done}/${job.total} tomograms` : "") +
    (adapted.length ? ` · adapted to the reviewed picks: ${adapted.join(", ")}` : "") + (job.message ? ` — ${job.message}` : "");
  $("job-progress").max = job.total || 1; $("job-progress").value = job.done || 0;
  $("job-log").textContent = (job.log || []).join("\n");
}
(async () => {
  const p = await api("GET", "/api/project");
  if (p.ok && p.data.job.state === "running") { showJob(p.data.job); openStream(); }
  await loadList();
})();
