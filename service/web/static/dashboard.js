// mfserve dashboard: plain JavaScript, no build step. The admin token lives in this tab's
// sessionStorage only (never in the URL) and goes out as `Authorization: Bearer` on every call.
"use strict";

const TOKEN_KEY = "mfserve.adminToken";
const JOBS_POLL_MS = 1000;
const OVERVIEW_POLL_MS = 5000;
const FINAL = new Set(["succeeded", "failed", "cancelled"]);

const state = { tab: "overview", curveJob: null, curveStatus: null, charts: {}, timers: [] };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  return Number.isInteger(value) ? String(value) : Number(value).toFixed(digits);
}

function fmtTime(iso) {
  if (!iso) return "–";
  return new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 60 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
}

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.detail !== undefined ? body.detail : body;
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.code = body && body.error;
  }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (response.status === 401 || response.status === 403) {
    logout("The admin token was refused: " + (body && body.detail));
    throw new ApiError(response.status, body);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
}

// ----- login ---------------------------------------------------------------------------------
async function login(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  $("login-error").textContent = "";
  const response = await fetch("/admin/jobs?limit=1", {
    headers: { Authorization: "Bearer " + token, Accept: "application/json" },
    cache: "no-store",
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    $("login-error").textContent = "Login failed: " + (body.detail || response.status);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  start();
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  $("dashboard").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function start() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  showTab(state.tab);
  refreshLiveVersion();
  state.timers.push(setInterval(tick, JOBS_POLL_MS));
  state.timers.push(setInterval(slowTick, OVERVIEW_POLL_MS));
}

function tick() {
  if (state.tab === "jobs") refreshJobs().catch(showError);
}

function slowTick() {
  refreshLiveVersion();
  if (state.tab === "overview") refreshOverview().catch(showError);
  if (state.tab === "models") refreshModels().catch(showError);
}

function showTab(tab) {
  state.tab = tab;
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== "tab-" + tab;
  for (const link of document.querySelectorAll(".tab")) {
    if (link.dataset.tab === tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  showError(null);
  const load = { overview: refreshOverview, models: refreshModels, jobs: refreshJobs }[tab];
  if (load) load().catch(showError);
}

// ----- live version and overview -------------------------------------------------------------
async function activeVersion() {
  try {
    return await api("/models/active");
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

async function refreshLiveVersion() {
  try {
    const active = await activeVersion();
    $("live-version").textContent = active
      ? `live version: ${active.version} (${active.algorithm})`
      : "live version: none";
    $("live-version").dataset.version = active ? String(active.version) : "";
  } catch (err) {
    showError(err);
  }
}

function metricsText(metrics) {
  const validation = (metrics && metrics.validation) || {};
  return Object.entries(validation)
    .map(([name, value]) => `${name} ${fmtNumber(value)}`)
    .join(", ");
}

async function refreshOverview() {
  const [active, stats] = await Promise.all([activeVersion(), api("/admin/stats?days=7")]);
  const box = $("active-model");
  box.replaceChildren();
  if (!active) {
    box.append(el("p", {}, "No model version is active yet: queue a retrain."));
  } else {
    box.append(
      el("p", { id: "active-summary" },
        el("strong", {}, `Version ${active.version}`), ` · ${active.algorithm} · created `,
        fmtTime(active.created_at), ` · trained on ${active.snapshot.n_ratings} ratings, `,
        `${active.snapshot.n_users} users, ${active.snapshot.n_items} items`,
        active.served ? " · served by this process" : " · not yet served by this process"),
      el("p", {}, "Validation: ", metricsText(active.metrics) || "–"),
    );
  }
  $("count-ratings").textContent = stats.ratings;
  $("count-users").textContent = stats.users;
  $("count-items").textContent = stats.items;
  $("count-recent").textContent = stats.hours.reduce((sum, h) => sum + h.ratings, 0);
  drawIngest(stats.hours);
}

function drawIngest(hours) {
  const labels = hours.map((h) => h.hour.slice(5, 13).replace("T", " ") + "h");
  const data = hours.map((h) => h.ratings);
  const chart = state.charts.ingest;
  if (chart) {
    chart.data.labels = labels;
    chart.data.datasets[0].data = data;
    chart.update("none");
    return;
  }
  state.charts.ingest = new Chart($("ingest-chart"), {
    type: "bar",
    data: { labels, datasets: [{ label: "ratings stored", data, backgroundColor: "#3c71f7" }] },
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: { x: { ticks: { maxTicksLimit: 14 } }, y: { beginAtZero: true } },
      plugins: { legend: { display: false } },
    },
  });
}

// ----- model versions ------------------------------------------------------------------------
async function refreshModels() {
  const page = await api("/models?limit=100");
  const body = $("versions").querySelector("tbody");
  body.replaceChildren();
  for (const v of page.items) {
    const state_ = [v.active ? "active" : null, v.served ? "served" : null,
      v.available ? null : "pruned"].filter(Boolean).join(", ") || "–";
    const button = v.active || !v.available
      ? null
      : el("button", { className: "small", "data-activate": v.version,
        onclick: () => confirmActivate(v) }, "Activate");
    body.append(el("tr", { "data-version": v.version, className: v.active ? "active" : null },
      el("td", {}, v.version),
      el("td", {}, v.algorithm),
      el("td", {}, el("code", {}, JSON.stringify(v.config))),
      el("td", {}, metricsText(v.metrics) || "–"),
      el("td", {}, fmtTime(v.created_at)),
      el("td", {}, fmtBytes(v.size_bytes)),
      el("td", {}, state_),
      el("td", {}, button)));
  }
}

function confirmActivate(version) {
  const dialog = $("confirm");
  $("confirm-title").textContent = `Activate version ${version.version}?`;
  $("confirm-text").textContent =
    `Every API process will serve version ${version.version} (${version.algorithm}) ` +
    `instead of version ${$("live-version").dataset.version || "none"}.`;
  const ok = $("confirm-ok");
  const cancel = $("confirm-cancel");
  const close = () => {
    ok.onclick = null;
    cancel.onclick = null;
    dialog.close();
  };
  cancel.onclick = close;
  ok.onclick = async () => {
    close();
    try {
      await api(`/admin/models/${version.version}/activate`, { method: "POST" });
      await refreshModels();
      await refreshLiveVersion();
    } catch (err) {
      showError(err);
    }
  };
  dialog.showModal();
}

// ----- jobs and curves -----------------------------------------------------------------------
function progressCell(job) {
  const p = job.progress;
  if (!p.epochs) return el("span", {}, job.status === "queued" ? "waiting" : "–");
  return el("span", { className: "progress-cell" },
    el("progress", { value: p.epoch || 0, max: p.epochs }),
    ` ${p.epoch || 0}/${p.epochs}`);
}

async function refreshJobs() {
  const page = await api("/admin/jobs?limit=50");
  const body = $("jobs").querySelector("tbody");
  body.replaceChildren();
  for (const job of page.items) {
    const error = job.error ? el("div", { className: "error small" }, job.error) : null;
    body.append(el("tr", { "data-job": job.job_id, "data-status": job.status },
      el("td", {}, job.job_id),
      el("td", {}, job.algorithm),
      el("td", {}, el("span", { className: "status " + job.status }, job.status), error),
      el("td", { className: "progress" }, progressCell(job)),
      el("td", {}, fmtNumber(job.progress.loss)),
      el("td", {}, job.status === "running" ? fmtSeconds(job.progress.eta_s) : "–"),
      el("td", {}, fmtTime(job.requested_at)),
      el("td", {}, job.version ?? "–"),
      el("td", {}, el("button", { className: "small secondary", "data-curve": job.job_id,
        onclick: () => openCurve(job.job_id) }, "Curve"))));
  }
  if (state.curveJob !== null && !FINAL.has(state.curveStatus)) await refreshCurve();
}

async function openCurve(jobId) {
  state.curveJob = jobId;
  state.curveStatus = null;
  $("curve-panel").hidden = false;
  await refreshCurve().catch(showError);
}

async function refreshCurve() {
  const curve = await api(`/admin/jobs/${state.curveJob}/curve`);
  state.curveStatus = curve.status;
  const phases = new Set(curve.points.map((p) => p.phase));
  const label = (p) => (phases.size > 1 ? `${p.phase} ${p.epoch}` : String(p.epoch));
  const labels = curve.points.map(label);
  const loss = curve.points.map((p) => p.loss);
  const rmse = curve.points.map((p) => p.validation_rmse);
  const hasRmse = rmse.some((v) => v !== null);
  $("curve-title").textContent = `Training curve of job ${curve.job_id} (${curve.algorithm})`;
  const last = curve.points[curve.points.length - 1];
  $("curve-summary").textContent = `${curve.status} · ${curve.points.length} epochs recorded` +
    (last ? ` · last loss ${fmtNumber(last.loss)}` : "") +
    (hasRmse ? ` · last validation RMSE ${fmtNumber(rmse.filter((v) => v !== null).pop())}` : "");
  $("curve-panel").dataset.job = String(curve.job_id);
  $("curve-panel").dataset.points = String(curve.points.length);
  $("curve-panel").dataset.status = curve.status;
  const datasets = [{ label: "training loss", data: loss, borderColor: "#3c71f7",
    backgroundColor: "#3c71f7", yAxisID: "y" }];
  if (hasRmse) {
    datasets.push({ label: "validation RMSE", data: rmse, borderColor: "#d93526",
      backgroundColor: "#d93526", yAxisID: "y1" });
  }
  if (state.charts.curve) state.charts.curve.destroy();
  state.charts.curve = new Chart($("curve-chart"), {
    type: "line",
    data: { labels, datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: {
        x: { title: { display: true, text: "epoch" } },
        y: { title: { display: true, text: "loss" } },
        y1: { display: hasRmse, position: "right", grid: { drawOnChartArea: false },
          title: { display: true, text: "validation RMSE" } },
      },
    },
  });
}

// ----- lookups -------------------------------------------------------------------------------
async function titlesOf(ids) {
  if (!ids.length) return {};
  const query = ids.map((id) => "item=" + encodeURIComponent(id)).join("&");
  return (await api("/admin/item-titles?" + query)).titles;
}

function fillRows(table, rows) {
  const body = $(table).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}

async function lookUpUser(event) {
  event.preventDefault();
  showError(null);
  const user = $("user-id").value.trim();
  const path = encodeURIComponent(user);
  $("user-summary").textContent = "";
  fillRows("user-ratings", []);
  fillRows("user-recs", []);
  let latest = { items: [] };
  try {
    latest = await api(`/admin/users/${path}/latest?n=20`);
  } catch (err) {
    if (err.status !== 404) throw err;
  }
  const recs = await api(`/recommend/${path}?n=10`);
  const titles = await titlesOf(recs.items.map((r) => r.item));
  fillRows("user-ratings", latest.items.map((r) =>
    [r.item, r.title ?? "", fmtNumber(r.rating, 1), fmtTime(r.timestamp)]));
  fillRows("user-recs", recs.items.map((r) => [r.item, titles[r.item] ?? "", fmtNumber(r.score)]));
  $("user-summary").replaceChildren(
    `${user}: ${latest.items.length} latest ratings shown · recommendations from model version `,
    `${recs.model_version}, source `,
    el("strong", { id: "user-source" }, recs.source));
}

async function lookUpItem(event) {
  event.preventDefault();
  showError(null);
  const item = $("item-id").value.trim();
  const path = encodeURIComponent(item);
  const meta = await api(`/items/${path}`);
  const attributes = Object.entries(meta.attributes || {}).map(([k, v]) => `${k}: ${v}`);
  $("item-meta").replaceChildren(el("dl", {},
    el("dt", {}, "Item"), el("dd", { id: "item-name" }, meta.item),
    el("dt", {}, "Title"), el("dd", {}, meta.title ?? "–"),
    el("dt", {}, "Tags"), el("dd", {}, (meta.tags || []).join(", ") || "–"),
    el("dt", {}, "Attributes"), el("dd", {}, attributes.join(" · ") || "–"),
    el("dt", {}, "Updated"), el("dd", {}, fmtTime(meta.updated_at))));
  fillRows("item-similar", []);
  $("similar-summary").textContent = "";
  try {
    const similar = await api(`/items/${path}/similar?n=10`);
    const titles = await titlesOf(similar.items.map((r) => r.item));
    fillRows("item-similar",
      similar.items.map((r) => [r.item, titles[r.item] ?? "", fmtNumber(r.score)]));
    $("similar-summary").textContent = `from model version ${similar.model_version}`;
  } catch (err) {
    $("similar-summary").textContent = `no similar items: ${err.message}`;
  }
}

function wire() {
  $("login-form").addEventListener("submit", (e) => login(e).catch((err) => {
    $("login-error").textContent = String(err.message || err);
  }));
  $("logout").addEventListener("click", (e) => {
    e.preventDefault();
    logout("");
  });
  for (const link of document.querySelectorAll(".tab")) {
    link.addEventListener("click", (e) => {
      e.preventDefault();
      showTab(link.dataset.tab);
    });
  }
  $("user-form").addEventListener("submit", (e) => lookUpUser(e).catch(showError));
  $("item-form").addEventListener("submit", (e) => lookUpItem(e).catch(showError));
  if (sessionStorage.getItem(TOKEN_KEY)) start();
  else logout("");
}

wire();
