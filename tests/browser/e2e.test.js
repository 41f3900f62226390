// token-vendor end to end in a real browser (Debian's Chromium via playwright-core).
//
// One `token-vendor dev` (40 s stand-in tokens, so a refresh happens within the test)
// serves the API, the demo page, the ops page and the speech stand-in. Two tiny app
// servers give two more origins on 127.0.0.1: one listed in ALLOWED_ORIGINS, one not.
// 127.0.0.1 ports are all the same *site*, as app.example.com and tokens.example.com are,
// so the SameSite=Lax session cookie rides along from both; http://localhost:PORT is
// another site, where the browser withholds it. The scenarios run in order and the last
// one (the ops page) reads the audit events the earlier ones produced.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";

import * as h from "./support/harness.js";

const TOKEN_LIFETIME = 40;
const REFRESH_MARGIN = 30;

const missing = h.missingPrerequisite();
if (missing && h.inCi) {
  throw new Error(`the browser tests must run under CI=true, but ${missing}`);
}
if (missing) console.log(`# browser tests skipped: ${missing}`);

/** docs/img/NAME when UPDATE_README_SCREENSHOTS=1, for the README's pictures. */
const readmeCopy = (name) =>
  process.env.UPDATE_README_SCREENSHOTS === "1" ? path.join(h.repoRoot, "docs", "img", name) : undefined;

const enc = encodeURIComponent;

/** Test h needs @corti/sdk's ESM build from clients/js (`npm ci` there). */
const sdkSkip = fs.existsSync(h.sdkEsmDir) ? false : `@corti/sdk is not installed in clients/js (run \`npm ci\` there)`;
if (sdkSkip && h.inCi) throw new Error(`the browser tests must run under CI=true, but ${sdkSkip}`);

/** The Corti token in a speech socket URL (`token=Bearer …`). */
const tokenIn = (url) => new URL(url).searchParams.get("token").replace(/^Bearer /, "");
/** A JWT's `exp` claim (seconds). */
const jwtExp = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString()).exp;

