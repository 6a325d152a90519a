//! `build`: the whole of Kubernetes Ingress semantics, as a pure function
//! from a [`Cluster`] snapshot to a [`Config`] and the problems found.
//!
//! No IO, no clock, no randomness: the same snapshot gives the same config,
//! whatever order the objects arrived in.

pub mod backends;
pub mod class;
pub mod ingress;
pub mod policy;
pub mod streams;
pub mod tls;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::cluster::{Cluster, ObjectKey};
use crate::cluster::{Kind, ObjectRef};
use crate::config::{
    Action, Certificate, ClientAuth, Config, ErrorPage, Location, LocationPolicy, Match, Rewrite,
    Server, Source,
};
use crate::problem::Problem;
use crate::settings::Settings;
use crate::values::{Dns1035Label, DnsSubdomain, HostPattern, HttpPath, NamespacedName, RegexPath};
use backends::{Backends, Resolution};
pub use class::ClassOptions;
use ingress::{ParsedIngress, ParsedPath, PathMatch, PortRef, ServiceRef};

/// Annotation prefix read by default, the one ingress-nginx uses.
pub const DEFAULT_ANNOTATIONS_PREFIX: &str = "nginx.ingress.kubernetes.io";

/// Everything `build` needs besides the snapshot.
#[derive(Clone, Debug)]
pub struct Options {
    pub class: ClassOptions,
    pub annotations_prefix: String,
    pub http_port: u16,
    pub https_port: u16,
    /// Presented for hosts without a usable certificate of their own,
    /// unless `default_ssl_certificate` names a usable Secret.
    pub default_certificate: Certificate,
    /// `--default-ssl-certificate`: a TLS Secret to present instead.
    pub default_ssl_certificate: Option<NamespacedName>,
    /// `--default-backend-service`: serves requests no rule or Ingress
    /// default backend matches, instead of 404.
    pub default_backend_service: Option<NamespacedName>,
    /// `--configmap`: the ConfigMap with global settings.
    pub configmap: Option<NamespacedName>,
    /// Ingresses left out because nginx refused the config built with them,
    /// with the reason.
    pub quarantine: BTreeMap<ObjectKey, String>,
    /// Which addresses backends may have.
    pub backend_policy: backends::BackendPolicy,
    /// What the `ExternalName` names resolved to (see [`crate::resolve`]);
    /// `None` leaves the names to nginx.
    pub resolved: Option<Arc<crate::resolve::Resolved>>,
    /// The optional nginx modules that are installed.
    pub modules: crate::config::Modules,
    /// `--dynamic-endpoints`: take endpoint changes without a reload, when
    /// the Lua module is installed.
    pub dynamic_endpoints: bool,
    /// `--tcp-services-configmap` and `--udp-services-configmap`: the
    /// ConfigMaps of TCP and UDP services (see [`streams`]).
    pub tcp_services: Option<NamespacedName>,
    pub udp_services: Option<NamespacedName>,
    /// `--enable-ssl-passthrough`: the stream module listens on the HTTPS
    /// port and sends TLS for `ssl-passthrough` hosts to their backends
    /// unterminated (see [`streams::passthrough`]).
    pub ssl_passthrough: bool,
    /// TCP and UDP service ports another process on this machine holds
    /// (found by the engine, [`streams::ports_in_use`]): their entries are
    /// reported, not served.
    pub ports_in_use: BTreeSet<(crate::config::StreamProtocol, u16)>,
}

/// Whether configs built with these options take endpoint changes without
/// a reload.
pub fn dynamic_endpoints(opts: &Options) -> bool {
    opts.dynamic_endpoints && opts.modules.lua
}

impl Options {
    /// Options for the given ports with everything else at its default.
    pub fn new(http_port: u16, https_port: u16, default_certificate: Certificate) -> Self {
        Options {
            class: ClassOptions::default(),
            annotations_prefix: DEFAULT_ANNOTATIONS_PREFIX.to_string(),
            http_port,
            https_port,
            default_certificate,
            default_ssl_certificate: None,
            default_backend_service: None,
            configmap: None,
            quarantine: BTreeMap::new(),
            backend_policy: backends::BackendPolicy::default(),
            resolved: None,
            modules: crate::config::Modules::default(),
            dynamic_endpoints: false,
            tcp_services: None,
            udp_services: None,
            ssl_passthrough: false,
            ports_in_use: BTreeSet::new(),
        }
    }
}

/// The DNS names of the `ExternalName` Services that the Ingresses wicket
/// serves (and `--default-backend-service`) point at: what
/// [`crate::resolve::Resolver`] looks up before a build. Names that are an
/// address, or `localhost`, need no lookup and are left out.
pub fn external_names(cluster: &Cluster, opts: &Options) -> BTreeSet<String> {
    // The ExternalName Services, by namespace and name: most clusters have
    // few, and then the backends need no lookup each.
    let external: BTreeMap<(&str, &str), &str> = cluster
        .services
        .iter()
        .filter_map(|(key, svc)| {
            let spec = svc.spec.as_ref()?;
            if spec.type_.as_deref() != Some("ExternalName") {
                return None;
            }
            let host = spec.external_name.as_deref()?;
            Some(((key.namespace.as_str(), key.name.as_str()), host))
        })
        .collect();
    let mut names: BTreeSet<&str> = BTreeSet::new();
    // The hosts of auth-url, global-auth-url and mirror-target.
    let mut auth_hosts: BTreeSet<String> = BTreeSet::new();
    let mut auth_host = |url: Option<&String>| {
        use crate::annotations::extauth::{AuthHost, AuthUrl};
        if let Some(Ok(AuthUrl {
            host: AuthHost::Name(n),
            ..
        })) = url.map(|u| AuthUrl::parse(u))
            && n.as_str() != "localhost"
            && !n.as_str().ends_with(".localhost")
        {
            auth_hosts.insert(n.as_str().to_string());
        }
    };
    if let Some(cm) = opts
        .configmap
        .as_ref()
        .and_then(|n| cluster.config_maps.get(&n.key()))
    {
        auth_host(cm.data.as_ref().and_then(|d| d.get("global-auth-url")));
    }
    let auth_url_key = format!("{}/auth-url", opts.annotations_prefix);
    let mirror_key = format!("{}/mirror-target", opts.annotations_prefix);
    for (key, ing) in &cluster.ingresses {
        if !class::is_ours(ing, cluster, &opts.class) {
            continue;
        }
        for k in [&auth_url_key, &mirror_key] {
            auth_host(ing.metadata.annotations.as_ref().and_then(|a| a.get(k)));
        }
        let Some(spec) = &ing.spec else { continue };
        if external.is_empty() {
            continue;
        }
        let paths = spec.rules.iter().flatten().filter_map(|r| r.http.as_ref());
        let backends = paths
            .flat_map(|h| &h.paths)
            .map(|p| &p.backend)
            .chain(&spec.default_backend);
        for b in backends {
            if let Some(svc) = &b.service
                && let Some(host) = external.get(&(key.namespace.as_str(), svc.name.as_str()))
            {
                names.insert(host);
            }
        }
    }
    if let Some(svc) = &opts.default_backend_service
        && let Some(host) = external.get(&(svc.namespace.as_str(), svc.name.as_str()))
    {
        names.insert(host);
    }
    names
        .into_iter()
        .filter_map(|host| {
            let host = host.trim_end_matches('.');
            let needs_lookup = DnsSubdomain::parse(host).is_ok()
                && host.parse::<std::net::IpAddr>().is_err()
                && host != "localhost"
                && !host.ends_with(".localhost");
            needs_lookup.then(|| host.to_string())
        })
        .chain(auth_hosts)
        .collect()
}

/// The result of one build.
#[derive(Clone, Debug)]
pub struct Build {
    /// Shared, so the applier, the admin endpoint and the next comparison
    /// hold one copy.
    pub config: std::sync::Arc<Config>,
    /// Sorted; each problem names its object.
    pub problems: Vec<Problem>,
    /// Ingresses that passed validation and are served (in part, where a
    /// problem says so).
    pub served: Vec<ObjectKey>,
}

/// Builds the config for a snapshot.
pub fn build(cluster: &Cluster, opts: &Options) -> Build {
    build_reusing(cluster, opts, None)
}

