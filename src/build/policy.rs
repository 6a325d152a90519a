//! What one Ingress's annotations mean for its locations, once the objects
//! they name are looked up: the ConfigMaps of `custom-headers` and
//! `fastcgi-params-configmap`, the Secrets of `proxy-ssl-secret`,
//! `auth-secret` and `auth-tls-secret`. A named
//! object that is missing, in another namespace without
//! `allow-cross-namespace-resources`, or unusable makes the Ingress's
//! locations answer 503 (as ingress-nginx's denied locations did), with a
//! reason on the Ingress.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;

use super::ingress::ParsedIngress;
use super::tls;
use crate::annotations::backend::{ObjectName, Protocol};
use crate::annotations::extauth::{AuthHost, AuthSpec, AuthUrl};
use crate::cluster::{Cluster, ObjectKey};
use crate::config::{
    AccessRule, AccessRules, AuthHeader, BasicAuth, Certificate, ClientAuth, CorsMap, CorsPolicy,
    ExpandableHeader, ExternalAuth, FastCgi, FastCgiParam, Htpasswd, LimitZone, LiteralHeader,
    LocationLimits, LocationPolicy, ModSecurityPolicy, Modules, ProxySslFiles, RulesFile, Trusted,
};
use crate::problem::{Printable, Problem};
use crate::settings::Settings;
use crate::values::{Cidr, Expandable, HeaderName, HeaderValue, Invalid};

/// What build needs of one Ingress's annotations besides its paths.
#[derive(Clone, Debug, Default)]
pub struct IngressPolicy {
    /// Shared by its locations; `None` when nothing is set.
    /// (Boxed: most Ingresses have none, and there is one of these per
    /// Ingress during a build.)
    pub location: Option<Box<LocationPolicy>>,
    /// Every location answers 503, for this reason.
    pub denied: Option<String>,
    /// Files its locations read.
    pub certificates: Vec<Certificate>,
    pub trusted: Vec<Trusted>,
    pub htpasswd: Vec<Htpasswd>,
    pub limit_zones: Vec<LimitZone>,
    pub cors_maps: Vec<CorsMap>,
    /// The upstreams of its external auth service.
    pub auth_upstreams: Vec<crate::config::Upstream>,
    /// Client certificates (`auth-tls-*`), for the hosts this Ingress
    /// decides (the oldest that sets `auth-tls-secret`): the server's
    /// settings, or why its CAs are not usable. `None`: not set.
    pub client_auth: Option<Result<ClientAuth, String>>,
    /// The ModSecurity rules files of its snippet.
    pub modsecurity_files: Vec<RulesFile>,
}

/// The effective `allow`/`deny` rules of a location: `block-cidrs` first,
/// then the deny list, then the allow list with everything else denied. An
/// Ingress's lists replace the global ones of the same kind. `None` when
/// the Ingress sets neither: the global rules (rendered once at the http
/// level) apply.
pub fn access_rules(
    allow: Option<&[Cidr]>,
    deny: Option<&[Cidr]>,
    settings: &Settings,
) -> Option<AccessRules> {
    if allow.is_none() && deny.is_none() {
        return None;
    }
    Some(rules(
        allow.unwrap_or(&settings.whitelist_source_range),
        deny.unwrap_or(&settings.denylist_source_range),
        &settings.block_cidrs,
    ))
}

/// `block` and `deny` denied, then `allow` allowed and the rest denied.
pub fn rules(allow: &[Cidr], deny: &[Cidr], block: &[Cidr]) -> AccessRules {
    let mut out: Vec<AccessRule> = block
        .iter()
        .chain(deny)
        .map(|c| AccessRule {
            allow: false,
            network: c.clone(),
        })
        .collect();
    out.extend(allow.iter().map(|c| AccessRule {
        allow: true,
        network: c.clone(),
    }));
    AccessRules {
        rules: out,
        deny_rest: !allow.is_empty(),
    }
}

/// The namespace an annotation's object is in, if the Ingress may name it.
fn namespace_of<'a>(
    name: &'a ObjectName,
    ing: &'a ParsedIngress,
    settings: &Settings,
) -> Result<&'a str, String> {
    let ns = name
        .namespace
        .as_ref()
        .map_or(ing.namespace.as_str(), |n| n.as_str());
    if ns != ing.namespace.as_str() && !settings.allow_cross_namespace_resources {
        return Err(format!(
            "{ns}/{} is in another namespace, and allow-cross-namespace-resources is not \"true\"",
            name.name.as_str()
        ));
    }
    Ok(ns)
}

fn config_map<'c>(
    cluster: &'c Cluster,
    name: &ObjectName,
    ing: &ParsedIngress,
    settings: &Settings,
) -> Result<&'c ConfigMap, String> {
    let ns = namespace_of(name, ing, settings)?;
    let key = ObjectKey::new(ns, name.name.as_str());
    cluster
        .config_maps
        .get(&key)
        .map(|c| &**c)
        .ok_or_else(|| format!("configmap {key} not found"))
}

/// The response headers of a `custom-headers` ConfigMap: each name must be
/// one `global-allowed-response-headers` lists, as in ingress-nginx.
fn custom_headers(cm: &ConfigMap, settings: &Settings) -> Result<Vec<LiteralHeader>, String> {
    let mut out = Vec::new();
    for (k, v) in cm.data.iter().flatten() {
        let name = HeaderName::parse(k).map_err(|e| format!("header {}: {e}", Printable(k)))?;
        if !settings
            .global_allowed_response_headers
            .contains(&k.to_ascii_lowercase())
        {
            return Err(format!(
                "header {} is not in the global setting global-allowed-response-headers",
                Printable(k)
            ));
        }
        let value = HeaderValue::parse(v).map_err(|e| format!("header {}: {e}", Printable(k)))?;
        out.push(LiteralHeader { name, value });
    }
    if out.is_empty() {
        return Err("the ConfigMap has no headers".into());
    }
    Ok(out)
}

