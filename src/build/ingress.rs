//! One Ingress, validated into typed values, or rejected with every invalid
//! field named.

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::annotations::{self, Annotations, FieldError, Reader};
use crate::cluster::{Kind, ObjectKey, ObjectRef};
use crate::problem::{Problem, Quoted};
use crate::values::{
    Dns1035Label, DnsLabel, DnsSubdomain, HostPattern, HttpPath, Invalid, PortName, RegexPath,
    port_number,
};

/// A Service port, by number or by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Number(u16),
    Name(PortName),
}

/// A Service backend in the Ingress's namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub namespace: DnsLabel,
    pub name: Dns1035Label,
    pub port: PortRef,
    /// `service-upstream`: proxy to the Service's cluster IP rather than
    /// its endpoints.
    pub cluster_ip: bool,
    /// Locations that talk to the backend in another way (TLS, gRPC,
    /// FastCGI, their own TLS checks) get an upstream of their own, named
    /// with this: nginx's keepalive connections of an upstream go to
    /// whichever location asks, so a connection one location's TLS checks
    /// made would otherwise serve another's without its checks.
    pub variant: Option<String>,
    /// The balancer policy of the Ingress (part of `variant`).
    pub balance: Option<crate::config::BalancePolicy>,
}

/// How a path matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(HttpPath),
    /// Prefix, element by element; `ImplementationSpecific` outside regex mode.
    Prefix(HttpPath),
    /// A regular expression (regex mode), anchored at the start,
    /// case-insensitive.
    Regex(RegexPath),
}

#[derive(Clone, Debug)]
pub struct ParsedPath {
    /// `spec.rules[i].http.paths[j]`
    pub field: String,
    pub matcher: PathMatch,
    pub backend: ServiceRef,
}

#[derive(Clone, Debug)]
pub struct ParsedRule {
    pub host: Option<HostPattern>,
    pub paths: Vec<ParsedPath>,
}

#[derive(Clone, Debug)]
pub struct ParsedTls {
    /// Empty: the hosts of this Ingress's rules.
    pub hosts: Vec<HostPattern>,
    pub secret: Option<DnsSubdomain>,
    pub field: String,
}

/// An Ingress that passed validation.
#[derive(Clone, Debug)]
pub struct ParsedIngress {
    pub key: ObjectKey,
    pub object: ObjectRef,
    pub namespace: DnsLabel,
    pub created: Option<Time>,
    /// Shared: it is large, Ingresses are sorted and moved whole, and
    /// Ingresses whose annotations mean the same share one (see
    /// `AnnotationsInterner` in `build`).
    pub annotations: std::sync::Arc<Annotations>,
    pub default_backend: Option<ServiceRef>,
    pub rules: Vec<ParsedRule>,
    pub tls: Vec<ParsedTls>,
}

impl ParsedIngress {
    pub fn regex(&self) -> bool {
        self.annotations.rewrite.regex()
    }

    /// Whether any rule names a host.
    pub fn has_host_rules(&self) -> bool {
        self.rules.iter().any(|r| r.host.is_some())
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn check<T>(
        &mut self,
        field: impl Into<String>,
        value: &str,
        r: Result<T, Invalid>,
    ) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(error) => {
                self.0.push(FieldError {
                    field: field.into(),
                    value: value.to_string(),
                    error,
                });
                None
            }
        }
    }
    fn missing(&mut self, field: impl Into<String>, what: &str) {
        self.0.push(FieldError {
            field: field.into(),
            value: String::new(),
            error: Invalid(what.to_string()),
        });
    }
}

