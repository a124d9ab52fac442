// cryopick app: plain modern JavaScript, no build step. The project folder on the server is the truth;
// every edit is saved at once with the version it was based on (a 409 means another tab changed it).
"use strict";
// Loaded after common.js ($, api, postJob, followJob).

const S = {
  mics: [], current: null, info: null, img: null, coords: [], version: "0", flag: null,
  picks: { coords: [], scores: [], threshold: null }, diameter: 40, zoom: 1, panX: 0, panY: 0,
  saving: false, pending: false, drag: null, hover: -1, job: null, stream: null, conflict: null,
};
window.cryopick = S; // for tests and the console

function setState(text) { $("save-state").textContent = text; }
const radius = () => S.diameter / 2;

// ---- project and list -------------------------------------------------------------------------------
async function loadProject() {
  const r = await api("GET", "/api/project");
  if (!r.ok) { setState(r.data.error); return; }
  $("project-root").textContent = r.data.root;
  S.root = r.data.root;
  S.micrographDir = r.data.micrograph_dir;
  S.diameter = r.data.settings.diameter;
  $("diameter").value = S.diameter;
  showCard(r.data.model);
  showJob(r.data.job);
  if (r.data.job.state === "running") openStream();
}

async function loadList() {
  const r = await api("GET", "/api/micrographs?status=" + $("filter").value);
  if (!r.ok) { setState(r.data.error); return; }
  S.mics = r.data.micrographs;
  const ul = $("mic-list");
  ul.innerHTML = "";
  for (const m of S.mics) {
    const li = document.createElement("li");
    li.dataset.name = m.name;
    li.className = m.name === S.current ? "current" : "";
    const img = document.createElement("img");
    img.loading = "lazy";
    img.src = `/api/micrographs/${encodeURIComponent(m.name)}/image?kind=thumb`;
    const text = document.createElement("div");
    const picked = m.picked === null ? "" : ` · picked ${m.picked}`;
    const accepted = m.accepted === null || m.accepted === undefined ? (m.picked === null ? "" : " · to review")
      : ` · accepted ${m.accepted}`;
    text.innerHTML = `<div class="name"></div><div class="counts">annotated ${m.annotated}${picked}${accepted}` +
      `${m.flag ? " · " + m.flag : ""}</div>`;
    text.querySelector(".name").textContent = m.name;
    li.append(img, text);
    li.onclick = () => openMicrograph(m.name);
    ul.append(li);
  }
  const n = r.data.counts;
  $("totals").textContent = `${S.mics.length} of ${n.all} micrographs shown · ${n.particles} particles labelled · ` +
    `${n.annotated} annotated · ${n.picked} picked · ${n.reviewed} reviewed`;
  if (!S.mics.length && $("filter").value === "all") {
    $("totals").textContent = `no micrographs yet: put them (MRC, TIFF, PNG) in ${S.micrographDir}, then reload`;
  }
  if (!S.current && S.mics.length) openMicrograph(S.mics[0].name);
}

// ---- one micrograph -------------------------------------------------------------------------------
async function openMicrograph(name) {
  const enc = encodeURIComponent(name);
  const [info, ann, picks] = await Promise.all([
    api("GET", `/api/micrographs/${enc}`), api("GET", `/api/micrographs/${enc}/annotations`),
    api("GET", `/api/micrographs/${enc}/picks`)]);
  if (!info.ok || !ann.ok) { setState((info.ok ? ann : info).data.error); return; }
  S.current = name; S.info = info.data; S.flag = info.data.flag;
  S.coords = ann.data.coords; S.version = ann.data.version; S.conflict = null;
  showAngstrom();
  const pending = journalled(name);
  if (pending) { S.coords = pending.coords; S.version = pending.version; save(); } // edits not yet confirmed
  S.picks = picks.ok ? picks.data : { coords: [], scores: [], threshold: null };
  if (S.picks.threshold !== null && S.picks.threshold !== undefined && !S.thresholdTouched) {
    $("threshold").value = S.picks.threshold;
  }
  $("conflict").hidden = true;
  $("mic-name").textContent = name;
  $("flag").value = S.flag || "";
  for (const li of $("mic-list").children) li.className = li.dataset.name === name ? "current" : "";
  const img = new Image();
  S.img = null; S.tiles = null;
  img.onload = () => { if (S.current !== name) return; S.img = img; fit(); draw(); };
  img.onerror = () => setState("could not load the image of " + name);
  img.src = `/api/micrographs/${enc}/image?kind=display`;
  updateCounts();
}

