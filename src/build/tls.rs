//! TLS Secrets to certificates: parsed, checked (the key matches the
//! certificate), and re-encoded so nginx only ever reads PEM that wicket
//! produced from validated DER.

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::Certificate;
use crate::values::HostPattern;

/// Reads a key of a Secret from `data`, or from `stringData` (which wins, as
/// the API server merges it).
pub fn secret_value<'s>(secret: &'s Secret, key: &str) -> Option<&'s [u8]> {
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.as_bytes());
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

/// A certificate chain and key, validated.
#[derive(Clone, Debug)]
pub struct TlsPair {
    pub cert_pem: String,
    pub key_pem: String,
    /// DNS names of the leaf certificate (subjectAltName, else the CN).
    pub names: Vec<String>,
}

/// Parses and checks PEM data: at least one certificate, one private key that
/// matches the first certificate.
pub fn parse_pair(cert: &[u8], key: &[u8]) -> Result<TlsPair, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("tls.key holds no private key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("tls.key is not a usable private key: {e}"))?;
    let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err("tls.key does not match the certificate in tls.crt".into());
        }
        Err(e) => return Err(format!("tls.crt is not a valid certificate: {e}")),
    }
    let names = leaf_names(&certs[0])?;

    let mut cert_pem = String::new();
    for c in &certs {
        cert_pem.push_str(&pem("CERTIFICATE", c.as_ref()));
    }
    let label = match &key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    let key_pem = pem(label, key.secret_der());
    Ok(TlsPair {
        cert_pem,
        key_pem,
        names,
    })
}

fn leaf_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("tls.crt: the first certificate cannot be parsed: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl TlsPair {
    /// Whether the certificate names cover a host (a `*.x` name covers one
    /// label, as TLS clients check it).
    pub fn covers(&self, host: &HostPattern) -> bool {
        self.names
            .iter()
            .any(|n| match (n.strip_prefix("*."), host) {
                (None, HostPattern::Exact(h)) => n == h,
                (None, HostPattern::Wildcard(_)) => false,
                (Some(suffix), HostPattern::Wildcard(s)) => suffix == s,
                (Some(_), HostPattern::Exact(h)) => {
                    HostPattern::Wildcard(n[2..].to_string()).matches(h)
                }
            })
    }

    /// The certificate as the config holds it, named by a hash of its
    /// content so files of unchanged certificates are never rewritten.
    pub fn to_certificate(&self, source: String) -> Certificate {
        let mut h = Sha256::new();
        h.update(self.cert_pem.as_bytes());
        h.update(self.key_pem.as_bytes());
        let name = hex::encode(&h.finalize()[..12]);
        Certificate {
            name,
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            source,
        }
    }
}

/// Reads and checks the `tls.crt` and `tls.key` of a Secret.
pub fn from_secret(secret: &Secret) -> Result<TlsPair, String> {
    let cert = secret_value(secret, "tls.crt").ok_or("the secret has no tls.crt")?;
    let key = secret_value(secret, "tls.key").ok_or("the secret has no tls.key")?;
    parse_pair(cert, key)
}

/// Parses PEM CA certificates: each must be an X.509 certificate. Returns
/// them re-encoded.
pub fn parse_ca(pem_data: &[u8]) -> Result<String, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem_data)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("ca.crt is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("ca.crt holds no certificate".into());
    }
    let mut out = String::new();
    for c in &certs {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| format!("ca.crt holds something that is not a certificate: {e}"))?;
        out.push_str(&pem("CERTIFICATE", c.as_ref()));
    }
    Ok(out)
}

/// The files a Secret names for TLS to a backend: a client certificate
/// (`tls.crt` and `tls.key`) and CAs (`ca.crt`), at least one of them.
pub fn client_files(secret: &Secret) -> Result<(Option<TlsPair>, Option<String>), String> {
    let pair = match (
        secret_value(secret, "tls.crt"),
        secret_value(secret, "tls.key"),
    ) {
        (Some(c), Some(k)) => Some(parse_pair(c, k)?),
        (None, None) => None,
        _ => return Err("the secret has one of tls.crt and tls.key without the other".into()),
    };
    let ca = secret_value(secret, "ca.crt").map(parse_ca).transpose()?;
    if pair.is_none() && ca.is_none() {
        return Err("the secret has neither tls.crt/tls.key nor ca.crt".into());
    }
    Ok((pair, ca))
}

