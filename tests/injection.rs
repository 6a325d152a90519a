//! Property tests: for any string in any field an object can set, the
//! rendered config either leaves the object out (rejected, with a reason) or
//! holds the value inside its own token: the config, tokenized the way nginx
//! reads it, has exactly the structure it has with a harmless value in that
//! field. And `nginx -t` accepts every config `build` produces from accepted
//! input.
//!
//! `PROPTEST_CASES=N` runs more cases (`scripts/fuzz.sh` runs many).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use wicket::annotations::registry;
use wicket::build::{self, ClassOptions, Options};
use wicket::cluster::{Cluster, Kind, Object, ObjectKey};
use wicket::conf_syntax::{Node, Token, canonical, tokenize};
use wicket::problem::Severity;
use wicket::render::{RenderEnv, Renderer};
use wicket::source::manifest;

fn options() -> Options {
    let mut c = wicket::certs::generate_default().unwrap();
    c.name = "default".into();
    Options {
        class: ClassOptions {
            watch_without_class: true,
            by_name: true,
            ..ClassOptions::default()
        },
        configmap: Some("p/settings".parse().unwrap()),
        // The balancer's Lua code names every upstream: in play here too.
        modules: common::modules(),
        dynamic_endpoints: true,
        ..Options::new(80, 443, c)
    }
}

thread_local! {
    static OPTIONS: Options = options();
    static RENDERER: Renderer = Renderer::embedded().unwrap();
}

/// The objects every case starts from: a Service `web` with a named port
/// and a ready endpoint, settings, and a good Ingress.
const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: p}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: p, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: good, namespace: p}
spec:
  rules:
  - host: good.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}]}
"#;

struct Rendered {
    text: String,
    problems: Vec<wicket::problem::Problem>,
    served: Vec<ObjectKey>,
}

fn render(extra: &str) -> Rendered {
    try_render(extra).expect("the generated YAML parses")
}

/// `None` when the YAML itself does not parse (a mapping key longer than
/// YAML allows, say): the object never reaches wicket then.
fn try_render(extra: &str) -> Option<Rendered> {
    let mut cluster = Cluster::default();
    for o in manifest::parse(&format!("{BASE}---\n{extra}"), false)
        .ok()?
        .objects
    {
        cluster.insert(o);
    }
    let b = OPTIONS.with(|o| build::build(&cluster, o));
    let env = RenderEnv {
        generation: 1,
        user: None,
        ipv6: false,
        temp_dir: None,
    };
    let text = RENDERER.with(|r| r.render(&b.config, &env)).unwrap();
    Some(Rendered {
        text,
        problems: b.problems,
        served: b.served,
    })
}

/// The nginx variables (`$name`, `${name}`) the config refers to, counted,
/// outside the arguments of `location` and `server_name`, where nginx reads
/// `$` literally. nginx has no escape for `$`, so the structure alone would
/// not show a value that smuggles `$host` into a quoted argument.
fn variables(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut directive: Option<String> = None;
    for t in tokenize(text).expect("the rendered config tokenizes") {
        match t {
            Token::Value { text, .. } => match &directive {
                None => directive = Some(text),
                Some(d) if d == "location" || d == "server_name" => {}
                Some(_) => {
                    let mut rest = text.as_str();
                    while let Some(i) = rest.find('$') {
                        rest = &rest[i + 1..];
                        let name: String = rest
                            .trim_start_matches('{')
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        // `$1`: a capture of the location's regex, not a
                        // variable; `${wicket_dollar}`: a literal `$`.
                        if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                            && name != "wicket_dollar"
                        {
                            *out.entry(name).or_default() += 1;
                        }
                    }
                }
            },
            Token::End { .. } | Token::Open { .. } | Token::Close { .. } => directive = None,
        }
    }
    out
}

#[test]
fn variables_are_counted_where_nginx_expands_them() {
    let text = "server { server_name \"$a\"; location ~ ^/x(/|$)(.*) { rewrite ^ \"/$2${host}$host\" break; return 200 \"$request_id\"; } }";
    let want: BTreeMap<String, usize> =
        [("host".to_string(), 2), ("request_id".to_string(), 1)].into();
    assert_eq!(variables(text), want);
}

