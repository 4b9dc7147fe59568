// token-broker browser client: a dependency-free ES module, served by the broker at
// /v1/access-token-provider.js.
//
//   import { createAccessTokenProvider } from "https://broker.example.com/v1/access-token-provider.js";
//   const accessTokenProvider = createAccessTokenProvider({ url: "https://broker.example.com/v1/token/triumph" });
//   await accessTokenProvider(); // "Bearer eyJ…"
//
// The token lives in this closure only: never in localStorage, sessionStorage or a cookie.

/**
 * @typedef {Object} AccessTokenProviderOptions
 * @property {string} url The broker's token route, e.g. "https://broker.example.com/v1/token/triumph".
 * @property {string} [scope] Space-separated scopes to ask for; without it, the caller's whole grant.
 * @property {RequestCredentials} [credentials] Sent to fetch(): "include" to send the broker's cookies
 *   from another origin. Default "same-origin".
 * @property {Record<string,string> | (() => Record<string,string> | Promise<Record<string,string>>)} [headers]
 *   Extra request headers, e.g. `() => ({ Authorization: \`Bearer ${idToken}\` })`.
 * @property {string} [csrfHeader] The CSRF header the broker requires on cookie requests. Default "X-Requested-With".
 * @property {number} [maxRetries] How many times a 503/429 with Retry-After is retried. Default 3.
 * @property {number} [maxRetryDelaySeconds] Longest Retry-After honoured. Default 30.
 * @property {typeof fetch} [fetch] A fetch implementation, for tests. Default globalThis.fetch.
 */

/**
 * An Error from the broker, with the HTTP status and the broker's `error` code.
 */
export class TokenBrokerError extends Error {
  /**
   * @param {string} message
   * @param {number} status
   * @param {string} error
   * @param {number | null} [retryAfter] Seconds the broker asks to wait, when it says.
   */
  constructor(message, status, error, retryAfter = null) {
    super(message);
    this.name = "TokenBrokerError";
    /** @type {number} */
    this.status = status;
    /** @type {string} */
    this.error = error;
    /** @type {number | null} */
    this.retryAfter = retryAfter;
  }
}

/** Seconds in a Retry-After header (delay or HTTP date), or null. */
function retryAfterSeconds(response) {
  const value = response.headers.get("Retry-After");
  if (!value) return null;
  const seconds = /^\d+$/.test(value.trim()) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
  return Number.isFinite(seconds) ? Math.max(0, seconds) : null;
}

/** Seconds taken off a token's remaining life, so it is never used at the very edge of it. */
const MARGIN_SECONDS = 10;
const MARGIN_SHARE = 0.1;

/**
 * Creates the `accessTokenProvider` callback a bundle asks for.
 * It resolves to "Bearer <token>", reuses the token until shortly before its `expires_in` runs out,
 * shares one request among concurrent callers, sends the CSRF header, honours Retry-After on 503
 * (and 429), and rejects with a {@link TokenBrokerError} carrying `status` and `error` otherwise.
 *
 * @param {AccessTokenProviderOptions} options
 * @returns {(() => Promise<string>) & { token: () => Promise<string>, invalidate: () => void, reportRejected: () => Promise<string> }}
 */
