// The real @corti/sdk (pinned in devDependencies) against the real `token-vendor dev`:
// the SDK counts a token as expired 120 s before its expiresIn runs out
// (BUFFER_IN_MINUTES = 2) and then calls refreshAccessToken before every request.
// token-vendor must never hand it a reused token inside that margin, or each connect
// refreshes again (issue 13: 6 refreshes for 3 connects with the old 60-s reuse default).
//
// TOKEN_REUSE_MIN_TTL in the environment is passed to the service, so the storm can be
// measured with the old default: `TOKEN_REUSE_MIN_TTL=60 node --test test/corti-sdk.test.js`.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

import { inCi, missingBinary, startDev } from "../test-support/dev-service.js";

let sdk = null;
let sdkMissing = null;
try {
  sdk = await import("@corti/sdk");
} catch (e) {
  sdkMissing = `@corti/sdk is not installed (run \`npm ci\` in clients/js): ${e.message}`;
}
const missing = missingBinary() ?? sdkMissing;
if (missing && inCi) throw new Error(`the @corti/sdk test must run under CI=true, but ${missing}`);
if (missing) console.log(`# @corti/sdk tests skipped: ${missing}`);

const require = createRequire(import.meta.url);
const CONNECTS = 3;
const passThrough = process.env.TOKEN_REUSE_MIN_TTL ? { TOKEN_REUSE_MIN_TTL: process.env.TOKEN_REUSE_MIN_TTL } : {};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A second "tab": its own CortiClient whose refreshAccessToken asks token-vendor directly. */
function sdkTab(service) {
  const calls = [];
  const client = new sdk.CortiClient({
    tenantName: "base",
    // Every base URL points at the dev stand-ins; only `wss` is used by these tests.
    environment: {
      base: `${service.base}/v2`,
      wss: `${service.apiBase}/audio-bridge/v2`,
      login: `${service.base}/realms`,
      agents: service.base,
    },
    auth: {
      refreshAccessToken: async () => {
        const token = await service.vend("transcribe");
        calls.push(token);
        return token;
      },
    },
  });
  return { client, calls };
}

/** Opens the transcribe socket through the SDK, waits for CONFIG_ACCEPTED, closes it. */
async function connectOnce(client) {
  const socket = await client.transcribe.connect({ configuration: { primaryLanguage: "en" } });
  socket.close();
}

describe("@corti/sdk against token-vendor", { skip: missing ?? false }, () => {
  it("is the pinned 1.0.0, whose auth provider counts tokens as expired 120 s early", () => {
    const pkgPath = require.resolve("@corti/sdk/package.json");
    assert.equal(JSON.parse(fs.readFileSync(pkgPath, "utf8")).version, "1.0.0");
    const helpers = fs.readFileSync(
      path.join(path.dirname(pkgPath), "dist/esm/custom/utils/oauthAuthHelpers.mjs"), "utf8");
    assert.match(helpers, /export const BUFFER_IN_MINUTES = 2;/);
  });

  describe("135-s tokens, a second tab 17 s into the first tab's token (as measured in issue 13)", () => {
    let service;
    before(async () => {
      service = await startDev({ DEV_TOKEN_LIFETIME: "135", ...passThrough });
    });
    after(async () => service?.stop());

    it(`makes at most one refreshAccessToken call for ${CONNECTS} connects`, async () => {
      const first = await service.vend("transcribe"); // tab 1
      await sleep(17000); // 118 s left: "expired" to the SDK (<= 120 s)
      const tab = sdkTab(service);
      for (let i = 0; i < CONNECTS; i++) await connectOnce(tab.client);
      console.log(`refreshAccessToken calls for ${CONNECTS} connects: ${tab.calls.length}`);
      assert.ok(tab.calls.length <= 1, `${tab.calls.length} refreshAccessToken calls for ${CONNECTS} connects`);
      assert.ok(tab.calls[0].expiresIn > 120, `the SDK got a token with ${tab.calls[0].expiresIn} s left`);
      assert.notEqual(tab.calls[0].accessToken, first.accessToken, "a fresh token, not tab 1's");
    });
  });

  describe("Corti's 300-s tokens, a second tab inside the reuse window", () => {
    let service;
    before(async () => {
      service = await startDev({ ...passThrough });
    });
    after(async () => service?.stop());

    it(`reuses tab 1's token and makes at most one refreshAccessToken call for ${CONNECTS} connects`, async () => {
      const first = await service.vend("transcribe");
      const tab = sdkTab(service);
      for (let i = 0; i < CONNECTS; i++) await connectOnce(tab.client);
      assert.ok(tab.calls.length <= 1, `${tab.calls.length} refreshAccessToken calls for ${CONNECTS} connects`);
      assert.equal(tab.calls[0].accessToken, first.accessToken, "the live token was handed again");
    });
  });
});
