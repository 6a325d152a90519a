//! The `Config` model: what nginx needs, in typed values, each element
//! carrying the object it came from. `build` produces it, `render` turns it
//! into nginx.conf, `/model` shows it as JSON.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::annotations::backend::Protocol;
use crate::annotations::headers::Connection;
use crate::annotations::proxy::Proxy;
use crate::annotations::redirect::Redirect;
use crate::values::{
    Cidr, CipherList, DnsSubdomain, Expandable, HeaderName, HeaderValue, HostPattern, HostPort,
    HttpPath, PlainPath, Protocols, RegexPath, RewriteTarget,
};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub http_port: u16,
    pub https_port: u16,
    /// Sized from the longest server name, so nginx can always build its
    /// server name hash.
    pub server_names_hash_bucket_size: u32,
    pub server_names_hash_max_size: u32,
    /// Sized from the number of variables the config defines (each CORS
    /// origin list, canary and limit zone adds maps), so nginx can always
    /// build its variables hash.
    pub variables_hash_bucket_size: u32,
    pub variables_hash_max_size: u32,
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
    /// Servers that only redirect to their `www.`-less (or `www.`)
    /// counterpart (`from-to-www-redirect`).
    pub www_redirects: Vec<WwwRedirect>,
    /// Response headers for every answer (`add-headers`), and request
    /// headers for every backend (`proxy-set-headers`).
    pub response_headers: Vec<ExpandableHeader>,
    pub request_headers: Vec<ExpandableHeader>,
    /// CA bundles that locations verify backends with and servers verify
    /// client certificates with (and their revocation lists), written to
    /// `certs/NAME.ca.crt`.
    pub trusted: Vec<Trusted>,
    /// Named locations of the global `custom-http-errors`, in every server.
    pub global_error_pages: Vec<ErrorPage>,
    /// The users' files of basic authentication, sorted by name.
    pub htpasswd: Vec<Htpasswd>,
    /// The zones of `limit-connections`, `limit-rps`, `limit-rpm`, sorted
    /// by name.
    pub limit_zones: Vec<LimitZone>,
    /// The allowed origins of `cors-allow-origin` lists, sorted by name.
    pub cors_maps: Vec<CorsMap>,
    /// The CORS header values of the locations, one per profile name,
    /// sorted by it: maps from `$wicket_cors_p` give them, so a location
    /// sets one variable rather than five (each `set` costs nginx a scan
    /// of every declared variable at every load).
    pub cors_profiles: Vec<CorsPolicy>,
    /// Some Ingress has a CORS policy: the http level declares and maps
    /// the variables its locations set (`templates/nginx.conf`).
    pub cors: bool,
    /// Some external auth is cached (`auth-cache-key`): the cache zone.
    pub auth_cache: bool,
    /// The canaries of the locations, each once (their maps).
    pub canaries: Vec<Arc<CanaryChoice>>,
    /// ModSecurity at the http level: `None` when no location uses it (or
    /// its module is not installed), and the module is not loaded.
    pub modsecurity: Option<ModSecurityHttp>,
    /// The rules files of ModSecurity (`modsecurity/NAME.conf`), sorted by
    /// name.
    pub modsecurity_files: Vec<RulesFile>,
    /// The optional nginx modules that are loaded.
    pub modules: Modules,
    /// Endpoints change without a reload (`--dynamic-endpoints` and the
    /// Lua module): every upstream is balanced by `templates/balancer.lua`,
    /// and one without endpoints keeps its block (a placeholder server
    /// answering 503) so that endpoints can come back without a reload.
    pub dynamic_endpoints: bool,
    /// TCP and UDP services (`--tcp-services-configmap`,
    /// `--udp-services-configmap`): nginx's `stream` block, rendered only
    /// when it has servers.
    pub streams: Streams,
}

/// nginx's `stream` block: one server per TCP or UDP service port, sorted
/// by protocol and port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Streams {
    pub servers: Vec<StreamServer>,
    /// `--enable-ssl-passthrough` (with the stream module): the stream
    /// block listens on the HTTPS port and routes TLS by SNI; wicket's
    /// HTTPS servers listen on [`HTTPS_SOCKET`] instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<Passthrough>,
}