/// A FastCGI parameter name and value, as ingress-nginx allowed them.
fn fastcgi_param(k: &str, v: &str) -> Result<FastCgiParam, Invalid> {
    if k.is_empty()
        || k.len() > 128
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(Invalid(
            "a parameter name may only contain letters, digits, '.', '-' and '_'".into(),
        ));
    }
    if !v.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'$' | b'{' | b'}' | b'/' | b'.')
    }) {
        return Err(Invalid(
            "a parameter value may only contain letters, digits and - _ $ { } / .".into(),
        ));
    }
    let value = if v.is_empty() {
        Expandable::empty()
    } else {
        Expandable::parse(v, 1024)?
    };
    Ok(FastCgiParam {
        name: k.to_string(),
        value,
    })
}

/// The policy of one Ingress. `problems` gets a warning for each object it
/// names that is not usable.
pub fn of(
    ing: &ParsedIngress,
    cluster: &Cluster,
    settings: &Settings,
    opts: &super::Options,
    global: Option<&Result<GlobalAuthCheck, String>>,
    problems: &mut Vec<Problem>,
) -> IngressPolicy {
    let modules = &opts.modules;
    let prefix = opts.annotations_prefix.as_str();
    let a = &ing.annotations;
    let field = |name: &str| format!("metadata.annotations[\"{prefix}/{name}\"]");
    let mut out = IngressPolicy::default();
    let mut deny = |reason: String, name: &str, problems: &mut Vec<Problem>| {
        problems.push(Problem::warning(
            &ing.object,
            Some(field(name)),
            format!("{reason}; its locations answer 503"),
        ));
        if out.denied.is_none() {
            out.denied = Some(reason);
        }
    };
    let mut p = LocationPolicy {
        proxy: a.proxy.clone(),
        protocol: a.backend.protocol,
        upstream_host: a.headers.upstream_vhost.clone(),
        connection: a.headers.connection,
        // As in ingress-nginx: only together with a rewrite.
        forwarded_prefix: a
            .rewrite
            .target
            .as_ref()
            .and(a.redirect.x_forwarded_prefix.clone()),
        access: access_rules(
            a.access.allow.as_deref(),
            a.access.deny.as_deref(),
            settings,
        ),
        satisfy_any: a.auth.satisfy_any,
        limit_rate: a.limits.rate.filter(|n| *n > 0),
        limit_rate_after: a.limits.rate_after.filter(|n| *n > 0),
        no_access_log: !a.redirect.access_log,
        rewrite_log: a.redirect.rewrite_log,
        port_in_redirect: a.redirect.use_port_in_redirects,
        relative_redirects: a.redirect.relative_redirects,
        ..LocationPolicy::default()
    };
    if let Some(name) = &a.headers.custom_headers {
        let found = config_map(cluster, name, ing, settings).and_then(|cm| {
            if !modules.headers_more {
                return Err("custom-headers needs nginx's headers-more module (Debian's libnginx-mod-http-headers-more-filter), which is not installed".into());
            }
            custom_headers(cm, settings)
        });
        match found {
            Ok(h) => p.response_headers = h,
            Err(e) => deny(e, "custom-headers", problems),
        }
    }
    if a.backend.protocol == Protocol::Fcgi {
        let mut fcgi = FastCgi {
            index: a.backend.fastcgi_index.clone(),
            params: Vec::new(),
        };
        if let Some(name) = &a.backend.fastcgi_params {
            let found = config_map(cluster, name, ing, settings).and_then(|cm| {
                cm.data
                    .iter()
                    .flatten()
                    .map(|(k, v)| {
                        fastcgi_param(k, v).map_err(|e| format!("parameter {}: {e}", Printable(k)))
                    })
                    .collect::<Result<Vec<_>, String>>()
            });
            match found {
                Ok(params) => fcgi.params = params,
                Err(e) => deny(e, "fastcgi-params-configmap", problems),
            }
        }
        p.fastcgi = Some(fcgi);
    }
    if let Some(ssl) = &a.tls.proxy {
        let mut files = ProxySslFiles {
            certificate: None,
            trusted: None,
            verify: ssl.verify,
            verify_depth: ssl.verify_depth,
            name: ssl.name.clone(),
            server_name: ssl.server_name,
            protocols: ssl.protocols.clone(),
            ciphers: ssl.ciphers.clone(),
        };
        let mut ok = true;
        if let Some(name) = &ssl.secret {
            let found = namespace_of(name, ing, settings).and_then(|ns| {
                let key = ObjectKey::new(ns, name.name.as_str());
                let s = cluster
                    .secrets
                    .get(&key)
                    .ok_or_else(|| format!("secret {key} not found"))?;
                tls::client_files(s).map(|f| (key, f))
            });
            match found {
                Ok((key, (pair, ca))) => {
                    if let Some(pair) = pair {
                        let c = pair.to_certificate(format!("secret {key}"));
                        files.certificate = Some(c.name.clone());
                        out.certificates.push(c);
                    }
                    if let Some(pem) = ca {
                        let t = tls::trusted(pem, format!("secret {key}"));
                        files.trusted = Some(t.name.clone());
                        out.trusted.push(t);
                    }
                }
                Err(e) => {
                    deny(e, "proxy-ssl-secret", problems);
                    ok = false;
                }
            }
        }
        if ok && files.verify && files.trusted.is_none() {
            deny(
                "proxy-ssl-verify is on, but no proxy-ssl-secret with a ca.crt names the CAs to verify with".into(),
                "proxy-ssl-verify",
                problems,
            );
        }
        p.proxy_ssl = Some(files);
    }
    if let Some(client) = &a.tls.client {
        match client_auth(client, ing, cluster, settings) {
            Ok((auth, files)) => {
                out.trusted.extend(files);
                out.client_auth = Some(Ok(auth));
            }
            Err((e, name)) => {
                deny(e.clone(), name, problems);
                // Without a Secret there is nothing for a host to take.
                if client.secret.is_some() {
                    out.client_auth = Some(Err(e));
                }
            }
        }
    }
    let c = &a.cors;
    if !c.enabled && c.configured {
        problems.push(Problem::warning(
            &ing.object,
            Some(field("enable-cors")),
            "cors-* annotations without enable-cors: \"true\" do nothing",
        ));
    }
    if c.enabled && !modules.headers_more {
        problems.push(Problem::warning(
            &ing.object,
            Some(field("enable-cors")),
            "CORS needs nginx's headers-more module (Debian's libnginx-mod-http-headers-more-filter), which is not installed: no CORS headers are sent",
        ));
    } else if c.enabled {
        use crate::annotations::cors::Origins;
        if !c.dropped.is_empty() {
            problems.push(Problem::warning(
                &ing.object,
                Some(field("cors-allow-origin")),
                format!(
                    "entries without a scheme are dropped (as in ingress-nginx): {}",
                    c.dropped.join(", ")
                ),
            ));
        }
        let (origin_map, allow_origin) = match &c.origins {
            Origins::Any => (None, "*".to_string()),
            Origins::List(list) => {
                let exact: Vec<String> = list
                    .iter()
                    .filter(|o| !o.wildcard)
                    .map(|o| o.exact())
                    .collect();
                let regex: Vec<String> = list
                    .iter()
                    .filter(|o| o.wildcard)
                    .map(|o| o.regex())
                    .collect();
                let id = format!("{exact:?}{regex:?}");
                let name = format!("wicket_cors_{}", short_hash(&id));
                out.cors_maps.push(CorsMap {
                    name: name.clone(),
                    exact,
                    regex,
                });
                (Some(name), "$http_origin".to_string())
            }
        };
        let profile = format!(
            "p{}",
            short_hash(&format!(
                "{allow_origin:?}{:?}{:?}{:?}{}",
                c.methods, c.headers, c.expose, c.max_age
            ))
        );
        p.cors = Some(CorsPolicy {
            profile,
            origin_map,
            allow_origin,
            methods: c.methods.clone(),
            headers: c.headers.clone(),
            expose: c.expose.clone(),
            credentials: c.credentials,
            max_age: c.max_age,
        });
    }
    if a.limits.any() {
        let (limits, zones) = limits(ing, &a.limits);
        p.limits = Some(limits);
        out.limit_zones = zones;
    }
    let buffered = a.proxy.buffering.unwrap_or(settings.proxy_buffering);
    if !buffered && (p.limit_rate.is_some() || p.limit_rate_after.is_some()) {
        problems.push(Problem::warning(
            &ing.object,
            Some(field(if p.limit_rate.is_some() {
                "limit-rate"
            } else {
                "limit-rate-after"
            })),
            "limit-rate applies only to buffered responses (as in ingress-nginx), and proxy-buffering is off for this Ingress: responses from its backends are not limited",
        ));
    }
    if a.auth.asked {
        match basic_auth(cluster, ing, settings, &a.auth) {
            Ok((auth, file)) => {
                p.basic_auth = Some(auth);
                out.htpasswd.push(file);
            }
            Err((e, name)) => deny(e, name, problems),
        }
    }
    p.balance = balance_vars(&a.balance, modules, opts, &mut |name, w| {
        problems.push(Problem::warning(&ing.object, Some(field(name)), w))
    });
    if a.mirror.orphan {
        problems.push(Problem::warning(
            &ing.object,
            Some(field("mirror-target")),
            "mirror-host and mirror-request-body without mirror-target do nothing",
        ));
    }
    if let Some(m) = &a.mirror.mirror {
        let (upstream, unreachable) =
            match target_upstream(&m.target, "mirror", "mirror-target", settings, opts) {
                Ok(u) => (Some(u), None),
                Err(e) => (None, Some(e)),
            };
        if let Some(e) = &unreachable {
            problems.push(Problem::warning(
                &ing.object,
                Some(field("mirror-target")),
                format!(
                    "{} cannot be reached ({e}): no copies are sent until it can",
                    m.target.text
                ),
            ));
        }
        let scheme = if m.target.https { "https" } else { "http" };
        let host = m
            .host
            .as_ref()
            .map_or_else(|| m.target.host_header(), |h| h.as_str().to_string());
        let mut mt = crate::config::MirrorTarget {
            location: String::new(),
            target: upstream
                .as_ref()
                .map(|u| format!("{scheme}://{}{}", u.name, m.target.uri))
                .unwrap_or_default(),
            tls_name: host
                .rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(host.clone(), |(h, _)| h.to_string()),
            host,
            https: m.target.https,
            body: m.body,
            unreachable,
        };
        mt.location = format!("/_wicket_mirror_{}", short_hash(&format!("{mt:?}")));
        out.auth_upstreams.extend(upstream);
        p.mirror = Some(Arc::new(mt));
    }
    if let Some(key) = a.extauth.orphan {
        deny(format!("{key} is set without auth-url"), key, problems);
    } else if let Some(spec) = a.extauth.spec.as_deref() {
        let built = auth_set_headers(spec, ing, cluster, settings)
            .and_then(|h| external_auth(spec, false, h, settings, opts));
        match built {
            Ok((auth, upstream, warning)) => {
                if let Some(w) = warning {
                    problems.push(Problem::warning(&ing.object, Some(field("auth-url")), w));
                }
                out.auth_upstreams.extend(upstream);
                p.external_auth = Some(Arc::new(auth));
            }
            Err((e, key)) => deny(e, key, problems),
        }
    } else if let Some(g) = global.filter(|_| a.access.global_auth) {
        // Built once; its warning is on the ConfigMap.
        match g {
            Ok(c) => {
                out.auth_upstreams.extend(c.upstream.clone());
                p.external_auth = Some(c.auth.clone());
            }
            Err(e) => deny(e.clone(), "enable-global-auth", problems),
        }
    }
    let mut warnings = Vec::new();
    let found = modsecurity(ing, settings, modules, &mut warnings);
    for (name, w) in warnings {
        problems.push(Problem::warning(&ing.object, Some(field(name)), w));
    }
    let mut own_file = None;
    let mut global_denied = None;
    match found {
        Ok(None) => {}
        Ok(Some((m, file))) => {
            p.modsecurity = Some(m);
            own_file = file;
        }
        Err((reason, Some(name))) => deny(reason, name, problems),
        Err((reason, None)) => global_denied = Some(reason),
    }
    out.modsecurity_files.extend(own_file);
    if let Some(reason) = global_denied {
        problems.push(Problem::warning(
            &ing.object,
            None,
            format!("{reason}; its locations answer 503"),
        ));
        out.denied.get_or_insert(reason);
    }
    let p = p.with_own_headers();
    if p != LocationPolicy::default() {
        out.location = Some(Box::new(p));
    }
    out
}