fn shape(text: &str) -> Vec<Node> {
    let nodes = canonical(text)
        .unwrap_or_else(|e| panic!("the rendered config does not tokenize: {e}\n{text}"));
    entries_as_data(nodes, false)
}

/// The entries of a `map` block start with a value (the key an object or
/// the admin wrote), not a directive: they count by their shape alone, and
/// how many there are is data too.
fn entries_as_data(nodes: Vec<Node>, in_map: bool) -> Vec<Node> {
    let mut out: Vec<Node> = nodes
        .into_iter()
        .map(|n| Node {
            block: n.block.map(|b| entries_as_data(b, n.name == "map")),
            name: if in_map && n.name != "default" && n.name != "hostnames" {
                "(key)".into()
            } else {
                n.name
            },
            args: n.args,
        })
        .collect();
    out.sort();
    if in_map {
        out.dedup();
    }
    out
}

/// A YAML scalar holding exactly `s`.
fn y(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// One field an object can set: the extra YAML with a value in that field,
/// and a harmless value of the same kind for an accepted one.
struct Field {
    name: &'static str,
    make: fn(&str) -> String,
    twin: fn(&str) -> String,
    /// The extra YAML when the object this field belongs to is unusable
    /// (an Ingress pointing at a missing Service, say); "" when the object
    /// is simply left out.
    broken: &'static str,
    /// Whether the field is the Ingress's of the case: when that Ingress is
    /// not served, a reason must say why.
    ingress: bool,
}

/// A field as the checks read it: a [`Field`], or one made for a registry
/// row (an annotation, a ConfigMap key).
struct AnyField {
    name: String,
    make: Box<dyn Fn(&str) -> String>,
    twin: Box<dyn Fn(&str) -> String>,
    broken: String,
    ingress: bool,
    /// Variables a value of this field may add where nginx expands them
    /// (a redirect URL may name `$request_uri`): `None` for none.
    variables: Option<fn(&str) -> bool>,
}

impl From<Field> for AnyField {
    fn from(f: Field) -> Self {
        AnyField {
            name: f.name.to_string(),
            make: Box::new(f.make),
            twin: Box::new(f.twin),
            broken: f.broken.to_string(),
            ingress: f.ingress,
            variables: None,
        }
    }
}

const P: &str = "nginx.ingress.kubernetes.io";

/// Annotations a row needs beside it to mean anything.
fn companions(name: &str) -> String {
    match name {
        "fastcgi-index" | "fastcgi-params-configmap" => format!("{P}/backend-protocol: FCGI, "),
        "x-forwarded-prefix" => format!("{P}/rewrite-target: /, "),
        "permanent-redirect-code" => format!("{P}/permanent-redirect: /moved, "),
        "temporal-redirect-code" => format!("{P}/temporal-redirect: /moved, "),
        n if n.starts_with("canary-") => format!("{P}/canary: \"true\", "),
        n if n.starts_with("auth-tls-") && n != "auth-tls-secret" => {
            format!("{P}/auth-tls-secret: client-ca, ")
        }
        _ => String::new(),
    }
}

/// The rule of a case's Ingress: a canary's is the good Ingress's path,
/// so its values reach the config.
fn rule_for(name: &str) -> String {
    if name.starts_with("canary") {
        rule("good.example.com", "/", "Prefix", "web", "{name: http}")
    } else {
        default_rule()
    }
}

/// Objects a row needs beside its Ingress: the other `auth-tls-*` rows a
/// Secret with a CA, so that their values reach the config (the example
/// of `auth-tls-secret` itself names no Secret that exists: the host then
/// answers 503, as for any valid name).
fn companion_objects(name: &str) -> String {
    static CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if !name.starts_with("auth-tls-") || name == "auth-tls-secret" {
        return String::new();
    }
    let pem = CA.get_or_init(|| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    });
    let indent: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: client-ca, namespace: p}}\nstringData:\n  ca.crt: |\n{indent}---\n"
    )
}

