//! Redirects and what a location logs: `ssl-redirect`,
//! `force-ssl-redirect`, `preserve-trailing-slash`,
//! `use-port-in-redirects`, `relative-redirects`, `permanent-redirect` and
//! `temporal-redirect` with their codes, `x-forwarded-prefix`,
//! `enable-rewrite-log`, `enable-access-log`. Unset values fall back to the
//! global settings where ingress-nginx's did.

use super::{FieldError, Reader};
use crate::values::{Invalid, PlainPath, RedirectUrl};

/// A `return CODE URL` the location answers with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Redirect {
    pub code: u16,
    pub url: RedirectUrl,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redirects {
    pub ssl_redirect: Option<bool>,
    pub force_ssl_redirect: Option<bool>,
    pub preserve_trailing_slash: Option<bool>,
    pub use_port_in_redirects: Option<bool>,
    pub relative_redirects: Option<bool>,
    /// `temporal-redirect` (checked first, as in ingress-nginx), else
    /// `permanent-redirect`.
    pub redirect: Option<Redirect>,
    pub x_forwarded_prefix: Option<PlainPath>,
    pub rewrite_log: bool,
    pub access_log: bool,
}

fn code(s: &str, max: u16) -> Result<u16, Invalid> {
    match s.parse::<u16>() {
        Ok(n) if (300..=max).contains(&n) && !s.starts_with('+') => Ok(n),
        _ => Err(Invalid(format!(
            "must be a redirect code from 300 to {max}"
        ))),
    }
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Redirects {
    let temporal = r.parse("temporal-redirect", errors, RedirectUrl::parse);
    let temporal_code = r
        .parse("temporal-redirect-code", errors, |s| code(s, 307))
        .unwrap_or(302);
    let permanent = r.parse("permanent-redirect", errors, RedirectUrl::parse);
    let permanent_code = r
        .parse("permanent-redirect-code", errors, |s| code(s, 308))
        .unwrap_or(301);
    let redirect = match (temporal, permanent) {
        (Some(url), _) => Some(Redirect {
            code: temporal_code,
            url,
        }),
        (None, Some(url)) => Some(Redirect {
            code: permanent_code,
            url,
        }),
        (None, None) => None,
    };
    Redirects {
        ssl_redirect: r.bool("ssl-redirect", errors),
        force_ssl_redirect: r.bool("force-ssl-redirect", errors),
        preserve_trailing_slash: r.bool("preserve-trailing-slash", errors),
        use_port_in_redirects: r.bool("use-port-in-redirects", errors),
        relative_redirects: r.bool("relative-redirects", errors),
        redirect,
        // An empty value sets nothing, as in ingress-nginx.
        x_forwarded_prefix: match r.get("x-forwarded-prefix") {
            Some("") | None => None,
            Some(v) => r.check("x-forwarded-prefix", v, errors, PlainPath::parse),
        },
        rewrite_log: r.bool("enable-rewrite-log", errors).unwrap_or(false),
        access_log: r.bool("enable-access-log", errors).unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn read(pairs: &[(&str, &str)]) -> (Redirects, Vec<FieldError>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("p/{k}"), v.to_string()))
            .collect();
        let mut r = Reader::new(Some(&map), "p");
        let mut errors = Vec::new();
        (parse(&mut r, &mut errors), errors)
    }

    #[test]
    fn temporal_wins_and_codes_are_checked() {
        let (r, e) = read(&[
            ("permanent-redirect", "https://a.example.com"),
            ("temporal-redirect", "https://b.example.com$request_uri"),
            ("temporal-redirect-code", "307"),
        ]);
        assert!(e.is_empty(), "{e:?}");
        let r = r.redirect.unwrap();
        assert_eq!(
            (r.code, r.url.as_str()),
            (307, "https://b.example.com$request_uri")
        );
        let (r, _) = read(&[("permanent-redirect", "/moved")]);
        assert_eq!(r.redirect.unwrap().code, 301);
        for (k, v) in [
            ("permanent-redirect-code", "309"),
            ("temporal-redirect-code", "308"),
            ("permanent-redirect-code", "301; return 200"),
            (
                "permanent-redirect",
                "https://x.example.com/$http_authorization",
            ),
            ("permanent-redirect", "https://x.example.com/\"}"),
            ("ssl-redirect", "yes"),
            ("x-forwarded-prefix", "/a$host"),
            ("x-forwarded-prefix", "/a b"),
        ] {
            let (_, e) = read(&[(k, v)]);
            assert_eq!(e.len(), 1, "{k}={v:?} accepted");
        }
        let (r, e) = read(&[("x-forwarded-prefix", ""), ("enable-access-log", "False")]);
        assert!(e.is_empty());
        assert_eq!(r.x_forwarded_prefix, None);
        assert!(!r.access_log);
    }
}