/// The variables of an Ingress's balancer policy; `warn` gets what does
/// nothing, with the annotation.
fn balance_vars(
    b: &crate::annotations::balance::Balance,
    modules: &crate::config::Modules,
    opts: &super::Options,
    warn: &mut dyn FnMut(&str, String),
) -> Option<crate::config::BalanceVars> {
    use crate::annotations::balance::Method;
    if b.method == Some(Method::Ewma) {
        warn(
            "load-balance",
            "ewma is balanced round robin by wicket (its balancer has no latency tracking)".into(),
        );
    }
    if b.orphan_cookie {
        warn(
            "affinity",
            "session-cookie-* and affinity-* annotations without affinity: cookie do nothing"
                .into(),
        );
    }
    if b.affinity.is_none() && b.hash.is_none() {
        return None;
    }
    if !(opts.dynamic_endpoints && modules.lua) {
        let name = if b.affinity.is_some() {
            "affinity"
        } else {
            "upstream-hash-by"
        };
        warn(
            name,
            "needs wicket's balancer (--dynamic-endpoints with Debian's libnginx-mod-http-lua): requests are balanced round robin".into(),
        );
        return None;
    }
    if b.affinity.is_some() && b.hash.is_some() {
        warn(
            "upstream-hash-by",
            "affinity: cookie decides, as in ingress-nginx; upstream-hash-by is not used".into(),
        );
    }
    let cookie = b.affinity.as_ref().map(|c| {
        if c.canary_legacy {
            warn(
                "affinity-canary-behavior",
                "the canary is chosen per request before the balancer, whatever this says".into(),
            );
        }
        let mut attrs = String::new();
        if let Some(d) = &c.domain {
            attrs.push_str(&format!("; Domain={}", d.as_str()));
        }
        if let Some(m) = c.max_age {
            attrs.push_str(&format!("; Max-Age={m}"));
        }
        if let Some(s) = c.samesite {
            attrs.push_str(&format!("; SameSite={s}"));
        }
        if c.secure {
            attrs.push_str("; Secure");
        }
        crate::config::StickyCookie {
            name: c.name.clone(),
            path: c.path.clone(),
            attrs,
            expires: c.expires.filter(|e| *e > 0),
            change_on_failure: c.change_on_failure,
        }
    });
    let hash = b.hash.as_ref().filter(|_| cookie.is_none());
    Some(crate::config::BalanceVars {
        hash_key: hash.map(|h| h.key.clone()),
        subset: hash.and_then(|h| h.subset),
        cookie,
    })
}

