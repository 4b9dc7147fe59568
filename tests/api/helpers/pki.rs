//! Certificates made for a test with rcgen: a CA, server certificates for 127.0.0.1 and client
//! certificates it signs, and self-signed client certificates. Written as PEM files, as an operator
//! would hold them.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key (PKCS#8), as files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn params(cn: &str, sans: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    params.distinguished_name = name;
    params
}

fn write(dir: &Path, name: &str, cert: &str, key: &KeyPair) -> Pair {
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pair.cert, cert).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    pair
}

impl TestCa {
    pub fn new(cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut ca = params(cn, &[]);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = ca.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(ca, key),
            pem,
        }
    }

    /// Writes the CA certificate to `dir/<name>` and returns its path.
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A certificate for 127.0.0.1 (and `localhost`), as a server on loopback presents.
    pub fn server(&self, dir: &Path, name: &str) -> Pair {
        self.issue(dir, name, "127.0.0.1", &["127.0.0.1", "localhost"])
    }

    /// A client certificate whose subject is `CN=<cn>`.
    pub fn client(&self, dir: &Path, name: &str, cn: &str) -> Pair {
        self.issue(dir, name, cn, &[])
    }

    fn issue(&self, dir: &Path, name: &str, cn: &str, sans: &[&str]) -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = params(cn, sans).signed_by(&key, &self.issuer).unwrap();
        write(dir, name, &cert.pem(), &key)
    }
}

/// A self-signed client certificate whose subject is `CN=<cn>`.
pub fn self_signed(dir: &Path, name: &str, cn: &str) -> Pair {
    let key = KeyPair::generate().unwrap();
    let cert = params(cn, &[]).self_signed(&key).unwrap();
    write(dir, name, &cert.pem(), &key)
}