/// Validates an Ingress. Unsupported annotations are added to `problems`; an
/// invalid Ingress is returned as one `Rejected` problem listing every field.
pub fn parse(
    key: &ObjectKey,
    ing: &Ingress,
    annotations_prefix: &str,
    policy: annotations::Policy,
    problems: &mut Vec<Problem>,
) -> Result<ParsedIngress, Problem> {
    let object = ObjectRef::new(Kind::Ingress, key.clone());
    let mut errors = Errors(Vec::new());

    let namespace = errors.check(
        "metadata.namespace",
        &key.namespace,
        DnsLabel::parse(&key.namespace),
    );
    errors.check("metadata.name", &key.name, DnsSubdomain::parse(&key.name));

    let mut reader = Reader::new(ing.metadata.annotations.as_ref(), annotations_prefix);
    let annotations = annotations::parse_ingress(&mut reader, &mut errors.0, policy);
    problems.extend(reader.unsupported(&object, &mut errors.0));
    if annotations.canary.enabled {
        canary_keys(&reader, &object, &mut errors.0, problems);
    } else if annotations.canary.configured {
        problems.push(Problem::warning(
            &object,
            Some(reader.field("canary")),
            "canary-* annotations without canary: \"true\" do nothing",
        ));
    }
    let regex = annotations.rewrite.regex();

    let ns = namespace
        .clone()
        .unwrap_or_else(|| DnsLabel::parse("invalid").expect("valid"));
    let empty = Default::default();
    let spec: &k8s_openapi::api::networking::v1::IngressSpec = ing.spec.as_ref().unwrap_or(&empty);

    let default_backend = spec
        .default_backend
        .as_ref()
        .and_then(|b| backend(&ns, b, "spec.defaultBackend", &mut errors));

    // Sized to fit: 10,000 Ingresses keep these through the build.
    let mut rules = Vec::with_capacity(spec.rules.as_ref().map_or(0, Vec::len));
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let field = format!("spec.rules[{i}]");
        let host = match rule.host.as_deref() {
            None | Some("") => None,
            Some(h) => errors.check(format!("{field}.host"), h, HostPattern::parse(h)),
        };
        let mut paths = Vec::with_capacity(rule.http.as_ref().map_or(0, |h| h.paths.len()));
        if let Some(http) = &rule.http {
            if http.paths.is_empty() {
                errors.missing(
                    format!("{field}.http.paths"),
                    "at least one path is required",
                );
            }
            for (j, p) in http.paths.iter().enumerate() {
                let pfield = format!("{field}.http.paths[{j}]");
                let raw = p.path.as_deref().unwrap_or("");
                let matcher = match (p.path_type.as_str(), regex) {
                    ("Exact", _) => errors
                        .check(format!("{pfield}.path"), raw, HttpPath::parse(raw))
                        .map(PathMatch::Exact),
                    ("Prefix" | "ImplementationSpecific", true) => {
                        let raw = if raw.is_empty() { "/" } else { raw };
                        errors
                            .check(format!("{pfield}.path"), raw, RegexPath::parse(raw))
                            .map(PathMatch::Regex)
                    }
                    ("Prefix", false) => errors
                        .check(format!("{pfield}.path"), raw, HttpPath::parse(raw))
                        .map(PathMatch::Prefix),
                    ("ImplementationSpecific", false) => {
                        let raw = if raw.is_empty() { "/" } else { raw };
                        errors
                            .check(format!("{pfield}.path"), raw, HttpPath::parse(raw))
                            .map(PathMatch::Prefix)
                    }
                    (other, _) => {
                        errors.check::<()>(
                            format!("{pfield}.pathType"),
                            other,
                            Err(Invalid(
                                "must be Exact, Prefix or ImplementationSpecific".into(),
                            )),
                        );
                        None
                    }
                };
                let b = backend(&ns, &p.backend, &format!("{pfield}.backend"), &mut errors);
                if let (Some(matcher), Some(backend)) = (matcher, b) {
                    paths.push(ParsedPath {
                        field: pfield,
                        matcher,
                        backend,
                    });
                }
            }
        }
        rules.push(ParsedRule { host, paths });
    }

    if rules.is_empty() && default_backend.is_none() {
        errors.missing("spec", "an Ingress needs rules or a defaultBackend");
    }

    let mut tls = Vec::new();
    for (i, t) in spec.tls.iter().flatten().enumerate() {
        let field = format!("spec.tls[{i}]");
        let mut hosts = Vec::new();
        for (j, h) in t.hosts.iter().flatten().enumerate() {
            if let Some(h) = errors.check(format!("{field}.hosts[{j}]"), h, HostPattern::parse(h)) {
                hosts.push(h);
            }
        }
        let secret = match t.secret_name.as_deref() {
            None | Some("") => None,
            Some(s) => errors.check(format!("{field}.secretName"), s, DnsSubdomain::parse(s)),
        };
        tls.push(ParsedTls {
            hosts,
            secret,
            field,
        });
    }

    if !errors.0.is_empty() {
        let reasons: Vec<String> = errors
            .0
            .iter()
            .map(|e| {
                if e.value.is_empty() {
                    format!("{}: {}", e.field, e.error)
                } else {
                    format!("{} {}: {}", e.field, Quoted(&e.value), e.error)
                }
            })
            .collect();
        return Err(Problem::rejected(&object, None, reasons.join("; ")));
    }

    Ok(ParsedIngress {
        key: key.clone(),
        object,
        namespace: ns,
        created: ing.metadata.creation_timestamp.clone(),
        annotations: std::sync::Arc::new(annotations),
        default_backend,
        rules,
        tls,
    })
}