/// A harmless value for a row: the value itself when it is a plain word
/// the row accepts (a boolean, an enum: it cannot change the structure by
/// being one token, and another word can give another structure), else the
/// row's example.
fn row_twin(row: &'static registry::Annotation, v: &str) -> String {
    // A list: as many harmless items as the value has.
    if row.name == "server-alias" {
        let items: BTreeSet<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        if !items.is_empty() {
            return (0..items.len())
                .map(|i| format!("a{i}.example.com"))
                .collect::<Vec<_>>()
                .join(",");
        }
    }
    let word = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if word {
        let map: BTreeMap<String, String> = [(format!("{P}/{}", row.name), v.to_string())].into();
        let mut r = wicket::annotations::Reader::new(Some(&map), P);
        let mut errors = Vec::new();
        wicket::annotations::parse_ingress(
            &mut r,
            &mut errors,
            wicket::annotations::Policy {
                allow_snippets: true,
            },
        );
        if errors.is_empty() {
            return v.to_string();
        }
    }
    row.example.to_string()
}

/// Whether a variable is one a redirect URL may name.
fn redirect_variable(name: &str) -> bool {
    wicket::values::nginx::ALLOWED_VARIABLES.contains(&name)
}

/// Whether a variable is one nginx (or wicket) knows: what the admin's
/// ConfigMap values (a log format, headers for every route) may name.
fn known_variable(name: &str) -> bool {
    wicket::values::nginx::known_variable(name)
}

/// One field per annotation wicket acts on, and one per ConfigMap key.
fn registry_fields() -> Vec<AnyField> {
    let mut out = Vec::new();
    for row in registry::ANNOTATIONS
        .iter()
        .filter(|r| r.support.acted_on())
    {
        let ingress = |name: &'static str, v: &str| {
            companion_objects(name)
                + &ingress_with(
                    "x",
                    "p",
                    &format!("{}{P}/{name}: {}", companions(name), y(v)),
                    &rule_for(name),
                )
        };
        out.push(AnyField {
            name: format!("annotation {}", row.name),
            make: Box::new(move |v| ingress(row.name, v)),
            twin: Box::new(move |v| row_twin(row, v)),
            // An empty value counts as not set.
            broken: companion_objects(row.name)
                + &ingress_with(
                    "x",
                    "p",
                    companions(row.name).trim_end_matches(", "),
                    &rule_for(row.name),
                ),
            ingress: true,
            variables: match row.name {
                "permanent-redirect" | "temporal-redirect" => {
                    Some(redirect_variable as fn(&str) -> bool)
                }
                // An nginx expression, of variables nginx knows.
                "modsecurity-transaction-id" | "upstream-hash-by" | "auth-cache-key" => {
                    Some(known_variable as fn(&str) -> bool)
                }
                _ => None,
            },
        });
    }
    for row in registry::KEYS.iter().filter(|r| r.support.acted_on()) {
        let cm = |name: &str, v: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: p}}\ndata: {{{}: {}}}\n",
                y(name),
                y(v)
            )
        };
        out.push(AnyField {
            name: format!("ConfigMap key {}", row.name),
            make: Box::new(move |v| cm(row.name, v)),
            twin: Box::new(move |v| {
                let mut s = wicket::settings::Settings::default();
                let word = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if word && s.apply(row.name, v) == Ok(true) {
                    v.to_string()
                } else {
                    row.example.to_string()
                }
            }),
            // A protection key that does not parse refuses the Ingresses
            // (as one of those that does not parse does); another is left
            // at its default.
            broken: if row.protection {
                cm("global-auth-url", "not a url")
            } else {
                String::new()
            },
            ingress: false,
            variables: matches!(
                row.name,
                "log-format-upstream" | "upstream-hash-by" | "global-auth-cache-key"
            )
            .then_some(known_variable as fn(&str) -> bool),
        });
    }
    // Values of the ConfigMaps annotations and settings name.
    let objects = |what: &'static str, data: String| {
        let settings = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: p}}\ndata: {{global-allowed-response-headers: X-A, add-headers: p/resp, proxy-set-headers: p/req}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {what}, namespace: p}}\ndata: {{{data}}}\n---\n"
        );
        format!(
            "{settings}{}",
            ingress_with(
                "x",
                "p",
                &format!(
                    "{P}/custom-headers: extra, {P}/backend-protocol: FCGI, {P}/fastcgi-params-configmap: fcgi, {P}/auth-url: \"http://127.0.0.1:9/check\", {P}/auth-proxy-set-headers: authh"
                ),
                &default_rule()
            )
        )
    };
    let literal = |name: &'static str, data: fn(&str) -> String, twin: &'static str| AnyField {
        name: name.to_string(),
        make: Box::new(move |v| objects(name_of(name), data(v))),
        twin: Box::new(move |_| twin.to_string()),
        // A bad entry is left out (with a warning on its ConfigMap).
        broken: objects(name_of(name), String::new()),
        ingress: false,
        variables: None,
    };
    fn name_of(field: &str) -> &'static str {
        match field {
            "custom-headers value" | "custom-headers name" => "extra",
            "fastcgi parameter value" => "fcgi",
            "add-headers value" => "resp",
            "auth-proxy-set-headers value" | "auth-proxy-set-headers name" => "authh",
            _ => "req",
        }
    }
    out.push(literal(
        "custom-headers value",
        |v| format!("X-A: {}", y(v)),
        "plain",
    ));
    out.push(literal(
        "auth-proxy-set-headers name",
        |v| format!("{}: plain", y(v)),
        "X-T",
    ));
    out.push(literal(
        "custom-headers name",
        |v| format!("{}: plain", y(v)),
        "X-A",
    ));
    for (name, data) in [
        (
            "fastcgi parameter value",
            (|v| format!("SCRIPT_FILENAME: {}", y(v))) as fn(&str) -> String,
        ),
        ("add-headers value", |v| format!("X-R: {}", y(v))),
        ("proxy-set-headers value", |v| format!("X-Q: {}", y(v))),
        ("auth-proxy-set-headers value", |v| format!("X-T: {}", y(v))),
    ] {
        out.push(AnyField {
            variables: Some(known_variable as fn(&str) -> bool),
            ..literal(name, data, "plain")
        });
    }
    out
}

