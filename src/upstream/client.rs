//! The client-credentials token request (RFC 6749 §4.4) and the parsing of its answer (§5.1, §5.2).

use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::error::{OAuthErrorCode, UpstreamError};
use crate::outbound::{self, FetchError};
use crate::scope::{join_scopes, parse_scope_param, ScopeSet};
use crate::telemetry::traces;
use crate::upstream::assertion;
use crate::upstream::config::{AssertionAudience, ClientAuthMethod, Credential, Fingerprint, UpstreamSettings};
use crate::upstream::endpoint::Target;
use opentelemetry::trace::SpanKind;

/// Token responses are small; anything larger is refused before it fills memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A lifetime beyond a year is a mistake on the upstream's side, not a token to keep.
pub const MAX_LIFETIME: Duration = Duration::from_secs(31_557_600);

/// An access token as the token endpoint issued it.
#[derive(Debug)]
pub struct FetchedToken {
    pub access_token: SecretString,
    pub lifetime: Duration,
    /// Which of the upstream's credentials fetched it.
    pub credential: Fingerprint,
    /// The scopes the endpoint says it granted (RFC 6749 §5.1), when it said so.
    pub granted: Option<ScopeSet>,
}

/// Talks to token endpoints. One per process: it holds the connection pool.
#[derive(Debug, Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    default_ttl: Duration,
}

impl TokenClient {
    /// `http` should come from [`TokenClient::http_client`], shared by every upstream (one pool).
    pub fn new(http: reqwest::Client, default_ttl: Duration) -> Self {
        Self { http, default_ttl }
    }

    /// The HTTP client shared by the token endpoints (and issuers' metadata).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The HTTP client for token endpoints: no redirects; each upstream's `timeout` bounds the
    /// exchange around it.
    pub fn http_client() -> reqwest::Client {
        outbound::client(None)
    }

    /// One token request to `upstream`'s endpoint `target` for `scopes`, presenting `credential`
    /// (whose fingerprint the token will carry). The caller bounds it in time.
    pub async fn fetch(
        &self,
        upstream: &UpstreamSettings,
        target: &Target,
        (credential, fingerprint): (&Credential, Fingerprint),
        scopes: &ScopeSet,
    ) -> Result<FetchedToken, UpstreamError> {
        let scope = join_scopes(scopes);
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        if let Some(audience) = &upstream.audience {
            form.push(("audience", audience));
        }
        // RFC 8707 §2: one `resource` parameter per resource indicator.
        form.extend(upstream.resource.iter().map(|r| ("resource", r.as_str())));
        form.extend(upstream.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));

        // A client certificate travels on its own client's connections (RFC 8705).
        let http = match credential {
            Credential::Certificate(certificate) => certificate.client(),
            _ => upstream.http(&self.http),
        };
        let mut request = http.post(target.token_url.clone()).header(ACCEPT, "application/json");
        // Declared before the match: the form borrows it.
        let signed_assertion: String;
        match (upstream.auth_method, credential) {
            (ClientAuthMethod::ClientSecretPost, Credential::Secret(secret)) => {
                form.push(("client_id", &upstream.client_id));
                form.push(("client_secret", secret.expose_secret()));
            }
            (ClientAuthMethod::ClientSecretBasic, Credential::Secret(secret)) => {
                request = request.header(AUTHORIZATION, basic_authorization(&upstream.client_id, secret));
            }
            (ClientAuthMethod::ClientSecretJwt | ClientAuthMethod::PrivateKeyJwt, _) => {
                // Signed here, per request: each assertion has its own `jti` and a 60-second life.
                let audience = match (upstream.assertion_audience, &target.issuer) {
                    (AssertionAudience::Issuer, Some(issuer)) => issuer.as_str(),
                    _ => target.token_url.as_str(),
                };
                let signed = match (upstream.auth_method, credential) {
                    (ClientAuthMethod::PrivateKeyJwt, Credential::Key(key)) => {
                        key.sign(&upstream.client_id, audience).ok()
                    }
                    (ClientAuthMethod::ClientSecretJwt, Credential::Secret(secret)) => {
                        assertion::sign_with_secret(secret, &upstream.client_id, audience).ok()
                    }
                    _ => None,
                };
                signed_assertion = signed.ok_or(UpstreamError::InvalidResponse(
                    "the client assertion could not be signed",
                ))?;
                form.push(("client_id", &upstream.client_id));
                form.push(("client_assertion_type", assertion::ASSERTION_TYPE));
                form.push(("client_assertion", &signed_assertion));
            }
            (
                ClientAuthMethod::TlsClientAuth | ClientAuthMethod::SelfSignedTlsClientAuth,
                Credential::Certificate(_),
            ) => {
                // RFC 8705 §2: the certificate authenticates; the form names the client.
                form.push(("client_id", &upstream.client_id));
            }
            // The settings pair each method with its kind of credential before this runs.
            _ => {
                return Err(UpstreamError::InvalidResponse(
                    "no credential for the authentication method",
                ))
            }
        }
        let body =
            serde_urlencoded::to_string(&form).map_err(|_| UpstreamError::InvalidResponse("request encoding"))?;
        let exchange = async {
            let mut trace_headers = HeaderMap::new();
            traces::inject(&mut trace_headers);
            let response = request
                .headers(trace_headers)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .map_err(transport_error)?;
            let status = response.status();
            let retry_after = parse_retry_after(response.headers());
            Ok::<_, UpstreamError>((status, retry_after, read_capped(response).await?))
        };
        let (status, retry_after, body) = traces::in_span("token endpoint", SpanKind::Client, exchange).await?;

