//! External authentication: `auth-url` (a subrequest to an auth service
//! before each request), `auth-method`, `auth-signin` with
//! `auth-signin-redirect-param`, `auth-response-headers`,
//! `auth-proxy-set-headers`, `auth-request-redirect`, `auth-cache-key`,
//! `auth-cache-duration`, `auth-always-set-cookie` and the `auth-keepalive*`
//! keys; the global `global-auth-*` keys parse into the same [`AuthSpec`].
//!
//! Protection keys: a value that does not parse rejects the Ingress; any of
//! them without `auth-url` makes the locations answer 503 (build), so a
//! half-written configuration never lets requests through unchecked.

use super::backend::ObjectName;
use super::{FieldError, Reader};
use crate::values::{
    DnsSubdomain, Expandable, HeaderName, Invalid, RedirectUrl, parse_bool, parse_count,
};
use std::net::IpAddr;

/// The host an auth URL names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AuthHost {
    /// A DNS name, looked up by wicket (as `ExternalName`s are).
    Name(DnsSubdomain),
    Addr(IpAddr),
    /// `$host` (or `$http_host`): the host of the request itself, which
    /// wicket's own listener serves.
    Request,
}

/// `auth-url`: `http(s)://HOST[:PORT][/PATH][?QUERY]`; the path and query
/// may name the variables of [`crate::values::ALLOWED_VARIABLES`], and the
/// host may be `$host`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthUrl {
    pub https: bool,
    pub host: AuthHost,
    pub port: Option<u16>,
    /// The path and query, `/` when the URL has none.
    pub uri: String,
    /// The URL as written.
    pub text: String,
}

impl AuthUrl {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        RedirectUrl::parse(s)?;
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(Invalid("must be an http:// or https:// URL".into()));
        };
        let end = if rest.starts_with('$') {
            rest.find(['/', '?']).unwrap_or(rest.len())
        } else {
            rest.find(['/', '?', '$']).unwrap_or(rest.len())
        };
        let (authority, path) = rest.split_at(end);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(']') || h.ends_with(']') => {
                let p: u16 = p
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| Invalid("the URL's port must be 1-65535".into()))?;
                (h, Some(p))
            }
            _ => (authority, None),
        };
        let host = match host {
            "$host" | "${host}" | "$http_host" | "${http_host}" => {
                if port.is_some() {
                    return Err(Invalid("$host takes no port".into()));
                }
                AuthHost::Request
            }
            h if h.starts_with('$') => {
                return Err(Invalid(
                    "the host may be a DNS name, an address or $host".into(),
                ));
            }
            h => {
                let bare = h.trim_start_matches('[').trim_end_matches(']');
                match bare.parse::<IpAddr>() {
                    Ok(ip) => AuthHost::Addr(ip),
                    Err(_) => AuthHost::Name(DnsSubdomain::parse(&bare.to_ascii_lowercase())?),
                }
            }
        };
        let uri = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p if p.starts_with('/') => p.to_string(),
            // Variables that start with '/' themselves.
            p if ["$request_uri", "${request_uri}", "$uri", "${uri}"]
                .iter()
                .any(|v| p.starts_with(v)) =>
            {
                p.to_string()
            }
            _ => return Err(Invalid("the path must start with '/'".into())),
        };
        Ok(AuthUrl {
            https,
            host,
            port,
            uri,
            text: s.to_string(),
        })
    }

    /// The port it connects to.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.https { 443 } else { 80 })
    }

    /// The `Host` header the auth service gets: the URL's host (and port
    /// when one is written), or the request's.
    pub fn host_header(&self) -> String {
        let host = match &self.host {
            AuthHost::Request => return "$host".into(),
            AuthHost::Name(n) => n.as_str().to_string(),
            AuthHost::Addr(IpAddr::V6(ip)) => format!("[{ip}]"),
            AuthHost::Addr(ip) => ip.to_string(),
        };
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }
}

/// `auth-method`.
pub fn method(s: &str) -> Result<&'static str, Invalid> {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
    ];
    METHODS
        .iter()
        .find(|m| **m == s)
        .copied()
        .ok_or_else(|| Invalid(format!("expected one of {}", METHODS.join(", "))))
}

/// `auth-signin`: where a 401 from the auth service sends the client. An
/// absolute URL or a path, of the allowed variables and
/// `$escaped_request_uri` (the request URI, escaped for a query).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Signin(String);

