// @token-vendor/client — fetch, cache and refresh limited-scope Corti tokens
// from a token-vendor service. Dependency-free ES module (browsers, bundlers, Node >= 18).

/** Base class of every error this module throws. */
export class TokenVendorError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number|null, problem?: object|null, requestId?: string|null, cause?: unknown}} [info]
   */
  constructor(message, info = {}) {
    super(message, info.cause === undefined ? undefined : { cause: info.cause });
    /** HTTP status, or null when no response was received. */
    this.status = info.status ?? null;
    /** Parsed RFC 9457 problem+json body (type, title, status, detail, request_id), or null. */
    this.problem = info.problem ?? null;
    /** The service's request id (problem `request_id` or `X-Request-Id`), for support tickets. */
    this.requestId = info.requestId ?? null;
  }
}
/** 401: no or invalid session. The user must sign in again; never retried. */
export class UnauthenticatedError extends TokenVendorError {}
/** 403: origin or scope not allowed for this user; never retried. */
export class ForbiddenError extends TokenVendorError {}
/** 429: rate limited (after at most one retry). */
export class RateLimitedError extends TokenVendorError {
  constructor(message, info = {}) {
    super(message, info);
    /** Seconds the service asked to wait (`Retry-After`), or null when it did not say. */
    this.retryAfterSeconds = info.retryAfterSeconds ?? null;
  }
}
/** 502/503/504: the service or Corti is unavailable (503 is retried once). */
export class UnavailableError extends TokenVendorError {
  constructor(message, info = {}) {
    super(message, info);
    /** Seconds the service asked to wait (`Retry-After`), or null when it did not say. */
    this.retryAfterSeconds = info.retryAfterSeconds ?? null;
  }
}
/** The request never produced an HTTP response (offline, DNS, CORS refusal, aborted…). */
export class NetworkError extends TokenVendorError {}
/** A 2xx response whose body is not a usable token (no `accessToken` / `expiresIn`). */
export class InvalidResponseError extends TokenVendorError {}
/** The speech socket could not be (re)opened or was refused; see `code` and `reason`. */
export class SocketError extends TokenVendorError {
  constructor(message, info = {}) {
    super(message, info);
    /** WebSocket close code, or null. */
    this.code = info.code ?? null;
    /** Close reason, or the rejecting message type (e.g. `CONFIG_DENIED`), or null. */
    this.reason = info.reason ?? null;
  }
}

// Explicit names survive minifiers that rename classes.
for (const [C, name] of /** @type {Array<[Function, string]>} */ ([
  [TokenVendorError, "TokenVendorError"], [UnauthenticatedError, "UnauthenticatedError"],
  [ForbiddenError, "ForbiddenError"], [RateLimitedError, "RateLimitedError"],
  [UnavailableError, "UnavailableError"], [NetworkError, "NetworkError"],
  [InvalidResponseError, "InvalidResponseError"], [SocketError, "SocketError"],
])) Object.defineProperty(C.prototype, "name", { value: name, writable: true, configurable: true });

const DEFAULT_RETRY_AFTER_SECONDS = 1;

const defaultSleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Parse a `Retry-After` header (delay-seconds or HTTP-date) into whole seconds.
 * @param {string|null} value
 * @returns {number|null}
 */
function parseRetryAfter(value) {
  if (value == null) return null;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v);
  const at = Date.parse(v);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

/** Parse an error body; keep it only when it is a JSON object (never raw text/HTML). */
function parseProblem(text) {
  try {
    const body = JSON.parse(text);
    return body && typeof body === "object" && !Array.isArray(body) ? body : null;
  } catch {
    return null;
  }
}

/** Build the typed error for a non-2xx response. */
function errorFor(res, problem, retryAfterSeconds) {
  const status = res.status;
  const requestId =
    (problem && typeof problem.request_id === "string" && problem.request_id) ||
    res.headers.get("x-request-id") ||
    null;
  const what = problem && (problem.detail || problem.title);
  const message = `token-vendor: HTTP ${status}${what ? `: ${what}` : ""}`;
  const info = { status, problem, requestId, retryAfterSeconds };
  if (status === 401) return new UnauthenticatedError(message, info);
  if (status === 403) return new ForbiddenError(message, info);
  if (status === 429) return new RateLimitedError(message, info);
  if (status === 502 || status === 503 || status === 504) return new UnavailableError(message, info);
  return new TokenVendorError(message, info);
}

