import { test } from "node:test";
import assert from "node:assert/strict";
import { createTokenSource } from "../index.js";
import { TOKEN, json, fakeFetch, fakeClock, fakeSleep } from "../test-support/fakes.js";

const URL_ = "https://tokens.example.test/v1/tokens";

function setup(script, extra = {}) {
  const f = fakeFetch(script);
  const clock = fakeClock();
  const s = fakeSleep();
  const src = createTokenSource({ url: URL_, fetch: f.fetch, now: clock.now, sleep: s.sleep, ...extra });
  return { src, calls: f.calls, clock, waits: s.waits };
}

test("caches the token while more than the margin remains", async () => {
  const { src, calls, clock } = setup([json(200, TOKEN)]);
  const a = await src.getToken();
  assert.deepEqual(a, TOKEN);
  clock.advance(287 - 31); // 31 s left > 30 s margin
  const b = await src.getToken();
  assert.equal(b.accessToken, TOKEN.accessToken);
  assert.equal(calls.length, 1);
});

test("fetches a fresh token once within the margin", async () => {
  const second = { ...TOKEN, accessToken: "second" };
  const { src, calls, clock } = setup([json(200, TOKEN), json(200, second)]);
  await src.getToken();
  clock.advance(287 - 30); // exactly 30 s left: not more than the margin
  assert.equal((await src.getToken()).accessToken, "second");
  assert.equal(calls.length, 2);
  clock.advance(100);
  assert.equal((await src.getToken()).accessToken, "second"); // new deadline counts from the new fetch
  assert.equal(calls.length, 2);
});

test("refreshMarginSeconds is honoured", async () => {
  const { src, calls, clock } = setup([json(200, TOKEN)], { refreshMarginSeconds: 120 });
  await src.getToken();
  clock.advance(287 - 121);
  await src.getToken();
  assert.equal(calls.length, 1);
  clock.advance(1);
  await src.getToken();
  assert.equal(calls.length, 2);
});

test("the deadline uses expiresIn on the local clock, not the server's expiresAt", async () => {
  const skewed = { ...TOKEN, expiresAt: "2001-01-01T00:00:00Z" }; // server clock far off
  const { src, calls } = setup([json(200, skewed)]);
  await src.getToken();
  await src.getToken();
  assert.equal(calls.length, 1);
});

test("concurrent callers share one request", async () => {
  let release;
  const gate = new Promise((r) => { release = r; });
  const { src, calls } = setup([async () => { await gate; return json(200, TOKEN); }]);
  const pending = Array.from({ length: 5 }, () => src.getToken());
  release();
  const results = await Promise.all(pending);
  assert.equal(calls.length, 1);
  for (const r of results) assert.equal(r.accessToken, TOKEN.accessToken);
});

test("sends POST with JSON scope, Content-Type, credentials and no-store", async () => {
  const { src, calls } = setup([json(200, TOKEN)]);
  await src.getToken();
  const [{ url, init, body }] = calls;
  assert.equal(url, URL_);
  assert.equal(init.method, "POST");
  assert.deepEqual(body, { scope: "transcribe" });
  assert.equal(new Headers(init.headers).get("content-type"), "application/json");
  assert.equal(init.credentials, "include");
  assert.equal(init.cache, "no-store");
});

test('forwards scope "transcribe streams" (string or array) and credentials option', async () => {
  const a = setup([json(200, TOKEN)], { scope: "transcribe streams", credentials: "same-origin" });
  await a.src.getToken();
  assert.equal(a.calls[0].init.body, '{"scope":"transcribe streams"}');
  assert.equal(a.calls[0].init.credentials, "same-origin");
  const b = setup([json(200, TOKEN)], { scope: ["transcribe", "streams"] });
  await b.src.getToken();
  assert.deepEqual(b.calls[0].body, { scope: "transcribe streams" });
});

test("headers: a plain object", async () => {
  const { src, calls } = setup([json(200, TOKEN)], { headers: { Authorization: "Bearer session-1", "X-App": "demo" } });
  await src.getToken();
  const h = new Headers(calls[0].init.headers);
  assert.equal(h.get("authorization"), "Bearer session-1");
  assert.equal(h.get("x-app"), "demo");
  assert.equal(h.get("content-type"), "application/json");
});

test("headers: an async function, called for every request", async () => {
  let n = 0;
  const headers = async () => ({ Authorization: `Bearer session-${++n}` });
  const { src, calls, clock } = setup([json(200, TOKEN)], { headers });
  await src.getToken();
  clock.advance(1000);
  await src.getToken();
  assert.equal(new Headers(calls[0].init.headers).get("authorization"), "Bearer session-1");
  assert.equal(new Headers(calls[1].init.headers).get("authorization"), "Bearer session-2");
});

test("refreshAccessToken works detached and returns the SDK's token shape", async () => {
  const { src, calls } = setup([json(200, TOKEN)]);
  const { refreshAccessToken } = src; // as passed to new CortiClient({ auth: { refreshAccessToken } })
  const t = await refreshAccessToken();
  assert.equal(typeof t.accessToken, "string");
  assert.equal(t.tokenType, "Bearer");
  assert.equal(t.expiresIn, 287);
  assert.deepEqual(t, TOKEN); // the service body as-is
  await refreshAccessToken.call(undefined);
  await src.getToken();
  assert.equal(calls.length, 1); // same cache as getToken
});

test("returned tokens are copies: mutating one does not corrupt the cache", async () => {
  const { src } = setup([json(200, TOKEN)]);
  const t = await src.getToken();
  t.accessToken = "tampered";
  assert.equal((await src.getToken()).accessToken, TOKEN.accessToken);
});

test("clear() drops the cache", async () => {
  const { src, calls } = setup([json(200, TOKEN)]);
  await src.getToken();
  src.clear();
  await src.getToken();
  assert.equal(calls.length, 2);
});

test("clear() during a fetch: that fetch does not refill the cache", async () => {
  let release;
  const gate = new Promise((r) => { release = r; });
  const { src, calls } = setup([async () => { await gate; return json(200, TOKEN); }, json(200, { ...TOKEN, accessToken: "after" })]);
  const pending = src.getToken();
  src.clear();
  release();
  await pending;
  assert.equal((await src.getToken()).accessToken, "after");
  assert.equal(calls.length, 2);
});

test("requires url and a fetch", () => {
  assert.throws(() => createTokenSource({}), TypeError);
  assert.throws(() => createTokenSource({ url: URL_, fetch: 42 }), TypeError);
});

test("a cached token says how many seconds it has left, so the Corti SDK counts from the truth", async () => {
  const { src, calls, clock } = setup([json(200, TOKEN)]);
  assert.equal((await src.getToken()).expiresIn, 287);
  clock.advance(100);
  const again = await src.refreshAccessToken();
  assert.equal(again.expiresIn, 187);
  assert.equal(calls.length, 1);
});
