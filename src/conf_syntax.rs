//! nginx's config tokenizer, as `ngx_conf_read_token` reads a file: words,
//! quoted strings, `;`, `{`, `}`, `#` comments. Used to check the structure
//! of snippets before they are allowed in, and by the tests to prove that no
//! value from an object changes the structure of a rendered config.

use std::fmt;

/// One token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// A word or quoted string, with nginx's escapes applied.
    Value {
        text: String,
        quoted: bool,
        line: usize,
    },
    /// `;`: the end of a directive.
    End { line: usize },
    /// `{`: the start of a block.
    Open { line: usize },
    /// `}`: the end of a block.
    Close { line: usize },
}

/// Why a text is not valid nginx config syntax.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError {
        line,
        message: message.into(),
    })
}

/// Applies the escapes nginx applies to every token: `\"`, `\'`, `\\` lose
/// their backslash; `\t`, `\r`, `\n` become the control characters; any
/// other backslash stays.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('"' | '\'' | '\\') => out.push(chars.next().expect("peeked")),
            Some('t') => {
                chars.next();
                out.push('\t');
            }
            Some('r') => {
                chars.next();
                out.push('\r');
            }
            Some('n') => {
                chars.next();
                out.push('\n');
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// Whether a `{` after these tokens opens the block of a
/// `*_by_lua_block` directive (its name is the only word before it).
fn opens_lua_block(tokens: &[Token]) -> bool {
    let n = tokens.len();
    let Some(Token::Value {
        text,
        quoted: false,
        ..
    }) = tokens.last()
    else {
        return false;
    };
    text.ends_with("_by_lua_block") && (n == 1 || !matches!(tokens[n - 2], Token::Value { .. }))
}

/// Where the `}` that closes a Lua block starting at `start` is, and the
/// newlines before it: braces count outside Lua's strings and comments.
fn lua_block_end(text: &str, start: usize) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    // The end of a long bracket `[==[ ... ]==]` whose `[` is at `at`, or
    // `None` if none starts there.
    let long = |at: usize| -> Option<Option<usize>> {
        let mut k = at + 1;
        while b.get(k) == Some(&b'=') {
            k += 1;
        }
        if b.get(k) != Some(&b'[') {
            return None;
        }
        let level = k - at - 1;
        let close = format!("]{}]", "=".repeat(level));
        Some(text[k + 1..].find(&close).map(|e| k + 1 + e + close.len()))
    };
    let (mut i, mut depth, mut lines) = (start, 1usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'\n' => {
                lines += 1;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                if b.get(i + 2) == Some(&b'[')
                    && let Some(end) = long(i + 2)
                {
                    let end = end?;
                    lines += text[i..end].matches('\n').count();
                    i = end;
                } else {
                    i = text[i..].find('\n').map_or(b.len(), |e| i + e);
                }
            }
            b'[' if long(i).is_some() => {
                let end = long(i).flatten()?;
                lines += text[i..end].matches('\n').count();
                i = end;
            }
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if b.get(i) == Some(&b'\n') {
                        lines += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'{' => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((i, lines));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Splits a config into tokens the way nginx does.
pub fn tokenize(text: &str) -> Result<Vec<Token>, SyntaxError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            ' ' | '\t' | '\r' => {
                chars.next();
            }
            '#' => {
                while let Some(&(_, c)) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            ';' => {
                out.push(Token::End { line });
                chars.next();
            }
            '{' if opens_lua_block(&out) => {
                // The Lua module reads its block as Lua, not as nginx
                // tokens: one argument, as if quoted.
                let start_line = line;
                let Some((end, lines)) = lua_block_end(text, i + 1) else {
                    return err(start_line, "unexpected end of file in a Lua block");
                };
                out.push(Token::Value {
                    text: text[i + 1..end].to_string(),
                    quoted: true,
                    line: start_line,
                });
                out.push(Token::End {
                    line: start_line + lines,
                });
                line += lines;
                while chars.next_if(|&(j, _)| j <= end).is_some() {}
            }
            '{' => {
                out.push(Token::Open { line });
                chars.next();
            }
            '}' => {
                out.push(Token::Close { line });
                chars.next();
            }
            '"' | '\'' => {
                let quote = c;
                chars.next();
                let start = i + 1;
                let start_line = line;
                let mut escaped = false;
                let end = loop {
                    let Some((j, d)) = chars.next() else {
                        return err(
                            start_line,
                            "unexpected end of file, expecting a closing quote",
                        );
                    };
                    if d == '\n' {
                        line += 1;
                    }
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == quote {
                        break j;
                    }
                };
                out.push(Token::Value {
                    text: unescape(&text[start..end]),
                    quoted: true,
                    line: start_line,
                });
                // After a closing quote nginx wants a separator.
                match chars.peek() {
                    None | Some((_, ' ' | '\t' | '\r' | '\n' | ';' | '{' | ')')) => {}
                    Some((_, d)) => {
                        return err(line, format!("unexpected {d:?} after a quoted string"));
                    }
                }
            }
            _ => {
                let start = i;
                let mut end = text.len();
                let mut escaped = false;
                let mut dollar = false;
                while let Some(&(j, d)) = chars.peek() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == '{' && dollar {
                        // `${name}`: part of the word.
                    } else if matches!(d, ' ' | '\t' | '\r' | '\n' | ';' | '{') {
                        end = j;
                        break;
                    }
                    dollar = d == '$' && !escaped;
                    chars.next();
                }
                out.push(Token::Value {
                    text: unescape(&text[start..end]),
                    quoted: false,
                    line,
                });
            }
        }
    }
    Ok(out)
}