/// Every field the checks cover.
fn all_fields() -> Vec<AnyField> {
    fields()
        .into_iter()
        .map(AnyField::from)
        .chain(registry_fields())
        .collect()
}

fn ingress_with(name: &str, ns: &str, annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {}, namespace: {}, annotations: {{{annotations}}}}}\nspec:\n{spec}\n",
        y(name),
        y(ns)
    )
}

fn rule(host: &str, path: &str, path_type: &str, svc: &str, port: &str) -> String {
    format!(
        "  rules:\n  - host: {}\n    http: {{paths: [{{path: {}, pathType: {path_type}, backend: {{service: {{name: {}, port: {port}}}}}}}]}}\n",
        y(host),
        y(path),
        y(svc)
    )
}

fn default_rule() -> String {
    rule("x.example.com", "/x", "Prefix", "web", "{name: http}")
}

/// `v` if it is one of `valid`, else a value that is not.
fn valid_or(v: &str, valid: &[&str], other: &str) -> String {
    if valid.contains(&v) {
        v.into()
    } else {
        other.into()
    }
}

fn path_twin(v: &str) -> String {
    if v.trim_end_matches('/').is_empty() {
        "/".into()
    } else {
        "/twin".into()
    }
}

/// The Ingress `x` of a case, pointing at a Service that does not exist:
/// what a case whose Service or EndpointSlice is unusable amounts to.
const MISSING_SERVICE: &str = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: x, namespace: p}\nspec:\n  rules:\n  - host: x.example.com\n    http: {paths: [{path: /x, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}]}\n";