/// [`build`], sharing with `previous` every server that is the same there
/// (`Arc` clones): the result is equal to what `build` returns, but a
/// change costs memory for the servers it changes only.
pub fn build_reusing(cluster: &Cluster, opts: &Options, previous: Option<&Config>) -> Build {
    let mut problems = Vec::new();
    let settings = match &opts.configmap {
        None => Settings::default(),
        Some(nn) => {
            let object = ObjectRef::new(Kind::ConfigMap, nn.key());
            match cluster.config_maps.get(&nn.key()) {
                Some(cm) => Settings::from_config_map(cm, &object, &mut problems),
                None => {
                    problems.push(Problem::warning(
                        &object,
                        None,
                        "the --configmap ConfigMap does not exist; default settings are used",
                    ));
                    Settings::default()
                }
            }
        }
    };
    let policy = crate::annotations::Policy {
        allow_snippets: settings.allow_snippet_annotations,
    };
    let ours: Vec<_> = cluster
        .ingresses
        .iter()
        .filter(|(key, ing)| {
            let ours = class::is_ours(ing, cluster, &opts.class);
            if !ours && tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(
                    ingress = %key,
                    "not served: {}",
                    class::why_not_ours(ing, cluster, &opts.class)
                );
            }
            ours
        })
        .collect();
    // Each Ingress alone, on every core; its problems in order.
    let results = crate::parallel::map(&ours, |(key, ing)| {
        let mut problems = Vec::new();
        let object = ObjectRef::new(Kind::Ingress, (*key).clone());
        let parsed = match opts.quarantine.get(*key) {
            Some(reason) => Err(Problem::rejected(
                &object,
                None,
                format!("quarantined: {reason}"),
            )),
            None => ingress::parse(key, ing, &opts.annotations_prefix, policy, &mut problems),
        };
        // A protection key of the ConfigMap wicket cannot honour refuses
        // what it applies to.
        let parsed =
            parsed.and_then(
                |mut p| match settings.refuses(!p.annotations.access.global_auth) {
                    Some(why) => Err(Problem::rejected(&object, None, why)),
                    None => {
                        let via_ip = p
                            .annotations
                            .backend
                            .service_upstream
                            .unwrap_or(settings.service_upstream);
                        // The global balancing keys are the annotations'
                        // defaults.
                        let bal = &mut Arc::make_mut(&mut p.annotations).balance;
                        if bal.hash.is_none()
                            && let Some(key) = &settings.upstream_hash_by
                        {
                            bal.hash = Some(Box::new(crate::annotations::balance::HashBy {
                                key: key.clone(),
                                subset: settings
                                    .upstream_hash_by_subset
                                    .then_some(settings.upstream_hash_by_subset_size),
                            }));
                        }
                        let variant = upstream_variant(&p.annotations);
                        let balance = balance_policy(&p.annotations);
                        for b in p
                            .rules
                            .iter_mut()
                            .flat_map(|r| &mut r.paths)
                            .map(|x| &mut x.backend)
                            .chain(&mut p.default_backend)
                        {
                            b.cluster_ip = via_ip;
                            b.variant = variant.clone();
                            b.balance = balance;
                        }
                        Ok(p)
                    }
                },
            );
        // What Ingresses with the same parsed annotations are likely to
        // share: their raw annotations under the prefix.
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for kv in ing.metadata.annotations.iter().flatten() {
                if kv.0.starts_with(opts.annotations_prefix.as_str()) {
                    kv.hash(&mut h);
                }
            }
            h.finish()
        };
        (parsed, problems, fingerprint)
    });
    let mut parsed: Vec<ParsedIngress> = Vec::with_capacity(results.len());
    let mut shared = AnnotationsInterner::default();
    for (p, found, fingerprint) in results {
        problems.extend(found);
        match p {
            Ok(mut p) => {
                p.annotations = shared.get(fingerprint, &p.annotations);
                parsed.push(p)
            }
            Err(p) => problems.push(p),
        }
    }
    // Oldest first; objects without a creation time (from files) after all
    // others; then namespace and name.
    parsed.sort_by(|a, b| {
        (a.created.is_none(), &a.created, &a.key).cmp(&(b.created.is_none(), &b.created, &b.key))
    });

    let passthrough = streams::passthrough(cluster, opts, &settings, &parsed, &mut problems);

    // The global external auth, once for all the Ingresses it applies to.
    let global_auth = policy::global_auth(&settings, opts);
    if let Some(Ok(policy::GlobalAuthCheck {
        warning: Some(w), ..
    })) = &global_auth
    {
        problems.push(Problem::warning(
            &ObjectRef::cluster_scoped(Kind::ConfigMap, "--configmap"),
            Some("data[\"global-auth-url\"]".into()),
            w.clone(),
        ));
    }
    // What each Ingress's annotations mean once the objects they name are
    // looked up, on every core.
    let policies = crate::parallel::map(&parsed, |p| {
        let mut found = Vec::new();
        let pol = policy::of(
            p,
            cluster,
            &settings,
            opts,
            global_auth.as_ref(),
            &mut found,
        );
        (pol, found)
    });
    let mut interner = policy::Interner::default();
    let mut ingress_policies = Vec::with_capacity(policies.len());
    let mut policy_certs: BTreeMap<String, Certificate> = BTreeMap::new();
    let mut trusted: BTreeMap<String, crate::config::Trusted> = BTreeMap::new();
    let mut htpasswd: BTreeMap<String, crate::config::Htpasswd> = BTreeMap::new();
    let mut limit_zones: BTreeMap<String, crate::config::LimitZone> = BTreeMap::new();
    let mut cors_maps: BTreeMap<String, crate::config::CorsMap> = BTreeMap::new();
    let mut cors_profiles: BTreeMap<String, crate::config::CorsPolicy> = BTreeMap::new();
    let mut auth_upstreams: BTreeMap<String, crate::config::Upstream> = BTreeMap::new();
    let mut modsecurity_files: BTreeMap<String, crate::config::RulesFile> = BTreeMap::new();
    // Whether a location turns ModSecurity on, and one runs the CRS.
    let (mut modsecurity_on, mut crs_used) = (false, false);
    let mut cors = false;
    for (pol, found) in policies {
        for u in &pol.auth_upstreams {
            auth_upstreams.insert(u.name.clone(), u.clone());
        }
        for f in &pol.modsecurity_files {
            modsecurity_files.insert(f.name.clone(), f.clone());
        }
        if pol.denied.is_none()
            && let Some(m) = pol.location.as_ref().and_then(|l| l.modsecurity.as_ref())
        {
            modsecurity_on |= m.on;
            crs_used |= m.on && m.crs;
        }
        cors |= pol.denied.is_none() && pol.location.as_ref().is_some_and(|l| l.cors.is_some());
        if let Some(c) = pol.location.as_ref().and_then(|l| l.cors.as_ref())
            && !cors_profiles.contains_key(&c.profile)
        {
            cors_profiles.insert(c.profile.clone(), c.clone());
        }
        for m in &pol.cors_maps {
            cors_maps.insert(m.name.clone(), m.clone());
        }
        for z in &pol.limit_zones {
            limit_zones.insert(z.name.clone(), z.clone());
        }
        for h in &pol.htpasswd {
            htpasswd.insert(h.name.clone(), h.clone());
        }
        problems.extend(found);
        for c in &pol.certificates {
            policy_certs.insert(c.name.clone(), c.clone());
        }
        for t in &pol.trusted {
            trusted.insert(t.name.clone(), t.clone());
        }
        ingress_policies.push(pol);
    }
    // The location policies are taken out, to be moved into the interner
    // (not copied): at 10,000 Ingresses their boxes would stay alive
    // through the rest of the build.
    let location_policies: Vec<Option<Box<LocationPolicy>>> = ingress_policies
        .iter_mut()
        .map(|p| p.location.take())
        .collect();
    // The default-backend annotations' Services: their first port.
    let fallbacks: Vec<Option<ServiceRef>> = parsed
        .iter()
        .map(|p| {
            let name = p.annotations.backend.default_backend.as_ref()?;
            let port = cluster
                .services
                .get(&ObjectKey::new(p.namespace.as_str(), name.as_str()))
                .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port))
                .and_then(|n| crate::values::port_number(n).ok());
            Some(ServiceRef {
                namespace: p.namespace.clone(),
                name: name.clone(),
                port: match port {
                    Some(n) => PortRef::Number(n),
                    // Resolves to "no such port", with the reason.
                    None => PortRef::Number(0),
                },
                cluster_ip: false,
                variant: None,
                balance: None,
            })
        })
        .collect();

    let mut backends = Backends::new(
        cluster,
        &opts.backend_policy,
        opts.resolved.as_deref(),
        dynamic_endpoints(opts),
    );
    backends.prefetch(
        parsed
            .iter()
            .flat_map(|p| {
                let paths = p.rules.iter().flat_map(|r| &r.paths);
                paths.map(|path| &path.backend).chain(&p.default_backend)
            })
            .chain(fallbacks.iter().flatten()),
    );
    let mut b = Builder {
        parsed: &parsed,
        backends,
        problems: &mut problems,
        hosts: BTreeMap::new(),
        any: HostRoutes::default(),
        flag_source: None,
        snippets: Vec::new(),
        prefix: &opts.annotations_prefix,
        policies: &ingress_policies,
        fallbacks: &fallbacks,
        settings: &settings,
        location_policies: Vec::new(),
        location_policies_open: Vec::new(),
        canaries: BTreeMap::new(),
        flag_upstream: None,
        https_port: opts.https_port,
        tls_hosts: BTreeSet::new(),
        default_cert: String::new(),
    };
    b.collect_routes();
    if b.any.default.is_none()
        && let Some(svc) = &opts.default_backend_service
    {
        b.default_backend_flag(cluster, svc);
    }
    b.finish_policies(&mut interner, location_policies);
    let global_error_pages = b.global_error_pages(opts.configmap.as_ref());
    let default_certificate = match &opts.default_ssl_certificate {
        None => opts.default_certificate.clone(),
        Some(nn) => default_ssl_certificate(cluster, nn, b.problems)
            .unwrap_or_else(|| opts.default_certificate.clone()),
    };
    let tls = b.collect_tls();
    b.tls_hosts = tls.keys().cloned().collect();
    let mut certs = CertificateCache {
        cluster,
        loaded: HashMap::new(),
        used: BTreeMap::new(),
    };

    let default_cert = default_certificate.name.clone();
    b.default_cert = default_cert.clone();
    let hosts = std::mem::take(&mut b.hosts);
    let any = std::mem::take(&mut b.any);
    // Server-wide annotations: the oldest Ingress of each host decides.
    let server_wide = b.server_annotations(&hosts);
    let jobs: Vec<_> = hosts
        .iter()
        .map(|(host, hr)| {
            let certificate = match tls.get(host) {
                Some(t) => certs.for_host(&parsed[t.ingress], t, host, b.problems),
                None => None,
            };
            let wide = server_wide.get(host).cloned().unwrap_or_default();
            (host, hr, certificate, wide)
        })
        .collect();
    let old = OldServers::of(previous);
    let built = crate::parallel::map(&jobs, |(host, hr, certificate, wide)| {
        let default = hr.default.as_ref().or(any.default.as_ref());
        let mut built = b.server(
            Some(host),
            hr,
            default,
            certificate.clone(),
            wide.clone(),
            &global_error_pages,
        );
        // A server without snippets is final here: share it now, so that
        // the copies of unchanged servers never pile up.
        if built.snippets.is_empty() {
            built.server = old.share(built.server);
        }
        built
    });
    let servers: Vec<Arc<Server>> = built
        .into_iter()
        .map(|s| {
            // Servers with snippets are final once renumbered.
            let renumbered = !s.snippets.is_empty();
            let server = b.add_server(s);
            if renumbered {
                old.share(server)
            } else {
                server
            }
        })
        .collect();
    for (host, t) in &tls {
        if !hosts.contains_key(host) {
            b.problems.push(Problem::warning(
                &parsed[t.ingress].object,
                Some(t.field.clone()),
                format!("host {host} is listed for TLS but no rule serves it"),
            ));
        }
    }
    let www_redirects = b.www_redirects(&servers, &server_wide, &mut certs);
    let default_server = b.server(
        None,
        &any,
        any.default.as_ref(),
        Some(default_cert),
        ServerWide::default(),
        &global_error_pages,
    );
    let default_server = Arc::unwrap_or_clone(b.add_server(default_server));
    let mut upstreams = b.backends.take_upstreams();
    if !auth_upstreams.is_empty() {
        upstreams.extend(auth_upstreams.into_values());
        upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let auth_cache = b.location_policies.iter().flatten().any(|p| {
        p.external_auth
            .as_ref()
            .is_some_and(|a| a.cache_key.is_some())
    });
    for (service, refused) in b.backends.take_refused() {
        b.problems.push(Problem::warning(
            &ObjectRef::new(Kind::Service, service),
            None,
            format!(
                "left out of its upstream: {}",
                refused.into_iter().collect::<Vec<_>>().join("; ")
            ),
        ));
    }
    let (response_headers, request_headers) =
        global_headers(cluster, &settings, &opts.modules, b.problems);
    let object = ObjectRef::cluster_scoped(Kind::ConfigMap, "--configmap");
    if !opts.modules.headers_more && settings.hsts && !b.tls_hosts.is_empty() {
        b.problems.push(Problem::warning(&object, Some("data[\"hsts\"]".into()), "nginx's headers-more module (Debian's libnginx-mod-http-headers-more-filter) is not installed: no Strict-Transport-Security header is sent"));
    }
    if !opts.modules.brotli && settings.enable_brotli {
        b.problems.push(Problem::warning(&object, Some("data[\"enable-brotli\"]".into()), "nginx's brotli module (Debian's libnginx-mod-http-brotli-filter) is not installed: answers are not compressed with brotli"));
    }

    certs.used.remove(&default_certificate.name);
    let mut certificates = vec![default_certificate];
    certificates.extend(certs.used.into_values());
    // Client certificates of proxy-ssl-secret, once each.
    for (name, c) in policy_certs {
        if !certificates.iter().any(|x| x.name == name) {
            certificates.push(c);
        }
    }

    let longest = servers
        .iter()
        .flat_map(|s| std::iter::once(s.server_name.len()).chain(s.aliases.iter().map(String::len)))
        .chain(www_redirects.iter().map(|w| w.server_name.len()))
        .max()
        .unwrap_or(1);
    let exact = servers
        .iter()
        .filter(|s| !s.server_name.starts_with('~'))
        .count()
        + www_redirects.len();
    let modsecurity = crate::build::policy::modsecurity_http(
        &settings,
        &opts.modules,
        modsecurity_on,
        crs_used,
        &mut modsecurity_files,
    );
    let mut streams = streams::build(cluster, opts, b.problems);
    streams.passthrough = passthrough;
    let config = Config {
        http_port: opts.http_port,
        https_port: opts.https_port,
        server_names_hash_bucket_size: settings
            .server_name_hash_bucket_size
            .unwrap_or(0)
            .max(hash_bucket_size(longest)),
        server_names_hash_max_size: (exact.next_power_of_two() as u32 * 4)
            .max(settings.server_name_hash_max_size),
        variables_hash_bucket_size: settings.variables_hash_bucket_size,
        variables_hash_max_size: variables_hash_max_size(
            settings.variables_hash_max_size,
            cors_maps.len() + 5 * b.canaries.len() + 2 * limit_zones.len(),
        ),
        default_server,
        servers,
        upstreams,
        certificates,
        snippets: std::mem::take(&mut b.snippets),
        www_redirects,
        response_headers,
        request_headers,
        trusted: trusted.into_values().collect(),
        htpasswd: htpasswd.into_values().collect(),
        limit_zones: limit_zones.into_values().collect(),
        cors_maps: cors_maps.into_values().collect(),
        cors_profiles: cors_profiles.into_values().collect(),
        cors,
        auth_cache,
        canaries: b.canaries.values().cloned().collect(),
        modsecurity,
        modsecurity_files: modsecurity_files.into_values().collect(),
        global_error_pages,
        modules: opts.modules.clone(),
        dynamic_endpoints: dynamic_endpoints(opts),
        streams,
        settings,
    };
    problems.sort();
    problems.dedup();
    Build {
        config: std::sync::Arc::new(config),
        problems,
        served: parsed.into_iter().map(|p| p.key).collect(),
    }
}

