// What an app's front end does: get a token with the session cookie, open the speech
// WebSocket with it, send the config, wait for CONFIG_ACCEPTED. The result goes to the
// page (and window.appResult) for the test to read.
import { createTokenSource } from "/token-vendor.js";

const q = new URLSearchParams(location.search);
const result = { origin: location.origin, steps: [] };

function openAndConfigure(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => reject(new Error("no CONFIG_ACCEPTED within 10 s")), 10000);
    ws.onopen = () => {
      result.steps.push("websocket-open");
      ws.send(JSON.stringify({ type: "config", configuration: { primaryLanguage: "en" } }));
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      result.steps.push(`message:${msg.type}`);
      if (msg.type === "CONFIG_ACCEPTED") {
        clearTimeout(timer);
        ws.close(1000, "done");
        resolve(msg.type);
      }
    };
    ws.onclose = (ev) => {
      clearTimeout(timer);
      reject(new Error(`websocket closed before CONFIG_ACCEPTED (code ${ev.code})`));
    };
  });
}

try {
  const tokens = createTokenSource({
    url: `${q.get("service")}/v1/tokens`,
    scope: q.get("scope") ?? "transcribe",
    credentials: "include",
    wsBaseUrl: q.get("api"),
  });
  const token = await tokens.getToken();
  result.steps.push("token");
  result.token = { scope: token.scope, expiresIn: token.expiresIn, tokenType: token.tokenType };
  result.accepted = await openAndConfigure(await tokens.transcribeUrl());
} catch (e) {
  result.error = { name: e.name, status: e.status ?? null, message: e.message };
}
window.appResult = result;
document.getElementById("result").textContent = JSON.stringify(result, null, 2);
document.body.dataset.done = "true";
