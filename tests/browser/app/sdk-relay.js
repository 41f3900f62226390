// @corti/sdk 1.0.0's proxy client, unmodified (its ESM build), opens token-vendor's relay
// with the session JWT as subprotocols, as the SDK passes headers through a proxy. The
// handshake only succeeds in Chromium if a non-credential protocol is echoed.
// Query: ?service=<token-vendor base>&session=<session JWT>.
import { CortiWebSocketProxyClient } from "/sdk/custom/CortiWebSocketProxyClient.mjs";

const params = new URLSearchParams(location.search);
const service = params.get("service");
const session = params.get("session");
const result = { steps: [] };

async function main() {
  const socket = await CortiWebSocketProxyClient.transcribe.connect({
    proxy: {
      url: `${service.replace(/^http/, "ws")}/v1/relay/transcribe`,
      protocols: { Authorization: `Bearer ${session}` },
    },
    configuration: { primaryLanguage: "en" },
    reconnectAttempts: 0,
  });
  result.steps.push("CONFIG_ACCEPTED");
  result.protocol = socket.socket?.protocol ?? socket.socket?._ws?.protocol ?? null;
  await new Promise((resolve) => {
    socket.on("message", (m) => {
      if (m?.type === "transcript") {
        result.steps.push("transcript");
        result.transcript = m.data?.text;
        resolve();
      }
    });
    for (let i = 0; i < 8; i++) socket.sendAudio(new Uint8Array(3200).buffer);
  });
  socket.close();
}

main()
  .catch((e) => { result.error = String(e?.message ?? e); })
  .finally(() => {
    window.appResult = result;
    document.getElementById("result").textContent = JSON.stringify(result, null, 2);
    document.body.dataset.done = "true";
  });