// The diameter is stored in pixels of the micrographs; it can be typed in Å when the pixel size is known.
function showAngstrom() {
  const ps = S.info && S.info.pixel_size;
  const inA = $("diameter-unit").value === "A" && ps;
  $("diameter-unit").disabled = !ps;
  if (!ps) $("diameter-unit").value = "px";
  $("diameter").value = inA ? +(S.diameter * ps).toFixed(1) : S.diameter;
  $("diameter-a").textContent = !ps ? "" : inA ? `= ${S.diameter.toFixed(1)} px at ${ps.toFixed(3)} Å/px`
    : `= ${(S.diameter * ps).toFixed(0)} Å at ${ps.toFixed(3)} Å/px`;
}
$("diameter-unit").onchange = showAngstrom;

function step(delta) {
  if (!S.mics.length) return;
  const i = S.mics.findIndex((m) => m.name === S.current);
  const j = Math.min(S.mics.length - 1, Math.max(0, i + delta));
  if (j !== i) openMicrograph(S.mics[j].name);
}

// ---- drawing --------------------------------------------------------------------------------------
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

function fit() {
  if (!S.info) return;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  S.zoom = Math.min(w / S.info.width, h / S.info.height);
  S.panX = (w - S.info.width * S.zoom) / 2; S.panY = (h - S.info.height * S.zoom) / 2;
}
const toScreen = (x, y) => [S.panX + (x + 0.5) * S.zoom, S.panY + (y + 0.5) * S.zoom];
const toImage = (sx, sy) => [(sx - S.panX) / S.zoom - 0.5, (sy - S.panY) / S.zoom - 0.5];

// The picks the review shows (review.js, the server's rule too): at or above the threshold, not rejected,
// and with a minimum distance (in particle diameters) the best-scoring pick of any closer pair —
// display only, the network is not rerun.
function visiblePicks() {
  return reviewVisible(S.picks.coords, S.picks.scores, S.picks.rejected || [], parseFloat($("threshold").value),
    parseFloat($("min-distance").value) * S.diameter, S.diameter / 4);
}

function draw() {
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.fillStyle = "#111"; ctx.fillRect(0, 0, w, h);
  if (!S.img || !S.info) return;
  const blur = +$("lowpass").value * S.zoom * S.info.width / S.img.width; // display pixels of the PNG
  ctx.filter = `contrast(${$("contrast").value}%)` + (blur > 0 ? ` blur(${blur}px)` : "");
  ctx.drawImage(S.img, S.panX, S.panY, S.info.width * S.zoom, S.info.height * S.zoom);
  drawTiles();
  ctx.filter = "none";
  const r = radius() * S.zoom;
  if ($("show-picks").checked) {
    ctx.strokeStyle = "#ffb300"; ctx.setLineDash([4, 3]); ctx.lineWidth = 1.5;
    for (const [x, y] of visiblePicks()) { const [sx, sy] = toScreen(x, y); circle(sx, sy, r); }
    ctx.setLineDash([]);
    ctx.strokeStyle = "#e53935"; ctx.lineWidth = 2;  // rejected in review: a red cross
    for (const [x, y] of S.picks.rejected || []) {
      const [sx, sy] = toScreen(x, y), q = r * 0.5;
      ctx.beginPath(); ctx.moveTo(sx - q, sy - q); ctx.lineTo(sx + q, sy + q);
      ctx.moveTo(sx + q, sy - q); ctx.lineTo(sx - q, sy + q); ctx.stroke();
    }
  }
  if ($("show-ann").checked) {
    S.coords.forEach(([x, y], i) => {
      const [sx, sy] = toScreen(x, y);
      ctx.strokeStyle = i === S.hover ? "#ff4081" : "#00e5ff"; ctx.lineWidth = 2; circle(sx, sy, r);
    });
  }
}
// Zoomed in beyond the display image: cached tiles of the server's pyramid (level L = blocks of 2^L
// pixels, the coarsest level that is still as sharp as the screen), drawn over the display image.
function drawTiles() {
  const levels = S.info.levels || 0;
  if (!levels || S.zoom * S.info.width <= S.img.width * 1.25) return;
  const level = Math.max(0, Math.min(levels - 1, Math.floor(Math.log2(1 / S.zoom))));
  const f = 2 ** level, span = S.info.tile * f;
  const [ax, ay] = toImage(0, 0), [bx, by] = toImage(canvas.clientWidth, canvas.clientHeight);
  const tx0 = Math.max(0, Math.floor(ax / span)), ty0 = Math.max(0, Math.floor(ay / span));
  const tx1 = Math.min(Math.ceil(S.info.width / span) - 1, Math.floor(bx / span));
  const ty1 = Math.min(Math.ceil(S.info.height / span) - 1, Math.floor(by / span));
  if (!S.tiles || S.tiles.name !== S.current) S.tiles = { name: S.current, map: new Map() };
  for (let ty = ty0; ty <= ty1; ty++) for (let tx = tx0; tx <= tx1; tx++) {
    const key = `${level}/${tx}/${ty}`;
    let img = S.tiles.map.get(key);
    if (!img) {
      if (S.tiles.map.size > 200) S.tiles.map.clear();
      img = new Image();
      const name = S.current;
      img.onload = () => { if (name === S.current) draw(); };
      img.src = `/api/micrographs/${encodeURIComponent(name)}/tile?level=${level}&x=${tx}&y=${ty}`;
      S.tiles.map.set(key, img);
    }
    if (img.complete && img.naturalWidth) {
      const [sx, sy] = toScreen(tx * span - 0.5, ty * span - 0.5);
      ctx.drawImage(img, sx, sy, img.naturalWidth * f * S.zoom, img.naturalHeight * f * S.zoom);
    }
  }
}

