//! How a location proxies: body and buffer sizes, timeouts, retries to the
//! next endpoint, buffering, the HTTP version, cookie and redirect
//! rewriting (`proxy-*`, `client-body-buffer-size`). The same types serve
//! the global settings of the ConfigMap, whose keys have the same names.

use serde::Serialize;

use super::{FieldError, Reader};
use crate::values::{Invalid, PlainPath, Seconds, Size, parse_count, parse_on_off};

/// When nginx passes a request to the next endpoint (`proxy_next_upstream`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct NextUpstream(Vec<&'static str>);

impl NextUpstream {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        const WORDS: &[&str] = &[
            "error",
            "timeout",
            "invalid_header",
            "http_500",
            "http_502",
            "http_503",
            "http_504",
            "http_403",
            "http_404",
            "http_429",
            "non_idempotent",
            "off",
        ];
        let mut out = Vec::new();
        for w in s.split_whitespace() {
            let word = WORDS.iter().find(|k| **k == w).ok_or_else(|| {
                Invalid(format!(
                    "must be words among {}, separated by spaces",
                    WORDS.join(", ")
                ))
            })?;
            if !out.contains(word) {
                out.push(*word);
            }
        }
        if out.is_empty() || (out.contains(&"off") && out.len() > 1) {
            return Err(Invalid(
                "must be \"off\" or conditions such as \"error timeout\"".into(),
            ));
        }
        Ok(NextUpstream(out))
    }

    pub fn of(s: &str) -> Self {
        Self::parse(s).expect("valid conditions")
    }
}

/// `proxy_http_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum HttpVersion {
    #[serde(rename = "1.0")]
    V10,
    #[serde(rename = "1.1")]
    V11,
}

impl HttpVersion {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "1.0" => Ok(HttpVersion::V10),
            "1.1" => Ok(HttpVersion::V11),
            _ => Err(Invalid("must be 1.0 or 1.1".into())),
        }
    }
}

/// A cookie domain as `proxy_cookie_domain` reads it: a DNS name, maybe
/// with a leading dot.
fn cookie_domain_part(s: &str) -> Result<String, Invalid> {
    let bare = s.strip_prefix('.').unwrap_or(s);
    crate::values::DnsSubdomain::parse(&bare.to_ascii_lowercase())
        .map_err(|_| Invalid("domains must be DNS names".into()))?;
    Ok(s.to_string())
}

/// `proxy_cookie_domain` or `proxy_cookie_path`: off, or FROM TO.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CookieRewrite {
    Off,
    Replace { from: String, to: String },
}

impl CookieRewrite {
    pub fn parse_domain(s: &str) -> Result<Self, Invalid> {
        Self::parse_pair(s, cookie_domain_part, "\"off\" or two domains: FROM TO")
    }

    pub fn parse_path(s: &str) -> Result<Self, Invalid> {
        Self::parse_pair(
            s,
            |p| PlainPath::parse(p).map(|p| p.as_str().to_string()),
            "\"off\" or two paths: FROM TO",
        )
    }

    fn parse_pair(
        s: &str,
        part: impl Fn(&str) -> Result<String, Invalid>,
        what: &str,
    ) -> Result<Self, Invalid> {
        if s == "off" {
            return Ok(CookieRewrite::Off);
        }
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [from, to] = parts[..] else {
            return Err(Invalid(format!("must be {what}")));
        };
        Ok(CookieRewrite::Replace {
            from: part(from).map_err(|e| Invalid(format!("{what}: {e}")))?,
            to: part(to).map_err(|e| Invalid(format!("{what}: {e}")))?,
        })
    }
}

/// A `proxy_redirect` argument: an absolute URL or a path, without
/// variables.
pub fn redirect_part(s: &str) -> Result<String, Invalid> {
    let url = crate::values::RedirectUrl::parse(s)?;
    if s.contains('$') {
        return Err(Invalid("may not name variables".into()));
    }
    Ok(url.as_str().to_string())
}

/// `proxy_redirect`: off, default, or FROM TO.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RedirectRewrite {
    Off,
    Default,
    Replace { from: String, to: String },
}

/// The proxy settings an Ingress sets for its locations; `None`: the
/// global setting (rendered once at the http level) applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Proxy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_size: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_body_buffer_size: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Seconds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_timeout: Option<Seconds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<Seconds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_upstream: Option<NextUpstream>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_upstream_tries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_upstream_timeout: Option<Seconds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_buffering: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffering: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer_size: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffers_number: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_buffers_size: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_temp_file_size: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_version: Option<HttpVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_domain: Option<CookieRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_path: Option<CookieRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectRewrite>,
}

