//! `wicket check`: the migration report. For every Ingress of a snapshot,
//! whether wicket serves it (and every reason it does not, or serves it in
//! part), and every annotation under the prefix it carries with what wicket
//! does with it, from the registry. It runs `build` and never nginx.

use serde::Serialize;

use crate::annotations::registry;
use crate::build::{self, class};
use crate::cluster::{Cluster, Kind};
use crate::problem::Severity;

/// One annotation of an Ingress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AnnotationReport {
    /// The whole key, prefix included.
    pub key: String,
    /// `supported`, `differs` or `unsupported`.
    pub support: &'static str,
    pub note: String,
}

/// One Ingress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IngressReport {
    pub namespace: String,
    pub name: String,
    pub accepted: bool,
    pub problems: Vec<String>,
    pub annotations: Vec<AnnotationReport>,
    /// Not of a class wicket serves: left alone, whatever it holds (not
    /// part of the JSON, which lists it as not accepted with the reason).
    #[serde(skip)]
    pub foreign: bool,
}

/// One TCP or UDP service that is served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamReport {
    pub protocol: &'static str,
    pub port: u16,
    /// `namespace/service:port`.
    pub service: String,
    /// Its ready endpoints (0: connections are closed at once).
    pub endpoints: usize,
    pub proxy_protocol_decode: bool,
    pub proxy_protocol_encode: bool,
}

/// The report, as `--output json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ingresses: Vec<IngressReport>,
    /// TCP and UDP services served (`--tcp-services-configmap`,
    /// `--udp-services-configmap`).
    pub streams: Vec<StreamReport>,
    /// The problems of the services ConfigMaps: entries not served (or
    /// not as written). Any fails the check.
    pub stream_problems: Vec<String>,
    /// Problems of the global settings and other objects (the human
    /// output shows them).
    #[serde(skip)]
    pub other: Vec<String>,
}

impl Report {
    /// 0 when every Ingress wicket serves is accepted and none carries an
    /// unsupported annotation (nor, with `strict`, one that differs); 1
    /// otherwise.
    pub fn exit_code(&self, strict: bool) -> u8 {
        let bad = self.ingresses.iter().filter(|i| !i.foreign).any(|i| {
            !i.accepted
                || i.annotations
                    .iter()
                    .any(|a| a.support == "unsupported" || (strict && a.support == "differs"))
        });
        u8::from(bad || !self.stream_problems.is_empty())
    }

    /// The human-readable form: grouped by Ingress, `namespace/name` first.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for i in &self.ingresses {
            let state = if i.foreign {
                "not served"
            } else if i.accepted {
                "accepted"
            } else {
                "rejected"
            };
            out.push_str(&format!("{}/{}: {state}\n", i.namespace, i.name));
            for p in &i.problems {
                out.push_str(&format!("  {p}\n"));
            }
            for a in &i.annotations {
                if a.note.is_empty() {
                    out.push_str(&format!("  {}: {}\n", a.key, a.support));
                } else {
                    out.push_str(&format!("  {}: {}: {}\n", a.key, a.support, a.note));
                }
            }
        }
        for t in &self.streams {
            let proxy = match (t.proxy_protocol_decode, t.proxy_protocol_encode) {
                (true, true) => ", PROXY protocol decoded and sent",
                (true, false) => ", PROXY protocol decoded",
                (false, true) => ", PROXY protocol sent",
                (false, false) => "",
            };
            out.push_str(&format!(
                "{} port {}: {}, {} ready endpoint{}{proxy}\n",
                t.protocol,
                t.port,
                t.service,
                t.endpoints,
                if t.endpoints == 1 { "" } else { "s" }
            ));
        }
        for p in &self.stream_problems {
            out.push_str(&format!("{p}\n"));
        }
        for o in &self.other {
            out.push_str(&format!("{o}\n"));
        }
        let ours: Vec<&IngressReport> = self.ingresses.iter().filter(|i| !i.foreign).collect();
        let accepted = ours.iter().filter(|i| i.accepted).count();
        let count = |s: &str| {
            ours.iter()
                .flat_map(|i| &i.annotations)
                .filter(|a| a.support == s)
                .count()
        };
        let ingresses = |n: usize| {
            if n == 1 {
                "1 Ingress".to_string()
            } else {
                format!("{n} Ingresses")
            }
        };
        out.push_str(&format!(
            "{} served by wicket: {accepted} accepted, {} rejected; annotations: {} supported, {} differ, {} unsupported; {} of other classes left alone\n",
            ingresses(ours.len()),
            ours.len() - accepted,
            count("supported"),
            count("differs"),
            count("unsupported"),
            ingresses(self.ingresses.len() - ours.len()),
        ));
        out
    }
}

/// Builds the snapshot and reports on every Ingress in it.
pub fn check(cluster: &Cluster, opts: &build::Options) -> Report {
    let b = build::build(cluster, opts);
    let prefix = format!("{}/", opts.annotations_prefix);
    let mut ingresses = Vec::new();
    for (key, ing) in &cluster.ingresses {
        let foreign = !class::is_ours(ing, cluster, &opts.class);
        let mine: Vec<&crate::problem::Problem> = b
            .problems
            .iter()
            .filter(|p| p.object.kind == Kind::Ingress && p.object.key == *key)
            .collect();
        let accepted = !foreign && !mine.iter().any(|p| p.severity == Severity::Rejected);
        let mut problems: Vec<String> = mine
            .iter()
            .filter(|p| p.severity != Severity::Ignored)
            .map(|p| {
                let field = p
                    .field
                    .as_deref()
                    .map(|f| format!("{f}: "))
                    .unwrap_or_default();
                format!("{} {field}{}", p.severity.as_str(), p.message)
            })
            .collect();
        if foreign {
            problems.push(format!(
                "not served: {}",
                class::why_not_ours(ing, cluster, &opts.class)
            ));
        }
        let annotations = ing
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter_map(|(k, _)| {
                let name = k.strip_prefix(&prefix)?;
                let (support, note) = match registry::annotation(name) {
                    Some(r) => (r.support.as_str(), r.support.note().to_string()),
                    None => ("unsupported", "not an ingress-nginx annotation".to_string()),
                };
                Some(AnnotationReport {
                    key: k.clone(),
                    support,
                    note,
                })
            })
            .collect();
        ingresses.push(IngressReport {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            accepted,
            problems,
            annotations,
            foreign,
        });
    }
    let services: Vec<crate::cluster::ObjectKey> = [&opts.tcp_services, &opts.udp_services]
        .into_iter()
        .flatten()
        .map(|n| n.key())
        .collect();
    let of_streams = |p: &&crate::problem::Problem| {
        p.object.kind == Kind::ConfigMap && services.contains(&p.object.key)
    };
    let (stream_problems, other): (Vec<_>, Vec<_>) = b
        .problems
        .iter()
        .filter(|p| p.object.kind != Kind::Ingress && p.severity != Severity::Ignored)
        .partition(of_streams);
    let streams = b
        .config
        .streams
        .servers
        .iter()
        .map(|t| StreamReport {
            protocol: t.protocol.as_str(),
            port: t.port,
            service: t.service.clone(),
            endpoints: t.servers.len(),
            proxy_protocol_decode: t.decode_proxy,
            proxy_protocol_encode: t.encode_proxy,
        })
        .collect();
    Report {
        ingresses,
        streams,
        stream_problems: stream_problems
            .into_iter()
            .map(ToString::to_string)
            .collect(),
        other: other.into_iter().map(ToString::to_string).collect(),
    }
}
