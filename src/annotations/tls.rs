//! TLS: to clients (`ssl-ciphers`, `ssl-prefer-server-ciphers`, server
//! scope), client certificates (`auth-tls-*`, server scope) and to
//! backends (`proxy-ssl-*`).

use serde::Serialize;

use super::backend::ObjectName;
use super::{FieldError, Reader};
use crate::values::{
    AbsoluteUrl, CipherList, DnsSubdomain, Invalid, Protocols, SubjectPattern, parse_bool,
    parse_count, parse_on_off,
};

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
    /// Set when any `auth-tls-*` annotation is.
    pub client: Option<ClientTls>,
    /// `ssl-passthrough`: TLS for the Ingress's hosts goes unterminated
    /// to its backend (with `--enable-ssl-passthrough`).
    pub ssl_passthrough: bool,
}

/// `auth-tls-verify-client`: nginx's `ssl_verify_client` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyClient {
    /// A certificate signed by the CAs is required (400 without one).
    #[default]
    On,
    /// No certificate is asked for.
    Off,
    /// One is asked for; a client without one gets through
    /// (`ssl-client-verify: NONE`), one with a bad one gets 400.
    Optional,
    /// One is asked for and not verified against the CAs: the backend must
    /// check `ssl-client-verify`.
    OptionalNoCa,
}

impl VerifyClient {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "on" => Ok(VerifyClient::On),
            "off" => Ok(VerifyClient::Off),
            "optional" => Ok(VerifyClient::Optional),
            "optional_no_ca" => Ok(VerifyClient::OptionalNoCa),
            _ => Err(Invalid(
                "must be \"on\", \"off\", \"optional\" or \"optional_no_ca\"".into(),
            )),
        }
    }
}

/// Client certificate authentication (`auth-tls-*`), as an Ingress sets
/// it. The host takes it from the oldest Ingress that sets
/// `auth-tls-secret`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientTls {
    /// The Secret with `ca.crt` (and optionally `ca.crl`); `None`: another
    /// `auth-tls-*` key without it.
    pub secret: Option<ObjectName>,
    pub verify: VerifyClient,
    pub verify_depth: u32,
    pub error_page: Option<AbsoluteUrl>,
    pub pass_certificate: bool,
    pub match_cn: Option<SubjectPattern>,
}

pub const CLIENT_KEYS: &[&str] = &[
    "auth-tls-secret",
    "auth-tls-verify-client",
    "auth-tls-verify-depth",
    "auth-tls-error-page",
    "auth-tls-pass-certificate-to-upstream",
    "auth-tls-match-cn",
];

