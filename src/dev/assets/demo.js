// The dev demo: sign in, get a token through the JS client, open the speech stand-in's
// WebSocket with it (the client's reconnecting socket), and show each step, the countdown,
// the automatic refresh and a reconnect with a fresh token.
import { connectSpeechSocket, createTokenSource, TokenVendorError, NetworkError } from "/client/token-vendor.js";

const $ = (id) => document.getElementById(id);
const cfg = await (await fetch("/dev/demo-config", { cache: "no-store" })).json();

const state = {
  source: null,
  socket: null,
  token: null,
  deadline: 0,
  tokens: 0,
  refreshes: 0,
  frames: 0,
  running: false,
  stopping: false,
  reconnects: 0,
  refreshing: false,
  audioTimer: null,
  tickTimer: null,
};

// ---- step log -----------------------------------------------------------------------

const ICONS = { ok: "✓", info: "•", refresh: "↻", fail: "✗" };

/** Appends a step; parts are strings or {code} (shown monospaced). Never uses innerHTML. */
function step(kind, ...parts) {
  const li = document.createElement("li");
  li.className = kind;
  li.dataset.kind = kind;
  const t = document.createElement("span");
  t.className = "t";
  t.textContent = new Date().toLocaleTimeString([], { hour12: false });
  const i = document.createElement("span");
  i.className = "i";
  i.textContent = ICONS[kind] ?? "•";
  const m = document.createElement("span");
  m.className = "m";
  for (const part of parts) {
    if (part && typeof part === "object") {
      const c = document.createElement("code");
      c.textContent = part.code;
      m.append(c);
    } else {
      m.append(String(part));
    }
  }
  li.append(t, i, m);
  $("steps").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function describeError(e) {
  if (e instanceof NetworkError) {
    return ["no response from token-vendor (", { code: e.name }, "): blocked by CORS, or the service is down"];
  }
  if (e instanceof TokenVendorError) {
    const p = e.problem ?? {};
    const parts = [{ code: `${e.name} · HTTP ${e.status ?? "?"}` }, " ", p.title ?? "", p.detail ? ` — ${p.detail}` : ""];
    if (e.requestId) parts.push(" (request id ", { code: e.requestId }, ")");
    return parts;
  }
  return [String(e?.message ?? e)];
}

// ---- sign-in ------------------------------------------------------------------------

for (const u of cfg.users) {
  const o = document.createElement("option");
  o.value = u.subject;
  o.textContent = u.label;
  $("user").append(o);
}

function showWho(s) {
  const who = $("who");
  if (s.signedIn) {
    const scopes = s.cortiScopes ? s.cortiScopes.join(" ") : "any";
    who.textContent = `Signed in as ${s.subject} (scopes: ${scopes}${s.roles?.length ? `; roles: ${s.roles.join(", ")}` : ""})`;
    who.className = "status ok";
  } else {
    who.textContent = "Not signed in.";
    who.className = "status";
  }
}

async function postJson(url, body) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
  return { ok: res.ok, body: await res.json().catch(() => ({})) };
}

$("sign-in").addEventListener("click", async () => {
  const { ok, body } = await postJson("/dev/sign-in", { subject: $("user").value });
  if (!ok) {
    step("fail", "Sign-in failed: ", body.detail ?? "unknown error");
    return;
  }
  showWho(body);
  step("ok", "Signed in as ", { code: body.subject }, ": the session cookie is set (HttpOnly, SameSite=Lax)");
});

$("sign-out").addEventListener("click", async () => {
  await stop("signed out");
  await postJson("/dev/sign-out");
  showWho({ signedIn: false });
  step("info", "Signed out: the session cookie is cleared");
});

showWho(await (await fetch("/dev/session", { cache: "no-store" })).json());

// ---- token and countdown ------------------------------------------------------------