/// The name of an nginx object (a map, a variable, an upstream, a zone, an
/// internal location) that Ingresses share when they ask for the same
/// thing, and the files of htpasswd and CA bundles: 96 bits of a SHA-256
/// of what it holds, in hex. Names are not checked for
/// clashes, so they must be long enough that no tenant can find a value
/// whose name is another tenant's (48 bits could be searched in hours, and
/// the object named would then serve the other's locations); and short
/// enough for nginx's variables hash (`variables_hash_bucket_size` 64:
/// `$wicket_canary_NAME_h` is the longest).
pub(crate) fn short_hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..12])
}

/// The upstream an auth URL's host and port name, or why it cannot be
/// reached.
fn auth_upstream(
    url: &AuthUrl,
    settings: &Settings,
    opts: &super::Options,
) -> Result<crate::config::Upstream, String> {
    target_upstream(url, "auth", "auth-url", settings, opts)
}

/// The upstream of a URL's host and port (auth-url, mirror-target):
/// `wicket_KIND_HASH`, its name looked up by wicket, or wicket's own
/// listener for `$host`; or why it cannot be reached.
fn target_upstream(
    url: &AuthUrl,
    kind: &str,
    what: &str,
    settings: &Settings,
    opts: &super::Options,
) -> Result<crate::config::Upstream, String> {
    use crate::config::{Upstream, UpstreamServer};
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    let port = url.port_or_default();
    let scheme = if url.https { "https" } else { "http" };
    let named = |servers: Vec<UpstreamServer>| Upstream {
        name: format!(
            "wicket_{kind}_{}",
            short_hash(&format!("{scheme}://{}", url.host_header()))
        ),
        service: format!("{what} {scheme}://{}", url.host_header()),
        servers,
        fixed: true,
        policy: None,
    };
    let policy = &opts.backend_policy;
    let allowed = |addrs: Vec<IpAddr>| -> Result<Vec<UpstreamServer>, String> {
        let mut refused = Vec::new();
        let mut out = Vec::new();
        for ip in addrs {
            let a = SocketAddr::new(ip, port);
            match policy.refuse(a) {
                None => out.push(UpstreamServer::Addr(a)),
                Some(why) => refused.push(why),
            }
        }
        if out.is_empty() {
            return Err(refused.join("; "));
        }
        Ok(out)
    };
    let servers = match &url.host {
        AuthHost::Request => {
            if settings.use_proxy_protocol {
                return Err("$host means wicket's own listener, which expects the PROXY protocol (use-proxy-protocol), so the check cannot reach it".into());
            }
            // The request's own host is what wicket's listener serves: the
            // check goes there, past the backend policy (it is no backend).
            let own = if url.https {
                opts.https_port
            } else {
                opts.http_port
            };
            return Ok(Upstream {
                name: format!("wicket_{kind}_self_{scheme}"),
                service: format!("{what} {scheme}://$host (wicket's own listener)"),
                servers: vec![UpstreamServer::Addr(SocketAddr::new(
                    IpAddr::from([127, 0, 0, 1]),
                    own,
                ))],
                fixed: true,
                policy: None,
            });
        }
        AuthHost::Addr(ip) => allowed(vec![*ip])?,
        AuthHost::Name(n) if n.as_str() == "localhost" || n.as_str().ends_with(".localhost") => {
            allowed(vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(Ipv6Addr::LOCALHOST),
            ])?
        }
        AuthHost::Name(n) => match opts.resolved.as_deref() {
            None => vec![UpstreamServer::Dns {
                host: n.clone(),
                port,
            }],
            Some(r) => match r.get(n.as_str()) {
                Some(crate::resolve::Answer::Addresses(a)) => allowed(a.clone())?,
                Some(crate::resolve::Answer::Failed(e)) => {
                    return Err(format!("{} does not resolve: {e}", n.as_str()));
                }
                None => return Err(format!("{} was not looked up yet", n.as_str())),
            },
        },
    };
    Ok(named(servers))
}

