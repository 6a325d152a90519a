//! Service backends to upstreams: Service port (by number or name) → the
//! port's name → EndpointSlice ports of that name, over every slice labelled
//! `kubernetes.io/service-name` → ready endpoints only.
//!
//! Every address nginx would connect to passes [`BackendPolicy`] first:
//! none may be one of wicket's own listeners, and in controller mode none
//! may be loopback, link-local or unspecified unless allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::ingress::{PortRef, ServiceRef};
use crate::cluster::{Cluster, ObjectKey};
use crate::config::{Upstream, UpstreamServer};
use crate::problem::Printable;
use crate::resolve::{Answer as ResolvedAnswer, Resolved};
use crate::values::DnsSubdomain;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which addresses a backend may have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendPolicy {
    /// Loopback, link-local (`169.254.0.0/16`, `fe80::/10`, where cloud
    /// metadata services answer) and unspecified addresses are allowed:
    /// `serve`, whose folder is the admin's, or `--allow-local-backends`.
    pub allow_local: bool,
    /// wicket's own listening ports (HTTP, HTTPS, admin, webhook), with
    /// why each is wicket's.
    pub own_ports: BTreeMap<u16, &'static str>,
    /// This machine's addresses: an own port on one of them, or on a
    /// loopback or unspecified address, is wicket itself.
    pub own_addresses: BTreeSet<IpAddr>,
}