function circle(x, y, r) { ctx.beginPath(); ctx.arc(x, y, Math.max(r, 2), 0, 2 * Math.PI); ctx.stroke(); }

function updateCounts() {
  $("ann-count").textContent = `${S.coords.length} particles`;
  const n = visiblePicks().length;
  $("pick-count").textContent = S.picks.coords.length ? `${n} picks ≥ ${(+$("threshold").value).toFixed(2)}`
    : "no picks";
  $("threshold-value").textContent = (+$("threshold").value).toFixed(2);
  drawHistogram();
}

function drawHistogram() {
  drawScoreHistogram($("histogram"), S.picks.scores, [[S.picks.threshold, "#2e7d32"], [+$("threshold").value, "#ff6f00"]]);
}

// ---- editing ----------------------------------------------------------------------------------------
function nearest(x, y) {
  let best = -1, bestD = radius();
  S.coords.forEach(([cx, cy], i) => { const d = Math.hypot(cx - x, cy - y); if (d <= bestD) { best = i; bestD = d; } });
  return best;
}
function inside(x, y) { return S.info && x >= -0.5 && y >= -0.5 && x <= S.info.width - 0.5 && y <= S.info.height - 0.5; }

canvas.addEventListener("mousedown", (e) => {
  if (!S.info) return;
  const [x, y] = toImage(e.offsetX, e.offsetY);
  if (e.button === 1 || (e.button === 0 && e.shiftKey)) { S.drag = { pan: true, sx: e.offsetX, sy: e.offsetY }; return; }
  if (e.button !== 0) return;
  const i = nearest(x, y);
  S.drag = { index: i, sx: e.offsetX, sy: e.offsetY, moved: false, x, y };
});
canvas.addEventListener("mousemove", (e) => {
  const [x, y] = toImage(e.offsetX, e.offsetY);
  if (S.drag && S.drag.pan) {
    S.panX += e.offsetX - S.drag.sx; S.panY += e.offsetY - S.drag.sy; S.drag.sx = e.offsetX; S.drag.sy = e.offsetY;
    draw(); return;
  }
  if (S.drag && S.drag.index >= 0) {
    if (Math.hypot(e.offsetX - S.drag.sx, e.offsetY - S.drag.sy) > 3) S.drag.moved = true;
    if (S.drag.moved && inside(x, y)) { S.coords[S.drag.index] = [round(x), round(y)]; draw(); }
    return;
  }
  const h = nearest(x, y);
  if (h !== S.hover) { S.hover = h; draw(); }
});
window.addEventListener("mouseup", (e) => {
  const d = S.drag; S.drag = null;
  if (!d || d.pan || !S.info) return;
  if (d.index >= 0) { if (d.moved) edited(); return; }
  if (Math.hypot(e.offsetX - d.sx, e.offsetY - d.sy) > 3 || e.target !== canvas) return;
  if (!inside(d.x, d.y)) return;
  S.coords.push([round(d.x), round(d.y)]);
  edited();
});
canvas.addEventListener("contextmenu", (e) => {
  e.preventDefault();
  const [x, y] = toImage(e.offsetX, e.offsetY);
  const i = nearest(x, y);
  if (i >= 0) { S.coords.splice(i, 1); S.hover = -1; edited(); return; }
  if (!$("show-picks").checked) return;
  const rejected = (S.picks.rejected || []).find(([rx, ry]) => Math.hypot(rx - x, ry - y) <= radius());
  if (rejected) { reject(rejected, true); return; }
  let best = null, bestD = radius();
  for (const c of visiblePicks()) { const d = Math.hypot(c[0] - x, c[1] - y); if (d <= bestD) { best = c; bestD = d; } }
  if (best) reject(best, false);
});

