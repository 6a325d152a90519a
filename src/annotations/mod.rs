//! Annotations, one module per family. Each parses its keys into typed values
//! or reports the field as invalid; keys under the prefix that no module
//! knows are reported as not supported and otherwise ignored.

pub mod rewrite;
pub mod snippets;

use std::collections::BTreeMap;

use crate::cluster::ObjectRef;
use crate::problem::Problem;
use crate::values::Invalid;

/// Longest annotation value accepted under the prefix (snippets excepted).
pub const MAX_VALUE_LEN: usize = 4096;

/// The annotations wicket acts on, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Annotations {
    pub rewrite: rewrite::Rewrite,
    pub snippets: snippets::Snippets,
}

/// Global settings that decide how annotations are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `allow-snippet-annotations`.
    pub allow_snippets: bool,
}

/// One invalid field: the field path and why.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    /// The offending value, printed quoted in the message.
    pub value: String,
    pub error: Invalid,
}

/// Reads the annotations of one object, under `prefix`
/// (`nginx.ingress.kubernetes.io` by default).
pub struct Reader<'a> {
    annotations: Option<&'a BTreeMap<String, String>>,
    prefix: &'a str,
    used: Vec<&'a str>,
}

impl<'a> Reader<'a> {
    pub fn new(annotations: Option<&'a BTreeMap<String, String>>, prefix: &'a str) -> Self {
        Reader {
            annotations,
            prefix,
            used: Vec::new(),
        }
    }

    /// The field path of an annotation, for messages.
    pub fn field(&self, name: &str) -> String {
        format!("metadata.annotations[\"{}/{name}\"]", self.prefix)
    }

    /// The raw value of `PREFIX/name`, marking the key as known.
    pub fn get(&mut self, name: &'static str) -> Option<&'a str> {
        self.used.push(name);
        let key = format!("{}/{name}", self.prefix);
        self.annotations?.get(&key).map(String::as_str)
    }

    /// A boolean annotation: exactly `true` or `false`.
    pub fn bool(&mut self, name: &'static str, errors: &mut Vec<FieldError>) -> Option<bool> {
        let v = self.get(name)?;
        match v {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                errors.push(FieldError {
                    field: self.field(name),
                    value: v.to_string(),
                    error: Invalid("must be \"true\" or \"false\"".into()),
                });
                None
            }
        }
    }

    /// A typed annotation, parsed with `parse`.
    pub fn parse<T>(
        &mut self,
        name: &'static str,
        errors: &mut Vec<FieldError>,
        parse: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<T> {
        let v = self.get(name)?;
        match parse(v) {
            Ok(t) => Some(t),
            Err(error) => {
                errors.push(FieldError {
                    field: self.field(name),
                    value: v.to_string(),
                    error,
                });
                None
            }
        }
    }

    /// Refuses values under the prefix longer than [`MAX_VALUE_LEN`]
    /// ([`snippets::MAX_SNIPPET_LEN`] for snippets).
    pub fn check_lengths(&self, errors: &mut Vec<FieldError>) {
        for (key, value) in self.annotations.into_iter().flatten() {
            let Some(name) = key
                .strip_prefix(self.prefix)
                .and_then(|k| k.strip_prefix('/'))
            else {
                continue;
            };
            let max = if name.ends_with("-snippet") {
                snippets::MAX_SNIPPET_LEN
            } else {
                MAX_VALUE_LEN
            };
            if value.len() > max {
                errors.push(FieldError {
                    field: format!("metadata.annotations[{}]", crate::problem::Quoted(key)),
                    value: String::new(),
                    error: Invalid(format!(
                        "the value is {} bytes; at most {max} are accepted",
                        value.len()
                    )),
                });
            }
        }
    }

    /// Keys under the prefix that no module read: reported once each.
    pub fn unsupported(&self, object: &ObjectRef) -> Vec<Problem> {
        let Some(all) = self.annotations else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for key in all.keys() {
            let Some(name) = key
                .strip_prefix(self.prefix)
                .and_then(|k| k.strip_prefix('/'))
            else {
                continue;
            };
            if !self.used.contains(&name) {
                out.push(Problem::ignored(
                    object,
                    Some(format!(
                        "metadata.annotations[{}]",
                        crate::problem::Quoted(key)
                    )),
                    "annotation not supported by wicket yet; ignored",
                ));
            }
        }
        out
    }
}

/// Parses every annotation wicket supports on an Ingress.
pub fn parse_ingress(
    reader: &mut Reader<'_>,
    errors: &mut Vec<FieldError>,
    policy: Policy,
) -> Annotations {
    reader.check_lengths(errors);
    Annotations {
        rewrite: rewrite::parse(reader, errors),
        snippets: snippets::parse(reader, errors, policy.allow_snippets),
    }
}
