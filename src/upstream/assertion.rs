//! Client assertions (RFC 7523 §2.2, OpenID Connect Core §9): with `private_key_jwt` the broker
//! signs a short JWT with the client's private key, with `client_secret_jwt` with its secret
//! (HS256). A new assertion, with a random `jti`, for every token request.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// `client_assertion_type` for a JWT assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How far ahead `exp` is: long enough for a slow network, short enough that a captured
/// assertion is soon worthless.
pub const LIFETIME_SECS: u64 = 60;

/// What a PKCS#8 private key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn default_alg(self) -> Algorithm {
        match self {
            Self::Rsa => Algorithm::RS256,
            Self::EcP256 => Algorithm::ES256,
            Self::EcP384 => Algorithm::ES384,
            Self::Ed25519 => Algorithm::EdDSA,
        }
    }

    fn fits(self, alg: Algorithm) -> bool {
        match self {
            Self::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            Self::EcP256 => alg == Algorithm::ES256,
            Self::EcP384 => alg == Algorithm::ES384,
            Self::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rsa => "an RSA key",
            Self::EcP256 => "an EC P-256 key",
            Self::EcP384 => "an EC P-384 key",
            Self::Ed25519 => "an Ed25519 key",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM-encoded PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`)")]
    NotPkcs8,
    #[error("not an RSA, EC P-256, EC P-384 or Ed25519 private key")]
    UnknownKey,
    #[error("`{0}` is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA")]
    UnknownAlg(String),
    #[error("{alg} cannot be used with {kind}")]
    AlgDoesNotFit { alg: String, kind: KeyKind },
}

/// The client's private key for `private_key_jwt`, parsed and checked at start-up.
#[derive(Clone)]
pub struct PrivateKey {
    /// The PEM as configured: part of the credential fingerprint.
    pem: SecretString,
    encoding: EncodingKey,
    kind: KeyKind,
    alg: Algorithm,
    kid: String,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?}, kid {}, [redacted])", self.alg, self.kid)
    }
}

impl PrivateKey {
    /// `alg`: `signing_alg`, else the key's usual one; `kid`: `key_id`, else the key's RFC 7638
    /// thumbprint.
    pub fn from_pem(pem_text: &SecretString, alg: Option<&str>, kid: Option<&str>) -> Result<Self, KeyError> {
        let parsed = pem::parse(pem_text.expose_secret().trim()).map_err(|_| KeyError::NotPkcs8)?;
        if parsed.tag() != "PRIVATE KEY" {
            return Err(KeyError::NotPkcs8);
        }
        let (kind, jwk) = inspect(parsed.contents())?;
        let alg = match alg {
            None => kind.default_alg(),
            Some(text) => {
                let alg: Algorithm = text.parse().map_err(|_| KeyError::UnknownAlg(text.to_string()))?;
                if !kind.fits(alg) {
                    return Err(KeyError::AlgDoesNotFit {
                        alg: text.to_string(),
                        kind,
                    });
                }
                alg
            }
        };
        let text = pem_text.expose_secret().as_bytes();
        let encoding = match kind {
            KeyKind::Rsa => EncodingKey::from_rsa_pem(text),
            KeyKind::EcP256 | KeyKind::EcP384 => EncodingKey::from_ec_pem(text),
            KeyKind::Ed25519 => EncodingKey::from_ed_pem(text),
        }
        .map_err(|_| KeyError::UnknownKey)?;
        let kid = kid.map_or_else(
            || URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes())),
            str::to_string,
        );
        let key = Self {
            pem: pem_text.clone(),
            encoding,
            kind,
            alg,
            kid,
        };
        // One signature now, so that a key the signer cannot use stops start-up, not a request.
        key.sign("check", "https://check.invalid")
            .map_err(|_| KeyError::UnknownKey)?;
        Ok(key)
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as configured, for the credential fingerprint.
    pub fn pem(&self) -> &SecretString {
        &self.pem
    }

    /// A fresh assertion for `client_id` addressed to `audience`.
    pub fn sign(&self, client_id: &str, audience: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &Claims::new(client_id, audience), &self.encoding)
    }
}

/// A fresh `client_secret_jwt` assertion: HS256 with the client secret as the key.
pub fn sign_with_secret(
    secret: &SecretString,
    client_id: &str,
    audience: &str,
) -> Result<String, jsonwebtoken::errors::Error> {
    let key = EncodingKey::from_secret(secret.expose_secret().as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &Claims::new(client_id, audience), &key)
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

impl<'a> Claims<'a> {
    fn new(client_id: &'a str, audience: &'a str) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self {
            iss: client_id,
            sub: client_id,
            aud: audience,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            exp: now + LIFETIME_SECS,
        }
    }
}

/// The kind of a PKCS#8 key, and its public part as the canonical JWK of RFC 7638 §3.2.
fn inspect(der: &[u8]) -> Result<(KeyKind, String), KeyError> {
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        let x = b64(pair.public_key().as_ref());
        return Ok((
            KeyKind::Ed25519,
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
        ));
    }
    let rng = ring::rand::SystemRandom::new();
    for (kind, alg, crv, size) in [
        (
            KeyKind::EcP256,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            "P-256",
            32,
        ),
        (
            KeyKind::EcP384,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            "P-384",
            48,
        ),
    ] {
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(alg, der, &rng) {
            // An uncompressed point: 0x04, then x and y.
            let point = pair.public_key().as_ref();
            let (x, y) = point[1..].split_at(size);
            return Ok((
                kind,
                format!(r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#, b64(x), b64(y)),
            ));
        }
    }
    if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
        let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        let strip = |bytes: &[u8]| b64(&bytes[bytes.iter().take_while(|b| **b == 0).count()..]);
        return Ok((
            KeyKind::Rsa,
            format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                strip(&public.e),
                strip(&public.n)
            ),
        ));
    }
    Err(KeyError::UnknownKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn ed25519_pem() -> SecretString {
        SecretString::from(crate::public_tokens::SigningKey::generate_pem())
    }

    fn ec_pem(alg: &'static signature::EcdsaSigningAlgorithm) -> SecretString {
        let rng = ring::rand::SystemRandom::new();
        let document = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        SecretString::from(pem::encode(&pem::Pem::new("PRIVATE KEY", document.as_ref().to_vec())))
    }

    #[derive(serde::Deserialize)]
    struct Decoded {
        iss: String,
        sub: String,
        aud: String,
        jti: String,
        iat: u64,
        exp: u64,
    }

    #[test]
    fn the_algorithm_follows_the_key_and_must_fit_it() {
        let ed = PrivateKey::from_pem(&ed25519_pem(), None, None).unwrap();
        assert_eq!((ed.kind(), ed.alg()), (KeyKind::Ed25519, Algorithm::EdDSA));
        let p256 = ec_pem(&signature::ECDSA_P256_SHA256_FIXED_SIGNING);
        assert_eq!(PrivateKey::from_pem(&p256, None, None).unwrap().alg(), Algorithm::ES256);
        let p384 = ec_pem(&signature::ECDSA_P384_SHA384_FIXED_SIGNING);
        assert_eq!(PrivateKey::from_pem(&p384, None, None).unwrap().alg(), Algorithm::ES384);
        assert!(matches!(
            PrivateKey::from_pem(&p256, Some("ES384"), None),
            Err(KeyError::AlgDoesNotFit { .. })
        ));
        assert!(matches!(
            PrivateKey::from_pem(&p256, Some("RS256"), None),
            Err(KeyError::AlgDoesNotFit { .. })
        ));
        assert_eq!(
            PrivateKey::from_pem(&p256, Some("HS256"), None).unwrap_err(),
            KeyError::AlgDoesNotFit {
                alg: "HS256".into(),
                kind: KeyKind::EcP256
            }
        );
        assert!(matches!(
            PrivateKey::from_pem(&p256, Some("none"), None),
            Err(KeyError::UnknownAlg(_))
        ));
        assert_eq!(
            PrivateKey::from_pem(&SecretString::from("not a key"), None, None).unwrap_err(),
            KeyError::NotPkcs8
        );
        let public_only = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            PrivateKey::from_pem(&SecretString::from(public_only), None, None).unwrap_err(),
            KeyError::NotPkcs8
        );
    }

    #[test]
    fn the_key_id_is_the_rfc_7638_thumbprint_unless_given() {
        // RFC 8037 appendix A.1/A.3: this Ed25519 key's thumbprint.
        let rfc8037 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        let key = PrivateKey::from_pem(&SecretString::from(rfc8037), None, None).unwrap();
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        let named = PrivateKey::from_pem(&SecretString::from(rfc8037), None, Some("2026-11")).unwrap();
        assert_eq!(named.kid(), "2026-11");
        assert!(!format!("{named:?}").contains("MC4CAQAw"), "Debug shows no key");
    }

    #[test]
    fn each_assertion_is_new_short_lived_and_names_the_client() {
        let pem = ed25519_pem();
        let key = PrivateKey::from_pem(&pem, None, None).unwrap();
        let first = key.sign("broker", "https://as.example/token").unwrap();
        let second = key.sign("broker", "https://as.example/token").unwrap();
        let header = jsonwebtoken::decode_header(&first).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(key.kid()));

        let parsed = pem::parse(pem.expose_secret()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(parsed.contents()).unwrap();
        let decoding = DecodingKey::from_ed_der(pair.public_key().as_ref());
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["https://as.example/token"]);
        let a = jsonwebtoken::decode::<Decoded>(&first, &decoding, &validation)
            .unwrap()
            .claims;
        let b = jsonwebtoken::decode::<Decoded>(&second, &decoding, &validation)
            .unwrap()
            .claims;
        assert_eq!(
            (a.iss.as_str(), a.sub.as_str(), a.aud.as_str()),
            ("broker", "broker", "https://as.example/token")
        );
        assert_ne!(a.jti, b.jti, "every assertion has its own jti");
        assert!(a.exp > a.iat && a.exp - a.iat <= 60);

        let secret = SecretString::from("a-client-secret-of-some-length-000");
        let hs = sign_with_secret(&secret, "broker", "https://as.example/token").unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["https://as.example/token"]);
        let claims = jsonwebtoken::decode::<Decoded>(
            &hs,
            &DecodingKey::from_secret(secret.expose_secret().as_bytes()),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims.sub, "broker");
    }
}