/// The structure of a config: its directives and blocks, without the
/// arguments' values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A directive: nesting depth, name, number of arguments.
    Directive {
        depth: usize,
        name: String,
        args: usize,
    },
    /// A block opens after the directive before it.
    Open,
    Close,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Directive { depth, name, args } => {
                write!(f, "{:width$}{name}/{args}", "", width = depth * 2)
            }
            Shape::Open => f.write_str("{"),
            Shape::Close => f.write_str("}"),
        }
    }
}

/// Groups tokens into directives and blocks; fails on an unbalanced block,
/// a directive without its `;`, or a `;` or block without a directive.
pub fn shape(tokens: &[Token]) -> Result<Vec<Shape>, SyntaxError> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut words: Vec<&Token> = Vec::new();
    let mut last_line = 1;
    let take = |words: &mut Vec<&Token>, depth: usize, line: usize| -> Result<Shape, SyntaxError> {
        let Some(Token::Value { text, .. }) = words.first() else {
            return err(line, "a directive without a name");
        };
        let s = Shape::Directive {
            depth,
            name: text.clone(),
            args: words.len() - 1,
        };
        words.clear();
        Ok(s)
    };
    for t in tokens {
        match t {
            Token::Value { line, .. } => {
                last_line = *line;
                words.push(t);
            }
            Token::End { line } => {
                last_line = *line;
                out.push(take(&mut words, depth, *line)?);
            }
            Token::Open { line } => {
                last_line = *line;
                out.push(take(&mut words, depth, *line)?);
                out.push(Shape::Open);
                depth += 1;
            }
            Token::Close { line } => {
                last_line = *line;
                if !words.is_empty() {
                    return err(*line, "a directive without its ';' before '}'");
                }
                if depth == 0 {
                    return err(*line, "unexpected '}'");
                }
                depth -= 1;
                out.push(Shape::Close);
            }
        }
    }
    if !words.is_empty() {
        return err(last_line, "a directive without its ';' at the end");
    }
    if depth != 0 {
        return err(last_line, "a block is not closed");
    }
    Ok(out)
}

/// The structure of a config text.
pub fn structure(text: &str) -> Result<Vec<Shape>, SyntaxError> {
    shape(&tokenize(text)?)
}

/// A directive and, if it has one, its block: the structure as a tree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Node {
    pub name: String,
    pub args: usize,
    pub block: Option<Vec<Node>>,
}