impl Proxy {
    pub fn is_empty(&self) -> bool {
        *self == Proxy::default()
    }
}

/// `proxy-redirect-from` and `proxy-redirect-to` together, as ingress-nginx
/// combined them: `off` or `default` alone, else FROM TO unless TO is
/// `off`.
pub fn redirect_rewrite(from: &str, to: &str) -> Result<Option<RedirectRewrite>, Invalid> {
    Ok(match (from, to) {
        ("off", _) => Some(RedirectRewrite::Off),
        ("default", _) => Some(RedirectRewrite::Default),
        (_, "off") => None,
        (f, t) => Some(RedirectRewrite::Replace {
            from: redirect_part(f)?,
            to: redirect_part(t)?,
        }),
    })
}

/// The number of `proxy_buffers`.
pub fn buffers_number(s: &str) -> Result<u32, Invalid> {
    parse_count(s, 1, 1024)
}

/// `proxy_next_upstream_tries` (0: no limit).
pub fn tries(s: &str) -> Result<u32, Invalid> {
    parse_count(s, 0, 100)
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Proxy {
    let from = r.get("proxy-redirect-from");
    let to = r.get("proxy-redirect-to");
    let redirect = match (from, to) {
        (None, None) => None,
        (f, t) => {
            let (f, t) = (f.unwrap_or("off"), t.unwrap_or("off"));
            // Blame the field whose value is wrong.
            let from_bad = !matches!(f, "off" | "default") && redirect_part(f).is_err();
            let (name, value) = if from_bad {
                ("proxy-redirect-from", f)
            } else {
                ("proxy-redirect-to", t)
            };
            r.check(name, value, errors, |_| redirect_rewrite(f, t))
                .flatten()
        }
    };
    Proxy {
        body_size: r.parse("proxy-body-size", errors, Size::parse),
        client_body_buffer_size: r.parse("client-body-buffer-size", errors, Size::parse),
        connect_timeout: r.parse("proxy-connect-timeout", errors, Seconds::parse),
        send_timeout: r.parse("proxy-send-timeout", errors, Seconds::parse),
        read_timeout: r.parse("proxy-read-timeout", errors, Seconds::parse),
        next_upstream: r.parse("proxy-next-upstream", errors, NextUpstream::parse),
        next_upstream_tries: r.parse("proxy-next-upstream-tries", errors, tries),
        next_upstream_timeout: r.parse("proxy-next-upstream-timeout", errors, Seconds::parse),
        request_buffering: r.parse("proxy-request-buffering", errors, parse_on_off),
        buffering: r.parse("proxy-buffering", errors, parse_on_off),
        buffer_size: r.parse("proxy-buffer-size", errors, Size::parse),
        buffers_number: r.parse("proxy-buffers-number", errors, buffers_number),
        busy_buffers_size: r.parse("proxy-busy-buffers-size", errors, Size::parse),
        max_temp_file_size: r.parse("proxy-max-temp-file-size", errors, Size::parse),
        http_version: r.parse("proxy-http-version", errors, HttpVersion::parse),
        cookie_domain: r.parse("proxy-cookie-domain", errors, CookieRewrite::parse_domain),
        cookie_path: r.parse("proxy-cookie-path", errors, CookieRewrite::parse_path),
        redirect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_strictly() {
        assert_eq!(NextUpstream::of("error timeout http_502").0.len(), 3);
        for bad in ["", "error;", "off error", "http_418", "error\ntimeout;"] {
            assert!(NextUpstream::parse(bad).is_err(), "{bad:?}");
        }
        assert!(CookieRewrite::parse_domain("backend.internal .example.com").is_ok());
        for bad in [
            "one",
            "a.example b.example c.example",
            "$host example.com",
            "a;b c",
        ] {
            assert!(CookieRewrite::parse_domain(bad).is_err(), "{bad:?}");
        }
        assert!(CookieRewrite::parse_path("/app/ /").is_ok());
        assert!(CookieRewrite::parse_path("/app/ $1").is_err());
        assert_eq!(
            redirect_rewrite("default", "x").unwrap(),
            Some(RedirectRewrite::Default)
        );
        assert_eq!(redirect_rewrite("http://a/", "off").unwrap(), None);
        assert!(
            redirect_rewrite("http://a/", "https://b.example.com/")
                .unwrap()
                .is_some()
        );
        assert!(redirect_rewrite("http://a/", "https://$host/").is_err());
        assert!(HttpVersion::parse("2").is_err());
        assert!(buffers_number("0").is_err());
        assert!(tries("101").is_err());
    }
}
