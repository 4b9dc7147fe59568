//! criterion micro-benchmarks of the functions on the token route's hot path:
//! `cargo bench --bench hot_paths`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use token_broker::clock::{SharedClock, SystemClock};
use token_broker::identity::{hash_key, Chain, Identity, Method, Ungated};
use token_broker::metrics::Metrics;
use token_broker::policy::{GrantSettings, Policy};
use token_broker::scope::{parse_scope_param, Scope};
use token_broker::settings::{Env, Settings};
use token_broker::timespan::TimeSpan;
use token_broker::tokens::TokenCache;
use token_broker::upstream::{TokenClient, Upstream};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn time_spans(c: &mut Criterion) {
    c.bench_function("timespan: parse \"15 min\"", |b| {
        b.iter(|| TimeSpan::parse(std::hint::black_box("15 min")))
    });
    c.bench_function("timespan: parse \"2 days ago\"", |b| {
        b.iter(|| TimeSpan::parse(std::hint::black_box("2 days ago")))
    });
}

fn policy(c: &mut Criterion) {
    let scopes = |list: &[&str]| list.iter().map(|s| Scope::parse(s).unwrap()).collect();
    // 50 grants, the caller matched by the last (by group), as a sizeable real table would be.
    let mut grants: Vec<GrantSettings> = (0..49)
        .map(|n| GrantSettings {
            subjects: vec![format!("user-{n}")],
            upstreams: [("triumph".to_string(), scopes(&["reports:read"]))].into(),
            ..Default::default()
        })
        .collect();
    grants.push(GrantSettings {
        groups: vec!["analysts".into()],
        upstreams: [("triumph".to_string(), scopes(&["reports:read", "reports:write"]))].into(),
        ..Default::default()
    });
    let policy = Policy::new(grants);
    let mut identity = Identity::new("someone", Method::Jwt);
    identity.groups = vec!["staff".into(), "analysts".into()];
    c.bench_function("policy: entitle with scope narrowing (50 grants)", |b| {
        b.iter(|| {
            let requested = parse_scope_param(std::hint::black_box("reports:read")).unwrap();
            policy.entitle(&identity, "triumph", Some(requested)).unwrap()
        })
    });
}

fn cache_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cache, upstream, _server) = runtime.block_on(async {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "bench-token", "token_type": "Bearer", "expires_in": 3600,
            })))
            .mount(&server)
            .await;
        let toml = format!(
            "[upstreams.triumph]\ntoken_url = \"{}/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\nscopes = [\"reports:read\"]\n\
             [[authenticators]]\ntype = \"api_key\"\nkeys = [{{ id = \"k\", hash = \"{}\", subject = \"s\" }}]\n",
            server.uri(),
            hash_key("k")
        );
        let settings = Settings::from_toml(&toml, &Env::new()).unwrap();
        let clock: SharedClock = Arc::new(SystemClock);
        let metrics = Arc::new(Metrics::new());
        let client = TokenClient::new(TokenClient::http_client(), Duration::from_secs(300));
        let upstream = Arc::new(Upstream::new(
            settings.upstreams["triumph"].clone(),
            client,
            clock.clone(),
            metrics.clone(),
        ));
        let cache = TokenCache::new(clock, metrics, 10_000, Duration::from_secs(60), None);
        let scopes = parse_scope_param("reports:read").unwrap();
        cache.get(&upstream, &scopes).await.unwrap();
        (cache, upstream, server)
    });
    let scopes = parse_scope_param("reports:read").unwrap();
    c.bench_function("cache: hit", |b| {
        b.iter(|| runtime.block_on(cache.get(&upstream, &scopes)).unwrap())
    });
}

fn headers(pairs: &[(HeaderName, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
    }
    map
}

fn authentication(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let jwk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/rsa-a.jwk.json")).unwrap()).unwrap();
    let (chain, issuer, _server) = runtime.block_on(async {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "keys": [jwk] })))
            .mount(&server)
            .await;
        let issuer = server.uri();
        let toml = format!(
            "[upstreams.triumph]\ntoken_url = \"{issuer}/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [[authenticators]]\ntype = \"api_key\"\nkeys = [{{ id = \"k\", hash = \"{}\", subject = \"s\" }}]\n\
             [[authenticators]]\ntype = \"jwt\"\nissuer = \"{issuer}\"\njwks_url = \"{issuer}/jwks\"\naudiences = [\"bench\"]\n",
            hash_key("bench-api-key")
        );
        let settings = Settings::from_toml(&toml, &Env::new()).unwrap();
        let clock: SharedClock = Arc::new(SystemClock);
        (Chain::new(&settings.authenticators, &clock, None), issuer, server)
    });
    let pem = std::fs::read(format!("{FIXTURES}/rsa-a.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-a".into());
    let claims = serde_json::json!({"iss": issuer, "aud": "bench", "sub": "user", "exp": now() + 3600});
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();

    let api_key = headers(&[(HeaderName::from_static("x-api-key"), "bench-api-key".into())]);
    c.bench_function("identity: API key (SHA-256, constant-time compare)", |b| {
        b.iter(|| runtime.block_on(chain.authenticate(&api_key, &Ungated)).unwrap())
    });
    let bearer = headers(&[(AUTHORIZATION, format!("Bearer {token}"))]);
    runtime.block_on(chain.authenticate(&bearer, &Ungated)).unwrap();
    c.bench_function("identity: JWT RS256, verified-token cache hit", |b| {
        b.iter(|| runtime.block_on(chain.authenticate(&bearer, &Ungated)).unwrap())
    });
    // What the cache saves: the signature and claim checks on every request.
    let key = DecodingKey::from_jwk(&serde_json::from_value(jwk_value()).unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[&issuer]);
    validation.set_audience(&["bench"]);
    c.bench_function("identity: JWT RS256, full verification (no cache)", |b| {
        b.iter(|| jsonwebtoken::decode::<BTreeMap<String, serde_json::Value>>(&token, &key, &validation).unwrap())
    });
}

fn jwk_value() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/rsa-a.jwk.json")).unwrap()).unwrap()
}

criterion_group!(benches, time_spans, policy, cache_hit, authentication);
criterion_main!(benches);
