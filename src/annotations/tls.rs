//! TLS: to clients (`ssl-ciphers`, `ssl-prefer-server-ciphers`, server
//! scope) and to backends (`proxy-ssl-*`).

use serde::Serialize;

use super::backend::ObjectName;
use super::{FieldError, Reader};
use crate::values::{CipherList, DnsSubdomain, Invalid, Protocols, parse_count, parse_on_off};

/// How nginx talks TLS to the backends of an Ingress.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ProxySsl {
    /// A Secret with `tls.crt`/`tls.key` (a client certificate) and/or
    /// `ca.crt` (the CAs to verify the backend with).
    pub secret: Option<ObjectName>,
    pub verify: bool,
    pub verify_depth: u32,
    pub name: Option<DnsSubdomain>,
    pub server_name: bool,
    pub protocols: Protocols,
    pub ciphers: CipherList,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    pub ssl_ciphers: Option<CipherList>,
    pub prefer_server_ciphers: Option<bool>,
    /// Set when any `proxy-ssl-*` annotation is.
    pub proxy: Option<ProxySsl>,
}

const PROXY_KEYS: &[&str] = &[
    "proxy-ssl-secret",
    "proxy-ssl-verify",
    "proxy-ssl-verify-depth",
    "proxy-ssl-name",
    "proxy-ssl-server-name",
    "proxy-ssl-protocols",
    "proxy-ssl-ciphers",
];

fn name(s: &str) -> Result<DnsSubdomain, Invalid> {
    DnsSubdomain::parse(&s.to_ascii_lowercase())
        .map_err(|_| Invalid("must be a DNS name (no variables)".into()))
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Tls {
    let any_proxy = r.any(PROXY_KEYS);
    let proxy = ProxySsl {
        secret: r.parse("proxy-ssl-secret", errors, ObjectName::parse),
        verify: r
            .parse("proxy-ssl-verify", errors, parse_on_off)
            .unwrap_or(false),
        verify_depth: r
            .parse("proxy-ssl-verify-depth", errors, |s| parse_count(s, 1, 16))
            .unwrap_or(1),
        name: r.parse("proxy-ssl-name", errors, name),
        server_name: r
            .parse("proxy-ssl-server-name", errors, parse_on_off)
            .unwrap_or(false),
        protocols: r
            .parse("proxy-ssl-protocols", errors, Protocols::parse)
            .unwrap_or_else(|| Protocols::of("TLSv1.2")),
        ciphers: r
            .parse("proxy-ssl-ciphers", errors, CipherList::parse)
            .unwrap_or_else(|| CipherList::of("DEFAULT")),
    };
    Tls {
        ssl_ciphers: r.parse("ssl-ciphers", errors, CipherList::parse),
        prefer_server_ciphers: r.bool("ssl-prefer-server-ciphers", errors),
        proxy: any_proxy.then_some(proxy),
    }
}
