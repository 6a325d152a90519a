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

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use crate::config::{Config, Server, Upstream};

/// The templates compiled into the binary.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("nginx.conf", include_str!("../templates/nginx.conf")),
    ("server.conf", include_str!("../templates/server.conf")),
    ("location.conf", include_str!("../templates/location.conf")),
    ("proxy.conf", include_str!("../templates/proxy.conf")),
    (
        "proxy_headers.conf",
        include_str!("../templates/proxy_headers.conf"),
    ),
    (
        "proxy_ssl.conf",
        include_str!("../templates/proxy_ssl.conf"),
    ),
    ("fastcgi.conf", include_str!("../templates/fastcgi.conf")),
    ("balancer.lua", include_str!("../templates/balancer.lua")),
    (
        "policy_head.conf",
        include_str!("../templates/policy_head.conf"),
    ),
    (
        "policy_proxy.conf",
        include_str!("../templates/policy_proxy.conf"),
    ),
    ("upstream.conf", include_str!("../templates/upstream.conf")),
    ("stream.conf", include_str!("../templates/stream.conf")),
];

/// The template of the whole file; servers and upstreams are rendered from
/// their own templates and put where it writes `# wicket-servers` and
/// `# wicket-upstreams`.
pub const ROOT_TEMPLATE: &str = "nginx.conf";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: tera::Error,
    },
    #[error("upstream name {0} is not one the balancer can be given")]
    UpstreamName(String),
    #[error("reading templates from {dir}: {source}")]
    Read {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rendering nginx.conf: {0}")]
    Render(#[source] tera::Error),
    #[error("writing nginx.conf: {0}")]
    Write(#[source] std::io::Error),
}

impl RenderError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RenderError::Template { .. } => "template",
            RenderError::Read { .. } => "read",
            RenderError::UpstreamName(_) => "render",
            RenderError::Render(_) => "render",
            RenderError::Write(_) => "write",
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
    /// Where nginx keeps temporary files (`--temp-dir`); `None`: `tmp` in
    /// the state folder.
    pub temp_dir: Option<String>,
}

/// Whether an upstream name can be written into the balancer's Lua code
/// as a string as it is (what build makes of DNS labels and numbers).
fn lua_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
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

/// The line location.conf writes where a policy's directives go: the
/// policy's id and the part (`head` or `proxy`). No value from an object
/// can write a line of its own, so only the template writes these.
const POLICY_MARK: &str = "# wicket-policy ";

impl Renderer {
    /// Puts the text of each policy where a server's text marks it: each
    /// distinct policy is rendered once per part on this thread
    /// (`policy_head.conf`, `policy_proxy.conf`), however many locations
    /// share it.
    fn expand_policies(&self, text: String, globals: &tera::Value) -> Result<String, tera::Error> {
        if !text.contains(POLICY_MARK) {
            return Ok(text);
        }
        let mut out = String::with_capacity(text.len() + text.len() / 2);
        for line in text.split_inclusive('\n') {
            let marked = line
                .trim()
                .strip_prefix(POLICY_MARK)
                .and_then(|m| m.split_once(' '))
                .and_then(|(id, part)| Some((id.parse::<usize>().ok()?, part)));
            let fragment = match marked {
                Some((id, part @ ("head" | "proxy"))) => self.policy_part(id, part, globals)?,
                _ => None,
            };
            let Some(fragment) = fragment else {
                out.push_str(line);
                continue;
            };
            // The fragment's lines start with their own newline, as the
            // marker's did; the marker's own newline ends the last one.
            let body = fragment.strip_prefix('\n').unwrap_or(&fragment);
            if !body.is_empty() {
                out.push_str(body);
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        Ok(out)
    }

    /// The text of one part of the policy `id` (one serialized on this
    /// thread), rendered at its first use; `None` if there is no such
    /// policy.
    fn policy_part(
        &self,
        id: usize,
        part: &str,
        globals: &tera::Value,
    ) -> Result<Option<Arc<str>>, tera::Error> {
        POLICIES.with(|c| {
            let mut c = c.borrow_mut();
            let Some(entry) = c.as_mut().and_then(|m| m.get_mut(&id)) else {
                return Ok(None);
            };
            let (slot, template) = if part == "head" {
                (&mut entry.head, "policy_head.conf")
            } else {
                (&mut entry.proxy, "policy_proxy.conf")
            };
            if let Some(t) = slot {
                return Ok(Some(t.clone()));
            }
            let mut ctx = Context::new();
            ctx.insert_value("p", entry.value.clone());
            ctx.insert_value("globals", globals.clone());
            let t: Arc<str> = self.tera.render(template, &ctx)?.into();
            *slot = Some(t.clone());
            Ok(Some(t))
        })
    }

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
        let (text, _) = self.assemble(config, env, None)?;
        Ok(splice_snippets(text, &config.snippets))
    }

    /// Renders nginx.conf into `out` part by part, never holding the whole
    /// text: what `wicket render` prints (the same text as [`render`]).
    ///
    /// [`render`]: Renderer::render
    pub fn render_to(
        &self,
        config: &Config,
        env: &RenderEnv,
        out: &mut dyn std::io::Write,
    ) -> Result<(), RenderError> {
        if !config.snippets.is_empty() {
            // Snippets are spliced into the whole text.
            let text = self.render(config, env)?;
            return out.write_all(text.as_bytes()).map_err(RenderError::Write);
        }
        let mut sink = WriteSink { out, written: 0 };
        self.assemble_into(config, env, None, &mut sink)?;
        Ok(())
    }

    /// Renders nginx.conf, reusing the text of every server and upstream
    /// that is the same as in the config `cache` holds; the others are
    /// rendered on every core. The cache then holds this config and the
    /// returned text (shared, not copied).
    pub fn render_cached(
        &self,
        config: &Arc<Config>,
        env: &RenderEnv,
        cache: &mut RenderCache,
    ) -> Result<Arc<String>, RenderError> {
        let key = CacheKey {
            ports: Ports {
                http: config.http_port,
                https: config.https_port,
            },
            ipv6: env.ipv6,
            settings: config.settings.clone(),
            request_headers: config.request_headers.clone(),
            modules: config.modules.clone(),
            dynamic_endpoints: config.dynamic_endpoints,
            passthrough: config.streams.passthrough.is_some(),
        };
        // Snippets are spliced in after rendering: a text with them is not
        // one the parts can be cut from again, so it is not kept.
        let usable = cache.key.as_ref() == Some(&key) && config.snippets.is_empty();
        let previous = if usable { cache.last.take() } else { None };
        let (text, spans) = self.assemble(config, env, previous.as_ref())?;
        *cache = RenderCache::default();
        if config.snippets.is_empty() {
            let text = Arc::new(text);
            cache.key = Some(key);
            cache.last = Some(Last {
                config: config.clone(),
                text: text.clone(),
                spans,
            });
            Ok(text)
        } else {
            Ok(Arc::new(splice_snippets(text, &config.snippets)))
        }
    }

    /// The text of a config (snippets not yet spliced in), taking the parts
    /// that did not change from `previous`, and where each part is in it.
    fn assemble(
        &self,
        config: &Config,
        env: &RenderEnv,
        previous: Option<&Last>,
    ) -> Result<(String, Spans), RenderError> {
        let mut text = String::new();
        let spans = self.assemble_into(config, env, previous, &mut text)?;
        Ok((text, spans))
    }

    /// [`Renderer::assemble`] into `text`; each part is dropped once it is
    /// written.
    fn assemble_into(
        &self,
        config: &Config,
        env: &RenderEnv,
        previous: Option<&Last>,
        text: &mut dyn Sink,
    ) -> Result<Spans, RenderError> {
        let ports = Ports {
            http: config.http_port,
            https: config.https_port,
        };
        let part_env = PartEnv { ipv6: env.ipv6 };
        let globals = Globals::of(config);
        let servers: Vec<(&Server, bool)> = std::iter::once((&config.default_server, true))
            .chain(config.servers.iter().map(|s| (&**s, false)))
            .collect();
        // Where the text of a part is in the previous text, if the previous
        // config had the same part.
        let server_old = |(s, default): &(&Server, bool)| -> Option<Range<usize>> {
            let last = previous?;
            let (i, range) = last.spans.servers.get(&server_key(s, *default))?;
            let old = if *default {
                &last.config.default_server
            } else {
                last.config.servers.get(*i)?
            };
            // Servers that did not change are shared with the last config.
            (std::ptr::eq(old, *s) || old == *s).then(|| range.clone())
        };
        let upstream_old = |u: &&Upstream| -> Option<Range<usize>> {
            let last = previous?;
            let (i, range) = last.spans.upstreams.get(&u.name)?;
            (last.config.upstreams.get(*i)? == *u).then(|| range.clone())
        };
        let globals = tera::Value::from_serializable(&globals);
        let server_texts = self.render_parts(&servers, server_old, |(s, default)| {
            let mut ctx = Context::new();
            ctx.insert("server", *s);
            ctx.insert("default", default);
            ctx.insert("ports", &ports);
            ctx.insert("env", &part_env);
            ctx.insert_value("globals", globals.clone());
            let text = self.tera.render("server.conf", &ctx)?;
            self.expand_policies(text, &globals)
        })?;
        let upstreams: Vec<&Upstream> = config.upstreams.iter().collect();
        let keepalive = Keepalive::of(&config.settings);
        let dynamic = config.dynamic_endpoints;
        if dynamic && let Some(u) = upstreams.iter().find(|u| !lua_safe(&u.name)) {
            return Err(RenderError::UpstreamName(escape_string(&u.name)));
        }
        let upstream_texts = self.render_parts(&upstreams, upstream_old, |u| {
            let mut ctx = Context::new();
            ctx.insert("upstream", *u);
            ctx.insert("keepalive", &keepalive);
            ctx.insert("dynamic", &dynamic);
            self.tera.render("upstream.conf", &ctx)
        })?;

        let mut ctx = Context::new();
        ctx.insert("config", &Head::of(config));
        ctx.insert("env", env);
        let head = self
            .tera
            .render(ROOT_TEMPLATE, &ctx)
            .map_err(RenderError::Render)?;
        let old_text = previous.map(|p| &*p.text);
        let old_text = old_text.map(String::as_str);
        let size = head.len()
            + server_texts
                .iter()
                .map(|p| part_text(old_text, p).len())
                .sum::<usize>()
            + upstream_texts
                .iter()
                .map(|p| part_text(old_text, p).len())
                .sum::<usize>();
        text.reserve(size + 64);
        let mut spans = Spans::default();
        let mut server_texts = server_texts.into_iter();
        let mut upstream_texts = upstream_texts.into_iter();
        for line in head.split_inclusive('\n') {
            match line.trim() {
                "# wicket-servers" => {
                    for (i, ((s, default), p)) in
                        servers.iter().zip(server_texts.by_ref()).enumerate()
                    {
                        let start = text.len();
                        text.put(part_text(old_text, &p))?;
                        // Index 0 is the default server; servers[i] is i + 1.
                        let index = i.wrapping_sub(1);
                        spans
                            .servers
                            .insert(server_key(s, *default), (index, start..text.len()));
                    }
                }
                "# wicket-upstreams" => {
                    for (i, (u, p)) in upstreams.iter().zip(upstream_texts.by_ref()).enumerate() {
                        let start = text.len();
                        text.put(part_text(old_text, &p))?;
                        spans
                            .upstreams
                            .insert(u.name.clone(), (i, start..text.len()));
                    }
                }
                _ => {
                    text.put(line)?;
                    continue;
                }
            }
            text.put("\n")?;
        }
        Ok(spans)
    }

    /// Renders the parts that have no old text, on every core.
    fn render_parts<I: Sync>(
        &self,
        items: &[I],
        old: impl Fn(&I) -> Option<Range<usize>>,
        render: impl Fn(&I) -> Result<String, tera::Error> + Sync,
    ) -> Result<Vec<Part>, RenderError> {
        let mut out: Vec<Option<Part>> = items.iter().map(|i| old(i).map(Part::Old)).collect();
        let missing: Vec<usize> = (0..items.len()).filter(|i| out[*i].is_none()).collect();
        let rendered = crate::parallel::map(&missing, |i| {
            POLICIES.with(|c| {
                c.borrow_mut().get_or_insert_with(HashMap::new);
            });
            // Tera's buffer is several times the text; thousands of parts
            // wait for assembly.
            let text = render(&items[*i]).map(|mut t| {
                t.shrink_to_fit();
                t
            });
            (*i, text)
        });
        // The workers are gone; the caller may have rendered some itself.
        POLICIES.with(|c| c.borrow_mut().take());
        for (i, r) in rendered {
            out[i] = Some(Part::New(r.map_err(RenderError::Render)?));
        }
        Ok(out
            .into_iter()
            .map(|p| p.expect("every part is old or rendered"))
            .collect())
    }
}

/// One distinct location policy while a thread renders parts.
struct CachedPolicy {
    /// Kept so that its address, the id, is not reused meanwhile.
    _policy: Arc<crate::config::LocationPolicy>,
    /// As Tera sees it, with its `id`.
    value: tera::Value,
    /// Its rendered parts, once asked for.
    head: Option<Arc<str>>,
    proxy: Option<Arc<str>>,
}

thread_local! {
    /// While this thread renders parts: each distinct location policy
    /// (policies are interned: 10,000 Ingresses with the same annotations
    /// share one), keyed by its address.
    static POLICIES: std::cell::RefCell<Option<HashMap<usize, CachedPolicy>>> =
        const { std::cell::RefCell::new(None) };
}

/// A policy as location.conf sees it: its fields and its id.
#[derive(Serialize)]
struct WithId<'a> {
    id: usize,
    #[serde(flatten)]
    policy: &'a crate::config::LocationPolicy,
}

/// How a location's policy is serialized: from the thread's cache while
/// parts are rendered (a Tera value is shared, not copied, when serialized
/// into another), as itself otherwise (`/model`).
pub(crate) fn serialize_policy<S: serde::Serializer>(
    p: &Option<Arc<crate::config::LocationPolicy>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let Some(p) = p else {
        return s.serialize_none();
    };
    let cached = POLICIES.with(|c| {
        let mut c = c.borrow_mut();
        let map = c.as_mut()?;
        let id = Arc::as_ptr(p) as usize;
        let entry = map.entry(id).or_insert_with(|| CachedPolicy {
            _policy: p.clone(),
            value: tera::Value::from_serializable(&WithId { id, policy: p }),
            head: None,
            proxy: None,
        });
        Some(entry.value.clone())
    });
    match cached {
        Some(v) => v.serialize(s),
        None => p.serialize(s),
    }
}

/// A part of nginx.conf: where its text is in the last one, or new text.
enum Part {
    Old(Range<usize>),
    New(String),
}

/// Where [`Renderer::assemble_into`] writes the text.
trait Sink {
    fn put(&mut self, s: &str) -> Result<(), RenderError>;
    /// Bytes written so far.
    fn len(&self) -> usize;
    fn reserve(&mut self, _additional: usize) {}
}

impl Sink for String {
    fn put(&mut self, s: &str) -> Result<(), RenderError> {
        self.push_str(s);
        Ok(())
    }
    fn len(&self) -> usize {
        String::len(self)
    }
    fn reserve(&mut self, additional: usize) {
        String::reserve(self, additional)
    }
}

struct WriteSink<'a> {
    out: &'a mut dyn std::io::Write,
    written: usize,
}