impl Streams {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.passthrough.is_none()
    }
}

/// Where wicket's HTTPS servers listen with TLS passthrough on (in the
/// state folder): the stream block sends them every TLS connection that
/// is not passed through, with the PROXY protocol.
pub const HTTPS_SOCKET: &str = "wicket-https.sock";

/// TLS passthrough: the HTTPS port's listener in the stream block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Passthrough {
    pub https_port: u16,
    /// `use-proxy-protocol`: the listener reads the PROXY protocol (from
    /// the networks of `proxy-real-ip-cidr`).
    pub decode_proxy: bool,
    /// The hosts passed through, sorted by host.
    pub hosts: Vec<PassthroughHost>,
}

/// One host whose TLS goes to its backend unterminated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassthroughHost {
    /// The SNI it is chosen by (`*.example.com` for a wildcard).
    pub host: String,
    /// `wicket_passthrough_N`: the upstream of its endpoints, and
    /// `wicket_passthrough_N_in` that of the local server that takes the
    /// PROXY protocol off (socket `wicket-passthrough-N.sock`).
    pub upstream: String,
    pub socket: String,
    /// `namespace/name` of the Ingress and `service:port`, for the comment.
    pub ingress: String,
    pub service: String,
    /// Ready endpoints; empty: connections are closed at once.
    pub servers: Vec<UpstreamServer>,
}

/// `tcp` or `udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamProtocol {
    Tcp,
    Udp,
}

impl StreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamProtocol::Tcp => "tcp",
            StreamProtocol::Udp => "udp",
        }
    }
    /// As Kubernetes writes it (`TCP`, `UDP`).
    pub fn kube(self) -> &'static str {
        match self {
            StreamProtocol::Tcp => "TCP",
            StreamProtocol::Udp => "UDP",
        }
    }
}

/// One TCP or UDP service: what listens on `port` and where it goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamServer {
    pub port: u16,
    pub protocol: StreamProtocol,
    /// `wicket_tcp_PORT` / `wicket_udp_PORT`: its upstream (generated).
    pub upstream: String,
    /// ingress-nginx's `$proxy_upstream_name`: `tcp-NAMESPACE-SERVICE-PORT`.
    pub upstream_label: String,
    /// `namespace/service:port` as the entry names it, for the comment.
    pub service: String,
    /// `NAMESPACE/NAME` of the ConfigMap of the entry (whose key is
    /// `port`), for the comment.
    pub source: String,
    /// Ready endpoints the backend policy allows, sorted; empty: the
    /// server closes every connection at once (`return ""`).
    pub servers: Vec<UpstreamServer>,
    /// The first `PROXY`: the listener reads the PROXY protocol (and the
    /// client address it carries is the connection's, from the networks
    /// of `proxy-real-ip-cidr`).
    pub decode_proxy: bool,
    /// The second `PROXY`: the PROXY protocol is sent to the upstream.
    pub encode_proxy: bool,
}

/// Optional nginx modules (Debian's `libnginx-mod-*` packages), loaded
/// when present: features that need a missing one are refused or left out
/// with a reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Modules {
    /// Where the `.so` files are (`--nginx-modules-dir`).
    pub dir: String,
    /// `ngx_http_headers_more_filter_module`: response headers that replace
    /// the backend's and apply to every status (HSTS, `custom-headers`,
    /// `add-headers`), `more_clear_headers Server`; what snippets written
    /// for ingress-nginx use.
    pub headers_more: bool,
    /// `ngx_http_brotli_filter_module`.
    pub brotli: bool,
    /// `ngx_http_set_misc_module` and the `ndk_http_module` it needs
    /// (`set_escape_uri`, `set_secure_random_alphanum`...): loaded for
    /// snippets written for ingress-nginx, whose image had it.
    pub set_misc: bool,
    /// `ngx_http_subs_filter_module` (`subs_filter`): the same, for the
    /// substitutions filter ingress-nginx's image had.
    pub subs_filter: bool,
    /// `ngx_http_lua_module` (with the `ndk_http_module` it needs and
    /// `lua-resty-core`): the balancer that takes endpoint changes without
    /// a reload.
    pub lua: bool,
    /// `ngx_http_modsecurity_module` (Debian's
    /// `libnginx-mod-http-modsecurity`): ModSecurity, loaded only when an
    /// Ingress or the global ConfigMap turns it on.
    pub modsecurity: bool,
    /// The OWASP Core Rule Set of Debian's `modsecurity-crs` (its setup
    /// file and rules folder).
    pub crs: bool,
    /// `ngx_stream_module` (Debian's `libnginx-mod-stream`): TCP and UDP
    /// services, loaded only when there are some.
    pub stream: bool,
}

