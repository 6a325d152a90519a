//! `build`: the whole of Kubernetes Ingress semantics, as a pure function
//! from a [`Cluster`] snapshot to a [`Config`] and the problems found.
//!
//! No IO, no clock, no randomness: the same snapshot gives the same config,
//! whatever order the objects arrived in.

pub mod backends;
pub mod class;
pub mod ingress;
pub mod tls;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::cluster::{Cluster, ObjectKey};
use crate::cluster::{Kind, ObjectRef};
use crate::config::{Action, Certificate, Config, Location, Match, Rewrite, Server, Source};
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
        }
    }
}

/// The DNS names of the `ExternalName` Services that the Ingresses wicket
/// serves (and `--default-backend-service`) point at: what
/// [`crate::resolve::Resolver`] looks up before a build. Names that are an
/// address, or `localhost`, need no lookup and are left out.
pub fn external_names(cluster: &Cluster, opts: &Options) -> BTreeSet<String> {
    let mut services: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (key, ing) in &cluster.ingresses {
        if !class::is_ours(ing, cluster, &opts.class) {
            continue;
        }
        let Some(spec) = &ing.spec else { continue };
        let paths = spec.rules.iter().flatten().filter_map(|r| r.http.as_ref());
        let backends = paths
            .flat_map(|h| &h.paths)
            .map(|p| &p.backend)
            .chain(&spec.default_backend);
        for b in backends {
            if let Some(svc) = &b.service {
                services.insert((key.namespace.as_str(), svc.name.as_str()));
            }
        }
    }
    if let Some(svc) = &opts.default_backend_service {
        services.insert((svc.namespace.as_str(), svc.name.as_str()));
    }
    services
        .into_iter()
        .filter_map(|(ns, name)| {
            let spec = cluster
                .services
                .get(&ObjectKey::new(ns, name))?
                .spec
                .as_ref()?;
            if spec.type_.as_deref() != Some("ExternalName") {
                return None;
            }
            let host = spec.external_name.as_deref()?.trim_end_matches('.');
            let needs_lookup = DnsSubdomain::parse(host).is_ok()
                && host.parse::<std::net::IpAddr>().is_err()
                && host != "localhost"
                && !host.ends_with(".localhost");
            needs_lookup.then(|| host.to_string())
        })
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
        .filter(|(_, ing)| class::is_ours(ing, cluster, &opts.class))
        .collect();
    // Each Ingress alone, on every core; its problems in order.
    let results = crate::parallel::map(&ours, |(key, ing)| {
        let mut problems = Vec::new();
        let parsed = match opts.quarantine.get(*key) {
            Some(reason) => Err(Problem::rejected(
                &ObjectRef::new(Kind::Ingress, (*key).clone()),
                None,
                format!("quarantined: {reason}"),
            )),
            None => ingress::parse(key, ing, &opts.annotations_prefix, policy, &mut problems),
        };
        (parsed, problems)
    });
    let mut parsed: Vec<ParsedIngress> = Vec::with_capacity(results.len());
    for (p, found) in results {
        problems.extend(found);
        match p {
            Ok(p) => parsed.push(p),
            Err(p) => problems.push(p),
        }
    }
    // Oldest first; objects without a creation time (from files) after all
    // others; then namespace and name.
    parsed.sort_by(|a, b| {
        (a.created.is_none(), &a.created, &a.key).cmp(&(b.created.is_none(), &b.created, &b.key))
    });

    let mut backends = Backends::new(cluster, &opts.backend_policy, opts.resolved.as_deref());
    backends.prefetch(parsed.iter().flat_map(|p| {
        let paths = p.rules.iter().flat_map(|r| &r.paths);
        paths.map(|path| &path.backend).chain(&p.default_backend)
    }));
    let mut b = Builder {
        parsed: &parsed,
        backends,
        problems: &mut problems,
        hosts: BTreeMap::new(),
        any: HostRoutes::default(),
        flag_source: None,
        snippets: Vec::new(),
        prefix: &opts.annotations_prefix,
    };
    b.collect_routes();
    if b.any.default.is_none()
        && let Some(svc) = &opts.default_backend_service
    {
        b.default_backend_flag(cluster, svc);
    }
    let default_certificate = match &opts.default_ssl_certificate {
        None => opts.default_certificate.clone(),
        Some(nn) => default_ssl_certificate(cluster, nn, b.problems)
            .unwrap_or_else(|| opts.default_certificate.clone()),
    };
    let tls = b.collect_tls();
    let mut certs = CertificateCache {
        cluster,
        loaded: HashMap::new(),
        used: BTreeMap::new(),
    };

    let default_cert = default_certificate.name.clone();
    let hosts = std::mem::take(&mut b.hosts);
    let any = std::mem::take(&mut b.any);
    let jobs: Vec<_> = hosts
        .iter()
        .map(|(host, hr)| {
            let certificate = match tls.get(host) {
                Some(t) => certs.for_host(&parsed[t.ingress], t, host, b.problems),
                None => None,
            };
            (host, hr, certificate)
        })
        .collect();
    let old = OldServers::of(previous);
    let built = crate::parallel::map(&jobs, |(host, hr, certificate)| {
        let default = hr.default.as_ref().or(any.default.as_ref());
        let mut built = b.server(Some(host), hr, default, certificate.clone());
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
    let default_server = b.server(None, &any, any.default.as_ref(), Some(default_cert));
    let default_server = Arc::unwrap_or_clone(b.add_server(default_server));
    let upstreams = b.backends.take_upstreams();
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

    certs.used.remove(&default_certificate.name);
    let mut certificates = vec![default_certificate];
    certificates.extend(certs.used.into_values());

    let longest = servers
        .iter()
        .map(|s| s.server_name.len())
        .max()
        .unwrap_or(1);
    let exact = servers
        .iter()
        .filter(|s| !s.server_name.starts_with('~'))
        .count();
    let config = Config {
        http_port: opts.http_port,
        https_port: opts.https_port,
        server_names_hash_bucket_size: hash_bucket_size(longest),
        server_names_hash_max_size: (exact.next_power_of_two() as u32 * 4).max(1024),
        default_server,
        servers,
        upstreams,
        certificates,
        settings,
        snippets: std::mem::take(&mut b.snippets),
    };
    problems.sort();
    problems.dedup();
    Build {
        config: std::sync::Arc::new(config),
        problems,
        served: parsed.into_iter().map(|p| p.key).collect(),
    }
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
    Prefix(HttpPath),
    Regex(RegexPath),
}

fn route_key(m: &PathMatch) -> RouteKey {
    match m {
        PathMatch::Exact(p) => RouteKey::Exact(p.clone()),
        PathMatch::Prefix(p) => RouteKey::Prefix(p.as_prefix()),
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

    /// Adds a route, replacing the one with the same key (as a map does).
    fn insert(&mut self, key: RouteKey, route: Route<'p>) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.0[i] = (key, route),
            Err(i) => self.0.insert(i, (key, route)),
        }
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
}

impl<'p> Builder<'p, '_> {
    fn action(&mut self, ing: usize, backend: &'p ServiceRef, field: &str) -> Action {
        match self.backends.resolve(backend) {
            Resolution::Upstream(upstream) => Action::Proxy {
                upstream,
                rewrite: None,
            },
            Resolution::Unavailable(reason) => {
                self.problems.push(Problem::warning(
                    &self.parsed[ing].object,
                    Some(field.to_string()),
                    format!("{reason}; answering 503"),
                ));
                Action::Status { code: 503, reason }
            }
        }
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
                };
                match self.backends.resolve_once(&backend) {
                    Resolution::Upstream(upstream) => Action::Proxy {
                        upstream,
                        rewrite: None,
                    },
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
        self.any.default = Some((DefaultFrom::Flag, action));
    }

    fn collect_routes(&mut self) {
        let parsed = self.parsed;
        for (idx, ing) in parsed.iter().enumerate() {
            for rule in &ing.rules {
                for path in &rule.paths {
                    let key = route_key(&path.matcher);
                    let target = match &rule.host {
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
        server
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
        let regex_mode = own.routes.values().any(|r| self.parsed[r.ing].regex());
        let fallback = match default {
            Some((from, action)) => Location {
                matcher: Match::Root,
                action: action.clone(),
                source: Some(match from {
                    DefaultFrom::Ingress(ing) => self.source(*ing, "spec.defaultBackend"),
                    DefaultFrom::Flag => self.flag_source.clone().expect("set with the flag"),
                }),
                snippet: None,
            },
            None => Location {
                matcher: Match::Root,
                action: Action::Status {
                    code: 404,
                    reason: "no rule matches".into(),
                },
                source: None,
                snippet: None,
            },
        };

        let mut exact: BTreeMap<HttpPath, Location> = BTreeMap::new();
        let mut dirs: Vec<Location> = Vec::new();
        let mut root: Option<Location> = None;
        let mut regexes: Vec<(usize, Location)> = Vec::new();
        let mut ingresses = BTreeSet::new();
        let mut rules = BTreeSet::new();
        for (key, route) in &own.routes {
            let ing = &self.parsed[route.ing];
            ingresses.insert(ing.key.to_string());
            // `spec.rules[i].http.paths[j]` → `spec.rules[i]`.
            let rule = route.path.field.split(".http").next().unwrap_or_default();
            rules.insert((route.ing, rule));
            let source = Some(self.source(route.ing, &route.path.field));
            let action = with_rewrite(&route.action, ing, &route.path.matcher);
            let snippet = snippet(ing.annotations.snippets.configuration.as_ref());
            let loc = |matcher| Location {
                matcher,
                action: action.clone(),
                source: source.clone(),
                snippet,
            };
            match key {
                RouteKey::Exact(p) => {
                    exact.insert(p.clone(), loc(Match::Exact(p.clone())));
                }
                RouteKey::Prefix(p) if p.as_str() == "/" => root = Some(loc(Match::Root)),
                RouteKey::Prefix(p) if regex_mode => regexes.push((
                    p.as_str().len(),
                    loc(Match::Regex {
                        regex: RegexPath::literal_prefix(p),
                        case_insensitive: false,
                    }),
                )),
                RouteKey::Prefix(p) => {
                    // `location /p/` alone would answer `/p` with a redirect;
                    // the exact location serves it instead, unless an Exact
                    // rule for `/p` already does.
                    exact
                        .entry(p.clone())
                        .or_insert_with(|| loc(Match::Exact(p.clone())));
                    dirs.push(loc(Match::PrefixDir(p.clone())));
                }
                RouteKey::Regex(r) => regexes.push((
                    r.as_str().len(),
                    loc(Match::Regex {
                        regex: r.clone(),
                        case_insensitive: true,
                    }),
                )),
            }
        }
        if let Some((DefaultFrom::Ingress(ing), _)) = default {
            ingresses.insert(self.parsed[*ing].key.to_string());
            rules.insert((*ing, "spec.defaultBackend"));
        }
        // nginx tries regular expressions in order: longest path first.
        regexes.sort_by(|a, b| (Reverse(a.0), &a.1.matcher).cmp(&(Reverse(b.0), &b.1.matcher)));
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
        let mut locations: Vec<Location> = exact.into_values().collect();
        locations.extend(dirs);
        locations.push(root.unwrap_or(fallback));
        locations.extend(regexes.into_iter().map(|(_, l)| l));

        let server = Arc::new(Server {
            server_name: host.map_or("_".to_string(), HostPattern::server_name),
            host: host.cloned(),
            certificate,
            ingresses: ingresses.into_iter().collect(),
            rules: rules
                .into_iter()
                .map(|(ing, field)| self.source(ing, field))
                .collect(),
            locations,
            snippet: server_snippet,
        });
        BuiltServer {
            server,
            problems,
            snippets,
        }
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

/// Adds the Ingress's `rewrite-target` to a proxying action.
fn with_rewrite(action: &Action, ing: &ParsedIngress, matcher: &PathMatch) -> Action {
    let (Action::Proxy { upstream, .. }, Some(target)) = (action, &ing.annotations.rewrite.target)
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
