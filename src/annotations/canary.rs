//! Canary releases: `canary: "true"` makes an Ingress's paths a second
//! backend of the main Ingress with the same host and path, chosen per
//! request by `canary-by-header` (with `canary-by-header-value` or
//! `canary-by-header-pattern`), then `canary-by-cookie`, then
//! `canary-weight` out of `canary-weight-total` (default 100).

use super::{FieldError, Reader};
use crate::values::{HeaderName, Invalid, parse_count};

/// A cookie name: an RFC 6265 token that is also an nginx variable name
/// part (`$cookie_NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct CookieName(String);

impl CookieName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty()
            || s.len() > 128
            || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(Invalid(
                "a cookie name here is 1-128 letters, digits or '_' (nginx reads it as $cookie_NAME)"
                    .into(),
            ));
        }
        Ok(CookieName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `canary-by-header-value`: printable ASCII, matched exactly.
fn header_value(s: &str) -> Result<String, Invalid> {
    if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Invalid("must be 1-256 printable ASCII characters".into()));
    }
    // It becomes a key of an nginx `map`, where these would mean
    // something else.
    if s.starts_with(['~', '\\']) || matches!(s, "default" | "hostnames" | "include" | "volatile") {
        return Err(Invalid(
            "may not start with '~' or '\\', or be default, hostnames, include or volatile".into(),
        ));
    }
    Ok(s.to_string())
}

/// `canary-by-header-pattern`: a PCRE nginx can compile.
fn header_pattern(s: &str) -> Result<String, Invalid> {
    if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Invalid("must be 1-256 printable ASCII characters".into()));
    }
    pcre2::bytes::RegexBuilder::new()
        .build(s)
        .map_err(|e| Invalid(format!("not a valid regular expression: {e}")))?;
    Ok(s.to_string())
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Canary {
    /// `canary: "true"`.
    pub enabled: bool,
    pub header: Option<HeaderName>,
    pub header_value: Option<String>,
    pub header_pattern: Option<String>,
    pub cookie: Option<CookieName>,
    pub weight: u32,
    pub weight_total: u32,
    /// Some `canary-*` key other than `canary` is set.
    pub configured: bool,
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Canary {
    let configured = r.any(&[
        "canary-by-header",
        "canary-by-header-value",
        "canary-by-header-pattern",
        "canary-by-cookie",
        "canary-weight",
        "canary-weight-total",
    ]);
    let enabled = r.bool("canary", errors).unwrap_or(false);
    let header = r.parse("canary-by-header", errors, HeaderName::parse);
    let header_value = r.parse("canary-by-header-value", errors, header_value);
    let header_pattern = r.parse("canary-by-header-pattern", errors, header_pattern);
    let cookie = r.parse("canary-by-cookie", errors, CookieName::parse);
    let weight_total = r
        .parse("canary-weight-total", errors, |s| {
            parse_count(s, 1, 1_000_000)
        })
        .unwrap_or(100);
    let weight = r
        .parse("canary-weight", errors, |s| parse_count(s, 0, 1_000_000))
        .unwrap_or(0);
    if weight > weight_total {
        errors.push(FieldError {
            field: r.field("canary-weight"),
            value: weight.to_string(),
            error: Invalid(format!("is more than canary-weight-total ({weight_total})")),
        });
    }
    Canary {
        enabled,
        header,
        header_value,
        header_pattern,
        cookie,
        weight: weight.min(weight_total),
        weight_total,
        configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_strictly() {
        assert!(CookieName::parse("canary_user").is_ok());
        for bad in ["", "a-b", "a b", "a;b", "a\nb", "$x"] {
            assert!(CookieName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(header_value("v1.2 beta").is_ok());
        assert!(header_value("a\nb").is_err());
        assert!(header_value("é").is_err());
        assert!(header_value("~.*").is_err());
        assert!(header_value("default").is_err());
        assert!(header_pattern("^(beta|gamma)$").is_ok());
        assert!(header_pattern("(").is_err());
    }
}
