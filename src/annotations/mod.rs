//! Annotations, one module per family. Each parses its keys into typed
//! values or reports the field as invalid. Every key is one of the
//! registry's rows ([`registry`]); keys under the prefix that no module
//! read are reported with the registry's note, and a protection key that
//! was not read (not supported yet) rejects the Ingress.

pub mod access;
pub mod auth;
pub mod backend;
pub mod balance;
pub mod canary;
pub mod cors;
pub mod extauth;
pub mod headers;
pub mod limits;
pub mod mirror;
pub mod modsecurity;
pub mod proxy;
pub mod redirect;
pub mod registry;
pub mod rewrite;
pub mod server;
pub mod snippets;
pub mod tls;

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
    pub redirect: redirect::Redirects,
    pub proxy: proxy::Proxy,
    pub backend: backend::Backend,
    pub headers: headers::Headers,
    pub access: access::Access,
    pub auth: auth::Auth,
    pub extauth: extauth::ExtAuth,
    pub limits: limits::Limits,
    pub cors: cors::Cors,
    pub mirror: mirror::Mirroring,
    pub balance: balance::Balance,
    pub canary: canary::Canary,
    pub modsecurity: modsecurity::ModSecurity,
    pub tls: tls::Tls,
    pub server: server::ServerAnnotations,
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
    /// The keys under the prefix (the name after `PREFIX/`) with their
    /// values, in name order: looked up without building a key each time.
    under: Vec<(&'a str, &'a str)>,
    /// The whole key of each of `under`.
    keys: Vec<&'a str>,
    prefix: &'a str,
    /// Which of `under` a parser read.
    read: Vec<bool>,
    /// One bit per name of `under` ([`name_bit`]): the parsers ask for
    /// every name of the registry, and most are absent.
    names: u64,
}