        if status.is_success() {
            let token = parse_token_response(&body, self.default_ttl, fingerprint)?;
            // A token wider than asked would let the browser do more than its grant (RFC 6749 §3.3).
            // With no `scope` sent (a grant that lists none), the endpoint's default is what was asked.
            match &token.granted {
                Some(granted) if !scopes.is_empty() && !granted.is_subset(scopes) => Err(UpstreamError::ScopeWidened),
                _ => Ok(token),
            }
        } else if status.as_u16() == 429 {
            Err(UpstreamError::RateLimited { retry_after })
        } else if status.is_server_error() {
            Err(UpstreamError::ServerError {
                status: status.as_u16(),
                retry_after,
            })
        } else if status.is_client_error() {
            Err(UpstreamError::Refused {
                status: status.as_u16(),
                error: parse_error_code(&body),
            })
        } else {
            // Redirects are not followed: a token endpoint that moves is a configuration problem.
            Err(UpstreamError::InvalidResponse(
                "unexpected status (redirects are not followed)",
            ))
        }
    }
}

/// RFC 6749 §2.3.1: the client id and secret are form-urlencoded before they are joined and base64-encoded.
pub fn basic_authorization(client_id: &str, client_secret: &SecretString) -> String {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let joined = format!("{}:{}", encode(client_id), encode(client_secret.expose_secret()));
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(joined))
}

/// Describes a transport failure without the request (whose body holds the secret). A TLS alert
/// saying the server refused the client's certificate is a refusal of the credential.
fn transport_error(error: reqwest::Error) -> UpstreamError {
    if certificate_refused(&error) {
        UpstreamError::CertificateRefused
    } else if error.is_timeout() {
        UpstreamError::Timeout
    } else if error.is_connect() {
        UpstreamError::Unreachable("connection failed".into())
    } else {
        UpstreamError::Unreachable(super::error::BROKE_OFF.into())
    }
}

/// Whether `error` carries a TLS alert from the server about the client's certificate (missing,
/// bad, expired, revoked, from an unknown CA, or refused).
fn certificate_refused(error: &reqwest::Error) -> bool {
    use rustls::AlertDescription as A;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        // An io::Error's `source()` skips the error it wraps: look inside it too.
        let inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(current), inner].into_iter().flatten() {
            if let Some(rustls::Error::AlertReceived(alert)) = candidate.downcast_ref::<rustls::Error>() {
                return matches!(
                    alert,
                    A::BadCertificate
                        | A::UnsupportedCertificate
                        | A::CertificateRevoked
                        | A::CertificateExpired
                        | A::CertificateUnknown
                        | A::UnknownCA
                        | A::AccessDenied
                        | A::CertificateRequired
                );
            }
        }
        source = current.source();
    }
    false
}