impl Signin {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        // `$escaped_request_uri` is checked as the variable it escapes.
        let plain = s
            .replace("${escaped_request_uri}", "${request_uri}")
            .replace("$escaped_request_uri", "$request_uri");
        RedirectUrl::parse(&plain)?;
        Ok(Signin(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it names `$escaped_request_uri`.
    pub fn escapes(&self) -> bool {
        self.0.contains("escaped_request_uri")
    }

    /// The URL of the redirect: with `PARAM=$pass_access_scheme://$http_host$escaped_request_uri`
    /// added unless the query already has `PARAM`, as in ingress-nginx.
    pub fn redirect(&self, param: &str) -> String {
        let s = &self.0;
        let back = format!("{param}=$pass_access_scheme://$http_host$escaped_request_uri");
        match s.split_once('?') {
            None => format!("{s}?{back}"),
            Some((_, "")) => format!("{s}{back}"),
            Some((_, q)) => {
                let has = q
                    .split('&')
                    .any(|kv| kv.split('=').next() == Some(param) && kv.len() > param.len() + 1);
                if has {
                    s.clone()
                } else {
                    format!("{s}&{back}")
                }
            }
        }
    }
}

/// `auth-signin-redirect-param`: a query parameter name.
pub fn param_name(s: &str) -> Result<String, Invalid> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Invalid(
            "a parameter name is 1-64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    Ok(s.to_string())
}

/// `auth-response-headers`: a comma-separated list of header names.
pub fn header_list(s: &str) -> Result<Vec<HeaderName>, Invalid> {
    let mut out: Vec<HeaderName> = Vec::new();
    for h in s.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let h = HeaderName::parse(h)?;
        if !out
            .iter()
            .any(|x| x.as_str().eq_ignore_ascii_case(h.as_str()))
        {
            out.push(h);
        }
    }
    if out.len() > 64 {
        return Err(Invalid("at most 64 headers".into()));
    }
    Ok(out)
}

/// One `auth-cache-duration` entry: status codes (or `any`) and a time,
/// as nginx's `proxy_cache_valid` reads them.
pub fn cache_durations(s: &str) -> Result<Vec<String>, Invalid> {
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let words: Vec<&str> = entry.split_whitespace().collect();
        let Some((time, codes)) = words.split_last() else {
            continue;
        };
        let digits = time.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &time[digits.len()..];
        if digits.is_empty()
            || digits.len() > 9
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || !matches!(unit, "ms" | "s" | "m" | "h" | "d" | "w" | "M" | "y")
        {
            return Err(Invalid(format!(
                "{entry}: expected status codes and a time such as 200 202 401 5m"
            )));
        }
        for c in codes {
            let ok = *c == "any"
                || (c.len() == 3 && c.parse::<u16>().is_ok_and(|n| (100..=599).contains(&n)));
            if !ok {
                return Err(Invalid(format!("{entry}: {c} is not a status code or any")));
            }
        }
        out.push(words.join(" "));
    }
    if out.len() > 16 {
        return Err(Invalid("at most 16 entries".into()));
    }
    Ok(out)
}

/// ingress-nginx's default `auth-cache-duration`.
pub const DEFAULT_CACHE_DURATION: &str = "200 202 401 5m";

/// An external authentication check, as parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthSpec {
    pub url: AuthUrl,
    pub method: Option<&'static str>,
    pub signin: Option<Signin>,
    pub signin_param: String,
    pub response_headers: Vec<HeaderName>,
    pub request_redirect: Option<RedirectUrl>,
    /// `auth-cache-key`: caching is on when set.
    pub cache_key: Option<Expandable>,
    pub cache_duration: Vec<String>,
    pub always_set_cookie: bool,
    /// `auth-proxy-set-headers` (annotation only): a ConfigMap of headers
    /// for the subrequest.
    pub proxy_set_headers: Option<ObjectName>,
    /// `auth-snippet` (only with `allow-snippet-annotations`) or
    /// `global-auth-snippet`: directives of the check's location.
    pub snippet: Option<super::snippets::Snippet>,
}

/// The annotations of one Ingress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtAuth {
    /// (Boxed: most Ingresses have none.)
    pub spec: Option<Box<AuthSpec>>,
    /// Some key of the family is set (parsed or not).
    pub asked: bool,
    /// The key set without `auth-url`, for the message.
    pub orphan: Option<&'static str>,
}

