// A real OAuth2 server for the interop tests: panva's oidc-provider with the client_credentials
// grant, one client per client authentication method, and token introspection so a test can
// prove that the token the broker hands out is one this server issued.
// Usage: node oidc-provider.mjs <client secret>; prints "listening <port>" once ready.
import Provider from "oidc-provider";
import http from "node:http";

const secret = process.argv[2];
if (!secret) {
  console.error("usage: node oidc-provider.mjs <client secret>");
  process.exit(2);
}

const server = http.createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const { port } = server.address();

const client = (id, method) => ({
  client_id: id,
  client_secret: secret,
  grant_types: ["client_credentials"],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: method,
  scope: "api:read api:write",
});

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [client("basic-client", "client_secret_basic"), client("post-client", "client_secret_post")],
  scopes: ["api:read", "api:write"],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
  },
  ttl: { ClientCredentials: 600 },
});

server.on("request", provider.callback());
console.log(`listening ${port}`);
