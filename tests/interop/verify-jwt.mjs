// Verifies a JWT against a JWKS URL with panva's jose, an implementation independent of the
// broker's. Usage: node verify-jwt.mjs <jwks url> <issuer> <token>; prints the header and payload
// as JSON, or exits 1 with the reason.
import { createRemoteJWKSet, jwtVerify } from "jose";

const [jwksUrl, issuer, token] = process.argv.slice(2);
try {
  const keys = createRemoteJWKSet(new URL(jwksUrl));
  const { payload, protectedHeader } = await jwtVerify(token, keys, { issuer, algorithms: ["EdDSA"] });
  console.log(JSON.stringify({ header: protectedHeader, payload }));
} catch (error) {
  console.error(`${error.code || error.name}: ${error.message}`);
  process.exit(1);
}