impl Sink for WriteSink<'_> {
    fn put(&mut self, s: &str) -> Result<(), RenderError> {
        self.written += s.len();
        self.out.write_all(s.as_bytes()).map_err(RenderError::Write)
    }
    fn len(&self) -> usize {
        self.written
    }
}

fn part_text<'a>(old: Option<&'a str>, p: &'a Part) -> &'a str {
    match p {
        Part::Old(r) => &old.expect("an old part has an old text")[r.clone()],
        Part::New(t) => t,
    }
}

fn server_key(s: &Server, default: bool) -> String {
    if default {
        "_default".to_string()
    } else {
        s.server_name.clone()
    }
}

/// Where each server and upstream is in a rendered text: its index in the
/// config (`usize::MAX` for the default server) and its byte range.
#[derive(Default)]
struct Spans {
    servers: HashMap<String, (usize, Range<usize>)>,
    upstreams: HashMap<String, (usize, Range<usize>)>,
}

/// What the text of the parts depends on besides the parts themselves.
#[derive(Clone, PartialEq)]
struct CacheKey {
    ports: Ports,
    ipv6: bool,
    settings: crate::settings::Settings,
    request_headers: Vec<crate::config::ExpandableHeader>,
    modules: crate::config::Modules,
    dynamic_endpoints: bool,
    passthrough: bool,
}

