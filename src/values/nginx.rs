//! Typed values for nginx directives that annotations and ConfigMap keys
//! set: sizes, times, counts, booleans, address lists, URLs, header names
//! and values, cipher strings. Each parser has an anchored, strict
//! grammar; what it accepts is exactly one harmless nginx token once the
//! one escaping function quotes it, and never holds a `$` where nginx
//! would expand it, except the variables of [`ALLOWED_VARIABLES`] where a
//! value is meant to name them.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::{Invalid, invalid};

/// An nginx size: digits with an optional `k`, `m` or `g` suffix (either
/// case), kept lowercase. nginx refuses other suffixes (ingress-nginx's
/// validator let `b` through, which nginx then refused).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Size(String);

impl Size {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let digits = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
        let suffixes = s.len() - digits.len();
        if digits.is_empty()
            || digits.len() > 9
            || suffixes > 1
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return invalid("must be a number with an optional k, m or g suffix, such as 8m");
        }
        Ok(Size(s.to_ascii_lowercase()))
    }

    /// A size known to be valid (wicket's own defaults).
    pub fn of(s: &str) -> Self {
        Self::parse(s).expect("a valid size")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The size in bytes.
    pub fn bytes(&self) -> u64 {
        let (n, mult) = match self.0.as_bytes().last() {
            Some(b'k') => (&self.0[..self.0.len() - 1], 1 << 10),
            Some(b'm') => (&self.0[..self.0.len() - 1], 1 << 20),
            Some(b'g') => (&self.0[..self.0.len() - 1], 1 << 30),
            _ => (self.0.as_str(), 1),
        };
        n.parse::<u64>().unwrap_or(0) * mult
    }
}

/// A duration in whole seconds: `60` or `60s` (ingress-nginx's timeouts
/// are whole seconds; the template appends `s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Seconds(pub u32);

impl Seconds {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let n = s.strip_suffix('s').unwrap_or(s);
        match n.parse::<u32>() {
            Ok(v) if v <= 86_400 && !n.starts_with('+') => Ok(Seconds(v)),
            _ => invalid("must be a whole number of seconds up to 86400, such as 60 or 60s"),
        }
    }
}

/// An nginx time: one or more numbers, each with a unit (`ms`, `s`, `m`,
/// `h`, `d`), such as `1h`, `90s`, `1h30m`; a bare number is seconds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct NginxTime(String);

impl NginxTime {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || invalid("must be an nginx time such as 60s, 5m or 1h (ms, s, m, h, d)");
        if s.is_empty() || s.len() > 32 {
            return bad();
        }
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start || i - start > 9 {
                return bad();
            }
            if b[i..].starts_with(b"ms") {
                i += 2;
            } else if i < b.len() && matches!(b[i], b's' | b'm' | b'h' | b'd') {
                i += 1;
            } else if i == b.len() && start == 0 {
                // A bare number: seconds.
            } else {
                return bad();
            }
        }
        Ok(NginxTime(s.to_string()))
    }

    pub fn of(s: &str) -> Self {
        Self::parse(s).expect("a valid time")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A boolean as ingress-nginx reads one (Go's `strconv.ParseBool`): `true`,
/// `false`, `1`, `0`, `t`, `f`, `TRUE`, `FALSE`, `True`, `False`.
pub fn parse_bool(s: &str) -> Result<bool, Invalid> {
    match s {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(false),
        _ => invalid("must be \"true\" or \"false\""),
    }
}

/// `on` or `off`.
pub fn parse_on_off(s: &str) -> Result<bool, Invalid> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => invalid("must be \"on\" or \"off\""),
    }
}

/// A whole number between `min` and `max`.
pub fn parse_count(s: &str, min: u32, max: u32) -> Result<u32, Invalid> {
    match s.parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) && !s.starts_with('+') => Ok(v),
        _ => invalid(format!("must be a whole number from {min} to {max}")),
    }
}