/// Keys of the family besides `auth-url`.
const KEYS: [&str; 13] = [
    "auth-method",
    "auth-signin",
    "auth-signin-redirect-param",
    "auth-response-headers",
    "auth-proxy-set-headers",
    "auth-request-redirect",
    "auth-cache-key",
    "auth-cache-duration",
    "auth-always-set-cookie",
    "auth-keepalive",
    "auth-keepalive-requests",
    "auth-keepalive-timeout",
    "auth-keepalive-share-vars",
];

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>, snippets: bool) -> ExtAuth {
    // Refused by the snippets family unless snippets are allowed.
    let snippet = if snippets {
        r.parse("auth-snippet", errors, super::snippets::Snippet::parse)
    } else {
        None
    };
    let url_raw = r.get("auth-url");
    let url = url_raw.and_then(|v| r.check("auth-url", v, errors, AuthUrl::parse));
    let mut orphan = None;
    let mut values = Vec::new();
    for k in KEYS {
        let v = r.get(k);
        if v.is_some() && orphan.is_none() {
            orphan = Some(k);
        }
        values.push((k, v));
    }
    let get = |k: &str| values.iter().find(|(n, _)| *n == k).and_then(|(_, v)| *v);
    if snippet.is_some() && orphan.is_none() {
        orphan = Some("auth-snippet");
    }
    let asked = url_raw.is_some() || orphan.is_some();
    let method = get("auth-method").and_then(|v| r.check("auth-method", v, errors, method));
    let signin = get("auth-signin").and_then(|v| r.check("auth-signin", v, errors, Signin::parse));
    let signin_param = get("auth-signin-redirect-param")
        .and_then(|v| r.check("auth-signin-redirect-param", v, errors, param_name))
        .unwrap_or_else(|| "rd".into());
    let response_headers = get("auth-response-headers")
        .and_then(|v| r.check("auth-response-headers", v, errors, header_list))
        .unwrap_or_default();
    let proxy_set_headers = get("auth-proxy-set-headers")
        .and_then(|v| r.check("auth-proxy-set-headers", v, errors, ObjectName::parse));
    let request_redirect = get("auth-request-redirect")
        .and_then(|v| r.check("auth-request-redirect", v, errors, RedirectUrl::parse));
    let cache_key = get("auth-cache-key")
        .filter(|v| !v.is_empty())
        .and_then(|v| r.check("auth-cache-key", v, errors, |s| Expandable::parse(s, 512)));
    let cache_duration = get("auth-cache-duration")
        .and_then(|v| r.check("auth-cache-duration", v, errors, cache_durations))
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| vec![DEFAULT_CACHE_DURATION.into()]);
    let always_set_cookie = get("auth-always-set-cookie")
        .and_then(|v| r.check("auth-always-set-cookie", v, errors, parse_bool))
        .unwrap_or(false);
    // Checked, then left to the global upstream keepalive (see the
    // registry's note).
    for k in [
        "auth-keepalive",
        "auth-keepalive-requests",
        "auth-keepalive-timeout",
    ] {
        if let Some(v) = get(k) {
            r.check(k, v, errors, |s| parse_count(s, 0, 1_000_000));
        }
    }
    if let Some(v) = get("auth-keepalive-share-vars") {
        r.check("auth-keepalive-share-vars", v, errors, parse_bool);
    }
    ExtAuth {
        spec: url.map(|url| {
            Box::new(AuthSpec {
                url,
                method,
                signin,
                signin_param,
                response_headers,
                request_redirect,
                cache_key,
                cache_duration,
                always_set_cookie,
                proxy_set_headers,
                snippet,
            })
        }),
        asked,
        orphan: if url_raw.is_some() { None } else { orphan },
    }
}

/// The global `global-auth-*` keys (the admin's ConfigMap).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GlobalAuth {
    pub url: Option<AuthUrl>,
    pub method: Option<&'static str>,
    pub signin: Option<Signin>,
    pub signin_param: Option<String>,
    pub response_headers: Vec<HeaderName>,
    pub request_redirect: Option<RedirectUrl>,
    pub cache_key: Option<Expandable>,
    pub cache_duration: Vec<String>,
    pub always_set_cookie: bool,
    pub snippet: Option<super::snippets::Snippet>,
}