/// The global settings servers and locations need (see
/// `templates/server.conf`).
#[derive(Serialize)]
struct Globals<'a> {
    http2: bool,
    proxy_protocol: bool,
    /// TLS passthrough is on: HTTPS listens on the unix socket the stream
    /// block sends it to, with the PROXY protocol.
    passthrough: bool,
    block_user_agents: bool,
    block_referers: bool,
    /// HSTS is on and can be sent (headers-more is loaded).
    hsts: bool,
    full_forwarded_for: bool,
    /// `enable-auth-access-log`.
    auth_access_log: bool,
    proxy_buffer_size: &'a crate::values::Size,
    request_headers: &'a [crate::config::ExpandableHeader],
    /// The Lua module is loaded (dynamic endpoints): locations may call
    /// its handlers.
    lua: bool,
}

impl<'a> Globals<'a> {
    fn of(c: &'a Config) -> Self {
        let s = &c.settings;
        Globals {
            http2: s.use_http2,
            proxy_protocol: s.use_proxy_protocol,
            passthrough: c.streams.passthrough.is_some(),
            block_user_agents: !s.block_user_agents.is_empty(),
            block_referers: !s.block_referers.is_empty(),
            hsts: s.hsts && c.modules.headers_more,
            full_forwarded_for: s.compute_full_forwarded_for && s.use_forwarded_headers,
            auth_access_log: s.enable_auth_access_log,
            proxy_buffer_size: &s.proxy_buffer_size,
            request_headers: &c.request_headers,
            lua: c.dynamic_endpoints,
        }
    }
}

