// Shared fakes for the tests (no tests here). A fake fetch answering from a script,
// a fake clock, and a recording sleep.

export const TOKEN = {
  accessToken: "eyJhbGciOiJSUzI1NiJ9.eyJzY29wZSI6Im9wZW5pZCB0cmFuc2NyaWJlIn0.sig",
  tokenType: "Bearer",
  expiresIn: 287,
  expiresAt: "2026-11-29T10:00:00Z",
  scope: "openid transcribe",
  tenantName: "base",
  environment: "eu",
};

/** A JSON Response. */
export function json(status, body, headers = {}) {
  const type = status >= 400 ? "application/problem+json" : "application/json";
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": type, "Cache-Control": "no-store", ...headers },
  });
}

/** A problem+json Response as token-vendor sends it. */
export function problem(status, title, detail, headers = {}) {
  return json(
    status,
    { type: `https://token-vendor.dev/problems/${status}`, title, status, detail, request_id: `req-${status}` },
    { "X-Request-Id": `req-${status}`, ...headers },
  );
}

/**
 * Fake fetch. `script` is a list of Responses, Errors (thrown as a network failure),
 * or functions (url, init) => Response | Promise<Response>. The last entry repeats.
 */
export function fakeFetch(script) {
  const calls = [];
  const fetch = async (url, init) => {
    const step = script[Math.min(calls.length, script.length - 1)];
    calls.push({ url: String(url), init, body: init?.body ? JSON.parse(init.body) : undefined });
    if (step instanceof Error) throw step;
    const res = typeof step === "function" ? await step(url, init) : step;
    return res.clone(); // a Response body can be read once; the last entry may repeat
  };
  return { fetch, calls };
}

/** Fake clock: clock.now() in ms; clock.advance(seconds). */
export function fakeClock(start = 1_700_000_000_000) {
  let t = start;
  return { now: () => t, advance: (s) => { t += s * 1000; } };
}

/** Recording sleep that returns at once. */
export function fakeSleep() {
  const waits = [];
  const sleep = async (ms) => { waits.push(ms); };
  return { sleep, waits };
}

/**
 * Fake WebSocket class recording every instance. The test plays the server:
 * ws.serverOpen(), ws.serverSend(obj), ws.serverClose(code, reason).
 */
export function fakeWebSocketClass() {
  const instances = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      instances.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(typeof data === "string" ? JSON.parse(data) : data);
    }
    close(code = 1000, reason = "") {
      this.serverClose(code, reason);
    }
    serverOpen() {
      this.readyState = 1;
      this.onopen?.({});
    }
    serverSend(obj) {
      this.onmessage?.({ data: JSON.stringify(obj) });
    }
    serverClose(code, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { FakeWebSocket, instances };
}

/** Resolves after pending promise callbacks (and one timer turn) have run. */
export const settle = () => new Promise((r) => setTimeout(r, 0));

/** The Bearer token in a speech socket URL. */
export const tokenIn = (url) => decodeURIComponent(new URL(url).searchParams.get("token")).replace(/^Bearer /, "");