async function reject(xy, undo) {
  const r = await api("POST", `/api/micrographs/${encodeURIComponent(S.current)}/reject`, { xy, undo });
  if (!r.ok) { setState(r.data.error); return; }
  S.picks.rejected = r.data.rejected; setState(undo ? "pick restored" : "pick rejected");
  draw(); updateCounts();
}
canvas.addEventListener("wheel", (e) => {
  e.preventDefault();
  const f = e.deltaY < 0 ? 1.2 : 1 / 1.2;
  S.panX = e.offsetX - (e.offsetX - S.panX) * f; S.panY = e.offsetY - (e.offsetY - S.panY) * f; S.zoom *= f;
  draw();
}, { passive: false });
const round = (v) => Math.round(v * 10) / 10;

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  if (e.key === "n") step(1);
  else if (e.key === "p") step(-1);
  else if ((e.key === "Delete" || e.key === "Backspace" || e.key === "d") && S.hover >= 0) {
    S.coords.splice(S.hover, 1); S.hover = -1; edited();
  } else if (e.key === "a") { $("show-ann").checked = !$("show-ann").checked; draw(); }
  else if (e.key === "k") { $("show-picks").checked = !$("show-picks").checked; draw(); }
  else if (e.key === "0") { fit(); draw(); }
});

// Unsaved edits are journalled in the browser (localStorage) until the server confirms them, so a
// reload while the server is down, restarting or crashed loses nothing: they are sent again on load,
// with the version they were based on (a conflict if the file changed meanwhile).
const journalKey = (name) => `cryopick:${S.root}:${name}`;
function journal(name, version, coords) {
  try { localStorage.setItem(journalKey(name), JSON.stringify({ version, coords })); } catch (e) { /* full */ }
}
function unjournal(name) { try { localStorage.removeItem(journalKey(name)); } catch (e) { /* ignore */ } }
function journalled(name) {
  try { return JSON.parse(localStorage.getItem(journalKey(name)) || "null"); } catch (e) { return null; }
}

function edited() { journal(S.current, S.version, S.coords); draw(); updateCounts(); save(); }

async function save() {
  if (S.conflict) return; // resolve first; the local edits are kept meanwhile
  if (S.saving) { S.pending = true; return; }
  S.saving = true; setState("saving…");
  const name = S.current;
  const r = await api("PUT", `/api/micrographs/${encodeURIComponent(name)}/annotations`,
    { version: S.version, coords: S.coords });
  S.saving = false;
  if (r.ok && !(S.pending && name === S.current)) unjournal(name);
  if (name !== S.current) return;
  if (r.ok) {
    S.version = r.data.version; setState("saved");
    const m = S.mics.find((m) => m.name === name); if (m) { m.annotated = r.data.coords.length; }
    refreshListSoon();
  } else if (r.status === 409) {
    S.conflict = r.data.current; S.pending = false; showConflict();
  } else {
    setState("not saved: " + r.data.error);
    if (r.status === 0) { clearTimeout(S.retry); S.retry = setTimeout(save, 2000); } // server down: retry
  }
  if (S.pending) { S.pending = false; save(); }
}

