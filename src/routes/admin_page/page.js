"use strict";
// The admin page: what `token-broker status` shows, refreshed every few seconds, with sparklines
// of tokens served and failed exchanges per upstream. Data goes into the page as text only.
const KEY = "token-broker-admin-token";
const POINTS = 60;
const seen = new Map();


function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function get(path) {
  const token = sessionStorage.getItem(KEY);
  const response = await fetch(path, {
    cache: "no-store",
    headers: token ? { Authorization: "Bearer " + token } : {},
  });
  if (response.status === 401) throw new Error("the admin token is missing or wrong");
  if (!response.ok) throw new Error("status " + response.status);
  return response.json();
}

function span(seconds) {
  if (seconds < 60) return seconds + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m" + (seconds % 60) + "s";
  return Math.floor(seconds / 3600) + "h" + Math.floor((seconds % 3600) / 60) + "m";
}

function sparkline(series) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 " + (POINTS - 1) + " 24");
  svg.setAttribute("preserveAspectRatio", "none");
  const top = Math.max(1, ...series.served, ...series.failed);
  for (const [name, values] of [["served", series.served], ["failed", series.failed]]) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("class", name);
    // Zeros before the first refresh, so the line spans the whole width from the start.
    const padded = Array(POINTS - values.length).fill(0).concat(values);
    line.setAttribute("points", padded.map((v, i) => i + "," + (23 - (v / top) * 22).toFixed(1)).join(" "));
    svg.append(line);
  }
  return svg;
}

function remember(upstream) {
  const entry = seen.get(upstream.upstream) ?? { last: null, served: [], failed: [] };
  if (entry.last) {
    entry.served.push(Math.max(0, upstream.tokens_served - entry.last.tokens_served));
    entry.failed.push(Math.max(0, upstream.exchanges_failed - entry.last.exchanges_failed));
    entry.served = entry.served.slice(-POINTS);
    entry.failed = entry.failed.slice(-POINTS);
  }
  entry.last = upstream;
  seen.set(upstream.upstream, entry);
  return entry;
}

function renderUpstreams(upstreams, tokens, now) {
  const body = document.querySelector("#upstreams tbody");
  body.replaceChildren();
  for (const u of upstreams) {
    const row = el("tr");
    row.dataset.upstream = u.upstream;
    const error = u.last_error
      ? u.last_error.outcome + (u.last_error.oauth_error ? " (" + u.last_error.oauth_error + ")" : "") +
        " " + span(Math.max(0, now - u.last_error.at)) + " ago"
      : "—";
    const breaker = u.breaker + (u.breaker_retry_in != null ? " (" + span(u.breaker_retry_in) + " left)" : "");
    const quota = u.quota_used + "/" + (u.quota_limit ?? "—");
    const cached = tokens.filter((t) => t.upstream === u.upstream).length;
    const cells = [
      el("td", u.upstream),
      el("td", u.failing ? "FAILING" : "ok", u.failing ? "state-failing" : "state-ok"),
      el("td", breaker),
      el("td", error, u.last_error ? "" : "muted"),
      el("td", quota),
      el("td", cached),
      el("td"),
      el("td", u.token_endpoint ?? "—", "muted"),
    ];
    cells[6].append(sparkline(remember(u)));
    row.append(...cells);
    body.append(row);
  }
}

function renderTokens(tokens, now) {
  const body = document.querySelector("#tokens tbody");
  body.replaceChildren();
  for (const t of tokens) {
    const row = el("tr");
    row.append(
      el("td", t.upstream),
      el("td", t.scopes.join(" ") || "—"),
      el("td", t.source),
      el("td", t.token),
      el("td", t.credential),
      el("td", span(Math.max(0, t.served_until - now))),
    );
    body.append(row);
  }
}

async function refresh() {
  const status = document.querySelector("#status");
  // When the broker wants an admin token, ask for it before asking the API (a 401 helps nobody).
  if (document.body.dataset.auth === "required" && !sessionStorage.getItem(KEY)) {
    status.textContent = "enter the admin token";
    status.className = "muted";
    return;
  }
  try {
    const [upstreams, tokens] = await Promise.all([get("/admin/upstreams"), get("/admin/tokens")]);
    const now = Math.floor(Date.now() / 1000);
    renderUpstreams(upstreams, tokens, now);
    renderTokens(tokens, now);
    const failing = upstreams.filter((u) => u.failing).length;
    status.textContent = failing ? failing + " upstream(s) failing" : "all upstreams healthy";
    status.className = failing ? "state-failing" : "state-ok";
    document.body.dataset.loaded = "true";
  } catch (error) {
    status.textContent = error.message;
    status.className = "state-failing";
  }
}

document.querySelector("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.querySelector("#token");
  sessionStorage.setItem(KEY, input.value);
  input.value = "";
  refresh();
});

refresh();
setInterval(refresh, 5000);
