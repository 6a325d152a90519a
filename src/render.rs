//! `render`: the Config model to nginx.conf text through Tera templates.
//!
//! Autoescaping is on for every template, with [`escape`] as the escaping
//! function: whatever a template prints with `{{ ... }}` becomes exactly one
//! nginx token. The filters that would mark a value as safe (`safe`,
//! `escape_html`, `escape_xml`) are replaced by ones that do not, so not even a
//! template from `--templates DIR` can print a value unescaped.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use tera::{Context, Kwargs, State, Tera, Value};

use crate::config::Config;

/// The templates compiled into the binary.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("nginx.conf", include_str!("../templates/nginx.conf")),
    ("server.conf", include_str!("../templates/server.conf")),
    ("location.conf", include_str!("../templates/location.conf")),
];

/// The template rendered first; it includes the others.
pub const ROOT_TEMPLATE: &str = "nginx.conf";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: tera::Error,
    },
    #[error("reading templates from {dir}: {source}")]
    Read {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rendering nginx.conf: {0}")]
    Render(#[source] tera::Error),
}

impl RenderError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RenderError::Template { .. } => "template",
            RenderError::Read { .. } => "read",
            RenderError::Render(_) => "render",
        }
    }
}

/// Facts about the running instance that are not part of the model.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RenderEnv {
    /// Counts the configs applied; served on the status socket so the
    /// applier can tell when the new workers answer.
    pub generation: u64,
    /// The unprivileged user and group nginx workers run as, when wicket runs
    /// as root.
    pub user: Option<(String, String)>,
    /// Also listen on all IPv6 addresses (when the machine has IPv6).
    pub ipv6: bool,
}

/// Whether this machine can listen on IPv6.
pub fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::]:0").is_ok()
}

/// Characters that never need quotes in an nginx token.
fn is_bare(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'.' | b'_' | b'/' | b':' | b'-' | b'=' | b'~' | b'*' | b'[' | b']'
        )
}

/// The one escaping function: makes any string exactly one nginx token.
///
/// Plain words are written as they are; anything else is put in double
/// quotes with `"` and `\` escaped. Control characters, which nginx would turn
/// back into real ones from `\n`, `\r` and `\t`, are written as `\xHH`, which
/// nginx reads as four literal characters. So no value can end a token, a
/// directive or a block, start a comment, or span lines.
///
/// `$` is not escaped: nginx has no escape for it. Values that reach a
/// position where nginx expands variables are typed so they cannot hold it
/// (see [`crate::values`]).
pub fn escape(input: &str, out: &mut dyn Write) -> std::io::Result<()> {
    if !input.is_empty() && input.bytes().all(is_bare) {
        return out.write_all(input.as_bytes());
    }
    out.write_all(b"\"")?;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        let rep: Option<String> = match c {
            '"' => Some("\\\"".into()),
            '\\' => Some("\\\\".into()),
            c if c.is_control() => Some(
                c.to_string()
                    .bytes()
                    .map(|b| format!("\\x{b:02x}"))
                    .collect(),
            ),
            _ => None,
        };
        if let Some(rep) = rep {
            out.write_all(&input.as_bytes()[start..i])?;
            out.write_all(rep.as_bytes())?;
            start = i + c.len_utf8();
        }
    }
    out.write_all(&input.as_bytes()[start..])?;
    out.write_all(b"\"")
}

/// The line a template writes where a snippet goes: `# wicket-snippet N`.
/// No value from an object can start a line (escaping never writes a
/// newline), so only templates write it.
const SNIPPET_MARK: &str = "# wicket-snippet ";