fn fields() -> Vec<Field> {
    vec![
        Field {
            name: "Ingress metadata.name",
            make: |v| ingress_with(v, "p", "", &default_rule()),
            twin: |_| "twin".into(),
            ingress: true,
            broken: "",
        },
        Field {
            name: "Ingress metadata.namespace",
            make: |v| ingress_with("x", v, "", &default_rule()),
            twin: |_| "twin".into(),
            ingress: true,
            broken: "",
        },
        Field {
            name: "spec.rules[].host",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "",
                    &rule(v, "/x", "Prefix", "web", "{name: http}"),
                )
            },
            twin: |v| match v {
                "" => String::new(),
                v if v.starts_with("*.") => "*.twin.example.com".into(),
                _ => "twin.example.com".into(),
            },
            ingress: true,
            broken: "",
        },
        Field {
            name: "Prefix path",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "",
                    &rule(
                        "x.example.com",
                        &format!("/{v}"),
                        "Prefix",
                        "web",
                        "{name: http}",
                    ),
                )
            },
            twin: |v| path_twin(&format!("/{v}"))[1..].to_string(),
            ingress: true,
            broken: "",
        },
        Field {
            name: "Exact path",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "",
                    &rule(
                        "x.example.com",
                        &format!("/{v}"),
                        "Exact",
                        "web",
                        "{name: http}",
                    ),
                )
            },
            twin: |_| "twin".into(),
            ingress: true,
            broken: "",
        },
        Field {
            name: "regex path (use-regex)",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "nginx.ingress.kubernetes.io/use-regex: \"true\"",
                    &rule(
                        "x.example.com",
                        &format!("/{v}"),
                        "ImplementationSpecific",
                        "web",
                        "{name: http}",
                    ),
                )
            },
            // A path that takes every URI (`/`, `/.*`, `/(.*)`) leaves the
            // host no `location /`: its twin is itself.
            twin: |v| {
                if matches!(v, "" | ".*" | "(.*)") {
                    v.into()
                } else {
                    "twin".into()
                }
            },
            ingress: true,
            broken: "",
        },
        Field {
            name: "rewrite-target",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    &format!(
                        "nginx.ingress.kubernetes.io/rewrite-target: {}",
                        y(&format!("/{v}"))
                    ),
                    &default_rule(),
                )
            },
            twin: |_| "twin".into(),
            ingress: true,
            broken: "",
        },
        Field {
            name: "an unknown annotation",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    &format!(
                        "nginx.ingress.kubernetes.io/server-alias: {}, {}: {}",
                        y(v),
                        y(&format!("example.com/{v}")),
                        y(v)
                    ),
                    &default_rule(),
                )
            },
            twin: |_| "twin".into(),
            ingress: true,
            broken: "",
        },
        Field {
            name: "backend.service.name",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "",
                    &rule("x.example.com", "/x", "Prefix", v, "{number: 80}"),
                )
            },
            twin: |_| "twin".into(),
            ingress: true,
            broken: "",
        },
        Field {
            name: "backend.service.port.name",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "",
                    &rule(
                        "x.example.com",
                        "/x",
                        "Prefix",
                        "web",
                        &format!("{{name: {}}}", y(v)),
                    ),
                )
            },
            twin: |_| "twin".into(),
            ingress: true,
            broken: "",
        },
        Field {
            name: "spec.defaultBackend service name and port name",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "",
                    &format!(
                        "  defaultBackend: {{service: {{name: {}, port: {{name: {}}}}}}}\n{}",
                        y(v),
                        y(v),
                        default_rule()
                    ),
                )
            },
            twin: |_| "twin".into(),
            ingress: true,
            broken: "",
        },
        Field {
            name: "spec.ingressClassName",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "",
                    &format!("  ingressClassName: {}\n{}", y(v), default_rule()),
                )
            },
            twin: |v| valid_or(v, &["wicket", ""], "other"),
            // Another class's Ingress is not ours to serve or reject.
            ingress: false,
            broken: "",
        },
        Field {
            name: "kubernetes.io/ingress.class annotation",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    &format!("kubernetes.io/ingress.class: {}", y(v)),
                    &default_rule(),
                )
            },
            twin: |v| valid_or(v, &["wicket", ""], "other"),
            ingress: false,
            broken: "",
        },
        Field {
            name: "IngressClass spec.controller",
            make: |v| {
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: wicket}}\nspec: {{controller: {}}}\n---\n{}",
                    y(v),
                    ingress_with(
                        "x",
                        "p",
                        "",
                        &format!("  ingressClassName: wicket\n{}", default_rule())
                    )
                )
            },
            twin: |v| valid_or(v, &["wicket.dev/ingress-controller"], "example.com/other"),
            ingress: false,
            broken: "",
        },
        Field {
            name: "pathType",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "",
                    &rule("x.example.com", "/x", v, "web", "{name: http}")
                        .replace(&format!("pathType: {v}"), &format!("pathType: {}", y(v))),
                )
            },
            twin: |v| valid_or(v, &["Exact", "Prefix", "ImplementationSpecific"], "Twin"),
            ingress: true,
            broken: "",
        },
        Field {
            name: "use-regex value",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    &format!("nginx.ingress.kubernetes.io/use-regex: {}", y(v)),
                    &rule(
                        "x.example.com",
                        "/x(/|$)(.*)",
                        "ImplementationSpecific",
                        "web",
                        "{name: http}",
                    ),
                )
            },
            twin: |v| valid_or(v, &["true", "false"], "twin"),
            ingress: true,
            broken: "",
        },
        Field {
            name: "spec.tls[].secretName and hosts",
            make: |v| {
                ingress_with(
                    "x",
                    "p",
                    "",
                    &format!(
                        "  tls: [{{hosts: [x.example.com, {}], secretName: {}}}]\n{}",
                        y(v),
                        y(v),
                        default_rule()
                    ),
                )
            },
            twin: |v| {
                if v == "x.example.com" {
                    v.into()
                } else {
                    "twin".into()
                }
            },
            ingress: true,
            broken: "",
        },
        Field {
            name: "Service spec.externalName",
            make: |v| {
                format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: p}}\nspec: {{type: ExternalName, externalName: {}, ports: [{{port: 80}}]}}\n---\n{}",
                    y(v),
                    ingress_with(
                        "x",
                        "p",
                        "",
                        &rule("x.example.com", "/x", "Prefix", "ext", "{number: 80}")
                    )
                )
            },
            twin: |_| "twin.example.com".into(),
            ingress: false,
            broken: MISSING_SERVICE,
        },
        Field {
            name: "Service port name",
            make: |v| {
                format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: p}}\nspec: {{ports: [{{name: {}, port: 80}}]}}\n---\n{}",
                    y(v),
                    ingress_with(
                        "x",
                        "p",
                        "",
                        &rule(
                            "x.example.com",
                            "/x",
                            "Prefix",
                            "svc",
                            &format!("{{name: {}}}", y(v))
                        )
                    )
                )
            },
            twin: |_| "twin".into(),
            ingress: false,
            broken: MISSING_SERVICE,
        },
        Field {
            name: "EndpointSlice address and port name",
            make: |v| {
                format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: p}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s, namespace: p, labels: {{kubernetes.io/service-name: svc}}}}\naddressType: IPv4\nports: [{{port: 81}}]\nendpoints: [{{addresses: [{}]}}]\n---\n{}",
                    y(v),
                    ingress_with(
                        "x",
                        "p",
                        "",
                        &rule("x.example.com", "/x", "Prefix", "svc", "{number: 80}")
                    )
                )
            },
            twin: |_| "10.9.9.9".into(),
            ingress: false,
            broken: MISSING_SERVICE,
        },
        Field {
            name: "ConfigMap settings",
            make: |v| {
                format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: p}}\ndata: {{proxy-body-size: {v}, proxy-read-timeout: {v}, keep-alive: {v}, worker-shutdown-timeout: {v}, upstream-keepalive-connections: {v}, allow-snippet-annotations: {v}, {v}: {v}}}\n",
                    v = y(v)
                )
            },
            twin: |_| "1".into(),
            ingress: false,
            broken: "",
        },
    ]
}

