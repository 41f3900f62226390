// Runs the already-built `token-vendor dev` for tests that need the real service
// (TOKEN_VENDOR_BIN, else the repository's debug build). It builds nothing.

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "../../..");

export const inCi = process.env.CI === "true";
export const binaryPath = process.env.TOKEN_VENDOR_BIN
  ? path.resolve(process.env.TOKEN_VENDOR_BIN)
  : path.join(repoRoot, "target/debug/token-vendor");

/** Why the service cannot run here, or null. */
export function missingBinary() {
  return fs.existsSync(binaryPath)
    ? null
    : `no token-vendor binary at ${binaryPath} (run \`cargo build\` first, or set TOKEN_VENDOR_BIN)`;
}

/**
 * Starts `token-vendor dev` on a free loopback port with a fresh SQLite audit file.
 * `env` adds settings (DEV_TOKEN_LIFETIME, TOKEN_REUSE_MIN_TTL, …).
 * Resolves { base, apiBase, sessionToken, vend(scope), stop() }.
 */
export async function startDev(env = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "token-vendor-js-"));
  const child = spawn(binaryPath, ["dev"], {
    env: {
      PATH: process.env.PATH ?? "",
      LISTEN_ADDR: "127.0.0.1:0",
      DATABASE_URL: `sqlite://${path.join(dir, "audit.db")}`,
      RUST_LOG: "warn",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.setEncoding("utf8").on("data", (c) => (out += c));
  child.stderr.setEncoding("utf8").on("data", (c) => (err += c));
  const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  const deadline = Date.now() + 60000;
  while (!out.includes("stop with Ctrl-C")) {
    if (child.exitCode !== null) throw new Error(`token-vendor dev exited (${child.exitCode}):\n${out}\n${err}`);
    if (Date.now() > deadline) throw new Error(`token-vendor dev did not start:\n${out}\n${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const line = (label) => {
    const m = out.match(new RegExp(`^\\s*${label}:\\s+(\\S+)`, "m"));
    if (!m) throw new Error(`no "${label}" line in dev output:\n${out}`);
    return m[1];
  };
  const base = line("service");
  const apiBase = line("Corti speech API");
  const sessionToken = out.match(/session token[^\n]*\n\s+(\S+)/)?.[1];
  if (!sessionToken) throw new Error(`no session token in dev output:\n${out}`);
  return {
    base,
    apiBase,
    sessionToken,
    tokenUrl: `${base}/v1/tokens`,
    /** One POST /v1/tokens as the demo user, as a page would; resolves the 200 body. */
    async vend(scope = "transcribe") {
      const res = await fetch(`${base}/v1/tokens`, {
        method: "POST",
        headers: { Authorization: `Bearer ${sessionToken}`, "Content-Type": "application/json" },
        body: JSON.stringify({ scope }),
      });
      if (!res.ok) throw new Error(`POST /v1/tokens: HTTP ${res.status}: ${await res.text()}`);
      return res.json();
    },
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      const forced = setTimeout(() => child.kill("SIGKILL"), 10000);
      await exited;
      clearTimeout(forced);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