/** Validate a 2xx body; returns the token object or throws InvalidResponseError. */
function parseToken(res, text) {
  const requestId = res.headers.get("x-request-id") || null;
  let body;
  try {
    body = JSON.parse(text);
  } catch (cause) {
    throw new InvalidResponseError("token-vendor: response is not JSON", { status: res.status, requestId, cause });
  }
  if (
    !body || typeof body !== "object" ||
    typeof body.accessToken !== "string" || body.accessToken === "" ||
    typeof body.expiresIn !== "number" || !Number.isFinite(body.expiresIn) || body.expiresIn <= 0
  ) {
    throw new InvalidResponseError("token-vendor: response lacks accessToken/expiresIn", { status: res.status, requestId });
  }
  return body;
}

/**
 * Create a token source bound to one token-vendor endpoint and one scope.
 *
 * @param {import("./index.js").TokenSourceOptions} options
 * @returns {import("./index.js").TokenSource}
 */
export function createTokenSource(options) {
  const {
    url,
    scope = "transcribe",
    credentials = "include",
    headers,
    refreshMarginSeconds = 30,
    maxRetryAfterSeconds = 10,
    timeoutSeconds = 15,
    wsBaseUrl,
    sleep = defaultSleep,
    now = Date.now,
  } = options ?? {};
  // Keep fetch in a local: calling window.fetch as a method of another object throws "Illegal invocation".
  const doFetch = options?.fetch ?? globalThis.fetch;
  if (!url) throw new TypeError("createTokenSource: `url` is required");
  if (typeof doFetch !== "function") throw new TypeError("createTokenSource: no `fetch` available; pass one");
  const scopeString = Array.isArray(scope) ? scope.join(" ") : String(scope);
  const marginMs = refreshMarginSeconds * 1000;

  let cached = null; // { token, deadline } — deadline = our clock + expiresIn (server clock unused)
  let inflight = null; // shared promise of the fetch in progress
  let generation = 0; // bumped by clear(): a fetch started before clear() must not refill the cache

  /** One POST, bounded by timeoutSeconds (headers and body). Resolves { res, text }. */
  async function requestOnce() {
    const userHeaders = typeof headers === "function" ? await headers() : headers;
    const h = new Headers(userHeaders ?? undefined);
    h.set("Content-Type", "application/json");
    if (!h.has("Accept")) h.set("Accept", "application/json, application/problem+json");
    const controller = typeof AbortController === "function" ? new AbortController() : null;
    let timedOut = false;
    const timer = controller && timeoutSeconds > 0
      ? setTimeout(() => { timedOut = true; controller.abort(); }, timeoutSeconds * 1000)
      : null;
    try {
      const res = await doFetch(url, {
        method: "POST",
        headers: h,
        body: JSON.stringify({ scope: scopeString }),
        credentials,
        cache: "no-store",
        signal: controller?.signal,
      });
      return { res, text: await res.text() };
    } catch (cause) {
      const why = timedOut ? `timed out after ${timeoutSeconds}s` : `failed: ${cause?.message ?? cause}`;
      throw new NetworkError(`token-vendor: request ${why}`, { cause });
    } finally {
      if (timer !== null) clearTimeout(timer);
    }
  }

  /** Fetch a token; on 429/503 wait Retry-After (bounded) and retry exactly once. */
  async function fetchToken() {
    for (let attempt = 0; ; attempt++) {
      // The deadline counts from when the request was sent: expiresIn is "seconds left when
      // sent", so this errs early by the round-trip time, never late. Our clock only.
      const sentAt = now();
      const { res, text } = await requestOnce();
      if (res.ok) return { token: parseToken(res, text), startedAt: sentAt };
      const retryAfter = parseRetryAfter(res.headers.get("retry-after"));
      const err = errorFor(res, parseProblem(text), retryAfter);
      const retryable = res.status === 429 || res.status === 503;
      const wait = retryAfter ?? DEFAULT_RETRY_AFTER_SECONDS;
      if (!retryable || attempt > 0 || wait > maxRetryAfterSeconds) throw err;
      await sleep(wait * 1000);
    }
  }

  function isFresh(entry) {
    return entry !== null && entry.deadline - now() > marginMs;
  }

  /**
   * Resolve a token with more than `refreshMarginSeconds` left: the cached one, or a
   * freshly fetched one. Concurrent callers share one request. Returns a copy.
   * @returns {Promise<import("./index.js").TokenResponse>}
   */
  /** A copy whose expiresIn is what is left now (the Corti SDK counts from when it gets it). */
  function copyOf(entry) {
    const left = Math.floor((entry.deadline - now()) / 1000);
    return { ...entry.token, expiresIn: Math.max(1, Math.min(entry.token.expiresIn, left)) };
  }

  function getToken() {
    if (isFresh(cached)) return Promise.resolve(copyOf(cached));
    if (!inflight) {
      const gen = generation;
      const p = fetchToken()
        .then(({ token, startedAt }) => {
          const entry = { token, deadline: startedAt + token.expiresIn * 1000 };
          if (gen === generation) cached = entry;
          return entry;
        })
        .finally(() => {
          if (inflight === p) inflight = null;
        });
      inflight = p;
    }
    return inflight.then(copyOf);
  }

  function wsBase(token) {
    if (wsBaseUrl) return String(wsBaseUrl).replace(/\/+$/, "");
    const env = token.environment;
    if (typeof env !== "string" || !/^[a-z0-9-]+$/i.test(env)) {
      throw new InvalidResponseError("token-vendor: token response lacks a valid environment");
    }
    return `wss://api.${env.toLowerCase()}.corti.app`;
  }

  function query(token) {
    if (typeof token.tenantName !== "string" || token.tenantName === "") {
      throw new InvalidResponseError("token-vendor: token response lacks tenantName");
    }
    return `tenant-name=${encodeURIComponent(token.tenantName)}&token=${encodeURIComponent(`Bearer ${token.accessToken}`)}`;
  }

  /**
   * WebSocket URL for live transcription (`/audio-bridge/v2/transcribe`), with a fresh token
   * (or the token body given).
   * @param {object} [token]
   * @returns {Promise<string>}
   */
  async function transcribeUrl(token) {
    token ??= await getToken();
    return `${wsBase(token)}/audio-bridge/v2/transcribe?${query(token)}`;
  }

  /**
   * WebSocket URL for an interaction's stream (`/audio-bridge/v2/interactions/{id}/streams`).
   * @param {string} interactionId
   * @param {object} [token] the token body to use instead of a fresh one
   * @returns {Promise<string>}
   */
  async function streamsUrl(interactionId, token) {
    if (interactionId == null || String(interactionId) === "") {
      throw new TypeError("streamsUrl: `interactionId` is required");
    }
    token ??= await getToken();
    const id = encodeURIComponent(String(interactionId));
    return `${wsBase(token)}/audio-bridge/v2/interactions/${id}/streams?${query(token)}`;
  }

  /** Drop the cached token (e.g. on sign-out). A fetch already in flight will not refill the cache. */
  function clear() {
    cached = null;
    inflight = null;
    generation++;
  }

  return {
    getToken,
    // Same semantics as getToken (cached while more than the margin is left); a separate
    // closure, so it can be passed detached: new CortiClient({ auth: { refreshAccessToken } }).
    refreshAccessToken: () => getToken(),
    transcribeUrl,
    streamsUrl,
    clear,
  };
}

