//! TCP and UDP services: the ConfigMaps of `--tcp-services-configmap` and
//! `--udp-services-configmap`, in ingress-nginx's format, into the servers
//! of nginx's `stream` block.
//!
//! Each data key is the external port; each value is
//! `NAMESPACE/SERVICE:PORT[:PROXY[:PROXY]]`, the port a Service port number
//! or name of the ConfigMap's protocol. The first `PROXY` decodes the PROXY
//! protocol on the listener, the second sends it to the upstream (TCP
//! only). An entry that cannot be served is reported on its ConfigMap with
//! its key and the reason; the others are served.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::Options;
use super::backends::{BackendPolicy, SERVICE_NAME_LABEL, ready_endpoints};
use super::ingress::PortRef;
use crate::cluster::{Cluster, Kind, ObjectKey, ObjectRef};
use crate::config::{
    Passthrough, PassthroughHost, StreamProtocol, StreamServer, Streams, UpstreamServer,
};
use crate::problem::{Printable, Problem, Quoted};
use crate::values::{Dns1035Label, DnsLabel, NamespacedName, PortName};

/// One entry of a services ConfigMap, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The external port (the data key).
    pub port: u16,
    pub namespace: DnsLabel,
    pub service: Dns1035Label,
    pub service_port: PortRef,
    pub decode_proxy: bool,
    pub encode_proxy: bool,
}

impl Entry {
    /// `namespace/service:port`.
    pub fn service_ref(&self) -> String {
        let port = match &self.service_port {
            PortRef::Number(n) => n.to_string(),
            PortRef::Name(n) => n.as_str().to_string(),
        };
        format!(
            "{}/{}:{port}",
            self.namespace.as_str(),
            self.service.as_str()
        )
    }
}

/// A data key: the external port, `1` to `65535`.
pub fn parse_port(key: &str) -> Result<u16, String> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the key must be a port number (1 to 65535)".into());
    }
    match key.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err("the port is out of range (1 to 65535)".into()),
    }
}

/// A value: `NAMESPACE/SERVICE:PORT[:PROXY[:PROXY]]` (an empty part where
/// a `PROXY` may be means no). For UDP, `PROXY` is refused by the caller.
pub fn parse_value(value: &str) -> Result<(NamespacedService, bool, bool), String> {
    let parts: Vec<&str> = value.split(':').collect();
    if !(2..=4).contains(&parts.len()) {
        return Err("must be NAMESPACE/SERVICE:PORT[:PROXY[:PROXY]]".into());
    }
    let Some((ns, svc)) = parts[0].split_once('/') else {
        return Err("must be NAMESPACE/SERVICE:PORT[:PROXY[:PROXY]] (no namespace)".into());
    };
    let namespace = DnsLabel::parse(ns).map_err(|e| format!("namespace: {e}"))?;
    let service = Dns1035Label::parse(svc).map_err(|e| format!("service: {e}"))?;
    let port = parts[1];
    let service_port = if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        match port.parse::<u32>() {
            Ok(n @ 1..=65535) => PortRef::Number(n as u16),
            _ => return Err("the Service port is out of range (1 to 65535)".into()),
        }
    } else {
        PortRef::Name(PortName::parse(port).map_err(|e| format!("Service port: {e}"))?)
    };
    let proxy = |i: usize| -> Result<bool, String> {
        match parts.get(i) {
            None | Some(&"") => Ok(false),
            Some(p) if p.eq_ignore_ascii_case("PROXY") => Ok(true),
            Some(_) => Err(format!(
                "part {} must be PROXY or empty (NAMESPACE/SERVICE:PORT[:PROXY[:PROXY]])",
                i + 1
            )),
        }
    };
    Ok((
        NamespacedService {
            namespace,
            service,
            port: service_port,
        },
        proxy(2)?,
        proxy(3)?,
    ))
}

/// The Service port an entry names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacedService {
    pub namespace: DnsLabel,
    pub service: Dns1035Label,
    pub port: PortRef,
}

/// The ConfigMap flag of a protocol, for messages.
fn flag(protocol: StreamProtocol) -> &'static str {
    match protocol {
        StreamProtocol::Tcp => "--tcp-services-configmap",
        StreamProtocol::Udp => "--udp-services-configmap",
    }
}

