// access-token-provider.js in a real browser: Debian's Chromium driven by playwright-core.
// A page is served from one loopback origin, the broker from another (that origin allowed by
// CORS), a session cookie or an API key authenticates. Run by tests/browser.rs, which passes the
// broker binary in TOKEN_BROKER_BIN.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startBroker, launchChromium } from "./harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const moduleSource = readFileSync(path.join(here, "../../client/access-token-provider.js"), "utf8");
const API_KEY = "browser-test-key";
const API_KEY_HASH = "sha256:" + (await import("node:crypto")).createHash("sha256").update(API_KEY).digest("hex");

/** Starts an HTTP server on a free loopback port. */
function serve(handler) {
  return new Promise((resolve) => {
    const server = http.createServer(handler);
    server.listen(0, "127.0.0.1", () => resolve({ server, origin: `http://127.0.0.1:${server.address().port}` }));
  });
}

function readBody(req) {
  return new Promise((resolve) => {
    let data = "";
    req.on("data", (c) => (data += c));
    req.on("end", () => resolve(data));
  });
}

// The vendor: a token endpoint that counts what it issues, and an API that accepts only those tokens.
const issued = new Set();
let tokenRequests = 0;
let rateLimitNext = false;
let pageOrigin = "";
let apiSawCookie = false;

const vendor = await serve(async (req, res) => {
  if (req.method === "POST" && req.url === "/token") {
    const form = new URLSearchParams(await readBody(req));
    tokenRequests += 1;
    if (rateLimitNext) {
      rateLimitNext = false;
      res.writeHead(429, { "Retry-After": "1" }).end();
      return;
    }
    const token = `vendor-token-${tokenRequests}`;
    issued.add(token);
    const scope = form.get("scope") || "";
    const expires_in = scope.includes("short") ? 4 : 3600;
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ access_token: token, token_type: "Bearer", expires_in, scope }));
    return;
  }
  if (req.url === "/api/data") {
    const cors = { "Access-Control-Allow-Origin": pageOrigin, "Access-Control-Allow-Headers": "Authorization" };
    if (req.method === "OPTIONS") return res.writeHead(204, cors).end();
    const auth = req.headers.authorization || "";
    const ok = auth.startsWith("Bearer ") && issued.has(auth.slice(7));
    apiSawCookie = apiSawCookie || Boolean(req.headers.cookie);
    res.writeHead(ok ? 200 : 401, { ...cors, "Content-Type": "application/json" });
    return res.end(JSON.stringify({ ok }));
  }
  res.writeHead(404).end();
});

// The app's session endpoint, for forward-auth.
const sessions = await serve((req, res) => {
  const cookie = req.headers.cookie || "";
  if (cookie.includes("app_session=good")) {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ sub: "browser-user" }));
  } else {
    res.writeHead(401).end();
  }
});

// Two page origins: A is allowed by the broker's CORS list, B is not. B serves its own copy of the
// module, since it may not import the broker's.
const page = (req, res) => {
  if (req.url === "/module.js") {
    res.writeHead(200, { "Content-Type": "text/javascript" });
    return res.end(moduleSource);
  }
  res.writeHead(200, { "Content-Type": "text/html" });
  res.end("<!doctype html><title>app</title><p>app</p>");
};
const pageA = await serve(page);
const pageB = await serve(page);
pageOrigin = pageA.origin;

let broker;
let brokerUrl;
let adminUrl;
let browser;
let context;

async function startTestBroker() {
  const config = `
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 1
cors_allowed_origins = ["${pageA.origin}"]

[upstreams.vendor]
token_url = "${vendor.origin}/token"
client_id = "browser-client"
client_secret = "browser-secret"
scopes = ["a", "b", "c", "short", "flaky", "store", "cross"]

[upstreams.vendor.proxy]
url = "${vendor.origin}/api"
methods = ["GET"]
paths = ["/data"]

[[authenticators]]
type = "forward"
url = "${sessions.origin}/session"
forward_cookies = ["app_session"]

[[authenticators]]
type = "api_key"
keys = [{ id = "k", hash = "${API_KEY_HASH}", subject = "browser-user" }]

[[grants]]
authenticators = ["forward", "api_key"]
subjects = ["browser-user"]
upstreams = { vendor = ["a", "b", "c", "short", "flaky", "store", "cross"] }
`;
  return startBroker(config);
}