/// The keepalive settings every upstream gets (see
/// `templates/upstream.conf`); `None` where nginx's own default is the
/// same, so 10,000 upstreams do not repeat it.
#[derive(Serialize)]
struct Keepalive {
    connections: u32,
    requests: Option<u32>,
    timeout: Option<String>,
    time: Option<String>,
}

impl Keepalive {
    fn of(s: &crate::settings::Settings) -> Self {
        let time = s.upstream_keepalive_time.as_str().to_string();
        Keepalive {
            connections: s.upstream_keepalive_connections,
            requests: (s.upstream_keepalive_requests != 1000)
                .then_some(s.upstream_keepalive_requests),
            timeout: (s.upstream_keepalive_timeout.0 != 60)
                .then(|| format!("{}s", s.upstream_keepalive_timeout.0)),
            time: (time != "1h").then_some(time),
        }
    }
}

struct Last {
    config: Arc<Config>,
    text: Arc<String>,
    spans: Spans,
}

/// The last config rendered and its text, to reuse the parts that did not
/// change. It shares both with the caller; it copies neither.
#[derive(Default)]
pub struct RenderCache {
    key: Option<CacheKey>,
    last: Option<Last>,
}

/// The listen ports, as server.conf sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
struct Ports {
    http: u16,
    https: u16,
}

