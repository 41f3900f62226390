import { test } from "node:test";
import assert from "node:assert/strict";
import {
  createTokenSource, TokenVendorError, UnauthenticatedError, ForbiddenError, RateLimitedError,
  UnavailableError, NetworkError, InvalidResponseError,
} from "../index.js";
import { TOKEN, json, problem, fakeFetch, fakeClock, fakeSleep } from "../test-support/fakes.js";

function setup(script, extra = {}) {
  const f = fakeFetch(script);
  const s = fakeSleep();
  const src = createTokenSource({
    url: "https://tokens.example.test/v1/tokens", fetch: f.fetch, now: fakeClock().now, sleep: s.sleep, ...extra,
  });
  return { src, calls: f.calls, waits: s.waits };
}

test("401 → UnauthenticatedError at once, no retry, with problem detail", async () => {
  const { src, calls, waits } = setup([
    problem(401, "Unauthenticated", "session expired", { "WWW-Authenticate": "Bearer" }),
    json(200, TOKEN),
  ]);
  const err = await src.getToken().then(() => assert.fail("resolved"), (e) => e);
  assert.ok(err instanceof UnauthenticatedError);
  assert.ok(err instanceof TokenVendorError);
  assert.ok(err instanceof Error);
  assert.equal(err.name, "UnauthenticatedError");
  assert.equal(err.status, 401);
  assert.equal(err.requestId, "req-401");
  assert.deepEqual(err.problem, {
    type: "https://token-vendor.dev/problems/401", title: "Unauthenticated", status: 401,
    detail: "session expired", request_id: "req-401",
  });
  assert.match(err.message, /401.*session expired/);
  assert.equal(calls.length, 1);
  assert.deepEqual(waits, []);
});

test("403 → ForbiddenError at once, no retry", async () => {
  const { src, calls } = setup([problem(403, "Forbidden", "origin not allowed"), json(200, TOKEN)]);
  await assert.rejects(src.getToken(), (e) => e instanceof ForbiddenError && e.problem.detail === "origin not allowed");
  assert.equal(calls.length, 1);
});

test("429 with Retry-After → waits, retries once, then succeeds", async () => {
  const { src, calls, waits } = setup([problem(429, "Too Many Requests", "slow down", { "Retry-After": "2" }), json(200, TOKEN)]);
  assert.deepEqual(await src.getToken(), TOKEN);
  assert.equal(calls.length, 2);
  assert.deepEqual(waits, [2000]);
});

test("429 twice → RateLimitedError after exactly one retry", async () => {
  const { src, calls, waits } = setup([problem(429, "Too Many Requests", "slow down", { "Retry-After": "3" })]);
  const err = await src.getToken().catch((e) => e);
  assert.ok(err instanceof RateLimitedError);
  assert.equal(err.retryAfterSeconds, 3);
  assert.equal(err.status, 429);
  assert.equal(err.problem.detail, "slow down");
  assert.equal(calls.length, 2);
  assert.deepEqual(waits, [3000]);
});

test("Retry-After above maxRetryAfterSeconds → immediate RateLimitedError", async () => {
  const { src, calls, waits } = setup([problem(429, "Too Many Requests", "later", { "Retry-After": "60" }), json(200, TOKEN)]);
  const err = await src.getToken().catch((e) => e);
  assert.ok(err instanceof RateLimitedError);
  assert.equal(err.retryAfterSeconds, 60);
  assert.equal(calls.length, 1);
  assert.deepEqual(waits, []);
});

test("maxRetryAfterSeconds is configurable; Retry-After as an HTTP-date is understood", async () => {
  const date = new Date(Date.now() + 30_000).toUTCString();
  const { src, calls, waits } = setup([problem(429, "Too Many Requests", "x", { "Retry-After": date }), json(200, TOKEN)], { maxRetryAfterSeconds: 40 });
  await src.getToken();
  assert.equal(calls.length, 2);
  assert.equal(waits.length, 1);
  assert.ok(waits[0] > 25_000 && waits[0] <= 31_000, `waited ${waits[0]} ms`);
});

