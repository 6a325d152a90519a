//! `server-snippet`, `configuration-snippet`, `stream-snippet` and
//! `auth-snippet` (`modsecurity-snippet` is in [`super::modsecurity`]): raw nginx configuration from the Ingress. Refused (the
//! Ingress is rejected) unless the global setting
//! `allow-snippet-annotations` is `"true"`; turning it on gives Ingress
//! authors the controller's power. Even then a snippet must be whole
//! directives with balanced blocks, so it cannot close the block it is put
//! in.

use super::{FieldError, Reader};
use crate::conf_syntax;
use crate::values::Invalid;

/// Longest snippet accepted.
pub const MAX_SNIPPET_LEN: usize = 16 * 1024;

/// Raw nginx configuration, checked to be complete directives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Snippet(String);

impl Snippet {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() > MAX_SNIPPET_LEN {
            return Err(Invalid(format!(
                "a snippet must be at most {MAX_SNIPPET_LEN} bytes"
            )));
        }
        if s.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        {
            return Err(Invalid(
                "a snippet may not contain control characters".into(),
            ));
        }
        let shapes = conf_syntax::structure(s)
            .map_err(|e| Invalid(format!("not whole nginx directives: {e}")))?;
        // The Lua module is loaded for wicket's balancer: Lua in a snippet
        // would run code in nginx, and could rewrite its endpoints.
        if let Some(name) = shapes.iter().find_map(|sh| match sh {
            conf_syntax::Shape::Directive { name, .. } if name.contains("lua") => Some(name),
            _ => None,
        }) {
            return Err(Invalid(format!(
                "Lua directives ({name}) are refused in snippets: the Lua module is loaded for wicket's balancer only"
            )));
        }
        Ok(Snippet(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snippets {
    pub server: Option<Snippet>,
    pub configuration: Option<Snippet>,
}

/// Snippet annotations wicket does not put anywhere yet: refused unless
/// snippets are allowed, and then reported with their registry note (the
/// auth snippet, a protection key, then rejects the Ingress).
const OTHERS: &[&str] = &["stream-snippet", "auth-snippet"];

pub fn parse(reader: &mut Reader<'_>, errors: &mut Vec<FieldError>, allowed: bool) -> Snippets {
    let mut out = Snippets::default();
    let refused = || {
        Invalid(
            "snippet annotations are refused: the global setting allow-snippet-annotations is not \"true\"".into(),
        )
    };
    for name in ["server-snippet", "configuration-snippet"] {
        let Some(value) = reader.get(name) else {
            continue;
        };
        if !allowed {
            errors.push(FieldError {
                field: reader.field(name),
                value: String::new(),
                error: refused(),
            });
            continue;
        }
        match Snippet::parse(value) {
            Ok(s) if name == "server-snippet" => out.server = Some(s),
            Ok(s) => out.configuration = Some(s),
            Err(error) => errors.push(FieldError {
                field: reader.field(name),
                value: String::new(),
                error,
            }),
        }
    }
    if !allowed {
        for name in OTHERS {
            if reader.any(&[name]) {
                errors.push(FieldError {
                    field: reader.field(name),
                    value: String::new(),
                    error: refused(),
                });
                // Read: the refusal says all there is to say.
                let _ = reader.get(name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_is_refused_in_snippets() {
        for s in [
            "content_by_lua_block { os.execute(\"id\"); }",
            "location /x { access_by_lua 'ngx.exit(200)'; }",
            "lua_shared_dict x 1m;",
        ] {
            let e = Snippet::parse(s).unwrap_err();
            assert!(e.0.contains("Lua directives"), "{s}: {e:?}");
        }
        assert!(Snippet::parse("add_header X-Lua yes;").is_ok());
    }

    #[test]
    fn snippets_must_be_whole_directives() {
        assert!(Snippet::parse("add_header X-A b;\nadd_header X-B \"c d\";").is_ok());
        assert!(Snippet::parse("if ($x) { return 403; }").is_ok());
        for bad in [
            "}",
            "} server { listen 1;",
            "a \"b;",
            "add_header X",
            "a;\0",
        ] {
            assert!(Snippet::parse(bad).is_err(), "{bad:?}");
        }
    }
}
