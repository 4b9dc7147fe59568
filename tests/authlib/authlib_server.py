"""A second OAuth2 server for the interop tests, independent of oidc-provider: Authlib's
authorization server (on Flask) with the client_credentials grant and private_key_jwt client
authentication (RFC 7523), verifying each assertion with the client's registered public key and
refusing a `jti` it has seen.

Usage: python authlib_server.py <client_id>=<RSA|EC|OKP>:<public key PEM file> ...
Prints "listening <port>" once ready. GET /issued?token=… says to which client and for which
scope the server issued a token (so a test can tell the token is one this server made).
"""

import sys

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from flask import Flask, jsonify, request
from joserfc import jwk
from werkzeug.serving import make_server

METHOD = "private_key_jwt"
SCOPES = {"api:read", "api:write"}

app = Flask(__name__)
issued = {}
seen_jtis = set()


class Client(ClientMixin):
    def __init__(self, client_id, key_type, public_pem):
        self.client_id = client_id
        self.public_key = jwk.import_key(public_pem, key_type)

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        asked = set((scope or "").split())
        return " ".join(sorted(asked & SCOPES))

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return False

    def check_endpoint_auth_method(self, method, endpoint):
        return method == METHOD

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"


clients = {}
for argument in sys.argv[1:]:
    client_id, key = argument.split("=", 1)
    key_type, path = key.split(":", 1)
    with open(path, "rb") as file:
        clients[client_id] = Client(client_id, key_type, file.read())


class PrivateKeyJwt(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = METHOD

    def get_audiences(self):
        return [request.url_root.rstrip("/") + "/token", request.url_root.rstrip("/")]

    def validate_jti(self, claims, jti):
        key = (claims["sub"], jti)
        if key in seen_jtis:
            return False
        seen_jtis.add(key)
        return True

    def resolve_client_public_key(self, client):
        return client.public_key


class ClientCredentials(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [METHOD]


def save_token(token, request):
    issued[token["access_token"]] = {"client_id": request.client.client_id, "scope": token.get("scope", "")}


server = AuthorizationServer(app, query_client=clients.get, save_token=save_token)
server.register_client_auth_method(METHOD, PrivateKeyJwt())
server.register_grant(ClientCredentials)


@app.post("/token")
def token():
    return server.create_token_response()


@app.get("/issued")
def issued_to():
    return jsonify(issued.get(request.args.get("token", ""), {}))


http = make_server("127.0.0.1", 0, app, threaded=True)
print(f"listening {http.port}", flush=True)
http.serve_forever()