/// Cases per property: `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}

/// Strings made of the characters that broke out of their place in
/// ingress-nginx's config, plain words, and anything at all.
fn hostile() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        "\"",
        "'",
        "{",
        "}",
        ";",
        "#",
        "\n",
        "\r",
        "\r\n",
        "$",
        "${",
        "\0",
        "\\",
        " ",
        "\t",
        "/",
        ".",
        "*.",
        "(",
        ")",
        "|",
        "~",
        "^",
        "%2F",
        "%0a",
        "\u{2028}",
        "\u{ff1b}",
        "\u{ff5d}",
        "é",
        "return 200 x;",
        "} server {",
        "# ",
        "..",
    ]);
    let piece = prop_oneof![3 => special.prop_map(String::from), 2 => "[a-z0-9][a-z0-9.-]{0,10}"];
    prop_oneof![
        6 => prop::collection::vec(piece, 0..8).prop_map(|v| v.concat()),
        2 => "[a-z0-9][a-z0-9.-]{0,20}[a-z0-9]",
        1 => any::<String>(),
        1 => "[ -~]{0,80}",
        1 => (1usize..8000).prop_map(|n| "a".repeat(n)),
    ]
}

/// A config a legitimate value gives, as the checks compare it.
struct Legit {
    shape: Vec<Node>,
    variables: BTreeMap<String, usize>,
}