/// The file of the headers-more module.
pub const HEADERS_MORE_MODULE: &str = "ngx_http_headers_more_filter_module.so";
/// The file of the brotli module.
pub const BROTLI_MODULE: &str = "ngx_http_brotli_filter_module.so";
/// The file of the Nginx Development Kit, which set-misc needs first.
pub const NDK_MODULE: &str = "ndk_http_module.so";
/// The file of the set-misc module.
pub const SET_MISC_MODULE: &str = "ngx_http_set_misc_module.so";
/// The file of the substitutions filter module.
pub const SUBS_FILTER_MODULE: &str = "ngx_http_subs_filter_module.so";
/// The file of the Lua module.
pub const LUA_MODULE: &str = "ngx_http_lua_module.so";
/// The file of the ModSecurity module.
pub const MODSECURITY_MODULE: &str = "ngx_http_modsecurity_module.so";
/// The file of the stream module.
pub const STREAM_MODULE: &str = "ngx_stream_module.so";
/// The OWASP Core Rule Set's setup file and rules, from Debian's
/// `modsecurity-crs`.
pub const CRS_SETUP: &str = "/etc/modsecurity/crs/crs-setup.conf";
pub const CRS_RULES: &str = "/usr/share/modsecurity-crs/rules";

impl Modules {
    /// The modules installed in `dir`.
    pub fn find(dir: &std::path::Path) -> Modules {
        Modules {
            dir: dir.display().to_string(),
            headers_more: dir.join(HEADERS_MORE_MODULE).is_file(),
            brotli: dir.join(BROTLI_MODULE).is_file(),
            set_misc: dir.join(NDK_MODULE).is_file() && dir.join(SET_MISC_MODULE).is_file(),
            subs_filter: dir.join(SUBS_FILTER_MODULE).is_file(),
            lua: dir.join(NDK_MODULE).is_file() && dir.join(LUA_MODULE).is_file(),
            modsecurity: dir.join(MODSECURITY_MODULE).is_file(),
            crs: std::path::Path::new(CRS_SETUP).is_file()
                && std::path::Path::new(CRS_RULES).is_dir(),
            stream: dir.join(STREAM_MODULE).is_file(),
        }
    }

    /// The `.so` files to load, in order (a module before those that need
    /// it); brotli, Lua, ModSecurity and stream only when they are used.
    pub fn to_load(&self, brotli: bool, lua: bool, modsecurity: bool, stream: bool) -> Vec<String> {
        let lua = self.lua && lua;
        let dir = std::path::Path::new(&self.dir);
        let files = [
            (self.headers_more, HEADERS_MORE_MODULE),
            (self.set_misc || lua, NDK_MODULE),
            (self.set_misc, SET_MISC_MODULE),
            (lua, LUA_MODULE),
            (self.subs_filter, SUBS_FILTER_MODULE),
            (self.brotli && brotli, BROTLI_MODULE),
            (self.modsecurity && modsecurity, MODSECURITY_MODULE),
            (self.stream && stream, STREAM_MODULE),
        ];
        files
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| dir.join(f).display().to_string())
            .collect()
    }
}

/// A server that redirects every request to another host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WwwRedirect {
    pub server_name: String,
    /// The host the requests go to.
    pub to: String,
    /// Its certificate, when it names this host too; else the default.
    pub certificate: Option<String>,
}

/// A header whose value may name nginx variables (from the global
/// ConfigMap, the admin's).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ExpandableHeader {
    pub name: HeaderName,
    pub value: Expandable,
}

/// A literal header (from an Ingress author's ConfigMap).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LiteralHeader {
    pub name: HeaderName,
    pub value: HeaderValue,
}

