//! Public access tokens: short-lived, scoped JWTs that the app's backend mints for its browser
//! (Trigger.dev's model). EdDSA (Ed25519) signed; `kid` is the key's RFC 7638 thumbprint; keys
//! in `previous_keys` still verify while a key is being rotated.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::scope::{Scope, ScopeSet};
use crate::timespan::TimeSpan;

/// The `typ` of minted tokens (RFC 9068 §2.1 names access tokens `at+jwt`).
pub const TOKEN_TYPE: &str = "at+jwt";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// Clock skew allowed when checking `exp` of a public token.
const LEEWAY_SECS: u64 = 5;

/// `[public_tokens]`: the app's backend mints scoped, short-lived tokens for its browser.
#[derive(Debug, Clone)]
pub struct PublicTokenSettings {
    pub signing_key: SigningKey,
    pub previous_keys: Vec<VerifyingKey>,
    pub default_expiration: Duration,
    pub max_expiration: Duration,
    pub issuer: String,
    pub mint_subjects: Vec<String>,
    /// Whose subjects `mint_subjects` are: authenticator names (default: every api_key one).
    pub mint_authenticators: Vec<String>,
}

/// A public key that verifies public tokens.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: String,
    pub public: [u8; 32],
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({})", self.kid)
    }
}

impl VerifyingKey {
    fn new(public: [u8; 32]) -> Self {
        Self {
            kid: thumbprint(&public),
            public,
        }
    }

    /// The key as a JWK (RFC 8037 §2), for `/.well-known/jwks.json`.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.public),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// The signing key; its `Debug` shows the `kid` only.
#[derive(Clone)]
pub struct SigningKey {
    pkcs8_der: Vec<u8>,
    pub verifying: VerifyingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, [redacted])", self.verifying.kid)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    #[error("not PEM")]
    NotPem,
    #[error("not an Ed25519 PKCS#8 private key (make one with `token-broker keygen`)")]
    NotEd25519Private,
    #[error("not an Ed25519 key (a PKCS#8 private key or an SPKI public key)")]
    NotEd25519,
}

/// RFC 7638 thumbprint of an Ed25519 key: SHA-256 of the canonical JWK, base64url.
pub fn thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

impl SigningKey {
    /// An Ed25519 PKCS#8 private key in PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(text: &str) -> Result<Self, SigningKeyError> {
        let pem = pem::parse(text.trim()).map_err(|_| SigningKeyError::NotPem)?;
        if pem.tag() != "PRIVATE KEY" {
            return Err(SigningKeyError::NotEd25519Private);
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pem.contents())
            .map_err(|_| SigningKeyError::NotEd25519Private)?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| SigningKeyError::NotEd25519Private)?;
        Ok(Self {
            pkcs8_der: pem.contents().to_vec(),
            verifying: VerifyingKey::new(public),
        })
    }

    /// A new random key, as PKCS#8 PEM.
    pub fn generate_pem() -> String {
        let rng = ring::rand::SystemRandom::new();
        let document = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system random source works");
        pem::encode(&pem::Pem::new("PRIVATE KEY", document.as_ref().to_vec()))
    }
}

/// A key for `previous_keys`: a PKCS#8 private key or an SPKI public key (`-----BEGIN PUBLIC KEY-----`).
pub fn verifying_key_from_pem(text: &str) -> Result<VerifyingKey, SigningKeyError> {
    let pem = pem::parse(text.trim()).map_err(|_| SigningKeyError::NotPem)?;
    match pem.tag() {
        "PRIVATE KEY" => Ok(SigningKey::from_pem(text)?.verifying),
        "PUBLIC KEY" => {
            let der = pem.contents();
            if der.len() == 44 && der[..12] == ED25519_SPKI_PREFIX {
                let public: [u8; 32] = der[12..].try_into().expect("32 bytes after the prefix");
                Ok(VerifyingKey::new(public))
            } else {
                Err(SigningKeyError::NotEd25519)
            }
        }
        _ => Err(SigningKeyError::NotEd25519),
    }
}