async fn read_capped(response: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
    match outbound::read_capped(response, MAX_BODY_BYTES).await {
        Ok(body) => Ok(body),
        Err(FetchError::Transport(error)) => Err(transport_error(error)),
        Err(_) => Err(UpstreamError::InvalidResponse("response body over 64 KiB")),
    }
}

/// The longest pause an upstream's `Retry-After` can impose: past it, the broker asks again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), at most [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        // Any run of digits, however long, is a (possibly absurd) number of seconds.
        value.parse::<u64>().map_or(MAX_RETRY_AFTER, Duration::from_secs)
    } else {
        let date = httpdate::parse_http_date(value).ok()?;
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<serde_json::Value>,
    token_type: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    scope: Option<serde_json::Value>,
}

/// RFC 6749 §5.1. `expires_in` may be a number or a numeric string; absent or null means the
/// configured default; zero, negative or over a year is refused.
fn parse_token_response(
    body: &[u8],
    default_ttl: Duration,
    credential: Fingerprint,
) -> Result<FetchedToken, UpstreamError> {
    let parsed: TokenResponse =
        serde_json::from_slice(body).map_err(|_| UpstreamError::InvalidResponse("not a JSON token response"))?;
    let access_token = match parsed.access_token {
        Some(serde_json::Value::String(token)) if !token.is_empty() => token,
        _ => return Err(UpstreamError::InvalidResponse("no access_token")),
    };
    if access_token.len() > 16 * 1024 || access_token.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(UpstreamError::InvalidResponse(
            "access_token is not printable ASCII under 16 KiB",
        ));
    }
    match parsed.token_type {
        // Servers that leave out token_type issue bearer tokens in practice.
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(UpstreamError::InvalidResponse("token_type is not Bearer")),
    }
    let lifetime = match parsed.expires_in {
        None | Some(serde_json::Value::Null) => default_ttl,
        Some(value) => {
            let seconds = match &value {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|s| s.is_finite())
            .ok_or(UpstreamError::InvalidResponse("expires_in is not a number"))?;
            if seconds < 1.0 || seconds > MAX_LIFETIME.as_secs_f64() {
                return Err(UpstreamError::InvalidResponse(
                    "expires_in is not between 1 second and 1 year",
                ));
            }
            Duration::from_secs(seconds as u64)
        }
    };
    // RFC 6749 §5.1: `scope` is there when it differs from the request. One the broker cannot read
    // could be wider than asked, so it is refused; an absent or blank one means "as requested".
    let granted = match parsed.scope {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
        Some(serde_json::Value::String(s)) => {
            Some(parse_scope_param(&s).map_err(|_| UpstreamError::InvalidResponse("scope is not a list of scopes"))?)
        }
        Some(_) => return Err(UpstreamError::InvalidResponse("scope is not a string")),
    };
    Ok(FetchedToken {
        access_token: SecretString::from(access_token),
        lifetime,
        granted,
        credential,
    })
}