/// A location's CORS answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CorsPolicy {
    /// The name of its header values in [`Config::cors_profiles`] (what
    /// the location sets `$wicket_cors_p` to): a hash of them, so the same
    /// values have the same name in every build.
    pub profile: String,
    /// The variable of [`Config::cors_maps`] that is 1 for an allowed
    /// `Origin`; `None`: any origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_map: Option<String>,
    /// `*`, or `$http_origin` (an allowed origin, echoed).
    pub allow_origin: String,
    pub methods: String,
    pub headers: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expose: Option<String>,
    pub credentials: bool,
    pub max_age: u32,
}

/// `map $http_origin $NAME`: 1 for these origins (exact strings, and
/// anchored expressions of wildcards).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CorsMap {
    pub name: String,
    pub exact: Vec<String>,
    pub regex: Vec<String>,
}

/// A location's connection and request limits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LocationLimits {
    /// `limit_conn ZONE N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<(String, u32)>,
    /// `limit_req zone=ZONE burst=N nodelay`, per second then per minute.
    pub requests: Vec<(String, u32)>,
}

/// A shared memory zone of `limit_conn_zone` or `limit_req_zone`, keyed by
/// the client's address (empty, so not limited, for the exempt networks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LimitZone {
    pub name: String,
    /// `None`: a connection zone; else the rate (`10r/s`, `100r/m`).
    pub rate: Option<String>,
    /// The variable the zone is keyed by: `$binary_remote_addr`, or one
    /// that is empty for `exempt`.
    pub key: String,
    pub exempt: Vec<Cidr>,
    /// `namespace/name` of the Ingress, for the comment.
    pub ingress: String,
}

/// An external authentication check: `auth_request` to the internal
/// location `location` of each server that uses it, which asks `target`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ExternalAuth {
    /// `/_wicket_auth_HASH` (a hash of everything below).
    pub location: String,
    /// `http://UPSTREAM/PATH?QUERY` or `https://...`: an upstream of
    /// [`Config::upstreams`].
    pub target: String,
    /// The `Host` header of the check.
    pub host: String,
    /// The TLS server name (the host without its port).
    pub tls_name: String,
    pub https: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'static str>,
    /// `X-Auth-Request-Redirect`; `$request_uri` when not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<crate::values::RedirectUrl>,
    /// Headers of the auth answer copied to the backend's request.
    pub response_headers: Vec<AuthHeader>,
    /// `auth-proxy-set-headers`: headers of the check.
    pub set_headers: Vec<ExpandableHeader>,
    /// `proxy_cache_key` and `proxy_cache_valid` entries, when cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    pub cache_valid: Vec<Vec<String>>,
    pub always_set_cookie: bool,
    /// `@wicket_signin_HASH` and the URL a 401 is redirected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signin: Option<(String, String)>,
    /// The sign-in URL names `$escaped_request_uri`, which set-misc sets.
    pub escape_uri: bool,
    /// `auth-snippet` / `global-auth-snippet`: put in the check's location
    /// (by the server, which numbers it).
    #[serde(skip)]
    pub snippet: Option<String>,
    /// The check answers 500: why (the service cannot be reached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    /// From the global keys: `no-auth-locations` exempts paths.
    pub global: bool,
}

/// Where a location's requests are copied to: an internal location of each
/// server that uses it, which proxies to `target`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct MirrorTarget {
    /// `/_wicket_mirror_HASH`.
    pub location: String,
    /// `http://UPSTREAM/PATH`: an upstream of [`Config::upstreams`].
    pub target: String,
    pub host: String,
    pub tls_name: String,
    pub https: bool,
    /// `mirror_request_body`.
    pub body: bool,
    /// The copies are not sent: why (the target cannot be reached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

/// A server's location of an external auth check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthLocation {
    #[serde(flatten)]
    pub auth: Arc<ExternalAuth>,
    /// Its `auth-snippet`, numbered as the server's snippets are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snippet_index: Option<usize>,
}

/// `auth_request_set $VAR $upstream_http_...` and `proxy_set_header NAME $VAR`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct AuthHeader {
    pub name: HeaderName,
    /// `wicket_auth_hN`.
    pub var: String,
    /// `upstream_http_NAME`.
    pub from: String,
}

