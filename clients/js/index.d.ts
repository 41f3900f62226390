// Type declarations for @token-vendor/client.

/** The 200 body of `POST /v1/tokens`, as the service sends it. */
export interface TokenResponse {
  /** The Corti access token (a JWT). */
  accessToken: string;
  /** Always "Bearer". */
  tokenType: string;
  /** Seconds the token had left when the service sent it. */
  expiresIn: number;
  /** RFC 3339 expiry on the service's clock (informational; the client uses expiresIn). */
  expiresAt?: string;
  /** Granted scope, e.g. "openid transcribe". */
  scope?: string;
  /** Corti tenant, e.g. "base". */
  tenantName?: string;
  /** Corti environment, e.g. "eu" or "us". */
  environment?: string;
  [key: string]: unknown;
}

/** RFC 9457 problem details as token-vendor sends them. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  request_id?: string;
  [key: string]: unknown;
}

export type HeadersSource =
  | HeadersInit
  | (() => HeadersInit | undefined | Promise<HeadersInit | undefined>);

export interface TokenSourceOptions {
  /** The token-vendor endpoint, e.g. "https://tokens.example.com/v1/tokens". */
  url: string | URL;
  /** Space-separated set of "transcribe" / "streams" (or an array of them). Default "transcribe". */
  scope?: string | string[];
  /** fetch credentials mode; "include" sends the session cookie cross-origin. Default "include". */
  credentials?: RequestCredentials;
  /** Extra request headers, or a (possibly async) function returning them, e.g. for `Authorization: Bearer …`. */
  headers?: HeadersSource;
  /** A cached token is reused while more than this many seconds remain. Default 30. */
  refreshMarginSeconds?: number;
  /** fetch implementation. Default globalThis.fetch. */
  fetch?: typeof fetch;
  /** On 429/503, a Retry-After above this throws at once instead of waiting. Default 10. */
  maxRetryAfterSeconds?: number;
  /** Abort one request (headers + body) after this many seconds; 0 disables. Default 15. */
  timeoutSeconds?: number;
  /** Overrides "wss://api.{environment}.corti.app" in the WebSocket URLs (e.g. a local stand-in). */
  wsBaseUrl?: string;
  /** Sleep used before the single retry (milliseconds). For tests. */
  sleep?: (ms: number) => Promise<void>;
  /** Clock in milliseconds used for the cache deadline. Default Date.now. For tests. */
  now?: () => number;
}

export interface TokenSource {
  /** A token with more than refreshMarginSeconds left: cached, or fetched (concurrent callers share one request); `expiresIn` is what it has left now. */
  getToken(): Promise<TokenResponse>;
  /**
   * Same semantics as getToken (a cached token's expiresIn is what it has left now), as a detached function for
   * `new CortiClient({ environment, tenantName, auth: { refreshAccessToken } })`.
   */
  refreshAccessToken: () => Promise<TokenResponse>;
  /** `wss://api.{env}.corti.app/audio-bridge/v2/transcribe?tenant-name=…&token=Bearer%20…`, with a fresh token or the one given. */
  transcribeUrl(token?: TokenResponse): Promise<string>;
  /** `wss://api.{env}.corti.app/audio-bridge/v2/interactions/{id}/streams?tenant-name=…&token=Bearer%20…` */
  streamsUrl(interactionId: string, token?: TokenResponse): Promise<string>;
  /** Drop the cached token (e.g. on sign-out). */
  clear(): void;
}

export interface TokenVendorErrorInfo {
  status?: number | null;
  problem?: Problem | null;
  requestId?: string | null;
  retryAfterSeconds?: number | null;
  cause?: unknown;
}

/** Base class of every error this module throws. */
export class TokenVendorError extends Error {
  constructor(message: string, info?: TokenVendorErrorInfo);
  /** HTTP status, or null when no response was received. */
  status: number | null;
  /** Parsed problem+json body, or null. */
  problem: Problem | null;
  /** The service's request id, or null. */
  requestId: string | null;
}
/** 401: the user must sign in again. Never retried. */
export class UnauthenticatedError extends TokenVendorError {}
/** 403: origin or scope not allowed. Never retried. */
export class ForbiddenError extends TokenVendorError {}
/** 429 after at most one retry. */
export class RateLimitedError extends TokenVendorError {
  retryAfterSeconds: number | null;
}
/** 502 / 503 / 504 (503 is retried once). */
export class UnavailableError extends TokenVendorError {
  retryAfterSeconds: number | null;
}
/** No HTTP response: offline, DNS, CORS refusal, timeout. */
export class NetworkError extends TokenVendorError {}
/** 2xx whose body lacks accessToken / expiresIn. */
export class InvalidResponseError extends TokenVendorError {}

/** Create a token source bound to one token-vendor endpoint and one scope. */
export function createTokenSource(options: TokenSourceOptions): TokenSource;

