// A real OAuth2 server for the interop tests: panva's oidc-provider with the client_credentials
// grant, one client per client authentication method, and token introspection so a test can
// prove that the token the broker hands out is one this server issued.
// Usage: node oidc-provider.mjs <client secret>; prints "listening <port>" once ready.
// With CLIENT_KEYS_DIR set, each `<name>.pub.pem` in it registers a `private_key_jwt` client
// `pkjwt-<name>` with that public key; `jwt-client` uses `client_secret_jwt`.
// With MTLS_DIR set (ca.pem, server.pem, server.key, self-signed.pem), it also listens with TLS,
// asking for client certificates (printing "tls <port>" first), advertises that listener's token
// endpoint as `mtls_endpoint_aliases`, and registers `mtls-client` (tls_client_auth: a certificate
// from ca.pem for CN=token-broker-mtls) and `self-signed-client` (self_signed_tls_client_auth:
// the certificate in self-signed.pem).
import Provider from "oidc-provider";
import http from "node:http";
import https from "node:https";
import { createHash, createPublicKey, X509Certificate } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { calculateJwkThumbprint } from "jose";

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

const keyClients = [];
const keysDir = process.env.CLIENT_KEYS_DIR;
if (keysDir) {
  for (const file of readdirSync(keysDir).filter((f) => f.endsWith(".pub.pem"))) {
    const jwk = createPublicKey(readFileSync(join(keysDir, file))).export({ format: "jwk" });
    // Registered under its RFC 7638 thumbprint, the `kid` the broker sends by default.
    jwk.kid = await calculateJwkThumbprint(jwk);
    const { client_secret, ...withoutSecret } = client(`pkjwt-${file.slice(0, -".pub.pem".length)}`, "private_key_jwt");
    keyClients.push({ ...withoutSecret, jwks: { keys: [jwk] } });
  }
}

const certificateClients = [];
let tlsServer;
let discovery = {};
const mtlsDir = process.env.MTLS_DIR;
if (mtlsDir) {
  const read = (name) => readFileSync(join(mtlsDir, name));
  tlsServer = https.createServer({
    key: read("server.key"),
    cert: read("server.pem"),
    ca: read("ca.pem"),
    requestCert: true,
    // By default the provider decides, and answers invalid_client; with MTLS_STRICT=1 the TLS
    // handshake itself refuses a certificate that ca.pem did not sign, as nginx and others do.
    rejectUnauthorized: process.env.MTLS_STRICT === "1",
  });
  await new Promise((resolve) => tlsServer.listen(0, "127.0.0.1", resolve));
  const tlsPort = tlsServer.address().port;
  console.log(`tls ${tlsPort}`);
  discovery = { mtls_endpoint_aliases: { token_endpoint: `https://127.0.0.1:${tlsPort}/token` } };
  const withoutSecret = (id, method) => {
    const { client_secret, ...rest } = client(id, method);
    return rest;
  };
  certificateClients.push({
    ...withoutSecret("mtls-client", "tls_client_auth"),
    tls_client_auth_subject_dn: "CN=token-broker-mtls",
  });
  const selfSigned = new X509Certificate(read("self-signed.pem"));
  const jwk = selfSigned.publicKey.export({ format: "jwk" });
  jwk.x5c = [selfSigned.raw.toString("base64")];
  jwk["x5t#S256"] = createHash("sha256").update(selfSigned.raw).digest("base64url");
  certificateClients.push({
    ...withoutSecret("self-signed-client", "self_signed_tls_client_auth"),
    jwks: { keys: [jwk] },
  });
}

const peerCertificate = (ctx) => {
  const peer = ctx.socket.getPeerCertificate?.();
  return peer?.raw ? new X509Certificate(peer.raw) : undefined;
};

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [
    client("basic-client", "client_secret_basic"),
    client("post-client", "client_secret_post"),
    client("jwt-client", "client_secret_jwt"),
    ...keyClients,
    ...certificateClients,
  ],
  discovery,
  clientAuthMethods: [
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    ...(mtlsDir ? ["tls_client_auth", "self_signed_tls_client_auth"] : []),
  ],
  enabledJWA: {
    clientAuthSigningAlgValues: ["HS256", "RS256", "PS256", "ES256", "ES384", "EdDSA"],
  },
  scopes: ["api:read", "api:write"],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
    mTLS: {
      enabled: Boolean(mtlsDir),
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peerCertificate,
      certificateAuthorized: (ctx) => ctx.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) =>
        property === "tls_client_auth_subject_dn" && peerCertificate(ctx)?.subject === expected,
    },
  },
  ttl: { ClientCredentials: 600 },
});

server.on("request", provider.callback());
tlsServer?.on("request", provider.callback());
console.log(`listening ${port}`);
// The reason for a refused client, on stderr, for whoever debugs a failing interop test.
provider.on("grant.error", (ctx, err) => console.error(`grant.error: ${err.error_description}; ${err.error_detail ?? ""}`));