/// `auth_basic` with the realm, and the users' file `auth/NAME.htpasswd`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BasicAuth {
    pub realm: crate::annotations::auth::Realm,
    pub file: String,
}

/// An htpasswd file, named by a hash of its content, written to
/// `auth/NAME.htpasswd` (readable by nginx's workers, who read it for
/// every request). Its content is never serialized.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Htpasswd {
    pub name: String,
    #[serde(skip)]
    pub content: String,
    /// `secret NAMESPACE/NAME`.
    pub source: String,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// ModSecurity at the http level: `modsecurity on|off` and the rules every
/// location inherits (parsed once, here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModSecurityHttp {
    /// The global `enable-modsecurity` (or `enable-owasp-modsecurity-crs`).
    pub on: bool,
    /// [`RulesFile`] names, in order.
    pub files: Vec<String>,
}

/// ModSecurity in a location.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ModSecurityPolicy {
    /// `modsecurity on`; `false`: `off` (an Ingress that turns the global
    /// setting off).
    pub on: bool,
    /// The OWASP Core Rule Set runs here.
    pub crs: bool,
    /// [`RulesFile`] names added to the http level's, in order.
    pub files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<Expandable>,
}

/// A ModSecurity rules file wicket writes to `modsecurity/NAME.conf`
/// (read by nginx's master when it loads the config).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct RulesFile {
    pub name: String,
    #[serde(skip)]
    pub content: String,
    /// `wicket`, `configmap`, or `ingress NAMESPACE/NAME`.
    pub source: String,
}

impl fmt::Debug for RulesFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RulesFile")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A CA bundle file.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Trusted {
    /// A hash of the content: the file is `certs/NAME.ca.crt`.
    pub name: String,
    #[serde(skip)]
    pub pem: String,
    /// `secret NAMESPACE/NAME`.
    pub source: String,
}

impl fmt::Debug for Trusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trusted")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A named location that answers an intercepted error from a default
/// backend, with ingress-nginx's headers (`X-Code`, `X-Format`,
/// `X-Original-URI`, `X-Namespace`, `X-Ingress-Name`, `X-Service-Name`,
/// `X-Service-Port`, `X-Request-ID`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ErrorPage {
    /// `@wicket_error_UPSTREAM_CODE`.
    pub name: String,
    pub code: u16,
    pub upstream: String,
}

impl ErrorPage {
    pub fn new(upstream: &str, code: u16) -> Self {
        ErrorPage {
            name: format!("@wicket_error_{upstream}_{code}"),
            code,
            upstream: upstream.to_string(),
        }
    }
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
    /// More names for this server (`server-alias`), as `server_name`
    /// arguments.
    pub aliases: Vec<String>,
    /// Some Ingress lists this host under `spec.tls`: HTTP requests are
    /// redirected to HTTPS (`ssl-redirect`) and HTTPS answers carry HSTS.
    pub tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_ciphers: Option<CipherList>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_prefer_server_ciphers: Option<bool>,
    /// `app-root`: `/` redirects here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_root: Option<PlainPath>,
    /// The named locations its locations' `custom-http-errors` use.
    pub error_pages: Vec<ErrorPage>,
    /// The external auth checks its locations ask (an internal location
    /// each), with the index of each one's snippet in [`Config::snippets`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_auths: Vec<AuthLocation>,
    /// The mirror targets its locations copy requests to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Arc<MirrorTarget>>,
    /// Client certificates (`auth-tls-*` of the oldest Ingress of the host
    /// that sets `auth-tls-secret`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// That Ingress's CAs are not usable, for this reason: the whole
    /// server answers 503 (nothing on it is served unverified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth_denied: Option<String>,
}

/// How a server verifies client certificates, with the files it reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ClientAuth {
    /// The CAs: a [`Trusted`] name (`ssl_client_certificate`).
    pub trusted: String,
    /// The revocation lists (`ca.crl`): a [`Trusted`] name (`ssl_crl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl: Option<String>,
    pub verify: crate::annotations::tls::VerifyClient,
    pub verify_depth: u32,
    /// `error_page 495 496 = URL`: a redirect instead of nginx's 400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_page: Option<crate::values::AbsoluteUrl>,
    /// `ssl-client-cert` carries the escaped PEM (else it is removed).
    pub pass_certificate: bool,
    /// A verified certificate whose subject DN does not match gets 403.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_cn: Option<crate::values::SubjectPattern>,
    /// The Ingress that set it (`namespace/name`).
    pub ingress: String,
}