test("503 → one retry (default wait when no Retry-After), then UnavailableError", async () => {
  const ok = setup([problem(503, "Service Unavailable", "audit store down"), json(200, TOKEN)]);
  assert.deepEqual(await ok.src.getToken(), TOKEN);
  assert.deepEqual(ok.waits, [1000]);
  const bad = setup([problem(503, "Service Unavailable", "audit store down", { "Retry-After": "1" })]);
  await assert.rejects(bad.src.getToken(), (e) => e instanceof UnavailableError && e.status === 503 && e.retryAfterSeconds === 1);
  assert.equal(bad.calls.length, 2);
});

test("502/504 → UnavailableError without retry; an HTML body is not kept", async () => {
  for (const status of [502, 504]) {
    const html = new Response("<html><body>Bad Gateway</body></html>", { status, headers: { "Content-Type": "text/html", "X-Request-Id": "rid-9" } });
    const { src, calls } = setup([html, json(200, TOKEN)]);
    const err = await src.getToken().catch((e) => e);
    assert.ok(err instanceof UnavailableError);
    assert.equal(err.status, status);
    assert.equal(err.problem, null);
    assert.equal(err.requestId, "rid-9");
    assert.doesNotMatch(err.message, /html/i);
    assert.equal(calls.length, 1);
  }
});

test("400 → plain TokenVendorError carrying the problem", async () => {
  const { src } = setup([problem(400, "Bad Request", "unknown scope: admin")]);
  const err = await src.getToken().catch((e) => e);
  assert.equal(err.constructor, TokenVendorError);
  assert.equal(err.status, 400);
  assert.equal(err.problem.detail, "unknown scope: admin");
  assert.match(err.message, /unknown scope: admin/);
});

test("200 without accessToken/expiresIn, or not JSON → InvalidResponseError", async () => {
  for (const body of [{ tokenType: "Bearer", expiresIn: 287 }, { accessToken: "x" }, { accessToken: "x", expiresIn: "287" }]) {
    const { src } = setup([json(200, body)]);
    await assert.rejects(src.getToken(), InvalidResponseError);
  }
  const { src } = setup([new Response("<html>login</html>", { status: 200 })]);
  await assert.rejects(src.getToken(), InvalidResponseError);
});

test("network failure → NetworkError; the next call tries again", async () => {
  const { src, calls } = setup([new TypeError("Failed to fetch"), json(200, TOKEN)]);
  const err = await src.getToken().catch((e) => e);
  assert.ok(err instanceof NetworkError);
  assert.equal(err.status, null);
  assert.match(err.message, /Failed to fetch/);
  assert.deepEqual(await src.getToken(), TOKEN);
  assert.equal(calls.length, 2);
});

test("a failure shared by concurrent callers does not stick or poison the cache", async () => {
  const { src, calls } = setup([problem(401, "Unauthenticated", "no session"), json(200, TOKEN)]);
  const results = await Promise.allSettled([src.getToken(), src.getToken(), src.getToken()]);
  assert.equal(calls.length, 1);
  for (const r of results) assert.ok(r.status === "rejected" && r.reason instanceof UnauthenticatedError);
  assert.deepEqual(await src.getToken(), TOKEN);
  assert.equal(calls.length, 2);
});

test("a failed refresh keeps nothing new; a later call retries", async () => {
  const clock = fakeClock();
  const f = fakeFetch([json(200, TOKEN), problem(503, "Service Unavailable", "x", { "Retry-After": "99" }), json(200, { ...TOKEN, accessToken: "new" })]);
  const src = createTokenSource({ url: "https://t.test/v1/tokens", fetch: f.fetch, now: clock.now, sleep: async () => {} });
  await src.getToken();
  clock.advance(280);
  await assert.rejects(src.getToken(), UnavailableError);
  assert.equal((await src.getToken()).accessToken, "new");
  assert.equal(f.calls.length, 3);
});

test("a hung request times out as NetworkError instead of blocking every caller", async () => {
  const hang = (_url, init) => new Promise((_, reject) => {
    init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
  });
  const { src, calls } = setup([hang, json(200, TOKEN)], { timeoutSeconds: 0.02 });
  await assert.rejects(src.getToken(), (e) => e instanceof NetworkError && /timed out/.test(e.message));
  assert.deepEqual(await src.getToken(), TOKEN);
  assert.equal(calls.length, 2);
});