/// The headers of `auth-proxy-set-headers`, from the ConfigMap it names.
fn auth_set_headers(
    spec: &AuthSpec,
    ing: &ParsedIngress,
    cluster: &Cluster,
    settings: &Settings,
) -> Result<Vec<ExpandableHeader>, (String, &'static str)> {
    let mut set_headers = Vec::new();
    if let Some(name) = &spec.proxy_set_headers {
        let cm =
            config_map(cluster, name, ing, settings).map_err(|e| (e, "auth-proxy-set-headers"))?;
        for (k, v) in cm.data.iter().flatten() {
            let bad = |e: Invalid| {
                (
                    format!(
                        "configmap {}: header {}: {e}",
                        name.name.as_str(),
                        Printable(k)
                    ),
                    "auth-proxy-set-headers",
                )
            };
            set_headers.push(ExpandableHeader {
                name: HeaderName::parse(k).map_err(bad)?,
                value: Expandable::parse(v, 1024).map_err(bad)?,
            });
        }
        if set_headers.is_empty() {
            return Err((
                format!("configmap {} has no headers", name.name.as_str()),
                "auth-proxy-set-headers",
            ));
        }
    }
    Ok(set_headers)
}

/// The global external auth (`global-auth-*`), built once for every
/// Ingress it applies to.
pub struct GlobalAuthCheck {
    pub auth: Arc<ExternalAuth>,
    pub upstream: Option<crate::config::Upstream>,
    /// Why the auth service cannot be reached (its checks answer 500).
    pub warning: Option<String>,
}

/// The global external auth, if the keys ask for one; or why the
/// Ingresses it applies to answer 503.
pub fn global_auth(
    settings: &Settings,
    opts: &super::Options,
) -> Option<Result<GlobalAuthCheck, String>> {
    let spec = settings.global_auth.spec()?;
    Some(
        external_auth(&spec, true, Vec::new(), settings, opts)
            .map(|(auth, upstream, warning)| GlobalAuthCheck {
                auth: Arc::new(auth),
                upstream,
                warning,
            })
            .map_err(|(e, _)| e),
    )
}