/// An address or a network (`10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`),
/// kept as the network it names (host bits cleared, so nginx does not warn
/// that they are meaningless).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| Invalid("must be an IP address or a network such as 10.0.0.0/8".into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') && p.len() <= 3 => n,
                _ => return invalid(format!("the prefix length must be 0 to {max}")),
            },
        };
        let addr = match addr {
            IpAddr::V4(v4) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether an address is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(a) & mask == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(a) & mask == u128::from(n)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A comma-separated list, each item trimmed; empty items are refused.
pub fn parse_list<T>(
    s: &str,
    max: usize,
    item: impl Fn(&str) -> Result<T, Invalid>,
) -> Result<Vec<T>, Invalid> {
    let mut out = Vec::new();
    for (i, part) in s.split(',').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            // A trailing comma, as ingress-nginx tolerated.
            if i > 0 && s.trim_end().ends_with(',') {
                continue;
            }
            return invalid("a list item is empty");
        }
        if out.len() == max {
            return invalid(format!("at most {max} items"));
        }
        out.push(item(part).map_err(|e| Invalid(format!("item {}: {e}", i + 1)))?);
    }
    if out.is_empty() {
        return invalid("the list is empty");
    }
    Ok(out)
}

/// The nginx variables a value that may name variables (a redirect URL,
/// say) may use: request facts that are safe to echo back. Anything else
/// (`$http_*`, `$cookie_*`, `$ssl_*`...) is refused.
pub const ALLOWED_VARIABLES: &[&str] = &[
    "request_uri",
    "uri",
    "args",
    "is_args",
    "query_string",
    "host",
    "http_host",
    "scheme",
    "server_port",
    "request_method",
];

/// Calls `each` with the name of every variable `s` names (`$name` or
/// `${name}`), in order; returns how many there are.
fn each_variable(
    s: &str,
    mut each: impl FnMut(&str) -> Result<(), Invalid>,
) -> Result<usize, Invalid> {
    let b = s.as_bytes();
    let mut count = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let (name, next) = if b.get(i + 1) == Some(&b'{') {
            let end = s[i + 2..]
                .find('}')
                .ok_or_else(|| Invalid("'${' without a closing '}'".into()))?;
            (&s[i + 2..i + 2 + end], i + 3 + end)
        } else {
            let end = s[i + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(s.len(), |e| i + 1 + e);
            (&s[i + 1..end], end)
        };
        each(name)?;
        count += 1;
        i = next;
    }
    Ok(count)
}