impl ClientAuth {
    /// Whether both verify the same way (whoever set them).
    pub fn same_as(&self, other: &ClientAuth) -> bool {
        ClientAuth {
            ingress: String::new(),
            ..self.clone()
        } == ClientAuth {
            ingress: String::new(),
            ..other.clone()
        }
    }
}

/// How a location matches the request path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Match {
    /// `location = PATH`
    Exact(HttpPath),
    /// `location PATH/`: a prefix ending in `/`, always paired with an exact
    /// location for the path without it.
    PrefixDir(HttpPath),
    /// An `Exact` path that ends in `/`, as `location ~ ^PATH$`: nginx
    /// answers the path without its slash with a 301 for an exact location
    /// ending in `/` that proxies; a regular expression never does.
    ExactSlash(HttpPath),
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
            Match::ExactSlash(p) => ("~", format!("^{}$", RegexPath::literal(p).as_str())),
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
    /// What its Ingress's annotations set; shared by the Ingress's
    /// locations, `None` for one without such annotations.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::render::serialize_policy"
    )]
    pub policy: Option<Arc<LocationPolicy>>,
    /// Plain HTTP requests are redirected to HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<HttpsRedirect>,
    /// ingress-nginx's per-location variables, for error pages and log
    /// formats that name them.
    /// (Boxed: most locations have none, and a location is copied often.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vars: Option<Box<LocationVars>>,
    /// A path of `no-tls-redirect-locations` (ACME's HTTP challenges): on
    /// a server that verifies client certificates, plain HTTP requests are
    /// served there too (as ingress-nginx served them), not refused.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub plain_http: bool,
}

/// `return CODE https://HOST[:PORT]URI` for plain HTTP requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HttpsRedirect {
    pub code: u16,
    /// Keep the trailing `/` (`preserve-trailing-slash`); ingress-nginx
    /// drops one otherwise.
    pub keep_slash: bool,
    /// `use-port-in-redirects`: the HTTPS port.
    pub port: Option<u16>,
}

/// `$namespace`, `$ingress_name`, `$service_name`, `$service_port`,
/// `$location_path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LocationVars {
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub port: String,
    /// The Ingress's path, every `$` written `${wicket_dollar}`.
    pub path: String,
}

/// What an Ingress's annotations set for each of its locations. Fields at
/// their default render nothing (the global settings apply).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct LocationPolicy {
    #[serde(skip_serializing_if = "Proxy::is_empty")]
    pub proxy: Proxy,
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fastcgi: Option<FastCgi>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_ssl: Option<ProxySslFiles>,
    /// The `Host` header the backend sees (`upstream-vhost`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<HostPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    /// `X-Forwarded-Prefix` (with `rewrite-target`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_prefix: Option<PlainPath>,
    /// `custom-headers`: response headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<LiteralHeader>,
    /// Basic authentication (`auth-type: basic`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// `satisfy any`: the access rules or the authentication suffice.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub satisfy_any: bool,
    /// CORS (`enable-cors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
    /// `mirror-target`: copies of its requests go there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Arc<MirrorTarget>>,
    /// What the balancer policy of its upstreams reads (affinity, hashing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceVars>,
    /// External authentication (`auth-url`, or the global `global-auth-url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_auth: Option<Arc<ExternalAuth>>,
    /// ModSecurity (`enable-modsecurity`, `enable-owasp-core-rules`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modsecurity: Option<ModSecurityPolicy>,
    /// `limit-connections`, `limit-rps`, `limit-rpm`: zones of
    /// [`Config::limit_zones`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LocationLimits>,
    /// `limit-rate` and `limit-rate-after`, in KB (0: not set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_rate_after: Option<u32>,
    /// `allow`/`deny` rules, `deny all` last when `deny_rest`; `None`: the
    /// global lists apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessRules>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_access_log: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rewrite_log: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_in_redirect: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_redirects: Option<bool>,
    /// `custom-http-errors`: the codes and where they go.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_pages: Vec<ErrorPage>,
    /// `proxy_intercept_errors`, when the location has error pages.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub intercept_errors: bool,
    /// The location sets request headers of its own, so it repeats the
    /// standard ones (nginx inherits `proxy_set_header` only into a level
    /// that sets none).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub own_headers: bool,
}