/** Token requests the broker has answered (CORS preflights aside), by its own metrics. */
async function brokerTokenRequests() {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith('token_broker_http_requests_total{route="/v1/token/{upstream}"'))
    .filter((l) => !l.includes('status="204"'))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

async function openPage(origin) {
  const tab = await context.newPage();
  await tab.goto(`${origin}/index.html`);
  return tab;
}

before(async () => {
  ({ child: broker, url: brokerUrl, admin: adminUrl } = await startTestBroker());
  browser = await launchChromium();
  context = await browser.newContext();
  // The app's session cookie, set for the broker's host (cookies do not care about ports).
  await context.addCookies([{ name: "app_session", value: "good", domain: "127.0.0.1", path: "/" }]);
});

after(async () => {
  await browser?.close();
  broker?.kill("SIGTERM");
  for (const s of [vendor, sessions, pageA, pageB]) s.server.close();
});

test("the provider resolves to 'Bearer <token>' and the token works at the API", async () => {
  const tab = await openPage(pageA.origin);
  const result = await tab.evaluate(
    async ({ brokerUrl, vendorUrl }) => {
      const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
      const provider = createAccessTokenProvider({ url: `${brokerUrl}/v1/token/vendor`, scope: "a", credentials: "include" });
      const authorization = await provider();
      const api = await fetch(`${vendorUrl}/api/data`, { headers: { Authorization: authorization } });
      return { authorization, apiStatus: api.status };
    },
    { brokerUrl, vendorUrl: vendor.origin },
  );
  assert.match(result.authorization, /^Bearer vendor-token-\d+$/);
  assert.equal(result.apiStatus, 200);
  await tab.close();
});

test("ten concurrent calls make one request to the broker, and later calls none", async () => {
  const tab = await openPage(pageA.origin);
  const before = await brokerTokenRequests();
  const values = await tab.evaluate(async (brokerUrl) => {
    const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const provider = createAccessTokenProvider({ url: `${brokerUrl}/v1/token/vendor`, scope: "b", credentials: "include" });
    const first = await Promise.all(Array.from({ length: 10 }, () => provider()));
    const later = [];
    for (let i = 0; i < 5; i += 1) later.push(await provider());
    return [...first, ...later];
  }, brokerUrl);
  assert.equal(new Set(values).size, 1);
  assert.equal((await brokerTokenRequests()) - before, 1);
  await tab.close();
});

test("after the token's served life the provider fetches again", async () => {
  const tab = await openPage(pageA.origin);
  const before = await brokerTokenRequests();
  const [first, again, later] = await tab.evaluate(async (brokerUrl) => {
    const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const provider = createAccessTokenProvider({ url: `${brokerUrl}/v1/token/vendor`, scope: "short", credentials: "include" });
    const first = await provider();
    const again = await provider();
    // 4 s tokens are served by the broker for 3 s.
    await new Promise((r) => setTimeout(r, 3200));
    return [first, again, await provider()];
  }, brokerUrl);
  assert.equal(first, again);
  assert.notEqual(later, first);
  assert.equal((await brokerTokenRequests()) - before, 2);
  await tab.close();
});

test("401 rejects with status and error; 503 with Retry-After: 1 is retried after about a second", async () => {
  const tab = await openPage(pageA.origin);
  const refused = await tab.evaluate(async (brokerUrl) => {
    const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const provider = createAccessTokenProvider({
      url: `${brokerUrl}/v1/token/vendor`,
      credentials: "omit",
      headers: () => ({ "X-API-Key": "wrong-key" }),
    });
    try {
      await provider();
      return { resolved: true };
    } catch (e) {
      return { status: e.status, error: e.error, name: e.name };
    }
  }, brokerUrl);
  assert.deepEqual(refused, { status: 401, error: "unauthenticated", name: "TokenBrokerError" });

  rateLimitNext = true;
  const retried = await tab.evaluate(async ({ brokerUrl, apiKey }) => {
    const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const provider = createAccessTokenProvider({
      url: `${brokerUrl}/v1/token/vendor`,
      scope: "flaky",
      credentials: "omit",
      headers: { "X-API-Key": apiKey },
    });
    const started = performance.now();
    const authorization = await provider();
    return { authorization, waited: performance.now() - started };
  }, { brokerUrl, apiKey: API_KEY });
  assert.match(retried.authorization, /^Bearer vendor-token-\d+$/);
  assert.ok(retried.waited >= 900 && retried.waited < 5000, `waited ${retried.waited} ms`);
  await tab.close();
});