impl BackendPolicy {
    /// Why nginx may not connect to this address, if it may not.
    pub fn refuse(&self, addr: SocketAddr) -> Option<String> {
        let ip = canonical(addr.ip());
        if let Some(what) = self.own_ports.get(&addr.port())
            && (ip.is_loopback() || ip.is_unspecified() || self.own_addresses.contains(&ip))
        {
            return Some(format!("{addr} is wicket's own {what} port"));
        }
        if !self.allow_local {
            let kind = if ip.is_loopback() {
                Some("loopback")
            } else if ip.is_unspecified() {
                Some("unspecified")
            } else if link_local(ip) {
                Some("link-local")
            } else {
                None
            };
            if let Some(kind) = kind {
                return Some(format!(
                    "{addr} is a {kind} address, refused as a backend (--allow-local-backends allows it)"
                ));
            }
        }
        None
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// What a backend resolves to.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// Proxy to this upstream.
    Upstream(String),
    /// Answer 503: the reason says why there is nothing to proxy to.
    Unavailable(String),
    /// The upstream of a Service port without ready endpoints, kept (with
    /// dynamic endpoints) so that endpoints can come back without a
    /// reload: it answers 503 meanwhile, for the reason given.
    Empty { upstream: String, reason: String },
}

/// Resolves backends against one snapshot, caching each answer and
/// collecting the upstreams used. `'a` is the snapshot's life, `'r` that of
/// the backends asked about.
pub struct Backends<'a, 'r> {
    cluster: &'a Cluster,
    policy: &'a BackendPolicy,
    /// The answers for `ExternalName` names; `None`: nginx resolves them.
    resolved: Option<&'a Resolved>,
    slices: foldhash::HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    /// Each backend's answer, and the upstream it names (recorded as used
    /// the first time a route takes the answer).
    cache: foldhash::HashMap<&'r ServiceRef, Answer>,
    upstreams: BTreeMap<String, Upstream>,
    /// Addresses left out of upstreams, per Service: reported once each.
    refused: BTreeMap<ObjectKey, BTreeSet<String>>,
    /// A Service port without ready endpoints still has its upstream
    /// ([`Resolution::Empty`]).
    keep_empty: bool,
}

/// A backend's resolution, the upstream it names (until recorded) and the
/// addresses the policy left out of it.
type Answer = (Resolution, Option<Upstream>, Vec<String>);

impl<'a, 'r> Backends<'a, 'r> {
    pub fn new(
        cluster: &'a Cluster,
        policy: &'a BackendPolicy,
        resolved: Option<&'a Resolved>,
        keep_empty: bool,
    ) -> Self {
        let mut slices: foldhash::HashMap<(&str, &str), Vec<&EndpointSlice>> = Default::default();
        for (key, slice) in &cluster.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices
                    .entry((key.namespace.as_str(), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        Backends {
            cluster,
            policy,
            resolved,
            slices,
            cache: Default::default(),
            upstreams: BTreeMap::new(),
            refused: BTreeMap::new(),
            keep_empty,
        }
    }

    /// Resolves these backends ahead, each once, on every core; `resolve`
    /// then finds them cached. Upstreams are still recorded only when a
    /// route uses them.
    pub fn prefetch(&mut self, backends: impl IntoIterator<Item = &'r ServiceRef>) {
        let backends = backends.into_iter();
        let mut seen = foldhash::HashSet::default();
        seen.reserve(backends.size_hint().0);
        let todo: Vec<&'r ServiceRef> = backends
            .filter(|b| !self.cache.contains_key(b) && seen.insert(*b))
            .collect();
        drop(seen);
        let this = &*self;
        let answers = crate::parallel::map(&todo, |b| this.resolve_uncached(b));
        // Room for all at once: growing moves every answer again.
        self.cache.reserve(todo.len());
        self.cache.extend(todo.into_iter().zip(answers));
    }

    /// A backend's upstream, or why there is none; a Service port without
    /// ready endpoints counts as [`Resolution::Unavailable`] here (see
    /// [`Backends::resolve_or_empty`]).
    pub fn resolve(&mut self, backend: &'r ServiceRef) -> Resolution {
        self.resolve_cached(backend, false)
    }

    /// [`Backends::resolve`], but a Service port without ready endpoints
    /// gives its (empty) upstream, when upstreams are kept empty.
    pub fn resolve_or_empty(&mut self, backend: &'r ServiceRef) -> Resolution {
        self.resolve_cached(backend, true)
    }

    fn resolve_cached(&mut self, backend: &'r ServiceRef, empty: bool) -> Resolution {
        if !self.cache.contains_key(backend) {
            let answer = self.resolve_uncached(backend);
            self.cache.insert(backend, answer);
        }
        let (r, upstream, refused) = self.cache.get_mut(backend).expect("inserted above");
        if let (Resolution::Empty { reason, .. }, false) = (&*r, empty) {
            return Resolution::Unavailable(reason.clone());
        }
        // Recorded once; the cache keeps the answer.
        if let Some(u) = upstream.take() {
            self.upstreams.insert(u.name.clone(), u);
        }
        if !refused.is_empty() {
            let key = ObjectKey::new(backend.namespace.as_str(), backend.name.as_str());
            self.refused
                .entry(key)
                .or_default()
                .extend(std::mem::take(refused));
        }
        r.clone()
    }

    /// Resolves a backend that is asked about once, without caching it
    /// (a Service port without ready endpoints may give its empty
    /// upstream, as with [`Backends::resolve_or_empty`]).
    pub fn resolve_once(&mut self, backend: &ServiceRef) -> Resolution {
        let (r, upstream, refused) = self.resolve_uncached(backend);
        if let Some(u) = upstream {
            self.upstreams.insert(u.name.clone(), u);
        }
        if !refused.is_empty() {
            let key = ObjectKey::new(backend.namespace.as_str(), backend.name.as_str());
            self.refused.entry(key).or_default().extend(refused);
        }
        r
    }

    /// The upstreams that resolved backends use, sorted by name.
    pub fn take_upstreams(&mut self) -> Vec<Upstream> {
        std::mem::take(&mut self.upstreams).into_values().collect()
    }

    /// The addresses left out of the upstreams of used backends, per
    /// Service, each with the reason.
    pub fn take_refused(&mut self) -> BTreeMap<ObjectKey, BTreeSet<String>> {
        std::mem::take(&mut self.refused)
    }

    /// The servers of an upstream among `candidates`: those the policy
    /// allows; the others' reasons go into `refused`.
    fn allowed(
        &self,
        candidates: impl IntoIterator<Item = SocketAddr>,
        refused: &mut Vec<String>,
    ) -> BTreeSet<UpstreamServer> {
        let mut out = BTreeSet::new();
        for a in candidates {
            match self.policy.refuse(a) {
                None => {
                    out.insert(UpstreamServer::Addr(a));
                }
                Some(why) => refused.push(why),
            }
        }
        out
    }

    /// A backend's answer, and the upstream it names (with the backend's
    /// variant, if it has one).
    fn resolve_uncached(&self, b: &ServiceRef) -> Answer {
        let (r, u, refused) = self.resolve_plain(b);
        let Some(v) = &b.variant else {
            return (r, u, refused);
        };
        let rename = |n: String| format!("{n}_{v}");
        match (r, u) {
            (Resolution::Upstream(n), Some(mut u)) => {
                u.name = rename(u.name);
                u.policy = b.balance.filter(|_| !u.fixed);
                (Resolution::Upstream(rename(n)), Some(u), refused)
            }
            (Resolution::Empty { upstream, reason }, Some(mut u)) => {
                u.name = rename(u.name);
                u.policy = b.balance.filter(|_| !u.fixed);
                let upstream = rename(upstream);
                (Resolution::Empty { upstream, reason }, Some(u), refused)
            }
            (r, u) => (r, u, refused),
        }
    }

    fn resolve_plain(&self, b: &ServiceRef) -> Answer {
        let ns = b.namespace.as_str();
        let key = ObjectKey::new(ns, b.name.as_str());
        let Some(svc) = self.cluster.services.get(&key) else {
            return unavailable(format!("service {key} not found"));
        };
        let spec = svc.spec.as_ref();
        let port = find_port(svc, &b.port);
        let described = || match &b.port {
            PortRef::Number(n) => format!("{key}:{n}"),
            PortRef::Name(n) => format!("{key}:{}", n.as_str()),
        };

        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            let Some(external) = spec.and_then(|s| s.external_name.as_deref()) else {
                return unavailable(format!(
                    "service {key} is of type ExternalName but has no externalName"
                ));
            };
            let host = match DnsSubdomain::parse(external.trim_end_matches('.')) {
                Ok(h) => h,
                Err(e) => {
                    return unavailable(format!(
                        "service {key} has an invalid externalName {}: {e}",
                        Printable(external)
                    ));
                }
            };
            let number = match (&b.port, port) {
                (_, Some(p)) => u16::try_from(p.port).ok(),
                (PortRef::Number(n), None) => Some(*n),
                (PortRef::Name(_), None) => None,
            };
            let Some(number) = number else {
                return unavailable(format!("service {}: no such port", described()));
            };
            // An address written as the name, and the names that always
            // mean this machine, need no lookup.
            let literal: Option<Vec<IpAddr>> = match host.as_str().parse::<IpAddr>() {
                Ok(ip) => Some(vec![ip]),
                Err(_) if host.as_str() == "localhost" || host.as_str().ends_with(".localhost") => {
                    Some(vec![
                        IpAddr::from([127, 0, 0, 1]),
                        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                    ])
                }
                Err(_) => None,
            };
            let fixed = literal.is_some();
            let addresses = match (literal, self.resolved) {
                (Some(a), _) => a,
                (None, Some(resolved)) => match resolved.get(host.as_str()) {
                    Some(ResolvedAnswer::Addresses(a)) => a.clone(),
                    Some(ResolvedAnswer::Failed(e)) => {
                        return unavailable(format!(
                            "service {key}: externalName {} does not resolve: {e}",
                            host.as_str()
                        ));
                    }
                    None => {
                        return unavailable(format!(
                            "service {key}: externalName {} was not looked up",
                            host.as_str()
                        ));
                    }
                },
                // No answers given (tests, golden files): nginx resolves it.
                (None, None) => {
                    return upstream(
                        &key,
                        number,
                        vec![UpstreamServer::Dns { host, port: number }],
                        Vec::new(),
                        true,
                    );
                }
            };
            let mut refused = Vec::new();
            let servers = self.allowed(
                addresses.into_iter().map(|ip| SocketAddr::new(ip, number)),
                &mut refused,
            );
            if servers.is_empty() {
                return (
                    Resolution::Unavailable(format!(
                        "service {key}: externalName {}: {}",
                        host.as_str(),
                        refused.join("; ")
                    )),
                    None,
                    Vec::new(),
                );
            }
            return upstream(&key, number, servers.into_iter().collect(), refused, fixed);
        }

        let Some(port) = port else {
            return unavailable(format!("service {}: no such port", described()));
        };
        if b.cluster_ip {
            // service-upstream: the Service's cluster IP and port.
            let ip = spec
                .and_then(|s| s.cluster_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            let number = u16::try_from(port.port).unwrap_or(0);
            let Some(ip) = ip.filter(|_| number > 0) else {
                return unavailable(format!(
                    "service {} has no cluster IP (service-upstream)",
                    described()
                ));
            };
            let mut refused = Vec::new();
            let servers = self.allowed([SocketAddr::new(ip, number)], &mut refused);
            if servers.is_empty() {
                return unavailable(format!("service {}: {}", described(), refused.join("; ")));
            }
            let (r, u, refused) =
                upstream(&key, number, servers.into_iter().collect(), refused, true);
            // Named apart from the endpoints' upstream of the same port.
            let rename = |n: String| format!("{n}_clusterip");
            return match (r, u) {
                (Resolution::Upstream(n), Some(mut u)) => {
                    u.name = rename(u.name);
                    (Resolution::Upstream(rename(n)), Some(u), refused)
                }
                other => (other.0, other.1, refused),
            };
        }
        let port_name = port.name.as_deref().unwrap_or_default();
        let candidates = ready_endpoints(
            self.slices
                .get(&(ns, b.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .copied(),
            port_name,
            "TCP",
        );
        let mut refused = Vec::new();
        let servers = self.allowed(candidates, &mut refused);
        if servers.is_empty() {
            let reason = if refused.is_empty() {
                format!("service {} has no ready endpoints", described())
            } else {
                format!(
                    "service {} has no usable endpoints: {}",
                    described(),
                    refused.join("; ")
                )
            };
            if !self.keep_empty {
                return unavailable(reason);
            }
            let number = u16::try_from(port.port).unwrap_or(0);
            let (r, u, _) = upstream(&key, number, Vec::new(), Vec::new(), false);
            let Resolution::Upstream(upstream) = r else {
                unreachable!("upstream() names an upstream")
            };
            return (Resolution::Empty { upstream, reason }, u, Vec::new());
        }
        let number = u16::try_from(port.port).unwrap_or(0);
        upstream(&key, number, servers.into_iter().collect(), refused, false)
    }
}

/// The ready endpoints of a Service port in these EndpointSlices (the
/// Service's): the addresses of the slice ports named as the Service port
/// is, of this protocol (`TCP`, `UDP`), each with that slice port's number.
pub fn ready_endpoints<'s>(
    slices: impl IntoIterator<Item = &'s EndpointSlice>,
    port_name: &str,
    protocol: &str,
) -> BTreeSet<SocketAddr> {
    let mut candidates = BTreeSet::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(slice_port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == protocol
        }) else {
            continue;
        };
        let Some(number) = slice_port
            .port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    candidates.insert(SocketAddr::new(ip, number));
                }
            }
        }
    }
    candidates
}