/// The suffix of the upstreams of an Ingress that talks to its backends in
/// its own way (see [`ServiceRef::variant`]): the protocol and a hash of
/// its TLS settings.
fn upstream_variant(a: &crate::annotations::Annotations) -> Option<String> {
    use crate::annotations::backend::Protocol;
    use std::hash::{Hash, Hasher};
    let proto = a.backend.protocol;
    // A balancer policy gets upstreams of its own, named by the policy.
    let policy = balance_policy(a).map(|p| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        p.hash(&mut h);
        a.balance.hash.as_ref().map(|x| x.subset).hash(&mut h);
        format!("lb{:06x}", h.finish() as u32 & 0xff_ffff)
    });
    if matches!(proto, Protocol::Http | Protocol::AutoHttp) && a.tls.proxy.is_none() {
        return policy;
    }
    let name = match proto {
        Protocol::Http | Protocol::AutoHttp => "http",
        Protocol::Https => "https",
        Protocol::Grpc => "grpc",
        Protocol::Grpcs => "grpcs",
        Protocol::Fcgi => "fcgi",
    };
    let base = match &a.tls.proxy {
        Some(tls) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            tls.hash(&mut h);
            format!("{name}_{:08x}", h.finish() as u32)
        }
        None => name.to_string(),
    };
    Some(match policy {
        Some(p) => format!("{base}_{p}"),
        None => base,
    })
}

/// The balancer policy an Ingress's annotations ask for: affinity first,
/// as in ingress-nginx, then hashing.
fn balance_policy(a: &crate::annotations::Annotations) -> Option<crate::config::BalancePolicy> {
    use crate::config::BalancePolicy;
    let b = &a.balance;
    if let Some(c) = &b.affinity {
        return Some(if c.persistent {
            BalancePolicy::StickyPersistent
        } else {
            BalancePolicy::Sticky
        });
    }
    b.hash.as_ref().map(|h| {
        if h.subset.is_some() {
            BalancePolicy::HashSubset
        } else {
            BalancePolicy::Hash
        }
    })
}

/// The headers of the `add-headers` (response) and `proxy-set-headers`
/// (request) ConfigMaps.
fn global_headers(
    cluster: &Cluster,
    settings: &Settings,
    modules: &crate::config::Modules,
    problems: &mut Vec<Problem>,
) -> (
    Vec<crate::config::ExpandableHeader>,
    Vec<crate::config::ExpandableHeader>,
) {
    let read = |nn: &Option<NamespacedName>, key: &str, problems: &mut Vec<Problem>| {
        let Some(nn) = nn else { return Vec::new() };
        let object = ObjectRef::new(Kind::ConfigMap, nn.key());
        let Some(cm) = cluster.config_maps.get(&nn.key()) else {
            problems.push(Problem::warning(
                &object,
                None,
                format!("named by the global setting {key}, but not found; no headers are added"),
            ));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in cm.data.iter().flatten() {
            let header = crate::values::HeaderName::parse(k).and_then(|name| {
                crate::values::Expandable::parse(v, 4096)
                    .map(|value| crate::config::ExpandableHeader { name, value })
            });
            match header {
                Ok(h) => out.push(h),
                Err(e) => problems.push(Problem::warning(
                    &object,
                    Some(format!("data[{}]", crate::problem::Quoted(k))),
                    format!("{e}; this header is not added"),
                )),
            }
        }
        out
    };
    let mut response = read(&settings.add_headers, "add-headers", problems);
    if !response.is_empty() && !modules.headers_more {
        problems.push(Problem::warning(
            &ObjectRef::cluster_scoped(Kind::ConfigMap, "--configmap"),
            Some("data[\"add-headers\"]".into()),
            "nginx's headers-more module (Debian's libnginx-mod-http-headers-more-filter) is not installed; the headers are not added",
        ));
        response.clear();
    }
    (
        response,
        read(&settings.proxy_set_headers, "proxy-set-headers", problems),
    )
}

/// nginx stores each name in a bucket slot of a pointer plus the name
/// aligned to a pointer; a bucket must hold one slot and an end marker.
fn hash_bucket_size(longest_name: usize) -> u32 {
    let slot = 8 + (longest_name + 2).div_ceil(8) * 8;
    ((slot + 8).next_power_of_two() as u32).max(128)
}

/// The key two rules collide on: the same host and the same path match.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RouteKey {
    Exact(HttpPath),
    /// The prefix form (no trailing `/`), and whether the path was written
    /// with a trailing `/`. Prefix `/foo` and `/foo/` match the same
    /// requests, so the Kubernetes rules leave the tie to the controller:
    /// as in ingress-nginx, both are served, the longer one as written
    /// (`/foo/`) taking `/foo/` and below, the other `/foo` itself. Twins:
    /// see `Builder::server`.
    Prefix(HttpPath, bool),
    Regex(RegexPath),
}

fn route_key(m: &PathMatch) -> RouteKey {
    match m {
        PathMatch::Exact(p) => RouteKey::Exact(p.clone()),
        PathMatch::Prefix(p) => {
            let prefix = p.as_prefix();
            let slash = prefix.as_str() != "/" && p.as_str().ends_with('/');
            RouteKey::Prefix(prefix, slash)
        }
        PathMatch::Regex(r) => RouteKey::Regex(r.clone()),
    }
}

struct Route<'p> {
    /// Index of the Ingress in precedence order.
    ing: usize,
    path: &'p ParsedPath,
    action: Action,
}

