// The admin page (`GET /admin/` on the admin listener) in real Chromium: it loads with no console
// error (a CSP violation would be one), shows each upstream's state, and draws its sparklines.
// Run by tests/api/browser.rs, which passes the broker binary in TOKEN_BROKER_BIN and where to put
// the screenshot in SCREENSHOT.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createHash } from "node:crypto";
import { startBroker, launchChromium } from "./harness.mjs";

const API_KEY = "admin-page-key";
const ADMIN_TOKEN = "admin-page-token-0123456789";
const hash = "sha256:" + createHash("sha256").update(API_KEY).digest("hex");

// A token endpoint: `reports-client` gets tokens, anyone else `invalid_client`.
let issued = 0;
const vendor = await new Promise((resolve) => {
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const form = new URLSearchParams(body);
      res.setHeader("Content-Type", "application/json");
      if (form.get("client_id") !== "reports-client") {
        res.writeHead(401).end(JSON.stringify({ error: "invalid_client" }));
        return;
      }
      issued += 1;
      res.end(JSON.stringify({ access_token: `t-${issued}`, token_type: "Bearer", expires_in: 3600 }));
    });
  });
  server.listen(0, "127.0.0.1", () => resolve({ server, origin: `http://127.0.0.1:${server.address().port}` }));
});

let broker;
let browser;

function configuration() {
  const upstream = (name, client) => `
[upstreams.${name}]
token_url = "${vendor.origin}/token"
client_id = "${client}"
client_secret = "secret"
scopes = ["read"]
timeout = "2s"
`;
  const config = `
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 1
admin_token = "${ADMIN_TOKEN}"
${upstream("reports", "reports-client")}
${upstream("partner", "partner-client")}
[[authenticators]]
type = "api_key"
keys = [{ id = "k", hash = "${hash}", subject = "user" }]

[[grants]]
subjects = ["user"]
upstreams = { reports = ["read"], partner = ["read"] }
`;
  return config;
}

const token = (upstream) =>
  fetch(`${broker.url}/v1/token/${upstream}?scope=read`, { headers: { "X-API-Key": API_KEY } });

before(async () => {
  broker = await startBroker(configuration(), "warn,token_broker=info");
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  broker?.child.kill();
  vendor.server.close();
});

test("the admin page shows each upstream's state, without a console error, and draws sparklines", async () => {
  assert.equal((await token("reports")).status, 200);
  assert.equal((await token("partner")).status, 502);

  const page = await browser.newPage({ viewport: { width: 1280, height: 640 } });
  const problems = [];
  page.on("console", (message) => {
    if (message.type() === "error" || message.type() === "warning") problems.push(message.text());
  });
  page.on("pageerror", (error) => problems.push(String(error)));

  const response = await page.goto(`${broker.admin}/admin/`);
  const csp = response.headers()["content-security-policy"];
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'sha256-/);
  // The operator types the admin token into the page (never into the URL).
  await page.waitForFunction(() => document.querySelector("#status").textContent.includes("admin token"));
  await page.fill("#token", ADMIN_TOKEN);
  await page.click("#token-form button");
  await page.waitForSelector("body[data-loaded=true]", { timeout: 10000 });

  const row = (name) => page.locator(`#upstreams tr[data-upstream="${name}"] td`);
  assert.equal(await row("reports").nth(1).textContent(), "ok");
  assert.equal(await row("partner").nth(1).textContent(), "FAILING");
  assert.match(await row("partner").nth(3).textContent(), /^refused \(invalid_client\)/);
  assert.equal(await row("reports").nth(5).textContent(), "1", "one cached token");
  assert.match(await page.locator("#tokens tbody").textContent(), /reports.*read.*memory/s);
  assert.equal(await page.locator("#status").textContent(), "1 upstream(s) failing");

  // More traffic, then the next refresh (every 5 s) draws it.
  for (let i = 0; i < 5; i++) await token("reports");
  await token("partner");
  // The last point of the served line rises above the baseline (y = 23) once the refresh sees them.
  const lastY = () =>
    page.evaluate(() => {
      const points = document.querySelector('#upstreams tr[data-upstream="reports"] polyline.served')?.getAttribute("points") ?? "";
      return Number(points.trim().split(" ").pop()?.split(",")[1] ?? 23);
    });
  await page.waitForFunction(
    () => {
      const points = document.querySelector('#upstreams tr[data-upstream="reports"] polyline.served')?.getAttribute("points") ?? "";
      return Number(points.trim().split(" ").pop()?.split(",")[1] ?? 23) < 23;
    },
    null,
    { timeout: 12000 },
  );
  assert.ok((await lastY()) < 5, "five tokens served since the last refresh: the peak of the line");

  const html = await page.content();
  assert.ok(!html.includes("t-1"), "the page never holds a token");
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  assert.deepEqual(problems, [], "no console errors or warnings");
});

test("without the admin token the page says so and shows no data", async () => {
  const page = await browser.newPage();
  await page.goto(`${broker.admin}/admin/`);
  await page.waitForFunction(() => document.querySelector("#status").textContent.includes("admin token"));
  assert.equal(await page.locator("#upstreams tbody tr").count(), 0);
});
