// The reconnecting speech socket: unit tests with a fake WebSocket and the real token
// source over a fake fetch and a fake clock.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  connectSpeechSocket, createTokenSource, openStreamSocket, openTranscribeSocket,
  SocketError, UnauthenticatedError,
} from "../index.js";
import { fakeClock, fakeFetch, fakeWebSocketClass, json, problem, settle, tokenIn, TOKEN } from "../test-support/fakes.js";

const CONFIG = { primaryLanguage: "en" };
const tokenA = { ...TOKEN, accessToken: "token-a", expiresIn: 60 };
const tokenB = { ...TOKEN, accessToken: "token-b", expiresIn: 60 };

function setup(script, extra = {}) {
  const { fetch, calls } = fakeFetch(script);
  const clock = fakeClock();
  const tokens = createTokenSource({ url: "https://tv.test/v1/tokens", fetch, now: clock.now, wsBaseUrl: "ws://speech.test" });
  const { FakeWebSocket, instances } = fakeWebSocketClass();
  const waits = [];
  const events = [];
  const socket = openTranscribeSocket(tokens, {
    configuration: CONFIG,
    WebSocket: FakeWebSocket,
    sleep: async (ms) => { waits.push(ms); },
    random: () => 0.5,
    onOpen: (e) => events.push(["open", e.attempt, e.reconnected, e.token.accessToken]),
    onMessage: (m) => events.push(["message", m.type]),
    onReconnecting: (e) => events.push(["reconnecting", e.code]),
    onClose: (e) => events.push(["close", e.code, e.error?.name ?? null]),
    ...extra,
  });
  return { socket, instances, calls, clock, waits, events };
}

async function accept(ws) {
  ws.serverOpen();
  assert.deepEqual(ws.sent.at(-1), { type: "config", configuration: CONFIG });
  ws.serverSend({ type: "CONFIG_ACCEPTED" });
  await settle();
}

test("sends the config on open and is open after CONFIG_ACCEPTED; messages are passed on", async () => {
  const { socket, instances, events } = setup([json(200, tokenA)]);
  await settle();
  assert.equal(instances.length, 1);
  assert.match(instances[0].url, /^ws:\/\/speech\.test\/audio-bridge\/v2\/transcribe\?tenant-name=base&token=Bearer%20token-a$/);
  assert.equal(socket.state, "connecting");
  assert.equal(socket.send(new ArrayBuffer(2)), false, "nothing is sent before CONFIG_ACCEPTED");
  await accept(instances[0]);
  assert.equal(socket.state, "open");
  assert.equal(socket.send(new ArrayBuffer(2)), true);
  instances[0].serverSend({ type: "transcript", data: { text: "hello" } });
  assert.deepEqual(events, [["open", 1, false, "token-a"], ["message", "CONFIG_ACCEPTED"], ["message", "transcript"]]);
});

test("an abnormal close after the token expired reconnects with a new token and sends the config again", async () => {
  const { socket, instances, calls, clock, waits, events } = setup([json(200, tokenA), json(200, tokenB)]);
  await settle();
  await accept(instances[0]);
  clock.advance(61); // token-a has expired; the open stream outlives it
  instances[0].serverClose(1006);
  await settle();
  await settle();
  assert.equal(instances.length, 2);
  assert.equal(tokenIn(instances[1].url), "token-b");
  assert.equal(calls.length, 2, "a token was fetched again through the token source");
  assert.equal(socket.state, "connecting");
  await accept(instances[1]);
  assert.equal(socket.state, "open");
  assert.equal(waits.length, 1);
  assert.ok(waits[0] >= 250 && waits[0] <= 1000, `backoff ${waits[0]} ms`);
  assert.deepEqual(events.filter((e) => e[0] !== "message"), [
    ["open", 1, false, "token-a"], ["reconnecting", 1006], ["open", 2, true, "token-b"],
  ]);
});

test("failed reconnects back off exponentially and give up after maxAttempts", async () => {
  const { socket, instances, waits } = setup([json(200, tokenA)], { maxAttempts: 3 });
  await settle();
  await accept(instances[0]);
  instances[0].serverClose(1012, "restart");
  for (let i = 1; i <= 3; i++) {
    await settle();
    await settle();
    instances[i].serverClose(1006); // handshake refused / network down
  }
  const result = await socket.closed;
  assert.equal(instances.length, 4);
  assert.deepEqual(waits, [375, 750, 1500]); // 500·2^n, half fixed + half jitter (random 0.5)
  assert.ok(result.error instanceof SocketError);
  assert.equal(socket.state, "closed");
});

