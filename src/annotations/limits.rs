//! Bandwidth limits per connection: `limit-rate` (KB/s sent to a client;
//! 0 leaves the rate unlimited) and `limit-rate-after` (KB sent before the
//! limit applies), as nginx's `limit_rate` and `limit_rate_after`.

use super::{FieldError, Reader};
use crate::values::nginx::parse_count;

/// Largest value accepted, in KB (or KB/s): 10 GB.
pub const MAX_KB: u32 = 10_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub rate: Option<u32>,
    pub rate_after: Option<u32>,
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Limits {
    Limits {
        rate: r.parse("limit-rate", errors, |s| parse_count(s, 0, MAX_KB)),
        rate_after: r.parse("limit-rate-after", errors, |s| parse_count(s, 0, MAX_KB)),
    }
}
