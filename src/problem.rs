//! What `build` reports about objects it could not (fully) serve.
//!
//! Every problem names the object and, where there is one, the field, so a
//! person can act on it. Values taken from objects are printed through
//! [`Printable`], which never lets control characters or unbounded lengths
//! reach a log line.

use std::fmt;

use crate::cluster::ObjectRef;

/// How much of the object is affected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is not served at all.
    Rejected,
    /// The object is served, but part of it is not (a conflicting path, a
    /// backend without endpoints, a certificate that cannot be used).
    Warning,
    /// Input that wicket does not act on (an annotation it does not support
    /// yet, an object of another class). Reported once, otherwise ignored.
    Ignored,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Rejected => "rejected",
            Severity::Warning => "warning",
            Severity::Ignored => "ignored",
        }
    }
}

/// One problem with one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    pub severity: Severity,
    pub object: ObjectRef,
    /// The field path inside the object, such as `spec.rules[0].host`.
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn rejected(object: &ObjectRef, field: Option<String>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Rejected,
            object: object.clone(),
            field,
            message: message.into(),
        }
    }
    pub fn warning(object: &ObjectRef, field: Option<String>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            object: object.clone(),
            field,
            message: message.into(),
        }
    }
    pub fn ignored(object: &ObjectRef, field: Option<String>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Ignored,
            object: object.clone(),
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.severity.as_str(), self.object)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Longest value printed in full in a message; longer ones are cut.
const MAX_PRINTED: usize = 120;

/// Displays a string taken from an object safely for a log line: plain names
/// as they are, anything else quoted with Rust escapes and cut to a bounded
/// length.
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let plain = !s.is_empty()
            && s.len() <= MAX_PRINTED
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'));
        if plain {
            return f.write_str(s);
        }
        Quoted(s).fmt(f)
    }
}

/// Displays a string taken from an object always quoted, with Rust escapes,
/// cut to a bounded length.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let cut = s
            .char_indices()
            .nth(MAX_PRINTED)
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        f.write_str("\"")?;
        for c in s[..cut].chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() || is_invisible(c) => write!(f, "{}", c.escape_unicode())?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")?;
        if cut < s.len() {
            write!(f, "... ({} bytes)", s.len())?;
        }
        Ok(())
    }
}

/// Characters that render as nothing or move text around, shown escaped so a
/// log line cannot be made to lie.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_keeps_plain_names_and_escapes_the_rest() {
        assert_eq!(Printable("shop-1").to_string(), "shop-1");
        assert_eq!(Printable("a\nb").to_string(), "\"a\\u{a}b\"");
        assert_eq!(Printable("\"x\"").to_string(), "\"\\\"x\\\"\"");
        assert_eq!(Printable("").to_string(), "\"\"");
        assert_eq!(Printable("a\u{202E}b").to_string(), "\"a\\u{202e}b\"");
        let long = "x".repeat(500);
        let printed = Printable(&long).to_string();
        assert!(printed.len() < 200, "{printed}");
        assert!(printed.ends_with("... (500 bytes)"));
    }
}
