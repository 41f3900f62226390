// Points the form at token-vendor and offers a "simple" (no-preflight) fetch that carries
// the cookie. The page can never read the answer; the test reads the service's side.
const q = new URLSearchParams(location.search);
const target = `${q.get("service")}/v1/tokens`;
document.getElementById("csrf-form").action = target;
document.getElementById("no-cors-fetch").addEventListener("click", async () => {
  const out = document.getElementById("result");
  try {
    const res = await fetch(target, {
      method: "POST",
      mode: "no-cors",
      credentials: "include",
      headers: { "Content-Type": "text/plain" },
      body: JSON.stringify({ scope: "transcribe" }),
    });
    out.textContent = `sent; response type ${res.type}, status ${res.status}`;
    window.noCorsResult = { type: res.type, status: res.status };
  } catch (e) {
    out.textContent = `failed: ${e.message}`;
    window.noCorsResult = { error: e.message };
  }
});
document.body.dataset.ready = "true";