// ---- reconnecting speech socket -------------------------------------------------------

/** Close codes after which reconnecting cannot help: normal end, and policy (config refused). */
const FINAL_CLOSE_CODES = new Set([1000, 1008]);
const CONFIG_OK = new Set(["CONFIG_ACCEPTED", "CONFIG_ALREADY_RECEIVED"]);
const CONFIG_REFUSED = new Set(["CONFIG_DENIED", "CONFIG_TIMEOUT", "CONFIG_MISSING", "CONFIG_NOT_PROVIDED"]);

/**
 * Open a Corti speech WebSocket (`transcribe`, or an interaction's `streams`) that, when
 * an established stream closes abnormally, gets a token again through `tokens` (a fresh
 * one if the first has expired) and reconnects with backoff, re-sending the config.
 * It stops for good on a normal close (1000), on a refused config, after `close()`, on
 * 401/403 from token-vendor, or after `maxAttempts` failed reconnects in a row.
 *
 * @param {import("./index.js").SpeechSocketOptions} options
 * @returns {import("./index.js").SpeechSocket}
 */
export function connectSpeechSocket(options) {
  const {
    tokens,
    relay,
    endpoint = "transcribe",
    interactionId,
    configuration,
    maxAttempts = 8,
    initialDelayMs = 500,
    maxDelayMs = 15000,
    sleep = defaultSleep,
    random = Math.random,
    onStateChange,
    onConnecting,
    onOpen,
    onMessage,
    onReconnecting,
    onClose,
  } = options ?? {};
  const WS = options?.WebSocket ?? globalThis.WebSocket;
  if (relay != null && (typeof relay !== "object" || typeof relay.url !== "string" || relay.url === "")) {
    throw new TypeError("connectSpeechSocket: `relay.url` (token-vendor's base URL) is required in relay mode");
  }
  if (!relay && (!tokens || typeof tokens.getToken !== "function")) {
    throw new TypeError("connectSpeechSocket: `tokens` (from createTokenSource) or `relay` is required");
  }
  if (endpoint !== "transcribe" && endpoint !== "streams") {
    throw new TypeError('connectSpeechSocket: `endpoint` must be "transcribe" or "streams"');
  }
  if (endpoint === "streams" && (interactionId == null || String(interactionId) === "")) {
    throw new TypeError("connectSpeechSocket: `interactionId` is required for streams");
  }
  if (configuration == null || typeof configuration !== "object") {
    throw new TypeError("connectSpeechSocket: `configuration` is required");
  }
  if (typeof WS !== "function") throw new TypeError("connectSpeechSocket: no `WebSocket` available; pass one");

  let state = "connecting"; // connecting | configuring | open | reconnecting | closed
  let ws = null;
  let stopped = false;
  let everAccepted = false;
  let failures = 0; // failed (re)connects in a row
  let connects = 0;
  let resolveClosed;
  const closed = new Promise((resolve) => { resolveClosed = resolve; });

  const call = (fn, arg) => {
    if (typeof fn !== "function") return;
    try {
      fn(arg);
    } catch (e) {
      // A throwing handler must not break the socket's bookkeeping.
      setTimeout(() => { throw e; });
    }
  };
  function setState(next) {
    if (state === next) return;
    state = next;
    call(onStateChange, next);
  }
  function finish(info) {
    if (state === "closed") return;
    stopped = true;
    setState("closed");
    call(onClose, info);
    resolveClosed(info);
  }

  // The URL is built from the token already fetched: a second getToken() could cross a
  // refresh and report one token while connecting with another.
  function url(token) {
    if (relay) return relayUrl(relay, endpoint, interactionId);
    return endpoint === "streams" ? tokens.streamsUrl(interactionId, token) : tokens.transcribeUrl(token);
  }

  /** One connection attempt; resolves when it has closed (or could not start). */
  async function attempt() {
    let target;
    let token;
    try {
      // Relay mode: token-vendor holds the Corti token; the browser fetches none.
      token = relay ? null : await tokens.getToken();
      target = await url(token);
    } catch (error) {
      return { tokenError: error };
    }
    if (stopped) return { stopped: true };
    connects += 1;
    const n = connects;
    return new Promise((resolve) => {
      let opened = false;
      let accepted = false;
      let refused = null;
      setState("connecting");
      call(onConnecting, { attempt: n, token, url: target });
      const socket = relay?.protocols ? new WS(target, relay.protocols) : new WS(target);
      socket.binaryType = "arraybuffer";
      ws = socket;
      socket.onopen = () => {
        opened = true;
        setState("configuring");
        socket.send(JSON.stringify({ type: "config", configuration }));
      };
      socket.onmessage = (ev) => {
        let msg = ev.data;
        if (typeof ev.data === "string") {
          try {
            msg = JSON.parse(ev.data);
          } catch {
            msg = ev.data;
          }
        }
        const type = msg && typeof msg === "object" ? msg.type : undefined;
        if (!accepted && CONFIG_OK.has(type)) {
          accepted = true;
          everAccepted = true;
          failures = 0;
          setState("open");
          call(onOpen, { attempt: n, reconnected: n > 1, token, url: target });
        } else if (!accepted && CONFIG_REFUSED.has(type)) {
          refused = msg;
        }
        call(onMessage, msg);
      };
      socket.onerror = () => {}; // the close event that follows says what happened
      socket.onclose = (ev) => {
        if (ws === socket) ws = null;
        resolve({ opened, accepted, refused, code: ev.code, reason: ev.reason || "" });
      };
    });
  }

  async function run() {
    for (;;) {
      const r = await attempt();
      if (stopped || r.stopped) return finish({ code: 1000, reason: "closed by the client", error: null });
      if (r.tokenError) {
        const err = r.tokenError;
        if (err instanceof UnauthenticatedError || err instanceof ForbiddenError || !everAccepted) {
          return finish({ code: null, reason: "no token", error: err });
        }
      } else if (r.refused) {
        const type = r.refused.type;
        return finish({
          code: r.code, reason: type,
          error: new SocketError(`speech socket: ${type}${r.refused.reason ? `: ${r.refused.reason}` : ""}`, { code: r.code, reason: type }),
        });
      } else if (FINAL_CLOSE_CODES.has(r.code)) {
        const error = r.code === 1000 ? null : new SocketError(`speech socket closed (${r.code} ${r.reason})`, { code: r.code, reason: r.reason });
        return finish({ code: r.code, reason: r.reason, error });
      } else if (!everAccepted) {
        // The very first connection never got going (handshake refused, bad token scope,
        // wrong URL): retrying would hide the reason.
        const why = r.opened ? `closed before CONFIG_ACCEPTED (${r.code})` : "the WebSocket handshake was refused";
        return finish({ code: r.code, reason: r.reason, error: new SocketError(`speech socket: ${why}`, { code: r.code, reason: r.reason }) });
      }
      if (!r.accepted) failures += 1;
      if (failures >= maxAttempts) {
        return finish({
          code: r.code ?? null, reason: r.reason ?? "",
          error: r.tokenError ?? new SocketError(`speech socket: ${failures} reconnects failed`, { code: r.code, reason: r.reason }),
        });
      }
      // Full jitter on an exponential ladder, so many clients do not return at once.
      const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.max(0, failures));
      const delayMs = Math.round(ceiling / 2 + (random() * ceiling) / 2);
      setState("reconnecting");
      call(onReconnecting, { attempt: failures + 1, delayMs, code: r.code ?? null, reason: r.reason ?? "", error: r.tokenError ?? null });
      await sleep(delayMs);
      if (stopped) return finish({ code: 1000, reason: "closed by the client", error: null });
    }
  }
  run();

  return {
    get state() { return state; },
    /** Sends audio (or a JSON-able object) while the stream is open; false otherwise. */
    send(data) {
      if (state !== "open" || !ws || ws.readyState !== 1) return false;
      ws.send(typeof data === "string" || data instanceof ArrayBuffer || ArrayBuffer.isView(data) || (typeof Blob !== "undefined" && data instanceof Blob)
        ? data : JSON.stringify(data));
      return true;
    },
    /** Asks the server to finish (`{"type":"end"}`); it answers ENDED and closes with 1000. */
    end() {
      if (ws && ws.readyState === 1) ws.send(JSON.stringify({ type: "end" }));
      else this.close();
    },
    /** Closes now and never reconnects. */
    close(code = 1000, reason = "closed by the client") {
      stopped = true;
      const socket = ws;
      if (socket && (socket.readyState === 0 || socket.readyState === 1)) socket.close(code, reason);
      else if (state === "reconnecting" || !socket) finish({ code, reason, error: null });
    },
    /** Resolves once the socket is closed for good, with { code, reason, error }. */
    closed,
  };
}

/**
 * token-vendor's relay endpoint for `endpoint`: `/v1/relay/transcribe` or
 * `/v1/relay/streams/{interactionId}`, with `?tenant=` when `relay.tenant` is set.
 * An `http(s)` base becomes `ws(s)`.
 */
export function relayUrl(relay, endpoint = "transcribe", interactionId) {
  const base = String(relay.url).replace(/\/+$/, "").replace(/^http(s?):\/\//i, "ws$1://");
  const path = endpoint === "streams"
    ? `/v1/relay/streams/${encodeURIComponent(String(interactionId))}`
    : "/v1/relay/transcribe";
  const query = relay.tenant ? `?tenant=${encodeURIComponent(relay.tenant)}` : "";
  return `${base}${path}${query}`;
}

/** `connectSpeechSocket` for `/audio-bridge/v2/transcribe`. */
export function openTranscribeSocket(tokens, options = {}) {
  return connectSpeechSocket({ ...options, tokens, endpoint: "transcribe" });
}

/** `connectSpeechSocket` for `/audio-bridge/v2/interactions/{interactionId}/streams`. */
export function openStreamSocket(tokens, interactionId, options = {}) {
  return connectSpeechSocket({ ...options, tokens, endpoint: "streams", interactionId });
}