function decodeClaims(jwt) {
  try {
    const b64 = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(b64.padEnd(b64.length + ((4 - (b64.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

function fmt(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** Asks the JS client for a token (it answers from its cache while more than the margin is left). */
async function currentToken() {
  const before = state.token;
  const leftBefore = state.deadline - Date.now();
  const t = await state.source.getToken();
  if (!before || t.accessToken !== before.accessToken) {
    state.tokens += 1;
    state.token = t;
    state.deadline = Date.now() + t.expiresIn * 1000;
    if (before) {
      state.refreshes += 1;
      const li = step("refresh", `The JS client refreshed the token ${Math.max(0, Math.round(leftBefore / 1000))} s before the old one expired; new one valid ${t.expiresIn} s`);
      li.dataset.leftMs = String(Math.round(leftBefore));
    } else {
      step("ok", "token-vendor issued a token: scope ", { code: t.scope }, `, valid ${t.expiresIn} s`);
    }
    const claims = decodeClaims(t.accessToken);
    $("t-scope").textContent = t.scope;
    $("t-claims").textContent = claims?.scope ?? "—";
    $("t-expires").textContent = new Date(state.deadline).toLocaleTimeString([], { hour12: false });
    $("t-count").textContent = String(state.tokens);
    $("t-refreshes").textContent = String(state.refreshes);
  }
  return t;
}

function renderCountdown() {
  const big = $("remaining");
  if (!state.token) {
    big.textContent = "—";
    big.className = "big";
    $("bar-fill").style.width = "0";
    return;
  }
  const left = state.deadline - Date.now();
  const lifetime = Math.max(cfg.tokenLifetimeSeconds, state.token.expiresIn) * 1000;
  big.textContent = left > 0 ? `expires in ${fmt(left)}` : "expired";
  big.className = left <= 0 ? "big expired" : left <= cfg.refreshMarginSeconds * 1000 ? "big soon" : "big";
  $("bar-fill").style.width = `${Math.max(0, Math.min(100, (left / lifetime) * 100))}%`;
  $("bar-margin").style.left = `${Math.min(100, ((cfg.refreshMarginSeconds * 1000) / lifetime) * 100)}%`;
  $("refresh-note").textContent = `The JS client fetches a fresh token when ${cfg.refreshMarginSeconds} s or less are left (its refresh margin).`;
}

async function tick() {
  renderCountdown();
  // Relay mode: token-vendor holds the token; the page has none to refresh.
  if (!state.running || state.refreshing || state.relay) return;
  state.refreshing = true;
  try {
    await currentToken();
  } catch (e) {
    step("fail", "Refreshing the token failed: ", ...describeError(e));
  } finally {
    state.refreshing = false;
    renderCountdown();
  }
}

// ---- the WebSocket ------------------------------------------------------------------

const AUDIO_CHUNK = (() => {
  // 250 ms of a quiet 440 Hz tone, 16 kHz mono PCM16: a stand-in for microphone audio.
  const samples = 4000;
  const pcm = new Int16Array(samples);
  for (let i = 0; i < samples; i++) pcm[i] = Math.round(3000 * Math.sin((2 * Math.PI * 440 * i) / 16000));
  return pcm.buffer;
})();

function configFor(endpoint) {
  if (endpoint === "streams") {
    return {
      type: "config",
      configuration: {
        transcription: { primaryLanguage: "en", isDiarization: false, isMultichannel: false, participants: [{ channel: 0, role: "multiple" }] },
        mode: { type: "facts", outputLocale: "en" },
      },
    };
  }
  return { type: "config", configuration: { primaryLanguage: "en", automaticPunctuation: true } };
}

function wsState(text, cls = "") {
  const el = $("ws-state");
  el.textContent = text;
  el.className = `pill ${cls}`;
}

function redact(url) {
  return url.replace(/token=[^&]*/, "token=Bearer%20…");
}

function startAudio() {
  stopAudio();
  state.audioTimer = setInterval(() => {
    if (!state.socket?.send(AUDIO_CHUNK)) return;
    state.frames += 1;
    $("frames").textContent = `${state.frames} audio frames sent`;
  }, 250);
}

function stopAudio() {
  if (state.audioTimer) clearInterval(state.audioTimer);
  state.audioTimer = null;
}

function addTranscript(text) {
  const box = $("transcript");
  if (box.querySelector(".hint")) box.textContent = "";
  const p = document.createElement("p");
  p.dataset.at = String(Date.now());
  const ts = document.createElement("span");
  ts.className = "ts";
  ts.textContent = new Date().toLocaleTimeString([], { hour12: false });
  p.append(ts, text);
  box.append(p);
  box.scrollTop = box.scrollHeight;
}

function onMessage(msg) {
  switch (msg?.type) {
    case "transcript": {
      const items = Array.isArray(msg.data) ? msg.data.map((d) => d.transcript) : [msg.data?.text];
      for (const text of items) if (text) addTranscript(text);
      break;
    }
    case "CONFIG_DENIED":
    case "CONFIG_TIMEOUT":
    case "CONFIG_NOT_PROVIDED":
      step("fail", "The speech API answered ", { code: msg.type }, msg.reason ? `: ${msg.reason}` : "");
      break;
    case "ENDED":
      step("info", "The speech API answered ", { code: "ENDED" });
      break;
    default:
      break;
  }
}

/** Opens the socket through the JS client's reconnecting helper. */
async function connect(endpoint, mode) {
  const relay = mode === "relay";
  // Relay mode: token-vendor holds the Corti token; the page's session cookie is enough.
  const token = relay ? null : await currentToken();
  const socket = connectSpeechSocket({
    ...(relay ? { relay: { url: location.origin } } : { tokens: state.source }),
    endpoint,
    interactionId: endpoint === "streams" ? crypto.randomUUID() : undefined,
    configuration: configFor(endpoint).configuration,
    onConnecting: ({ url, attempt }) => {
      step("info", attempt > 1 ? "Reconnecting: opening the WebSocket " : "Opening the WebSocket ", { code: redact(url) });
      wsState(attempt > 1 ? "reconnecting" : "connecting");
    },
    onStateChange: (s) => {
      if (s === "configuring") {
        step("ok", "WebSocket open; sending ", { code: '{"type":"config",…}' });
        wsState("configuring");
      }
    },
    onOpen: ({ reconnected, token: used }) => {
      const li = step("ok", "The speech API answered ", { code: "CONFIG_ACCEPTED" },
        reconnected
          ? (used ? `: streaming again (reconnected with a token valid ${used.expiresIn} s more)` : ": streaming again through the relay")
          : ": streaming audio");
      if (reconnected) {
        li.dataset.kind = "reconnected";
        state.reconnects += 1;
      }
      wsState("open", "open");
      startAudio();
    },
    onMessage,
    onReconnecting: ({ code, reason, delayMs, attempt }) => {
      stopAudio();
      const li = step("info", `WebSocket closed unexpectedly (${code ?? "no socket"}${reason ? ` ${reason}` : ""}); the JS client reconnects in ${delayMs} ms with a fresh token (attempt ${attempt})`);
      li.dataset.kind = "reconnecting";
      wsState("reconnecting");
    },
    onClose: ({ code, reason, error }) => {
      if (state.socket !== socket) return;
      stopAudio();
      state.socket = null;
      if (error && relay && /handshake/.test(error.message)) {
        step("fail", "token-vendor refused the relay upgrade (the audit log says why)");
        wsState("refused", "refused");
      } else if (error && /handshake/.test(error.message)) {
        const needed = endpoint === "streams" ? "streams" : "transcribe";
        const has = token.scope.split(" ").includes(needed);
        step(
          "fail",
          "The speech API refused the WebSocket handshake",
          has ? "" : ": the token's scope ",
          has ? " (401: the token was not accepted)" : { code: token.scope },
          has ? "" : " does not include ",
          has ? "" : { code: needed },
          has ? "" : " (it answers 403)",
        );
        wsState("refused", "refused");
      } else if (error) {
        step("fail", "The WebSocket stopped: ", ...describeError(error));
        wsState("closed");
      } else {
        step("info", `WebSocket closed (${code}${reason ? ` ${reason}` : ""})`);
        wsState("closed");
      }
      finish();
    },
  });
  state.socket = socket;
}

function onStartError(e) {
  step("fail", "token-vendor refused: ", ...describeError(e));
  wsState("refused", "refused");
  finish();
}

function finish() {
  state.running = false;
  stopAudio();
  $("start").disabled = false;
  $("stop").disabled = true;
  $("drop").disabled = true;
}

async function stop(why) {
  if (!state.running && !state.socket) return;
  state.stopping = true;
  state.running = false;
  stopAudio();
  const socket = state.socket;
  if (socket) {
    socket.end();
    await Promise.race([socket.closed, new Promise((r) => setTimeout(r, 1500))]);
    socket.close(1000, why);
    await socket.closed;
  }
  state.socket = null;
  state.source?.clear();
  state.token = null;
  renderCountdown();
  finish();
  state.stopping = false;
}

$("drop").addEventListener("click", async () => {
  // The stand-in's own endpoint (no CORS): the page cannot read the answer, only see the drop.
  const base = cfg.apiBaseUrl.replace(/^ws/, "http");
  step("info", "Asking the speech stand-in to drop its connections");
  await fetch(`${base}/dev/drop-connections`, { method: "POST", mode: "no-cors" }).catch(() => {});
});

$("start").addEventListener("click", async () => {
  await stop("restart");
  const scope = $("scope").value;
  const endpoint = $("endpoint").value;
  const mode = $("mode").value;
  state.relay = mode === "relay";
  state.source = createTokenSource({
    url: cfg.tokenUrl,
    scope,
    credentials: "include",
    refreshMarginSeconds: cfg.refreshMarginSeconds,
    wsBaseUrl: cfg.apiBaseUrl,
  });
  state.running = true;
  state.frames = 0;
  $("frames").textContent = "0 audio frames sent";
  $("start").disabled = true;
  $("stop").disabled = false;
  $("drop").disabled = false;
  if (mode === "relay") {
    step("info", "Relay mode: the page fetches no token; token-vendor opens Corti's socket");
  } else {
    step("info", "Asking token-vendor (", { code: `POST ${cfg.tokenUrl}` }, ") for scope ", { code: scope });
  }
  try {
    await connect(endpoint, mode);
  } catch (e) {
    onStartError(e);
  }
});

$("stop").addEventListener("click", () => stop("stopped by the user").then(() => step("info", "Stopped")));

state.tickTimer = setInterval(tick, 1000);
renderCountdown();
document.body.dataset.ready = "true";
