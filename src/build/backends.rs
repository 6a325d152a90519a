//! Service backends to upstreams: Service port (by number or name) → the
//! port's name → EndpointSlice ports of that name, over every slice labelled
//! `kubernetes.io/service-name` → ready endpoints only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::ingress::{PortRef, ServiceRef};
use crate::cluster::{Cluster, ObjectKey};
use crate::config::{Upstream, UpstreamServer};
use crate::problem::Printable;
use crate::values::DnsSubdomain;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What a backend resolves to.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// Proxy to this upstream.
    Upstream(String),
    /// Answer 503: the reason says why there is nothing to proxy to.
    Unavailable(String),
}

/// Resolves backends against one snapshot, caching each answer and
/// collecting the upstreams used. `'a` is the snapshot's life, `'r` that of
/// the backends asked about.
pub struct Backends<'a, 'r> {
    cluster: &'a Cluster,
    slices: foldhash::HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    /// Each backend's answer, and the upstream it names (recorded as used
    /// the first time a route takes the answer).
    cache: foldhash::HashMap<&'r ServiceRef, (Resolution, Option<Upstream>)>,
    upstreams: BTreeMap<String, Upstream>,
}

impl<'a, 'r> Backends<'a, 'r> {
    pub fn new(cluster: &'a Cluster) -> Self {
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
            slices,
            cache: Default::default(),
            upstreams: BTreeMap::new(),
        }
    }

    /// Resolves these backends ahead, each once, on every core; `resolve`
    /// then finds them cached. Upstreams are still recorded only when a
    /// route uses them.
    pub fn prefetch(&mut self, backends: impl IntoIterator<Item = &'r ServiceRef>) {
        let mut seen = foldhash::HashSet::default();
        let todo: Vec<&'r ServiceRef> = backends
            .into_iter()
            .filter(|b| !self.cache.contains_key(b) && seen.insert(*b))
            .collect();
        let this = &*self;
        let answers = crate::parallel::map(&todo, |b| this.resolve_uncached(b));
        for (b, answer) in todo.into_iter().zip(answers) {
            self.cache.insert(b, answer);
        }
    }

    pub fn resolve(&mut self, backend: &'r ServiceRef) -> Resolution {
        if !self.cache.contains_key(backend) {
            let answer = self.resolve_uncached(backend);
            self.cache.insert(backend, answer);
        }
        let (r, upstream) = self.cache.get_mut(backend).expect("inserted above");
        // Recorded once; the cache keeps the answer.
        if let Some(u) = upstream.take() {
            self.upstreams.insert(u.name.clone(), u);
        }
        r.clone()
    }

    /// Resolves a backend that is asked about once, without caching it.
    pub fn resolve_once(&mut self, backend: &ServiceRef) -> Resolution {
        let (r, upstream) = self.resolve_uncached(backend);
        if let Some(u) = upstream {
            self.upstreams.insert(u.name.clone(), u);
        }
        r
    }

    /// The upstreams that resolved backends use, sorted by name.
    pub fn take_upstreams(&mut self) -> Vec<Upstream> {
        std::mem::take(&mut self.upstreams).into_values().collect()
    }

    /// A backend's answer, and the upstream it names.
    fn resolve_uncached(&self, b: &ServiceRef) -> (Resolution, Option<Upstream>) {
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
            return upstream(
                &key,
                number,
                vec![UpstreamServer::Dns { host, port: number }],
            );
        }

        let Some(port) = port else {
            return unavailable(format!("service {}: no such port", described()));
        };
        let port_name = port.name.as_deref().unwrap_or_default();
        let mut servers = BTreeSet::new();
        for slice in self
            .slices
            .get(&(ns, b.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let Some(slice_port) = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
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
                        servers.insert(UpstreamServer::Addr(SocketAddr::new(ip, number)));
                    }
                }
            }
        }
        if servers.is_empty() {
            return unavailable(format!("service {} has no ready endpoints", described()));
        }
        let number = u16::try_from(port.port).unwrap_or(0);
        upstream(&key, number, servers.into_iter().collect())
    }
}

fn unavailable(reason: String) -> (Resolution, Option<Upstream>) {
    (Resolution::Unavailable(reason), None)
}

/// The upstream of a Service port.
fn upstream(
    service: &ObjectKey,
    port: u16,
    servers: Vec<UpstreamServer>,
) -> (Resolution, Option<Upstream>) {
    let name = upstream_name(&service.namespace, &service.name, port);
    let u = Upstream {
        name: name.clone(),
        service: format!("{service}:{port}"),
        servers,
    };
    (Resolution::Upstream(name), Some(u))
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
