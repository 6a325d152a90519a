//! Who may reach the backends by address: `allowlist-source-range` (and its
//! older name `whitelist-source-range`) and `denylist-source-range`. They
//! replace the global settings of the same names. Protection keys: a value
//! that does not parse rejects the Ingress.

use super::{FieldError, Reader};
use crate::values::{Cidr, parse_list};

/// Most entries in one list.
pub const MAX_RANGES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub allow: Option<Vec<Cidr>>,
    pub deny: Option<Vec<Cidr>>,
    /// `enable-global-auth` (default true): whether the global external
    /// auth keys apply to this Ingress.
    pub global_auth: bool,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            allow: None,
            deny: None,
            global_auth: true,
        }
    }
}

pub fn ranges(s: &str) -> Result<Vec<Cidr>, crate::values::Invalid> {
    let mut v = parse_list(s, MAX_RANGES, Cidr::parse)?;
    v.sort();
    v.dedup();
    Ok(v)
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Access {
    let allow = r
        .get_aliased("allowlist-source-range")
        .and_then(|(name, v)| r.check(name, v, errors, ranges));
    Access {
        allow,
        deny: r.parse("denylist-source-range", errors, ranges),
        global_auth: r.bool("enable-global-auth", errors).unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_canonical_name_wins_and_bad_ranges_are_errors() {
        let map: BTreeMap<String, String> = [
            ("p/whitelist-source-range", "192.0.2.0/24"),
            ("p/allowlist-source-range", "10.0.0.0/8"),
            ("p/denylist-source-range", "10.1.0.0/16, 10.1.0.0/16"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut r = Reader::new(Some(&map), "p");
        let mut errors = Vec::new();
        let a = parse(&mut r, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(a.allow.unwrap()[0].to_string(), "10.0.0.0/8");
        assert_eq!(a.deny.unwrap().len(), 1);
        // Both names were read: neither is reported as unsupported.
        assert!(r.keys().iter().all(|(_, _, read)| *read));

        let map: BTreeMap<String, String> = [(
            "p/whitelist-source-range".to_string(),
            "10.0.0.0/8; allow all".to_string(),
        )]
        .into();
        let mut r = Reader::new(Some(&map), "p");
        let mut errors = Vec::new();
        let a = parse(&mut r, &mut errors);
        assert_eq!(a.allow, None);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].field.contains("whitelist-source-range"),
            "{errors:?}"
        );
    }
}
