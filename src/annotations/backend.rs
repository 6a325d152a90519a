//! What a location's backend speaks and what answers when it cannot:
//! `backend-protocol` (with `fastcgi-index` and `fastcgi-params-configmap`
//! for FCGI), `service-upstream`, `default-backend`, `custom-http-errors`,
//! `disable-proxy-intercept-errors`. References to other objects are kept
//! as names; build resolves them.

use serde::Serialize;

use super::{FieldError, Reader};
use crate::values::{Dns1035Label, DnsSubdomain, Invalid, parse_codes};

/// The protocol nginx speaks to the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// `proxy_pass http://`
    #[default]
    Http,
    /// `proxy_pass https://`
    Https,
    /// `proxy_pass $scheme://`: the scheme the client used.
    AutoHttp,
    /// `grpc_pass grpc://` (h2c)
    Grpc,
    /// `grpc_pass grpcs://`
    Grpcs,
    /// `fastcgi_pass`
    Fcgi,
}

impl Protocol {
    /// ingress-nginx's names, in any case.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s.trim().to_ascii_uppercase().as_str() {
            "HTTP" => Ok(Protocol::Http),
            "HTTPS" => Ok(Protocol::Https),
            "AUTO_HTTP" => Ok(Protocol::AutoHttp),
            "GRPC" => Ok(Protocol::Grpc),
            "GRPCS" => Ok(Protocol::Grpcs),
            "FCGI" => Ok(Protocol::Fcgi),
            "AJP" => Err(Invalid(
                "AJP is not supported (ingress-nginx removed it in 1.9)".into(),
            )),
            _ => Err(Invalid(
                "must be HTTP, HTTPS, AUTO_HTTP, GRPC, GRPCS or FCGI".into(),
            )),
        }
    }

    pub fn is_grpc(self) -> bool {
        matches!(self, Protocol::Grpc | Protocol::Grpcs)
    }

    /// Whether nginx talks TLS to the backend.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Grpcs)
    }
}

/// `fastcgi_index`: a file name.
fn index_file(s: &str) -> Result<String, Invalid> {
    if s.is_empty()
        || s.len() > 255
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(Invalid(
            "must be a file name of letters, digits, '.', '-' and '_'".into(),
        ));
    }
    Ok(s.to_string())
}

/// A ConfigMap or Secret named by an annotation: `name`, or
/// `namespace/name` (another namespace needs
/// `allow-cross-namespace-resources`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectName {
    /// `None`: the Ingress's namespace.
    pub namespace: Option<crate::values::DnsLabel>,
    pub name: DnsSubdomain,
}

impl ObjectName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s.split_once('/') {
            Some((ns, name)) => Ok(ObjectName {
                namespace: Some(
                    crate::values::DnsLabel::parse(ns)
                        .map_err(|e| Invalid(format!("namespace: {e}")))?,
                ),
                name: DnsSubdomain::parse(name).map_err(|e| Invalid(format!("name: {e}")))?,
            }),
            None => Ok(ObjectName {
                namespace: None,
                name: DnsSubdomain::parse(s)?,
            }),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub protocol: Protocol,
    pub fastcgi_index: Option<String>,
    pub fastcgi_params: Option<ObjectName>,
    pub service_upstream: Option<bool>,
    /// A Service of the Ingress's namespace (its first port) that answers
    /// when the backend has no endpoints, and for `custom-http-errors`.
    pub default_backend: Option<Dns1035Label>,
    pub custom_http_errors: Option<Vec<u16>>,
    pub disable_intercept_errors: bool,
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Backend {
    let protocol = r
        .parse("backend-protocol", errors, Protocol::parse)
        .unwrap_or_default();
    let fastcgi_index = r.parse("fastcgi-index", errors, index_file);
    let fastcgi_params = r.parse("fastcgi-params-configmap", errors, ObjectName::parse);
    if protocol != Protocol::Fcgi {
        for (name, set) in [
            ("fastcgi-index", fastcgi_index.is_some()),
            ("fastcgi-params-configmap", fastcgi_params.is_some()),
        ] {
            if set {
                errors.push(FieldError {
                    field: r.field(name),
                    value: String::new(),
                    error: Invalid("needs backend-protocol: FCGI".into()),
                });
            }
        }
    }
    Backend {
        protocol,
        fastcgi_index,
        fastcgi_params,
        service_upstream: r.bool("service-upstream", errors),
        default_backend: r.parse("default-backend", errors, Dns1035Label::parse),
        custom_http_errors: r.parse("custom-http-errors", errors, |s| parse_codes(s, 300, 599)),
        disable_intercept_errors: r
            .bool("disable-proxy-intercept-errors", errors)
            .unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_and_names() {
        assert_eq!(Protocol::parse("grpc"), Ok(Protocol::Grpc));
        assert_eq!(Protocol::parse("AUTO_HTTP"), Ok(Protocol::AutoHttp));
        for bad in ["", "AJP", "h2c", "HTTPS;", "http s"] {
            assert!(Protocol::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ObjectName::parse("ns/cm").unwrap().namespace.is_some());
        assert!(ObjectName::parse("cm").unwrap().namespace.is_none());
        for bad in ["", "a/b/c", "Ns/cm", "cm;", "/cm", "ns/"] {
            assert!(ObjectName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(index_file("index.php").is_ok());
        assert!(index_file("../x").is_err());
        assert!(index_file("a b").is_err());
    }
}