/// A bit of 64 for an annotation name, from its length and three of its
/// bytes (names share long prefixes, so not the first alone).
fn name_bit(name: &str) -> u64 {
    let b = name.as_bytes();
    let (first, mid, last) = match b {
        [] => (0, 0, 0),
        _ => (b[0], b[b.len() / 2], b[b.len() - 1]),
    };
    let h = (b.len() as u64)
        ^ (u64::from(first) << 8)
        ^ (u64::from(mid) << 16)
        ^ (u64::from(last) << 24);
    1 << (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

impl<'a> Reader<'a> {
    pub fn new(annotations: Option<&'a BTreeMap<String, String>>, prefix: &'a str) -> Self {
        let mut under = Vec::new();
        let mut keys = Vec::new();
        for (key, value) in annotations.into_iter().flatten() {
            if let Some(name) = key.strip_prefix(prefix).and_then(|k| k.strip_prefix('/')) {
                under.push((name, value.as_str()));
                keys.push(key.as_str());
            }
        }
        // A BTreeMap's keys sharing a prefix are in the order of what
        // follows it.
        debug_assert!(under.windows(2).all(|w| w[0].0 < w[1].0));
        Reader {
            read: vec![false; under.len()],
            names: under.iter().fold(0, |m, (n, _)| m | name_bit(n)),
            under,
            keys,
            prefix,
        }
    }

    /// The field path of an annotation, for messages.
    pub fn field(&self, name: &str) -> String {
        format!("metadata.annotations[\"{}/{name}\"]", self.prefix)
    }

    fn position(&self, name: &str) -> Option<usize> {
        if self.names & name_bit(name) == 0 {
            return None;
        }
        self.under.binary_search_by(|(n, _)| (*n).cmp(name)).ok()
    }

    /// The raw value of `PREFIX/name`, marking the key as read. `name` must
    /// be a row of the registry.
    pub fn get(&mut self, name: &'static str) -> Option<&'a str> {
        debug_assert!(
            registry::annotation(name).is_some(),
            "{name} has no registry row"
        );
        let i = self.position(name)?;
        self.read[i] = true;
        Some(self.under[i].1)
    }

    /// The value of `name`, or of its aliases (ingress-nginx's rule: the
    /// canonical name wins when both are set and not empty), with the name
    /// it was found under.
    pub fn get_aliased(&mut self, name: &'static str) -> Option<(&'static str, &'a str)> {
        let mut found = self.get(name).filter(|v| !v.is_empty()).map(|v| (name, v));
        for a in registry::ANNOTATIONS
            .iter()
            .filter(|a| a.alias_of == Some(name))
        {
            let v = self.get(a.name);
            if found.is_none() {
                found = v.filter(|v| !v.is_empty()).map(|v| (a.name, v));
            }
        }
        found
    }

    /// Whether any of these keys is set.
    pub fn any(&self, names: &[&str]) -> bool {
        !self.under.is_empty() && names.iter().any(|n| self.position(n).is_some())
    }

    /// A boolean annotation, as ingress-nginx reads one (`true`, `false`,
    /// `1`, `0`, `True`...).
    pub fn bool(&mut self, name: &'static str, errors: &mut Vec<FieldError>) -> Option<bool> {
        self.parse(name, errors, crate::values::parse_bool)
    }

    /// A typed annotation, parsed with `parse`.
    pub fn parse<T>(
        &mut self,
        name: &'static str,
        errors: &mut Vec<FieldError>,
        parse: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<T> {
        let v = self.get(name)?;
        self.check(name, v, errors, parse)
    }

    /// [`Reader::parse`] on a value already read.
    pub fn check<T>(
        &self,
        name: &str,
        value: &str,
        errors: &mut Vec<FieldError>,
        parse: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<T> {
        match parse(value) {
            Ok(t) => Some(t),
            Err(error) => {
                errors.push(FieldError {
                    field: self.field(name),
                    value: value.to_string(),
                    error,
                });
                None
            }
        }
    }

    /// Refuses values under the prefix longer than [`MAX_VALUE_LEN`]
    /// ([`snippets::MAX_SNIPPET_LEN`] for snippets).
    pub fn check_lengths(&self, errors: &mut Vec<FieldError>) {
        for ((name, value), key) in self.under.iter().zip(&self.keys) {
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

    /// The keys under the prefix, each with its registry row (`None`: not
    /// an ingress-nginx annotation) and whether a parser read it.
    pub fn keys(&self) -> Vec<(&'a str, Option<&'static registry::Annotation>, bool)> {
        self.under
            .iter()
            .zip(&self.read)
            .map(|((name, _), read)| (*name, registry::annotation(name), *read))
            .collect()
    }

    /// Keys under the prefix that no parser read: unsupported protection
    /// keys are errors (the Ingress is rejected); the others are reported
    /// once each and ignored.
    pub fn unsupported(&self, object: &ObjectRef, errors: &mut Vec<FieldError>) -> Vec<Problem> {
        let mut out = Vec::new();
        for (name, row, read) in self.keys() {
            if read {
                continue;
            }
            let field = format!(
                "metadata.annotations[{}]",
                crate::problem::Quoted(&format!("{}/{name}", self.prefix))
            );
            match row {
                Some(r) if r.protection => errors.push(FieldError {
                    field,
                    value: String::new(),
                    error: Invalid(format!(
                        "{}: it protects the backends, so the Ingress is not served without it",
                        r.support.note()
                    )),
                }),
                Some(r) => out.push(Problem::ignored(
                    object,
                    Some(field),
                    format!("{}; ignored", r.support.note()),
                )),
                None => out.push(Problem::ignored(
                    object,
                    Some(field),
                    "not an ingress-nginx annotation; ignored",
                )),
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
        redirect: redirect::parse(reader, errors),
        proxy: proxy::parse(reader, errors),
        backend: backend::parse(reader, errors),
        headers: headers::parse(reader, errors),
        access: access::parse(reader, errors),
        auth: auth::parse(reader, errors),
        extauth: extauth::parse(reader, errors, policy.allow_snippets),
        limits: limits::parse(reader, errors),
        cors: cors::parse(reader, errors),
        mirror: mirror::parse(reader, errors),
        balance: balance::parse(reader, errors),
        canary: canary::parse(reader, errors),
        modsecurity: modsecurity::parse(reader, errors, policy.allow_snippets),
        tls: tls::parse(reader, errors),
        server: server::parse(reader, errors),
    }
}

#[cfg(test)]
mod reader_tests {
    use super::*;

    /// The bit filter never hides a name that is there: every registry
    /// name is found alone and among all the others.
    #[test]
    fn every_present_name_is_found() {
        let prefix = "nginx.ingress.kubernetes.io";
        let key = |n: &str| format!("{prefix}/{n}");
        let all: BTreeMap<String, String> = registry::ANNOTATIONS
            .iter()
            .map(|a| (key(a.name), a.name.to_string()))
            .collect();
        let mut r = Reader::new(Some(&all), prefix);
        for a in registry::ANNOTATIONS {
            assert_eq!(r.get(a.name), Some(a.name), "{}", a.name);
        }
        for a in registry::ANNOTATIONS {
            let one = BTreeMap::from([(key(a.name), "v".to_string())]);
            let mut r = Reader::new(Some(&one), prefix);
            assert_eq!(r.get(a.name), Some("v"), "{}", a.name);
            // And the others are absent.
            for b in registry::ANNOTATIONS.iter().filter(|b| b.name != a.name) {
                assert_eq!(r.get(b.name), None, "{} with {}", b.name, a.name);
            }
        }
    }
}
