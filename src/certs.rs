//! The default certificate: self-signed, generated at start, presented for
//! every host without a usable certificate of its own.

use crate::build::tls::parse_pair;
use crate::config::Certificate;

/// Name of the default certificate's files (`certs/default.crt`).
pub const DEFAULT_CERT_NAME: &str = "default";

#[derive(Debug, thiserror::Error)]
#[error("generating the default certificate: {0}")]
pub struct CertError(String);

/// Generates a fresh self-signed certificate (ECDSA P-256) for the default
/// server. It names no real host, so clients do not trust it.
pub fn generate_default() -> Result<Certificate, CertError> {
    let key = rcgen::KeyPair::generate().map_err(|e| CertError(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec!["wicket.invalid".to_string()])
        .map_err(|e| CertError(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wicket default certificate");
    let cert = params
        .self_signed(&key)
        .map_err(|e| CertError(e.to_string()))?;
    let pair =
        parse_pair(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).map_err(CertError)?;
    Ok(Certificate {
        name: DEFAULT_CERT_NAME.to_string(),
        cert_pem: pair.cert_pem,
        key_pem: pair.key_pem,
        source: "default".to_string(),
    })
}
