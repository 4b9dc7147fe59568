// An app's use of the client as its docs show it; tsc --strict must accept it and esbuild bundle it.
import { createAccessTokenProvider, createApiFetch, TokenBrokerError } from "token-broker-client";

const provider = createAccessTokenProvider({
  url: "https://broker.example.com/v1/token/triumph",
  scope: "reports:read",
  credentials: "include",
  headers: async () => ({ Authorization: "Bearer id-token" }),
});

export async function authorization(): Promise<string> {
  return provider();
}

export async function bareToken(): Promise<string> {
  return provider.token();
}

export async function afterRejection(): Promise<string> {
  provider.invalidate();
  return provider.reportRejected();
}

const apiFetch = createApiFetch({ base: "https://broker.example.com/v1/proxy/reports", credentials: "include" });

export async function report(id: number): Promise<unknown> {
  try {
    const response: Response = await apiFetch(`/reports/${id}`, { method: "GET" });
    return await response.json();
  } catch (error) {
    if (error instanceof TokenBrokerError) {
      const wait: number | null = error.retryAfter;
      return { status: error.status, error: error.error, wait };
    }
    throw error;
  }
}
