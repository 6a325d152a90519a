//! Service backends to upstreams: Service port (by number or name) → the
//! port's name → EndpointSlice ports of that name, over every slice labelled
//! `kubernetes.io/service-name` → ready endpoints only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
/// collecting the upstreams used.
pub struct Backends<'a> {
    cluster: &'a Cluster,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    cache: HashMap<ServiceRef, Resolution>,
    upstreams: BTreeMap<String, Upstream>,
}

impl<'a> Backends<'a> {
    pub fn new(cluster: &'a Cluster) -> Self {
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
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
            cache: HashMap::new(),
            upstreams: BTreeMap::new(),
        }
    }

    pub fn resolve(&mut self, backend: &ServiceRef) -> Resolution {
        if let Some(r) = self.cache.get(backend) {
            return r.clone();
        }
        let r = self.resolve_uncached(backend);
        self.cache.insert(backend.clone(), r.clone());
        r
    }

    /// The upstreams that resolved backends use, sorted by name.
    pub fn into_upstreams(self) -> Vec<Upstream> {
        self.upstreams.into_values().collect()
    }

    fn resolve_uncached(&mut self, b: &ServiceRef) -> Resolution {
        let ns = b.namespace.as_str();
        let key = ObjectKey::new(ns, b.name.as_str());
        let Some(svc) = self.cluster.services.get(&key) else {
            return Resolution::Unavailable(format!("service {key} not found"));
        };
        let spec = svc.spec.as_ref();
        let port = find_port(svc, &b.port);
        let described = match &b.port {
            PortRef::Number(n) => format!("{key}:{n}"),
            PortRef::Name(n) => format!("{key}:{}", n.as_str()),
        };

        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            let Some(external) = spec.and_then(|s| s.external_name.as_deref()) else {
                return Resolution::Unavailable(format!(
                    "service {key} is of type ExternalName but has no externalName"
                ));
            };
            let host = match DnsSubdomain::parse(external.trim_end_matches('.')) {
                Ok(h) => h,
                Err(e) => {
                    return Resolution::Unavailable(format!(
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
                return Resolution::Unavailable(format!("service {described}: no such port"));
            };
            return self.upstream(
                &key,
                number,
                vec![UpstreamServer::Dns { host, port: number }],
            );
        }

        let Some(port) = port else {
            return Resolution::Unavailable(format!("service {described}: no such port"));
        };
        let port_name = port.name.clone().unwrap_or_default();
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
            return Resolution::Unavailable(format!("service {described} has no ready endpoints"));
        }
        let number = u16::try_from(port.port).unwrap_or(0);
        self.upstream(&key, number, servers.into_iter().collect())
    }

    /// Records the upstream of a Service port.
    fn upstream(
        &mut self,
        service: &ObjectKey,
        port: u16,
        servers: Vec<UpstreamServer>,
    ) -> Resolution {
        let name = upstream_name(&service.namespace, &service.name, port);
        self.upstreams.insert(
            name.clone(),
            Upstream {
                name: name.clone(),
                service: format!("{service}:{port}"),
                servers,
            },
        );
        Resolution::Upstream(name)
    }
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
