//! Client certificates for `tls_client_auth` and `self_signed_tls_client_auth` (RFC 8705): the
//! certificate chain and private key (PEM) are presented on the token request's TLS connection,
//! through an HTTP client of their own, built (and so checked) at start-up.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::outbound;

/// Private key PEM labels TLS can use: PKCS#8, PKCS#1 (RSA) and SEC1 (EC).
const KEY_LABELS: &[&str] = &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("not a PEM certificate chain (`-----BEGIN CERTIFICATE-----`)")]
    NotCertificates,
    #[error("not a PEM private key (PKCS#8, or RSA or EC in their own PEM forms)")]
    NotKey,
    #[error("the private key does not belong to the certificate, or is not an RSA, EC or Ed25519 key")]
    Mismatch,
}

/// A client certificate and its key, with the HTTP client that presents them.
#[derive(Clone)]
pub struct ClientCertificate {
    /// Certificate chain then key, as PEM: the identity, and part of the credential fingerprint.
    material: SecretString,
    client: reqwest::Client,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientCertificate([redacted])")
    }
}

impl ClientCertificate {
    /// `roots`: the CAs the token endpoint's certificate must chain to (`ca_file`), else the
    /// built-in ones.
    pub fn from_pem(
        certificate: &SecretString,
        key: &SecretString,
        roots: Option<&[reqwest::Certificate]>,
    ) -> Result<Self, CertificateError> {
        let chain = pem::parse_many(certificate.expose_secret()).map_err(|_| CertificateError::NotCertificates)?;
        if chain.is_empty() || chain.iter().any(|block| block.tag() != "CERTIFICATE") {
            return Err(CertificateError::NotCertificates);
        }
        let parsed_key = pem::parse(key.expose_secret().trim()).map_err(|_| CertificateError::NotKey)?;
        if !KEY_LABELS.contains(&parsed_key.tag()) {
            return Err(CertificateError::NotKey);
        }
        let material = SecretString::from(format!(
            "{}\n{}\n",
            certificate.expose_secret().trim(),
            key.expose_secret().trim()
        ));
        let identity =
            reqwest::Identity::from_pem(material.expose_secret().as_bytes()).map_err(|_| CertificateError::Mismatch)?;
        let client = outbound::tls_client(roots, Some(identity)).map_err(|_| CertificateError::Mismatch)?;
        Ok(Self { material, client })
    }

    /// The client whose TLS connections present this certificate.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn material(&self) -> &SecretString {
        &self.material
    }
}