/// The RFC 6749 §5.2 `error` code of a refusal, if it has a plain one. The description is dropped.
fn parse_error_code(body: &[u8]) -> Option<OAuthErrorCode> {
    #[derive(Deserialize)]
    struct ErrorResponse {
        error: String,
    }
    let parsed: ErrorResponse = serde_json::from_slice(body).ok()?;
    OAuthErrorCode::parse(&parsed.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;
    use serde_json::Value;

    const TTL: Duration = Duration::from_secs(300);
    const NO_CREDENTIAL: Fingerprint = Fingerprint([0; 32]);

    /// JSON values as a hostile token endpoint might send them: extreme numbers, numeric strings.
    fn hostile_json() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| serde_json::Number::from_f64(f)
                .map(Value::Number)),
            "[-+0-9eE.]{1,40}".prop_map(Value::from),
            ".{0,24}".prop_map(Value::from),
        ]
    }

    /// Every failure of the exchange is one of the broker's own 4xx/5xx answers.
    fn is_clean_error(error: UpstreamError) -> bool {
        use actix_web::ResponseError;
        let status = crate::http::errors::ApiError::from(std::sync::Arc::new(error)).status_code();
        status.is_client_error() || status.is_server_error()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_retry_after_is_read_as_a_pause_of_at_most_an_hour(
            bytes in prop::collection::vec(any::<u8>(), 0..48),
            digits in "[0-9]{1,60}",
            date in "(Mon|Sun), [0-9]{2} (Jan|Dec) [0-9]{4,6} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
        ) {
            for value in [bytes, digits.into_bytes(), date.into_bytes()] {
                let Ok(value) = HeaderValue::from_bytes(&value) else { continue };
                let mut headers = HeaderMap::new();
                headers.insert(RETRY_AFTER, value);
                if let Some(pause) = parse_retry_after(&headers) {
                    prop_assert!(pause <= MAX_RETRY_AFTER, "{pause:?}");
                }
            }
        }

        #[test]
        fn any_token_response_is_a_bounded_token_or_a_clean_error(
            access_token in hostile_json(),
            token_type in hostile_json(),
            expires_in in hostile_json(),
            scope in hostile_json(),
        ) {
            let body = serde_json::json!({
                "access_token": access_token,
                "token_type": token_type,
                "expires_in": expires_in,
                "scope": scope,
            });
            match parse_token_response(body.to_string().as_bytes(), TTL, NO_CREDENTIAL) {
                Ok(token) => {
                    prop_assert!(token.lifetime >= Duration::from_secs(1) && token.lifetime <= MAX_LIFETIME);
                }
                Err(error) => prop_assert!(is_clean_error(error)),
            }
        }

        #[test]
        fn any_bytes_as_a_token_response_are_a_clean_error_or_a_token(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(error) = parse_token_response(&body, TTL, NO_CREDENTIAL) {
                prop_assert!(is_clean_error(error));
            }
        }
    }

    fn parse(body: &str) -> Result<FetchedToken, UpstreamError> {
        parse_token_response(body.as_bytes(), TTL, NO_CREDENTIAL)
    }

    #[test]
    fn basic_credentials_are_form_urlencoded_before_base64() {
        let header = basic_authorization("my client", &SecretString::from("a:b%c+d é".to_string()));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&header["Basic ".len()..])
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "my+client:a%3Ab%25c%2Bd+%C3%A9");
    }

    #[test]
    fn expires_in_takes_numbers_and_numeric_strings() {
        assert_eq!(
            parse(r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#)
                .unwrap()
                .lifetime
                .as_secs(),
            3600
        );
        assert_eq!(
            parse(r#"{"access_token":"t","token_type":"bearer","expires_in":"3600"}"#)
                .unwrap()
                .lifetime
                .as_secs(),
            3600
        );
        assert_eq!(
            parse(r#"{"access_token":"t","token_type":"BEARER"}"#).unwrap().lifetime,
            TTL
        );
        assert_eq!(
            parse(r#"{"access_token":"t","expires_in":null}"#).unwrap().lifetime,
            TTL
        );
    }

    #[test]
    fn unusable_responses_are_refused() {
        for body in [
            r#"{"access_token":"t","expires_in":0}"#,
            r#"{"access_token":"t","expires_in":-1}"#,
            r#"{"access_token":"t","expires_in":1e12}"#,
            r#"{"access_token":"t","expires_in":"soon"}"#,
            r#"{"access_token":"t","expires_in":true}"#,
            r#"{"access_token":"","token_type":"Bearer"}"#,
            r#"{"token_type":"Bearer","expires_in":60}"#,
            r#"{"access_token":"t","token_type":"mac"}"#,
            r#"{"access_token":42}"#,
            "<html>error</html>",
            "",
        ] {
            assert!(matches!(parse(body), Err(UpstreamError::InvalidResponse(_))), "{body}");
        }
    }

    #[test]
    fn only_plain_oauth_error_codes_are_kept() {
        assert_eq!(
            parse_error_code(br#"{"error":"invalid_client","error_description":"bad secret"}"#)
                .unwrap()
                .as_str(),
            "invalid_client"
        );
        assert!(parse_error_code(br#"{"error":"line\nbreak"}"#).is_none());
        assert!(parse_error_code(b"<html>").is_none());
    }
}
