// The ops audit page: recent events with filters, outcomes per minute, and a search by
// token fingerprint. Everything comes from GET /v1/audit/events, and the trail's state
// from GET /v1/audit/trail; nothing is cached beyond this tab. No libraries: the chart is SVG drawn here.

const OUTCOMES = [
  ["issued", "#16875a"],
  ["reused", "#62b98f"],
  ["invalid_request", "#8e6cc2"],
  ["unauthenticated", "#b7791f"],
  ["forbidden", "#c03221"],
  ["rate_limited", "#e07b24"],
  ["upstream_error", "#2f5bea"],
  ["unavailable", "#6b7280"],
  ["stream_ended", "#0e7490"],
];
const COLOR = Object.fromEntries(OUTCOMES);
const PAGE_MAX = 1000; // the API's largest page
const SCAN_PAGES = 20; // at most this many pages for the chart or a fingerprint scan
const FINGERPRINT = /^hmac-sha256:[0-9a-f]{64}$/;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const state = {
  bearer: sessionStorage.getItem("token-vendor-ops-bearer"),
  cursor: null,
  events: [],
  fingerprint: null, // active fingerprint search
  buckets: null, // chart data: { start, minutes, counts: [{outcome: n}] }
};

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail ?? `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// ---- API ----------------------------------------------------------------------------

async function fetchEvents(params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") query.set(k, v);
  const headers = { Accept: "application/json" };
  if (state.bearer) headers.Authorization = `Bearer ${state.bearer}`;
  let res;
  try {
    res = await fetch(`/v1/audit/events?${query}`, { headers, credentials: "same-origin", cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, { detail: `no response: ${e.message}` });
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, body);
  if (!body || !Array.isArray(body.events)) throw new ApiError(res.status, { detail: "the response has no events list" });
  return body;
}

async function fetchTrail() {
  const headers = { Accept: "application/json" };
  if (state.bearer) headers.Authorization = `Bearer ${state.bearer}`;
  let res;
  try {
    res = await fetch("/v1/audit/trail", { headers, credentials: "same-origin", cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, { detail: `no response: ${e.message}` });
  }
  const body = await res.json().catch(() => null);
  if (!res.ok || !body) throw new ApiError(res.status, body);
  return body;
}

function notice(text, kind = "error") {
  const n = $("notice");
  n.hidden = !text;
  n.textContent = text ?? "";
  n.className = kind === "info" ? "notice info" : "notice";
}

function explain(e) {
  if (!(e instanceof ApiError)) return String(e?.message ?? e);
  const detail = e.problem?.detail ? ` (${e.problem.detail})` : "";
  switch (e.status) {
    case 401: return "Not signed in: the audit API needs a session with the audit reader role. Sign in to the app, or paste a session token at the top right.";
    case 403: return "Signed in, but this session does not have the audit reader role.";
    case 404: return "This service answers 404 for GET /v1/audit/events: it has no audit API.";
    case 0: return `The audit API cannot be reached${detail}.`;
    default: return `The audit API answered HTTP ${e.status}${detail}.`;
  }
}

// ---- filters ------------------------------------------------------------------------

function toRfc3339(localValue) {
  if (!localValue) return "";
  const d = new Date(localValue);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

function filters() {
  const f = new FormData($("filters"));
  return {
    subject: String(f.get("subject") ?? "").trim(),
    tenant: String(f.get("tenant") ?? "").trim(),
    outcome: String(f.get("outcome") ?? ""),
    scope: String(f.get("scope") ?? ""),
    since: toRfc3339(String(f.get("since") ?? "")),
    until: toRfc3339(String(f.get("until") ?? "")),
    limit: String(f.get("limit") ?? "100"),
  };
}

function normalizeFingerprint(raw) {
  const v = raw.trim().toLowerCase();
  if (!v) return null;
  return /^[0-9a-f]+$/.test(v) ? `hmac-sha256:${v}` : v;
}

/** Keeps the filters in the address bar, so a view can be shared. */
function saveToUrl() {
  const f = filters();
  const q = new URLSearchParams();
  for (const k of ["subject", "tenant", "outcome", "scope"]) if (f[k]) q.set(k, f[k]);
  if (state.fingerprint) q.set("fingerprint", state.fingerprint);
  const w = $("window").value;
  if (w !== "3") q.set("hours", w);
  history.replaceState(null, "", q.size ? `?${q}` : location.pathname);
}

function loadFromUrl() {
  const q = new URLSearchParams(location.search);
  const form = $("filters");
  for (const k of ["subject", "tenant", "outcome", "scope"]) if (q.get(k)) form.elements[k].value = q.get(k);
  if (q.get("fingerprint")) {
    $("fingerprint").value = q.get("fingerprint");
    state.fingerprint = normalizeFingerprint(q.get("fingerprint"));
  }
  if (q.get("hours") && [...$("window").options].some((o) => o.value === q.get("hours"))) $("window").value = q.get("hours");
}

// ---- table --------------------------------------------------------------------------

// Zero-width, bidirectional and other invisible characters shown as \u{…}, so two
// subjects that look alike can be told apart (and text cannot reorder the row).
const INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u00a0\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\\]/g;
function visible(text) {
  if (text == null) return text;
  return String(text).replace(INVISIBLE, (c) => (c === "\\" ? "\\\\" : `\\u{${c.codePointAt(0).toString(16).padStart(4, "0")}}`));
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text ?? "—";
  return td;
}

function timeText(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  const t = d.toLocaleTimeString([], { hour12: false });
  return today ? t : `${d.toLocaleDateString()} ${t}`;
}

function badge(outcome) {
  const s = document.createElement("span");
  s.className = "badge";
  s.textContent = outcome;
  s.style.background = COLOR[outcome] ?? "#888";
  return s;
}

function renderTable() {
  const tbody = $("events").tBodies[0];
  tbody.textContent = "";
  const shown = state.fingerprint
    ? state.events.filter((e) => (e.token_fingerprint ?? "").startsWith(state.fingerprint))
    : state.events;
  for (const e of shown) {
    const tr = document.createElement("tr");
    tr.className = "event";
    tr.dataset.outcome = e.outcome;
    tr.dataset.id = e.id;
    const time = cell(timeText(e.time), "mono");
    time.title = e.time;
    const outcome = document.createElement("td");
    outcome.append(badge(e.outcome));
    const fp = cell(e.token_fingerprint ? `${e.token_fingerprint.slice(0, 24)}…` : "—", "mono");
    if (e.token_fingerprint) {
      fp.title = `${e.token_fingerprint} — click to find every event of this token`;
      fp.classList.add("fp-link");
      fp.dataset.fingerprint = e.token_fingerprint;
    }
    const ms = cell(String(e.duration_ms ?? "—"), "mono");
    if (e.upstream_ms != null) ms.title = `upstream ${e.upstream_ms} ms`;
    tr.append(
      time, outcome, cell(String(e.status), "mono"), cell(visible(e.subject)), cell(e.tenant), cell(e.scope), cell(e.origin, "mono"),
      cell(e.client_ip, "mono"), fp, cell(e.token_expires_at ? timeText(e.token_expires_at) : "—", "mono"), ms,
      cell(e.detail, "detail"),
    );
    tbody.append(tr);
  }
  if (shown.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(state.fingerprint ? "No event carries this fingerprint in the range searched." : "No events match these filters.");
    td.colSpan = 12;
    tr.append(td);
    tbody.append(tr);
  }
  $("count").textContent = `${shown.length} shown${state.cursor ? ", more available" : ""}${state.fingerprint ? ` · fingerprint ${state.fingerprint.slice(0, 24)}…` : ""}`;
  $("more").hidden = !state.cursor;
}

$("events").addEventListener("click", (ev) => {
  const fpCell = ev.target.closest("td.fp-link");
  if (fpCell) {
    $("fingerprint").value = fpCell.dataset.fingerprint;
    findFingerprint();
    return;
  }
  const tr = ev.target.closest("tr.event");
  if (!tr) return;
  const next = tr.nextElementSibling;
  if (next?.classList.contains("json")) {
    next.remove();
    return;
  }
  const event = state.events.find((e) => e.id === tr.dataset.id);
  const row = document.createElement("tr");
  row.className = "json";
  const td = document.createElement("td");
  td.colSpan = 12;
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(event, null, 2);
  td.append(pre);
  row.append(td);
  tr.after(row);
});

async function loadEvents({ append = false } = {}) {
  const f = filters();
  const params = { ...f, cursor: append ? state.cursor : null };
  try {
    if (state.fingerprint) {
      await scanFingerprint(f);
    } else {
      const page = await fetchEvents(params);
      state.events = append ? state.events.concat(page.events) : page.events;
      state.cursor = page.next_cursor ?? null;
    }
    notice(null);
  } catch (e) {
    if (!append) state.events = [];
    state.cursor = null;
    notice(explain(e));
  }
  renderTable();
}

/**
 * A full fingerprint is asked of the API (`token_fingerprint`); a prefix, or an API
 * that does not know the parameter, falls back to scanning pages here.
 */
async function scanFingerprint(f) {
  const fp = state.fingerprint;
  const base = { subject: f.subject, tenant: f.tenant, outcome: f.outcome, scope: f.scope, since: f.since, until: f.until };
  if (FINGERPRINT.test(fp)) {
    try {
      const page = await fetchEvents({ ...base, token_fingerprint: fp, limit: PAGE_MAX });
      state.events = page.events;
      state.cursor = null;
      return;
    } catch (e) {
      const unknownParam = e instanceof ApiError && e.status === 400 && /token_fingerprint/.test(e.problem?.detail ?? "");
      if (!unknownParam) throw e;
    }
  }
  const found = [];
  let cursor = null;
  for (let i = 0; i < SCAN_PAGES; i++) {
    const page = await fetchEvents({ ...base, limit: PAGE_MAX, cursor });
    found.push(...page.events.filter((e) => (e.token_fingerprint ?? "").startsWith(fp)));
    cursor = page.next_cursor ?? null;
    if (!cursor) break;
  }
  state.events = found;
  state.cursor = null;
}

function findFingerprint() {
  state.fingerprint = normalizeFingerprint($("fingerprint").value);
  saveToUrl();
  return loadEvents();
}

// ---- chart --------------------------------------------------------------------------

async function loadChart() {
  const hours = Number($("window").value);
  const minutes = hours * 60;
  const endMinute = Math.floor(Date.now() / 60000) + 1; // bucket of the current minute included
  const start = (endMinute - minutes) * 60000;
  const f = filters();
  const counts = Array.from({ length: minutes }, () => ({}));
  let cursor = null;
  let capped = false;
  try {
    for (let i = 0; ; i++) {
      const page = await fetchEvents({ subject: f.subject, tenant: f.tenant, scope: f.scope, since: new Date(start).toISOString(), limit: PAGE_MAX, cursor });
      for (const e of page.events) {
        const idx = Math.floor((Date.parse(e.time) - start) / 60000);
        if (idx >= 0 && idx < minutes) counts[idx][e.outcome] = (counts[idx][e.outcome] ?? 0) + 1;
      }
      cursor = page.next_cursor ?? null;
      if (!cursor) break;
      if (i + 1 >= SCAN_PAGES) { capped = true; break; }
    }
  } catch (e) {
    notice(explain(e));
    state.buckets = { start, minutes, counts, failed: true };
    renderChart();
    return;
  }
  state.buckets = { start, minutes, counts, capped };
  renderChart();
}

function el(name, attrs = {}, text) {
  const n = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

function niceMax(n) {
  if (n <= 4) return 4;
  const pow = 10 ** Math.floor(Math.log10(n));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * pow >= n) return m * pow;
  return 10 * pow;
}

function hhmm(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
}

function renderChart() {
  const wrap = $("chart-wrap");
  wrap.textContent = "";
  const b = state.buckets;
  if (!b) return;
  const W = Math.max(320, Math.round(wrap.clientWidth || 1000));
  const H = 220;
  const m = { l: 38, r: 10, t: 10, b: 24 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const totals = b.counts.map((c) => Object.values(c).reduce((a, n) => a + n, 0));
  const max = niceMax(Math.max(0, ...totals));
  const svg = el("svg", { id: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "audit outcomes per minute", "data-testid": "chart" });
  for (const frac of [0, 0.5, 1]) {
    const y = m.t + ph - frac * ph;
    svg.append(el("line", { class: frac === 0 ? "axis" : "grid", x1: m.l, x2: W - m.r, y1: y, y2: y }));
    svg.append(el("text", { x: m.l - 6, y: y + 3, "text-anchor": "end" }, String(Math.round(frac * max))));
  }
  const step = [5, 10, 15, 30, 60, 120, 180, 240, 360].find((s) => b.minutes / s <= 8) ?? 360;
  const bw = pw / b.minutes;
  for (let i = 0; i < b.minutes; i++) {
    const t = b.start + i * 60000;
    const minuteOfDay = new Date(t).getHours() * 60 + new Date(t).getMinutes();
    if (minuteOfDay % step === 0) {
      const x = m.l + i * bw;
      svg.append(el("line", { class: "grid", x1: x, x2: x, y1: m.t, y2: m.t + ph }));
      svg.append(el("text", { x, y: H - 8, "text-anchor": "middle" }, hhmm(t)));
    }
  }
  const bars = el("g", { "data-testid": "bars" });
  for (let i = 0; i < b.minutes; i++) {
    let y = m.t + ph;
    for (const [outcome, color] of OUTCOMES) {
      const n = b.counts[i][outcome];
      if (!n) continue;
      const h = (n / max) * ph;
      y -= h;
      const rect = el("rect", {
        x: (m.l + i * bw + bw * 0.1).toFixed(2), y: y.toFixed(2), width: Math.max(1, bw * 0.8).toFixed(2), height: Math.max(1, h).toFixed(2),
        fill: color, "data-outcome": outcome, "data-count": n, "data-minute": new Date(b.start + i * 60000).toISOString(),
      });
      rect.append(el("title", {}, `${hhmm(b.start + i * 60000)} · ${outcome}: ${n}`));
      bars.append(rect);
    }
  }
  svg.append(bars);
  wrap.append(svg);

  const legend = $("legend");
  legend.textContent = "";
  for (const [outcome, color] of OUTCOMES) {
    const n = b.counts.reduce((a, c) => a + (c[outcome] ?? 0), 0);
    const li = document.createElement("li");
    li.dataset.outcome = outcome;
    li.dataset.count = String(n);
    const sw = document.createElement("span");
    sw.className = "sw";
    sw.style.background = color;
    const count = document.createElement("b");
    count.textContent = String(n);
    li.append(sw, `${outcome} `, count);
    legend.append(li);
  }
  const total = totals.reduce((a, n) => a + n, 0);
  $("chart-note").textContent = b.failed
    ? "The chart could not be loaded."
    : `${total} events from ${hhmm(b.start)} to now${b.capped ? ` (only the newest ${SCAN_PAGES * PAGE_MAX} are drawn)` : ""}${filters().subject || filters().scope ? "; subject and scope filters applied" : ""}.`;
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(renderChart, 150);
});

// ---- wiring -------------------------------------------------------------------------

function showAuth() {
  $("auth-summary").textContent = state.bearer ? "Session: pasted token" : "Session: cookie";
}

$("auth-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = $("bearer").value.trim();
  state.bearer = v || null;
  if (v) sessionStorage.setItem("token-vendor-ops-bearer", v);
  $("bearer").value = "";
  showAuth();
  reload();
});

$("bearer-clear").addEventListener("click", () => {
  state.bearer = null;
  sessionStorage.removeItem("token-vendor-ops-bearer");
  showAuth();
  reload();
});

for (const [outcome] of OUTCOMES) {
  const o = document.createElement("option");
  o.value = outcome;
  o.textContent = outcome;
  $("filters").elements.outcome.append(o);
}

$("filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  saveToUrl();
  reload();
});
$("filters").addEventListener("reset", () => setTimeout(() => { saveToUrl(); reload(); }));
$("fp-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  findFingerprint();
});
$("fp-clear").addEventListener("click", () => {
  $("fingerprint").value = "";
  findFingerprint();
});
$("window").addEventListener("change", () => { saveToUrl(); loadChart(); });
$("refresh").addEventListener("click", reload);
$("more").addEventListener("click", () => loadEvents({ append: true }));

// ---- trail ---------------------------------------------------------------------------

function trailLine(id, text, kind) {
  const dd = $(id);
  dd.textContent = text;
  dd.className = kind ?? "";
}

async function loadTrail() {
  let t;
  try {
    t = await fetchTrail();
  } catch (e) {
    const text = e instanceof ApiError && e.problem?.detail ? e.problem.detail : `unknown (HTTP ${e.status ?? "?"})`;
    for (const id of ["trail-verified", "trail-checkpoint", "trail-finding", "trail-conflict"]) trailLine(id, text);
    return;
  }
  trailLine(
    "trail-verified",
    t.verified_at ? `#${t.verified_seq} of chain ${t.chain_id} at ${timeText(t.verified_at)}` : "nothing verified yet",
    t.verified_at ? "good" : "",
  );
  trailLine(
    "trail-checkpoint",
    t.checkpoint_at ? `#${t.checkpoint_seq} of chain ${t.checkpoint_chain_id} at ${timeText(t.checkpoint_at)}` : "none signed yet",
  );
  trailLine("trail-finding", t.finding ? `${timeText(t.finding_at)}: ${t.finding}` : "none", t.finding ? "bad" : "good");
  trailLine("trail-conflict", t.conflict ? `${timeText(t.conflict_at)}: ${t.conflict}` : "none", t.conflict ? "bad" : "good");
}

async function reload() {
  await Promise.all([loadEvents(), loadChart(), loadTrail()]);
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded ?? 0) + 1);
}

loadFromUrl();
showAuth();
await reload();