test("a normal close (1000) and a refused config end the socket without reconnecting", async () => {
  const normal = setup([json(200, tokenA)]);
  await settle();
  await accept(normal.instances[0]);
  normal.instances[0].serverSend({ type: "ENDED" });
  normal.instances[0].serverClose(1000);
  assert.deepEqual(await normal.socket.closed, { code: 1000, reason: "", error: null });
  assert.equal(normal.instances.length, 1);

  const denied = setup([json(200, tokenA)]);
  await settle();
  denied.instances[0].serverOpen();
  denied.instances[0].serverSend({ type: "CONFIG_DENIED", reason: "configuration.primaryLanguage is required" });
  denied.instances[0].serverClose(1008, "CONFIG_DENIED");
  const r = await denied.socket.closed;
  assert.ok(r.error instanceof SocketError);
  assert.equal(r.error.reason, "CONFIG_DENIED");
  assert.equal(denied.instances.length, 1);
});

test("a refused first connection is reported, not retried", async () => {
  const { socket, instances } = setup([json(200, tokenA)]);
  await settle();
  instances[0].serverClose(1006); // e.g. the handshake answered 403
  const r = await socket.closed;
  assert.ok(r.error instanceof SocketError);
  assert.match(r.error.message, /handshake was refused/);
  assert.equal(instances.length, 1);
});

test("stops on 401 from token-vendor while reconnecting", async () => {
  const { socket, instances, clock, calls } = setup([json(200, tokenA), problem(401, "Unauthorized", "session expired")]);
  await settle();
  await accept(instances[0]);
  clock.advance(61);
  instances[0].serverClose(1006);
  const r = await socket.closed;
  assert.ok(r.error instanceof UnauthenticatedError);
  assert.equal(calls.length, 2);
  assert.equal(instances.length, 1, "no socket without a token");
});

test("close() stops at once, also while waiting to reconnect", async () => {
  let release;
  const gate = new Promise((r) => { release = r; });
  const { socket, instances } = setup([json(200, tokenA)], { sleep: () => gate });
  await settle();
  await accept(instances[0]);
  instances[0].serverClose(1011);
  await settle();
  assert.equal(socket.state, "reconnecting");
  socket.close();
  release();
  const r = await socket.closed;
  assert.equal(r.error, null);
  await settle();
  assert.equal(instances.length, 1, "no reconnect after close()");
});

test("streams sockets need an interaction id and use its URL", async () => {
  const { fetch } = fakeFetch([json(200, tokenA)]);
  const tokens = createTokenSource({ url: "https://tv.test/v1/tokens", fetch, wsBaseUrl: "ws://speech.test" });
  const { FakeWebSocket, instances } = fakeWebSocketClass();
  assert.throws(() => connectSpeechSocket({ tokens, endpoint: "streams", configuration: {}, WebSocket: FakeWebSocket }), TypeError);
  assert.throws(() => openTranscribeSocket(tokens, { WebSocket: FakeWebSocket }), /configuration/);
  openStreamSocket(tokens, "abc 1", { configuration: {}, WebSocket: FakeWebSocket });
  await settle();
  assert.match(instances[0].url, /\/audio-bridge\/v2\/interactions\/abc%201\/streams\?/);
});

test("the token reported for a connection is the one in its URL, even at a refresh boundary", async () => {
  const { fetch } = fakeFetch([json(200, tokenA), json(200, tokenB), json(200, tokenB)]);
  const clock = fakeClock();
  const source = createTokenSource({ url: "https://tv.test/v1/tokens", fetch, now: clock.now, wsBaseUrl: "ws://speech.test" });
  // The cached token is dropped right after each read, as a refresh boundary would.
  const tokens = {
    ...source,
    getToken: async () => {
      const token = await source.getToken();
      source.clear();
      return token;
    },
  };
  const { FakeWebSocket, instances } = fakeWebSocketClass();
  const connecting = [];
  connectSpeechSocket({
    tokens,
    configuration: CONFIG,
    WebSocket: FakeWebSocket,
    sleep: async () => {},
    onConnecting: (e) => connecting.push(e),
  });
  await settle();
  assert.equal(instances.length, 1);
  assert.equal(connecting[0].url, instances[0].url);
  assert.match(instances[0].url, new RegExp(`token=Bearer%20${connecting[0].token.accessToken}$`));
});