/// The structure as a tree whose siblings are sorted, so two configs that
/// differ only in the order of their servers, upstreams or locations
/// compare equal.
pub fn canonical(text: &str) -> Result<Vec<Node>, SyntaxError> {
    fn build(shapes: &mut std::iter::Peekable<std::slice::Iter<'_, Shape>>) -> Vec<Node> {
        let mut out = Vec::new();
        while let Some(s) = shapes.next() {
            match s {
                Shape::Directive { name, args, .. } => {
                    let block = if matches!(shapes.peek(), Some(Shape::Open)) {
                        shapes.next();
                        Some(build(shapes))
                    } else {
                        None
                    };
                    out.push(Node {
                        name: name.clone(),
                        args: *args,
                        block,
                    });
                }
                Shape::Close => break,
                Shape::Open => {}
            }
        }
        out.sort();
        out
    }
    let shapes = structure(text)?;
    Ok(build(&mut shapes.iter().peekable()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|t| match t {
                Token::Value { text, quoted, .. } => {
                    if quoted {
                        format!("'{text}'")
                    } else {
                        text
                    }
                }
                Token::End { .. } => ";".into(),
                Token::Open { .. } => "{".into(),
                Token::Close { .. } => "}".into(),
            })
            .collect()
    }

    #[test]
    fn tokenizes_as_nginx_does() {
        assert_eq!(words("a b;"), ["a", "b", ";"]);
        assert_eq!(words("a \"b c\";"), ["a", "'b c'", ";"]);
        assert_eq!(words("a \"b\\\"c\\\\\";"), ["a", "'b\"c\\'", ";"]);
        assert_eq!(words("a \"x\\n\";"), ["a", "'x\n'", ";"]);
        assert_eq!(words("a \"x\\d\";"), ["a", "'x\\d'", ";"]);
        assert_eq!(
            words("server { listen 80; }"),
            ["server", "{", "listen", "80", ";", "}"]
        );
        assert_eq!(words("a b}c;"), ["a", "b}c", ";"]);
        assert_eq!(words("a ${x}y;"), ["a", "${x}y", ";"]);
        assert_eq!(words("a b{"), ["a", "b", "{"]);
        assert_eq!(words("a #c;\nb;"), ["a", "b", ";"]);
        assert_eq!(words("a b#c;"), ["a", "b#c", ";"]);
        assert_eq!(words("a 'x\"y';"), ["a", "'x\"y'", ";"]);
    }

    #[test]
    fn lua_blocks_are_one_argument() {
        let text = "http {\n    init_by_lua_block {\n        local t = { a = \"}\" } -- }\n        --[[ { ]] x = [==[ } ]==]\n    }\n    upstream u { balancer_by_lua_block { f(\"u\", 1) } keepalive 2; }\n}\n";
        let shapes: Vec<String> = structure(text)
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shapes,
            [
                "http/0",
                "{",
                "  init_by_lua_block/1",
                "  upstream/1",
                "{",
                "    balancer_by_lua_block/1",
                "    keepalive/1",
                "}",
                "}"
            ]
        );
        assert!(structure("init_by_lua_block { x = '}' ").is_err());
        // Only as a directive's name: `{` after other words opens a block.
        assert!(structure("location x_by_lua_block { return 200; }").is_ok());
    }

    #[test]
    fn refuses_broken_syntax() {
        assert!(tokenize("a \"b;").is_err());
        assert!(tokenize("a \"b\"c;").is_err());
        assert!(structure("a {").is_err());
        assert!(structure("}").is_err());
        assert!(structure("a b").is_err());
        assert!(structure("a { b }").is_err());
        assert!(structure(";").is_err());
    }

    #[test]
    fn shapes() {
        let s = structure("http { server { listen 80 default_server; } }").unwrap();
        let printed: Vec<String> = s.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            ["http/0", "{", "  server/0", "{", "    listen/2", "}", "}"]
        );
    }
}