/// Where a default backend came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DefaultFrom {
    /// `spec.defaultBackend` of the Ingress at this index.
    Ingress(usize),
    /// `--default-backend-service`.
    Flag,
}

/// The routes of one host, sorted by key. A sorted list rather than a
/// `BTreeMap`: hosts have a few routes each, and a map's first node alone
/// is over a kilobyte (14 MB at 10,000 hosts, during every build).
#[derive(Default)]
struct Routes<'p>(Vec<(RouteKey, Route<'p>)>);

impl<'p> Routes<'p> {
    fn get(&self, key: &RouteKey) -> Option<&Route<'p>> {
        let i = self.0.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    fn get_mut(&mut self, key: &RouteKey) -> Option<&mut Route<'p>> {
        let i = self.0.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(&mut self.0[i].1)
    }

    /// Adds a route, replacing the one with the same key (as a map does).
    fn insert(&mut self, key: RouteKey, route: Route<'p>) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.0[i] = (key, route),
            Err(i) => self.0.insert(i, (key, route)),
        }
    }

    /// Whether Prefix `p` written with a trailing `/` is a route too (the
    /// twin of Prefix `p`), found without building its key.
    fn has_slash_twin(&self, p: &HttpPath) -> bool {
        use std::cmp::Ordering;
        self.0
            .binary_search_by(|(k, _)| match k {
                RouteKey::Exact(_) => Ordering::Less,
                RouteKey::Prefix(q, slash) => q.cmp(p).then(slash.cmp(&true)),
                RouteKey::Regex(_) => Ordering::Greater,
            })
            .is_ok()
    }

    fn values(&self) -> impl Iterator<Item = &Route<'p>> {
        self.0.iter().map(|(_, r)| r)
    }
}

impl<'a, 'p> IntoIterator for &'a Routes<'p> {
    type Item = (&'a RouteKey, &'a Route<'p>);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (RouteKey, Route<'p>)>,
        fn(&'a (RouteKey, Route<'p>)) -> (&'a RouteKey, &'a Route<'p>),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, r)| (k, r))
    }
}

#[derive(Default)]
struct HostRoutes<'p> {
    routes: Routes<'p>,
    /// The default backend for unmatched paths: where it came from and
    /// what to do.
    default: Option<(DefaultFrom, Action)>,
}

struct TlsChoice {
    ingress: usize,
    secret: Option<DnsSubdomain>,
    field: String,
}

struct Builder<'p, 'c> {
    parsed: &'p [ParsedIngress],
    backends: Backends<'c, 'p>,
    problems: &'p mut Vec<Problem>,
    hosts: BTreeMap<HostPattern, HostRoutes<'p>>,
    /// Rules without a host: the catch-all server for requests whose host
    /// no rule names. Its default backend (from Ingresses without host
    /// rules) also serves unmatched paths of hosts without one of their own.
    any: HostRoutes<'p>,
    /// The comment source of the `--default-backend-service` location.
    flag_source: Option<Source>,
    /// Snippets, each once.
    snippets: Vec<String>,
    /// The annotations prefix, for field names in problems.
    prefix: &'p str,
    /// Each Ingress's annotations, with the objects they name looked up
    /// (in precedence order, as `parsed`).
    policies: &'p [policy::IngressPolicy],
    /// Each Ingress's `default-backend` Service.
    fallbacks: &'p [Option<ServiceRef>],
    settings: &'p Settings,
    /// Each Ingress's final location policy, shared by its locations.
    location_policies: Vec<Option<Arc<LocationPolicy>>>,
    /// The same without the global external auth, for the paths of
    /// `no-auth-locations` (`None` where it is the same).
    location_policies_open: Vec<Option<Arc<LocationPolicy>>>,
    /// The upstream of `--default-backend-service`, for error pages.
    flag_upstream: Option<String>,
    https_port: u16,
    /// Hosts some Ingress lists under `spec.tls`.
    tls_hosts: BTreeSet<HostPattern>,
    /// The canaries of the routes, by variable.
    canaries: BTreeMap<String, Arc<crate::config::CanaryChoice>>,
    /// The default certificate's name: a server that verifies client
    /// certificates names it when it has none of its own, for a TLS
    /// context of its own (nginx asks for client certificates per context).
    default_cert: String,
}

/// What the oldest Ingress of a host sets for the whole host.
#[derive(Clone, Debug, Default)]
struct ServerWide {
    aliases: Vec<HostPattern>,
    from_to_www: bool,
    app_root: Option<crate::values::PlainPath>,
    ssl_ciphers: Option<crate::values::CipherList>,
    prefer_server_ciphers: Option<bool>,
    /// `auth-tls-*`: the Ingress that decides, and its settings or why
    /// they are not usable.
    client_auth: Option<(usize, Result<ClientAuth, String>)>,
}

