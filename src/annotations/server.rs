//! Annotations that shape a whole host (server scope: the oldest Ingress of
//! the host that sets one decides): `server-alias`,
//! `from-to-www-redirect`, `app-root`. (`ssl-ciphers` and
//! `ssl-prefer-server-ciphers` are read in `tls`, `server-snippet` in
//! `snippets`.)

use super::{FieldError, Reader};
use crate::values::{HostPattern, PlainPath, parse_list};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerAnnotations {
    pub aliases: Option<Vec<HostPattern>>,
    pub from_to_www: bool,
    pub app_root: Option<PlainPath>,
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> ServerAnnotations {
    ServerAnnotations {
        aliases: r.parse("server-alias", errors, |s| {
            let mut v = parse_list(s, 64, |h| HostPattern::parse(&h.to_ascii_lowercase()))?;
            v.sort();
            v.dedup();
            Ok(v)
        }),
        from_to_www: r.bool("from-to-www-redirect", errors).unwrap_or(false),
        app_root: r.parse("app-root", errors, PlainPath::parse),
    }
}