/// The external authentication of an Ingress (`global`: from the global
/// keys), its upstream, and a warning; or why its locations answer 503.
#[allow(clippy::type_complexity)]
fn external_auth(
    spec: &AuthSpec,
    global: bool,
    set_headers: Vec<ExpandableHeader>,
    settings: &Settings,
    opts: &super::Options,
) -> Result<
    (
        ExternalAuth,
        Option<crate::config::Upstream>,
        Option<String>,
    ),
    (String, &'static str),
> {
    let signin = match &spec.signin {
        Some(s) => {
            if !opts.modules.set_misc {
                return Err((
                    "auth-signin needs nginx's set-misc module (Debian's libnginx-mod-http-set-misc) for $escaped_request_uri, which is not installed".into(),
                    if global { "enable-global-auth" } else { "auth-signin" },
                ));
            }
            Some(s.redirect(&spec.signin_param))
        }
        None => None,
    };
    let (upstream, unreachable) = match auth_upstream(&spec.url, settings, opts) {
        Ok(u) => (Some(u), None),
        Err(e) => (None, Some(e)),
    };
    let target = match &upstream {
        Some(u) => format!(
            "{}://{}{}",
            if spec.url.https { "https" } else { "http" },
            u.name,
            spec.url.uri
        ),
        None => String::new(),
    };
    let response_headers = spec
        .response_headers
        .iter()
        .enumerate()
        .map(|(i, h)| AuthHeader {
            name: h.clone(),
            var: format!("wicket_auth_h{i}"),
            from: format!(
                "upstream_http_{}",
                h.as_str().to_ascii_lowercase().replace('-', "_")
            ),
        })
        .collect();
    let mut auth = ExternalAuth {
        location: String::new(),
        target,
        host: spec.url.host_header(),
        tls_name: match spec.url.host_header().rsplit_once(':') {
            Some((h, p)) if spec.url.port.is_some() && p.bytes().all(|b| b.is_ascii_digit()) => {
                h.to_string()
            }
            _ => spec.url.host_header(),
        },
        https: spec.url.https,
        method: spec.method,
        request_redirect: spec.request_redirect.clone(),
        response_headers,
        set_headers,
        cache_key: None,
        cache_valid: Vec::new(),
        always_set_cookie: spec.always_set_cookie,
        signin: None,
        escape_uri: signin.is_some(),
        unreachable: unreachable.clone(),
        global,
        snippet: spec.snippet.as_ref().map(|s| s.as_str().to_string()),
    };
    let id = short_hash(&format!("{auth:?}{signin:?}{:?}", spec.cache_key));
    auth.location = format!("/_wicket_auth_{id}");
    if let Some(key) = &spec.cache_key {
        auth.cache_key = Some(format!("$host{}{}", auth.location, key.as_str()));
        auth.cache_valid = spec
            .cache_duration
            .iter()
            .map(|d| d.split_whitespace().map(String::from).collect())
            .collect();
    }
    auth.signin = signin.map(|url| (format!("@wicket_signin_{id}"), url));
    let warning = unreachable.map(|e| {
        format!(
            "the auth service {} cannot be reached ({e}): requests are answered 500 until it can",
            spec.url.text
        )
    });
    Ok((auth, upstream, warning))
}

/// What ModSecurity a location of this Ingress has, with the rules file of
/// its snippet; or why it cannot be given (and the annotation that asked,
/// `None` for the global keys): fail closed, the locations then answer 503.
/// `Ok(None)`: the http level's setting applies as it is. `warnings` gets
/// (annotation, text) for keys that do nothing.
#[allow(clippy::type_complexity)]
fn modsecurity(
    ing: &ParsedIngress,
    settings: &Settings,
    modules: &Modules,
    warnings: &mut Vec<(&'static str, String)>,
) -> Result<Option<(ModSecurityPolicy, Option<RulesFile>)>, (String, Option<&'static str>)> {
    use crate::annotations::modsecurity::{BLOCK_FILE, NO_CRS_FILE};
    let m = &ing.annotations.modsecurity;
    let global_crs = settings.enable_owasp_modsecurity_crs;
    let global_on = settings.enable_modsecurity || global_crs;
    let off = ModSecurityPolicy {
        on: false,
        crs: false,
        files: Vec::new(),
        transaction_id: None,
    };
    if m.enable == Some(false) {
        if m.owasp == Some(true) || m.snippet.is_some() || m.transaction_id.is_some() {
            warnings.push((
                "enable-modsecurity",
                "enable-modsecurity is \"false\": ModSecurity is off for this Ingress, and the other modsecurity annotations do nothing".into(),
            ));
        }
        // `modsecurity off` only where the http level turns it on.
        return Ok((global_on && modules.modsecurity).then_some((off, None)));
    }
    // The core rules or rules of its own turn ModSecurity on for the
    // Ingress; only enable-modsecurity: "false" turns it off.
    let asked = m.enable == Some(true) || m.owasp == Some(true) || m.snippet.is_some();
    if !asked && !global_on {
        if let Some(name) = [
            (m.transaction_id.is_some(), "modsecurity-transaction-id"),
            (m.owasp.is_some(), "enable-owasp-core-rules"),
        ]
        .iter()
        .find_map(|(set, name)| set.then_some(*name))
        {
            warnings.push((
                name,
                "ModSecurity is not on for this Ingress (enable-modsecurity): this does nothing"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let blame = [
        (m.owasp == Some(true), "enable-owasp-core-rules"),
        (m.enable == Some(true), "enable-modsecurity"),
        (m.snippet.is_some(), "modsecurity-snippet"),
    ]
    .iter()
    .find_map(|(set, name)| set.then_some(*name));
    let asker = match blame {
        Some(name) => name.to_string(),
        None if global_crs => "the global setting enable-owasp-modsecurity-crs".to_string(),
        None => "the global setting enable-modsecurity".to_string(),
    };
    if !modules.modsecurity {
        return Err((
            format!(
                "{asker} needs nginx's ModSecurity module (Debian's libnginx-mod-http-modsecurity), which is not installed"
            ),
            blame,
        ));
    }
    let crs = m.owasp.unwrap_or(global_crs);
    if crs && !modules.crs {
        return Err((
            format!(
                "{asker} needs the OWASP Core Rule Set (Debian's modsecurity-crs, {}), which is not installed",
                crate::config::CRS_SETUP
            ),
            blame,
        ));
    }
    if let (Some(own), Some(global)) = (&m.snippet, &settings.modsecurity_snippet) {
        use crate::annotations::modsecurity::rule_ids;
        let global = rule_ids(global.as_str());
        if let Some(id) = rule_ids(own.as_str())
            .into_iter()
            .find(|i| global.contains(i))
        {
            // A rule id given twice makes nginx refuse the whole config.
            return Err((
                format!(
                    "modsecurity-snippet: rule id {id} is one the global modsecurity-snippet uses"
                ),
                Some("modsecurity-snippet"),
            ));
        }
    }
    if !m.any() && global_crs {
        // The http level has all it needs.
        return Ok(None);
    }
    // libmodsecurity keeps the first value a setting (SecRuleEngine...)
    // is given at a level, and a location's over the http level's: the
    // Ingress's own rules come first.
    let own = m.snippet.as_ref().map(|r| RulesFile {
        name: r.file_name(),
        content: r.as_str().to_string(),
        source: format!("ingress {}", ing.key),
    });
    let mut files: Vec<String> = own.iter().map(|f| f.name.clone()).collect();
    if crs && !global_crs {
        files.push(BLOCK_FILE.to_string());
    } else if !crs {
        files.push(NO_CRS_FILE.to_string());
    }
    Ok(Some((
        ModSecurityPolicy {
            on: true,
            crs,
            files,
            transaction_id: m.transaction_id.clone(),
        },
        own,
    )))
}

/// ModSecurity at the http level, and the files of wicket's rules it and
/// the locations use (added to `files`): `None` (the module is not loaded)
/// unless the global keys or a location turn it on.
pub fn modsecurity_http(
    settings: &Settings,
    modules: &Modules,
    location_on: bool,
    crs_used: bool,
    files: &mut BTreeMap<String, RulesFile>,
) -> Option<crate::config::ModSecurityHttp> {
    use crate::annotations::modsecurity as ms;
    let global_crs = settings.enable_owasp_modsecurity_crs;
    let global_on = settings.enable_modsecurity || global_crs;
    if !modules.modsecurity || !(global_on || location_on) {
        files.clear();
        return None;
    }
    let mut add = |name: &str, content: String, source: &str| {
        files.insert(
            name.to_string(),
            RulesFile {
                name: name.to_string(),
                content,
                source: source.to_string(),
            },
        );
        name.to_string()
    };
    // Every location may add these.
    add(ms::BLOCK_FILE, ms::BLOCK_RULES.into(), "wicket");
    add(ms::NO_CRS_FILE, ms::NO_CRS_RULES.into(), "wicket");
    // libmodsecurity keeps the first value a setting (SecRuleEngine...) is
    // given at a level: the admin's rules first, then the engine the global
    // CRS asks for, then the base settings.
    let mut http = Vec::new();
    if let Some(r) = &settings.modsecurity_snippet {
        http.push(add(&r.file_name(), r.as_str().to_string(), "configmap"));
    }
    let crs = (global_crs || crs_used) && modules.crs;
    if crs && global_crs {
        http.push(ms::BLOCK_FILE.to_string());
    }
    http.push(add(ms::BASE_FILE, ms::BASE_RULES.into(), "wicket"));
    if crs {
        http.push(add(ms::CRS_FILE, ms::crs_rules(), "wicket"));
    }
    Some(crate::config::ModSecurityHttp {
        on: global_on,
        files: http,
    })
}

/// The zones and the location's limits of one Ingress's
/// `limit-connections`, `limit-rps`, `limit-rpm`: named by a hash of the
/// Ingress, 5 MB each, as ingress-nginx made them.
fn limits(
    ing: &ParsedIngress,
    l: &crate::annotations::limits::Limits,
) -> (LocationLimits, Vec<LimitZone>) {
    let id = ing.key.to_string();
    let base = format!("wicket_limit_{}", short_hash(&id));
    let key = if l.allowlist.is_empty() {
        "$binary_remote_addr".to_string()
    } else {
        format!("${base}")
    };
    // nginx refuses to reload a zone whose key changed: a zone keyed with
    // an allowlist is named apart.
    let keyed = if l.allowlist.is_empty() { "" } else { "_x" };
    let zone = |suffix: &str, rate: Option<String>| LimitZone {
        name: format!("{base}{keyed}_{suffix}"),
        rate,
        key: key.clone(),
        exempt: l.allowlist.clone(),
        ingress: id.clone(),
    };
    let mut zones = Vec::new();
    let mut out = LocationLimits {
        connections: None,
        requests: Vec::new(),
    };
    if let Some(n) = l.connections {
        let z = zone("conn", None);
        out.connections = Some((z.name.clone(), n));
        zones.push(z);
    }
    for (suffix, rate, unit) in [("rps", l.rps, "r/s"), ("rpm", l.rpm, "r/m")] {
        if let Some(n) = rate {
            let z = zone(suffix, Some(format!("{n}{unit}")));
            out.requests
                .push((z.name.clone(), n.saturating_mul(l.burst_multiplier)));
            zones.push(z);
        }
    }
    (out, zones)
}

/// The client certificate settings of `auth-tls-*` with the CA (and CRL)
/// files, or why they are not usable (and the annotation to blame): fail
/// closed, the Ingress's locations then answer 503.
fn client_auth(
    c: &crate::annotations::tls::ClientTls,
    ing: &ParsedIngress,
    cluster: &Cluster,
    settings: &Settings,
) -> Result<(ClientAuth, Vec<Trusted>), (String, &'static str)> {
    let Some(name) = &c.secret else {
        return Err((
            "auth-tls-* annotations without auth-tls-secret, which names the CAs to verify client certificates with".into(),
            "auth-tls-secret",
        ));
    };
    let ns = namespace_of(name, ing, settings).map_err(|e| (e, "auth-tls-secret"))?;
    let key = ObjectKey::new(ns, name.name.as_str());
    let secret = cluster
        .secrets
        .get(&key)
        .ok_or_else(|| (format!("secret {key} not found"), "auth-tls-secret"))?;
    let (ca, crl) = tls::client_ca_files(secret)
        .map_err(|e| (format!("secret {key}: {e}"), "auth-tls-secret"))?;
    let ca = tls::trusted(ca, format!("secret {key} (ca.crt)"));
    let crl = crl.map(|pem| tls::trusted(pem, format!("secret {key} (ca.crl)")));
    let auth = ClientAuth {
        trusted: ca.name.clone(),
        crl: crl.as_ref().map(|t| t.name.clone()),
        verify: c.verify,
        verify_depth: c.verify_depth,
        error_page: c.error_page.clone(),
        pass_certificate: c.pass_certificate,
        match_cn: c.match_cn.clone(),
        ingress: ing.key.to_string(),
    };
    Ok((auth, std::iter::once(ca).chain(crl).collect()))
}

/// The users' file of `auth-type: basic`, or why there is none (and the
/// annotation to blame): fail closed, the locations then answer 503.
fn basic_auth(
    cluster: &Cluster,
    ing: &ParsedIngress,
    settings: &Settings,
    auth: &crate::annotations::auth::Auth,
) -> Result<(BasicAuth, Htpasswd), (String, &'static str)> {
    use crate::annotations::auth::{SecretType, htpasswd_file, htpasswd_line};
    if auth.kind.is_none() {
        return Err((
            "basic authentication annotations without auth-type: basic".into(),
            "auth-type",
        ));
    }
    let Some(name) = &auth.secret else {
        return Err((
            "auth-type is basic, but no auth-secret names the users".into(),
            "auth-secret",
        ));
    };
    let ns = namespace_of(name, ing, settings).map_err(|e| (e, "auth-secret"))?;
    let key = ObjectKey::new(ns, name.name.as_str());
    let secret = cluster
        .secrets
        .get(&key)
        .ok_or_else(|| (format!("secret {key} not found"), "auth-secret"))?;
    let unusable = |e: String| (format!("secret {key}: {e}"), "auth-secret");
    let content = match auth.secret_type {
        SecretType::AuthFile => {
            let v = tls::secret_value(secret, "auth")
                .ok_or_else(|| unusable("no key auth (auth-secret-type auth-file)".into()))?;
            let text = std::str::from_utf8(v).map_err(|_| unusable("auth is not UTF-8".into()))?;
            htpasswd_file(text).map_err(|e| unusable(format!("auth: {}", e.0)))?
        }
        SecretType::AuthMap => {
            let mut users: BTreeMap<&str, &[u8]> = BTreeMap::new();
            for (k, v) in secret.data.iter().flatten() {
                users.insert(k, &v.0);
            }
            for (k, v) in secret.string_data.iter().flatten() {
                users.insert(k, v.as_bytes());
            }
            let mut out = String::new();
            for (user, hash) in users {
                let hash = std::str::from_utf8(hash).map_err(|_| {
                    unusable(format!("the hash of user {} is not UTF-8", Printable(user)))
                })?;
                out.push_str(
                    &htpasswd_line(user, hash.trim_end_matches(['\n', '\r']))
                        .map_err(|e| unusable(e.0))?,
                );
            }
            if out.is_empty() {
                return Err(unusable("no user (auth-secret-type auth-map)".into()));
            }
            out
        }
    };
    let file = short_hash(&content);
    let realm = auth
        .realm
        .clone()
        .unwrap_or_else(|| crate::annotations::auth::Realm::parse("").expect("empty is a realm"));
    Ok((
        BasicAuth {
            realm,
            file: file.clone(),
        },
        Htpasswd {
            name: file,
            content,
            source: format!("secret {key}"),
        },
    ))
}

/// Makes one `Arc` of each distinct policy, so locations (and servers)
/// that are the same compare equal by pointer or value and share memory.
#[derive(Default)]
pub struct Interner(BTreeMap<u64, Vec<Arc<LocationPolicy>>>);

impl Interner {
    pub fn get(&mut self, p: LocationPolicy) -> Arc<LocationPolicy> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        p.hash(&mut h);
        let same = self.0.entry(h.finish()).or_default();
        if let Some(found) = same.iter().find(|x| ***x == p) {
            return found.clone();
        }
        let a = Arc::new(p);
        same.push(a.clone());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    fn shown(r: &AccessRules) -> Vec<String> {
        let mut out: Vec<String> = r
            .rules
            .iter()
            .map(|a| format!("{} {}", if a.allow { "allow" } else { "deny" }, a.network))
            .collect();
        if r.deny_rest {
            out.push("deny all".into());
        }
        out
    }

    #[test]
    fn shared_object_names_carry_96_bits() {
        let a = short_hash("[\"https://a.example\"][]");
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, short_hash("[\"https://b.example\"][]"));
    }

    #[test]
    fn access_rules_block_then_deny_then_allow() {
        let r = rules(
            &cidrs(&["10.0.0.0/8"]),
            &cidrs(&["10.1.0.0/16"]),
            &cidrs(&["192.0.2.1"]),
        );
        assert_eq!(
            shown(&r),
            [
                "deny 192.0.2.1",
                "deny 10.1.0.0/16",
                "allow 10.0.0.0/8",
                "deny all"
            ]
        );
        // Without an allow list, the rest is allowed.
        assert_eq!(
            shown(&rules(&[], &cidrs(&["10.1.0.0/16"]), &[])),
            ["deny 10.1.0.0/16"]
        );
    }

    #[test]
    fn an_ingress_list_replaces_the_global_one_of_its_kind() {
        let s = Settings {
            whitelist_source_range: cidrs(&["10.0.0.0/8"]),
            denylist_source_range: cidrs(&["10.9.0.0/16"]),
            block_cidrs: cidrs(&["192.0.2.1"]),
            ..Settings::default()
        };
        // Neither set: the global rules apply at the http level.
        assert!(access_rules(None, None, &s).is_none());
        let own = cidrs(&["172.16.0.0/12"]);
        assert_eq!(
            shown(&access_rules(Some(&own), None, &s).unwrap()),
            [
                "deny 192.0.2.1",
                "deny 10.9.0.0/16",
                "allow 172.16.0.0/12",
                "deny all"
            ]
        );
        assert_eq!(
            shown(&access_rules(None, Some(&own), &s).unwrap()),
            [
                "deny 192.0.2.1",
                "deny 172.16.0.0/12",
                "allow 10.0.0.0/8",
                "deny all"
            ]
        );
    }

    #[test]
    fn fastcgi_parameters_as_ingress_nginx_allowed_them() {
        let p = fastcgi_param("SCRIPT_FILENAME", "/var/www/$fastcgi_script_name").unwrap();
        assert_eq!(p.name, "SCRIPT_FILENAME");
        assert!(fastcgi_param("EMPTY", "").is_ok());
        for (k, v) in [
            ("", "x"),
            ("A B", "x"),
            ("A;", "x"),
            ("A", "x y"),
            ("A", "x;"),
            ("A", "\"x\""),
            ("A", "$unknown_variable"),
        ] {
            assert!(fastcgi_param(k, v).is_err(), "{k:?}: {v:?}");
        }
    }

    fn cm(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn custom_headers_must_be_allowed_by_the_global_setting() {
        let mut s = Settings::default();
        assert!(
            custom_headers(&cm(&[("X-Team", "shop")]), &s)
                .unwrap_err()
                .contains("global-allowed-response-headers")
        );
        s.global_allowed_response_headers = vec!["x-team".into()];
        let h = custom_headers(&cm(&[("X-Team", "shop")]), &s).unwrap();
        assert_eq!(h.len(), 1);
        assert!(custom_headers(&cm(&[("X-Team", "a\nb")]), &s).is_err());
        assert!(custom_headers(&cm(&[("X Team", "a")]), &s).is_err());
        assert!(
            custom_headers(&cm(&[]), &s)
                .unwrap_err()
                .contains("no headers")
        );
    }
}
