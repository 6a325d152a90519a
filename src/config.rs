//! The `Config` model: what nginx needs, in typed values, each element
//! carrying the object it came from. `build` produces it, `render` turns it
//! into nginx.conf, `/model` shows it as JSON.

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use crate::values::{DnsSubdomain, HostPattern, HttpPath, RegexPath, RewriteTarget};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub http_port: u16,
    pub https_port: u16,
    /// Sized from the longest server name, so nginx can always build its
    /// server name hash.
    pub server_names_hash_bucket_size: u32,
    pub server_names_hash_max_size: u32,
    /// The catch-all server for hosts no rule names.
    pub default_server: Server,
    /// One server per host: exact names first, then wildcards, each sorted.
    /// Shared with the previous config where a server did not change.
    pub servers: Vec<std::sync::Arc<Server>>,
    /// Every upstream a location proxies to, sorted by name.
    pub upstreams: Vec<Upstream>,
    /// Certificates the servers use, sorted by name; the default first.
    pub certificates: Vec<Certificate>,
    /// Global settings (`--configmap`).
    pub settings: crate::settings::Settings,
    /// Snippets (with `allow-snippet-annotations`), referred to by index
    /// from servers and locations. The renderer puts them in raw.
    pub snippets: Vec<String>,
}

/// Where a part of the config came from, for the comments beside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Source {
    pub namespace: String,
    pub name: String,
    /// The field inside the Ingress, such as `spec.rules[0].http.paths[1]`.
    pub field: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Server {
    /// `None` for the catch-all server.
    pub host: Option<HostPattern>,
    /// The `server_name` argument: an exact name, a regular expression for a
    /// wildcard host, or `_` for the catch-all server.
    pub server_name: String,
    /// Name of the certificate this server presents; `None` for a host
    /// that presents the default one. Such a server names no certificate:
    /// after SNI nginx keeps the default server's TLS context for it, so
    /// N hosts do not cost N TLS contexts (and N key loads per reload).
    pub certificate: Option<String>,
    /// The Ingresses that contributed rules to this server (namespace/name).
    pub ingresses: Vec<String>,
    /// The rules that did, oldest Ingress first; the field is
    /// `spec.rules[i]` or `spec.defaultBackend`.
    pub rules: Vec<Source>,
    pub locations: Vec<Location>,
    /// Index of this server's `server-snippet` in [`Config::snippets`].
    pub snippet: Option<usize>,
}

/// How a location matches the request path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Match {
    /// `location = PATH`
    Exact(HttpPath),
    /// `location PATH/`: a prefix ending in `/`, always paired with an exact
    /// location for the path without it.
    PrefixDir(HttpPath),
    /// `location /`: everything no other location matches.
    Root,
    /// `location ~ RE` or `location ~* RE`, anchored with `^`.
    Regex {
        regex: RegexPath,
        case_insensitive: bool,
    },
}

impl Serialize for Match {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (modifier, path) = match self {
            Match::Exact(p) => ("=", p.as_str().to_string()),
            Match::PrefixDir(p) => ("", format!("{}/", p.as_str())),
            Match::Root => ("", "/".to_string()),
            Match::Regex {
                regex,
                case_insensitive,
            } => (
                if *case_insensitive { "~*" } else { "~" },
                format!("^{}", regex.as_str()),
            ),
        };
        let mut st = s.serialize_struct("Match", 2)?;
        st.serialize_field("modifier", modifier)?;
        st.serialize_field("path", &path)?;
        st.end()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Location {
    #[serde(rename = "match")]
    pub matcher: Match,
    pub action: Action,
    /// The Ingress rule path this location serves, or `None` for the
    /// location wicket adds for unmatched requests.
    pub source: Option<Source>,
    /// Index of the Ingress's `configuration-snippet` in [`Config::snippets`].
    pub snippet: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Action {
    /// Proxy to an upstream, optionally rewriting the URI first.
    Proxy {
        upstream: String,
        rewrite: Option<Rewrite>,
    },
    /// Answer with a status and no upstream: 404 for no route, 503 for a
    /// backend without ready endpoints.
    Status { code: u16, reason: String },
}

/// `rewrite "(?i)^REGEX" TARGET break;`
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    /// The full PCRE pattern, anchored, with its case flag.
    pub regex: String,
    pub target: RewriteTarget,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Upstream {
    /// `NAMESPACE_SERVICE_PORT`: unique, since none of the parts may contain
    /// `_`.
    pub name: String,
    /// `namespace/service:port` for the comment.
    pub service: String,
    pub servers: Vec<UpstreamServer>,
}

/// One server of an upstream: an endpoint address, or the DNS name of an
/// `ExternalName` Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpstreamServer {
    Addr(SocketAddr),
    Dns { host: DnsSubdomain, port: u16 },
}

impl fmt::Display for UpstreamServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamServer::Addr(a) => write!(f, "{a}"),
            UpstreamServer::Dns { host, port } => write!(f, "{}:{port}", host.as_str()),
        }
    }
}

impl Serialize for UpstreamServer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A certificate and its key, written to `certs/NAME.crt` and `certs/NAME.key`
/// (mode 0600). The key is never serialized, logged or shown.
#[derive(Clone, PartialEq)]
pub struct Certificate {
    /// `default`, or a hash of the certificate and key.
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Where it came from: `default`, or `secret NAMESPACE/NAME`.
    pub source: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Serialize for Certificate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Certificate", 2)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("source", &self.source)?;
        st.end()
    }
}
