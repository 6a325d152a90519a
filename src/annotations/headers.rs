//! Headers: `custom-headers` (a ConfigMap of response headers),
//! `upstream-vhost` (the `Host` the backend sees), `connection-proxy-header`.

use serde::Serialize;

use super::backend::ObjectName;
use super::{FieldError, Reader};
use crate::values::{HostPort, Invalid};

/// The `Connection` header sent to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Connection {
    Close,
    KeepAlive,
}

impl Connection {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "close" => Ok(Connection::Close),
            "keep-alive" => Ok(Connection::KeepAlive),
            _ => Err(Invalid("must be close or keep-alive".into())),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub custom_headers: Option<ObjectName>,
    pub upstream_vhost: Option<HostPort>,
    pub connection: Option<Connection>,
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Headers {
    Headers {
        custom_headers: r.parse("custom-headers", errors, ObjectName::parse),
        upstream_vhost: r.parse("upstream-vhost", errors, HostPort::parse),
        connection: r.parse("connection-proxy-header", errors, Connection::parse),
    }
}