/// Puts each snippet, raw, where the templates marked it, indented like the
/// mark.
fn splice_snippets(text: String, snippets: &[String]) -> String {
    if snippets.is_empty() {
        return text;
    }
    let mut out =
        String::with_capacity(text.len() + snippets.iter().map(String::len).sum::<usize>());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let index = trimmed
            .strip_prefix(SNIPPET_MARK)
            .and_then(|n| n.trim_end().parse::<usize>().ok());
        match index.and_then(|i| snippets.get(i)) {
            Some(snippet) => {
                let indent = &line[..line.len() - trimmed.len()];
                out.push_str(indent);
                out.push_str("# snippet (allow-snippet-annotations)\n");
                for l in snippet.lines() {
                    out.push_str(indent);
                    out.push_str(l);
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

/// [`escape`] into a String.
pub fn escape_string(input: &str) -> String {
    let mut out = Vec::with_capacity(input.len() + 2);
    escape(input, &mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("escape keeps UTF-8")
}

fn not_safe(v: Value, _: Kwargs, _: &State) -> Value {
    v
}

/// Compiled templates.
pub struct Renderer {
    tera: Tera,
}

impl Renderer {
    /// The templates compiled into the binary.
    pub fn embedded() -> Result<Self, RenderError> {
        Self::from_sources(EMBEDDED.iter().map(|(n, c)| (n.to_string(), c.to_string())))
    }

    /// The embedded templates, each overridden by a file of the same name in
    /// `dir` where there is one.
    pub fn from_dir(dir: &Path) -> Result<Self, RenderError> {
        let mut sources = Vec::new();
        for (name, content) in EMBEDDED {
            let path = dir.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => content.to_string(),
                Err(source) => {
                    return Err(RenderError::Read {
                        dir: dir.display().to_string(),
                        source,
                    });
                }
            };
            sources.push((name.to_string(), text));
        }
        Self::from_sources(sources)
    }

    fn from_sources(
        sources: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, RenderError> {
        let mut tera = Tera::new();
        tera.set_escape_fn(escape);
        for f in ["safe", "escape_html", "escape_xml"] {
            tera.register_filter(f, not_safe);
        }
        // An included template's final newline would leave a blank line at
        // every include; drop it.
        let sources: Vec<(String, String)> = sources
            .into_iter()
            .map(|(n, c)| {
                let c = if n == ROOT_TEMPLATE {
                    c
                } else {
                    c.trim_end_matches('\n').to_string()
                };
                (n, c)
            })
            .collect();
        tera.add_raw_templates(sources.iter().map(|(n, c)| (n.as_str(), c.as_str())))
            .map_err(|source| RenderError::Template {
                name: sources
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            })?;
        // Every template is a config file: escape in all of them.
        tera.autoescape_on(vec![""]);
        Ok(Renderer { tera })
    }

    /// Renders nginx.conf.
    pub fn render(&self, config: &Config, env: &RenderEnv) -> Result<String, RenderError> {
        let mut ctx = Context::new();
        ctx.insert("config", config);
        ctx.insert("env", env);
        let text = self
            .tera
            .render(ROOT_TEMPLATE, &ctx)
            .map_err(RenderError::Render)?;
        Ok(splice_snippets(text, &config.snippets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_bare() {
        assert_eq!(escape_string("example.com"), "example.com");
        assert_eq!(escape_string("certs/ab12.crt"), "certs/ab12.crt");
        assert_eq!(escape_string("8080"), "8080");
        assert_eq!(escape_string("~*"), "~*");
    }

    #[test]
    fn everything_else_is_one_quoted_token() {
        assert_eq!(escape_string(""), "\"\"");
        assert_eq!(escape_string("a b"), "\"a b\"");
        assert_eq!(escape_string("a\"b"), "\"a\\\"b\"");
        assert_eq!(escape_string("a\\b"), "\"a\\\\b\"");
        assert_eq!(escape_string("a;b}"), "\"a;b}\"");
        assert_eq!(escape_string("#x"), "\"#x\"");
        assert_eq!(escape_string("a\nb"), "\"a\\x0ab\"");
        assert_eq!(escape_string("a\rb"), "\"a\\x0db\"");
        assert_eq!(escape_string("a\0b"), "\"a\\x00b\"");
        assert_eq!(escape_string("a\u{85}b"), "\"a\\xc2\\x85b\"");
        assert_eq!(escape_string("^/a(/|$)"), "\"^/a(/|$)\"");
        assert_eq!(escape_string("é"), "\"é\"");
    }

    #[test]
    fn templates_never_mark_values_safe() {
        for (name, text) in EMBEDDED {
            for banned in ["safe", "autoescape", "escape_html", "escape_xml", "raw"] {
                assert!(!text.contains(banned), "template {name} uses {banned}");
            }
        }
    }

    #[test]
    fn safe_filter_cannot_bypass_escaping() {
        let r = Renderer::from_sources([(
            "nginx.conf".to_string(),
            "x {{ config | safe }};".to_string(),
        )])
        .unwrap();
        let mut ctx = Context::new();
        ctx.insert("config", "a; b");
        ctx.insert("env", &RenderEnv::default());
        let out = r.tera.render("nginx.conf", &ctx).unwrap();
        assert_eq!(out, "x \"a; b\";");
    }
}
