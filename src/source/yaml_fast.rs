//! A fast reader for the plain YAML that manifests are written in: block
//! mappings and sequences, single-line flow collections, plain and quoted
//! single-line scalars, comments and `---` between documents.
//!
//! It either reads a whole text to exactly the values `serde_yaml` (libyaml)
//! reads, or declines, and the caller reads the text with `serde_yaml`.
//! Anything outside the subset declines: anchors, aliases, tags, block
//! scalars (`|`, `>`), scalars over several lines, complex keys, directives,
//! tabs, carriage returns, a key given twice, numbers other than decimal
//! integers, and every error, so the messages stay libyaml's. The property
//! tests in this module compare it with `serde_yaml` on generated texts.
//!
//! Plain scalars resolve as `serde_yaml` 0.9 resolves them: `null`, `~` and
//! empty to null, `true`/`false` (three spellings each) to booleans,
//! decimal integers to numbers, leading zeros to text.

use serde_json::{Map, Value};

/// Deepest nesting read; deeper texts decline (serde_yaml stops at 128).
const MAX_DEPTH: usize = 64;
/// Farthest a key's colon may be from the key's first byte (quotes and
/// spaces included); libyaml refuses a simple key whose `:` comes more than
/// 1024 characters after its start.
const MAX_KEY_BYTES: usize = 1000;

/// The documents of a YAML text, as `serde_yaml` would read them with a
/// visitor that builds JSON values; `None` when the text is outside the
/// subset this reader knows (the caller then uses `serde_yaml`).
pub fn documents(text: &str) -> Option<Vec<Value>> {
    if !printable(text) {
        return None;
    }
    let mut docs = Vec::new();
    let mut lines: Vec<Line> = Vec::new();
    // Whether a `---` opened the document being collected.
    let mut explicit = false;
    let mut offset = 0;
    for raw in text.split_inclusive('\n') {
        let start = offset;
        offset += raw.len();
        let body = raw.strip_suffix('\n').unwrap_or(raw);
        let indent = body.len() - body.trim_start_matches(' ').len();
        let content = &body[indent..];
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if indent == 0 {
            if marker(content, "---") {
                if !blank(&content[3..]) {
                    return None; // content on the marker line
                }
                if explicit || !lines.is_empty() {
                    docs.push(Parser::document(text, &lines)?);
                }
                lines.clear();
                explicit = true;
                continue;
            }
            if marker(content, "...") || content.starts_with('%') {
                return None;
            }
        }
        lines.push(Line {
            indent,
            start: start + indent,
            end: start + body.len(),
        });
    }
    // serde_yaml reads a text without documents as one empty document.
    if explicit || !lines.is_empty() || docs.is_empty() {
        docs.push(Parser::document(text, &lines)?);
    }
    Some(docs)
}

/// Whether a line starts with a document marker (`---` or `...` followed
/// by a space or the end of the line).
fn marker(content: &str, m: &str) -> bool {
    content.starts_with(m) && matches!(content.as_bytes().get(3), None | Some(b' '))
}

/// Only spaces, maybe then a comment.
fn blank(s: &str) -> bool {
    let t = s.trim_start_matches(' ');
    t.is_empty() || (t.starts_with('#') && t.len() < s.len())
}

/// Characters libyaml reads as printable, without the ones this reader
/// leaves to it: tabs, carriage returns, the byte order mark and the
/// Unicode line breaks (NEL, LS, PS).
fn printable(text: &str) -> bool {
    let ascii_ok = |b: u8| b == b'\n' || (0x20..0x7f).contains(&b);
    if text.bytes().all(ascii_ok) {
        return true;
    }
    text.chars().all(|c| {
        let u = c as u32;
        if u < 0x80 {
            return ascii_ok(u as u8);
        }
        (0xa0..=0xd7ff).contains(&u) && u != 0x2028 && u != 0x2029
            || (0xe000..=0xfffd).contains(&u) && u != 0xfeff
            || u >= 0x10000
    })
}

/// One line that holds something: where its content starts and ends (the
/// line break excluded), and its indentation in spaces.
#[derive(Clone, Copy, Debug)]
struct Line {
    indent: usize,
    start: usize,
    end: usize,
}