/// The ConfigMaps named by the flags, as (protocol, name).
fn configmaps(opts: &Options) -> Vec<(StreamProtocol, &NamespacedName)> {
    [
        (StreamProtocol::Tcp, opts.tcp_services.as_ref()),
        (StreamProtocol::Udp, opts.udp_services.as_ref()),
    ]
    .into_iter()
    .filter_map(|(p, n)| Some((p, n?)))
    .collect()
}

/// The stream servers of the services ConfigMaps; every entry that cannot
/// be served is a warning on its ConfigMap.
pub fn build(cluster: &Cluster, opts: &Options, problems: &mut Vec<Problem>) -> Streams {
    let mut servers = Vec::new();
    // wicket's own ports: HTTP and HTTPS always (render and check know no
    // others), and those the mode adds (admin and metrics, webhook).
    let mut own: BTreeMap<u16, &'static str> = opts.backend_policy.own_ports.clone();
    own.entry(opts.http_port).or_insert("HTTP");
    own.entry(opts.https_port).or_insert("HTTPS");
    for (protocol, name) in configmaps(opts) {
        let object = ObjectRef::new(Kind::ConfigMap, name.key());
        let Some(cm) = cluster.config_maps.get(&name.key()) else {
            problems.push(Problem::warning(
                &object,
                None,
                format!(
                    "the {} ConfigMap does not exist; no {} services are served",
                    flag(protocol),
                    protocol.kube()
                ),
            ));
            continue;
        };
        let data = cm.data.as_ref();
        if !opts.modules.stream {
            if data.is_some_and(|d| !d.is_empty()) {
                problems.push(Problem::warning(
                    &object,
                    None,
                    format!(
                        "nginx's stream module ({} of Debian's libnginx-mod-stream) is not installed in {}: the {} services of {} are not served",
                        crate::config::STREAM_MODULE,
                        Printable(&opts.modules.dir),
                        protocol.kube(),
                        flag(protocol),
                    ),
                ));
            }
            continue;
        }
        let mut entries = Vec::new();
        for (key, value) in data.into_iter().flatten() {
            let field = Some(format!("data[{}]", Quoted(key)));
            let parsed = parse_port(key).and_then(|port| {
                if let Some(what) = own.get(&port) {
                    return Err(format!("port {port} is wicket's own {what} port"));
                }
                if opts.ports_in_use.contains(&(protocol, port)) {
                    return Err(format!(
                        "{} port {port} is in use by another process on this machine",
                        protocol.kube()
                    ));
                }
                let (svc, decode, encode) =
                    parse_value(value).map_err(|e| format!("{}: {e}", Quoted(value)))?;
                Ok((port, svc, decode, encode))
            });
            let (port, svc, mut decode, mut encode) = match parsed {
                Ok(p) => p,
                Err(e) => {
                    problems.push(Problem::warning(&object, field, format!("{e}; not served")));
                    continue;
                }
            };
            if protocol == StreamProtocol::Udp && (decode || encode) {
                problems.push(Problem::warning(
                    &object,
                    field.clone(),
                    "the PROXY protocol is for TCP only: served without it",
                ));
                (decode, encode) = (false, false);
            }
            entries.push((
                field,
                Entry {
                    port,
                    namespace: svc.namespace,
                    service: svc.service,
                    service_port: svc.port,
                    decode_proxy: decode,
                    encode_proxy: encode,
                },
            ));
        }
        // A backend may not be one of these listeners either (a loop).
        let mut policy: BackendPolicy = opts.backend_policy.clone();
        policy.own_ports = own.clone();
        let what = match protocol {
            StreamProtocol::Tcp => "tcp-services",
            StreamProtocol::Udp => "udp-services",
        };
        for (_, e) in &entries {
            policy.own_ports.insert(e.port, what);
        }
        let slices = slices_of(
            cluster,
            entries
                .iter()
                .map(|(_, e)| (e.namespace.as_str(), e.service.as_str())),
        );
        for (field, e) in entries {
            let source = name.to_string();
            let target = (e.namespace.as_str(), e.service.as_str(), &e.service_port);
            match resolve(cluster, &slices, &policy, target, protocol) {
                Err(why) => problems.push(Problem::warning(
                    &object,
                    field,
                    format!("{why}; not served"),
                )),
                Ok((addrs, refused)) => {
                    if !refused.is_empty() {
                        problems.push(Problem::warning(
                            &ObjectRef::new(
                                Kind::Service,
                                ObjectKey::new(e.namespace.as_str(), e.service.as_str()),
                            ),
                            None,
                            format!(
                                "left out of the {what} upstream of port {}: {}",
                                e.port,
                                refused.join("; ")
                            ),
                        ));
                    }
                    if addrs.is_empty() {
                        problems.push(Problem::warning(
                            &object,
                            field,
                            format!(
                                "service {} has no ready endpoints: connections to port {} are closed at once",
                                e.service_ref(),
                                e.port
                            ),
                        ));
                    }
                    servers.push(StreamServer {
                        port: e.port,
                        protocol,
                        upstream: format!("wicket_{}_{}", protocol.as_str(), e.port),
                        upstream_label: format!(
                            "{}-{}-{}-{}",
                            protocol.as_str(),
                            e.namespace.as_str(),
                            e.service.as_str(),
                            match &e.service_port {
                                PortRef::Number(n) => n.to_string(),
                                PortRef::Name(n) => n.as_str().to_string(),
                            }
                        ),
                        service: e.service_ref(),
                        source,
                        servers: addrs.into_iter().map(UpstreamServer::Addr).collect(),
                        decode_proxy: e.decode_proxy,
                        encode_proxy: e.encode_proxy,
                    });
                }
            }
        }
    }
    servers.sort_by_key(|s| (s.protocol, s.port));
    Streams {
        servers,
        passthrough: None,
    }
}