impl GlobalAuth {
    /// Applies one `global-auth-*` key; `Ok(false)` for a key it does not
    /// read. An empty value is the default (not set).
    pub fn apply(&mut self, key: &str, value: &str) -> Result<bool, Invalid> {
        let set = !value.is_empty();
        match key {
            "global-auth-url" => self.url = set.then(|| AuthUrl::parse(value)).transpose()?,
            "global-auth-method" => self.method = set.then(|| method(value)).transpose()?,
            "global-auth-signin" => self.signin = set.then(|| Signin::parse(value)).transpose()?,
            "global-auth-signin-redirect-param" => {
                self.signin_param = set.then(|| param_name(value)).transpose()?
            }
            "global-auth-response-headers" => self.response_headers = header_list(value)?,
            "global-auth-request-redirect" => {
                self.request_redirect = set.then(|| RedirectUrl::parse(value)).transpose()?
            }
            "global-auth-cache-key" => {
                self.cache_key = set.then(|| Expandable::parse(value, 512)).transpose()?
            }
            "global-auth-cache-duration" => self.cache_duration = cache_durations(value)?,
            "global-auth-always-set-cookie" => self.always_set_cookie = set && parse_bool(value)?,
            "global-auth-snippet" => {
                self.snippet = set
                    .then(|| super::snippets::Snippet::parse(value))
                    .transpose()?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The check every Ingress gets unless it opts out or has its own.
    pub fn spec(&self) -> Option<AuthSpec> {
        Some(AuthSpec {
            url: self.url.clone()?,
            method: self.method,
            signin: self.signin.clone(),
            signin_param: self.signin_param.clone().unwrap_or_else(|| "rd".into()),
            response_headers: self.response_headers.clone(),
            request_redirect: self.request_redirect.clone(),
            cache_key: self.cache_key.clone(),
            cache_duration: if self.cache_duration.is_empty() {
                vec![DEFAULT_CACHE_DURATION.into()]
            } else {
                self.cache_duration.clone()
            },
            always_set_cookie: self.always_set_cookie,
            proxy_set_headers: None,
            snippet: self.snippet.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_urls_parse_into_their_parts() {
        let u = AuthUrl::parse("http://auth.shop.svc.cluster.local:8080/verify?x=1").unwrap();
        assert!(!u.https);
        assert_eq!(
            u.host,
            AuthHost::Name(DnsSubdomain::parse("auth.shop.svc.cluster.local").unwrap())
        );
        assert_eq!(u.port, Some(8080));
        assert_eq!(u.uri, "/verify?x=1");
        assert_eq!(u.host_header(), "auth.shop.svc.cluster.local:8080");
        let u = AuthUrl::parse("https://$host/oauth2/auth").unwrap();
        assert_eq!(u.host, AuthHost::Request);
        assert_eq!(u.host_header(), "$host");
        assert_eq!(u.port_or_default(), 443);
        let u = AuthUrl::parse("http://mirror.test:8080$request_uri").unwrap();
        assert_eq!(u.uri, "$request_uri");
        assert!(AuthUrl::parse("http://mirror.test$host/").is_err());
        let u = AuthUrl::parse("http://127.0.0.1").unwrap();
        assert_eq!(u.uri, "/");
        assert_eq!(u.host_header(), "127.0.0.1");
        let u = AuthUrl::parse("http://10.0.0.1:81/a$request_uri").unwrap();
        assert_eq!(u.host_header(), "10.0.0.1:81");
        assert_eq!(u.uri, "/a$request_uri");
        for bad in [
            "",
            "/path",
            "ftp://x/",
            "http://",
            "http://a b/",
            "http://x/\"; deny all",
            "http://x/a\nb",
            "http://x:0/",
            "http://x:99999/",
            "http://$remote_addr/",
            "http://x/$remote_addr",
            "http://$host:80/",
            "http://user@x/",
            "http://x/{a}",
            "http://x;/",
        ] {
            assert!(AuthUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sign_in_redirects_carry_the_request_unless_they_name_it() {
        let s = Signin::parse("https://login.example.com/start").unwrap();
        assert_eq!(
            s.redirect("rd"),
            "https://login.example.com/start?rd=$pass_access_scheme://$http_host$escaped_request_uri"
        );
        let s = Signin::parse("https://$host/oauth2/start?rd=$escaped_request_uri").unwrap();
        assert!(s.escapes());
        assert_eq!(s.redirect("rd"), s.as_str());
        let s = Signin::parse("/login?a=1").unwrap();
        assert_eq!(
            s.redirect("back"),
            "/login?a=1&back=$pass_access_scheme://$http_host$escaped_request_uri"
        );
        for bad in ["x", "https://a/\"", "https://a/$cookie_x", "https://a/\n"] {
            assert!(Signin::parse(bad).is_err(), "{bad:?}");
        }
        assert!(param_name("rd").is_ok());
        assert!(param_name("r d").is_err());
        assert!(param_name("r&d=1").is_err());
    }

    #[test]
    fn methods_headers_and_cache_durations() {
        assert_eq!(method("POST").unwrap(), "POST");
        assert!(method("post").is_err());
        assert!(method("GET;").is_err());
        let h = header_list("X-User, X-Email,,x-user").unwrap();
        assert_eq!(h.len(), 2);
        assert!(header_list("X User").is_err());
        assert!(header_list("X-A\nB").is_err());
        assert_eq!(
            cache_durations("200 202 401 5m, 404 1m,any 10s").unwrap(),
            ["200 202 401 5m", "404 1m", "any 10s"]
        );
        for bad in ["200 5", "20 5m", "200 5m;", "abc 5m", "200 5x", "600 1m"] {
            assert!(cache_durations(bad).is_err(), "{bad:?}");
        }
    }
}
