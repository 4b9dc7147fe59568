//! `private_key_jwt` and `client_secret_jwt` (RFC 7523 §2.2): the broker signs a new assertion for
//! every token request, and the token endpoint verifies it with the client's public key (or the
//! shared secret). Keys are made by `openssl genpkey`, as an operator would make them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    jti: String,
    iat: u64,
    exp: u64,
}

/// A token endpoint that accepts only a valid assertion for `CLIENT_ID` addressed to itself, once
/// per `jti`; it answers `invalid_client` otherwise, as an authorization server does.
#[derive(Clone)]
pub struct VerifyAssertion {
    pub key: DecodingKey,
    pub alg: Algorithm,
    pub audience: String,
    pub jtis: Arc<Mutex<Vec<String>>>,
}

impl Respond for VerifyAssertion {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let refuse = || ResponseTemplate::new(401).set_body_json(serde_json::json!({ "error": "invalid_client" }));
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&request.body).unwrap();
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if field("client_assertion_type") != Some(ASSERTION_TYPE)
            || field("client_id") != Some(CLIENT_ID)
            || field("client_secret").is_some()
            || request.headers.get("authorization").is_some()
        {
            return refuse();
        }
        let mut validation = Validation::new(self.alg);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[CLIENT_ID]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let Ok(data) = jsonwebtoken::decode::<Claims>(field("client_assertion").unwrap_or(""), &self.key, &validation)
        else {
            return refuse();
        };
        let claims = data.claims;
        let mut jtis = self.jtis.lock().unwrap();
        if claims.sub != CLIENT_ID || claims.exp > claims.iat + 60 || jtis.contains(&claims.jti) {
            return refuse();
        }
        jtis.push(claims.jti);
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": format!("token-{}", jtis.len()), "token_type": "Bearer", "expires_in": 600,
        }))
    }
}

async fn verifying_endpoint(key: DecodingKey, alg: Algorithm) -> (MockServer, Arc<Mutex<Vec<String>>>) {
    let server = MockServer::start().await;
    let jtis = Arc::new(Mutex::new(Vec::new()));
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(VerifyAssertion {
            key,
            alg,
            audience: format!("{}/token", server.uri()),
            jtis: jtis.clone(),
        })
        .mount(&server)
        .await;
    (server, jtis)
}

/// The usual configuration with triumph signing its requests: `credential` replaces the secret.
fn assertion_config(server: &MockServer, auth_method: &str, credential: &str) -> String {
    config(&format!("{}/token", server.uri()), auth_method).replacen(
        "client_secret = { env = \"TRIUMPH_SECRET\" }",
        credential,
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_signs_a_new_assertion_per_request_with_rsa_ec_and_ed25519_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], Option<&str>, Algorithm); 5] = [
        (
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            None,
            Algorithm::RS256,
        ),
        (
            "rsa-pss",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Some("PS256"),
            Algorithm::PS256,
        ),
        (
            "p256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            None,
            Algorithm::ES256,
        ),
        (
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            None,
            Algorithm::ES384,
        ),
        ("ed25519", &["-algorithm", "ED25519"], None, Algorithm::EdDSA),
    ];
    for (name, args, signing_alg, alg) in cases {
        let (private, public) = openssl_key(dir.path(), name, args);
        let decoding = match alg {
            Algorithm::RS256 | Algorithm::PS256 => DecodingKey::from_rsa_pem(public.as_bytes()),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(public.as_bytes()),
            _ => DecodingKey::from_ec_pem(public.as_bytes()),
        }
        .unwrap();
        let (server, jtis) = verifying_endpoint(decoding, alg).await;
        let mut credential = format!("private_key = {{ file = \"{private}\" }}\nkey_id = \"{name}-2026\"");
        if let Some(signing_alg) = signing_alg {
            credential.push_str(&format!("\nsigning_alg = \"{signing_alg}\""));
        }
        let app = TestApp::spawn(&assertion_config(&server, "private_key_jwt", &credential)).await;
        for scope in ["reports:read", "reports:write"] {
            let response = app.get_token(ALICE_KEY, "triumph", Some(scope)).await;
            assert_eq!(response.status(), 200, "{name}: {}", response.text().await.unwrap());
        }
        assert_eq!(upstream_calls(&server).await, 2, "{name}");
        let jtis = jtis.lock().unwrap().clone();
        assert_eq!(
            jtis.iter().collect::<BTreeSet<_>>().len(),
            2,
            "{name}: each request signs anew"
        );
        let header = {
            let requests = server.received_requests().await.unwrap();
            let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&requests[0].body).unwrap();
            let assertion = &form.iter().find(|(k, _)| k == "client_assertion").unwrap().1;
            jsonwebtoken::decode_header(assertion).unwrap()
        };
        assert_eq!(header.kid.as_deref(), Some(format!("{name}-2026").as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_signed_with_the_wrong_key_is_502_upstream_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, registered) = openssl_key(dir.path(), "registered", &["-algorithm", "ED25519"]);
    let (other, _) = openssl_key(dir.path(), "other", &["-algorithm", "ED25519"]);
    let (server, _) = verifying_endpoint(
        DecodingKey::from_ed_pem(registered.as_bytes()).unwrap(),
        Algorithm::EdDSA,
    )
    .await;
    let app = TestApp::spawn(&assertion_config(
        &server,
        "private_key_jwt",
        &format!("private_key = {{ file = \"{other}\" }}"),
    ))
    .await;
    let response = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "upstream_error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_jwt_signs_with_the_secret_and_never_sends_it() {
    let (server, jtis) = verifying_endpoint(DecodingKey::from_secret(CLIENT_SECRET.as_bytes()), Algorithm::HS256).await;
    let app = TestApp::spawn(&assertion_config(
        &server,
        "client_secret_jwt",
        "client_secret = { env = \"TRIUMPH_SECRET\" }",
    ))
    .await;
    for scope in ["reports:read", "reports:write"] {
        assert_eq!(app.get_token(ALICE_KEY, "triumph", Some(scope)).await.status(), 200);
    }
    assert_eq!(jtis.lock().unwrap().len(), 2);
    for request in server.received_requests().await.unwrap() {
        let body = String::from_utf8_lossy(&request.body).to_string();
        assert!(!body.contains(CLIENT_SECRET), "the secret itself is never sent");
    }
}

