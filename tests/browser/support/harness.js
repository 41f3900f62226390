// Test harness: runs the already-built `token-vendor dev`, a tiny "app" web server on
// other origins, and Debian's Chromium through playwright-core. It builds nothing.

import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const browserTestsDir = path.resolve(here, "..");
export const repoRoot = path.resolve(browserTestsDir, "../..");
export const outputDir = path.join(repoRoot, "test-output", "browser");
export const inCi = process.env.CI === "true";

/** The binary under test: TOKEN_VENDOR_BIN, else the debug build. */
export const binaryPath = path.resolve(
  browserTestsDir,
  process.env.TOKEN_VENDOR_BIN ?? "../../target/debug/token-vendor",
);
export const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/**
 * Why the suite cannot run here, or null. Under CI=true a missing piece is a failure,
 * not a skip: CI must really run the browser.
 */
export function missingPrerequisite() {
  if (!fs.existsSync(binaryPath)) {
    return `no token-vendor binary at ${binaryPath} (run \`cargo build\` first, or set TOKEN_VENDOR_BIN)`;
  }
  if (!fs.existsSync(chromiumPath)) {
    return `no Chromium at ${chromiumPath} (install Debian's: \`apt-get install -y chromium\`; never a downloaded browser)`;
  }
  return null;
}

/** Polls `check` until it returns a truthy value; throws with `what` after `timeoutMs`. */
export async function waitFor(what, check, timeoutMs = 10000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Starts `token-vendor dev` on a free loopback port with a fresh SQLite audit file.
 * Its stdout gives the URLs; its stderr (JSON log lines) gives the audit events.
 */
export async function startService({ allowedOrigins = [], tokenLifetimeSeconds } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "token-vendor-browser-"));
  const env = {
    PATH: process.env.PATH ?? "",
    // Port 0: dev binds first and prints the port it got, so there is no race.
    LISTEN_ADDR: "127.0.0.1:0",
    DATABASE_URL: `sqlite://${path.join(dir, "audit.db")}`,
    ALLOWED_ORIGINS: allowedOrigins.join(","),
    RUST_LOG: "info",
  };
  if (tokenLifetimeSeconds) env.DEV_TOKEN_LIFETIME = String(tokenLifetimeSeconds);
  const child = spawn(binaryPath, ["dev"], { env, stdio: ["ignore", "pipe", "pipe"] });
  const stdout = [];
  const logLines = [];
  let stderrRest = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    const text = stderrRest + chunk;
    const lines = text.split("\n");
    stderrRest = lines.pop() ?? "";
    for (const line of lines) {
      if (!line.trim()) continue;
      try {
        logLines.push(JSON.parse(line));
      } catch {
        logLines.push({ message: line });
      }
    }
  });
  child.stdout.setEncoding("utf8");
  let stdoutText = "";
  child.stdout.on("data", (chunk) => {
    stdoutText += chunk;
    stdout.push(chunk);
  });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const ready = await Promise.race([
    waitFor("token-vendor dev to print its URLs", () => stdoutText.includes("stop with Ctrl-C"), 60000),
    exited.then(({ code }) => {
      throw new Error(`token-vendor dev exited early (${code}):\n${stdoutText}\n${logLines.map((l) => JSON.stringify(l)).join("\n")}`);
    }),
  ]);
  void ready;
  const line = (label) => {
    const m = stdoutText.match(new RegExp(`^\\s*${label}:\\s+(\\S+)`, "m"));
    if (!m) throw new Error(`no "${label}" line in dev output:\n${stdoutText}`);
    return m[1];
  };
  const base = line("service");
  const apiBase = line("Corti speech API");
  const sessionToken = stdoutText.match(/session token[^\n]*\n\s+(\S+)/)?.[1];
  if (!sessionToken) throw new Error(`no session token in dev output:\n${stdoutText}`);
  return {
    base,
    apiBase,
    sessionToken,
    stdout: () => stdoutText,
    logs: () => logLines.slice(),
    /** Audit events as logged on the `audit` target (dev writes them before answering). */
    auditEvents: () => logLines.filter((l) => l.target === "audit" && l.message === "audit event"),
    /** Stops dev and keeps its output as test-output/browser/<logName> (a CI artifact). */
    async stop(logName = "token-vendor-dev.log") {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const forced = setTimeout(() => child.kill("SIGKILL"), 15000);
      await exited;
      clearTimeout(forced);
      fs.mkdirSync(outputDir, { recursive: true });
      fs.writeFileSync(
        path.join(outputDir, logName),
        `${stdoutText}\n${logLines.map((l) => JSON.stringify(l)).join("\n")}\n`,
      );
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

const APP_FILES = {
  "/app.html": ["app/app.html", "text/html; charset=utf-8"],
  "/app.js": ["app/app.js", "text/javascript; charset=utf-8"],
  "/csrf.html": ["app/csrf.html", "text/html; charset=utf-8"],
  "/csrf.js": ["app/csrf.js", "text/javascript; charset=utf-8"],
  "/sdk-relay.html": ["app/sdk-relay.html", "text/html; charset=utf-8"],
  "/sdk-relay.js": ["app/sdk-relay.js", "text/javascript; charset=utf-8"],
  "/ws-shim.mjs": ["app/ws-shim.mjs", "text/javascript; charset=utf-8"],
};

/** @corti/sdk's ESM build, as installed for clients/js (`npm ci` there). */
export const sdkEsmDir = path.join(repoRoot, "clients/js/node_modules/@corti/sdk/dist/esm");

/**
 * A tiny web server for the "app" pages, on its own loopback port (so its own origin).
 * The app bundles the JS client itself, as a real app would: `/token-vendor.js`.
 */
export async function startAppServer() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://app.invalid");
    let file;
    let type;
    if (url.pathname === "/token-vendor.js") {
      file = path.join(repoRoot, "clients/js/index.js");
      type = "text/javascript; charset=utf-8";
    } else if (url.pathname.startsWith("/sdk/") && url.pathname.endsWith(".mjs")) {
      const candidate = path.resolve(sdkEsmDir, `.${url.pathname.slice("/sdk".length)}`);
      if (candidate.startsWith(sdkEsmDir + path.sep) && fs.existsSync(candidate)) {
        file = candidate;
        type = "text/javascript; charset=utf-8";
      }
    } else if (APP_FILES[url.pathname]) {
      file = path.join(browserTestsDir, APP_FILES[url.pathname][0]);
      type = APP_FILES[url.pathname][1];
    }
    if (!file) {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found");
      return;
    }
    res.writeHead(200, { "content-type": type, "cache-control": "no-store" });
    res.end(fs.readFileSync(file));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    stop: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** Debian's Chromium, headless, with the flags this machine's closed network needs. */
export async function launchBrowser() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-default-apps",
      "--disable-extensions",
      "--metrics-recording-only",
    ],
  });
}

/** Saves a screenshot under test-output/browser/ (a CI artifact) and returns its path. */
export async function screenshot(page, name, extraCopy) {
  fs.mkdirSync(outputDir, { recursive: true });
  const file = path.join(outputDir, name);
  await page.screenshot({ path: file });
  if (extraCopy) {
    fs.mkdirSync(path.dirname(extraCopy), { recursive: true });
    fs.copyFileSync(file, extraCopy);
  }
  return file;
}