/// The `auth-tls-*` annotations; `None` when none is set. A value that
/// does not parse is an error (the Ingress is rejected: these protect).
pub fn parse_client(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Option<ClientTls> {
    let any = r.any(CLIENT_KEYS);
    let c = ClientTls {
        secret: r.parse("auth-tls-secret", errors, ObjectName::parse),
        verify: r
            .parse("auth-tls-verify-client", errors, VerifyClient::parse)
            .unwrap_or_default(),
        // As in ingress-nginx: 0 means the default, 1.
        verify_depth: r
            .parse("auth-tls-verify-depth", errors, |s| parse_count(s, 0, 64))
            .filter(|d| *d > 0)
            .unwrap_or(1),
        error_page: r.parse("auth-tls-error-page", errors, AbsoluteUrl::parse),
        pass_certificate: r
            .parse("auth-tls-pass-certificate-to-upstream", errors, parse_bool)
            .unwrap_or(false),
        match_cn: r.parse("auth-tls-match-cn", errors, SubjectPattern::parse),
    };
    any.then_some(c)
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
        client: parse_client(r, errors),
        ssl_passthrough: r.bool("ssl-passthrough", errors).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const P: &str = "nginx.ingress.kubernetes.io";

    fn parsed(pairs: &[(&str, &str)]) -> (Option<ClientTls>, Vec<FieldError>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{P}/{k}"), v.to_string()))
            .collect();
        let mut r = Reader::new(Some(&map), P);
        let mut errors = Vec::new();
        (parse_client(&mut r, &mut errors), errors)
    }

    #[test]
    fn client_certificates_with_ingress_nginx_defaults() {
        assert_eq!(parsed(&[]).0, None);
        let (c, e) = parsed(&[("auth-tls-secret", "certs/client-ca")]);
        assert!(e.is_empty(), "{e:?}");
        let c = c.unwrap();
        let s = c.secret.unwrap();
        assert_eq!(s.namespace.unwrap().as_str(), "certs");
        assert_eq!(s.name.as_str(), "client-ca");
        assert_eq!(c.verify, VerifyClient::On);
        assert_eq!(c.verify_depth, 1);
        assert!(!c.pass_certificate);
        assert!(c.error_page.is_none() && c.match_cn.is_none());

        let (c, e) = parsed(&[
            ("auth-tls-secret", "client-ca"),
            ("auth-tls-verify-client", "optional_no_ca"),
            ("auth-tls-verify-depth", "0"),
            ("auth-tls-error-page", "https://example.com/cert"),
            ("auth-tls-pass-certificate-to-upstream", "true"),
            ("auth-tls-match-cn", "CN=(alice|bob)"),
        ]);
        assert!(e.is_empty(), "{e:?}");
        let c = c.unwrap();
        assert!(c.secret.unwrap().namespace.is_none());
        assert_eq!(c.verify, VerifyClient::OptionalNoCa);
        assert_eq!(c.verify_depth, 1);
        assert!(c.pass_certificate);
        assert_eq!(c.error_page.unwrap().as_str(), "https://example.com/cert");
        assert_eq!(c.match_cn.unwrap().as_str(), "CN=(alice|bob)");
        for (v, want) in [
            ("on", VerifyClient::On),
            ("off", VerifyClient::Off),
            ("optional", VerifyClient::Optional),
        ] {
            assert_eq!(VerifyClient::parse(v).unwrap(), want);
        }
        // Another key without the Secret is still seen (and denied later).
        let (c, e) = parsed(&[("auth-tls-verify-client", "off")]);
        assert!(e.is_empty());
        assert!(c.unwrap().secret.is_none());
    }

    #[test]
    fn hostile_client_certificate_values_are_errors() {
        for (k, v) in [
            ("auth-tls-secret", "a/b/c"),
            ("auth-tls-secret", "ns/na me"),
            ("auth-tls-secret", "ca;"),
            ("auth-tls-secret", "ca\n"),
            ("auth-tls-secret", "\"ca\""),
            ("auth-tls-secret", "$ca"),
            ("auth-tls-secret", "{ca}"),
            ("auth-tls-verify-client", "On"),
            ("auth-tls-verify-client", "on;"),
            ("auth-tls-verify-client", "optional\n"),
            ("auth-tls-verify-client", "true"),
            ("auth-tls-verify-depth", "-1"),
            ("auth-tls-verify-depth", "65"),
            ("auth-tls-verify-depth", "1;"),
            ("auth-tls-verify-depth", "+1"),
            ("auth-tls-error-page", "/error"),
            ("auth-tls-error-page", "https://e.com/\"; return 200;"),
            ("auth-tls-error-page", "https://e.com/x\ny"),
            ("auth-tls-error-page", "https://e.com/$request_uri"),
            ("auth-tls-error-page", "https://e.com/{"),
            ("auth-tls-pass-certificate-to-upstream", "yes"),
            ("auth-tls-pass-certificate-to-upstream", "true;"),
            ("auth-tls-match-cn", "client"),
            ("auth-tls-match-cn", "CN=a\") { return 200; } #"),
            ("auth-tls-match-cn", "CN=a\nb"),
            ("auth-tls-match-cn", "CN=$host"),
            ("auth-tls-match-cn", "CN=(["),
        ] {
            let (_, e) = parsed(&[("auth-tls-secret", "ca"), (k, v)]);
            assert!(!e.is_empty(), "{k}: {v:?} was accepted");
        }
    }
}