fn backend(
    ns: &DnsLabel,
    b: &IngressBackend,
    field: &str,
    errors: &mut Errors,
) -> Option<ServiceRef> {
    if b.resource.is_some() {
        errors.missing(
            format!("{field}.resource"),
            "resource backends are not supported; use a service backend",
        );
        return None;
    }
    let Some(svc) = &b.service else {
        errors.missing(format!("{field}.service"), "a service backend is required");
        return None;
    };
    let name = errors.check(
        format!("{field}.service.name"),
        &svc.name,
        Dns1035Label::parse(&svc.name),
    );
    let port = match &svc.port {
        Some(p) => match (p.number, p.name.as_deref()) {
            (Some(n), None) => errors
                .check(
                    format!("{field}.service.port.number"),
                    &n.to_string(),
                    port_number(n),
                )
                .map(PortRef::Number),
            (None, Some(n)) => errors
                .check(format!("{field}.service.port.name"), n, PortName::parse(n))
                .map(PortRef::Name),
            (Some(_), Some(_)) => {
                errors.missing(
                    format!("{field}.service.port"),
                    "set either number or name, not both",
                );
                None
            }
            (None, None) => {
                errors.missing(
                    format!("{field}.service.port"),
                    "a port number or name is required",
                );
                None
            }
        },
        None => {
            errors.missing(
                format!("{field}.service.port"),
                "a port number or name is required",
            );
            None
        }
    };
    Some(ServiceRef {
        namespace: ns.clone(),
        name: name?,
        port: port?,
        cluster_ip: false,
        variant: None,
        balance: None,
    })
}

/// The other annotations of a canary Ingress: its traffic goes through the
/// main Ingress's locations, whose settings apply (as in ingress-nginx), so
/// its own are not used. A protection key would then protect nothing: it
/// rejects the canary (set it on the main Ingress) rather than be ignored.
fn canary_keys(
    reader: &Reader<'_>,
    object: &ObjectRef,
    errors: &mut Vec<FieldError>,
    problems: &mut Vec<Problem>,
) {
    for (name, row, read) in reader.keys() {
        let Some(row) = row else { continue };
        if row.family == "canary" || !read || !row.support.acted_on() {
            continue;
        }
        if row.protection {
            errors.push(FieldError {
                field: reader.field(name),
                value: String::new(),
                error: Invalid(
                    "a canary Ingress's traffic is served by the main Ingress's locations, with their protection: set it on the main Ingress".into(),
                ),
            });
        } else {
            problems.push(Problem::warning(
                object,
                Some(reader.field(name)),
                "not used on a canary Ingress: the main Ingress's settings apply to its traffic",
            ));
        }
    }
}