struct Parser<'a> {
    text: &'a str,
    lines: &'a [Line],
    /// The next line not yet read.
    pos: usize,
    depth: usize,
}

/// A key found at the start of a line's content, and where what follows
/// its colon starts.
struct Key {
    name: String,
    rest: usize,
}

impl<'a> Parser<'a> {
    fn document(text: &'a str, lines: &'a [Line]) -> Option<Value> {
        let Some(first) = lines.first() else {
            return Some(Value::Null);
        };
        let mut p = Parser {
            text,
            lines,
            pos: 0,
            depth: 0,
        };
        let v = p.block(0, first.start, first.indent)?;
        (p.pos == lines.len()).then_some(v)
    }

    fn content(&self, line: usize, from: usize) -> &'a str {
        &self.text[from..self.lines[line].end]
    }

    /// The node whose first line is a whole line of its own (the value of a
    /// key or sequence entry written below it): a mapping or a sequence.
    fn block(&mut self, line: usize, from: usize, col: usize) -> Option<Value> {
        let c = self.content(line, from);
        if is_entry(c) {
            return self.sequence(line, from, col);
        }
        let key = key_at(c)?;
        self.mapping(line, from, col, key?)
    }

    /// A node that starts inside a line, after `- `.
    fn inline(&mut self, line: usize, from: usize, col: usize) -> Option<Value> {
        let c = self.content(line, from);
        if is_entry(c) {
            return self.sequence(line, from, col);
        }
        if let Some(key) = key_at(c)? {
            return self.mapping(line, from, col, key);
        }
        self.pos = line + 1;
        value(c)
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// A block sequence whose entries start at column `col`; the first one
    /// at `from` on `line`.
    fn sequence(&mut self, mut line: usize, mut from: usize, col: usize) -> Option<Value> {
        self.enter()?;
        let mut items = Vec::new();
        loop {
            // `from` is at the `-` of an entry.
            let after = &self.content(line, from)[1..];
            let spaces = after.len() - after.trim_start_matches(' ').len();
            if blank(after) {
                items.push(self.below(line, col, false)?);
            } else {
                let item_from = from + 1 + spaces;
                items.push(self.inline(line, item_from, col + 1 + spaces)?);
            }
            let Some(next) = self.lines.get(self.pos) else {
                break;
            };
            if next.indent > col {
                return None;
            }
            if next.indent < col || !is_entry(self.content(self.pos, next.start)) {
                break;
            }
            line = self.pos;
            from = next.start;
        }
        self.depth -= 1;
        Some(Value::Array(items))
    }

    /// The value written below a key or entry of column `col` on `line`:
    /// a deeper block, a sequence at the same column (allowed under a key),
    /// or nothing (null).
    fn below(&mut self, line: usize, col: usize, key: bool) -> Option<Value> {
        self.pos = line + 1;
        let Some(next) = self.lines.get(line + 1).copied() else {
            return Some(Value::Null);
        };
        if next.indent > col {
            return self.block(line + 1, next.start, next.indent);
        }
        if key && next.indent == col && is_entry(self.content(line + 1, next.start)) {
            return self.sequence(line + 1, next.start, col);
        }
        Some(Value::Null)
    }

    /// A block mapping whose keys start at column `col`; the first key,
    /// already read, at `from` on `line`.
    fn mapping(&mut self, mut line: usize, from: usize, col: usize, first: Key) -> Option<Value> {
        self.enter()?;
        let mut map = Map::new();
        let mut key = first;
        let mut from = from;
        loop {
            let rest = &self.text[from + key.rest..self.lines[line].end];
            let v = if blank(rest) {
                self.below(line, col, true)?
            } else {
                self.pos = line + 1;
                value(rest.trim_start_matches(' '))?
            };
            if key.name == "<<" || map.insert(key.name, v).is_some() {
                return None; // merge keys and duplicates: serde_yaml decides
            }
            let Some(next) = self.lines.get(self.pos) else {
                break;
            };
            if next.indent > col {
                return None;
            }
            if next.indent < col {
                break;
            }
            line = self.pos;
            from = next.start;
            key = key_at(self.content(line, from))??;
        }
        self.depth -= 1;
        Some(Value::Object(map))
    }
}

