//! How requests are spread over a backend's endpoints: `load-balance`,
//! `upstream-hash-by` (with `upstream-hash-by-subset` and
//! `-subset-size`), and cookie affinity (`affinity: cookie`,
//! `affinity-mode`, `affinity-canary-behavior`, `session-cookie-*`). The
//! choice is made by wicket's Lua balancer (templates/balancer.lua), which
//! reads these from nginx variables the location sets, never from its
//! code.

use super::{FieldError, Reader};
use crate::values::{DnsSubdomain, Expandable, Invalid, parse_count};

/// `load-balance`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Method {
    #[default]
    RoundRobin,
    /// ingress-nginx's EWMA: wicket balances round robin (see the registry).
    Ewma,
}

pub fn method(s: &str) -> Result<Method, Invalid> {
    match s {
        "round_robin" => Ok(Method::RoundRobin),
        "ewma" => Ok(Method::Ewma),
        _ => Err(Invalid("expected round_robin or ewma".into())),
    }
}

/// `session-cookie-samesite`.
fn samesite(s: &str) -> Result<&'static str, Invalid> {
    match s.to_ascii_lowercase().as_str() {
        "none" => Ok("None"),
        "lax" => Ok("Lax"),
        "strict" => Ok("Strict"),
        _ => Err(Invalid("expected None, Lax or Strict".into())),
    }
}

/// A cookie name: an RFC 6265 token of letters, digits, `-` and `_`.
fn cookie_name(s: &str) -> Result<String, Invalid> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err(Invalid(
            "a cookie name is 1-128 letters, digits, '-' or '_'".into(),
        ));
    }
    Ok(s.to_string())
}

/// A cookie path: `/` and URI path characters without `;`, `,` or white space.
fn cookie_path(s: &str) -> Result<String, Invalid> {
    if !s.starts_with('/')
        || s.len() > 1024
        || !s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~' | b'%' | b'+')
        })
    {
        return Err(Invalid(
            "a cookie path starts with '/' and holds letters, digits and / - . _ ~ % +".into(),
        ));
    }
    Ok(s.to_string())
}

/// Seconds, as ingress-nginx's `session-cookie-expires` and `-max-age`.
fn seconds(s: &str) -> Result<u32, Invalid> {
    parse_count(s, 0, 10 * 365 * 86_400)
}

/// `affinity: cookie` and its cookie.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Affinity {
    /// `affinity-mode: persistent`: a client stays on its endpoint while
    /// it exists; `balanced` (the default) moves a share of clients when
    /// endpoints are added.
    pub persistent: bool,
    pub name: String,
    pub path: Option<String>,
    pub domain: Option<DnsSubdomain>,
    pub expires: Option<u32>,
    pub max_age: Option<u32>,
    pub samesite: Option<&'static str>,
    pub conditional_samesite_none: bool,
    pub secure: bool,
    pub change_on_failure: bool,
    /// `affinity-canary-behavior: legacy`.
    pub canary_legacy: bool,
}

/// `upstream-hash-by` and its subset.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HashBy {
    pub key: Expandable,
    /// `upstream-hash-by-subset`: the key chooses a subset of this size,
    /// and a request goes to one of it at random.
    pub subset: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Balance {
    pub method: Option<Method>,
    /// (Boxed: most Ingresses have neither.)
    pub hash: Option<Box<HashBy>>,
    pub affinity: Option<Box<Affinity>>,
    /// `session-cookie-*` or `affinity-*` without `affinity: cookie`.
    pub orphan_cookie: bool,
}

/// The keys of the cookie family besides `affinity`.
const COOKIE_KEYS: &[&str] = &[
    "affinity-mode",
    "affinity-canary-behavior",
    "session-cookie-name",
    "session-cookie-path",
    "session-cookie-domain",
    "session-cookie-expires",
    "session-cookie-max-age",
    "session-cookie-samesite",
    "session-cookie-conditional-samesite-none",
    "session-cookie-secure",
    "session-cookie-change-on-failure",
];

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Balance {
    let method = r.parse("load-balance", errors, method);
    let key = r.parse("upstream-hash-by", errors, |s| Expandable::parse(s, 256));
    let subset = r.bool("upstream-hash-by-subset", errors).unwrap_or(false);
    let size = r
        .parse("upstream-hash-by-subset-size", errors, |s| {
            parse_count(s, 1, 1024)
        })
        .unwrap_or(3);
    let hash = key.map(|key| {
        Box::new(HashBy {
            key,
            subset: subset.then_some(size),
        })
    });
    let cookie = r.parse("affinity", errors, |s| match s {
        "cookie" => Ok(true),
        "" => Ok(false),
        _ => Err(Invalid("expected cookie".into())),
    });
    let mode = r.parse("affinity-mode", errors, |s| match s {
        "balanced" | "" => Ok(false),
        "persistent" => Ok(true),
        _ => Err(Invalid("expected balanced or persistent".into())),
    });
    let canary_legacy = r.parse("affinity-canary-behavior", errors, |s| match s {
        "sticky" | "" => Ok(false),
        "legacy" => Ok(true),
        _ => Err(Invalid("expected sticky or legacy".into())),
    });
    let name = r.parse("session-cookie-name", errors, cookie_name);
    let path = r.parse("session-cookie-path", errors, cookie_path);
    let domain = r.parse("session-cookie-domain", errors, |s| {
        DnsSubdomain::parse(s.trim_start_matches('.'))
    });
    let expires = r.parse("session-cookie-expires", errors, seconds);
    let max_age = r.parse("session-cookie-max-age", errors, seconds);
    let samesite = r.parse("session-cookie-samesite", errors, samesite);
    let conditional = r.bool("session-cookie-conditional-samesite-none", errors);
    let secure = r.bool("session-cookie-secure", errors);
    let change = r.bool("session-cookie-change-on-failure", errors);
    let affinity = (cookie == Some(true)).then(|| {
        Box::new(Affinity {
            persistent: mode.unwrap_or(false),
            name: name.unwrap_or_else(|| "INGRESSCOOKIE".into()),
            path,
            domain,
            expires,
            max_age,
            samesite,
            conditional_samesite_none: conditional.unwrap_or(false),
            secure: secure.unwrap_or(false),
            change_on_failure: change.unwrap_or(false),
            canary_legacy: canary_legacy.unwrap_or(false),
        })
    });
    Balance {
        method,
        hash,
        orphan_cookie: affinity.is_none() && r.any(COOKIE_KEYS),
        affinity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_values_parse_strictly() {
        assert!(cookie_name("route-1_a").is_ok());
        for bad in ["", "a b", "a;b", "a=b", "a\"", "a\n"] {
            assert!(cookie_name(bad).is_err(), "{bad:?}");
        }
        assert!(cookie_path("/app/v1").is_ok());
        for bad in ["app", "/a;b", "/a b", "/a\"", "/a,b", "/a\nb"] {
            assert!(cookie_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(samesite("none").unwrap(), "None");
        assert!(samesite("sometimes").is_err());
        assert_eq!(method("ewma").unwrap(), Method::Ewma);
        assert!(method("least_conn").is_err());
        assert!(seconds("3600").is_ok());
        assert!(seconds("-1").is_err());
    }
}