export function createAccessTokenProvider(options) {
  if (!options || typeof options.url !== "string" || options.url === "") {
    throw new TypeError("createAccessTokenProvider: `url` is required");
  }
  const {
    url,
    scope,
    credentials = "same-origin",
    headers,
    csrfHeader = "X-Requested-With",
    maxRetries = 3,
    maxRetryDelaySeconds = 30,
  } = options;
  const fetchImpl = options.fetch || globalThis.fetch.bind(globalThis);

  /** @type {string | null} */
  let token = null;
  let reuseUntil = 0;
  /** @type {Promise<string> | null} */
  let inflight = null;
  /** @type {Promise<string> | null} */
  let reporting = null;
  // Bumped by invalidate(): an answer to a request sent before it is never stored.
  let generation = 0;

  const now = () => (globalThis.performance ? performance.now() : Date.now());
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function requestHeaders(json) {
    const extra = typeof headers === "function" ? await headers() : headers || {};
    const base = { Accept: "application/json", [csrfHeader]: "token-broker" };
    if (json) base["Content-Type"] = "application/json";
    return { ...base, ...extra };
  }

  function retryDelayMs(response) {
    const seconds = retryAfterSeconds(response);
    return Math.min(seconds === null ? 1 : seconds, maxRetryDelaySeconds) * 1000;
  }

  /** The broker route `suffix` ("" or "/refresh") of `url`, with the query `url` carries and `extra`. */
  function routeUrl(suffix, extra) {
    const at = url.indexOf("?");
    const [path, query] = at < 0 ? [url, ""] : [url.slice(0, at), url.slice(at + 1)];
    const params = [query, extra].filter((part) => part !== "").join("&");
    return `${path}${suffix}${params ? `?${params}` : ""}`;
  }

  /** @param {() => Promise<Response>} send */
  async function exchange(send) {
    const sentIn = generation;
    for (let attempt = 0; ; attempt += 1) {
      const response = await send();
      if ((response.status === 503 || response.status === 429) && attempt < maxRetries) {
        await sleep(retryDelayMs(response));
        continue;
      }
      let body = {};
      try {
        body = await response.json();
      } catch {
        body = {};
      }
      if (!response.ok) {
        throw new TokenBrokerError(
          body.error_description || `token-broker answered ${response.status}`,
          response.status,
          body.error || "http_error",
        );
      }
      if (typeof body.access_token !== "string" || body.access_token === "") {
        throw new TokenBrokerError("token-broker answered without an access_token", response.status, "invalid_response");
      }
      const life = Math.max(0, Number(body.expires_in) || 0);
      if (sentIn === generation) {
        token = body.access_token;
        reuseUntil = now() + Math.max(0, life - Math.min(MARGIN_SECONDS, life * MARGIN_SHARE)) * 1000;
      }
      return body.access_token;
    }
  }

  function fetchToken() {
    const target = routeUrl("", scope ? `scope=${encodeURIComponent(scope)}` : "");
    return exchange(async () =>
      fetchImpl(target, { method: "GET", credentials, cache: "no-store", headers: await requestHeaders(false) }),
    );
  }

  function shared() {
    if (!inflight) {
      const started = fetchToken().finally(() => {
        if (inflight === started) inflight = null;
      });
      inflight = started;
    }
    return inflight;
  }

  async function accessTokenProvider() {
    if (token !== null && now() < reuseUntil) return `Bearer ${token}`;
    // While a rejected token is being replaced, its replacement is the answer.
    if (reporting) return `Bearer ${await reporting}`;
    return `Bearer ${await shared()}`;
  }

  /**
   * The bare token, for libraries that add the scheme themselves (SignalR's accessTokenFactory,
   * graphql-ws connectionParams, Apollo links).
   * @returns {Promise<string>}
   */
  accessTokenProvider.token = async () => (await accessTokenProvider()).slice("Bearer ".length);

  /** Forgets the token; the next call fetches one, and a request already under way stores nothing. */
  accessTokenProvider.invalidate = () => {
    generation += 1;
    token = null;
    reuseUntil = 0;
    inflight = null;
  };

  /**
   * Tells the broker the API rejected the current token; resolves to the replacement.
   * @returns {Promise<string>}
   */
  accessTokenProvider.reportRejected = async () => {
    if (!reporting) {
      const rejected = token;
      accessTokenProvider.invalidate();
      if (rejected === null) return accessTokenProvider();
      // Its own request, never a GET already under way: that may bring back the very token the API refused.
      const body = JSON.stringify(scope ? { access_token: rejected, scope } : { access_token: rejected });
      const started = exchange(async () =>
        fetchImpl(routeUrl("/refresh", ""), {
          method: "POST",
          credentials,
          cache: "no-store",
          headers: await requestHeaders(true),
          body,
        }),
      ).finally(() => {
        if (reporting === started) reporting = null;
      });
      reporting = started;
    }
    return `Bearer ${await reporting}`;
  };

  return accessTokenProvider;
}

/**
 * @typedef {Object} ApiFetchOptions
 * @property {string} base The broker's proxy route of one upstream, e.g. "https://broker.example.com/v1/proxy/reports".
 * @property {RequestCredentials} [credentials] Sent to fetch(): "include" to send the broker's cookies from another origin. Default "same-origin".
 * @property {Record<string,string> | (() => Record<string,string> | Promise<Record<string,string>>)} [headers]
 *   Extra request headers for every call, e.g. `() => ({ Authorization: \`Bearer ${idToken}\` })`.
 * @property {string} [csrfHeader] The CSRF header the broker requires on cookie requests. Default "X-Requested-With".
 * @property {typeof fetch} [fetch] A fetch implementation, for tests. Default globalThis.fetch.
 */

/**
 * Creates a fetch-compatible function for an API behind the broker's proxy: the page never holds
 * a token. `apiFetch("/reports/42", init)` calls `${base}/reports/42`, adds the CSRF header, and
 * resolves to the API's Response, whatever its status. An answer the broker made itself (it
 * carries `X-Token-Broker-Error`) rejects with a {@link TokenBrokerError} carrying `status`,
 * `error` and `retryAfter`, as the token provider's do.
 *
 * @param {ApiFetchOptions} options
 * @returns {(path: string, init?: RequestInit) => Promise<Response>}
 */
export function createApiFetch(options) {
  if (!options || typeof options.base !== "string" || options.base === "") {
    throw new TypeError("createApiFetch: `base` is required");
  }
  const { base, credentials = "same-origin", headers, csrfHeader = "X-Requested-With" } = options;
  const fetchImpl = options.fetch || globalThis.fetch.bind(globalThis);
  const root = base.replace(/\/+$/, "");

  return async function apiFetch(path, init = {}) {
    const extra = typeof headers === "function" ? await headers() : headers || {};
    const merged = new Headers(init.headers || {});
    for (const [name, value] of Object.entries(extra)) {
      if (!merged.has(name)) merged.set(name, value);
    }
    merged.set(csrfHeader, "token-broker");
    const target = `${root}${path.startsWith("/") ? path : `/${path}`}`;
    const response = await fetchImpl(target, { credentials, ...init, headers: merged });
    const brokerError = response.headers.get("X-Token-Broker-Error");
    if (brokerError) {
      let description = "";
      try {
        description = (await response.clone().json()).error_description || "";
      } catch {
        description = "";
      }
      throw new TokenBrokerError(
        description || `token-broker answered ${response.status}`,
        response.status,
        brokerError,
        retryAfterSeconds(response),
      );
    }
    return response;
  };
}
