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

// Explicit names survive minifiers that rename classes.
for (const [C, name] of /** @type {Array<[Function, string]>} */ ([
  [TokenVendorError, "TokenVendorError"], [UnauthenticatedError, "UnauthenticatedError"],
  [ForbiddenError, "ForbiddenError"], [RateLimitedError, "RateLimitedError"],
  [UnavailableError, "UnavailableError"], [NetworkError, "NetworkError"],
  [InvalidResponseError, "InvalidResponseError"],
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
  function getToken() {
    if (isFresh(cached)) return Promise.resolve({ ...cached.token });
    if (!inflight) {
      const gen = generation;
      const p = fetchToken()
        .then(({ token, startedAt }) => {
          if (gen === generation) cached = { token, deadline: startedAt + token.expiresIn * 1000 };
          return token;
        })
        .finally(() => {
          if (inflight === p) inflight = null;
        });
      inflight = p;
    }
    return inflight.then((token) => ({ ...token }));
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
   * WebSocket URL for live transcription (`/audio-bridge/v2/transcribe`), with a fresh token.
   * @returns {Promise<string>}
   */
  async function transcribeUrl() {
    const token = await getToken();
    return `${wsBase(token)}/audio-bridge/v2/transcribe?${query(token)}`;
  }

  /**
   * WebSocket URL for an interaction's stream (`/audio-bridge/v2/interactions/{id}/streams`).
   * @param {string} interactionId
   * @returns {Promise<string>}
   */
  async function streamsUrl(interactionId) {
    if (interactionId == null || String(interactionId) === "") {
      throw new TypeError("streamsUrl: `interactionId` is required");
    }
    const token = await getToken();
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