/// What a public token may be exchanged for: upstream → scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenScopes {
    #[serde(default)]
    pub upstreams: BTreeMap<String, Vec<String>>,
}

impl TokenScopes {
    /// The scopes as the policy uses them; malformed scopes are dropped (they could not be granted).
    pub fn rights(&self) -> BTreeMap<String, ScopeSet> {
        self.upstreams
            .iter()
            .map(|(upstream, scopes)| {
                let set = scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect();
                (upstream.clone(), set)
            })
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub scopes: TokenScopes,
}

/// Signs and verifies public tokens.
pub struct PublicTokens {
    signing: SigningKey,
    encoding: EncodingKey,
    verifying: Vec<(VerifyingKey, DecodingKey)>,
    pub issuer: String,
}

impl PublicTokens {
    pub fn new(signing: SigningKey, previous: &[VerifyingKey], issuer: &str) -> Self {
        let encoding = EncodingKey::from_ed_der(&signing.pkcs8_der);
        let verifying = std::iter::once(signing.verifying.clone())
            .chain(previous.iter().cloned())
            .map(|key| {
                let decoding = DecodingKey::from_ed_der(&key.public);
                (key, decoding)
            })
            .collect();
        Self {
            signing,
            encoding,
            verifying,
            issuer: issuer.to_string(),
        }
    }

    /// The current and previous public keys, as a JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.verifying.iter().map(|(key, _)| key.jwk()).collect::<Vec<_>>() })
    }

    /// A signed token and its `exp`; `None` only if signing fails, which a validated key does not.
    pub fn mint(&self, subject: &str, scopes: TokenScopes, now: u64, lifetime: Duration) -> Option<(String, u64)> {
        let exp = now + lifetime.as_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_string(),
            iat: now,
            exp,
            jti: uuid::Uuid::new_v4().to_string(),
            scopes,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(TOKEN_TYPE.to_string());
        header.kid = Some(self.signing.verifying.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).ok()?;
        Some((token, exp))
    }

    /// The claims of a token signed by one of our keys, of our issuer, not expired.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(TOKEN_TYPE) {
            return None;
        }
        let kid = header.kid?;
        let (_, key) = self.verifying.iter().find(|(k, _)| k.kid == kid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECS;
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .ok()
            .map(|d| d.claims)
    }
}