/** The speech socket could not be (re)opened or was refused. */
export class SocketError extends TokenVendorError {
  /** WebSocket close code, or null. */
  code: number | null;
  /** Close reason, or the rejecting message type (e.g. "CONFIG_DENIED"), or null. */
  reason: string | null;
}

export type SpeechSocketState = "connecting" | "configuring" | "open" | "reconnecting" | "closed";

export interface SpeechSocketClosed {
  /** The last close code (1000 after a normal end or close()), or null when no socket was opened. */
  code: number | null;
  reason: string;
  /** Why it stopped, or null after a normal end or close(). */
  error: Error | null;
}

/** Relay mode: the socket goes through token-vendor, which holds the Corti token. */
export interface RelayOptions {
  /** token-vendor's base URL (`https://…` or `wss://…`). */
  url: string;
  /**
   * Subprotocols to offer, e.g. `["Authorization", "Bearer%20" + sessionJwt]` when the
   * session is not a cookie. token-vendor echoes the first that is not a credential.
   */
  protocols?: string[];
  /** A configured tenant other than the default (`?tenant=`). */
  tenant?: string;
}

export interface SpeechSocketOptions {
  /** Where tokens come from; a fresh one is asked for on every (re)connect. Not used in relay mode. */
  tokens?: TokenSource;
  /** Relay mode: connect through token-vendor; no token is fetched. */
  relay?: RelayOptions;
  /** Default "transcribe". */
  endpoint?: "transcribe" | "streams";
  /** Required for "streams". */
  interactionId?: string;
  /** Sent as `{"type":"config","configuration":…}` on every (re)connect. */
  configuration: Record<string, unknown>;
  /** Failed reconnects in a row before giving up. Default 8. */
  maxAttempts?: number;
  /** First backoff step; doubles per failure, with jitter. Default 500. */
  initialDelayMs?: number;
  /** Backoff cap. Default 15000. */
  maxDelayMs?: number;
  /** Called on every state change. */
  onStateChange?: (state: SpeechSocketState) => void;
  /** Before each WebSocket is created, with the token and URL it uses. */
  onConnecting?: (event: { attempt: number; token: TokenResponse | null; url: string }) => void;
  /** After CONFIG_ACCEPTED, on the first connect and every reconnect. */
  onOpen?: (event: { attempt: number; reconnected: boolean; token: TokenResponse | null; url: string }) => void;
  /** Every message: parsed JSON, or the raw data when it is not JSON. */
  onMessage?: (message: any) => void;
  /** Before waiting `delayMs` to reconnect after an abnormal close (or a failed token request). */
  onReconnecting?: (event: { attempt: number; delayMs: number; code: number | null; reason: string; error: Error | null }) => void;
  /** Once, when the socket is closed for good. */
  onClose?: (event: SpeechSocketClosed) => void;
  /** WebSocket implementation. Default globalThis.WebSocket. For tests and Node. */
  WebSocket?: any;
  /** Sleep used for the backoff (milliseconds). For tests. */
  sleep?: (ms: number) => Promise<void>;
  /** Random source in [0, 1) for the jitter. For tests. */
  random?: () => number;
}

export interface SpeechSocket {
  readonly state: SpeechSocketState;
  /** Sends audio (ArrayBuffer, typed array, Blob, string) or a JSON-able object while open; false otherwise. */
  send(data: unknown): boolean;
  /** Sends `{"type":"end"}`; the server answers ENDED and closes normally. */
  end(): void;
  /** Closes now; never reconnects. */
  close(code?: number, reason?: string): void;
  /** Resolves once closed for good. */
  readonly closed: Promise<SpeechSocketClosed>;
}

/**
 * A Corti speech WebSocket that reconnects with a fresh token (and re-sends the config)
 * after an abnormal close of an established stream. Stops on a normal close, a refused
 * config, close(), 401/403 from token-vendor, or after maxAttempts failures in a row.
 */
export function connectSpeechSocket(options: SpeechSocketOptions): SpeechSocket;
/** token-vendor's relay URL for an endpoint (`/v1/relay/transcribe` or `/v1/relay/streams/{id}`). */
export function relayUrl(relay: RelayOptions, endpoint?: "transcribe" | "streams", interactionId?: string): string;
/** connectSpeechSocket for `/audio-bridge/v2/transcribe`. */
export function openTranscribeSocket(
  tokens: TokenSource,
  options: Omit<SpeechSocketOptions, "tokens" | "endpoint" | "interactionId">,
): SpeechSocket;
/** connectSpeechSocket for `/audio-bridge/v2/interactions/{interactionId}/streams`. */
export function openStreamSocket(
  tokens: TokenSource,
  interactionId: string,
  options: Omit<SpeechSocketOptions, "tokens" | "endpoint" | "interactionId">,
): SpeechSocket;