function showConflict() {
  const theirs = S.conflict.coords.length;
  $("conflict-text").textContent = `These annotations were changed elsewhere (another tab?): ${theirs} particles ` +
    `there, ${S.coords.length} here. Nothing is lost until you choose:`;
  $("conflict").hidden = false; setState("conflict");
}
function resolve(choice) {
  const cur = S.conflict; S.conflict = null; $("conflict").hidden = true;
  S.version = cur.version;
  if (choice === "theirs") {
    S.coords = cur.coords; unjournal(S.current); draw(); updateCounts(); setState("saved"); return;
  }
  if (choice === "merge") {
    const merged = cur.coords.slice();
    for (const c of S.coords) if (!merged.some((m) => Math.hypot(m[0] - c[0], m[1] - c[1]) < 1)) merged.push(c);
    S.coords = merged;
  }
  edited();
}
$("conflict-merge").onclick = () => resolve("merge");
$("conflict-theirs").onclick = () => resolve("theirs");
$("conflict-mine").onclick = () => resolve("mine");

let listTimer = null;
function refreshListSoon() { clearTimeout(listTimer); listTimer = setTimeout(loadList, 800); }

// ---- controls ---------------------------------------------------------------------------------------
$("filter").onchange = loadList;
$("show-ann").onchange = draw;
$("show-picks").onchange = draw;
$("contrast").oninput = draw;
$("lowpass").oninput = draw;
$("min-distance").oninput = () => {
  const v = +$("min-distance").value;
  $("min-distance-value").textContent = v > 0 ? `${v.toFixed(2)} × diameter` : "off";
  draw(); updateCounts();
};
$("zoom-reset").onclick = () => { fit(); draw(); };
$("threshold").oninput = () => { S.thresholdTouched = true; draw(); updateCounts(); };
$("diameter").onchange = async () => {
  const ps = S.info && S.info.pixel_size, typed = parseFloat($("diameter").value);
  const px = $("diameter-unit").value === "A" && ps ? typed / ps : typed;
  const r = await api("PUT", "/api/settings", { diameter: px });
  if (r.ok) { S.diameter = r.data.diameter; showAngstrom(); draw(); updateCounts(); setState("diameter saved"); }
  else { setState(r.data.error); showAngstrom(); }
};
$("flag").onchange = async () => {
  const flag = $("flag").value || null;
  const r = await api("PUT", `/api/micrographs/${encodeURIComponent(S.current)}/flag`, { flag });
  setState(r.ok ? "status saved" : r.data.error); refreshListSoon();
};
// Accept: the server adds the picks the review keeps (same threshold, minimum distance and rejections as
// drawn) to the annotations, versioned like any edit, and records the micrograph as reviewed.
$("accept").onclick = async () => {
  if (S.saving || S.pending || S.conflict) { setState("wait for the annotations to be saved, then accept"); return; }
  const r = await api("POST", `/api/micrographs/${encodeURIComponent(S.current)}/accept`,
    { version: S.version, threshold: +$("threshold").value, min_distance: +$("min-distance").value,
      shown: visiblePicks() });
  if (r.status === 409 && !r.data.current) { setState(r.data.error); openMicrograph(S.current); return; }
  if (r.status === 409) { S.conflict = r.data.current; showConflict(); return; }
  if (!r.ok) { setState(r.data.error); return; }
  S.coords = r.data.coords; S.version = r.data.version; unjournal(S.current);
  draw(); updateCounts(); setState(`accepted ${r.data.accepted} picks`); refreshListSoon();
};
$("export").onclick = async () => {
  const body = { format: $("export-format").value, source: $("export-source").value,
                 threshold: parseFloat($("threshold").value), min_distance: parseFloat($("min-distance").value) };
  const r = await api("POST", "/api/export", body);
  $("export-result").textContent = r.ok ? `wrote ${r.data.n} particles: ${r.data.files.slice(0, 3).join(", ")}` +
    (r.data.files.length > 3 ? ` … (${r.data.files.length} files)` : "") : r.data.error;
};

window.addEventListener("resize", () => { fit(); draw(); });
// jobs, review suggestions and export: panel.js (loaded next, starts the page)