/// What a server or upstream template sees of the environment.
#[derive(Serialize)]
struct PartEnv {
    ipv6: bool,
}

/// The config as nginx.conf sees it: everything but the servers and
/// upstreams, which are rendered apart.
#[derive(Serialize)]
struct Head<'a> {
    /// Endpoints change without a reload: the balancer's code and socket.
    dynamic_endpoints: bool,
    http_port: u16,
    https_port: u16,
    server_names_hash_bucket_size: u32,
    server_names_hash_max_size: u32,
    variables_hash_bucket_size: u32,
    variables_hash_max_size: u32,
    settings: &'a crate::settings::Settings,
    certificates: &'a [crate::config::Certificate],
    /// `load_module` arguments.
    load_modules: Vec<String>,
    modules: &'a crate::config::Modules,
    /// The `Strict-Transport-Security` value, when HSTS is on and can be
    /// sent.
    hsts: Option<String>,
    /// The global `allow`/`deny` rules (`block-cidrs`, the global source
    /// lists), inherited by locations without their own.
    global_access: crate::config::AccessRules,
    www_redirects: &'a [crate::config::WwwRedirect],
    response_headers: &'a [crate::config::ExpandableHeader],
    request_headers: &'a [crate::config::ExpandableHeader],
    global_error_pages: &'a [crate::config::ErrorPage],
    limit_zones: &'a [crate::config::LimitZone],
    cors_maps: &'a [crate::config::CorsMap],
    cors_profiles: &'a [crate::config::CorsPolicy],
    /// Some location sends CORS headers.
    cors: bool,
    /// Some external auth is cached: the cache zone.
    auth_cache: bool,
    canaries: &'a [std::sync::Arc<crate::config::CanaryChoice>],
    /// The zones' keys that exempt networks, once each.
    limit_keys: Vec<&'a crate::config::LimitZone>,
    modsecurity: Option<&'a crate::config::ModSecurityHttp>,
    /// The `stream` block (TCP and UDP services, TLS passthrough), when it
    /// has servers.
    streams: Option<&'a crate::config::Streams>,
    /// TLS passthrough is on (see [`Globals::passthrough`]).
    passthrough: bool,
}