impl LocationPolicy {
    /// Sets [`LocationPolicy::own_headers`] from the fields.
    pub fn with_own_headers(mut self) -> Self {
        self.own_headers = self.upstream_host.is_some()
            || self.connection.is_some()
            || self.forwarded_prefix.is_some()
            || self
                .external_auth
                .as_ref()
                .is_some_and(|a| !a.response_headers.is_empty());
        self
    }
}

/// FastCGI: the index file and extra parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FastCgi {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    pub params: Vec<FastCgiParam>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FastCgiParam {
    pub name: String,
    pub value: Expandable,
}

/// TLS to a backend, with the files it reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ProxySslFiles {
    /// A client certificate (a [`Certificate`] name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// A [`Trusted`] name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted: Option<String>,
    pub verify: bool,
    pub verify_depth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<DnsSubdomain>,
    pub server_name: bool,
    pub protocols: Protocols,
    pub ciphers: CipherList,
}

/// Who may reach a location by address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct AccessRules {
    /// In order: `allow` (true) or `deny` (false) of each network.
    pub rules: Vec<AccessRule>,
    pub deny_rest: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct AccessRule {
    pub allow: bool,
    pub network: Cidr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Action {
    /// Proxy to an upstream, optionally rewriting the URI first.
    Proxy {
        upstream: String,
        rewrite: Option<Rewrite>,
        /// A canary Ingress's backend beside `upstream`.
        #[serde(skip_serializing_if = "Option::is_none")]
        canary: Option<Arc<CanaryChoice>>,
    },
    /// Answer with a status and no upstream: 404 for no route, 503 for a
    /// backend without ready endpoints.
    Status { code: u16, reason: String },
    /// `permanent-redirect` / `temporal-redirect`.
    Redirect(Redirect),
    /// The backend has no endpoints: the Ingress's `default-backend`
    /// answers, told why (`X-Code`).
    Fallback {
        upstream: String,
        code: u16,
        reason: String,
    },
}

/// A canary: a second upstream for a location, and which requests go to
/// it. nginx chooses (maps at the http level, `split_clients` for the
/// weight); the balancer then picks an endpoint of the chosen upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CanaryChoice {
    /// `wicket_canary_HASH`: the upstream name a request goes to.
    pub var: String,
    pub main: String,
    pub canary: String,
    /// `http_NAME` of `canary-by-header`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_var: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_pattern: Option<String>,
    /// `cookie_NAME` of `canary-by-cookie`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_var: Option<String>,
    /// The share by weight, `12.5%`, when it is neither none nor all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    /// Every request not decided by header or cookie (weight = total).
    pub weight_all: bool,
    /// The canary Ingress (`namespace/name`), for the comment.
    pub ingress: String,
    /// What the final map reads: `HEADER:COOKIE:WEIGHT`, each `1`, `0` or
    /// empty (the variables of the maps above, or a constant).
    pub source: String,
}

/// `rewrite "(?i)^REGEX" TARGET break;`
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    /// The full PCRE pattern, anchored, with its case flag.
    pub regex: String,
    pub target: RewriteTarget,
}