test("nothing lands in localStorage, sessionStorage or document.cookie", async () => {
  const tab = await openPage(pageA.origin);
  const seen = await tab.evaluate(async (brokerUrl) => {
    const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const provider = createAccessTokenProvider({ url: `${brokerUrl}/v1/token/vendor`, scope: "store", credentials: "include" });
    const token = (await provider()).slice("Bearer ".length);
    const dump = [JSON.stringify({ ...localStorage }), JSON.stringify({ ...sessionStorage }), document.cookie];
    return { token, leaked: dump.some((text) => text.includes(token)), storage: localStorage.length + sessionStorage.length };
  }, brokerUrl);
  assert.ok(seen.token.startsWith("vendor-token-"));
  assert.equal(seen.leaked, false);
  assert.equal(seen.storage, 0);
  const cookies = await context.cookies();
  assert.ok(cookies.every((c) => !c.value.includes(seen.token)));
  await tab.close();
});

test("a page from an origin that is not allowed cannot read a token", async () => {
  const tab = await openPage(pageB.origin);
  const outcome = await tab.evaluate(async (brokerUrl) => {
    let importBlocked = false;
    try {
      await import(`${brokerUrl}/v1/access-token-provider.js`);
    } catch {
      importBlocked = true;
    }
    const { createAccessTokenProvider } = await import("/module.js");
    const provider = createAccessTokenProvider({ url: `${brokerUrl}/v1/token/vendor`, scope: "cross", credentials: "include", maxRetries: 0 });
    try {
      return { importBlocked, token: await provider() };
    } catch (e) {
      return { importBlocked, rejected: e.name };
    }
  }, brokerUrl);
  assert.equal(outcome.importBlocked, true);
  assert.equal(outcome.token, undefined);
  assert.equal(outcome.rejected, "TypeError");
  await tab.close();
});

// The races below are driven by a fetch the test controls, in the same real page: each request
// waits until the test answers it, so the order of events is exact.
const controlledFetch = `
  window.requests = [];
  window.answer = (i, body) => window.requests[i].resolve(new Response(JSON.stringify(body), {
    status: 200, headers: { "Content-Type": "application/json" } }));
  window.controlledFetch = (url, init) => new Promise((resolve) => {
    window.requests.push({ url: String(url), method: init.method, body: init.body, resolve });
  });
  window.settle = () => new Promise((r) => setTimeout(r, 0));
`;

test("invalidate() during a request keeps that request's answer out of the cache", async () => {
  const tab = await openPage(pageA.origin);
  await tab.evaluate(controlledFetch);
  const outcome = await tab.evaluate(async (brokerUrl) => {
    const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const provider = createAccessTokenProvider({ url: `${brokerUrl}/v1/token/vendor`, fetch: window.controlledFetch });
    const first = provider();
    await window.settle();
    provider.invalidate();
    window.answer(0, { access_token: "before-invalidate", expires_in: 3600 });
    await first;
    const second = provider();
    await window.settle();
    const sent = window.requests.length;
    window.answer(1, { access_token: "after-invalidate", expires_in: 3600 });
    return { second: await second, sent };
  }, brokerUrl);
  assert.deepEqual(outcome, { second: "Bearer after-invalidate", sent: 2 });
  await tab.close();
});