impl<'a> Head<'a> {
    fn of(c: &'a Config) -> Self {
        let s = &c.settings;
        let load_modules = c.modules.to_load(
            s.enable_brotli,
            c.dynamic_endpoints,
            c.modsecurity.is_some(),
            !c.streams.is_empty(),
        );
        Head {
            dynamic_endpoints: c.dynamic_endpoints,
            http_port: c.http_port,
            https_port: c.https_port,
            server_names_hash_bucket_size: c.server_names_hash_bucket_size,
            server_names_hash_max_size: c.server_names_hash_max_size,
            variables_hash_bucket_size: c.variables_hash_bucket_size,
            variables_hash_max_size: c.variables_hash_max_size,
            settings: s,
            certificates: &c.certificates,
            load_modules,
            modules: &c.modules,
            hsts: s.hsts_value().filter(|_| c.modules.headers_more),
            global_access: crate::build::policy::rules(
                &s.whitelist_source_range,
                &s.denylist_source_range,
                &s.block_cidrs,
            ),
            www_redirects: &c.www_redirects,
            response_headers: &c.response_headers,
            request_headers: &c.request_headers,
            global_error_pages: &c.global_error_pages,
            limit_zones: &c.limit_zones,
            cors_maps: &c.cors_maps,
            cors_profiles: &c.cors_profiles,
            cors: c.cors,
            auth_cache: c.auth_cache,
            canaries: &c.canaries,
            modsecurity: c.modsecurity.as_ref(),
            streams: (!c.streams.is_empty()).then_some(&c.streams),
            passthrough: c.streams.passthrough.is_some(),
            limit_keys: {
                let mut seen = std::collections::BTreeSet::new();
                c.limit_zones
                    .iter()
                    .filter(|z| !z.exempt.is_empty() && seen.insert(z.key.as_str()))
                    .collect()
            },
        }
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
            // What is between Tera's delimiters (templates/balancer.lua
            // has Lua's own words, such as safe_set, outside them).
            let mut tags = String::new();
            for open in ["{{", "{%"] {
                let close = if open == "{{" { "}}" } else { "%}" };
                for piece in text.split(open).skip(1) {
                    tags.push_str(piece.split(close).next().unwrap_or(piece));
                    tags.push('\n');
                }
            }
            for banned in ["safe", "autoescape", "escape_html", "escape_xml", "raw"] {
                assert!(!tags.contains(banned), "template {name} uses {banned}");
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
