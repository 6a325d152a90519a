//! Global settings from the ConfigMap named by `--configmap`, with
//! ingress-nginx's key names and defaults (differences are in the
//! registry's notes). Each key is parsed into a typed value; a bad value is
//! reported and its default kept, so it never takes the running config
//! down. Keys wicket does not act on are reported once with their registry
//! note.

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use crate::annotations::access::ranges;
use crate::annotations::proxy::{
    CookieRewrite, HttpVersion, NextUpstream, RedirectRewrite, buffers_number, redirect_part,
    redirect_rewrite, tries,
};
use crate::annotations::registry;
use crate::cluster::ObjectRef;
use crate::problem::{Problem, Quoted};
use crate::values::{
    Cidr, CipherList, Expandable, HeaderName, Invalid, MatchPattern, NamespacedName, NginxTime,
    Protocols, Seconds, Size, parse_bool, parse_codes, parse_count, parse_list, parse_mime_types,
};

/// ingress-nginx's default access log format (`log-format-upstream`).
pub const DEFAULT_LOG_FORMAT: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_length $request_time [$proxy_upstream_name] [$proxy_alternative_upstream_name] $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $req_id";

/// ingress-nginx's default `log-format-stream`.
pub const DEFAULT_STREAM_LOG_FORMAT: &str =
    "[$remote_addr] [$time_local] $protocol $status $bytes_sent $bytes_received $session_time";

/// ingress-nginx's default `gzip-types`.
pub const DEFAULT_GZIP_TYPES: &str = "application/atom+xml application/javascript application/x-javascript application/json application/rss+xml application/vnd.ms-fontobject application/x-font-ttf application/x-web-app-manifest+json application/xhtml+xml application/xml font/opentype image/svg+xml image/x-icon text/css text/javascript text/plain text/x-component";

/// ingress-nginx's default `ssl-ciphers`.
pub const DEFAULT_SSL_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256";

/// `large_client_header_buffers NUMBER SIZE`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Buffers {
    pub number: u32,
    pub size: Size,
}

impl Buffers {
    fn parse(s: &str) -> Result<Self, Invalid> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [n, size] = parts[..] else {
            return Err(Invalid("must be NUMBER SIZE, such as 4 8k".into()));
        };
        Ok(Buffers {
            number: parse_count(n, 1, 1024)?,
            size: Size::parse(size)?,
        })
    }
}

/// `worker_processes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Workers {
    #[serde(serialize_with = "auto")]
    Auto,
    Count(u32),
}

fn auto<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("auto")
}

/// How the access log escapes variable values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Escape {
    Default,
    Json,
    None,
}

/// `error_log`'s level.
fn log_level(s: &str) -> Result<String, Invalid> {
    match s {
        "debug" | "info" | "notice" | "warn" | "error" | "crit" | "alert" | "emerg" => {
            Ok(s.to_string())
        }
        _ => Err(Invalid(
            "must be debug, info, notice, warn, error, crit, alert or emerg".into(),
        )),
    }
}

/// A path prefix of `no-tls-redirect-locations`.
fn path_prefix(s: &str) -> Result<String, Invalid> {
    crate::values::PlainPath::parse(s).map(|p| p.as_str().to_string())
}

