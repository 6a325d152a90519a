//! Basic authentication and `satisfy`: `auth-type: basic`, `auth-secret` (the Secret with
//! the users), `auth-secret-type` (`auth-file`: key `auth` holds htpasswd
//! lines; `auth-map`: one key per user, the value its hash), `auth-realm`.
//! Protection keys: a value that does not parse rejects the Ingress; the
//! Secret is looked up in build, and one that is missing or unusable makes
//! the locations answer 503.

use super::backend::ObjectName;
use super::{FieldError, Reader};
use crate::values::Invalid;

/// `auth-type`: `basic` only (`digest` needs a module Debian's nginx does
/// not have, and is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthType {
    Basic,
}

/// `auth-secret-type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SecretType {
    /// Key `auth`: htpasswd lines.
    #[default]
    AuthFile,
    /// One key per user, the value its password hash.
    AuthMap,
}

/// A realm: printable ASCII without `"` or `\`, which would end or escape
/// the quoted string of `WWW-Authenticate: Basic realm="..."`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Realm(String);

/// Longest realm accepted.
pub const MAX_REALM: usize = 256;

impl Realm {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() > MAX_REALM {
            return Err(Invalid(format!(
                "a realm is at most {MAX_REALM} characters"
            )));
        }
        if !s
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(Invalid(
                "a realm is printable ASCII without '\"' or '\\'".into(),
            ));
        }
        Ok(Realm(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Auth {
    pub kind: Option<AuthType>,
    pub secret: Option<ObjectName>,
    pub secret_type: SecretType,
    pub realm: Option<Realm>,
    /// Any of the keys above is set, parsed or not: the Ingress asks for
    /// basic authentication.
    pub asked: bool,
    /// `satisfy: any`: the source lists or the authentication let a
    /// request through (`all`, the default: both must).
    pub satisfy_any: bool,
}

fn auth_type(s: &str) -> Result<AuthType, Invalid> {
    match s {
        "basic" => Ok(AuthType::Basic),
        "digest" => Err(Invalid(
            "digest authentication needs an nginx module Debian does not have; use basic".into(),
        )),
        _ => Err(Invalid("expected basic".into())),
    }
}

fn secret_type(s: &str) -> Result<SecretType, Invalid> {
    match s {
        "auth-file" => Ok(SecretType::AuthFile),
        "auth-map" => Ok(SecretType::AuthMap),
        _ => Err(Invalid("expected auth-file or auth-map".into())),
    }
}

pub fn parse(r: &mut Reader<'_>, errors: &mut Vec<FieldError>) -> Auth {
    let mut asked = false;
    let mut seen = |v: Option<&str>| {
        asked |= v.is_some();
    };
    let kind = r.get("auth-type");
    seen(kind);
    let kind = kind.and_then(|v| r.check("auth-type", v, errors, auth_type));
    let secret = r.get("auth-secret");
    seen(secret);
    let secret = secret.and_then(|v| r.check("auth-secret", v, errors, ObjectName::parse));
    let st = r.get("auth-secret-type");
    seen(st);
    let secret_type = st
        .and_then(|v| r.check("auth-secret-type", v, errors, secret_type))
        .unwrap_or_default();
    let realm = r.get("auth-realm");
    seen(realm);
    let realm = realm.and_then(|v| r.check("auth-realm", v, errors, Realm::parse));
    let satisfy_any = r
        .parse("satisfy", errors, |s| match s {
            "any" => Ok(true),
            "all" => Ok(false),
            _ => Err(Invalid("expected any or all".into())),
        })
        .unwrap_or(false);
    Auth {
        kind,
        secret,
        secret_type,
        realm,
        asked,
        satisfy_any,
    }
}

/// One htpasswd line: `USER:HASH`, the user without `:` or white space,
/// the hash one of the forms nginx's `auth_basic_user_file` reads (crypt(3)
/// `$id$...`, `{SHA}`, `{SSHA}`, `{PLAIN}`, or traditional DES crypt),
/// printable ASCII without white space.
pub fn htpasswd_line(user: &str, hash: &str) -> Result<String, Invalid> {
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if user.is_empty() || user.len() > 256 || !printable(user) || user.contains(':') {
        return Err(Invalid(
            "a user name is 1-256 printable characters without ':' or white space".into(),
        ));
    }
    if hash.is_empty() || hash.len() > 512 || !printable(hash) {
        return Err(Invalid(format!(
            "the password hash of user {user} is not 1-512 printable characters without white space"
        )));
    }
    let known = hash.starts_with('$')
        || hash.starts_with("{SHA}")
        || hash.starts_with("{SSHA}")
        || hash.starts_with("{PLAIN}")
        || (hash.len() == 13
            && hash
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/'));
    if !known {
        return Err(Invalid(format!(
            "the password of user {user} is not a hash nginx reads (crypt $id$, {{SHA}}, {{SSHA}}, {{PLAIN}} or DES crypt)"
        )));
    }
    Ok(format!("{user}:{hash}\n"))
}

/// The htpasswd file of an `auth-file` Secret's `auth` value: every
/// non-empty line checked; at least one user.
pub fn htpasswd_file(text: &str) -> Result<String, Invalid> {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(Invalid(format!("line {}: expected USER:HASH", i + 1)));
        };
        out.push_str(
            &htpasswd_line(user, hash).map_err(|e| Invalid(format!("line {}: {}", i + 1, e.0)))?,
        );
    }
    if out.is_empty() {
        return Err(Invalid("no user".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realms_and_lines_parse_strictly() {
        assert!(Realm::parse("Authentication Required - foo").is_ok());
        for bad in ["a\"b", "a\\b", "a\nb", "é"] {
            assert!(Realm::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            htpasswd_file("foo:$apr1$abc$def\n\nbar:{SHA}x=\r\n").unwrap(),
            "foo:$apr1$abc$def\nbar:{SHA}x=\n"
        );
        for bad in [
            "",
            "\n\n",
            "nocolon",
            "a b:$1$x",
            "user:plain password",
            "user:secret",
            "user:$1$x\nother",
            "us\u{0}er:$1$x",
        ] {
            assert!(htpasswd_file(bad).is_err(), "{bad:?}");
        }
        assert!(htpasswd_line("u", "abcdefghijk.m").is_ok());
        assert!(htpasswd_line("u:v", "$1$x").is_err());
    }
}