/// The `exp` for an `expirationTime` given at `now` (Unix seconds): a time span ("1hr", "15 min";
/// past forms refused), a Unix timestamp in seconds, or an RFC 3339 date. Absent: `default`.
/// The error says what is wrong, for the 400 answer.
pub fn expiration(
    value: Option<&serde_json::Value>,
    now: u64,
    default: Duration,
    max: Duration,
) -> Result<u64, String> {
    use serde_json::Value;
    let exp = match value {
        None | Some(Value::Null) => now + default.as_secs(),
        Some(Value::Number(n)) => match n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        {
            Some(timestamp) => timestamp,
            None => return Err("expirationTime is in the past".into()),
        },
        Some(Value::String(text)) => match TimeSpan::parse(text) {
            Ok(span) if span.seconds() <= 0 => return Err("expirationTime is in the past".into()),
            Ok(span) => now.saturating_add(span.seconds() as u64),
            Err(span_error) => match OffsetDateTime::parse(text.trim(), &Rfc3339) {
                Ok(date) => u64::try_from(date.unix_timestamp()).unwrap_or(0),
                Err(_) => {
                    return Err(format!(
                        "expirationTime: {span_error}; or give a Unix timestamp or an RFC 3339 date"
                    ))
                }
            },
        },
        Some(_) => return Err("expirationTime must be a time span, a Unix timestamp or an RFC 3339 date".into()),
    };
    if exp <= now {
        return Err("expirationTime is in the past".into());
    }
    if exp - now > max.as_secs() {
        return Err(format!(
            "expirationTime is beyond max_expiration ({})",
            TimeSpan::from_seconds(max.as_secs() as i64)
        ));
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_expiration_form_of_the_trigger_dev_page() {
        let now = 1_800_000_000;
        let (default, max) = (Duration::from_secs(900), Duration::from_secs(86_400 * 30));
        let exp = |v: serde_json::Value| expiration(Some(&v), now, default, max);
        assert_eq!(expiration(None, now, default, max), Ok(now + 900));
        assert_eq!(exp(serde_json::json!("1hr")), Ok(now + 3600));
        assert_eq!(exp(serde_json::json!("15 min")), Ok(now + 900));
        assert_eq!(exp(serde_json::json!("2 days")), Ok(now + 172_800));
        assert_eq!(exp(serde_json::json!("1 week")), Ok(now + 604_800));
        assert_eq!(exp(serde_json::json!(now + 120)), Ok(now + 120));
        // 1_800_000_000 is 2027-01-15T08:00:00Z.
        assert_eq!(exp(serde_json::json!("2027-01-15T09:00:00Z")), Ok(now + 3600));
        assert_eq!(exp(serde_json::json!("2027-01-15T10:00:00+01:00")), Ok(now + 3600));
        assert_eq!(
            exp(serde_json::json!("2027-01-15T07:00:00Z")),
            Err("expirationTime is in the past".to_string())
        );
        for past in [
            serde_json::json!("-1h"),
            serde_json::json!("1h ago"),
            serde_json::json!(now - 1),
        ] {
            assert_eq!(exp(past), Err("expirationTime is in the past".to_string()));
        }
        assert!(exp(serde_json::json!("3 months")).unwrap_err().contains("months"));
        assert!(exp(serde_json::json!("soon")).is_err());
        assert!(exp(serde_json::json!(true)).is_err());
        let too_far = expiration(
            Some(&serde_json::json!("2 days")),
            now,
            default,
            Duration::from_secs(86_400),
        );
        assert_eq!(too_far, Err("expirationTime is beyond max_expiration (1d)".to_string()));
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 8037 Appendix A.3: the thumbprint of the example Ed25519 key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let public: [u8; 32] = x.try_into().unwrap();
        assert_eq!(thumbprint(&public), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn a_minted_token_verifies_and_a_foreign_or_tampered_one_does_not() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let tokens = PublicTokens::new(key, &[], "token-broker");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (token, exp) = tokens
            .mint("user-42", TokenScopes::default(), now, Duration::from_secs(60))
            .unwrap();
        assert_eq!(exp, now + 60);
        let claims = tokens.verify(&token).unwrap();
        assert_eq!(claims.sub, "user-42");

        let other = PublicTokens::new(
            SigningKey::from_pem(&SigningKey::generate_pem()).unwrap(),
            &[],
            "token-broker",
        );
        assert!(other.verify(&token).is_none());
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = URL_SAFE_NO_PAD
            .encode(br#"{"iss":"token-broker","sub":"admin","iat":0,"exp":99999999999,"jti":"x","scopes":{}}"#);
        assert!(tokens.verify(&parts.join(".")).is_none());
    }

    #[test]
    fn previous_keys_verify_as_public_or_private_pem() {
        let old_pem = SigningKey::generate_pem();
        let old = SigningKey::from_pem(&old_pem).unwrap();
        let spki = pem::encode(&pem::Pem::new(
            "PUBLIC KEY",
            [&ED25519_SPKI_PREFIX[..], &old.verifying.public[..]].concat(),
        ));
        assert_eq!(verifying_key_from_pem(&spki).unwrap().kid, old.verifying.kid);
        assert_eq!(verifying_key_from_pem(&old_pem).unwrap().kid, old.verifying.kid);
        assert!(verifying_key_from_pem("junk").is_err());
    }
}