/// Whether content starts a block sequence entry (`-` then a space or the
/// end of the line).
fn is_entry(c: &str) -> bool {
    c.starts_with('-') && matches!(c.as_bytes().get(1), None | Some(b' '))
}

/// The key a line's content starts with: `Some(None)` when it holds no
/// key, `None` when it is outside the subset.
fn key_at(c: &str) -> Option<Option<Key>> {
    let b = c.as_bytes();
    match b[0] {
        b'"' | b'\'' => {
            let (name, used) = quoted(c)?;
            let after = &c[used..];
            let t = after.trim_start_matches(' ');
            if let Some(r) = t.strip_prefix(':')
                && (r.is_empty() || r.starts_with(' '))
            {
                let rest = c.len() - r.len();
                if rest > MAX_KEY_BYTES {
                    return None;
                }
                return Some(Some(Key { name, rest }));
            }
            Some(None)
        }
        b'{' | b'[' => Some(None),
        _ => {
            let end = plain_end(c, false);
            // The first `: ` or `:` at the end of the line.
            let Some(colon) = c[..end]
                .match_indices(':')
                .map(|(i, _)| i)
                .find(|&i| matches!(b.get(i + 1), None | Some(b' ')))
            else {
                return Some(None);
            };
            let name = c[..colon].trim_end_matches(' ');
            if name.is_empty() || colon > MAX_KEY_BYTES || !plain_start(name, false) {
                return None;
            }
            Some(Some(Key {
                name: name.to_owned(),
                rest: colon + 1,
            }))
        }
    }
}

/// Where plain text ends: before a comment (` #`), and in a flow
/// collection also before `,`, `[`, `]`, `{`, `}`.
fn plain_end(c: &str, flow: bool) -> usize {
    let b = c.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'#' if i > 0 && b[i - 1] == b' ' => return i,
            b',' | b'[' | b']' | b'{' | b'}' if flow => return i,
            _ => {}
        }
    }
    b.len()
}

/// Whether plain text may start with its first character here: not an
/// indicator, and `-` (and outside flow collections `?`, `:`) only when a
/// non-space follows.
fn plain_start(s: &str, flow: bool) -> bool {
    let b = s.as_bytes();
    let Some(&first) = b.first() else {
        return false;
    };
    match first {
        b'?' | b':' if flow => false,
        b'-' | b'?' | b':' => !matches!(b.get(1), None | Some(b' ')),
        b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\''
        | b'"' | b'%' | b'@' | b'`' => false,
        _ => true,
    }
}

/// The value of the rest of a line (no leading spaces, not blank): a
/// quoted or plain scalar or a flow collection, then only a comment.
fn value(c: &str) -> Option<Value> {
    match c.as_bytes()[0] {
        b'"' | b'\'' => {
            let (s, used) = quoted(c)?;
            blank(&c[used..]).then_some(Value::String(s))
        }
        b'{' | b'[' => {
            let mut f = Flow {
                s: c,
                i: 0,
                depth: 0,
            };
            let v = f.node()?;
            blank(&c[f.i..]).then_some(v)
        }
        _ => {
            let end = plain_end(c, false);
            let text = c[..end].trim_end_matches(' ');
            if !plain_start(text, false) || text.contains(": ") || text.ends_with(':') {
                return None;
            }
            resolve(text)
        }
    }
}

/// A plain scalar resolved as serde_yaml 0.9 does; `None` for the numbers
/// this reader leaves to it (floats, hexadecimal, octal, signed with `+`).
fn resolve(s: &str) -> Option<Value> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    let b = s.as_bytes();
    if !matches!(b[0], b'0'..=b'9' | b'-' | b'+' | b'.') {
        return Some(Value::String(s.to_owned()));
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
        if digits.len() > 1 && digits.starts_with('0') {
            return Some(Value::String(s.to_owned())); // leading zeros: text
        }
        return if digits.len() < s.len() {
            s.parse::<i64>().ok().map(Value::from)
        } else {
            s.parse::<u64>().ok().map(Value::from)
        };
    }
    // Digits with two dots or more (addresses, versions) are no number.
    if b.iter().all(|c| c.is_ascii_digit() || *c == b'.')
        && b.iter().filter(|c| **c == b'.').count() >= 2
    {
        return Some(Value::String(s.to_owned()));
    }
    None
}

