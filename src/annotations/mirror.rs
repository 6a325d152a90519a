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
        .and_then(|v| r.check("mirror-target", v, errors, AuthUrl::parse));
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