impl<'p> Builder<'p, '_> {
    fn action(&mut self, ing: usize, backend: &'p ServiceRef, field: &str) -> Action {
        let p = &self.parsed[ing];
        if let Some(r) = &p.annotations.redirect.redirect {
            return Action::Redirect(r.clone());
        }
        if let Some(reason) = &self.policies[ing].denied {
            return Action::Status {
                code: 503,
                reason: reason.clone(),
            };
        }
        // With dynamic endpoints, a Service without ready endpoints keeps
        // its upstream (answering 503) unless the Ingress's default-backend
        // answers for it.
        let resolution = if self.fallbacks[ing].is_some() {
            self.backends.resolve(backend)
        } else {
            self.backends.resolve_or_empty(backend)
        };
        match resolution {
            Resolution::Upstream(upstream) => Action::Proxy {
                upstream,
                rewrite: None,
                canary: None,
            },
            Resolution::Empty { upstream, reason } => {
                self.problems.push(Problem::warning(
                    &p.object,
                    Some(field.to_string()),
                    format!("{reason}; answering 503 until it has some"),
                ));
                Action::Proxy {
                    upstream,
                    rewrite: None,
                    canary: None,
                }
            }
            Resolution::Unavailable(reason) => {
                // The Ingress's default-backend answers, told why.
                if let Some(fb) = &self.fallbacks[ing] {
                    match self.backends.resolve(fb) {
                        Resolution::Upstream(upstream) => {
                            self.problems.push(Problem::warning(
                                &p.object,
                                Some(field.to_string()),
                                format!(
                                    "{reason}; its default-backend {} answers",
                                    fb.name.as_str()
                                ),
                            ));
                            return Action::Fallback {
                                upstream,
                                code: 503,
                                reason,
                            };
                        }
                        Resolution::Unavailable(why) | Resolution::Empty { reason: why, .. } => {
                            self.problems.push(Problem::warning(
                                &p.object,
                                Some(format!(
                                    "metadata.annotations[\"{}/default-backend\"]",
                                    self.prefix
                                )),
                                format!(
                                    "{why}; it cannot answer for the backends without endpoints"
                                ),
                            ))
                        }
                    }
                }
                self.problems.push(Problem::warning(
                    &p.object,
                    Some(field.to_string()),
                    format!("{reason}; answering 503"),
                ));
                Action::Status { code: 503, reason }
            }
        }
    }

    /// Each Ingress's location policy, with the error pages of its
    /// `custom-http-errors` (to its default-backend, else to
    /// `--default-backend-service`), shared through `interner`.
    fn finish_policies(
        &mut self,
        interner: &mut policy::Interner,
        policies: Vec<Option<Box<LocationPolicy>>>,
    ) {
        let mut out = Vec::with_capacity(self.parsed.len());
        let mut open = Vec::with_capacity(self.parsed.len());
        for ((i, p), pol) in self.parsed.iter().enumerate().zip(policies) {
            let mut pol = pol.map(|b| *b);
            let b = &p.annotations.backend;
            if let Some(codes) = &b.custom_http_errors {
                let target = match self.fallbacks[i]
                    .as_ref()
                    .map(|fb| self.backends.resolve(fb))
                {
                    Some(Resolution::Upstream(u)) => Some(u),
                    _ => self.flag_upstream.clone(),
                };
                match target {
                    Some(upstream) => {
                        let pol = pol.get_or_insert_with(LocationPolicy::default);
                        pol.error_pages = codes.iter().map(|c| ErrorPage::new(&upstream, *c)).collect();
                        pol.intercept_errors = !b.disable_intercept_errors;
                    }
                    None => self.problems.push(Problem::warning(
                        &p.object,
                        Some(format!("metadata.annotations[\"{}/custom-http-errors\"]", self.prefix)),
                        "needs a default-backend annotation or --default-backend-service to send the errors to; not intercepted",
                    )),
                }
            }
            let global_auth = pol
                .as_ref()
                .is_some_and(|x| x.external_auth.as_ref().is_some_and(|a| a.global));
            open.push(global_auth.then(|| {
                let mut x = pol.clone().expect("has a global auth");
                x.external_auth = None;
                let x = x.with_own_headers();
                interner.get(x)
            }));
            out.push(pol.map(|x| interner.get(x)));
        }
        self.location_policies = out;
        self.location_policies_open = open;
    }

    /// The named locations of the global `custom-http-errors`.
    fn global_error_pages(&mut self, configmap: Option<&NamespacedName>) -> Vec<ErrorPage> {
        let codes = &self.settings.custom_http_errors;
        if codes.is_empty() {
            return Vec::new();
        }
        match &self.flag_upstream {
            Some(u) => codes.iter().map(|c| ErrorPage::new(u, *c)).collect(),
            None => {
                if let Some(nn) = configmap {
                    self.problems.push(Problem::warning(
                        &ObjectRef::new(Kind::ConfigMap, nn.key()),
                        Some("data[\"custom-http-errors\"]".into()),
                        "needs --default-backend-service to send the errors to; not intercepted",
                    ));
                }
                Vec::new()
            }
        }
    }

    /// The server-wide annotations of each host, from the oldest Ingress
    /// of the host that sets each; the others are told.
    fn server_annotations(
        &mut self,
        hosts: &BTreeMap<HostPattern, HostRoutes<'p>>,
    ) -> BTreeMap<HostPattern, ServerWide> {
        let mut out = BTreeMap::new();
        // An alias no host owns, and that no other host took first.
        let mut taken: BTreeMap<HostPattern, HostPattern> = BTreeMap::new();
        for (host, hr) in hosts {
            let mut ings: Vec<usize> = hr.routes.values().map(|r| r.ing).collect();
            if let Some((DefaultFrom::Ingress(i), _)) = hr.default {
                ings.push(i);
            }
            ings.sort();
            ings.dedup();
            let mut wide = ServerWide::default();
            let mut from: BTreeMap<&str, usize> = BTreeMap::new();
            for &i in &ings {
                let p = &self.parsed[i];
                let a = &p.annotations;
                let mut claim = |name: &'static str,
                                 set: bool,
                                 problems: &mut Vec<Problem>|
                 -> bool {
                    if !set {
                        return false;
                    }
                    match from.get(name) {
                        None => {
                            from.insert(name, i);
                            true
                        }
                        Some(&w) if w != i => {
                            problems.push(Problem::warning(
                                &p.object,
                                Some(format!("metadata.annotations[\"{}/{name}\"]", self.prefix)),
                                format!("host {host} takes it from ingress {}, which is older or sorts first; this one is not used there", self.parsed[w].key),
                            ));
                            false
                        }
                        Some(_) => false,
                    }
                };
                if claim("server-alias", a.server.aliases.is_some(), self.problems) {
                    wide.aliases = a.server.aliases.clone().unwrap_or_default();
                }
                if claim("from-to-www-redirect", a.server.from_to_www, self.problems) {
                    wide.from_to_www = true;
                }
                if claim("app-root", a.server.app_root.is_some(), self.problems) {
                    wide.app_root = a.server.app_root.clone();
                }
                if claim("ssl-ciphers", a.tls.ssl_ciphers.is_some(), self.problems) {
                    wide.ssl_ciphers = a.tls.ssl_ciphers.clone();
                }
                if claim(
                    "auth-tls-secret",
                    self.policies[i].client_auth.is_some(),
                    self.problems,
                ) {
                    wide.client_auth = self.policies[i].client_auth.clone().map(|c| (i, c));
                }
                if claim(
                    "ssl-prefer-server-ciphers",
                    a.tls.prefer_server_ciphers.is_some(),
                    self.problems,
                ) {
                    wide.prefer_server_ciphers = a.tls.prefer_server_ciphers;
                }
            }
            if let Some(&i) = from.get("server-alias") {
                let p = &self.parsed[i];
                let field = format!("metadata.annotations[\"{}/server-alias\"]", self.prefix);
                wide.aliases.retain(|alias| {
                    let why = if alias == host {
                        Some("it is the host itself".to_string())
                    } else if hosts.contains_key(alias) {
                        Some("a rule serves that host".to_string())
                    } else {
                        taken
                            .get(alias)
                            .map(|other| format!("host {other} took it first"))
                    };
                    match why {
                        Some(why) => {
                            self.problems.push(Problem::warning(
                                &p.object,
                                Some(field.clone()),
                                format!("alias {alias} is not used: {why}"),
                            ));
                            false
                        }
                        None => {
                            taken.insert(alias.clone(), host.clone());
                            true
                        }
                    }
                });
            }
            out.insert(host.clone(), wide);
        }
        out
    }

    /// The servers of `from-to-www-redirect`: `www.HOST` (or `HOST` without
    /// `www.`) redirecting to HOST, unless a server has that name.
    fn www_redirects(
        &mut self,
        servers: &[Arc<Server>],
        wide: &BTreeMap<HostPattern, ServerWide>,
        certs: &mut CertificateCache<'_>,
    ) -> Vec<crate::config::WwwRedirect> {
        let names: BTreeSet<&str> = servers
            .iter()
            .flat_map(|s| {
                std::iter::once(s.server_name.as_str()).chain(s.aliases.iter().map(String::as_str))
            })
            .collect();
        let mut out = Vec::new();
        for s in servers {
            let Some(HostPattern::Exact(host)) = &s.host else {
                continue;
            };
            if !wide
                .get(s.host.as_ref().expect("a host"))
                .is_some_and(|w| w.from_to_www)
            {
                continue;
            }
            let from = match host.strip_prefix("www.") {
                Some(bare) => bare.to_string(),
                None => format!("www.{host}"),
            };
            if names.contains(from.as_str()) || HostPattern::parse(&from).is_err() {
                continue;
            }
            // The host's certificate, when it names the other host too.
            let certificate = s.certificate.as_ref().and_then(|name| {
                let from_host = HostPattern::Exact(from.clone());
                certs.covering(name, &from_host).then(|| name.clone())
            });
            out.push(crate::config::WwwRedirect {
                server_name: from,
                to: host.clone(),
                certificate,
            });
        }
        out
    }

    /// How plain HTTP requests to a location of an Ingress are redirected
    /// to HTTPS, if they are: `force-ssl-redirect`, or `ssl-redirect` on a
    /// host with TLS; never under `no-tls-redirect-locations`.
    fn https_redirect(
        &self,
        ing: usize,
        tls: bool,
        path: &str,
    ) -> Option<crate::config::HttpsRedirect> {
        let r = &self.parsed[ing].annotations.redirect;
        let s = self.settings;
        if s.no_tls_redirect_locations
            .iter()
            .any(|p| path.starts_with(p.as_str()))
        {
            return None;
        }
        let force = r.force_ssl_redirect.unwrap_or(s.force_ssl_redirect);
        let ssl = r.ssl_redirect.unwrap_or(s.ssl_redirect);
        (force || (ssl && tls)).then(|| crate::config::HttpsRedirect {
            code: s.http_redirect_code,
            keep_slash: r
                .preserve_trailing_slash
                .unwrap_or(s.preserve_trailing_slash),
            port: r
                .use_port_in_redirects
                .unwrap_or(s.use_port_in_redirects)
                .then_some(self.https_port),
        })
    }

    /// `--default-backend-service`: the Service's first port.
    fn default_backend_flag(&mut self, cluster: &Cluster, svc: &NamespacedName) {
        let object = ObjectRef::new(Kind::Service, svc.key());
        let flag = "--default-backend-service";
        let port = cluster
            .services
            .get(&svc.key())
            .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port));
        let action = match (
            Dns1035Label::parse(svc.name.as_str()),
            port.map(crate::values::port_number),
        ) {
            (Ok(name), Some(Ok(port))) => {
                let backend = ServiceRef {
                    namespace: svc.namespace.clone(),
                    name,
                    port: PortRef::Number(port),
                    cluster_ip: false,
                    variant: None,
                    balance: None,
                };
                match self.backends.resolve_once(&backend) {
                    Resolution::Upstream(upstream) => Action::Proxy {
                        upstream,
                        rewrite: None,
                        canary: None,
                    },
                    Resolution::Empty { upstream, reason } => {
                        self.problems.push(Problem::warning(
                            &object,
                            Some(flag.into()),
                            format!("{reason}; answering 503 until it has some"),
                        ));
                        Action::Proxy {
                            upstream,
                            rewrite: None,
                            canary: None,
                        }
                    }
                    Resolution::Unavailable(reason) => {
                        self.problems.push(Problem::warning(
                            &object,
                            Some(flag.into()),
                            format!("{reason}; answering 503"),
                        ));
                        Action::Status { code: 503, reason }
                    }
                }
            }
            (Err(e), _) => {
                self.problems.push(Problem::warning(
                    &object,
                    Some(flag.into()),
                    format!("not a Service name: {e}; answering 503"),
                ));
                Action::Status {
                    code: 503,
                    reason: "the default backend service is invalid".into(),
                }
            }
            (_, None) => {
                let reason = format!("service {} not found or without ports", svc);
                self.problems.push(Problem::warning(
                    &object,
                    Some(flag.into()),
                    format!("{reason}; answering 503"),
                ));
                Action::Status { code: 503, reason }
            }
            (_, Some(Err(e))) => {
                self.problems.push(Problem::warning(
                    &object,
                    Some(flag.into()),
                    format!("{e}; answering 503"),
                ));
                Action::Status {
                    code: 503,
                    reason: e.to_string(),
                }
            }
        };
        self.flag_source = Some(Source {
            namespace: svc.namespace.as_str().to_string(),
            name: svc.name.as_str().to_string(),
            field: flag.to_string(),
        });
        if let Action::Proxy { upstream, .. } = &action {
            self.flag_upstream = Some(upstream.clone());
        }
        self.any.default = Some((DefaultFrom::Flag, action));
    }

    fn collect_routes(&mut self) {
        let parsed = self.parsed;
        let mut canaries = Vec::new();
        for (idx, ing) in parsed.iter().enumerate() {
            // A canary's paths join the main Ingress's, once those are known.
            if ing.annotations.canary.enabled {
                canaries.push(idx);
                continue;
            }
            for rule in &ing.rules {
                for path in &rule.paths {
                    let key = route_key(&path.matcher);
                    let target = match &rule.host {
                        // Most paths' hosts are there already: no copy of
                        // the name for those.
                        Some(h) if self.hosts.contains_key(h) => {
                            self.hosts.get_mut(h).expect("present")
                        }
                        Some(h) => self.hosts.entry(h.clone()).or_default(),
                        None => &mut self.any,
                    };
                    if let Some(existing) = target.routes.get(&key) {
                        let winner = &parsed[existing.ing];
                        let host = rule
                            .host
                            .as_ref()
                            .map_or("every host".to_string(), |h| format!("host {h}"));
                        let msg = if existing.ing == idx {
                            format!(
                                "duplicate of {} for {host}; not served twice",
                                existing.path.field
                            )
                        } else {
                            format!(
                                "the same path for {host} is served by ingress {} ({}), which is older or sorts first; this path is not served",
                                winner.key, existing.path.field
                            )
                        };
                        self.problems.push(Problem::warning(
                            &ing.object,
                            Some(path.field.clone()),
                            msg,
                        ));
                        continue;
                    }
                    let action = self.action(idx, &path.backend, &path.field);
                    let target = match &rule.host {
                        Some(h) => self.hosts.get_mut(h).expect("inserted above"),
                        None => &mut self.any,
                    };
                    target.routes.insert(
                        key,
                        Route {
                            ing: idx,
                            path,
                            action,
                        },
                    );
                }
            }
            if let Some(db) = &ing.default_backend {
                let action = self.action(idx, db, "spec.defaultBackend");
                let hosts: BTreeSet<&HostPattern> =
                    ing.rules.iter().filter_map(|r| r.host.as_ref()).collect();
                let mut conflicts = Vec::new();
                if hosts.is_empty() {
                    match &self.any.default {
                        None => self.any.default = Some((DefaultFrom::Ingress(idx), action)),
                        Some((DefaultFrom::Ingress(w), _)) => {
                            conflicts.push(("every host".to_string(), *w))
                        }
                        Some((DefaultFrom::Flag, _)) => {}
                    }
                } else {
                    for h in hosts {
                        let hr = self.hosts.entry(h.clone()).or_default();
                        match &hr.default {
                            None => hr.default = Some((DefaultFrom::Ingress(idx), action.clone())),
                            Some((DefaultFrom::Ingress(w), _)) if *w != idx => {
                                conflicts.push((format!("host {h}"), *w))
                            }
                            Some(_) => {}
                        }
                    }
                }
                for (what, w) in conflicts {
                    self.problems.push(Problem::warning(
                        &ing.object,
                        Some("spec.defaultBackend".into()),
                        format!(
                            "the default backend for {what} is already set by ingress {}, which is older or sorts first; not used there",
                            parsed[w].key
                        ),
                    ));
                }
            }
        }
        for idx in canaries {
            self.add_canary(idx);
        }
    }

    /// Adds a canary Ingress's paths to the main routes of the same host
    /// and path.
    fn add_canary(&mut self, idx: usize) {
        let ing = &self.parsed[idx];
        if ing.default_backend.is_some() {
            self.problems.push(Problem::warning(
                &ing.object,
                Some("spec.defaultBackend".into()),
                "a canary Ingress's default backend is not used (as in ingress-nginx)",
            ));
        }
        for rule in &ing.rules {
            let host = rule
                .host
                .as_ref()
                .map_or("every host".to_string(), |h| format!("host {h}"));
            for path in &rule.paths {
                let key = route_key(&path.matcher);
                let found = match &rule.host {
                    Some(h) => self.hosts.get(h).and_then(|r| r.routes.get(&key)),
                    None => self.any.routes.get(&key),
                };
                let warn = |b: &mut Self, msg: String| {
                    b.problems
                        .push(Problem::warning(&ing.object, Some(path.field.clone()), msg));
                };
                let Some(main) = found else {
                    warn(
                        self,
                        format!(
                            "no Ingress serves this path for {host}: a canary alone makes no route"
                        ),
                    );
                    continue;
                };
                let main_ing = main.ing;
                let Action::Proxy {
                    upstream: main_upstream,
                    canary: existing,
                    ..
                } = &main.action
                else {
                    warn(
                        self,
                        format!(
                            "the main Ingress {} does not proxy this path for {host}; the canary is not used",
                            self.parsed[main_ing].key
                        ),
                    );
                    continue;
                };
                if let Some(c) = existing {
                    warn(
                        self,
                        format!(
                            "this path for {host} already has the canary {}; not used",
                            c.ingress
                        ),
                    );
                    continue;
                }
                let main_upstream = main_upstream.clone();
                let canary_upstream = match self.backends.resolve(&path.backend) {
                    Resolution::Upstream(u) => u,
                    Resolution::Empty { reason, .. } | Resolution::Unavailable(reason) => {
                        warn(
                            self,
                            format!("{reason}: every request goes to the main backend"),
                        );
                        continue;
                    }
                };
                let choice = Arc::new(canary_choice(
                    &ing.annotations.canary,
                    &main_upstream,
                    &canary_upstream,
                    &ing.key.to_string(),
                ));
                self.canaries.insert(choice.var.clone(), choice.clone());
                let routes = match &rule.host {
                    Some(h) => &mut self.hosts.get_mut(h).expect("found above").routes,
                    None => &mut self.any.routes,
                };
                if let Some(Route {
                    action: Action::Proxy { canary, .. },
                    ..
                }) = routes.get_mut(&key)
                {
                    *canary = Some(choice);
                }
            }
        }
    }

    fn collect_tls(&mut self) -> BTreeMap<HostPattern, TlsChoice> {
        let mut out: BTreeMap<HostPattern, TlsChoice> = BTreeMap::new();
        for (idx, ing) in self.parsed.iter().enumerate() {
            for t in &ing.tls {
                let hosts: BTreeSet<HostPattern> = if t.hosts.is_empty() {
                    ing.rules.iter().filter_map(|r| r.host.clone()).collect()
                } else {
                    t.hosts.iter().cloned().collect()
                };
                for h in hosts {
                    match out.get(&h) {
                        None => {
                            out.insert(
                                h,
                                TlsChoice {
                                    ingress: idx,
                                    secret: t.secret.clone(),
                                    field: t.field.clone(),
                                },
                            );
                        }
                        Some(c) if c.ingress != idx && c.secret != t.secret => {
                            self.problems.push(Problem::warning(
                                &ing.object,
                                Some(t.field.clone()),
                                format!(
                                    "host {h} already takes its certificate from ingress {}, which is older or sorts first; this TLS entry is not used for it",
                                    self.parsed[c.ingress].key
                                ),
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        out
    }

    /// Adds a server built apart: its problems, and its snippets numbered
    /// in [`Config::snippets`] (each text once, in the order servers and
    /// their locations are added). Returns the server, renumbered.
    fn add_server(&mut self, built: BuiltServer) -> Arc<Server> {
        let BuiltServer {
            mut server,
            problems,
            snippets,
        } = built;
        self.problems.extend(problems);
        if snippets.is_empty() {
            return server;
        }
        let global: Vec<usize> = snippets
            .into_iter()
            .map(|s| match self.snippets.iter().position(|x| *x == s) {
                Some(i) => i,
                None => {
                    self.snippets.push(s);
                    self.snippets.len() - 1
                }
            })
            .collect();
        let renumber = |i: &mut Option<usize>| {
            if let Some(i) = i {
                *i = global[*i];
            }
        };
        // Not shared yet: servers with snippets are shared after this.
        let s = Arc::make_mut(&mut server);
        renumber(&mut s.snippet);
        for l in &mut s.locations {
            renumber(&mut l.snippet);
        }
        for a in &mut s.external_auths {
            renumber(&mut a.snippet_index);
        }
        server
    }

    /// Why a location of Ingress `ing` on a server must answer 503 for its
    /// client certificates: it sets `auth-tls-*`, and the server verifies
    /// them otherwise (as an older Ingress says) or not at all (the
    /// catch-all server). Fail closed: never served with weaker
    /// verification than its own annotations ask for.
    fn client_auth_conflict(
        &self,
        ing: usize,
        host: Option<&HostPattern>,
        wide: &ServerWide,
    ) -> Option<String> {
        let own = self.policies[ing].client_auth.as_ref()?;
        let Some(host) = host else {
            return Some("auth-tls-* needs a host: the server for requests whose host no rule names does not verify client certificates".into());
        };
        match &wide.client_auth {
            Some((w, _)) if *w == ing => None,
            Some((_, Ok(theirs))) if own.as_ref().is_ok_and(|o| o.same_as(theirs)) => None,
            Some((w, _)) => Some(format!(
                "host {host} verifies client certificates as ingress {} sets them, not as this one does",
                self.parsed[*w].key
            )),
            None => Some(format!("host {host} does not verify client certificates")),
        }
    }

    fn source(&self, ing: usize, field: &str) -> Source {
        let p = &self.parsed[ing];
        Source {
            namespace: p.key.namespace.clone(),
            name: p.key.name.clone(),
            field: field.to_string(),
        }
    }

    /// One server: its routes, and a location for every request they do not
    /// match (the default backend, or 404). Reads the builder only, so
    /// servers are built on every core; [`Builder::add_server`] adds each.
    fn server(
        &self,
        host: Option<&HostPattern>,
        own: &HostRoutes<'p>,
        default: Option<&(DefaultFrom, Action)>,
        certificate: Option<String>,
        wide: ServerWide,
        global_error_pages: &[ErrorPage],
    ) -> BuiltServer {
        let mut problems = Vec::new();
        let mut snippets: Vec<String> = Vec::new();
        // Numbered within this server, renumbered by `add_server`.
        let mut snippet = |s: Option<&crate::annotations::snippets::Snippet>| {
            let s = s?.as_str();
            Some(match snippets.iter().position(|x| x == s) {
                Some(i) => i,
                None => {
                    snippets.push(s.to_string());
                    snippets.len() - 1
                }
            })
        };
        let tls = host.is_some_and(|h| self.tls_hosts.contains(h));
        let regex_mode = own.routes.values().any(|r| self.parsed[r.ing].regex());
        let mut error_pages: BTreeSet<ErrorPage> = global_error_pages.iter().cloned().collect();
        let fallback = match default {
            Some((from, action)) => {
                let (source, ing) = match from {
                    DefaultFrom::Ingress(ing) => {
                        (self.source(*ing, "spec.defaultBackend"), Some(*ing))
                    }
                    DefaultFrom::Flag => {
                        (self.flag_source.clone().expect("set with the flag"), None)
                    }
                };
                let action = match ing.and_then(|i| self.client_auth_conflict(i, host, &wide)) {
                    Some(reason) => {
                        let i = ing.expect("a conflict is an Ingress's");
                        problems.push(Problem::warning(
                            &self.parsed[i].object,
                            Some(format!(
                                "metadata.annotations[\"{}/auth-tls-secret\"]",
                                self.prefix
                            )),
                            format!("{reason}; its locations there answer 503"),
                        ));
                        Action::Status { code: 503, reason }
                    }
                    None => action.clone(),
                };
                let mut l = self.location(
                    Match::Root,
                    action,
                    Some(source),
                    None,
                    ing,
                    tls,
                    "/",
                    &global_error_pages.is_empty(),
                );
                if let Some(p) = &l.policy {
                    error_pages.extend(p.error_pages.iter().cloned());
                }
                if ing.is_none() {
                    l.vars = None;
                }
                l
            }
            None => Location {
                matcher: Match::Root,
                action: Action::Status {
                    code: 404,
                    reason: "no rule matches".into(),
                },
                source: None,
                snippet: None,
                policy: None,
                https_redirect: None,
                vars: None,
                plain_http: false,
            },
        };

        // Boxed: a map node holds eleven entries, and a location is large.
        let mut exact: BTreeMap<HttpPath, Box<Location>> = BTreeMap::new();
        let mut dirs: Vec<Location> = Vec::new();
        let mut root: Option<Location> = None;
        let mut exact_regexes: Vec<Location> = Vec::new();
        let mut regexes: Vec<(usize, Location)> = Vec::new();
        let mut ingresses = BTreeSet::new();
        let mut rules = BTreeSet::new();
        for (key, route) in &own.routes {
            let ing = &self.parsed[route.ing];
            ingresses.insert(route.ing);
            // `spec.rules[i].http.paths[j]` → `spec.rules[i]`.
            let rule = route.path.field.split(".http").next().unwrap_or_default();
            rules.insert((route.ing, rule));
            let source = Some(self.source(route.ing, &route.path.field));
            let action = match self.client_auth_conflict(route.ing, host, &wide) {
                Some(reason) => {
                    problems.push(Problem::warning(
                        &ing.object,
                        Some(format!(
                            "metadata.annotations[\"{}/auth-tls-secret\"]",
                            self.prefix
                        )),
                        format!("{reason}; its locations there answer 503"),
                    ));
                    Action::Status { code: 503, reason }
                }
                None => with_rewrite(&route.action, ing, &route.path.matcher),
            };
            let snippet = snippet(ing.annotations.snippets.configuration.as_ref());
            let path = match &route.path.matcher {
                PathMatch::Exact(p) | PathMatch::Prefix(p) => p.as_str(),
                PathMatch::Regex(r) => r.as_str(),
            };
            let loc = |matcher| {
                self.location(
                    matcher,
                    action.clone(),
                    source.clone(),
                    snippet,
                    Some(route.ing),
                    tls,
                    path,
                    &global_error_pages.is_empty(),
                )
            };
            let first = loc(Match::Root);
            if let Some(p) = &first.policy {
                error_pages.extend(p.error_pages.iter().cloned());
            }
            match key {
                // An exact location ending in `/` that proxies would answer
                // the path without its `/` with nginx's 301; as a regular
                // expression it never does. Exact matches go before every
                // other regular expression: they are the most specific.
                RouteKey::Exact(p) if p.as_str().len() > 1 && p.as_str().ends_with('/') => {
                    exact_regexes.push(Location {
                        matcher: Match::ExactSlash(p.clone()),
                        ..first
                    });
                }
                RouteKey::Exact(p) => {
                    exact.insert(
                        p.clone(),
                        Box::new(Location {
                            matcher: Match::Exact(p.clone()),
                            ..first
                        }),
                    );
                }
                RouteKey::Prefix(p, _) if p.as_str() == "/" => root = Some(first),
                // The twin written with `/` takes `/p/` and below: a longer
                // expression, so it is tried first.
                RouteKey::Prefix(p, true) if regex_mode => regexes.push((
                    p.as_str().len() + 1,
                    Location {
                        matcher: Match::Regex {
                            regex: RegexPath::literal_dir(p),
                            case_insensitive: false,
                        },
                        ..first
                    },
                )),
                RouteKey::Prefix(p, _) if regex_mode => regexes.push((
                    p.as_str().len(),
                    Location {
                        matcher: Match::Regex {
                            regex: RegexPath::literal_prefix(p),
                            case_insensitive: false,
                        },
                        ..first
                    },
                )),
                RouteKey::Prefix(p, slash) => {
                    // `location /p/` alone would answer `/p` with a redirect;
                    // the exact location serves it instead, unless an Exact
                    // rule for `/p` already does. Of twins, the one without
                    // `/` (first in key order) serves `/p`, the other `/p/`
                    // and below.
                    exact
                        .entry(p.clone())
                        .or_insert_with(|| Box::new(loc(Match::Exact(p.clone()))));
                    let twin = !slash && own.routes.has_slash_twin(p);
                    if !twin {
                        dirs.push(Location {
                            matcher: Match::PrefixDir(p.clone()),
                            ..first
                        });
                    }
                }
                RouteKey::Regex(r) => regexes.push((
                    r.as_str().len(),
                    Location {
                        matcher: Match::Regex {
                            regex: r.clone(),
                            case_insensitive: true,
                        },
                        ..first
                    },
                )),
            }
        }
        if let Some((DefaultFrom::Ingress(ing), _)) = default {
            ingresses.insert(*ing);
            rules.insert((*ing, "spec.defaultBackend"));
        }
        // nginx tries regular expressions in order: longest path first.
        regexes.sort_by(|a, b| (Reverse(a.0), &a.1.matcher).cmp(&(Reverse(b.0), &b.1.matcher)));
        exact_regexes.sort_by(|a, b| a.matcher.cmp(&b.matcher));
        // The server-snippet of the oldest Ingress on this host that has one.
        let mut server_snippet = None;
        let mut with_snippet: Vec<usize> = own.routes.values().map(|r| r.ing).collect();
        with_snippet.sort();
        with_snippet.dedup();
        for ing in with_snippet {
            let p = &self.parsed[ing];
            let Some(s) = p.annotations.snippets.server.as_ref() else {
                continue;
            };
            if server_snippet.is_none() {
                server_snippet = snippet(Some(s));
            } else {
                problems.push(Problem::warning(
                    &p.object,
                    Some(format!("metadata.annotations[\"{}/server-snippet\"]", self.prefix)),
                    format!("{} already has a server-snippet from an older Ingress; this one is not used", host.map_or("the catch-all server".to_string(), |h| format!("host {h}"))),
                ));
            }
        }
        let mut locations: Vec<Location> = exact.into_values().map(|l| *l).collect();
        locations.extend(dirs);
        // A regular expression that matches every URI (regex mode's `/`,
        // `/.*`, `/(.*)`) leaves nothing to `location /`: nginx tries the
        // expressions before the prefix it found. Without it the host's
        // config costs nginx one location less at every load.
        let all_taken = regexes.iter().any(|(_, l)| {
            matches!(&l.matcher, Match::Regex { regex, .. } if matches!(regex.as_str(), "/" | "/.*" | "/(.*)"))
        });
        match root {
            Some(r) => locations.push(r),
            None if all_taken => {}
            None => locations.push(fallback),
        }
        locations.extend(exact_regexes);
        locations.extend(regexes.into_iter().map(|(_, l)| l));

        // The checks its locations ask, each once.
        let mut auths: Vec<Arc<crate::config::ExternalAuth>> = Vec::new();
        for l in &locations {
            if let Some(a) = l.policy.as_ref().and_then(|p| p.external_auth.as_ref())
                && !auths.iter().any(|x| x.location == a.location)
            {
                auths.push(a.clone());
            }
        }
        auths.sort_by(|a, b| a.location.cmp(&b.location));
        let external_auths: Vec<crate::config::AuthLocation> = auths
            .into_iter()
            .map(|auth| {
                let snippet_index =
                    auth.snippet
                        .as_deref()
                        .map(|s| match snippets.iter().position(|x| x == s) {
                            Some(i) => i,
                            None => {
                                snippets.push(s.to_string());
                                snippets.len() - 1
                            }
                        });
                crate::config::AuthLocation {
                    auth,
                    snippet_index,
                }
            })
            .collect();
        let mut mirrors: Vec<Arc<crate::config::MirrorTarget>> = Vec::new();
        for l in &locations {
            if let Some(m) = l.policy.as_ref().and_then(|p| p.mirror.as_ref())
                && !mirrors.iter().any(|x| x.location == m.location)
            {
                mirrors.push(m.clone());
            }
        }
        mirrors.sort_by(|a, b| a.location.cmp(&b.location));
        let (client_auth, client_auth_denied) = match wide.client_auth {
            Some((_, Ok(c))) => (Some(c), None),
            Some((_, Err(e))) => (None, Some(e)),
            None => (None, None),
        };
        // Its own TLS context: nginx asks for client certificates per
        // context, and a server without a certificate keeps the default
        // server's.
        let certificate = match (&client_auth, certificate) {
            (Some(_), None) => Some(self.default_cert.clone()),
            (_, c) => c,
        };
        let server = Arc::new(Server {
            server_name: host.map_or("_".to_string(), HostPattern::server_name),
            host: host.cloned(),
            certificate,
            ingresses: {
                let mut keys: Vec<String> = ingresses
                    .into_iter()
                    .map(|i| self.parsed[i].key.to_string())
                    .collect();
                keys.sort();
                keys
            },
            rules: rules
                .into_iter()
                .map(|(ing, field)| self.source(ing, field))
                .collect(),
            locations,
            snippet: server_snippet,
            aliases: wide.aliases.iter().map(HostPattern::server_name).collect(),
            tls,
            ssl_ciphers: wide.ssl_ciphers,
            ssl_prefer_server_ciphers: wide.prefer_server_ciphers,
            app_root: wide.app_root,
            error_pages: error_pages.into_iter().collect(),
            external_auths,
            mirrors,
            client_auth,
            client_auth_denied,
        });
        BuiltServer {
            server,
            problems,
            snippets,
        }
    }

    /// One location of an Ingress (`ing`), or of the flag's default backend
    /// (`None`), with what its annotations and the host's TLS mean for it.
    #[allow(clippy::too_many_arguments)]
    fn location(
        &self,
        matcher: Match,
        action: Action,
        source: Option<Source>,
        snippet: Option<usize>,
        ing: Option<usize>,
        tls: bool,
        path: &str,
        _no_global_errors: &bool,
    ) -> Location {
        let exempt = || {
            self.settings
                .no_auth_locations
                .iter()
                .any(|p| path.starts_with(p.as_str()))
        };
        let policy = ing.and_then(|i| match self.location_policies_open.get(i) {
            Some(Some(open)) if exempt() => Some(open.clone()),
            _ => self.location_policies.get(i).cloned().flatten(),
        });
        let https_redirect = ing.and_then(|i| self.https_redirect(i, tls, path));
        // Every location of an Ingress names it: the metrics log line
        // (`wicket_metrics` in nginx.conf) labels requests with these, and
        // log formats and error pages may name them.
        let vars = match &source {
            Some(src) => {
                let (service, port) = ing
                    .and_then(|i| self.backend_of(i, &src.field))
                    .unwrap_or_default();
                Some(Box::new(crate::config::LocationVars {
                    namespace: src.namespace.clone(),
                    ingress: src.name.clone(),
                    service,
                    port,
                    // nginx expands variables in `set`: a regex path's
                    // `$` would name one (and `$host` would put what the
                    // client sent in the metrics' path label).
                    path: path.replace('$', "${wicket_dollar}"),
                }))
            }
            None => None,
        };
        let plain_http = ing.is_some()
            && self
                .settings
                .no_tls_redirect_locations
                .iter()
                .any(|p| path.starts_with(p.as_str()));
        Location {
            matcher,
            action,
            source,
            snippet,
            policy,
            https_redirect,
            vars,
            plain_http,
        }
    }

    /// The Service name and port a field of an Ingress names.
    fn backend_of(&self, ing: usize, field: &str) -> Option<(String, String)> {
        let p = &self.parsed[ing];
        let b = if field == "spec.defaultBackend" {
            p.default_backend.as_ref()?
        } else {
            &p.rules
                .iter()
                .flat_map(|r| &r.paths)
                .find(|x| x.field == field)?
                .backend
        };
        let port = match &b.port {
            PortRef::Number(n) => n.to_string(),
            PortRef::Name(n) => n.as_str().to_string(),
        };
        Some((b.name.as_str().to_string(), port))
    }
}

/// A server built apart, with what [`Builder::add_server`] merges.
struct BuiltServer {
    server: Arc<Server>,
    problems: Vec<Problem>,
    /// Its snippets; the indexes in `server` point into this list.
    snippets: Vec<String>,
}

/// The servers of the previous config, by name, to share the unchanged.
struct OldServers<'a>(HashMap<&'a str, &'a Arc<Server>>);

impl<'a> OldServers<'a> {
    fn of(previous: Option<&'a Config>) -> Self {
        OldServers(
            previous
                .map(|p| {
                    p.servers
                        .iter()
                        .map(|s| (s.server_name.as_str(), s))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// The server, or the previous one if it is the same. Only for a
    /// final server: one whose snippets are numbered in the config.
    fn share(&self, server: Arc<Server>) -> Arc<Server> {
        match self.0.get(server.server_name.as_str()) {
            Some(old) if **old == server => Arc::clone(old),
            _ => server,
        }
    }
}

/// A ceiling for nginx's variables hash that it can always be built under:
/// four slots for each variable the Ingresses generate (`generated`) and
/// for the few hundred nginx and wicket define, so that no bucket overflows
/// (the default `variables_hash_bucket_size` 256 holds four of the longest
/// names), and never below the configured floor (2048 by default).
fn variables_hash_max_size(floor: u32, generated: usize) -> u32 {
    let wanted = (generated + 512).next_power_of_two().saturating_mul(4);
    u32::try_from(wanted).unwrap_or(u32::MAX).max(floor)
}

/// How requests are split between a location's main upstream and its
/// canary's, named by a hash of all of it.
fn canary_choice(
    c: &crate::annotations::canary::Canary,
    main: &str,
    canary: &str,
    ingress: &str,
) -> crate::config::CanaryChoice {
    let weight = (c.weight > 0 && c.weight < c.weight_total).then(|| {
        // split_clients takes at most two decimals; at least 0.01%.
        let pct = (f64::from(c.weight) * 100.0 / f64::from(c.weight_total)).max(0.01);
        let text = format!("{pct:.2}");
        format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
    });
    let mut choice = crate::config::CanaryChoice {
        var: String::new(),
        main: main.to_string(),
        canary: canary.to_string(),
        header_var: c
            .header
            .as_ref()
            .map(|h| format!("http_{}", h.as_str().to_ascii_lowercase().replace('-', "_"))),
        header_value: c.header.as_ref().and(c.header_value.clone()),
        header_pattern: c.header.as_ref().and(
            c.header_value
                .is_none()
                .then(|| c.header_pattern.clone())
                .flatten(),
        ),
        cookie_var: c.cookie.as_ref().map(|n| format!("cookie_{}", n.as_str())),
        weight,
        weight_all: c.weight_total > 0 && c.weight == c.weight_total,
        ingress: ingress.to_string(),
        source: String::new(),
    };
    let id = policy::short_hash(&format!("{choice:?}"));
    choice.var = format!("wicket_canary_{id}");
    let v = &choice.var;
    let h = if choice.header_var.is_some() {
        format!("${v}_h")
    } else {
        String::new()
    };
    let k = if choice.cookie_var.is_some() {
        format!("${v}_c")
    } else {
        String::new()
    };
    let w = match (&choice.weight, choice.weight_all) {
        (Some(_), _) => format!("${v}_w"),
        (None, true) => "1".to_string(),
        (None, false) => String::new(),
    };
    choice.source = format!("{h}:{k}:{w}");
    choice
}

/// Adds the Ingress's `rewrite-target` to a proxying action.
fn with_rewrite(action: &Action, ing: &ParsedIngress, matcher: &PathMatch) -> Action {
    let (
        Action::Proxy {
            upstream, canary, ..
        },
        Some(target),
    ) = (action, &ing.annotations.rewrite.target)
    else {
        return action.clone();
    };
    let regex = match matcher {
        PathMatch::Regex(r) => format!("(?i)^{}", r.as_str()),
        PathMatch::Exact(p) | PathMatch::Prefix(p) => {
            let lit = RegexPath::literal_prefix(p);
            format!("^{}", lit.as_str())
        }
    };
    Action::Proxy {
        upstream: upstream.clone(),
        rewrite: Some(Rewrite {
            regex,
            target: target.clone(),
        }),
        canary: canary.clone(),
    }
}

/// `--default-ssl-certificate`, when its Secret is usable.
fn default_ssl_certificate(
    cluster: &Cluster,
    nn: &NamespacedName,
    problems: &mut Vec<Problem>,
) -> Option<Certificate> {
    let object = ObjectRef::new(Kind::Secret, nn.key());
    let result = match cluster.secrets.get(&nn.key()) {
        None => Err("secret not found".to_string()),
        Some(s) => tls::from_secret(s),
    };
    match result {
        Ok(pair) => Some(pair.to_certificate(format!("secret {nn}"))),
        Err(e) => {
            problems.push(Problem::warning(
                &object,
                Some("--default-ssl-certificate".into()),
                format!("{e}; the self-signed default certificate is used"),
            ));
            None
        }
    }
}

struct CertificateCache<'c> {
    cluster: &'c Cluster,
    loaded: HashMap<ObjectKey, Result<(tls::TlsPair, Certificate), String>>,
    used: BTreeMap<String, Certificate>,
}

impl CertificateCache<'_> {
    /// Whether the certificate of this name names `host` too.
    fn covering(&self, name: &str, host: &HostPattern) -> bool {
        self.loaded
            .values()
            .any(|l| matches!(l, Ok((pair, cert)) if cert.name == name && pair.covers(host)))
    }

    /// The certificate name for a host, or `None` for the default one (with a
    /// warning saying why, where there is a reason).
    fn for_host(
        &mut self,
        ing: &ParsedIngress,
        t: &TlsChoice,
        host: &HostPattern,
        problems: &mut Vec<Problem>,
    ) -> Option<String> {
        let secret = t.secret.as_ref()?;
        let key = ObjectKey::new(ing.namespace.as_str(), secret.as_str());
        let cluster = self.cluster;
        let loaded = self.loaded.entry(key.clone()).or_insert_with(|| {
            let Some(s) = cluster.secrets.get(&key) else {
                return Err(format!("secret {key} not found"));
            };
            let pair = tls::from_secret(s).map_err(|e| format!("secret {key}: {e}"))?;
            let cert = pair.to_certificate(format!("secret {key}"));
            Ok((pair, cert))
        });
        match loaded {
            Ok((pair, cert)) => {
                if !pair.covers(host) {
                    problems.push(Problem::warning(
                        &ing.object,
                        Some(format!("{}.secretName", t.field)),
                        format!("the certificate of secret {key} does not name host {host}; clients will not trust it"),
                    ));
                }
                self.used.insert(cert.name.clone(), cert.clone());
                Some(cert.name.clone())
            }
            Err(e) => {
                problems.push(Problem::warning(
                    &ing.object,
                    Some(format!("{}.secretName", t.field)),
                    format!("{e}; host {host} is served with the default certificate"),
                ));
                None
            }
        }
    }
}

/// One copy of each distinct set of parsed annotations: Ingresses of one
/// team or chart carry the same ones, and a copy is about 1.6 KB (16 MB at
/// 10,000 Ingresses). Copies are compared whole, within the Ingresses whose
/// raw annotations hash alike.
#[derive(Default)]
struct AnnotationsInterner(HashMap<u64, Vec<Arc<crate::annotations::Annotations>>>);

impl AnnotationsInterner {
    fn get(
        &mut self,
        fingerprint: u64,
        a: &Arc<crate::annotations::Annotations>,
    ) -> Arc<crate::annotations::Annotations> {
        let same = self.0.entry(fingerprint).or_default();
        if let Some(found) = same.iter().find(|x| ***x == **a) {
            return found.clone();
        }
        same.push(a.clone());
        a.clone()
    }
}