thread_local! {
    /// The same legitimate configs come back for every value of a field.
    static LEGIT: std::cell::RefCell<BTreeMap<String, std::rc::Rc<Legit>>> = Default::default();
}

fn legitimate(extra: &str) -> std::rc::Rc<Legit> {
    if let Some(l) = LEGIT.with(|c| c.borrow().get(extra).cloned()) {
        return l;
    }
    let text = render(extra).text;
    let l = std::rc::Rc::new(Legit {
        shape: shape(&text),
        variables: variables(&text),
    });
    LEGIT.with(|c| c.borrow_mut().insert(extra.to_string(), l.clone()));
    l
}

/// The names the fixtures use. A value equal to one is legitimate and means
/// that object (the namespace with the Service, the good Ingress or its
/// host, the Service, its port): its own twin, since any other harmless
/// value would name something else.
const FIXTURE_NAMES: [&str; 5] = ["p", "good", "web", "http", "good.example.com"];

fn check(field: &AnyField, value: &str) -> Result<(), TestCaseError> {
    let Some(hostile) = try_render(&(field.make)(value)) else {
        return Ok(());
    };
    let twin = if FIXTURE_NAMES.contains(&value) {
        value.to_string()
    } else {
        (field.twin)(value)
    };
    // The configs a legitimate value can give: with a harmless value of the
    // same kind, with the object unusable, or with it left out.
    let legit = [
        legitimate(&(field.make)(&twin)),
        legitimate(&field.broken),
        legitimate(""),
    ];
    let got = shape(&hostile.text);
    prop_assert!(
        legit.iter().any(|l| l.shape == got),
        "{}: {value:?} changed the structure of the config:\n{}",
        field.name,
        hostile.text
    );
    let vars = variables(&hostile.text);
    let same_variables = |l: &std::rc::Rc<Legit>| {
        let legit = &l.variables;
        match field.variables {
            None => *legit == vars,
            // Only variables the field may name are added.
            Some(allowed) => vars
                .iter()
                .all(|(name, n)| legit.get(name).is_some_and(|m| m >= n) || allowed(name)),
        }
    };
    prop_assert!(
        legit.iter().any(same_variables),
        "{}: {value:?} changed which nginx variables the config uses: {vars:?}\n{}",
        field.name,
        hostile.text
    );
    let absent = legit[2].shape.clone();
    // The Ingress of the case, as wicket reads it (a YAML scalar may fold,
    // a missing namespace is `default`).
    let key = field
        .ingress
        .then(|| manifest::parse(&(field.make)(value), false).ok())
        .flatten()
        .and_then(|m| {
            m.objects.iter().find_map(|o| match o {
                Object::Ingress(_) => Some(o.object_ref().key),
                _ => None,
            })
        });
    if let Some(key) = key {
        if !hostile.served.contains(&key) {
            prop_assert!(
                hostile
                    .problems
                    .iter()
                    .any(|p| p.severity == Severity::Rejected
                        && p.object.kind == Kind::Ingress
                        && p.object.key == key),
                "{}: {value:?}: not served, but no reason given: {:?}",
                field.name,
                hostile.problems
            );
            prop_assert_eq!(
                got,
                absent,
                "{}: {:?}: a rejected Ingress left a trace",
                field.name,
                value
            );
        }
    }
    // The good Ingress is always served, unless an admin's protection key
    // that does not parse refuses every Ingress (fail closed), with the
    // reason.
    let good = ObjectKey::new("p", "good");
    let refuses_all = field
        .name
        .strip_prefix("ConfigMap key ")
        .and_then(registry::key_row)
        .is_some_and(|r| r.protection);
    if refuses_all && !hostile.served.contains(&good) {
        prop_assert!(
            hostile
                .problems
                .iter()
                .any(|p| p.severity == Severity::Rejected
                    && p.object.key == good
                    && p.message
                        .contains(field.name.trim_start_matches("ConfigMap key "))),
            "{}: {value:?}: the good Ingress is refused without the key's name: {:?}",
            field.name,
            hostile.problems
        );
    } else {
        prop_assert!(hostile.served.contains(&good));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(192), ..ProptestConfig::default() })]

    #[test]
    fn no_value_changes_the_structure_of_the_config(field in 0usize..all_fields().len(), value in hostile()) {
        let fields = all_fields();
        check(&fields[field], &value)?;
    }
}