/// A quoted scalar that ends on its line: its text and the bytes it used.
fn quoted(c: &str) -> Option<(String, usize)> {
    let b = c.as_bytes();
    let mut out = String::new();
    if b[0] == b'\'' {
        let mut i = 1;
        loop {
            let j = i + c[i..].find('\'')?;
            out.push_str(&c[i..j]);
            if b.get(j + 1) == Some(&b'\'') {
                out.push('\'');
                i = j + 2;
            } else {
                return Some((out, j + 1));
            }
        }
    }
    let mut i = 1;
    loop {
        let j = i + c[i..].find(['"', '\\'])?;
        out.push_str(&c[i..j]);
        if b[j] == b'"' {
            return Some((out, j + 1));
        }
        let (ch, used) = match *b.get(j + 1)? {
            b'\\' => ('\\', 2),
            b'"' => ('"', 2),
            b'/' => ('/', 2),
            b' ' => (' ', 2),
            b'0' => ('\0', 2),
            b'a' => ('\x07', 2),
            b'b' => ('\x08', 2),
            b't' => ('\t', 2),
            b'n' => ('\n', 2),
            b'v' => ('\x0b', 2),
            b'f' => ('\x0c', 2),
            b'r' => ('\r', 2),
            b'e' => ('\x1b', 2),
            b'x' => (hex(c.get(j + 2..j + 4)?)?, 4),
            b'u' => (hex(c.get(j + 2..j + 6)?)?, 6),
            b'U' => (hex(c.get(j + 2..j + 10)?)?, 10),
            _ => return None,
        };
        out.push(ch);
        i = j + used;
    }
}

fn hex(digits: &str) -> Option<char> {
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    char::from_u32(u32::from_str_radix(digits, 16).ok()?)
}

/// A flow collection that ends on its line.
struct Flow<'a> {
    s: &'a str,
    i: usize,
    depth: usize,
}