/// Checks that every `$` of `s` starts one of [`ALLOWED_VARIABLES`]
/// (`$name` or `${name}`), and returns how many there are.
fn check_variables(s: &str) -> Result<usize, Invalid> {
    each_variable(s, |name| {
        if ALLOWED_VARIABLES.contains(&name) {
            return Ok(());
        }
        invalid(format!(
            "'$' may only start one of the variables {}",
            ALLOWED_VARIABLES
                .iter()
                .map(|v| format!("${v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn is_uri_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
                | b'{'
                | b'}'
        )
}

/// A redirect target: an absolute `http`/`https` URL, or an absolute path,
/// of URI characters, that may name the variables of
/// [`ALLOWED_VARIABLES`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RedirectUrl(String);

impl RedirectUrl {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() > 2048 {
            return invalid("a URL must be at most 2048 characters");
        }
        if !s.bytes().all(is_uri_char) {
            return invalid("a URL may only contain URI characters");
        }
        check_variables(s)?;
        let rest = if let Some(r) = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
        {
            // The host ends where the path, the query or a variable (such
            // as `$request_uri`) starts; `$host` may be the whole host.
            let host_end = if r.starts_with('$') {
                r.find(['/', '?']).unwrap_or(r.len())
            } else {
                r.find(['/', '?', '$']).unwrap_or(r.len())
            };
            let host = &r[..host_end];
            if host.is_empty() || host.contains(['@', '{', '}']) && !host.starts_with("${") {
                return invalid("an absolute URL needs a host (and no user part)");
            }
            if !host.starts_with('$') {
                let (name, port) = match host.rsplit_once(':') {
                    Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
                    _ => (host, None),
                };
                if let Some(p) = port
                    && (p.is_empty() || p.parse::<u16>().is_err())
                {
                    return invalid("the URL's port must be a number");
                }
                let bare = name.trim_start_matches('[').trim_end_matches(']');
                if bare.parse::<IpAddr>().is_err()
                    && super::DnsSubdomain::parse(&bare.to_ascii_lowercase()).is_err()
                {
                    return invalid("the URL's host must be a DNS name or an address");
                }
            }
            &r[host_end..]
        } else if s.starts_with('/') && !s.starts_with("//") {
            s
        } else {
            return invalid("must be an http:// or https:// URL, or a path starting with '/'");
        };
        if rest.contains("{") && !rest.contains("${") {
            return invalid("'{' may only follow '$'");
        }
        Ok(RedirectUrl(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A URI path without variables: `app-root`, `x-forwarded-prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PlainPath(String);

impl PlainPath {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if !s.starts_with('/') || s.starts_with("//") {
            return invalid("must be a path starting with '/'");
        }
        if s.len() > 2048 {
            return invalid("a path must be at most 2048 characters");
        }
        if !s
            .bytes()
            .all(|b| is_uri_char(b) && !matches!(b, b'$' | b'{' | b'}' | b'?'))
        {
            return invalid("a path may only contain URI path characters (no '$', '?', '{', '}')");
        }
        Ok(PlainPath(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An HTTP header name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 256 {
            return invalid("a header name must be 1 to 256 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid("a header name may only contain letters, digits, '-' and '_'");
        }
        Ok(HeaderName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A header value taken literally: printable text, its `$` written as
/// `${wicket_dollar}` (a variable whose value is `$`), since nginx expands
/// variables in header values and has no escape for `$`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderValue(String);

impl HeaderValue {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() > 4096 {
            return invalid("a header value must be at most 4096 characters");
        }
        if s.chars().any(|c| c.is_control()) {
            return invalid("a header value may not contain control characters");
        }
        Ok(HeaderValue(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as nginx should read it: every `$` as `${wicket_dollar}`.
    pub fn for_nginx(&self) -> String {
        self.0.replace('$', "${wicket_dollar}")
    }
}

impl Serialize for HeaderValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.for_nginx())
    }
}

/// A host with an optional port, as the upstream's `Host` header
/// (`upstream-vhost`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct HostPort(String);

impl HostPort {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.contains(':') => (h, Some(p)),
            _ => (s, None),
        };
        if let Some(p) = port
            && super::port_number(p.parse::<i32>().unwrap_or(0)).is_err()
        {
            return invalid("the port must be a number from 1 to 65535");
        }
        if host.parse::<IpAddr>().is_err()
            && super::DnsSubdomain::parse(&host.to_ascii_lowercase()).is_err()
        {
            return invalid(
                "must be a DNS name or an address, with an optional :port (no variables)",
            );
        }
        Ok(HostPort(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An OpenSSL cipher list (`ECDHE-RSA-AES128-GCM-SHA256:...`, `DEFAULT`,
/// `HIGH:!aNULL`, `@SECLEVEL=1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CipherList(String);

impl CipherList {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 4096 {
            return invalid("a cipher list must be 1 to 4096 characters");
        }
        if !s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b':' | b'!' | b'+' | b'@' | b'=' | b'.')
        }) {
            return invalid("a cipher list may only contain letters, digits and - _ : ! + @ = .");
        }
        Ok(CipherList(s.to_string()))
    }

    pub fn of(s: &str) -> Self {
        Self::parse(s).expect("a valid cipher list")
    }
}

/// TLS protocol versions, for `ssl_protocols` and `proxy_ssl_protocols`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Protocols(Vec<&'static str>);

impl Protocols {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let mut out = Vec::new();
        for p in s.split_whitespace() {
            let known = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
                .into_iter()
                .find(|k| *k == p)
                .ok_or_else(|| Invalid("protocols must be among TLSv1, TLSv1.1, TLSv1.2 and TLSv1.3, separated by spaces".into()))?;
            if !out.contains(&known) {
                out.push(known);
            }
        }
        if out.is_empty() {
            return invalid("at least one protocol is needed");
        }
        Ok(Protocols(out))
    }

    pub fn of(s: &str) -> Self {
        Self::parse(s).expect("valid protocols")
    }
}

/// HTTP status codes from `min` to `max`, comma-separated.
pub fn parse_codes(s: &str, min: u16, max: u16) -> Result<Vec<u16>, Invalid> {
    let mut codes = parse_list(s, 64, |c| match c.parse::<u16>() {
        Ok(n) if (min..=max).contains(&n) && !c.starts_with('+') => Ok(n),
        _ => invalid(format!("a status code from {min} to {max}")),
    })?;
    codes.sort_unstable();
    codes.dedup();
    Ok(codes)
}

/// A MIME type (`text/html`, `application/vnd.ms-fontobject`, `*`).
pub fn parse_mime_types(s: &str) -> Result<Vec<String>, Invalid> {
    let mut out = Vec::new();
    for t in s.split_whitespace() {
        let ok = t == "*"
            || t.split_once('/').is_some_and(|(a, b)| {
                let part = |p: &str| {
                    !p.is_empty()
                        && p.bytes().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.' | b'_')
                        })
                };
                part(a) && part(b)
            });
        if !ok || t.len() > 128 {
            return invalid("must be MIME types such as text/css, separated by spaces");
        }
        if out.len() == 256 {
            return invalid("at most 256 types");
        }
        out.push(t.to_string());
    }
    if out.is_empty() {
        return invalid("at least one type is needed");
    }
    Ok(out)
}

/// Where `auth-tls-error-page` sends a client whose certificate failed:
/// an absolute `http://` or `https://` URL of URI characters, without
/// variables. (ingress-nginx also took a path or a named location: an
/// internal redirect to one of the host's own locations, which would serve
/// a request whose certificate failed.)
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct AbsoluteUrl(String);

impl AbsoluteUrl {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return invalid("must be an http:// or https:// URL");
        }
        if s.contains(['$', '{', '}']) {
            return invalid("a URL here may not name variables ('$', '{', '}')");
        }
        RedirectUrl::parse(s)?;
        Ok(AbsoluteUrl(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `auth-tls-match-cn`: a regular expression on the client certificate's
/// subject DN (`$ssl_client_s_dn`, such as `CN=client,O=Example`), which
/// must start with `CN=` (as ingress-nginx requires), of printable ASCII,
/// checked with the PCRE2 library nginx uses. A `$`, escaped or not, may only end the
/// expression or a branch (an anchor), never start a name, so that nothing
/// in it reads as an nginx variable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SubjectPattern(String);

impl SubjectPattern {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if !s.starts_with("CN=") {
            return invalid("must start with \"CN=\"");
        }
        if s.len() > 1024 || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return invalid("must be at most 1024 printable ASCII characters");
        }
        let b = s.as_bytes();
        for (i, c) in b.iter().enumerate() {
            if *c == b'$' && !matches!(b.get(i + 1), None | Some(b'|' | b')')) {
                return invalid("'$' may only end the expression or a branch");
            }
        }
        pcre2::bytes::RegexBuilder::new()
            .build(s)
            .map_err(|e| Invalid(format!("not a valid regular expression: {e}")))?;
        Ok(SubjectPattern(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_times_and_booleans() {
        for ok in ["0", "1m", "512k", "2G", "100"] {
            assert!(Size::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "m",
            "1mm",
            "1.5m",
            "-1",
            "1 m",
            "1m;",
            "9999999999",
            "8b",
            "1m\n",
        ] {
            assert!(Size::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Size::of("8M").bytes(), 8 << 20);
        for ok in ["60", "60s", "1h", "500ms", "1h30m", "7d"] {
            assert!(NginxTime::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "s", "1x", "1 h", "-1s", "1h;", "$x", "1y"] {
            assert!(NginxTime::parse(bad).is_err(), "{bad:?}");
        }
        for t in ["true", "True", "1", "t"] {
            assert_eq!(parse_bool(t), Ok(true));
        }
        for bad in ["yes", "on", "", " true", "TrUe"] {
            assert!(parse_bool(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn networks() {
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("192.0.2.7").unwrap().to_string(), "192.0.2.7");
        assert_eq!(
            Cidr::parse("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(
            Cidr::parse("10.0.0.0/8")
                .unwrap()
                .contains("10.9.9.9".parse().unwrap())
        );
        assert!(
            !Cidr::parse("10.0.0.0/8")
                .unwrap()
                .contains("11.0.0.1".parse().unwrap())
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "10.0.0.0/+8",
            "10.0.0.0/8; allow all",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        let l = parse_list("10.0.0.0/8, 192.168.0.1,", 100, Cidr::parse).unwrap();
        assert_eq!(l.len(), 2);
        assert!(parse_list("10.0.0.0/8,,1.1.1.1", 100, Cidr::parse).is_err());
        assert!(parse_list("", 100, Cidr::parse).is_err());
    }

    #[test]
    fn redirect_urls_name_only_allowed_variables() {
        for ok in [
            "https://new.example.com",
            "https://new.example.com/a?b=c",
            "https://new.example.com$request_uri",
            "https://$host/x",
            "http://192.0.2.1:8080/",
            "/new-location",
            "https://${host}${request_uri}",
        ] {
            assert!(RedirectUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "new.example.com",
            "ftp://x.example.com",
            "//evil.example.com",
            "https://x.example.com/$http_cookie",
            "https://x.example.com/$1",
            "https://x.example.com/ a",
            "https://x.example.com/\"; return 200",
            "https://x.example.com/\nx",
            "https://user@x.example.com/",
            "https:///path",
            "https://x.example.com:port/",
            "https://x.example.com/${host",
            "javascript:alert(1)",
        ] {
            assert!(RedirectUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_hosts_ciphers_protocols_codes() {
        assert!(HeaderName::parse("X-Custom_1").is_ok());
        for bad in ["", "X Custom", "X:Y", "X\n", "é"] {
            assert!(HeaderName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HeaderValue::parse("a $remote_addr").unwrap().for_nginx(),
            "a ${wicket_dollar}remote_addr"
        );
        assert!(HeaderValue::parse("a\nb").is_err());
        assert!(HostPort::parse("upstream.example.com:8080").is_ok());
        for bad in ["$host", "a b", "x.example.com:0", "x.example.com:99999", ""] {
            assert!(HostPort::parse(bad).is_err(), "{bad:?}");
        }
        assert!(CipherList::parse("HIGH:!aNULL:@SECLEVEL=1").is_ok());
        assert!(CipherList::parse("HIGH; ssl off").is_err());
        assert_eq!(
            Protocols::parse("TLSv1.2 TLSv1.3").unwrap(),
            Protocols(vec!["TLSv1.2", "TLSv1.3"])
        );
        assert!(Protocols::parse("SSLv3").is_err());
        assert_eq!(
            parse_codes("404, 503,404", 300, 599).unwrap(),
            vec![404, 503]
        );
        assert!(parse_codes("200", 300, 599).is_err());
        assert!(parse_mime_types("text/css application/json").is_ok());
        assert!(parse_mime_types("text/css;").is_err());
    }
}

/// The variables nginx (with the modules wicket loads) and wicket itself
/// define, by exact name.
const KNOWN_VARIABLES: &[&str] = &[
    // ngx_http_core_module
    "args",
    "binary_remote_addr",
    "body_bytes_sent",
    "bytes_sent",
    "connection",
    "connection_requests",
    "connection_time",
    "content_length",
    "content_type",
    "document_root",
    "document_uri",
    "host",
    "hostname",
    "https",
    "is_args",
    "limit_rate",
    "msec",
    "nginx_version",
    "pid",
    "pipe",
    "proxy_protocol_addr",
    "proxy_protocol_port",
    "proxy_protocol_server_addr",
    "proxy_protocol_server_port",
    "query_string",
    "realpath_root",
    "remote_addr",
    "remote_port",
    "remote_user",
    "request",
    "request_body",
    "request_body_file",
    "request_completion",
    "request_filename",
    "request_id",
    "request_length",
    "request_method",
    "request_time",
    "request_uri",
    "scheme",
    "server_addr",
    "server_name",
    "server_port",
    "server_protocol",
    "status",
    "tcpinfo_rtt",
    "tcpinfo_rttvar",
    "tcpinfo_snd_cwnd",
    "tcpinfo_rcv_space",
    "time_iso8601",
    "time_local",
    "uri",
    // ngx_http_upstream_module
    "upstream_addr",
    "upstream_bytes_received",
    "upstream_bytes_sent",
    "upstream_cache_status",
    "upstream_connect_time",
    "upstream_header_time",
    "upstream_queue_time",
    "upstream_response_length",
    "upstream_response_time",
    "upstream_status",
    // ngx_http_proxy_module, realip, gzip, limits, http2, ssl
    "proxy_host",
    "proxy_port",
    "proxy_add_x_forwarded_for",
    "realip_remote_addr",
    "realip_remote_port",
    "gzip_ratio",
    "limit_conn_status",
    "limit_req_status",
    "http2",
    "ssl_cipher",
    "ssl_ciphers",
    "ssl_client_cert",
    "ssl_client_escaped_cert",
    "ssl_client_fingerprint",
    "ssl_client_i_dn",
    "ssl_client_i_dn_legacy",
    "ssl_client_raw_cert",
    "ssl_client_s_dn",
    "ssl_client_s_dn_legacy",
    "ssl_client_serial",
    "ssl_client_v_end",
    "ssl_client_v_remain",
    "ssl_client_v_start",
    "ssl_client_verify",
    "ssl_curve",
    "ssl_curves",
    "ssl_early_data",
    "ssl_protocol",
    "ssl_server_name",
    "ssl_session_id",
    "ssl_session_reused",
    "ssl_alpn_protocol",
    // wicket's, and ingress-nginx's names for them
    "req_id",
    "proxy_upstream_name",
    "proxy_alternative_upstream_name",
    "namespace",
    "ingress_name",
    "service_name",
    "service_port",
    "location_path",
    "pass_access_scheme",
    "pass_server_port",
    "best_http_host",
    "the_real_ip",
    // ngx_http_fastcgi_module
    "fastcgi_script_name",
    "fastcgi_path_info",
];

/// The variables of nginx's stream module (core, upstream, realip,
/// ssl_preread) and of wicket's stream block (`$proxy_upstream_name`).
const KNOWN_STREAM_VARIABLES: &[&str] = &[
    "binary_remote_addr",
    "bytes_received",
    "bytes_sent",
    "connection",
    "hostname",
    "msec",
    "nginx_version",
    "pid",
    "protocol",
    "proxy_protocol_addr",
    "proxy_protocol_port",
    "proxy_protocol_server_addr",
    "proxy_protocol_server_port",
    "remote_addr",
    "remote_port",
    "server_addr",
    "server_port",
    "session_time",
    "status",
    "time_iso8601",
    "time_local",
    "upstream_addr",
    "upstream_bytes_received",
    "upstream_bytes_sent",
    "upstream_connect_time",
    "upstream_first_byte_time",
    "upstream_session_time",
    "realip_remote_addr",
    "realip_remote_port",
    "ssl_preread_protocol",
    "ssl_preread_server_name",
    "ssl_preread_alpn_protocols",
    "proxy_upstream_name",
];

/// Families of variables named after a header, cookie or argument.
const KNOWN_PREFIXES: &[&str] = &[
    "http_",
    "sent_http_",
    "sent_trailer_",
    "cookie_",
    "arg_",
    "upstream_http_",
    "upstream_trailer_",
    "upstream_cookie_",
];

/// Whether nginx (or wicket) defines a variable of this name.
pub fn known_variable(name: &str) -> bool {
    KNOWN_VARIABLES.contains(&name)
        || KNOWN_PREFIXES.iter().any(|p| {
            name.strip_prefix(p).is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
        })
}

/// Checks text that nginx expands variables in (a log format, a header
/// value from the global ConfigMap): printable, and every `$` starts a
/// variable nginx knows, so nginx -t cannot refuse it for an unknown one.
pub fn check_known_variables(s: &str) -> Result<(), Invalid> {
    if s.chars().any(|c| c.is_control()) {
        return invalid("may not contain control characters");
    }
    each_variable(s, |name| {
        if known_variable(name) {
            Ok(())
        } else {
            invalid(format!("${name} is not a variable nginx knows"))
        }
    })
    .map(drop)
}

/// Text that nginx expands variables in, checked by
/// [`check_known_variables`]: set by the cluster admin in the global
/// ConfigMap (a log format, request or response headers for every route).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Expandable(String);

impl Expandable {
    pub fn parse(s: &str, max: usize) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > max {
            return invalid(format!("must be 1 to {max} characters"));
        }
        check_known_variables(s)?;
        Ok(Expandable(s.to_string()))
    }

    /// Text of the stream block (`log-format-stream`): every `$` starts
    /// a variable nginx's stream module (or wicket's stream block) defines.
    pub fn parse_stream(s: &str, max: usize) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > max {
            return invalid(format!("must be 1 to {max} characters"));
        }
        if s.chars().any(|c| c.is_control()) {
            return invalid("may not contain control characters");
        }
        each_variable(s, |name| {
            if KNOWN_STREAM_VARIABLES.contains(&name) {
                Ok(())
            } else {
                invalid(format!(
                    "${name} is not a variable of nginx's stream module"
                ))
            }
        })?;
        Ok(Expandable(s.to_string()))
    }

    /// The empty text.
    pub fn empty() -> Self {
        Expandable(String::new())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An entry of `block-user-agents` or `block-referers`: an exact string,
/// or an nginx regular expression (`~` case-sensitive, `~*` not).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MatchPattern(String);

impl MatchPattern {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 1024 || s.chars().any(|c| c.is_control()) {
            return invalid("must be 1 to 1024 printable characters");
        }
        if let Some(re) = s.strip_prefix("~*").or_else(|| s.strip_prefix('~')) {
            pcre2::bytes::RegexBuilder::new()
                .build(re)
                .map_err(|e| Invalid(format!("not a valid regular expression: {e}")))?;
        } else if s.starts_with('\\') || s.contains('$') {
            // nginx map keys: a leading `\` escapes, `$` is literal only
            // with care; keep exact strings plain.
            return invalid("an exact string may not start with '\\' or contain '$'");
        }
        Ok(MatchPattern(s.to_string()))
    }
}

#[cfg(test)]
mod known_tests {
    use super::*;

    #[test]
    fn only_known_variables() {
        for ok in [
            "$remote_addr - [$time_local] \"$request\" $status $req_id",
            "$http_x_custom ${upstream_addr}",
            "no variables",
        ] {
            assert!(check_known_variables(ok).is_ok(), "{ok}");
        }
        for bad in ["$nope", "$http_", "${remote_addr", "a\nb", "$1"] {
            assert!(check_known_variables(bad).is_err(), "{bad:?}");
        }
        assert!(MatchPattern::parse("~*bot").is_ok());
        assert!(MatchPattern::parse("~*(").is_err());
        assert!(MatchPattern::parse("curl/7.0").is_ok());
        assert!(MatchPattern::parse("a$b").is_err());
    }

    #[test]
    fn absolute_urls_for_error_pages() {
        for ok in [
            "https://example.com/cert-error",
            "http://10.0.0.1:8080/x?y=1",
            "https://login.example.com",
        ] {
            assert_eq!(AbsoluteUrl::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "/error",
            "@named",
            "example.com/error",
            "https://$host/error",
            "https://example.com/$request_uri",
            "https://example.com/${x}",
            "https://example.com/a b",
            "https://example.com/a\nb",
            "https://example.com/a\"b",
            "https://example.com/{",
            "https://exa mple.com/",
            "https://user@example.com/",
            "javascript:alert(1)",
        ] {
            assert!(AbsoluteUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subject_patterns() {
        for ok in [
            "CN=client",
            "CN=(alice|bob)",
            "CN=client$",
            "CN=a$|CN=b$",
            "CN=client\\.example\\.com",
            "CN=a{2}",
            "CN=a;b",
            "CN=\"quoted\"",
        ] {
            assert_eq!(SubjectPattern::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "client",
            "cn=client",
            " CN=client",
            "CN=(",
            "CN=a\nb",
            "CN=a\rb",
            "CN=a\tb",
            "CN=$host",
            "CN=a${x}",
            "CN=a$b",
            "CN=\\\\$host",
            "CN=\\$host",
            "CN=é",
        ] {
            assert!(SubjectPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