describe("token-vendor in a real browser", { skip: missing ?? false }, () => {
  let service;
  let allowedApp;
  let otherApp;
  let browser;
  let context;
  const produced = {};

  before(async () => {
    allowedApp = await h.startAppServer();
    otherApp = await h.startAppServer();
    service = await h.startService({
      allowedOrigins: [allowedApp.origin],
      tokenLifetimeSeconds: TOKEN_LIFETIME,
    });
    browser = await h.launchBrowser();
    context = await browser.newContext({ viewport: { width: 1280, height: 820 } });
    // Sign in once through the demo page, as a user would; every page of this browser
    // context then carries the session cookie to 127.0.0.1.
    const page = await context.newPage();
    await page.goto(`${service.base}/`);
    await page.waitForSelector("body[data-ready=true]");
    await page.selectOption("#user", "demo-user");
    await page.click("#sign-in");
    await page.waitForSelector("#who.ok");
    await page.close();
  });

  after(async () => {
    await context?.close();
    await browser?.close();
    await service?.stop();
    await allowedApp?.stop();
    await otherApp?.stop();
  });

  const audit = () => service.auditEvents();
  const appUrl = (app, file, host = "127.0.0.1") =>
    `http://${host}:${app.port}/${file}?service=${enc(service.base)}&api=${enc(service.apiBase)}`;

  it("signs in with an HttpOnly, SameSite=Lax session cookie", async () => {
    const cookies = await context.cookies(service.base);
    const session = cookies.find((c) => c.name === "session");
    assert.ok(session, `a session cookie: ${JSON.stringify(cookies)}`);
    assert.equal(session.httpOnly, true);
    assert.equal(session.sameSite, "Lax");
    assert.equal(session.path, "/");
  });

  it("a. an allowed origin with the session cookie gets a token, and the speech WebSocket accepts it", async () => {
    const page = await context.newPage();
    await page.goto(appUrl(allowedApp, "app.html"));
    await page.waitForSelector("body[data-done=true]", { timeout: 20000 });
    const result = await page.evaluate(() => window.appResult);

    assert.equal(result.error, undefined, JSON.stringify(result));
    assert.equal(result.token.scope, "openid transcribe");
    assert.equal(result.token.tokenType, "Bearer");
    assert.ok(result.token.expiresIn > 0 && result.token.expiresIn <= TOKEN_LIFETIME);
    assert.deepEqual(result.steps, ["token", "websocket-open", "message:CONFIG_ACCEPTED"]);
    const issued = await h.waitFor("the issued audit event", () =>
      audit().find((e) => e.origin === allowedApp.origin && e.outcome === "issued"));
    assert.equal(issued.subject, "demo-user");
    assert.equal(issued.status, 200);
    assert.match(issued.token_fingerprint, /^hmac-sha256:[0-9a-f]{64}$/);
    produced.issuedFingerprint = issued.token_fingerprint;
    assert.ok(
      service.logs().some((l) => l.message === "speech stand-in accepted a connection" && l.endpoint === "transcribe"),
      "the speech stand-in accepted the token",
    );
    await page.close();
  });

  it("b. a page on a disallowed origin is blocked by CORS; the service refuses and audits it", async () => {
    const page = await context.newPage();
    const consoleErrors = [];
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    await page.goto(appUrl(otherApp, "app.html"));
    await page.waitForSelector("body[data-done=true]", { timeout: 20000 });
    const result = await page.evaluate(() => window.appResult);

    assert.equal(result.error?.name, "NetworkError", JSON.stringify(result));
    assert.deepEqual(result.steps, [], "no token, no WebSocket");
    assert.ok(consoleErrors.some((t) => /CORS policy/.test(t)), `a CORS error: ${consoleErrors.join(" | ")}`);
    const refused = await h.waitFor("the refused preflight's audit event", () =>
      audit().find((e) => e.origin === otherApp.origin && e.outcome === "forbidden"));
    assert.equal(refused.status, 403);
    assert.match(refused.detail, /CORS preflight/);
    assert.ok(!audit().some((e) => e.origin === otherApp.origin && e.outcome === "issued"), "nothing issued to it");
    await page.close();
  });

  it("c. a same-site page on a disallowed origin sends the cookie without a preflight: 403 (CSRF), audited", async () => {
    const page = await context.newPage();
    await page.goto(appUrl(otherApp, "csrf.html"));
    await page.waitForSelector("body[data-ready=true]");
    const before = audit().length;

    // A "simple" no-cors fetch: no preflight, the cookie is sent (same site), the page
    // gets an opaque answer. Only the service's side shows what happened.
    await page.click("#no-cors-fetch");
    const opaque = await h.waitFor("the no-cors fetch", () => page.evaluate(() => window.noCorsResult));
    assert.deepEqual(opaque, { type: "opaque", status: 0 });
    const fetchRefusal = await h.waitFor("the no-cors fetch's audit event", () =>
      audit().slice(before).find((e) => e.origin === otherApp.origin));
    assert.equal(fetchRefusal.outcome, "forbidden");
    assert.equal(fetchRefusal.status, 403);
    assert.equal(fetchRefusal.subject, "demo-user", "the cookie was sent, and still refused");
    assert.match(fetchRefusal.detail, /origin/i);
    assert.equal(fetchRefusal.token_fingerprint ?? null, null);

    // A classic form POST (a top-level navigation): 403 problem+json, no token.
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${service.base}/v1/tokens` && r.request().method() === "POST"),
      page.click("#submit-form"),
    ]);
    assert.equal(response.status(), 403);
    const problem = await response.json();
    assert.equal(problem.status, 403);
    assert.equal(problem.accessToken, undefined);
    const formRefusals = audit().filter((e) => e.origin === otherApp.origin && e.subject === "demo-user");
    assert.equal(formRefusals.length, 2, JSON.stringify(formRefusals));
    assert.ok(formRefusals.every((e) => e.outcome === "forbidden" && e.status === 403));
    await page.close();
  });

  it("c. a cross-site page (localhost vs 127.0.0.1) never gets the cookie sent: 401", async () => {
    const page = await context.newPage();
    const crossSite = `http://localhost:${otherApp.port}`;
    await page.goto(appUrl(otherApp, "csrf.html", "localhost"));
    await page.waitForSelector("body[data-ready=true]");
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${service.base}/v1/tokens` && r.request().method() === "POST"),
      page.click("#submit-form"),
    ]);
    assert.equal(response.status(), 401, "SameSite=Lax withholds the cookie on a cross-site POST");
    const event = await h.waitFor("the cross-site attempt's audit event", () =>
      audit().find((e) => e.origin === crossSite));
    assert.equal(event.outcome, "unauthenticated");
    assert.equal(event.subject ?? null, null);
    await page.close();
  });

  it("d. with 40 s tokens the JS client refreshes before expiry and the demo keeps streaming", async () => {
    const page = await context.newPage();
    const sockets = [];
    page.on("websocket", (ws) => {
      const entry = { url: ws.url(), received: [], sent: [] };
      ws.on("framereceived", (f) => entry.received.push(String(f.payload)));
      ws.on("framesent", (f) => typeof f.payload === "string" && entry.sent.push(f.payload));
      sockets.push(entry);
    });
    await page.goto(`${service.base}/`);
    await page.waitForSelector("body[data-ready=true]");
    await page.waitForSelector("#who.ok");
    await page.selectOption("#scope", "transcribe");
    await page.selectOption("#endpoint", "transcribe");
    await page.click("#start");
    await page.waitForSelector("#steps li.ok:has-text('CONFIG_ACCEPTED')", { timeout: 15000 });
    const first = await h.waitFor("the demo's first token", () =>
      audit().find((e) => e.origin === service.base && e.outcome === "issued"));
    const firstExpiry = Date.parse(first.token_expires_at);

    // The client refreshes once fewer than REFRESH_MARGIN seconds are left.
    const refresh = await page.waitForSelector("#steps li[data-kind=refresh]", {
      timeout: (TOKEN_LIFETIME - REFRESH_MARGIN + 15) * 1000,
    });
    const leftMs = Number(await refresh.getAttribute("data-left-ms"));
    assert.ok(leftMs > 0 && leftMs <= (REFRESH_MARGIN + 1) * 1000, `refreshed with ${leftMs} ms left`);
    const second = await h.waitFor("the refreshed token's audit event", () =>
      audit().find((e) => e.origin === service.base && e.outcome === "issued" && e.id !== first.id));
    assert.notEqual(second.token_fingerprint, first.token_fingerprint);
    assert.ok(Date.parse(second.time) < firstExpiry, "the service issued the new token before the old one expired");
    assert.ok(Date.parse(second.token_expires_at) > firstExpiry);

    // Stream on past the first token's expiry: the socket stays open, transcripts keep coming.
    const wait = firstExpiry + 3000 - Date.now();
    if (wait > 0) await page.waitForTimeout(wait);
    assert.equal(await page.textContent("#ws-state"), "open");
    const latest = await page.$$eval("#transcript p", (ps) => Math.max(...ps.map((p) => Number(p.dataset.at))));
    assert.ok(latest > firstExpiry, "transcripts arrived after the first token expired");
    // Every 10 s another refresh (40 s tokens, 30 s margin), each before its expiry.
    // Read together: a refresh may land between two separate reads.
    const { refreshes, count, allLeft } = await page.evaluate(() => ({
      refreshes: Number(document.querySelector("#t-refreshes").textContent),
      count: Number(document.querySelector("#t-count").textContent),
      allLeft: [...document.querySelectorAll("#steps li[data-kind=refresh]")].map((li) => Number(li.dataset.leftMs)),
    }));
    assert.ok(refreshes >= 1);
    assert.equal(count, refreshes + 1);
    assert.equal(allLeft.length, refreshes);
    assert.ok(allLeft.every((ms) => ms > 0), `every refresh came before expiry: ${allLeft}`);
    assert.equal(await page.locator("#steps li.fail").count(), 0, await page.textContent("#steps"));
    assert.doesNotMatch(await page.textContent("#remaining"), /expired/);
    await h.screenshot(page, "demo.png", readmeCopy("demo.png"));
    // Scenario f goes on with this stream.
    produced.demo = { page, sockets, firstExpiry };
  });

  it("f. a socket dropped after its token expired reconnects with a new token and CONFIG_ACCEPTED again", async () => {
    assert.ok(produced.demo, "scenario d left its demo stream open");
    const { page, sockets, firstExpiry } = produced.demo;
    assert.equal(sockets.length, 1, "one socket so far");
    const firstToken = tokenIn(sockets[0].url);
    assert.ok(jwtExp(firstToken) * 1000 <= Date.now(), "the first socket's token has expired");

    await page.click("#drop");
    const reconnected = await page.waitForSelector("#steps li[data-kind=reconnected]", { timeout: 15000 });
    assert.match(await reconnected.textContent(), /CONFIG_ACCEPTED/);
    assert.ok(
      service.logs().some((l) => l.message === "speech stand-in dropped its connections" && l.open === 1),
      "the stand-in dropped the one open stream",
    );
    assert.match(await page.textContent("#steps li[data-kind=reconnecting]"), /closed unexpectedly \(1012/);
    assert.equal(sockets.length, 2, "one reconnect");
    const second = sockets[1];
    const secondToken = tokenIn(second.url);
    assert.notEqual(secondToken, firstToken, "the reconnect used a new token");
    assert.ok(jwtExp(secondToken) * 1000 > Date.now(), "and a live one");
    assert.ok(jwtExp(secondToken) * 1000 > firstExpiry);
    assert.deepEqual(JSON.parse(second.sent[0]).type, "config", "the config was sent again");
    assert.ok(second.received.some((m) => m.includes("CONFIG_ACCEPTED")), "CONFIG_ACCEPTED on the new socket");

    // Streaming goes on over the new socket.
    const since = Date.now();
    await page.waitForFunction(
      (t) => [...document.querySelectorAll("#transcript p")].some((p) => Number(p.dataset.at) > t), since,
      { timeout: 15000 });
    assert.equal(await page.textContent("#ws-state"), "open");
    await page.click("#stop");
    await page.waitForSelector("#steps li:has-text('ENDED')");
    assert.equal(sockets.length, 2, "no reconnect after a normal end");
    await page.close();
  });

  it("the demo shows refusals: a scope the user may not have, a socket the token does not cover", async () => {
    const other = await browser.newContext();
    const page = await other.newPage();
    await page.goto(`${service.base}/`);
    await page.waitForSelector("body[data-ready=true]");

    // The app narrowed dictation-user to transcribe (corti_scopes): token-vendor says 403.
    await page.selectOption("#user", "dictation-user");
    await page.click("#sign-in");
    await page.waitForSelector("#who.ok");
    await page.selectOption("#scope", "streams");
    await page.selectOption("#endpoint", "streams");
    await page.click("#start");
    const vendRefusal = await page.waitForSelector("#steps li.fail");
    assert.match(await vendRefusal.textContent(), /ForbiddenError · HTTP 403/);
    assert.equal(await page.textContent("#ws-state"), "refused");
    const forbidden = await h.waitFor("the scope refusal's audit event", () =>
      audit().find((e) => e.subject === "dictation-user" && e.outcome === "forbidden"));
    assert.equal(forbidden.status, 403);

    // A streams-only token on the transcribe socket: the speech stand-in refuses it.
    await page.selectOption("#user", "demo-user");
    await page.click("#sign-in");
    await page.waitForSelector("#who.ok:has-text('demo-user')");
    await page.selectOption("#scope", "streams");
    await page.selectOption("#endpoint", "transcribe");
    await page.click("#start");
    const wsRefusal = await page.waitForSelector("#steps li.fail:has-text('refused the WebSocket handshake')");
    assert.match(await wsRefusal.textContent(), /does not include transcribe/);
    assert.ok(
      service.logs().some((l) => l.message === "speech stand-in refused a connection" && /scope/.test(l.reason ?? "")),
      "the speech stand-in logged why",
    );
    await other.close();
  });

  it("e. the ops page shows the events the scenarios produced, filters them, and draws the chart", async (t) => {
    const page = await context.newPage();
    await page.goto(`${service.base}/ops/audit?hours=1`);
    await page.waitForSelector("body[data-loaded]", { timeout: 20000 });

    // The audit API comes from another branch; say so plainly if this build lacks it.
    const probe = await fetch(`${service.base}/v1/audit/events?limit=1`, {
      headers: { Authorization: `Bearer ${service.sessionToken}` },
    });
    if (probe.status === 404) {
      assert.match(await page.textContent("#notice"), /no audit API/, "the page says the API is missing");
      await h.screenshot(page, "ops-audit-no-api.png");
      const why = "GET /v1/audit/events is not in this build (it comes with the audit branch)";
      if (h.inCi) assert.fail(why);
      t.skip(why);
      return;
    }
    assert.equal(probe.status, 200);
    assert.equal(await page.isVisible("#notice"), false, await page.textContent("#notice"));

    const logged = audit();
    const rows = await page.$$eval("#events tbody tr.event", (trs) =>
      trs.map((tr) => ({ outcome: tr.dataset.outcome, text: tr.textContent })));
    assert.equal(rows.length, logged.length, "every audit event is listed (fewer than a page)");
    const has = (outcome, needle) => rows.some((r) => r.outcome === outcome && r.text.includes(needle));
    assert.ok(has("issued", allowedApp.origin), "a: issued to the allowed app origin");
    assert.ok(has("forbidden", otherApp.origin), "b, c: refused for the disallowed origin");
    assert.ok(has("unauthenticated", `http://localhost:${otherApp.port}`), "c: cross-site without the cookie");
    assert.ok(has("issued", service.base), "d: the demo's tokens");
    assert.ok(has("forbidden", "dictation-user"), "the demo's scope refusal");

    // The chart: one legend count per outcome, equal to what the service logged.
    for (const outcome of ["issued", "forbidden", "unauthenticated"]) {
      const expected = logged.filter((e) => e.outcome === outcome).length;
      assert.ok(expected > 0, outcome);
      assert.equal(await page.getAttribute(`#legend li[data-outcome=${outcome}]`, "data-count"), String(expected), outcome);
      const drawn = await page.$$eval(`#chart rect[data-outcome=${outcome}]`, (rs) =>
        rs.reduce((n, r) => n + Number(r.dataset.count), 0));
      assert.equal(drawn, expected, `bars for ${outcome}`);
    }
    const box = await page.locator("#chart").boundingBox();
    assert.ok(box && box.width > 300 && box.height > 100, "the chart has a size");
    await h.screenshot(page, "ops-audit.png", readmeCopy("ops-audit.png"));

    // Filter by outcome.
    await page.selectOption("[data-testid=f-outcome]", "forbidden");
    const loads = Number(await page.getAttribute("body", "data-loaded"));
    await page.click("[data-testid=apply]");
    await page.waitForSelector(`body[data-loaded="${loads + 1}"]`);
    const outcomes = await page.$$eval("#events tbody tr.event", (trs) => trs.map((tr) => tr.dataset.outcome));
    assert.equal(outcomes.length, logged.filter((e) => e.outcome === "forbidden").length);
    assert.ok(outcomes.every((o) => o === "forbidden"));
    await page.selectOption("[data-testid=f-outcome]", "");

    // Find the token scenario a received, by its fingerprint.
    await page.fill("#fingerprint", produced.issuedFingerprint);
    await page.click("[data-testid=fp-find]");
    await page.waitForFunction(
      (fp) => [...document.querySelectorAll("#events tbody tr.event")].length === 1 &&
        document.querySelector("#events tbody td.fp-link")?.dataset.fingerprint === fp,
      produced.issuedFingerprint,
    );
    await h.screenshot(page, "ops-audit-fingerprint.png");
    await page.close();
  });

  it("g. relay mode: the demo streams through token-vendor and the page never holds a Corti token", async () => {
    const page = await context.newPage();
    const sockets = [];
    const tokenRequests = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    page.on("request", (r) => {
      if (r.url().includes("/v1/tokens")) tokenRequests.push(r.url());
    });
    await page.goto(`${service.base}/`);
    await page.waitForSelector("body[data-ready=true]");
    await page.waitForSelector("#who.ok");
    await page.selectOption("#mode", "relay");
    await page.selectOption("#scope", "transcribe");
    await page.selectOption("#endpoint", "transcribe");
    await page.click("#start");
    await page.waitForSelector("#steps li.ok:has-text('CONFIG_ACCEPTED')", { timeout: 15000 });
    await page.waitForSelector("#transcript p", { timeout: 15000 });
    assert.deepEqual(tokenRequests, [], "relay mode fetches no token");
    const relayBase = `${service.base.replace(/^http/, "ws")}/v1/relay/transcribe`;
    assert.ok(sockets.length >= 1 && sockets.every((u) => u === relayBase), JSON.stringify(sockets));
    const opened = await h.waitFor("the relay upgrade's audit event", () =>
      audit().find((e) => e.outcome === "issued" && /relay upgrade/.test(e.detail ?? "")));
    assert.equal(opened.subject, "demo-user");
    assert.equal(opened.origin, service.base);
    assert.match(opened.token_fingerprint, /^hmac-sha256:[0-9a-f]{64}$/);
    await page.click("#stop");
    const ended = await h.waitFor("the stream_ended event", () =>
      audit().find((e) => e.outcome === "stream_ended" && e.request_id === opened.request_id));
    const detail = JSON.parse(ended.detail);
    // The demo ends with {"type":"end"}: the stand-in answers ENDED and closes first.
    assert.ok(["client", "upstream"].includes(detail.ended_by), ended.detail);
    assert.ok(detail.frames_up > 1 && detail.frames_down > 1, ended.detail);
    await page.close();
  });

  it("h. @corti/sdk's proxy client, unmodified, streams through the relay in Chromium", { skip: sdkSkip }, async () => {
    const page = await context.newPage();
    let protocols = null;
    page.on("request", (r) => {
      if (r.url().includes("/v1/relay/")) protocols = r.headers()["sec-websocket-protocol"] ?? null;
    });
    const url = `${appUrl(allowedApp, "sdk-relay.html")}&session=${enc(service.sessionToken)}`;
    await page.goto(url);
    await page.waitForSelector("body[data-done=true]", { timeout: 20000 });
    const result = await page.evaluate(() => window.appResult);
    assert.equal(result.error, undefined, JSON.stringify(result));
    assert.deepEqual(result.steps, ["CONFIG_ACCEPTED", "transcript"]);
    assert.ok(result.transcript.length > 0);
    const opened = await h.waitFor("the SDK relay upgrade's audit event", () =>
      audit().find((e) => e.outcome === "issued" && e.origin === allowedApp.origin && /relay upgrade/.test(e.detail ?? "")));
    assert.equal(opened.subject, "demo-user");
    if (protocols !== null) assert.match(protocols, /^Authorization, Bearer%20/);
    await page.close();
  });
});