/// The ports of the services ConfigMaps' entries that another process on
/// this machine holds: those nginx does not listen on already (`serving`,
/// the config it serves) and that cannot be bound on all addresses
/// (`EADDRINUSE`; a port below 1024 that wicket itself may not bind is
/// left to nginx, which may have the capability). Not pure: the engine
/// calls it before a build, as it looks up names.
pub fn ports_in_use(
    cluster: &Cluster,
    opts: &Options,
    serving: Option<&crate::config::Config>,
) -> BTreeSet<(StreamProtocol, u16)> {
    let mut out = BTreeSet::new();
    for (protocol, name) in configmaps(opts) {
        let Some(data) = cluster
            .config_maps
            .get(&name.key())
            .and_then(|c| c.data.as_ref())
        else {
            continue;
        };
        for key in data.keys() {
            let Ok(port) = parse_port(key) else { continue };
            let ours = serving.is_some_and(|c| {
                c.streams
                    .servers
                    .iter()
                    .any(|s| s.protocol == protocol && s.port == port)
            });
            if ours || port == opts.http_port || port == opts.https_port {
                continue;
            }
            let taken = |e: std::io::Error| e.kind() == std::io::ErrorKind::AddrInUse;
            let busy = match protocol {
                StreamProtocol::Tcp => std::net::TcpListener::bind(("0.0.0.0", port))
                    .err()
                    .is_some_and(taken),
                StreamProtocol::Udp => std::net::UdpSocket::bind(("0.0.0.0", port))
                    .err()
                    .is_some_and(taken),
            };
            if busy {
                out.insert((protocol, port));
            }
        }
    }
    out
}

/// The EndpointSlices of the Services the entries name, by Service.
fn slices_of<'a, 'e>(
    cluster: &'a Cluster,
    services: impl Iterator<Item = (&'e str, &'e str)>,
) -> BTreeMap<(String, String), Vec<&'a EndpointSlice>> {
    let wanted: BTreeSet<(String, String)> = services
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .collect();
    let mut out: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    if wanted.is_empty() {
        return out;
    }
    for (key, slice) in &cluster.endpoint_slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let k = (key.namespace.clone(), service.clone());
        if wanted.contains(&k) {
            out.entry(k).or_default().push(slice);
        }
    }
    out
}

