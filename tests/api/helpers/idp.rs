//! A stand-in OIDC issuer: discovery document and JWKS served by wiremock, and id_tokens signed
//! with the test keys of tests/fixtures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const AUDIENCE: &str = "1234.apps.googleusercontent.com";

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

pub fn jwk(name: &str) -> Value {
    serde_json::from_str(&fixture(&format!("{name}.jwk.json"))).unwrap()
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Signs `claims` with the fixture key `key`, naming `kid` in the header.
pub fn sign_as(key: &str, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let pem = fixture(&format!("{key}.pem"));
    let encoding = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        other => panic!("no fixture for {other:?}"),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

pub fn algorithm_of(key: &str) -> Algorithm {
    match key {
        "ec-p256" => Algorithm::ES256,
        "ed25519" => Algorithm::EdDSA,
        _ => Algorithm::RS256,
    }
}

struct JwksResponder {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    cache_control: Option<String>,
}

impl Respond for JwksResponder {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let keys = self.keys.lock().unwrap().clone();
        let mut template = ResponseTemplate::new(200).set_body_json(json!({ "keys": keys }));
        if let Some(value) = &self.cache_control {
            template = template.insert_header("cache-control", value.as_str());
        }
        template
    }
}

pub struct Idp {
    pub server: MockServer,
    pub issuer: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    /// An issuer publishing the given fixture keys, its JWKS answered with `cache_control`.
    pub async fn start(published: &[&str], cache_control: Option<&str>) -> Self {
        let server = MockServer::start().await;
        let issuer = server.uri();
        let keys = Arc::new(Mutex::new(published.iter().map(|k| jwk(k)).collect()));
        let fetches = Arc::new(AtomicUsize::new(0));
        Mock::given(method("GET"))
            .and(path("/.well-known/openid-configuration"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/jwks"),
            })))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(JwksResponder {
                keys: keys.clone(),
                fetches: fetches.clone(),
                cache_control: cache_control.map(String::from),
            })
            .mount(&server)
            .await;
        Self {
            server,
            issuer,
            keys,
            fetches,
        }
    }

    pub fn publish(&self, published: &[&str]) {
        *self.keys.lock().unwrap() = published.iter().map(|k| jwk(k)).collect();
    }

    pub fn jwks_fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Claims of a valid id_token for `sub`.
    pub fn claims(&self, sub: &str) -> Value {
        json!({
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now(),
            "exp": now() + 3600,
        })
    }

    /// A valid id_token for `sub` signed by `key`.
    pub fn token(&self, key: &str, sub: &str) -> String {
        sign_as(key, algorithm_of(key), Some(key), &self.claims(sub))
    }
}

/// The `[[authenticators]]` table of a jwt authenticator for `issuer`.
pub fn jwt_authenticator(issuer: &str) -> String {
    format!(
        r#"
        [[authenticators]]
        type = "jwt"
        issuer = "{issuer}"
        audiences = ["{AUDIENCE}"]
        "#
    )
}