test("reportRejected() posts to /refresh even while a GET is under way", async () => {
  const tab = await openPage(pageA.origin);
  await tab.evaluate(controlledFetch);
  const outcome = await tab.evaluate(async (brokerUrl) => {
    const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const provider = createAccessTokenProvider({ url: `${brokerUrl}/v1/token/vendor`, fetch: window.controlledFetch });
    // A token with no life left: the next call sends a GET, and the API rejects the token meanwhile.
    const first = provider();
    await window.settle();
    window.answer(0, { access_token: "rejected-token", expires_in: 0 });
    await first;
    const pending = provider();
    await window.settle();
    const reported = provider.reportRejected();
    await window.settle();
    const sent = window.requests.map((r) => [r.method, r.url.replace(brokerUrl, ""), r.body ?? null]);
    window.answer(1, { access_token: "rejected-token", expires_in: 3600 });
    window.answer(2, { access_token: "replacement", expires_in: 3600 });
    await pending;
    return { reported: await reported, sent, next: await provider() };
  }, brokerUrl);
  assert.deepEqual(outcome.sent, [
    ["GET", "/v1/token/vendor", null],
    ["GET", "/v1/token/vendor", null],
    ["POST", "/v1/token/vendor/refresh", JSON.stringify({ access_token: "rejected-token" })],
  ]);
  assert.equal(outcome.reported, "Bearer replacement");
  assert.equal(outcome.next, "Bearer replacement");
  await tab.close();
});

test("a url with a query string keeps it on the token route and on /refresh", async () => {
  const tab = await openPage(pageA.origin);
  await tab.evaluate(controlledFetch);
  const urls = await tab.evaluate(async (brokerUrl) => {
    const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const provider = createAccessTokenProvider({
      url: `${brokerUrl}/v1/token/vendor?tenant=t1`,
      scope: "a b",
      fetch: window.controlledFetch,
    });
    const first = provider();
    await window.settle();
    window.answer(0, { access_token: "t", expires_in: 3600 });
    await first;
    const reported = provider.reportRejected();
    await window.settle();
    window.answer(1, { access_token: "t2", expires_in: 3600 });
    await reported;
    return window.requests.map((r) => r.url.replace(brokerUrl, ""));
  }, brokerUrl);
  assert.deepEqual(urls, ["/v1/token/vendor?tenant=t1&scope=a%20b", "/v1/token/vendor/refresh?tenant=t1"]);
  await tab.close();
});

test("provider.token() resolves to the bare token", async () => {
  const tab = await openPage(pageA.origin);
  const [bearer, bare] = await tab.evaluate(async (brokerUrl) => {
    const { createAccessTokenProvider } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const provider = createAccessTokenProvider({ url: `${brokerUrl}/v1/token/vendor`, scope: "c", credentials: "include" });
    return [await provider(), await provider.token()];
  }, brokerUrl);
  assert.match(bare, /^vendor-token-\d+$/);
  assert.equal(bearer, `Bearer ${bare}`);
  await tab.close();
});

test("createApiFetch calls the API through the broker: the page never sees a token, another origin reads nothing", async () => {
  const tab = await openPage(pageA.origin);
  const seen = await tab.evaluate(async (brokerUrl) => {
    const { createApiFetch, TokenBrokerError } = await import(`${brokerUrl}/v1/access-token-provider.js`);
    const apiFetch = createApiFetch({ base: `${brokerUrl}/v1/proxy/vendor`, credentials: "include" });
    const response = await apiFetch("/data");
    const headers = [...response.headers.entries()].map(([k, v]) => `${k}: ${v}`).join("\n");
    const body = await response.text();
    let refused = null;
    try {
      await apiFetch("/not-allowed");
    } catch (e) {
      refused = { name: e.name, isBrokerError: e instanceof TokenBrokerError, status: e.status, error: e.error };
    }
    return { status: response.status, body, headers, refused };
  }, brokerUrl);
  assert.equal(seen.status, 200);
  assert.deepEqual(JSON.parse(seen.body), { ok: true }, "the API accepted the token the broker added");
  for (const token of issued) {
    assert.ok(!seen.body.includes(token) && !seen.headers.includes(token), "no token reaches the page");
  }
  assert.equal(apiSawCookie, false, "the session cookie stays with the broker");
  assert.deepEqual(seen.refused, { name: "TokenBrokerError", isBrokerError: true, status: 403, error: "access_denied" });
  await tab.close();

  const other = await openPage(pageB.origin);
  const outcome = await other.evaluate(async (brokerUrl) => {
    const { createApiFetch } = await import("/module.js");
    const apiFetch = createApiFetch({ base: `${brokerUrl}/v1/proxy/vendor`, credentials: "include" });
    try {
      const response = await apiFetch("/data");
      return { read: await response.text() };
    } catch (e) {
      return { rejected: e.name };
    }
  }, brokerUrl);
  assert.deepEqual(outcome, { rejected: "TypeError" });
  await other.close();
});