impl Flow<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    fn node(&mut self) -> Option<Value> {
        self.spaces();
        match self.peek()? {
            b'{' => self.collection(b'}', true),
            b'[' => self.collection(b']', false),
            b'"' | b'\'' => {
                let (s, used) = quoted(&self.s[self.i..])?;
                self.i += used;
                Some(Value::String(s))
            }
            _ => {
                let rest = &self.s[self.i..];
                let end = plain_end(rest, true);
                let text = rest[..end].trim_end_matches(' ');
                // A colon, a quote or a comment inside flow text: leave it.
                if !plain_start(text, true) || text.contains([':', '#', '"', '\'']) {
                    return None;
                }
                self.i += text.len();
                resolve(text)
            }
        }
    }

    /// `{` key `:` value `,` ... `}` or `[` value `,` ... `]`.
    fn collection(&mut self, close: u8, map: bool) -> Option<Value> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        let mut items = Vec::new();
        let mut entries = Map::new();
        loop {
            self.spaces();
            if self.peek()? == close {
                self.i += 1;
                break;
            }
            if map {
                let key = self.key()?;
                let v = self.node()?;
                if key == "<<" || entries.insert(key, v).is_some() {
                    return None;
                }
            } else {
                items.push(self.node()?);
            }
            self.spaces();
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {}
                _ => return None,
            }
        }
        self.depth -= 1;
        Some(if map {
            Value::Object(entries)
        } else {
            Value::Array(items)
        })
    }

    /// A key of a flow mapping and its colon, which must have a value after
    /// it on the line.
    fn key(&mut self) -> Option<String> {
        let start = self.i;
        let rest = &self.s[self.i..];
        let (name, used) = match rest.as_bytes()[0] {
            b'"' | b'\'' => quoted(rest)?,
            _ => {
                let end = rest.find(": ")?;
                let name = &rest[..end];
                if !plain_start(name, true)
                    || name.ends_with(' ')
                    || name.contains([',', '[', ']', '{', '}', '#', '"', '\'', ':'])
                {
                    return None;
                }
                (name.to_owned(), end)
            }
        };
        self.i += used;
        self.spaces();
        if self.peek()? != b':' || self.i - start > MAX_KEY_BYTES {
            return None;
        }
        self.i += 1;
        // A value must follow (`{a: }` and `{a: ,}` are left to serde_yaml).
        self.spaces();
        if matches!(self.peek()?, b',' | b'}') {
            return None;
        }
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::yaml_documents;

    /// The fast reader either declines or reads what serde_yaml reads.
    fn agrees(text: &str) -> bool {
        let fast = documents(text);
        if let Some(fast) = &fast {
            assert_eq!(
                yaml_documents(text).as_ref(),
                Ok(fast),
                "the fast reader read {text:?} differently"
            );
        }
        fast.is_some()
    }

    /// One file of `bench/gen-manifests.py`.
    const BENCH: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: app-0
  namespace: bench-0
spec:
  rules:
  - host: app-0.bench.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service: {name: app-0, port: {number: 80}}
---
apiVersion: v1
kind: Service
metadata:
  name: app-0
  namespace: bench-0
spec:
  ports: [{name: http, port: 80, targetPort: 18080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-0-1
  namespace: bench-0
  labels: {kubernetes.io/service-name: app-0}
addressType: IPv4
ports: [{name: http, port: 18080, protocol: TCP}]
endpoints:
- addresses: [127.1.0.1]
  conditions: {ready: true}
";

    #[test]
    fn reads_what_manifests_hold() {
        for text in [
            "",
            "# only a comment\n",
            "---\n",
            "a: 1\n---\n",
            "---\n---\na: 1\n",
            "--- # c\na: 1\n...\n",
            "a: 1\n\n# c\nb:\n  c: [x, 'y', \"z\"]\n",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  labels: {app.kubernetes.io/name: x, \"q\": ''}\n",
            "spec:\n  rules:\n  - host: a.test\n    http:\n      paths:\n      - path: /\n        backend: {service: {name: a, port: {number: 80}}}\n  tls:\n  -   hosts:\n      - a\n",
            "a:\n- - x\n  - - y\n- z\nb: ~\nc:\nd: -5\ne: 007\nf: 127.0.0.1\ng: TRUE\nh: 18446744073709551615\n",
            "a: \"\\u00e9\\x41\\t\\\"\\\\\\/\" # c\nb: 'it''s'\n'c d': e:f\n\"g\": h #i\n",
            "a: [b, {c: d, e: [1, -2]}, '', \"x\"]\nb: {}\nc: []\nd: { }\n",
            "  a: 1\n  b: 2\n",
            "- a\n-\n- b: c\n  d:\n- [x]\n",
            "key: value with spaces   \nurl: http://x/y?z=1#frag\n",
        ] {
            agrees(text);
        }
        // These are read here, not left to serde_yaml: the shapes of
        // kubectl's output, of hand-written manifests and of the benchmark's.
        let examples: Vec<String> = ["examples", "tests/fixtures/golden/defaults"]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert!(examples.len() >= 3);
        for text in examples.iter().map(String::as_str).chain([
            include_str!("../../tests/fixtures/tls-secret.yaml"),
            BENCH,
            "a: 1\nb: [x, {y: z}]\nc:\n- d\n",
            "a: b\n---\nc: d\n",
            "a: \"q\"\nb: 'r'\n",
        ]) {
            assert!(agrees(text), "{text:?} should be read by the fast reader");
        }
    }

    #[test]
    fn leaves_the_rest_to_serde_yaml() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: |\n  text\n",
            "a: >\n  text\n",
            "a: plain\n  continued\n",
            "a: \"quoted\n  continued\"\n",
            "? a\n: b\n",
            "%YAML 1.2\n---\na: 1\n",
            "a:\tb\n",
            "a: b\r\n",
            "a: 1\na: 2\n",
            "a: {b: 1, b: 2}\n",
            "a: 1.5\n",
            "a: 0x1f\n",
            "a: +1\n",
            "a: 99999999999999999999\n",
            "a: b: c\n",
            "a: [b,\n  c]\n",
            "<<: {a: 1}\n",
            "a: 1\n b: 2\n",
            "just a scalar\n",
            "--- a\n",
            "\u{feff}a: 1\n",
            "a: \"\\q\"\n",
        ] {
            assert!(!agrees(text), "{text:?} should be left to serde_yaml");
        }
        // libyaml refuses a key whose colon is more than 1024 characters
        // after its start, spaces and quotes included.
        let long = "k".repeat(1100);
        let spaces = " ".repeat(1100);
        for text in [
            format!("{long}: 1\n"),
            format!("\"{long}\": 1\n"),
            format!("a{spaces}: 1\n"),
            format!("a: {{{long}: 1}}\n"),
            format!("a: {{'{long}': 1}}\n"),
            format!("- {long}: 1\n"),
        ] {
            assert!(
                !agrees(&text),
                "a key of 1,100 bytes should be left to serde_yaml"
            );
        }
        let short = "k".repeat(900);
        assert!(agrees(&format!(
            "\"{short}a\": 1\n{short}b: 2\nc: {{{short}: 3}}\n"
        )));
    }

    /// A small deterministic generator of YAML-like texts, seeded by
    /// proptest: trees of maps, sequences and scalars written in random
    /// styles, scalars drawn from tricky text, then (when `mutate`) a few
    /// random edits that often make the text invalid or mean something else.
    struct Gen {
        state: u64,
        clean: bool,
        keys: usize,
    }

    const WORDS: &[&str] = &[
        "a",
        "name",
        "x y",
        "true",
        "False",
        "null",
        "~",
        "",
        "0",
        "007",
        "-5",
        "-0",
        "12",
        "1.5",
        "127.0.0.1",
        "1.2.3",
        "0x1f",
        "+3",
        "1e3",
        ".inf",
        "nan",
        "é",
        "a#b",
        "a #b",
        "a:b",
        "a: b",
        "a:",
        "-a",
        "- a",
        "?a",
        ":a",
        "[a]",
        "{a}",
        "a,b",
        "'a'",
        "\"a\"",
        "&a",
        "*a",
        "!a",
        "|",
        ">",
        "%a",
        "@a",
        "`a",
        "a'b",
        "a\"b",
        "a\\b",
        "<<",
        "18446744073709551616",
        "-9223372036854775808",
        "—",
        "\u{85}",
        "a  b",
        " a",
    ];
    const SPECIAL: &[u8] = b" :#-?,[]{}'\"\\&*!|>%@`~\n\t.0a";

    impl Gen {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
        fn word(&mut self) -> String {
            if self.clean {
                let w = ["a", "b-c", "d.e/f", "g_h", "x1", "0", "12", "true", "null"];
                return w[self.below(w.len())].to_string();
            }
            if self.chance(70) {
                WORDS[self.below(WORDS.len())].to_string()
            } else {
                (0..self.below(6))
                    .map(|_| SPECIAL[self.below(SPECIAL.len() - 2)] as char)
                    .collect()
            }
        }
        fn scalar(&mut self) -> String {
            let w = self.word();
            match self.below(if self.clean { 2 } else { 4 }) {
                0 => w,
                1 => format!("'{}'", w.replace('\'', "''")),
                2 => format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\"")),
                _ => format!("\"{}\"", w.replace('"', "\\x22").replace('é', "\\u00e9")),
            }
        }
        fn key(&mut self) -> String {
            let k = ["a", "b", "c", "app.kubernetes.io/name", "d e"];
            if self.clean || self.chance(80) {
                // few keys, so duplicates happen when not clean
                let n = if self.clean { 0 } else { self.below(k.len()) };
                if self.clean {
                    self.keys += 1;
                    return format!("k{}", self.keys); // never twice
                }
                k[n].to_string()
            } else {
                self.scalar()
            }
        }
        fn comment(&mut self) -> &'static str {
            if self.chance(10) { " # c" } else { "" }
        }
        fn flow(&mut self, depth: usize) -> String {
            match self.below(if depth > 2 { 1 } else { 3 }) {
                0 => self.scalar(),
                1 => {
                    let items: Vec<String> =
                        (0..self.below(4)).map(|_| self.flow(depth + 1)).collect();
                    format!("[{}]", items.join(", "))
                }
                _ => {
                    let items: Vec<String> = (0..self.below(4))
                        .map(|_| format!("{}: {}", self.key(), self.flow(depth + 1)))
                        .collect();
                    format!("{{{}}}", items.join(", "))
                }
            }
        }
        /// Writes a node whose first line continues `out` (after `key:` or
        /// `- `); `indent` is the column of its parent.
        fn node(&mut self, out: &mut String, indent: usize, depth: usize, under_key: bool) {
            let step = 1 + self.below(3);
            match self.below(if depth > 3 { 1 } else { 4 }) {
                0 => {
                    out.push(' ');
                    out.push_str(&self.scalar());
                    out.push_str(self.comment());
                    out.push('\n');
                }
                1 => {
                    out.push(' ');
                    out.push_str(&self.flow(depth));
                    out.push_str(self.comment());
                    out.push('\n');
                }
                2 => {
                    out.push_str(self.comment());
                    out.push('\n');
                    let col = if under_key && self.chance(50) {
                        indent
                    } else {
                        indent + step
                    };
                    for _ in 0..1 + self.below(3) {
                        if self.chance(5) {
                            out.push_str("\n# between\n");
                        }
                        out.push_str(&" ".repeat(col));
                        out.push('-');
                        self.node(out, col, depth + 1, false);
                    }
                }
                _ => {
                    out.push_str(self.comment());
                    out.push('\n');
                    let col = indent + step;
                    self.map(out, col, depth + 1);
                }
            }
        }
        fn map(&mut self, out: &mut String, col: usize, depth: usize) {
            for _ in 0..1 + self.below(4) {
                out.push_str(&" ".repeat(col));
                out.push_str(&self.key());
                out.push(':');
                self.node(out, col, depth, true);
            }
        }
        fn text(&mut self, mutate: bool) -> String {
            let mut out = String::new();
            for d in 0..1 + self.below(3) {
                if d > 0 || self.chance(30) {
                    out.push_str(if self.chance(80) {
                        "---\n"
                    } else {
                        "--- # doc\n"
                    });
                }
                if self.chance(10) {
                    continue; // an empty document
                }
                if self.chance(15) {
                    out.push('-');
                    self.node(&mut out, 0, 1, false);
                } else {
                    self.map(&mut out, 0, 0);
                }
            }
            if mutate {
                for _ in 0..1 + self.below(2) {
                    let mut bytes = out.into_bytes();
                    let at = self.below(bytes.len() + 1);
                    match self.below(3) {
                        0 => bytes.insert(at, SPECIAL[self.below(SPECIAL.len())]),
                        1 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, b' '),
                    }
                    out = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
            out
        }
    }

    /// Runs `cases` generated texts (times `WICKET_YAML_FUZZ`, for longer
    /// runs by hand or in scripts/fuzz.sh); returns how many the fast reader
    /// read, and of how many.
    fn run(cases: u32, clean: bool, mutate: bool) -> (u32, u32) {
        use proptest::test_runner::{Config, TestRunner};
        let times = std::env::var("WICKET_YAML_FUZZ")
            .ok()
            .and_then(|t| t.parse::<u32>().ok())
            .unwrap_or(1);
        let cases = cases * times;
        let accepted = std::cell::Cell::new(0);
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&proptest::prelude::any::<u64>(), |seed| {
                let mut g = Gen {
                    state: seed | 1,
                    clean,
                    keys: 0,
                };
                let text = g.text(mutate);
                if agrees(&text) {
                    accepted.set(accepted.get() + 1);
                    if std::env::var_os("WICKET_YAML_SHOW").is_some() {
                        eprintln!("---- read fast:\n{text}");
                    }
                } else if clean {
                    panic!("the fast reader declined a plain text: {text:?}");
                }
                Ok(())
            })
            .unwrap();
        (accepted.get(), cases)
    }

    #[test]
    fn plain_texts_are_read_fast_and_alike() {
        run(2000, true, false);
    }

    #[test]
    fn tricky_texts_are_read_alike_or_declined() {
        let (accepted, cases) = run(4000, false, false);
        eprintln!("tricky: {accepted} of {cases} read fast");
        assert!(
            accepted > cases / 20,
            "only {accepted} of {cases} read fast"
        );
    }

    #[test]
    fn edited_texts_are_read_alike_or_declined() {
        let (accepted, cases) = run(4000, false, true);
        eprintln!("edited: {accepted} of {cases} read fast");
        assert!(
            accepted > cases / 20,
            "only {accepted} of {cases} read fast"
        );
    }
}