/// Parses PEM certificate revocation lists: each must be an X.509 CRL.
/// Returns them re-encoded.
pub fn parse_crl(pem_data: &[u8]) -> Result<String, String> {
    use rustls::pki_types::CertificateRevocationListDer;
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(pem_data)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("ca.crl is not valid PEM: {e}"))?;
    if crls.is_empty() {
        return Err("ca.crl holds no revocation list".into());
    }
    let mut out = String::new();
    for c in &crls {
        x509_parser::parse_x509_crl(c.as_ref())
            .map_err(|e| format!("ca.crl holds something that is not a revocation list: {e}"))?;
        out.push_str(&pem("X509 CRL", c.as_ref()));
    }
    Ok(out)
}

/// The files of a Secret for client certificates (`auth-tls-secret`): the
/// CAs (`ca.crt`, required) and revocation lists (`ca.crl`, optional).
pub fn client_ca_files(secret: &Secret) -> Result<(String, Option<String>), String> {
    let ca = secret_value(secret, "ca.crt").ok_or("the secret has no ca.crt")?;
    let ca = parse_ca(ca)?;
    let crl = secret_value(secret, "ca.crl").map(parse_crl).transpose()?;
    Ok((ca, crl))
}

/// A CA bundle as the config holds it, named by a hash of its content.
pub fn trusted(pem: String, source: String) -> crate::config::Trusted {
    let name = super::policy::short_hash(&pem);
    crate::config::Trusted { name, pem, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn accepts_a_matching_pair_and_reencodes_it() {
        let (c, k) = pair(&["shop.example.com"]);
        let p = parse_pair(c.as_bytes(), k.as_bytes()).unwrap();
        assert_eq!(p.names, vec!["shop.example.com"]);
        assert!(p.cert_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(p.covers(&HostPattern::parse("shop.example.com").unwrap()));
        assert!(!p.covers(&HostPattern::parse("other.example.com").unwrap()));
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let (c, _) = pair(&["a.example.com"]);
        let (_, k) = pair(&["a.example.com"]);
        let e = parse_pair(c.as_bytes(), k.as_bytes()).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn refuses_garbage() {
        let (c, k) = pair(&["a.example.com"]);
        assert!(parse_pair(b"nonsense", k.as_bytes()).is_err());
        assert!(parse_pair(c.as_bytes(), b"nonsense").is_err());
        // PEM framing around something that is not a certificate
        let fake = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_pair(fake.as_bytes(), k.as_bytes()).is_err());
    }

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            string_data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn client_ca_files_need_a_ca_and_take_a_crl() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap()
        .pem()
        .unwrap();
        let (c, r) = client_ca_files(&secret(&[("ca.crt", &ca.pem())])).unwrap();
        assert!(c.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(r.is_none());
        let (_, r) = client_ca_files(&secret(&[("ca.crt", &ca.pem()), ("ca.crl", &crl)])).unwrap();
        assert!(r.unwrap().starts_with("-----BEGIN X509 CRL-----\n"));
        // Missing, empty or garbage: refused.
        assert!(
            client_ca_files(&secret(&[("tls.crt", &ca.pem())]))
                .unwrap_err()
                .contains("no ca.crt")
        );
        assert!(client_ca_files(&secret(&[("ca.crt", "")])).is_err());
        assert!(client_ca_files(&secret(&[("ca.crt", "nonsense")])).is_err());
        let fake = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(client_ca_files(&secret(&[("ca.crt", fake)])).is_err());
        let fake = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        assert!(client_ca_files(&secret(&[("ca.crt", &ca.pem()), ("ca.crl", fake)])).is_err());
        // A certificate where a CRL belongs is not one.
        assert!(client_ca_files(&secret(&[("ca.crt", &ca.pem()), ("ca.crl", &ca.pem())])).is_err());
    }

    #[test]
    fn wildcard_names_cover_one_label() {
        let (c, k) = pair(&["*.example.com"]);
        let p = parse_pair(c.as_bytes(), k.as_bytes()).unwrap();
        assert!(p.covers(&HostPattern::parse("a.example.com").unwrap()));
        assert!(p.covers(&HostPattern::parse("*.example.com").unwrap()));
        assert!(!p.covers(&HostPattern::parse("a.b.example.com").unwrap()));
    }
}
