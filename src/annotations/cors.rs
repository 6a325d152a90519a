//! CORS: `enable-cors`, `cors-allow-origin` (default `*`),
//! `cors-allow-methods`, `cors-allow-headers`, `cors-expose-headers`,
//! `cors-allow-credentials` (default true), `cors-max-age` (default
//! 1728000), with ingress-nginx's defaults. Every list is checked item by
//! item; an origin entry without a scheme is dropped, as in ingress-nginx,
//! but reported.

use super::{FieldError, Reader};
use crate::values::nginx::parse_count;
use crate::values::{DnsSubdomain, HeaderName, Invalid};

pub const DEFAULT_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
pub const DEFAULT_HEADERS: &str = "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
pub const DEFAULT_MAX_AGE: u32 = 1_728_000;
/// Most entries in one list.
pub const MAX_ITEMS: usize = 64;

/// One allowed origin: `scheme://host[:port]`, the host possibly `*.`
/// and a name (one label matches the `*`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Origin {
    pub scheme: String,
    /// Without the `*.` of a wildcard.
    pub host: String,
    pub wildcard: bool,
    pub port: Option<u16>,
}

impl Origin {
    /// `Ok(None)`: an entry without a scheme (dropped).
    pub fn parse(s: &str) -> Result<Option<Origin>, Invalid> {
        let s = s.trim().to_ascii_lowercase();
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(None);
        };
        if scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_lowercase())
            || !scheme
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        {
            return Err(Invalid(format!("{s}: not a scheme")));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                let port =
                    parse_count(p, 1, 65535).map_err(|_| Invalid(format!("{s}: not a port")))?;
                (h, Some(port as u16))
            }
            None => (rest, None),
        };
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(n) => (true, n),
            None => (false, host),
        };
        DnsSubdomain::parse(name).map_err(|e| Invalid(format!("{s}: {}", e.0)))?;
        Ok(Some(Origin {
            scheme: scheme.to_string(),
            host: name.to_string(),
            wildcard,
            port,
        }))
    }

    /// The origin as a browser sends it (not a wildcard).
    pub fn exact(&self) -> String {
        match self.port {
            Some(p) => format!("{}://{}:{p}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }

    /// An anchored regular expression for a wildcard: one label for the
    /// `*`, the rest literal (only letters, digits, `-` and escaped dots).
    pub fn regex(&self) -> String {
        let host = self.host.replace('.', "\\.");
        let scheme = self.scheme.replace('.', "\\.").replace('+', "\\+");
        match self.port {
            Some(p) => format!("^{scheme}://[a-z0-9-]+\\.{host}:{p}$"),
            None => format!("^{scheme}://[a-z0-9-]+\\.{host}$"),
        }
    }
}

/// Allowed origins: any (`*`), or a list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Origins {
    Any,
    List(Vec<Origin>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    pub enabled: bool,
    pub origins: Origins,
    /// Entries without a scheme, dropped.
    pub dropped: Vec<String>,
    pub methods: String,
    pub headers: String,
    pub expose: Option<String>,
    pub credentials: bool,
    pub max_age: u32,
    /// A `cors-*` key is set: without `enable-cors` it does nothing (as in
    /// ingress-nginx), which build reports.
    pub configured: bool,
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            enabled: false,
            origins: Origins::Any,
            dropped: Vec::new(),
            methods: DEFAULT_METHODS.into(),
            headers: DEFAULT_HEADERS.into(),
            expose: None,
            credentials: true,
            max_age: DEFAULT_MAX_AGE,
            configured: false,
        }
    }
}

fn items(s: &str) -> Result<Vec<&str>, Invalid> {
    let v: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .collect();
    if v.is_empty() {
        return Err(Invalid("an empty list".into()));
    }
    if v.len() > MAX_ITEMS {
        return Err(Invalid(format!("more than {MAX_ITEMS} entries")));
    }
    Ok(v)
}

/// A list of methods (tokens of capital letters), joined with ", ".
fn methods(s: &str) -> Result<String, Invalid> {
    let v = items(s)?;
    for m in &v {
        if m.len() > 32 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Invalid(format!("{m}: not a method")));
        }
    }
    Ok(v.join(", "))
}

/// A list of header names (or `*`), joined with ",".
fn header_names(s: &str) -> Result<String, Invalid> {
    let v = items(s)?;
    for h in &v {
        if *h != "*" {
            HeaderName::parse(h)?;
        }
    }
    Ok(v.join(","))
}

fn origins(s: &str) -> Result<(Origins, Vec<String>), Invalid> {
    let v = items(s)?;
    if v.contains(&"*") {
        return Ok((Origins::Any, Vec::new()));
    }
    let mut list = Vec::new();
    let mut dropped = Vec::new();
    for o in v {
        match Origin::parse(o)? {
            Some(o) => list.push(o),
            None => dropped.push(o.to_string()),
        }
    }
    list.sort();
    list.dedup();
    Ok((Origins::List(list), dropped))
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Cors {
    let mut c = Cors {
        enabled: r.bool("enable-cors", errors).unwrap_or(false),
        configured: r.any(&[
            "cors-allow-origin",
            "cors-allow-methods",
            "cors-allow-headers",
            "cors-expose-headers",
            "cors-allow-credentials",
            "cors-max-age",
        ]),
        ..Cors::default()
    };
    if let Some((o, dropped)) = r.parse("cors-allow-origin", errors, origins) {
        c.origins = o;
        c.dropped = dropped;
    }
    if let Some(m) = r.parse("cors-allow-methods", errors, methods) {
        c.methods = m;
    }
    if let Some(h) = r.parse("cors-allow-headers", errors, header_names) {
        c.headers = h;
    }
    c.expose = r.parse("cors-expose-headers", errors, header_names);
    if let Some(b) = r.bool("cors-allow-credentials", errors) {
        c.credentials = b;
    }
    if let Some(n) = r.parse("cors-max-age", errors, |s| parse_count(s, 0, 1_000_000_000)) {
        c.max_age = n;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_strictly() {
        let (o, dropped) =
            origins("https://a.example.com, http://*.example.org:8080, example.net").unwrap();
        assert_eq!(dropped, ["example.net"]);
        let Origins::List(list) = o else { panic!() };
        assert_eq!(list[0].exact(), "http://example.org:8080");
        assert!(list[0].wildcard);
        assert_eq!(list[0].regex(), "^http://[a-z0-9-]+\\.example\\.org:8080$");
        assert_eq!(list[1].exact(), "https://a.example.com");
        assert_eq!(origins("*, https://x.example").unwrap().0, Origins::Any);
        for bad in [
            "https://a b.example",
            "https://$host",
            "https://a.example:0",
            "https://a.example:99999",
            "htt ps://a.example",
            "https://*.*.example",
            "https://a.example/path",
            "",
        ] {
            assert!(origins(bad).is_err(), "{bad:?}");
        }
        assert!(methods("GET, post").is_err());
        assert_eq!(methods("GET,POST").unwrap(), "GET, POST");
        assert!(header_names("X-A, X B").is_err());
        assert!(header_names("X-A;x").is_err());
    }
}