#[test]
fn a_key_that_does_not_fit_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (p256, _) = openssl_key(
        dir.path(),
        "p256",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let token_url = "https://as.example/token";
    let with = |credential: &str, auth_method: &str| {
        let toml =
            config(token_url, auth_method).replacen("client_secret = { env = \"TRIUMPH_SECRET\" }", credential, 1);
        token_broker::settings::Settings::from_toml(&toml, &env())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let cases = [
        (
            format!("private_key = {{ file = \"{p256}\" }}\nsigning_alg = \"RS256\""),
            "upstreams.triumph.signing_alg",
        ),
        (
            "private_key = \"not a key\"".to_string(),
            "upstreams.triumph.private_key",
        ),
        (String::new(), "upstreams.triumph.private_key"),
        (
            format!("private_key = {{ file = \"{p256}\" }}\nclient_secret = \"s\""),
            "upstreams.triumph.client_secret",
        ),
    ];
    let key_material = std::fs::read_to_string(&p256)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    for (credential, named) in cases {
        let message = with(&credential, "private_key_jwt");
        assert!(message.contains(named), "{credential:?}: {message}");
        assert!(!message.contains(&key_material[..20]), "no key material in {message}");
    }
    let message = with("", "client_secret_jwt");
    assert!(message.contains("upstreams.triumph.client_secret"), "{message}");
}

/// `tls_client_auth`: a key that is not the certificate's, a file that is not a certificate, a
/// missing certificate, lists of different lengths, an unreadable `ca_file`: each stops start-up
/// naming its key, without key material in the message.
#[test]
fn a_certificate_that_does_not_fit_stops_start_up_naming_the_key() {
    use crate::helpers::pki::TestCa;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let ca_file = ca.write_ca(dir.path(), "ca.pem");
    let one = ca.client(dir.path(), "one", "broker");
    let two = ca.client(dir.path(), "two", "broker");
    let with = |lines: String| {
        let toml = config("https://as.example/token", "tls_client_auth").replacen(
            "client_secret = { env = \"TRIUMPH_SECRET\" }",
            &lines,
            1,
        );
        token_broker::settings::Settings::from_toml(&toml, &env())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let pair = |cert: &std::path::Path, key: &std::path::Path| {
        format!("client_certificate = {{ file = {cert:?} }}\nprivate_key = {{ file = {key:?} }}\nca_file = {ca_file:?}")
    };
    assert_eq!(with(pair(&one.cert, &one.key)), "", "a fitting pair is accepted");
    let cases = [
        (
            pair(&one.cert, &two.key),
            "upstreams.triumph.private_key: the private key does not belong",
        ),
        (
            pair(&one.key, &one.key),
            "upstreams.triumph.client_certificate: not a PEM certificate",
        ),
        (
            pair(&one.cert, &one.cert),
            "upstreams.triumph.private_key: not a PEM private key",
        ),
        (
            format!("private_key = {{ file = {:?} }}", one.key),
            "upstreams.triumph.client_certificate: is required",
        ),
        (
            format!(
                "client_certificate = {{ file = {:?} }}\nprivate_key = [{{ file = {:?} }}, {{ file = {:?} }}]",
                one.cert, one.key, two.key
            ),
            "upstreams.triumph.client_certificate: needs one certificate per private key",
        ),
        (
            pair(&one.cert, &one.key).replace("ca.pem", "missing.pem"),
            "upstreams.triumph.ca_file: cannot read",
        ),
        (
            format!("{}\nclient_secret = \"s\"", pair(&one.cert, &one.key)),
            "upstreams.triumph.client_secret: is not used",
        ),
    ];
    let key_material: Vec<String> = [&one.key, &two.key]
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    for (lines, named) in cases {
        let message = with(lines.clone());
        assert!(message.contains(named), "{lines}: {message}");
        for material in &key_material {
            assert!(!message.contains(&material[..20]), "no key material in {message}");
        }
    }
}
