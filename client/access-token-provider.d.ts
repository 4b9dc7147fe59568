// Type declarations for token-broker's browser client (access-token-provider.js).

export interface AccessTokenProviderOptions {
  /** The broker's token route, e.g. "https://broker.example.com/v1/token/triumph". */
  url: string;
  /** Space-separated scopes to ask for; without it, the caller's whole grant. */
  scope?: string;
  /** Sent to fetch(): "include" sends the broker's cookies from another origin. Default "same-origin". */
  credentials?: RequestCredentials;
  /** Extra request headers, or a function returning them (e.g. a fresh id_token). */
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
  /** The CSRF header the broker requires on cookie requests. Default "X-Requested-With". */
  csrfHeader?: string;
  /** How many times a 503/429 with Retry-After is retried. Default 3. */
  maxRetries?: number;
  /** Longest Retry-After honoured, in seconds. Default 30. */
  maxRetryDelaySeconds?: number;
  /** A fetch implementation, for tests. Default globalThis.fetch. */
  fetch?: typeof fetch;
}

/** A refusal from the broker: `status` is the HTTP status, `error` the broker's error code. */
export declare class TokenBrokerError extends Error {
  readonly status: number;
  readonly error: string;
  /** Seconds the broker asks to wait before trying again, when it says. */
  readonly retryAfter: number | null;
  constructor(message: string, status: number, error: string, retryAfter?: number | null);
}

export interface AccessTokenProvider {
  /** Resolves to "Bearer <token>". */
  (): Promise<string>;
  /** Resolves to the bare token, for libraries that add the scheme themselves. */
  token(): Promise<string>;
  /** Forgets the token; the next call fetches one. */
  invalidate(): void;
  /** Tells the broker the API rejected the current token; resolves to "Bearer <replacement>". */
  reportRejected(): Promise<string>;
}

export declare function createAccessTokenProvider(options: AccessTokenProviderOptions): AccessTokenProvider;

export interface ApiFetchOptions {
  /** The broker's proxy route of one upstream, e.g. "https://broker.example.com/v1/proxy/reports". */
  base: string;
  /** Sent to fetch(): "include" sends the broker's cookies from another origin. Default "same-origin". */
  credentials?: RequestCredentials;
  /** Extra request headers for every call, or a function returning them. */
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
  /** The CSRF header the broker requires on cookie requests. Default "X-Requested-With". */
  csrfHeader?: string;
  /** A fetch implementation, for tests. Default globalThis.fetch. */
  fetch?: typeof fetch;
}

/**
 * A fetch-compatible function for an API behind the broker's proxy. Resolves to the API's
 * Response; rejects with a TokenBrokerError when the broker itself refused the call.
 */
export declare function createApiFetch(
  options: ApiFetchOptions,
): (path: string, init?: RequestInit) => Promise<Response>;
