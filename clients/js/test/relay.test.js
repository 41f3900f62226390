// Relay mode: the speech socket goes through token-vendor (`/v1/relay/…`), which holds
// the Corti token. Unit tests with a fake WebSocket, then the real @corti/sdk proxy
// client and this client against the real `token-vendor dev` in Node.

import { after, before, describe, it, test } from "node:test";
import assert from "node:assert/strict";

import { connectSpeechSocket, relayUrl } from "../index.js";
import { fakeWebSocketClass, settle } from "../test-support/fakes.js";
import { inCi, missingBinary, startDev } from "../test-support/dev-service.js";

const CONFIG = { primaryLanguage: "en" };

test("relayUrl maps the base to ws(s) and names the endpoint, interaction and tenant", () => {
  assert.equal(relayUrl({ url: "https://tv.example/" }), "wss://tv.example/v1/relay/transcribe");
  assert.equal(relayUrl({ url: "http://127.0.0.1:8080" }, "streams", "a b"), "ws://127.0.0.1:8080/v1/relay/streams/a%20b");
  assert.equal(relayUrl({ url: "wss://tv.example", tenant: "acme" }), "wss://tv.example/v1/relay/transcribe?tenant=acme");
});

test("relay mode fetches no token, offers the protocols, reconnects on 1012 and stops on 1000", async () => {
  const { FakeWebSocket, instances } = fakeWebSocketClass();
  const events = [];
  const protocols = ["Authorization", "Bearer%20session-jwt"];
  const socket = connectSpeechSocket({
    relay: { url: "https://tv.test", protocols },
    configuration: CONFIG,
    WebSocket: FakeWebSocket,
    sleep: async () => {},
    random: () => 0.5,
    onOpen: (e) => events.push(["open", e.attempt, e.token]),
    onClose: (e) => events.push(["close", e.code, e.reason]),
  });
  await settle();
  assert.equal(instances.length, 1);
  assert.equal(instances[0].url, "wss://tv.test/v1/relay/transcribe");
  assert.deepEqual(instances[0].protocols, protocols);
  instances[0].serverOpen();
  assert.deepEqual(instances[0].sent.at(-1), { type: "config", configuration: CONFIG });
  instances[0].serverSend({ type: "CONFIG_ACCEPTED" });
  await settle();
  assert.equal(socket.state, "open");
  instances[0].serverClose(1012, "token-vendor is restarting; connect again");
  await settle();
  await settle();
  assert.equal(instances.length, 2, "a replica restart is reconnected");
  assert.equal(instances[1].url, instances[0].url);
  instances[1].serverOpen();
  instances[1].serverSend({ type: "CONFIG_ACCEPTED" });
  await settle();
  instances[1].serverClose(1000, "stopped by the operator (deny list)");
  const closed = await socket.closed;
  assert.equal(closed.code, 1000);
  assert.equal(closed.error, null);
  assert.equal(instances.length, 2, "a deny is final");
  assert.deepEqual(events, [
    ["open", 1, null],
    ["open", 2, null],
    ["close", 1000, "stopped by the operator (deny list)"],
  ]);
});

test("relay mode needs relay.url; without relay, tokens stay required", () => {
  assert.throws(() => connectSpeechSocket({ relay: {}, configuration: CONFIG, WebSocket: class {} }), /relay\.url/);
  assert.throws(() => connectSpeechSocket({ configuration: CONFIG, WebSocket: class {} }), /tokens/);
});

let sdk = null;
let sdkMissing = null;
try {
  sdk = await import("@corti/sdk");
} catch (e) {
  sdkMissing = `@corti/sdk is not installed (run \`npm ci\` in clients/js): ${e.message}`;
}
let NodeWebSocket = null;
try {
  NodeWebSocket = (await import("ws")).default;
} catch {
  // Only the SDK's own dependency; the client test below needs it in Node 20.
}
const missing = missingBinary() ?? sdkMissing;
if (missing && inCi) throw new Error(`the relay tests must run under CI=true, but ${missing}`);
if (missing) console.log(`# relay tests against token-vendor dev skipped: ${missing}`);

describe("relay mode against token-vendor dev", { skip: missing ?? false }, () => {
  let service;
  let relayBase;
  before(async () => {
    service = await startDev();
    relayBase = service.base.replace(/^http/, "ws");
  });
  after(async () => service?.stop());

  it("@corti/sdk's CortiWebSocketProxyClient gets CONFIG_ACCEPTED and transcripts through the relay", async () => {
    const socket = await sdk.CortiWebSocketProxyClient.transcribe.connect({
      proxy: {
        url: `${relayBase}/v1/relay/transcribe`,
        // The SDK's header form: sent as ["Authorization", "Bearer%20<jwt>"].
        protocols: { Authorization: `Bearer ${service.sessionToken}` },
      },
      configuration: CONFIG,
      reconnectAttempts: 0,
    });
    const transcripts = [];
    const got = new Promise((resolve) => {
      socket.on("message", (m) => {
        if (m?.type === "transcript") {
          transcripts.push(m);
          resolve();
        }
      });
    });
    for (let i = 0; i < 8; i++) socket.sendAudio(new Uint8Array(3200).buffer);
    await got;
    assert.ok(transcripts[0].data.text.length > 0);
    socket.close();
  });

  it("this client's relay mode opens without fetching a token", async () => {
    const messages = [];
    let opened;
    const open = new Promise((resolve) => { opened = resolve; });
    const socket = connectSpeechSocket({
      relay: { url: service.base, protocols: ["Authorization", `Bearer%20${service.sessionToken}`] },
      configuration: CONFIG,
      WebSocket: globalThis.WebSocket ?? NodeWebSocket,
      onOpen: (e) => opened(e),
      onMessage: (m) => messages.push(m),
    });
    const event = await open;
    assert.equal(event.token, null);
    assert.equal(socket.state, "open");
    socket.close();
    const closed = await socket.closed;
    assert.equal(closed.code, 1000);
  });
});