#[test]
fn the_known_payloads_in_every_field() {
    let extra = ["a.b", "/", "*.example.com", "v1/(.*)", "", ".*", "(.*)"];
    let long = "a".repeat(70_000);
    let mut failures = Vec::new();
    for f in all_fields() {
        for p in common::PAYLOADS
            .iter()
            .chain(&extra)
            .chain(&FIXTURE_NAMES)
            .copied()
            .chain([long.as_str()])
        {
            if let Err(e) = check(&f, p) {
                failures.push(e.to_string());
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fields failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ------------------------------------------------------------- nginx -t

/// Values every field accepts, to build configs that must all pass nginx -t.
fn host() -> impl Strategy<Value = String> {
    (
        "(\\*\\.)?",
        "[a-z][a-z0-9-]{0,10}[a-z0-9](\\.[a-z][a-z0-9]{0,5}){1,3}",
    )
        .prop_map(|(w, h)| format!("{w}{h}"))
}

fn literal_path() -> impl Strategy<Value = String> {
    "(/[A-Za-z0-9_~!$&'()*+,;=:@-][A-Za-z0-9._~!$&'()*+,;=:@-]{0,11}){0,4}/?"
        .prop_map(|p| if p.is_empty() { "/".into() } else { p })
}

fn regex_path() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "/api/v[0-9]+/(.*)",
        "/something(/|$)(.*)",
        "/(foo|bar)/?",
        "/a.b",
        "/x{1,3}",
        "/[^/]+/edit",
        "/\\d+$",
        "/$",
    ])
    .prop_map(String::from)
}

fn accepted_ingress() -> impl Strategy<Value = String> {
    (
        "[a-z]([a-z0-9-]{0,10}[a-z0-9])?",
        host(),
        prop::collection::vec((literal_path(), prop::sample::select(vec!["Prefix", "Exact", "ImplementationSpecific"])), 1..4),
        prop::option::of(regex_path()),
        prop::option::of("(/[a-z0-9]{0,6}){1,2}(\\$[1-2])?(\\?[a-z]=[a-z0-9]{1,3})?"),
        any::<bool>(),
    )
        .prop_map(|(name, host, paths, regex, target, tls)| {
            let mut annotations = String::new();
            if let Some(t) = &target {
                annotations = format!("nginx.ingress.kubernetes.io/rewrite-target: {}", y(t));
            }
            let mut p = String::new();
            for (path, ty) in &paths {
                let path = if target.is_some() && *ty != "Exact" { regex.clone().unwrap_or_else(|| "/regex".into()) } else { path.clone() };
                p.push_str(&format!("{{path: {}, pathType: {ty}, backend: {{service: {{name: web, port: {{name: http}}}}}}}}, ", y(&path)));
            }
            let tls = if tls { format!("  tls: [{{hosts: [{}]}}]\n", y(&host)) } else { String::new() };
            ingress_with(&name, "p", &annotations, &format!("{tls}  rules:\n  - host: {}\n    http: {{paths: [{p}]}}\n", y(&host)))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(192) / 4, ..ProptestConfig::default() })]

    #[test]
    fn nginx_accepts_every_config_built_from_accepted_input(ingresses in prop::collection::vec(accepted_ingress(), 1..6)) {
        let yaml = ingresses.join("---\n");
        let mut cluster = Cluster::default();
        for o in manifest::parse(&format!("{BASE}---\n{yaml}"), false).unwrap().objects {
            cluster.insert(o);
        }
        let b = OPTIONS.with(|o| build::build(&cluster, o));
        let rejected: Vec<String> = b.problems.iter().filter(|p| p.severity == Severity::Rejected).map(ToString::to_string).collect();
        prop_assert!(rejected.is_empty(), "generated input was rejected: {rejected:?}");
        let text = RENDERER.with(|r| r.render(&b.config, &RenderEnv::default())).unwrap();
        common::nginx_test(&text, &b.config);
    }
}
