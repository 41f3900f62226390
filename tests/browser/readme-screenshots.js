// Makes the README's pictures: docs/img/demo.png and docs/img/ops-audit.png.
// Not a test. Runs `token-vendor dev`, sends it a mix of token requests for a while (so
// the ops chart has minutes to show), then photographs the demo and the ops page.
//
//   cargo build && cd tests/browser && README_TRAFFIC_MINUTES=20 node readme-screenshots.js

import fs from "node:fs";
import path from "node:path";

import * as h from "./support/harness.js";

const minutes = Number(process.env.README_TRAFFIC_MINUTES ?? "20");
const imgDir = path.join(h.repoRoot, "docs", "img");
const missing = h.missingPrerequisite();
if (missing) {
  console.error(missing);
  process.exit(1);
}

const service = await h.startService({ tokenLifetimeSeconds: 60 });
const post = (body, headers = {}) =>
  fetch(`${service.base}/v1/tokens`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify(body),
  }).then((r) => r.status);
const bearer = { Authorization: `Bearer ${service.sessionToken}` };

try {
  const end = Date.now() + minutes * 60000;
  let round = 0;
  while (Date.now() < end) {
    round += 1;
    const asks = [post({ scope: "transcribe" }, bearer)];
    if (round % 2 === 0) asks.push(post({ scope: "streams" }, bearer));
    if (round % 3 === 0) asks.push(post({ scope: "transcribe" }, { ...bearer, Origin: "https://not-the-app.example" }));
    if (round % 4 === 0) asks.push(post({ scope: "transcribe" }));
    if (round % 5 === 0) asks.push(post({ scope: "admin" }, bearer));
    // Once, a burst past the per-user limit.
    if (round === 30) for (let i = 0; i < 35; i++) asks.push(post({ scope: "transcribe" }, bearer));
    await Promise.all(asks);
    await new Promise((r) => setTimeout(r, 8000 + Math.random() * 8000));
  }

  const browser = await h.launchBrowser();
  const context = await browser.newContext({ viewport: { width: 1280, height: 820 } });
  const page = await context.newPage();
  await page.goto(`${service.base}/`);
  await page.waitForSelector("body[data-ready=true]");
  await page.click("#sign-in");
  await page.waitForSelector("#who.ok");
  await page.click("#start");
  await page.waitForSelector("#steps li[data-kind=refresh]", { timeout: 60000 });
  await page.waitForTimeout(4000);
  fs.mkdirSync(imgDir, { recursive: true });
  await page.screenshot({ path: path.join(imgDir, "demo.png") });
  await page.click("#stop");

  const ops = await context.newPage();
  await ops.goto(`${service.base}/ops/audit?hours=1`);
  await ops.waitForSelector("body[data-loaded]");
  await ops.screenshot({ path: path.join(imgDir, "ops-audit.png") });
  await browser.close();
  console.log(`wrote ${imgDir}/demo.png and ops-audit.png`);
} finally {
  await service.stop();
}
