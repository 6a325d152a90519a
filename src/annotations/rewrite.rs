//! `rewrite-target` and `use-regex`, with ingress-nginx's semantics: either
//! one turns the paths of every host the Ingress serves into case-insensitive
//! regular expressions anchored at the start; the target replaces the whole
//! URI and may use the capture groups `$1`..`$9` of the path.

use super::{FieldError, Reader};
use crate::values::RewriteTarget;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    pub use_regex: bool,
    pub target: Option<RewriteTarget>,
}

impl Rewrite {
    /// Whether the Ingress's paths are regular expressions.
    pub fn regex(&self) -> bool {
        self.use_regex || self.target.is_some()
    }
}

pub fn parse(reader: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Rewrite {
    let use_regex = reader.bool("use-regex", errors).unwrap_or(false);
    let target = reader.parse("rewrite-target", errors, RewriteTarget::parse);
    Rewrite { use_regex, target }
}