/// An entry's endpoints (those the policy allows, and why the others are
/// not), or why it cannot be served.
fn resolve(
    cluster: &Cluster,
    slices: &BTreeMap<(String, String), Vec<&EndpointSlice>>,
    policy: &BackendPolicy,
    (namespace, service, service_port): (&str, &str, &PortRef),
    protocol: StreamProtocol,
) -> Result<(BTreeSet<SocketAddr>, Vec<String>), String> {
    let key = ObjectKey::new(namespace, service);
    let service_ref = match service_port {
        PortRef::Number(n) => format!("{key}:{n}"),
        PortRef::Name(n) => format!("{key}:{}", n.as_str()),
    };
    let Some(svc) = cluster.services.get(&key) else {
        return Err(format!("service {key} not found"));
    };
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(format!(
            "service {key} is of type ExternalName: TCP and UDP services need a Service with endpoints"
        ));
    }
    let ports: &[ServicePort] = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let named = |p: &&ServicePort| match service_port {
        PortRef::Number(n) => p.port == i32::from(*n),
        PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
    };
    let proto = |p: &ServicePort| p.protocol.as_deref().unwrap_or("TCP").to_string();
    let Some(port) = ports
        .iter()
        .filter(named)
        .find(|p| proto(p) == protocol.kube())
    else {
        let other: Vec<String> = ports.iter().filter(named).map(proto).collect();
        return Err(if other.is_empty() {
            format!("service {service_ref} has no such port")
        } else {
            format!(
                "service {service_ref} is not a {} port (it is {})",
                protocol.kube(),
                other.join(", ")
            )
        });
    };
    let candidates = ready_endpoints(
        slices
            .get(&(key.namespace.clone(), key.name.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .copied(),
        port.name.as_deref().unwrap_or_default(),
        protocol.kube(),
    );
    let mut refused = Vec::new();
    let allowed = candidates
        .into_iter()
        .filter(|a| match policy.refuse(*a) {
            None => true,
            Some(why) => {
                refused.push(why);
                false
            }
        })
        .collect();
    Ok((allowed, refused))
}

/// TLS passthrough (`--enable-ssl-passthrough`): the hosts of the
/// Ingresses with `ssl-passthrough`, in precedence order (the oldest
/// Ingress of a host decides), each to the Service of its rule's path `/`
/// (else its first path). `None` when the mode is off, or cannot be on.
pub fn passthrough(
    cluster: &Cluster,
    opts: &Options,
    settings: &crate::settings::Settings,
    parsed: &[super::ingress::ParsedIngress],
    problems: &mut Vec<Problem>,
) -> Option<Passthrough> {
    let field = || {
        Some(format!(
            "metadata.annotations[\"{}/ssl-passthrough\"]",
            opts.annotations_prefix
        ))
    };
    let wanted: Vec<&super::ingress::ParsedIngress> = parsed
        .iter()
        .filter(|p| p.annotations.tls.ssl_passthrough)
        .collect();
    let why_not = if !opts.ssl_passthrough {
        Some("ignored: --enable-ssl-passthrough is off".to_string())
    } else if !opts.modules.stream {
        Some(format!(
            "nginx's stream module ({} of Debian's libnginx-mod-stream) is not installed: TLS is terminated by wicket",
            crate::config::STREAM_MODULE
        ))
    } else if settings.use_forwarded_headers || settings.enable_real_ip {
        let key = if settings.use_forwarded_headers {
            "use-forwarded-headers"
        } else {
            "enable-real-ip"
        };
        problems.push(Problem::warning(
            &ObjectRef::cluster_scoped(Kind::ConfigMap, "--configmap"),
            Some(format!("data[\"{key}\"]")),
            "--enable-ssl-passthrough is not honoured while it is on (HTTPS would take the client address from a header any client can send): TLS is terminated by wicket",
        ));
        Some(format!(
            "not passed through while the global {key} is on: TLS is terminated by wicket"
        ))
    } else {
        None
    };
    if let Some(why) = why_not {
        for p in wanted {
            problems.push(Problem::warning(&p.object, field(), why.clone()));
        }
        return None;
    }
    // Host -> (Ingress, rule index, backend), the first Ingress of a host.
    let mut chosen: BTreeMap<
        String,
        (&super::ingress::ParsedIngress, &super::ingress::ServiceRef),
    > = BTreeMap::new();
    for p in wanted {
        for (i, rule) in p.rules.iter().enumerate() {
            let Some(host) = &rule.host else {
                problems.push(Problem::warning(
                    &p.object,
                    Some(format!("spec.rules[{i}].host")),
                    "ssl-passthrough needs a host to choose TLS connections by: this rule's are terminated by wicket",
                ));
                continue;
            };
            let root = rule.paths.iter().find(|x| match &x.matcher {
                super::ingress::PathMatch::Prefix(h) | super::ingress::PathMatch::Exact(h) => {
                    h.as_str() == "/"
                }
                super::ingress::PathMatch::Regex(_) => false,
            });
            let Some(path) = root.or(rule.paths.first()) else {
                problems.push(Problem::warning(
                    &p.object,
                    Some(format!("spec.rules[{i}]")),
                    format!(
                        "ssl-passthrough: host {host} has no path, so no backend to pass TLS to"
                    ),
                ));
                continue;
            };
            let name = host.to_string();
            match chosen.get(&name) {
                Some((first, _)) if first.key != p.key => problems.push(Problem::warning(
                    &p.object,
                    field(),
                    format!(
                        "host {name} is passed through to the backend of the older ingress {}",
                        first.key
                    ),
                )),
                Some(_) => {}
                None => {
                    chosen.insert(name, (p, &path.backend));
                }
            }
        }
    }
    let slices = slices_of(
        cluster,
        chosen
            .values()
            .map(|(_, b)| (b.namespace.as_str(), b.name.as_str())),
    );
    let mut policy = opts.backend_policy.clone();
    policy.own_ports.entry(opts.http_port).or_insert("HTTP");
    policy.own_ports.entry(opts.https_port).or_insert("HTTPS");
    let mut hosts = Vec::new();
    for (i, (host, (p, b))) in chosen.into_iter().enumerate() {
        let target = (b.namespace.as_str(), b.name.as_str(), &b.port);
        let servers = match resolve(cluster, &slices, &policy, target, StreamProtocol::Tcp) {
            Err(why) => {
                problems.push(Problem::warning(
                    &p.object,
                    field(),
                    format!("ssl-passthrough of {host}: {why}: its connections are closed at once"),
                ));
                Vec::new()
            }
            Ok((addrs, refused)) => {
                if !refused.is_empty() {
                    problems.push(Problem::warning(
                        &ObjectRef::new(
                            Kind::Service,
                            ObjectKey::new(b.namespace.as_str(), b.name.as_str()),
                        ),
                        None,
                        format!(
                            "left out of the ssl-passthrough upstream of {host}: {}",
                            refused.join("; ")
                        ),
                    ));
                }
                if addrs.is_empty() {
                    problems.push(Problem::warning(
                        &p.object,
                        field(),
                        format!(
                            "ssl-passthrough of {host}: service {}/{} has no ready endpoints: its connections are closed at once",
                            b.namespace.as_str(),
                            b.name.as_str()
                        ),
                    ));
                }
                addrs.into_iter().map(UpstreamServer::Addr).collect()
            }
        };
        hosts.push(PassthroughHost {
            host,
            upstream: format!("wicket_passthrough_{i}"),
            socket: format!("wicket-passthrough-{i}.sock"),
            ingress: p.key.to_string(),
            service: match &b.port {
                PortRef::Number(n) => format!("{}/{}:{n}", b.namespace.as_str(), b.name.as_str()),
                PortRef::Name(n) => format!(
                    "{}/{}:{}",
                    b.namespace.as_str(),
                    b.name.as_str(),
                    n.as_str()
                ),
            },
            servers,
        });
    }
    Some(Passthrough {
        https_port: opts.https_port,
        decode_proxy: settings.use_proxy_protocol,
        hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_ports() {
        assert_eq!(parse_port("9000"), Ok(9000));
        assert_eq!(parse_port("65535"), Ok(65535));
        for bad in ["0", "65536", "99999999999", ""] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        for bad in ["+90", " 90", "9000 ", "0x50", "abc", "-1"] {
            assert!(
                parse_port(bad).unwrap_err().contains("must be a port"),
                "{bad}"
            );
        }
    }

    #[test]
    fn values_are_service_ports_with_proxy_flags() {
        let (s, d, e) = parse_value("db/postgres:5432").unwrap();
        assert_eq!(s.namespace.as_str(), "db");
        assert_eq!(s.service.as_str(), "postgres");
        assert_eq!(s.port, PortRef::Number(5432));
        assert!(!d && !e);
        let (s, d, e) = parse_value("db/postgres:pg:PROXY").unwrap();
        assert!(matches!(s.port, PortRef::Name(ref n) if n.as_str() == "pg"));
        assert!(d && !e);
        assert!(parse_value("a/b:1:proxy:PROXY").unwrap().1);
        assert!(parse_value("a/b:1:proxy:PROXY").unwrap().2);
        // Encode only, as ingress-nginx reads it.
        let (_, d, e) = parse_value("a/b:1::PROXY").unwrap();
        assert!(!d && e);
        for bad in [
            "",
            "b:1",
            "a/b",
            "a/b:",
            "a/b:0",
            "a/b:65536",
            "a/b:1:PROXY:PROXY:PROXY",
            "a/b:1:SOCKS",
            "A/b:1",
            "a/B:1",
            "a/b c:1",
            "a/b:1;",
            "a/b:1\n",
            "a/b/c:1",
            "a/1b:1",
        ] {
            assert!(parse_value(bad).is_err(), "{bad:?}");
        }
    }
}
