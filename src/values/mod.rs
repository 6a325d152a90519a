//! Typed, validated values parsed from strings in Kubernetes objects.
//!
//! Nothing taken from an object reaches the nginx configuration as a raw
//! string: it is parsed into one of these types first (or refused with a
//! reason), and the templates then quote it with the one escaping function of
//! [`crate::render`]. The rules follow the Kubernetes API validation where it
//! has one, so an object accepted by an API server is accepted here too.

use std::fmt;

use serde::Serialize;

pub mod nginx;
pub use nginx::{
    AbsoluteUrl, Cidr, CipherList, Expandable, HeaderName, HeaderValue, HostPort, MatchPattern,
    NginxTime, PlainPath, Protocols, RedirectUrl, Seconds, Size, SubjectPattern, parse_bool,
    parse_codes, parse_count, parse_list, parse_mime_types, parse_on_off,
};

/// Why a string is not a valid value of its type. The message does not repeat
/// the value; the caller names the field and prints the value safely.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

const MAX_LABEL: usize = 63;
const MAX_SUBDOMAIN: usize = 253;
/// Longest path or regular expression accepted. nginx refuses tokens longer
/// than its 4 KiB read buffer, and no real route needs more.
pub const MAX_PATH_LEN: usize = 2048;

fn check_label(label: &str, what: &str) -> Result<(), Invalid> {
    if label.is_empty() {
        return invalid(format!("{what} has an empty label"));
    }
    if label.len() > MAX_LABEL {
        return invalid(format!(
            "{what} has a label longer than {MAX_LABEL} characters"
        ));
    }
    let bytes = label.as_bytes();
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return invalid(format!(
            "{what} may only contain lowercase letters, digits, '-' and '.'"
        ));
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return invalid(format!(
            "{what} labels must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// An RFC 1123 DNS label: a namespace name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DnsLabel(String);

impl DnsLabel {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_label(s, "a DNS label")?;
        Ok(DnsLabel(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An RFC 1123 DNS subdomain: the name of an Ingress, Secret, ConfigMap,
/// EndpointSlice or IngressClass.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DnsSubdomain(String);

impl DnsSubdomain {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() > MAX_SUBDOMAIN {
            return invalid(format!("must be at most {MAX_SUBDOMAIN} characters"));
        }
        for label in s.split('.') {
            check_label(label, "a DNS subdomain")?;
        }
        Ok(DnsSubdomain(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `NAMESPACE/NAME`, as flags name objects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NamespacedName {
    pub namespace: DnsLabel,
    pub name: DnsSubdomain,
}

impl NamespacedName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let Some((ns, name)) = s.split_once('/') else {
            return invalid("must be NAMESPACE/NAME");
        };
        Ok(NamespacedName {
            namespace: DnsLabel::parse(ns).map_err(|e| Invalid(format!("namespace: {e}")))?,
            name: DnsSubdomain::parse(name).map_err(|e| Invalid(format!("name: {e}")))?,
        })
    }

    pub fn key(&self) -> crate::cluster::ObjectKey {
        crate::cluster::ObjectKey::new(self.namespace.as_str(), self.name.as_str())
    }
}

impl std::str::FromStr for NamespacedName {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        Self::parse(s)
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace.as_str(), self.name.as_str())
    }
}

/// An RFC 1035 DNS label: the name of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Dns1035Label(String);

impl Dns1035Label {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_label(s, "a Service name")?;
        if !s.as_bytes()[0].is_ascii_lowercase() {
            return invalid("a Service name must start with a lowercase letter");
        }
        Ok(Dns1035Label(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IANA service name: the name of a Service or EndpointSlice port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PortName(String);

impl PortName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 15 {
            return invalid("a port name must be 1 to 15 characters");
        }
        let b = s.as_bytes();
        if !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        {
            return invalid("a port name may only contain lowercase letters, digits and '-'");
        }
        if !b.iter().any(|c| c.is_ascii_lowercase()) {
            return invalid("a port name must contain at least one letter");
        }
        if b[0] == b'-' || b[b.len() - 1] == b'-' || s.contains("--") {
            return invalid("a port name may not begin or end with '-' or contain '--'");
        }
        Ok(PortName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A TCP port number, 1 to 65535.
pub fn port_number(n: i32) -> Result<u16, Invalid> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => invalid(format!("port {n} is not between 1 and 65535")),
    }
}

/// The host of an Ingress rule: an exact DNS name, or `*.` followed by a DNS
/// name, which matches exactly one more label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostPattern {
    Exact(String),
    /// `*.suffix`: stores the suffix without `*.`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return invalid("a host must be lowercase");
        }
        if s.parse::<std::net::IpAddr>().is_ok() {
            return invalid("a host must be a DNS name, not an IP address");
        }
        let (wildcard, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if name.contains('*') {
            return invalid("a wildcard host must have the form *.example.com");
        }
        DnsSubdomain::parse(name).map_err(|e| Invalid(e.0.replace("a DNS subdomain", "a host")))?;
        Ok(if wildcard {
            HostPattern::Wildcard(name.to_string())
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// The `server_name` argument: the exact name, or a regular expression
    /// that matches one DNS label before the suffix. nginx's own `*.suffix`
    /// would match any number of labels, which the Ingress API forbids.
    pub fn server_name(&self) -> String {
        match self {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Wildcard(suffix) => {
                format!("~^[^.]+\\.{}$", suffix.replace('.', "\\."))
            }
        }
    }

    /// Whether a request host (lowercase, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|h| h.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// A literal HTTP path of an `Exact` or `Prefix` rule, percent-decoded the way
/// nginx decodes the request URI before it matches locations.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HttpPath(String);

impl HttpPath {
    /// Parses a path as the Ingress API validates `Exact` and `Prefix` paths:
    /// absolute, only URI path characters, no `//`, `/./`, `/../` or `%2F`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if !s.starts_with('/') {
            return invalid("a path must begin with '/'");
        }
        if s.len() > MAX_PATH_LEN {
            return invalid(format!("a path must be at most {MAX_PATH_LEN} characters"));
        }
        let bytes = s.as_bytes();
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                match hex {
                    Some(b'/') => return invalid("a path may not contain an encoded '/' (%2F)"),
                    Some(c) if c < 0x20 || c == 0x7f => {
                        return invalid("a path may not contain encoded control characters");
                    }
                    Some(c) => decoded.push(c),
                    None => return invalid("'%' in a path must be followed by two hex digits"),
                }
                i += 3;
                continue;
            }
            if !(is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'/')) {
                return invalid(
                    "a path may only contain URI path characters (letters, digits, \
                     -._~!$&'()*+,;=:@/ and %-escapes)",
                );
            }
            decoded.push(b);
            i += 1;
        }
        let decoded = String::from_utf8(decoded)
            .or_else(|_| invalid("a path's %-escapes must decode to UTF-8"))?;
        if decoded.contains("//") {
            return invalid("a path may not contain '//'");
        }
        for seg in decoded.split('/') {
            if seg == "." || seg == ".." {
                return invalid("a path may not contain '.' or '..' segments");
            }
        }
        Ok(HttpPath(decoded))
    }

    /// The prefix form: trailing slashes removed (`/aaa/bbb/` matches like
    /// `/aaa/bbb`), except for the root `/`.
    pub fn as_prefix(&self) -> HttpPath {
        let trimmed = self.0.trim_end_matches('/');
        if trimmed.is_empty() {
            HttpPath("/".into())
        } else {
            HttpPath(trimmed.to_string())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a (decoded) request path matches this path as a Prefix rule:
    /// element by element on `/`.
    pub fn prefix_matches(&self, request: &str) -> bool {
        let p = self.as_prefix();
        let p = p.as_str();
        p == "/" || request == p || request.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
    }
}

/// A regular expression path (with `use-regex` or `rewrite-target`), checked
/// with the same PCRE2 library nginx uses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RegexPath(String);

impl RegexPath {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if !s.starts_with('/') {
            return invalid("a path must begin with '/'");
        }
        if s.len() > MAX_PATH_LEN {
            return invalid(format!("a path must be at most {MAX_PATH_LEN} characters"));
        }
        if !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return invalid(
                "a regular expression path may only contain printable ASCII without spaces",
            );
        }
        pcre2::bytes::RegexBuilder::new()
            .caseless(true)
            .build(&format!("^{s}"))
            .map_err(|e| Invalid(format!("not a valid regular expression: {e}")))?;
        Ok(RegexPath(s.to_string()))
    }

    /// A literal path as a regular expression (without anchors).
    pub fn literal(path: &HttpPath) -> RegexPath {
        let mut out = String::with_capacity(path.as_str().len() + 8);
        for c in path.as_str().chars() {
            if "\\.+*?()|[]{}^$".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        RegexPath(out)
    }

    /// A regular expression matching a literal path exactly at the start of
    /// the URI, followed by the end or a `/` (Prefix semantics).
    pub fn literal_prefix(path: &HttpPath) -> RegexPath {
        let p = path.as_prefix();
        if p.as_str() == "/" {
            return RegexPath("/".to_string());
        }
        let mut out = Self::literal(&p).0;
        out.push_str("(/|$)");
        RegexPath(out)
    }

    /// A regular expression matching a literal path and a `/` at the start
    /// of the URI: the path's subtree, without the path itself.
    pub fn literal_dir(path: &HttpPath) -> RegexPath {
        let p = path.as_prefix();
        let mut out = Self::literal(&p).0;
        if p.as_str() != "/" {
            out.push('/');
        }
        RegexPath(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The target of `rewrite-target`: an absolute URI path (and optional query)
/// that may refer to the path's capture groups as `$1` to `$9`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RewriteTarget(String);

impl RewriteTarget {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if !s.starts_with('/') {
            return invalid("a rewrite target must begin with '/'");
        }
        if s.len() > MAX_PATH_LEN {
            return invalid(format!(
                "a rewrite target must be at most {MAX_PATH_LEN} characters"
            ));
        }
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'$' => {
                    let d = b.get(i + 1).copied();
                    if !matches!(d, Some(b'1'..=b'9')) {
                        return invalid(
                            "'$' in a rewrite target may only start a capture reference $1 to $9",
                        );
                    }
                    if b.get(i + 2).is_some_and(|c| c.is_ascii_digit()) {
                        return invalid(
                            "a capture reference is one digit ($1 to $9); separate it from following digits",
                        );
                    }
                    i += 2;
                }
                b'%' => {
                    let ok = b
                        .get(i + 1..i + 3)
                        .is_some_and(|h| h.iter().all(|c| c.is_ascii_hexdigit()));
                    if !ok {
                        return invalid(
                            "'%' in a rewrite target must be followed by two hex digits",
                        );
                    }
                    i += 3;
                }
                c if is_unreserved(c)
                    || is_sub_delim(c)
                    || matches!(c, b':' | b'@' | b'/' | b'?') =>
                {
                    i += 1
                }
                _ => {
                    return invalid(
                        "a rewrite target may only contain URI characters and $1 to $9",
                    );
                }
            }
        }
        Ok(RewriteTarget(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            HostPattern::parse("foo.bar.com").unwrap(),
            HostPattern::Exact("foo.bar.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.foo.com").unwrap(),
            HostPattern::Wildcard("foo.com".into())
        );
        for bad in [
            "",
            "Foo.com",
            "foo..com",
            "-foo.com",
            "foo.com.",
            "*.*.foo.com",
            "foo.*.com",
            "*foo.com",
            "10.0.0.1",
            "foo_bar.com",
            "foo.com:80",
            "foo com",
            "a\nb",
            "foo.com;",
            "foo.com}",
            "*",
            "*.",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(HostPattern::parse(&long).is_err());
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let w = HostPattern::parse("*.foo.com").unwrap();
        assert!(w.matches("bar.foo.com"));
        assert!(!w.matches("baz.bar.foo.com"));
        assert!(!w.matches("foo.com"));
        assert!(!w.matches(".foo.com"));
        assert!(!w.matches("barfoo.com"));
        assert_eq!(w.server_name(), "~^[^.]+\\.foo\\.com$");
    }

    #[test]
    fn paths() {
        assert_eq!(HttpPath::parse("/a%20b").unwrap().as_str(), "/a b");
        assert_eq!(
            HttpPath::parse("/aaa/bbb/").unwrap().as_prefix().as_str(),
            "/aaa/bbb"
        );
        assert_eq!(HttpPath::parse("/").unwrap().as_prefix().as_str(), "/");
        for bad in [
            "",
            "foo",
            "/a//b",
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/a/.",
            "/a%2fb",
            "/a%2Fb",
            "/a%",
            "/a%zz",
            "/a b",
            "/a\"b",
            "/a{b",
            "/a#b",
            "/a?b",
            "/a\nb",
            "/a%0ab",
            "/a%00",
            "/a\\b",
            "/%2e%2e/x",
        ] {
            assert!(HttpPath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefix_semantics() {
        let p = HttpPath::parse("/foo").unwrap();
        assert!(p.prefix_matches("/foo"));
        assert!(p.prefix_matches("/foo/"));
        assert!(p.prefix_matches("/foo/bar"));
        assert!(!p.prefix_matches("/foobar"));
        let p = HttpPath::parse("/aaa/bbb/").unwrap();
        assert!(p.prefix_matches("/aaa/bbb"));
        assert!(HttpPath::parse("/").unwrap().prefix_matches("/anything"));
    }

    #[test]
    fn regex_paths() {
        assert!(RegexPath::parse("/something(/|$)(.*)").is_ok());
        assert!(RegexPath::parse("/api/v[0-9]+/.*").is_ok());
        for bad in ["/a(", "/a[", "foo", "/a b", "/a\nb", "/a\u{0}"] {
            assert!(RegexPath::parse(bad).is_err(), "{bad:?} accepted");
        }
        let lit = RegexPath::literal_prefix(&HttpPath::parse("/a.b(c)/").unwrap());
        assert_eq!(lit.as_str(), "/a\\.b\\(c\\)(/|$)");
    }

    #[test]
    fn rewrite_targets() {
        for ok in ["/", "/$2", "/api/$1/x?y=$2", "/a%20b"] {
            assert!(RewriteTarget::parse(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "",
            "$1",
            "http://evil/",
            "/$host",
            "/$0",
            "/$12",
            "/${1}",
            "/a b",
            "/a\"",
            "/a;b}",
            "/a\nb",
            "/a#b",
            "/a%",
            "/a\\b",
        ] {
            assert!(RewriteTarget::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names() {
        assert!(DnsLabel::parse("default").is_ok());
        assert!(DnsLabel::parse("a.b").is_err());
        assert!(DnsSubdomain::parse("a.b").is_ok());
        assert!(Dns1035Label::parse("1abc").is_err());
        assert!(Dns1035Label::parse("abc-1").is_ok());
        assert!(PortName::parse("http").is_ok());
        assert!(PortName::parse("80").is_err());
        assert!(PortName::parse("a--b").is_err());
        assert_eq!(
            port_number(0),
            Err(Invalid("port 0 is not between 1 and 65535".into()))
        );
        assert_eq!(port_number(443), Ok(443));
    }
}
