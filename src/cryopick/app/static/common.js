// cryopick app: what the micrograph page (app.js, panel.js) and the tomogram page (tomo.js) share —
// element lookup, the JSON API call, and starting / following the one background job.
"use strict";

const $ = (id) => document.getElementById(id);

// One API call; never throws: { ok, status, data } with data.error explaining a failure.
async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body === undefined && method !== "GET") body = {}; // writes are JSON (the server refuses other types)
  if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  let res;
  try { res = await fetch(url, opts); } catch (e) {
    return { ok: false, status: 0, data: { error: "the server cannot be reached (stopped?); edits are kept here" } };
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: res.statusText }; }
  return { ok: res.ok, status: res.status, data };
}

// Start a background job; its refusal (another job running, bad settings) goes to #job-state.
// Returns the job, or null when it was refused.
async function postJob(kind, params) {
  const r = await api("POST", "/api/jobs", { kind, params });
  if (!r.ok) { $("job-state").textContent = r.data.error; return null; }
  return r.data;
}

// Follow the job's server-sent progress: show(job) on every update, done(job) once when it stops.
// holder.stream keeps the one open EventSource of the page.
function followJob(holder, show, done) {
  if (holder.stream) holder.stream.close();
  holder.stream = new EventSource("/api/jobs/stream");
  holder.stream.onmessage = (e) => {
    const job = JSON.parse(e.data); show(job);
    if (job.state !== "running") { holder.stream.close(); holder.stream = null; done(job); }
  };
  holder.stream.onerror = () => { if (holder.stream) { holder.stream.close(); holder.stream = null; } };
}
