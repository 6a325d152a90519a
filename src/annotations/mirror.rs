//! Mirroring: `mirror-target` (a URL, which may name `$request_uri` and
//! `$host`), `mirror-host` (the `Host` header of the copies) and
//! `mirror-request-body` (`on`, the default, or `off`). nginx's `mirror`
//! sends a copy of each request in the background: the client's answer
//! never waits on or comes from it.

use super::extauth::AuthUrl;
use super::{FieldError, Reader};
use crate::values::{HostPort, Invalid};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mirror {
    pub target: AuthUrl,
    pub host: Option<HostPort>,
    pub body: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mirroring {
    /// (Boxed: most Ingresses have none.)
    pub mirror: Option<Box<Mirror>>,
    /// `mirror-host` or `mirror-request-body` without `mirror-target`.
    pub orphan: bool,
}

fn on_off(s: &str) -> Result<bool, Invalid> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(Invalid("expected on or off".into())),
    }
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Mirroring {
    let target = r
        .get("mirror-target")
        .filter(|v| !v.is_empty())
        .and_then(|v| {
            r.check("mirror-target", v, errors, |s| {
                let u = AuthUrl::parse(s)?;
                // wicket's own listener would mirror each copy again.
                if u.host == super::extauth::AuthHost::Request {
                    return Err(Invalid(
                        "the host may be a DNS name or an address, not $host (each copy would be mirrored again)".into(),
                    ));
                }
                Ok(u)
            })
        });
    let host = r.parse("mirror-host", errors, HostPort::parse);
    let body = r.parse("mirror-request-body", errors, on_off);
    let orphan = target.is_none() && (host.is_some() || body.is_some());
    Mirroring {
        mirror: target.map(|target| {
            Box::new(Mirror {
                target,
                host,
                body: body.unwrap_or(true),
            })
        }),
        orphan,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parsed(pairs: &[(&str, &str)]) -> (Mirroring, Vec<FieldError>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("p/{k}"), v.to_string()))
            .collect();
        let mut r = Reader::new(Some(&map), "p");
        let mut errors = Vec::new();
        (parse(&mut r, &mut errors), errors)
    }

    #[test]
    fn targets_hosts_and_body_parse_strictly() {
        let (m, e) = parsed(&[
            ("mirror-target", "https://shadow.example.com$request_uri"),
            ("mirror-request-body", "off"),
        ]);
        assert!(e.is_empty(), "{e:?}");
        let m = m.mirror.unwrap();
        assert!(m.target.https && !m.body && m.host.is_none());
        assert_eq!(m.target.uri, "$request_uri");
        for (k, v) in [
            ("mirror-target", "shadow.example.com/x"),
            ("mirror-target", "http://a/\"; return 200;"),
            ("mirror-target", "http://a/$cookie_x"),
            ("mirror-target", "http://$host$request_uri"),
            ("mirror-host", "a b"),
            ("mirror-host", "$host"),
            ("mirror-request-body", "yes"),
        ] {
            let mut pairs = vec![("mirror-target", "http://a/")];
            pairs.retain(|(n, _)| *n != k);
            pairs.push((k, v));
            assert!(!parsed(&pairs).1.is_empty(), "{k}: {v:?}");
        }
        // Without a target, the others do nothing (and say so in build).
        let (m, e) = parsed(&[("mirror-host", "a.example.com")]);
        assert!(e.is_empty() && m.mirror.is_none() && m.orphan);
    }
}