/// The settings the templates use.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Settings {
    /// `allow-snippet-annotations`: whether Ingress authors may put raw nginx
    /// configuration in (`server-snippet`, `configuration-snippet`).
    pub allow_snippet_annotations: bool,
    /// `allow-cross-namespace-resources`: annotations may name Secrets and
    /// ConfigMaps of other namespaces.
    pub allow_cross_namespace_resources: bool,

    pub proxy_body_size: Size,
    pub client_body_buffer_size: Size,
    pub client_header_buffer_size: Size,
    pub large_client_header_buffers: Buffers,
    pub proxy_connect_timeout: Seconds,
    pub proxy_read_timeout: Seconds,
    pub proxy_send_timeout: Seconds,
    pub proxy_buffering: bool,
    pub proxy_buffer_size: Size,
    pub proxy_buffers_number: u32,
    pub proxy_busy_buffers_size: Option<Size>,
    pub proxy_request_buffering: bool,
    pub proxy_next_upstream: NextUpstream,
    pub proxy_next_upstream_tries: u32,
    pub proxy_next_upstream_timeout: Seconds,
    pub proxy_http_version: HttpVersion,
    /// The most of one response nginx buffers on disk while the client
    /// reads slowly (past it, nginx reads from the upstream only as fast as
    /// the client does).
    pub proxy_max_temp_file_size: Size,
    pub proxy_cookie_domain: CookieRewrite,
    pub proxy_cookie_path: CookieRewrite,
    pub proxy_redirect: RedirectRewrite,

    pub ssl_redirect: bool,
    pub force_ssl_redirect: bool,
    pub preserve_trailing_slash: bool,
    pub use_port_in_redirects: bool,
    pub relative_redirects: bool,
    pub http_redirect_code: u16,
    /// `limit-req-status-code` and `limit-conn-status-code`: the answer to
    /// a request over a limit (default 503).
    pub limit_req_status_code: u16,
    pub limit_conn_status_code: u16,
    /// Path prefixes never redirected to HTTPS (ACME challenges).
    pub no_tls_redirect_locations: Vec<String>,

    pub ssl_protocols: Protocols,
    pub ssl_ciphers: CipherList,
    pub ssl_prefer_server_ciphers: bool,
    pub hsts: bool,
    pub hsts_max_age: u32,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
    pub use_http2: bool,

    pub worker_processes: Workers,
    /// `worker-shutdown-timeout`: how long old workers may finish requests
    /// after a reload.
    pub worker_shutdown_timeout: Seconds,
    pub max_worker_connections: u32,
    /// `keep-alive`: how long an idle client connection stays open.
    pub keep_alive: Seconds,
    pub keep_alive_requests: u32,
    /// `upstream-keepalive-connections`: idle connections kept per upstream
    /// and worker.
    pub upstream_keepalive_connections: u32,
    pub upstream_keepalive_requests: u32,
    pub upstream_keepalive_timeout: Seconds,
    pub upstream_keepalive_time: NginxTime,

    pub use_forwarded_headers: bool,
    pub compute_full_forwarded_for: bool,
    pub forwarded_for_header: HeaderName,
    pub enable_real_ip: bool,
    pub proxy_real_ip_cidr: Vec<Cidr>,
    pub use_proxy_protocol: bool,

    pub log_format_upstream: Expandable,
    pub log_escape: Escape,
    pub error_log_level: String,
    pub disable_access_log: bool,

    pub custom_http_errors: Vec<u16>,
    /// ConfigMaps of response headers for every answer, and of request
    /// headers for every backend (`add-headers`, `proxy-set-headers`).
    pub add_headers: Option<NamespacedName>,
    pub proxy_set_headers: Option<NamespacedName>,
    /// Header names `custom-headers` may set (lowercase).
    pub global_allowed_response_headers: Vec<String>,

    pub use_gzip: bool,
    pub gzip_level: u32,
    pub gzip_min_length: u32,
    pub gzip_types: Vec<String>,
    pub enable_brotli: bool,
    pub brotli_level: u32,
    pub brotli_min_length: u32,
    pub brotli_types: Vec<String>,
    pub server_tokens: bool,
    pub server_name_hash_bucket_size: Option<u32>,
    /// A floor for `server_names_hash_max_size` (wicket sizes it from the
    /// number of exact names, and never below this).
    pub server_name_hash_max_size: u32,
    /// `variables_hash_bucket_size` and a floor for
    /// `variables_hash_max_size` (wicket raises it with the number of maps
    /// the Ingresses generate, so that nginx can always build the hash).
    pub variables_hash_bucket_size: u32,
    pub variables_hash_max_size: u32,

    pub block_cidrs: Vec<Cidr>,
    pub block_user_agents: Vec<MatchPattern>,
    pub block_referers: Vec<MatchPattern>,
    pub whitelist_source_range: Vec<Cidr>,
    pub denylist_source_range: Vec<Cidr>,
    pub service_upstream: bool,

    /// `enable-modsecurity`: ModSecurity in every location (the Ingresses
    /// that say `enable-modsecurity: "false"` excepted).
    pub enable_modsecurity: bool,
    /// `enable-owasp-modsecurity-crs`: the OWASP Core Rule Set, blocking,
    /// in every location (ModSecurity on with it).
    pub enable_owasp_modsecurity_crs: bool,
    /// `modsecurity-snippet`: ModSecurity rules at the http level, after
    /// wicket's.
    pub modsecurity_snippet: Option<crate::annotations::modsecurity::Rules>,

    /// Protection keys that are set but not supported: every Ingress they
    /// apply to is refused, with these reasons (key, why).
    pub refused: Vec<(String, String)>,
    /// `global-auth-*`: the external authentication of every Ingress that
    /// does not opt out with `enable-global-auth: "false"`.
    #[serde(skip)]
    pub global_auth: crate::annotations::extauth::GlobalAuth,
    /// `no-auth-locations`: Ingress paths under these get no global auth.
    pub no_auth_locations: Vec<String>,
    /// `enable-auth-access-log`: log the auth subrequests.
    pub enable_auth_access_log: bool,
    /// `load-balance`: the default of the annotation.
    #[serde(skip)]
    pub load_balance: Option<crate::annotations::balance::Method>,
    /// `upstream-hash-by` (with `-subset`, `-subset-size`): the default of
    /// the annotations.
    #[serde(skip)]
    pub upstream_hash_by: Option<Expandable>,
    pub upstream_hash_by_subset: bool,
    pub upstream_hash_by_subset_size: u32,

    /// The stream block (TCP and UDP services): `proxy-stream-timeout`,
    /// `proxy-stream-next-upstream`, its `-timeout` and `-tries`,
    /// `proxy-stream-responses` (UDP), `log-format-stream`,
    /// `disable-stream-access-log`.
    pub proxy_stream_timeout: NginxTime,
    pub proxy_stream_next_upstream: bool,
    pub proxy_stream_next_upstream_timeout: NginxTime,
    pub proxy_stream_next_upstream_tries: u32,
    pub proxy_stream_responses: u32,
    pub log_format_stream: Expandable,
    pub disable_stream_access_log: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allow_snippet_annotations: false,
            allow_cross_namespace_resources: false,
            proxy_body_size: Size::of("1m"),
            client_body_buffer_size: Size::of("8k"),
            client_header_buffer_size: Size::of("1k"),
            large_client_header_buffers: Buffers {
                number: 4,
                size: Size::of("8k"),
            },
            proxy_connect_timeout: Seconds(5),
            proxy_read_timeout: Seconds(60),
            proxy_send_timeout: Seconds(60),
            proxy_buffering: false,
            proxy_buffer_size: Size::of("4k"),
            proxy_buffers_number: 4,
            proxy_busy_buffers_size: None,
            proxy_request_buffering: true,
            proxy_next_upstream: NextUpstream::of("error timeout"),
            proxy_next_upstream_tries: 3,
            proxy_next_upstream_timeout: Seconds(0),
            proxy_http_version: HttpVersion::V11,
            proxy_max_temp_file_size: Size::of("128m"),
            proxy_cookie_domain: CookieRewrite::Off,
            proxy_cookie_path: CookieRewrite::Off,
            proxy_redirect: RedirectRewrite::Off,
            ssl_redirect: true,
            force_ssl_redirect: false,
            preserve_trailing_slash: false,
            use_port_in_redirects: false,
            relative_redirects: false,
            http_redirect_code: 308,
            limit_req_status_code: 503,
            limit_conn_status_code: 503,
            no_tls_redirect_locations: vec!["/.well-known/acme-challenge".into()],
            ssl_protocols: Protocols::of("TLSv1.2 TLSv1.3"),
            ssl_ciphers: CipherList::of(DEFAULT_SSL_CIPHERS),
            ssl_prefer_server_ciphers: true,
            hsts: true,
            hsts_max_age: 31_536_000,
            hsts_include_subdomains: true,
            hsts_preload: false,
            use_http2: true,
            worker_processes: Workers::Auto,
            worker_shutdown_timeout: Seconds(10),
            max_worker_connections: 16_384,
            keep_alive: Seconds(75),
            keep_alive_requests: 1000,
            upstream_keepalive_connections: 32,
            upstream_keepalive_requests: 10_000,
            upstream_keepalive_timeout: Seconds(60),
            upstream_keepalive_time: NginxTime::of("1h"),
            use_forwarded_headers: false,
            compute_full_forwarded_for: false,
            forwarded_for_header: HeaderName::parse("X-Forwarded-For").expect("valid"),
            enable_real_ip: false,
            proxy_real_ip_cidr: vec![Cidr::parse("0.0.0.0/0").expect("valid")],
            use_proxy_protocol: false,
            log_format_upstream: Expandable::parse(DEFAULT_LOG_FORMAT, 4096).expect("valid"),
            log_escape: Escape::Default,
            error_log_level: "notice".into(),
            disable_access_log: false,
            custom_http_errors: Vec::new(),
            add_headers: None,
            proxy_set_headers: None,
            global_allowed_response_headers: Vec::new(),
            use_gzip: false,
            gzip_level: 1,
            gzip_min_length: 256,
            gzip_types: DEFAULT_GZIP_TYPES.split(' ').map(String::from).collect(),
            enable_brotli: false,
            brotli_level: 4,
            brotli_min_length: 20,
            brotli_types: std::iter::once("application/xml+rss")
                .chain(DEFAULT_GZIP_TYPES.split(' '))
                .map(String::from)
                .collect(),
            server_tokens: false,
            server_name_hash_bucket_size: None,
            server_name_hash_max_size: 1024,
            variables_hash_bucket_size: 256,
            variables_hash_max_size: 2048,
            block_cidrs: Vec::new(),
            block_user_agents: Vec::new(),
            block_referers: Vec::new(),
            whitelist_source_range: Vec::new(),
            denylist_source_range: Vec::new(),
            service_upstream: false,
            enable_modsecurity: false,
            enable_owasp_modsecurity_crs: false,
            modsecurity_snippet: None,
            refused: Vec::new(),
            global_auth: Default::default(),
            no_auth_locations: vec!["/.well-known/acme-challenge".into()],
            enable_auth_access_log: false,
            load_balance: None,
            upstream_hash_by: None,
            upstream_hash_by_subset: false,
            upstream_hash_by_subset_size: 3,
            proxy_stream_timeout: NginxTime::of("600s"),
            proxy_stream_next_upstream: true,
            proxy_stream_next_upstream_timeout: NginxTime::of("600s"),
            proxy_stream_next_upstream_tries: 3,
            proxy_stream_responses: 1,
            log_format_stream: Expandable::parse_stream(DEFAULT_STREAM_LOG_FORMAT, 4096)
                .expect("valid"),
            disable_stream_access_log: false,
        }
    }
}

