import { test } from "node:test";
import assert from "node:assert/strict";
import { createTokenSource, InvalidResponseError } from "../index.js";
import { TOKEN, json, fakeFetch, fakeClock } from "../test-support/fakes.js";

function source(token, extra = {}) {
  const f = fakeFetch([json(200, token)]);
  return { src: createTokenSource({ url: "https://t.test/v1/tokens", fetch: f.fetch, now: fakeClock().now, ...extra }), calls: f.calls };
}

test("transcribeUrl builds the Corti transcribe URL from the token response", async () => {
  const { src } = source(TOKEN);
  assert.equal(
    await src.transcribeUrl(),
    `wss://api.eu.corti.app/audio-bridge/v2/transcribe?tenant-name=base&token=Bearer%20${TOKEN.accessToken}`,
  );
});

test("streamsUrl builds the interaction streams URL and path-encodes the id", async () => {
  const { src } = source({ ...TOKEN, environment: "us" });
  assert.equal(
    await src.streamsUrl("3f2a/..?x=1 #"),
    `wss://api.us.corti.app/audio-bridge/v2/interactions/3f2a%2F..%3Fx%3D1%20%23/streams?tenant-name=base&token=Bearer%20${TOKEN.accessToken}`,
  );
  await assert.rejects(src.streamsUrl(""), TypeError);
});

test("query values are URL-encoded", async () => {
  const { src } = source({ ...TOKEN, accessToken: "a+b/c=d&e", tenantName: "my tenant&x=1" });
  const url = await src.transcribeUrl();
  assert.equal(url, "wss://api.eu.corti.app/audio-bridge/v2/transcribe?tenant-name=my%20tenant%26x%3D1&token=Bearer%20a%2Bb%2Fc%3Dd%26e");
  const q = new URL(url).searchParams;
  assert.equal(q.get("tenant-name"), "my tenant&x=1");
  assert.equal(q.get("token"), "Bearer a+b/c=d&e");
});

test("wsBaseUrl overrides wss://api.{env}.corti.app (local stand-in)", async () => {
  const { src } = source(TOKEN, { wsBaseUrl: "ws://127.0.0.1:9999/" });
  assert.equal(
    await src.transcribeUrl(),
    `ws://127.0.0.1:9999/audio-bridge/v2/transcribe?tenant-name=base&token=Bearer%20${TOKEN.accessToken}`,
  );
  assert.match(await src.streamsUrl("abc"), /^ws:\/\/127\.0\.0\.1:9999\/audio-bridge\/v2\/interactions\/abc\/streams\?/);
});

test("URL builders reuse the cached token", async () => {
  const { src, calls } = source(TOKEN);
  await src.transcribeUrl();
  await src.streamsUrl("i-1");
  await src.getToken();
  assert.equal(calls.length, 1);
});

test("an environment that is not a plain label is refused (no host injection)", async () => {
  for (const environment of ["evil.com/x", "", undefined]) {
    const { src } = source({ ...TOKEN, environment });
    await assert.rejects(src.transcribeUrl(), InvalidResponseError);
  }
  const { src } = source({ ...TOKEN, tenantName: undefined });
  await assert.rejects(src.transcribeUrl(), InvalidResponseError);
});
