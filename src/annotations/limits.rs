//! Limits, per replica and client address as in ingress-nginx:
//! `limit-connections` (concurrent connections), `limit-rps` and
//! `limit-rpm` (requests, with a burst of `limit-burst-multiplier` times
//! the rate, default 5, served without delay), `limit-allowlist` (alias
//! `limit-whitelist`: addresses no limit applies to); and per connection
//! `limit-rate` (KB/s sent to a client; 0 leaves it unlimited) and
//! `limit-rate-after` (KB sent before the rate applies).

use super::{FieldError, Reader};
use crate::values::Cidr;
use crate::values::nginx::parse_count;

/// Largest connection count or request rate accepted.
pub const MAX_LIMIT: u32 = 1_000_000;

/// Largest value accepted, in KB (or KB/s): 10 GB.
pub const MAX_KB: u32 = 10_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub rate: Option<u32>,
    pub rate_after: Option<u32>,
    pub connections: Option<u32>,
    pub rps: Option<u32>,
    pub rpm: Option<u32>,
    pub burst_multiplier: u32,
    pub allowlist: Vec<Cidr>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: None,
            rate_after: None,
            connections: None,
            rps: None,
            rpm: None,
            burst_multiplier: 5,
            allowlist: Vec::new(),
        }
    }
}

impl Limits {
    /// Whether a connection or request limit is set.
    pub fn any(&self) -> bool {
        self.connections.is_some() || self.rps.is_some() || self.rpm.is_some()
    }
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Limits {
    let limit = |s: &str| parse_count(s, 1, MAX_LIMIT);
    let allowlist = r
        .get_aliased("limit-allowlist")
        .and_then(|(name, v)| r.check(name, v, errors, super::access::ranges))
        .unwrap_or_default();
    Limits {
        rate: r.parse("limit-rate", errors, |s| parse_count(s, 0, MAX_KB)),
        rate_after: r.parse("limit-rate-after", errors, |s| parse_count(s, 0, MAX_KB)),
        connections: r.parse("limit-connections", errors, limit),
        rps: r.parse("limit-rps", errors, limit),
        rpm: r.parse("limit-rpm", errors, limit),
        burst_multiplier: r
            .parse("limit-burst-multiplier", errors, |s| {
                parse_count(s, 1, 1000)
            })
            .unwrap_or(5),
        allowlist,
    }
}