fn seconds(s: &str) -> Result<Seconds, Invalid> {
    Seconds::parse(s)
}

fn on_off_or_bool(s: &str) -> Result<bool, Invalid> {
    crate::values::parse_on_off(s).or_else(|_| parse_bool(s))
}

/// An error status nginx's limit modules may answer: 400 to 599.
fn error_status(value: &str) -> Result<u16, Invalid> {
    crate::values::nginx::parse_count(value, 400, 599).map(|n| n as u16)
}

impl Settings {
    /// Applies one key. `Ok(false)`: wicket does not act on this key.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<bool, Invalid> {
        let s = self;
        match key {
            "allow-snippet-annotations" => s.allow_snippet_annotations = parse_bool(value)?,
            "allow-cross-namespace-resources" => {
                s.allow_cross_namespace_resources = parse_bool(value)?
            }
            "proxy-body-size" => s.proxy_body_size = Size::parse(value)?,
            "limit-req-status-code" => s.limit_req_status_code = error_status(value)?,
            "limit-conn-status-code" => s.limit_conn_status_code = error_status(value)?,
            "client-body-buffer-size" => s.client_body_buffer_size = Size::parse(value)?,
            "client-header-buffer-size" => s.client_header_buffer_size = Size::parse(value)?,
            "large-client-header-buffers" => s.large_client_header_buffers = Buffers::parse(value)?,
            "proxy-connect-timeout" => s.proxy_connect_timeout = seconds(value)?,
            "proxy-read-timeout" => s.proxy_read_timeout = seconds(value)?,
            "proxy-send-timeout" => s.proxy_send_timeout = seconds(value)?,
            "proxy-buffering" => s.proxy_buffering = on_off_or_bool(value)?,
            "proxy-buffer-size" => s.proxy_buffer_size = Size::parse(value)?,
            "proxy-buffers-number" => s.proxy_buffers_number = buffers_number(value)?,
            "proxy-busy-buffers-size" => {
                s.proxy_busy_buffers_size = (!value.is_empty())
                    .then(|| Size::parse(value))
                    .transpose()?
            }
            "proxy-request-buffering" => s.proxy_request_buffering = on_off_or_bool(value)?,
            "proxy-next-upstream" => s.proxy_next_upstream = NextUpstream::parse(value)?,
            "proxy-next-upstream-tries" => s.proxy_next_upstream_tries = tries(value)?,
            "proxy-next-upstream-timeout" => s.proxy_next_upstream_timeout = seconds(value)?,
            "proxy-http-version" => s.proxy_http_version = HttpVersion::parse(value)?,
            "proxy-max-temp-file-size" => s.proxy_max_temp_file_size = Size::parse(value)?,
            "proxy-cookie-domain" => s.proxy_cookie_domain = CookieRewrite::parse_domain(value)?,
            "proxy-cookie-path" => s.proxy_cookie_path = CookieRewrite::parse_path(value)?,
            // Combined with the other key by `apply_redirect`; checked here.
            "proxy-redirect-from" | "proxy-redirect-to" => {
                if !matches!(value, "off" | "default") {
                    redirect_part(value)?;
                }
            }
            "ssl-redirect" => s.ssl_redirect = parse_bool(value)?,
            "force-ssl-redirect" => s.force_ssl_redirect = parse_bool(value)?,
            "preserve-trailing-slash" => s.preserve_trailing_slash = parse_bool(value)?,
            "use-port-in-redirects" => s.use_port_in_redirects = parse_bool(value)?,
            "relative-redirects" => s.relative_redirects = parse_bool(value)?,
            "http-redirect-code" => {
                s.http_redirect_code = match value {
                    "301" | "302" | "307" | "308" => value.parse().expect("digits"),
                    _ => return Err(Invalid("must be 301, 302, 307 or 308".into())),
                }
            }
            "no-tls-redirect-locations" => {
                s.no_tls_redirect_locations = parse_list(value, 64, path_prefix)?
            }
            "ssl-protocols" => s.ssl_protocols = Protocols::parse(value)?,
            "ssl-ciphers" => s.ssl_ciphers = CipherList::parse(value)?,
            "ssl-prefer-server-ciphers" => s.ssl_prefer_server_ciphers = on_off_or_bool(value)?,
            "hsts" => s.hsts = parse_bool(value)?,
            "hsts-max-age" => s.hsts_max_age = parse_count(value, 0, 1_000_000_000)?,
            "hsts-include-subdomains" => s.hsts_include_subdomains = parse_bool(value)?,
            "hsts-preload" => s.hsts_preload = parse_bool(value)?,
            "use-http2" => s.use_http2 = parse_bool(value)?,
            "worker-processes" => {
                s.worker_processes = match value {
                    "auto" => Workers::Auto,
                    n => Workers::Count(parse_count(n, 1, 1024)?),
                }
            }
            "worker-shutdown-timeout" => s.worker_shutdown_timeout = seconds(value)?,
            "max-worker-connections" => {
                s.max_worker_connections = match parse_count(value, 0, 1_048_576)? {
                    0 => 16_384,
                    n => n.max(64),
                }
            }
            "keep-alive" => s.keep_alive = seconds(value)?,
            "keep-alive-requests" => s.keep_alive_requests = parse_count(value, 1, 1_000_000)?,
            "upstream-keepalive-connections" => {
                s.upstream_keepalive_connections = parse_count(value, 0, 100_000)?
            }
            "upstream-keepalive-requests" => {
                s.upstream_keepalive_requests = parse_count(value, 1, 10_000_000)?
            }
            "upstream-keepalive-timeout" => s.upstream_keepalive_timeout = seconds(value)?,
            "upstream-keepalive-time" => s.upstream_keepalive_time = NginxTime::parse(value)?,
            "use-forwarded-headers" => s.use_forwarded_headers = parse_bool(value)?,
            "compute-full-forwarded-for" => s.compute_full_forwarded_for = parse_bool(value)?,
            "forwarded-for-header" => s.forwarded_for_header = HeaderName::parse(value)?,
            "enable-real-ip" => s.enable_real_ip = parse_bool(value)?,
            "proxy-real-ip-cidr" => s.proxy_real_ip_cidr = ranges(value)?,
            "use-proxy-protocol" => s.use_proxy_protocol = parse_bool(value)?,
            "log-format-upstream" => s.log_format_upstream = Expandable::parse(value, 4096)?,
            "log-format-escape-json" => {
                if parse_bool(value)? {
                    if s.log_escape != Escape::None {
                        s.log_escape = Escape::Json;
                    }
                } else if s.log_escape == Escape::Json {
                    s.log_escape = Escape::Default;
                }
            }
            "log-format-escape-none" => {
                if parse_bool(value)? {
                    s.log_escape = Escape::None;
                } else if s.log_escape == Escape::None {
                    s.log_escape = Escape::Default;
                }
            }
            "error-log-level" => s.error_log_level = log_level(value)?,
            "disable-access-log" => s.disable_access_log = parse_bool(value)?,
            "custom-http-errors" => s.custom_http_errors = parse_codes(value, 300, 599)?,
            "add-headers" => s.add_headers = Some(NamespacedName::parse(value)?),
            "proxy-set-headers" => s.proxy_set_headers = Some(NamespacedName::parse(value)?),
            "global-allowed-response-headers" => {
                s.global_allowed_response_headers = parse_list(value, 256, |h| {
                    HeaderName::parse(h).map(|n| n.as_str().to_ascii_lowercase())
                })?
            }
            "use-gzip" => s.use_gzip = parse_bool(value)?,
            "gzip-level" => s.gzip_level = parse_count(value, 1, 9)?,
            "gzip-min-length" => s.gzip_min_length = parse_count(value, 0, 1 << 30)?,
            "gzip-types" => s.gzip_types = parse_mime_types(value)?,
            "enable-brotli" => s.enable_brotli = parse_bool(value)?,
            "brotli-level" => s.brotli_level = parse_count(value, 0, 11)?,
            "brotli-min-length" => s.brotli_min_length = parse_count(value, 0, 1 << 30)?,
            "brotli-types" => s.brotli_types = parse_mime_types(value)?,
            "server-tokens" => s.server_tokens = parse_bool(value)?,
            "server-name-hash-bucket-size" => {
                let n = parse_count(value, 32, 65_536)?;
                if !n.is_power_of_two() {
                    return Err(Invalid("must be a power of two".into()));
                }
                s.server_name_hash_bucket_size = Some(n);
            }
            "server-name-hash-max-size" => {
                s.server_name_hash_max_size = parse_count(value, 512, 1 << 20)?
            }
            "variables-hash-bucket-size" => {
                let n = parse_count(value, 64, 65_536)?;
                if !n.is_power_of_two() {
                    return Err(Invalid("must be a power of two".into()));
                }
                s.variables_hash_bucket_size = n;
            }
            "variables-hash-max-size" => {
                s.variables_hash_max_size = parse_count(value, 512, 1 << 20)?
            }
            "block-cidrs" => s.block_cidrs = ranges(value)?,
            "block-user-agents" => {
                s.block_user_agents = parse_list(value, 1024, MatchPattern::parse)?
            }
            "block-referers" => s.block_referers = parse_list(value, 1024, MatchPattern::parse)?,
            "whitelist-source-range" => s.whitelist_source_range = ranges(value)?,
            "denylist-source-range" => s.denylist_source_range = ranges(value)?,
            "service-upstream" => s.service_upstream = parse_bool(value)?,
            "no-auth-locations" => {
                s.no_auth_locations = value
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| crate::values::PlainPath::parse(p).map(|p| p.as_str().to_string()))
                    .collect::<Result<_, _>>()?
            }
            "enable-auth-access-log" => s.enable_auth_access_log = parse_bool(value)?,
            "load-balance" => {
                s.load_balance = (!value.is_empty())
                    .then(|| crate::annotations::balance::method(value))
                    .transpose()?
            }
            "upstream-hash-by" => {
                s.upstream_hash_by = (!value.is_empty())
                    .then(|| Expandable::parse(value, 256))
                    .transpose()?
            }
            "upstream-hash-by-subset" => s.upstream_hash_by_subset = parse_bool(value)?,
            "upstream-hash-by-subset-size" => {
                s.upstream_hash_by_subset_size = parse_count(value, 1, 1024)?
            }
            "proxy-stream-timeout" => s.proxy_stream_timeout = NginxTime::parse(value)?,
            "proxy-stream-next-upstream" => s.proxy_stream_next_upstream = parse_bool(value)?,
            "proxy-stream-next-upstream-timeout" => {
                s.proxy_stream_next_upstream_timeout = NginxTime::parse(value)?
            }
            "proxy-stream-next-upstream-tries" => {
                s.proxy_stream_next_upstream_tries = tries(value)?
            }
            "proxy-stream-responses" => {
                s.proxy_stream_responses = parse_count(value, 0, 1_000_000)?
            }
            "log-format-stream" => s.log_format_stream = Expandable::parse_stream(value, 4096)?,
            "disable-stream-access-log" => s.disable_stream_access_log = parse_bool(value)?,
            k if k.starts_with("global-auth-") => return s.global_auth.apply(k, value),
            "enable-modsecurity" => s.enable_modsecurity = parse_bool(value)?,
            "enable-owasp-modsecurity-crs" => s.enable_owasp_modsecurity_crs = parse_bool(value)?,
            "modsecurity-snippet" => {
                s.modsecurity_snippet = Some(crate::annotations::modsecurity::Rules::parse(
                    value,
                    crate::annotations::modsecurity::MAX_GLOBAL_RULES_LEN,
                )?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `proxy-redirect-from` and `proxy-redirect-to`, once both are known.
    fn apply_redirect(&mut self, from: Option<&str>, to: Option<&str>) {
        if from.is_none() && to.is_none() {
            return;
        }
        if let Ok(Some(r)) = redirect_rewrite(from.unwrap_or("off"), to.unwrap_or("off")) {
            self.proxy_redirect = r;
        }
    }

    /// Reads a ConfigMap's `data`.
    pub fn from_config_map(
        cm: &ConfigMap,
        object: &ObjectRef,
        problems: &mut Vec<Problem>,
    ) -> Settings {
        let mut s = Settings::default();
        let data = cm.data.as_ref();
        // The escape keys depend on each other: none wins over json.
        let mut keys: Vec<(&String, &String)> = data.into_iter().flatten().collect();
        keys.sort_by_key(|(k, _)| (k.as_str() == "log-format-escape-none", k.as_str()));
        for (key, value) in keys {
            let field = Some(format!("data[{}]", Quoted(key)));
            match s.apply(key, value) {
                Ok(true) => {}
                Ok(false) => match registry::key_row(key) {
                    Some(row) if row.protection => {
                        let on = !value.is_empty() && value != "false";
                        if on {
                            s.refused
                                .push((key.clone(), row.support.note().to_string()));
                            problems.push(Problem::warning(
                                object,
                                field,
                                format!(
                                    "{}: Ingresses are refused while it is set",
                                    row.support.note()
                                ),
                            ));
                        }
                    }
                    Some(row) => problems.push(Problem::ignored(
                        object,
                        field,
                        format!("{}; ignored", row.support.note()),
                    )),
                    None => problems.push(Problem::ignored(
                        object,
                        field,
                        "not an ingress-nginx key; ignored",
                    )),
                },
                // A protection key that does not parse would leave the
                // backends open at its default: what it applies to is
                // refused instead.
                Err(e) if registry::key_row(key).is_some_and(|r| r.protection) => {
                    s.refused
                        .push((key.clone(), format!("{} is not valid: {e}", Quoted(value))));
                    problems.push(Problem::warning(
                        object,
                        field,
                        format!(
                            "{}: {e}; it protects the backends, so Ingresses are refused while it is not valid",
                            Quoted(value)
                        ),
                    ));
                }
                Err(e) => problems.push(Problem::warning(
                    object,
                    field,
                    format!("{}: {e}; the default is used", Quoted(value)),
                )),
            }
        }
        if s.load_balance == Some(crate::annotations::balance::Method::Ewma) {
            problems.push(Problem::warning(
                object,
                Some("data[\"load-balance\"]".into()),
                "ewma is balanced round robin by wicket (its balancer has no latency tracking)",
            ));
        }
        let get = |k: &str| data.and_then(|d| d.get(k)).map(String::as_str);
        s.apply_redirect(get("proxy-redirect-from"), get("proxy-redirect-to"));
        s
    }

    /// Whether a protection key that is set but not supported refuses
    /// this Ingress, and why (`enable-global-auth: "false"` opts an Ingress
    /// out of the global auth keys, as in ingress-nginx).
    pub fn refuses(&self, global_auth_opt_out: bool) -> Option<String> {
        let reasons: Vec<String> = self
            .refused
            .iter()
            .filter(|(k, _)| !(global_auth_opt_out && k.starts_with("global-auth-")))
            .map(|(k, why)| format!("the global setting {k} is set: {why}"))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// The `Strict-Transport-Security` value.
    pub fn hsts_value(&self) -> Option<String> {
        self.hsts.then(|| {
            let mut v = format!("max-age={}", self.hsts_max_age);
            if self.hsts_include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if self.hsts_preload {
                v.push_str("; preload");
            }
            v
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Kind, ObjectKey};

    #[test]
    fn parses_known_keys_and_reports_the_rest() {
        let cm: ConfigMap = serde_yaml::from_str(
            "metadata: {name: c}\ndata: {proxy-body-size: 8M, proxy-read-timeout: '120', worker-shutdown-timeout: 30s, keep-alive: x;, use-geoip2: 'true', no-such-key: x}",
        )
        .unwrap();
        let r = ObjectRef::new(Kind::ConfigMap, ObjectKey::new("ns", "c"));
        let mut problems = Vec::new();
        let s = Settings::from_config_map(&cm, &r, &mut problems);
        assert_eq!(s.proxy_body_size, Size::of("8m"));
        assert_eq!(s.proxy_read_timeout, Seconds(120));
        assert_eq!(s.worker_shutdown_timeout, Seconds(30));
        assert_eq!(s.keep_alive, Seconds(75));
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "warning configmap ns/c: data[\"keep-alive\"]: \"x;\": must be a whole number of seconds up to 86400, such as 60 or 60s; the default is used",
                "ignored configmap ns/c: data[\"no-such-key\"]: not an ingress-nginx key; ignored",
                "ignored configmap ns/c: data[\"use-geoip2\"]: not supported yet; ignored",
            ]
        );
    }

    #[test]
    fn every_key_wicket_acts_on_has_a_row_and_its_example_applies() {
        for row in registry::KEYS {
            let mut s = Settings::default();
            let applied = s.apply(row.name, row.example);
            if row.support.acted_on() {
                assert_eq!(applied, Ok(true), "{}: {:?}", row.name, row.example);
                if !matches!(row.name, "proxy-redirect-from" | "proxy-redirect-to")
                    && !row.name.starts_with("log-format-escape")
                {
                    assert_ne!(s, Settings::default(), "{} changed nothing", row.name);
                }
            } else {
                assert_eq!(
                    applied,
                    Ok(false),
                    "{} is unsupported but applied",
                    row.name
                );
            }
        }
    }

    #[test]
    fn hostile_values_keep_the_default() {
        for (k, v) in [
            ("proxy-body-size", "1m; root /"),
            ("ssl-ciphers", "HIGH\"; ssl_protocols SSLv3"),
            ("log-format-upstream", "$remote_addr $nope"),
            ("log-format-upstream", "a\nb"),
            ("block-cidrs", "10.0.0.0/8 allow all"),
            ("block-user-agents", "~*(unclosed"),
            ("http-redirect-code", "200"),
            ("error-log-level", "debug;"),
            ("forwarded-for-header", "X Forwarded"),
            ("gzip-types", "text/html; gzip off"),
            ("no-tls-redirect-locations", "/.well-known/$x"),
            ("worker-processes", "0"),
            ("enable-modsecurity", "on;"),
            ("enable-owasp-modsecurity-crs", "yes"),
            ("modsecurity-snippet", "SecRuleEngine On\0"),
            ("modsecurity-snippet", "SecAction \"id:949110,pass\""),
            ("variables-hash-bucket-size", "100"),
            ("variables-hash-bucket-size", "256;"),
            ("variables-hash-bucket-size", "32"),
            ("variables-hash-max-size", "2048 4096"),
            ("variables-hash-max-size", "99999999999"),
            ("server-name-hash-max-size", "-1"),
        ] {
            let mut s = Settings::default();
            assert!(s.apply(k, v).is_err(), "{k}={v:?} accepted");
        }
    }

    #[test]
    fn a_protection_key_that_does_not_parse_refuses() {
        let cm: ConfigMap = serde_yaml::from_str(
            "metadata: {name: c}\ndata: {global-auth-url: 'auth.example.com/check', enable-modsecurity: 'false'}",
        )
        .unwrap();
        let r = ObjectRef::new(Kind::ConfigMap, ObjectKey::new("ns", "c"));
        let mut problems = Vec::new();
        let s = Settings::from_config_map(&cm, &r, &mut problems);
        assert!(s.refuses(false).unwrap().contains("global-auth-url"));
        assert_eq!(s.refuses(true), None, "enable-global-auth: false opts out");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