impl Config {
    /// The upstreams whose servers differ from `old`'s, when that is the
    /// only difference and both configs take endpoint changes without a
    /// reload: what can be sent to the running nginx instead of reloading
    /// it. `None` when anything else differs (or nothing does), or when a
    /// changed upstream has a server that is a DNS name.
    pub fn endpoint_changes<'a>(&'a self, old: &Config) -> Option<Vec<&'a Upstream>> {
        // Every field, so that a new one cannot be forgotten here.
        let Config {
            http_port,
            https_port,
            server_names_hash_bucket_size,
            server_names_hash_max_size,
            variables_hash_bucket_size,
            variables_hash_max_size,
            default_server,
            servers,
            upstreams,
            certificates,
            settings,
            snippets,
            www_redirects,
            response_headers,
            request_headers,
            trusted,
            global_error_pages,
            htpasswd,
            limit_zones,
            cors_maps,
            cors_profiles,
            cors,
            auth_cache,
            canaries,
            modsecurity,
            modsecurity_files,
            modules,
            dynamic_endpoints,
            streams,
        } = self;
        if !*dynamic_endpoints || !old.dynamic_endpoints || upstreams.len() != old.upstreams.len() {
            return None;
        }
        let mut changed = Vec::new();
        for (new, was) in upstreams.iter().zip(&old.upstreams) {
            let Upstream {
                name,
                service,
                servers,
                fixed,
                policy,
            } = new;
            if *name != was.name
                || *service != was.service
                || *fixed != was.fixed
                || *policy != was.policy
            {
                return None;
            }
            if *servers != was.servers {
                if *fixed
                    || servers
                        .iter()
                        .any(|s| !matches!(s, UpstreamServer::Addr(_)))
                {
                    return None;
                }
                changed.push(new);
            }
        }
        let same = *http_port == old.http_port
            && *https_port == old.https_port
            && *server_names_hash_bucket_size == old.server_names_hash_bucket_size
            && *server_names_hash_max_size == old.server_names_hash_max_size
            && *variables_hash_bucket_size == old.variables_hash_bucket_size
            && *variables_hash_max_size == old.variables_hash_max_size
            && *default_server == old.default_server
            && *servers == old.servers
            && *certificates == old.certificates
            && *settings == old.settings
            && *snippets == old.snippets
            && *www_redirects == old.www_redirects
            && *response_headers == old.response_headers
            && *request_headers == old.request_headers
            && *trusted == old.trusted
            && *global_error_pages == old.global_error_pages
            && *htpasswd == old.htpasswd
            && *limit_zones == old.limit_zones
            && *cors_maps == old.cors_maps
            && *cors_profiles == old.cors_profiles
            && *cors == old.cors
            && *auth_cache == old.auth_cache
            && *canaries == old.canaries
            && *modsecurity == old.modsecurity
            && *modsecurity_files == old.modsecurity_files
            && *modules == old.modules
            // Debian's Lua module is http-only: stream upstreams (their
            // endpoints too) change with a reload.
            && *streams == old.streams;
        (same && !changed.is_empty()).then_some(changed)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Upstream {
    /// `NAMESPACE_SERVICE_PORT`: unique, since none of the parts may contain
    /// `_`.
    pub name: String,
    /// `namespace/service:port` for the comment.
    pub service: String,
    pub servers: Vec<UpstreamServer>,
    /// Servers that change only with the Service itself (its cluster IP
    /// for `service-upstream`, an `ExternalName` written as an address):
    /// no balancer, which would cost every request for nothing.
    pub fixed: bool,
    /// How the balancer chooses an endpoint, when not round robin.
    pub policy: Option<BalancePolicy>,
}

/// The variables a location sets for its upstreams' balancer policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BalanceVars {
    /// `upstream-hash-by`: `$wicket_hash_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<Expandable>,
    /// `upstream-hash-by-subset-size`: `$wicket_hash_subset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<StickyCookie>,
}

/// Cookie affinity's cookie: `$wicket_sticky_name`, `$wicket_sticky_attrs`
/// (what follows `NAME=VALUE`), `$wicket_sticky_expires` (seconds, for
/// `Expires`), `$wicket_sticky_change` (change on failure).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct StickyCookie {
    pub name: String,
    /// `session-cookie-path`; else the location's path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `; Domain=...; Max-Age=...; SameSite=...[; Secure]`, validated parts.
    pub attrs: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<u32>,
    pub change_on_failure: bool,
}

/// A balancer policy of an upstream (templates/balancer.lua): it reads
/// its parameters from variables the location sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalancePolicy {
    /// Cookie affinity, a random token per client hashed onto the
    /// endpoints (`affinity-mode: balanced`).
    Sticky,
    /// Cookie affinity, the cookie naming the endpoint (`persistent`).
    StickyPersistent,
    /// `upstream-hash-by`: the key hashed onto the endpoints.
    Hash,
    /// `upstream-hash-by-subset`: onto a subset, then one at random.
    HashSubset,
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