fn unavailable(reason: String) -> Answer {
    (Resolution::Unavailable(reason), None, Vec::new())
}

/// The upstream of a Service port.
/// The upstream of a Service port; `fixed`: its servers change only with
/// the Service (see [`Upstream::fixed`]).
fn upstream(
    service: &ObjectKey,
    port: u16,
    servers: Vec<UpstreamServer>,
    refused: Vec<String>,
    fixed: bool,
) -> Answer {
    let name = upstream_name(&service.namespace, &service.name, port);
    let u = Upstream {
        name: name.clone(),
        service: format!("{service}:{port}"),
        servers,
        fixed,
        policy: None,
    };
    (Resolution::Upstream(name), Some(u), refused)
}

fn find_port<'s>(svc: &'s Service, port: &PortRef) -> Option<&'s ServicePort> {
    let ports = svc.spec.as_ref()?.ports.as_ref()?;
    ports.iter().find(|p| match port {
        PortRef::Number(n) => p.port == i32::from(*n),
        PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
    })
}

/// `HASH_NAMESPACE_SERVICE_PORT`. Namespaces and Service names are DNS
/// labels, which cannot contain `_`, so the name is unique. The four hex
/// digits of a hash first make names differ in their first bytes: nginx finds
/// an upstream by comparing names one by one (for every `upstream` block and
/// `proxy_pass`), and names that share a long prefix make that search, which
/// grows with the square of the number of upstreams, much slower.
fn upstream_name(ns: &str, service: &str, port: u16) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{ns}/{service}/{port}").as_bytes());
    format!("{:02x}{:02x}_{ns}_{service}_{port}", h[0], h[1])
}
