//! `build` on plain objects: Ingress semantics, validation, conflicts and
//! determinism, without nginx. What the routes do to real requests is tested
//! through nginx in `serve.rs`.

mod common;

use wicket::build::{self, Build, ClassOptions, Options};
use wicket::cluster::{Cluster, Kind};
use wicket::config::{Action, Match};
use wicket::problem::Severity;
use wicket::render::{RenderEnv, Renderer};
use wicket::source::manifest;

fn objects(yaml: &str) -> Vec<wicket::cluster::Object> {
    manifest::parse(yaml, false)
        .expect("test manifests parse")
        .objects
}

fn cluster(yaml: &str) -> Cluster {
    let mut c = Cluster::default();
    for o in objects(yaml) {
        c.insert(o);
    }
    c
}

fn opts() -> Options {
    Options {
        class: ClassOptions {
            watch_without_class: true,
            by_name: true,
            ..ClassOptions::default()
        },
        annotations_prefix: build::DEFAULT_ANNOTATIONS_PREFIX.into(),
        http_port: 80,
        https_port: 443,
        default_certificate: wicket::certs::generate_default().unwrap(),
        default_ssl_certificate: None,
        default_backend_service: None,
        configmap: None,
        quarantine: Default::default(),
        backend_policy: wicket::build::backends::BackendPolicy {
            allow_local: true,
            ..Default::default()
        },
        resolved: None,
        modules: wicket::config::Modules {
            dir: "/usr/lib/nginx/modules".into(),
            headers_more: true,
            brotli: true,
            set_misc: true,
            subs_filter: true,
            lua: true,
            modsecurity: true,
            crs: true,
            stream: true,
        },
        dynamic_endpoints: false,
        tcp_services: None,
        udp_services: None,
        ssl_passthrough: false,
        ports_in_use: Default::default(),
    }
}

fn run(yaml: &str) -> Build {
    build::build(&cluster(yaml), &opts())
}

const BACKENDS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: metrics, port: 9090}]
endpoints:
- addresses: [10.0.0.3]
  conditions: {ready: true}
"#;

fn ingress(name: &str, extra_meta: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: shop\n{extra_meta}spec:\n{spec}\n"
    )
}

fn simple_rule(host: &str, path: &str, path_type: &str) -> String {
    format!(
        "  rules:\n  - host: \"{host}\"\n    http:\n      paths:\n      - path: {path}\n        pathType: {path_type}\n        backend: {{service: {{name: web, port: {{name: http}}}}}}\n"
    )
}

#[test]
fn endpoints_are_joined_over_slices_by_port_name_and_only_ready_ones_count() {
    let b = run(&format!(
        "{BACKENDS}{}",
        ingress("a", "", &simple_rule("a.example.com", "/", "Prefix"))
    ));
    assert!(b.problems.is_empty(), "{:?}", b.problems);
    assert_eq!(b.config.upstreams.len(), 1);
    let u = &b.config.upstreams[0];
    assert!(
        u.name.ends_with("_shop_web_80") && u.name.len() == "abcd_shop_web_80".len(),
        "{}",
        u.name
    );
    let servers: Vec<String> = u.servers.iter().map(|s| s.to_string()).collect();
    assert_eq!(servers, vec!["10.0.0.1:8080", "10.0.0.3:8080"]);
}

#[test]
fn prefix_paths_get_an_exact_location_so_nginx_never_redirects() {
    let b = run(&format!(
        "{BACKENDS}{}",
        ingress("a", "", &simple_rule("a.example.com", "/foo/", "Prefix"))
    ));
    let s = &b.config.servers[0];
    let matchers: Vec<&Match> = s.locations.iter().map(|l| &l.matcher).collect();
    assert!(
        matches!(matchers[0], Match::Exact(p) if p.as_str() == "/foo"),
        "{matchers:?}"
    );
    assert!(
        matches!(matchers[1], Match::PrefixDir(p) if p.as_str() == "/foo"),
        "{matchers:?}"
    );
    assert!(matches!(matchers[2], Match::Root));
    assert!(matches!(
        &s.locations[2].action,
        Action::Status { code: 404, .. }
    ));
}

#[test]
fn an_invalid_ingress_is_rejected_alone_naming_each_field() {
    let bad_spec = "  rules:\n  - host: Bad_Host\n    http:\n      paths:\n      - path: /a b\n        pathType: Exact\n        backend: {service: {name: web, port: {number: 70000}}}\n";
    let b = run(&format!(
        "{BACKENDS}{}{}",
        ingress("bad", "", bad_spec),
        ingress("good", "", &simple_rule("good.example.com", "/", "Prefix"))
    ));
    assert_eq!(b.served.len(), 1);
    assert_eq!(b.served[0].name, "good");
    assert_eq!(b.config.servers.len(), 1);
    let rejected: Vec<_> = b
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Rejected)
        .collect();
    assert_eq!(rejected.len(), 1, "{:?}", b.problems);
    let line = rejected[0].to_string();
    assert!(line.starts_with("rejected ingress shop/bad: "), "{line}");
    for needle in [
        "spec.rules[0].host \"Bad_Host\": a host must be lowercase",
        "spec.rules[0].http.paths[0].path \"/a b\"",
        "spec.rules[0].http.paths[0].backend.service.port.number \"70000\"",
    ] {
        assert!(line.contains(needle), "{needle} not in {line}");
    }
}

#[test]
fn the_oldest_ingress_wins_a_conflict_and_the_loser_is_told() {
    let older = "  creationTimestamp: \"2024-01-01T00:00:00Z\"\n";
    let newer = "  creationTimestamp: \"2025-01-01T00:00:00Z\"\n";
    // "aaa" sorts first by name, but is newer: the older "zzz" wins.
    let b = run(&format!(
        "{BACKENDS}{}{}",
        // Prefix `/x/` and ImplementationSpecific `/x/` (a Prefix outside
        // regex mode) are the same path; `/x` and `/x/` would be twins.
        ingress("aaa", newer, &simple_rule("a.example.com", "/x/", "Prefix")),
        ingress(
            "zzz",
            older,
            &simple_rule("a.example.com", "/x/", "ImplementationSpecific")
        )
    ));
    let warnings: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("warning ingress shop/aaa: spec.rules[0].http.paths[0]: the same path for host a.example.com is served by ingress shop/zzz"),
        "{}",
        warnings[0]
    );
    let src = b.config.servers[0].locations[0].source.as_ref().unwrap();
    assert_eq!(src.name, "zzz");
}

#[test]
fn exact_and_prefix_on_the_same_path_do_not_conflict() {
    let spec = "  rules:\n  - host: a.example.com\n    http:\n      paths:\n      - {path: /p, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}\n      - {path: /p, pathType: Prefix, backend: {service: {name: other, port: {number: 80}}}}\n";
    let b = run(&format!("{BACKENDS}{}", ingress("a", "", spec)));
    let s = &b.config.servers[0];
    // `= /p` is the Exact rule's (web), `/p/` the Prefix rule's (other: 503).
    assert!(
        matches!(&s.locations[0].action, Action::Proxy { upstream, .. } if upstream.ends_with("_shop_web_80"))
    );
    assert!(matches!(
        &s.locations[1].action,
        Action::Status { code: 503, .. }
    ));
    assert_eq!(b.problems.len(), 1, "{:?}", b.problems);
    assert!(
        b.problems[0]
            .to_string()
            .contains("service shop/other not found; answering 503")
    );
}

#[test]
fn ingress_classes_decide_what_is_served() {
    let mk = |name: &str, meta: &str, class: &str| {
        ingress(
            name,
            meta,
            &format!(
                "{class}{}",
                simple_rule(&format!("{name}.example.com"), "/", "Prefix")
            ),
        )
    };
    let yaml = format!(
        "{BACKENDS}{}{}{}{}{}",
        mk("ours", "", "  ingressClassName: wicket\n"),
        mk("theirs", "", "  ingressClassName: nginx\n"),
        mk(
            "legacy",
            "  annotations: {kubernetes.io/ingress.class: wicket}\n",
            "  ingressClassName: nginx\n"
        ),
        mk("none", "", ""),
        mk("other", "", "  ingressClassName: other\n"),
    );
    let names = |b: &Build| b.served.iter().map(|k| k.name.clone()).collect::<Vec<_>>();

    let b = run(&yaml);
    assert_eq!(names(&b), vec!["legacy", "none", "ours"]);

    let mut o = opts();
    o.class.watch_without_class = false;
    let b = build::build(&cluster(&yaml), &o);
    assert_eq!(names(&b), vec!["legacy", "ours"]);

    // An IngressClass named wicket that belongs to another controller: not ours.
    let foreign = "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: wicket}\nspec: {controller: example.com/other}\n";
    let b = build::build(&cluster(&format!("{yaml}{foreign}")), &o);
    assert_eq!(names(&b), Vec::<String>::new());

    // Our IngressClass, marked default: class-less Ingresses are ours.
    let default = "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: wicket, annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}}\nspec: {controller: wicket.dev/ingress-controller}\n";
    let b = build::build(&cluster(&format!("{yaml}{default}")), &o);
    assert_eq!(names(&b), vec!["legacy", "none", "ours"]);
}

#[test]
fn unsupported_annotations_are_reported_and_ignored() {
    let meta = "  annotations:\n    nginx.ingress.kubernetes.io/enable-opentelemetry: \"true\"\n    nginx.ingress.kubernetes.io/grpc-backend: \"true\"\n    nginx.ingress.kubernetes.io/proxy-bodysize: 8m\n    nginx.ingress.kubernetes.io/proxy-body-size: 8m\n    example.com/unrelated: x\n";
    let b = run(&format!(
        "{BACKENDS}{}",
        ingress("a", meta, &simple_rule("a.example.com", "/", "Prefix"))
    ));
    assert_eq!(b.served.len(), 1);
    let lines: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "ignored ingress shop/a: metadata.annotations[\"nginx.ingress.kubernetes.io/enable-opentelemetry\"]: Debian's nginx has no OpenTelemetry module; ignored",
            "ignored ingress shop/a: metadata.annotations[\"nginx.ingress.kubernetes.io/grpc-backend\"]: removed in ingress-nginx 0.21; use backend-protocol: GRPC; ignored",
            "ignored ingress shop/a: metadata.annotations[\"nginx.ingress.kubernetes.io/proxy-bodysize\"]: not an ingress-nginx annotation; ignored",
        ]
    );
}

#[test]
fn a_protection_annotation_wicket_cannot_honour_rejects_the_ingress() {
    for meta in [
        "  annotations:\n    nginx.ingress.kubernetes.io/auth-type: digest\n    nginx.ingress.kubernetes.io/auth-secret: basic-auth\n",
        "  annotations:\n    nginx.ingress.kubernetes.io/auth-snippet: \"return 200;\"\n",
        "  annotations:\n    nginx.ingress.kubernetes.io/whitelist-source-range: 10.0.0.0/8;\n",
        "  annotations:\n    nginx.ingress.kubernetes.io/auth-tls-secret: shop/ca\n    nginx.ingress.kubernetes.io/auth-tls-verify-client: sometimes\n",
    ] {
        let b = run(&format!(
            "{BACKENDS}{}",
            ingress("a", meta, &simple_rule("a.example.com", "/", "Prefix"))
        ));
        assert!(b.served.is_empty(), "{meta}: served");
        assert!(
            b.problems
                .iter()
                .any(|p| p.severity == wicket::problem::Severity::Rejected),
            "{meta}: {:?}",
            b.problems
        );
        // Nothing of it is served: every request gets the catch-all 404.
        assert!(b.config.servers.is_empty(), "{meta}");
    }
}

#[test]
fn regex_mode_orders_longest_first_and_keeps_other_ingresses_literal() {
    let regex_meta = "  annotations:\n    nginx.ingress.kubernetes.io/use-regex: \"true\"\n";
    let b = run(&format!(
        "{BACKENDS}{}{}",
        ingress(
            "re",
            regex_meta,
            &simple_rule("a.example.com", "/v[0-9]+/.*", "ImplementationSpecific")
        ),
        ingress("lit", "", &simple_rule("a.example.com", "/v1.0", "Prefix")),
    ));
    assert!(b.problems.is_empty(), "{:?}", b.problems);
    let regexes: Vec<(String, bool)> = b.config.servers[0]
        .locations
        .iter()
        .filter_map(|l| match &l.matcher {
            Match::Regex {
                regex,
                case_insensitive,
            } => Some((regex.as_str().to_string(), *case_insensitive)),
            _ => None,
        })
        .collect();
    assert_eq!(
        regexes,
        vec![
            ("/v[0-9]+/.*".to_string(), true),
            ("/v1\\.0(/|$)".to_string(), false)
        ]
    );
}

#[test]
fn rewrite_targets_and_regexes_are_validated() {
    let meta = |t: &str| {
        format!("  annotations:\n    nginx.ingress.kubernetes.io/rewrite-target: '{t}'\n")
    };
    for (target, path, ok) in [
        ("/$2", "/something(/|$)(.*)", true),
        ("/$host", "/x", false),
        ("/", "/a(", false),
        ("/ok", "/a;b", true),
    ] {
        let b = run(&format!(
            "{BACKENDS}{}",
            ingress(
                "a",
                &meta(target),
                &simple_rule("a.example.com", path, "Prefix")
            )
        ));
        assert_eq!(b.served.len() == 1, ok, "{target} {path}: {:?}", b.problems);
    }
}

#[test]
fn missing_and_broken_tls_secrets_fall_back_to_the_default_certificate() {
    let tls = "  tls:\n  - hosts: [a.example.com]\n    secretName: nope\n";
    let b = run(&format!(
        "{BACKENDS}{}",
        ingress(
            "a",
            "",
            &format!("{tls}{}", simple_rule("a.example.com", "/", "Prefix"))
        )
    ));
    assert_eq!(
        b.config.servers[0].certificate, None,
        "the default certificate"
    );
    assert_eq!(b.problems.len(), 1);
    assert!(
        b.problems[0].to_string().contains("spec.tls[0].secretName: secret shop/nope not found; host a.example.com is served with the default certificate"),
        "{}",
        b.problems[0]
    );
}

#[test]
fn build_is_deterministic_whatever_the_arrival_order() {
    let secret = std::fs::read_to_string("tests/fixtures/tls-secret.yaml").unwrap();
    let yaml = format!(
        "{BACKENDS}---\n{secret}{}{}{}",
        ingress(
            "a",
            "",
            &format!(
                "  tls:\n  - hosts: [secure.example.com]\n    secretName: secure-tls\n{}",
                simple_rule("secure.example.com", "/", "Prefix")
            )
        ),
        ingress("b", "", &simple_rule("*.example.com", "/x", "Exact")),
        ingress("c", "", &simple_rule("b.example.com", "/", "Prefix")),
    );
    let objs = objects(&yaml);
    let o = opts();
    let r = Renderer::embedded().unwrap();
    let render = |objs: &[wicket::cluster::Object]| {
        let mut c = Cluster::default();
        for ob in objs {
            c.insert(ob.clone());
        }
        let b = build::build(&c, &o);
        (
            r.render(&b.config, &RenderEnv::default()).unwrap(),
            b.problems,
        )
    };
    let first = render(&objs);
    let mut reversed = objs.clone();
    reversed.reverse();
    assert_eq!(first, render(&reversed));
    let mut rotated = objs.clone();
    rotated.rotate_left(3);
    assert_eq!(first, render(&rotated));
    assert!(first.1.is_empty(), "{:?}", first.1);
    assert_eq!(
        first.0.matches("ssl_certificate certs/").count(),
        2,
        "the default server and the host with its own certificate"
    );
    let cluster_counts = cluster(&yaml).counts();
    assert_eq!(cluster_counts[0], (Kind::Ingress, 3));
}

#[test]
fn snippets_are_numbered_once_each_across_servers() {
    // Servers are built on several threads; the snippet list and the
    // indexes in each server must not depend on that.
    let mut yaml = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: s}\ndata: {allow-snippet-annotations: \"true\"}\n",
    );
    yaml.push_str("---");
    yaml.push_str(BACKENDS);
    for (i, (host, snippet)) in [
        ("a.test", "add_header X-One 1;"),
        ("b.test", "add_header X-Two 2;"),
        ("c.test", "add_header X-One 1;"),
        ("d.test", "add_header X-Three 3;"),
    ]
    .iter()
    .enumerate()
    {
        yaml.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: i{i}\n  namespace: shop\n  annotations: {{nginx.ingress.kubernetes.io/configuration-snippet: '{snippet}'}}\nspec:\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n"
        ));
    }
    let mut o = opts();
    o.configmap = Some("s/settings".parse().unwrap());
    let b = build::build(&cluster(&yaml), &o);
    let c = &b.config;
    assert_eq!(
        c.snippets,
        vec![
            "add_header X-One 1;",
            "add_header X-Two 2;",
            "add_header X-Three 3;"
        ],
        "{:?}",
        b.problems
    );
    let used: Vec<(String, Option<usize>)> = c
        .servers
        .iter()
        .map(|s| (s.server_name.clone(), s.locations.last().unwrap().snippet))
        .collect();
    assert_eq!(
        used,
        vec![
            ("a.test".to_string(), Some(0)),
            ("b.test".to_string(), Some(1)),
            ("c.test".to_string(), Some(0)),
            ("d.test".to_string(), Some(2)),
        ]
    );
}

#[test]
fn a_rebuild_shares_the_servers_that_did_not_change() {
    let ingress = |name: &str, host: &str, path: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: {path}, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n"
        )
    };
    let before = format!(
        "{BACKENDS}{}{}",
        ingress("a", "a.test", "/"),
        ingress("b", "b.test", "/")
    );
    let after = format!(
        "{BACKENDS}{}{}",
        ingress("a", "a.test", "/"),
        ingress("b", "b.test", "/v2")
    );
    let o = opts();
    let first = build::build(&cluster(&before), &o);
    let fresh = build::build(&cluster(&after), &o);
    let reused = build::build_reusing(&cluster(&after), &o, Some(&first.config));
    assert_eq!(reused.config, fresh.config, "sharing changes nothing");
    assert_eq!(reused.problems, fresh.problems);
    let names: Vec<&str> = reused
        .config
        .servers
        .iter()
        .map(|s| s.server_name.as_str())
        .collect();
    assert_eq!(names, ["a.test", "b.test"]);
    assert!(
        std::sync::Arc::ptr_eq(&reused.config.servers[0], &first.config.servers[0]),
        "a.test did not change: its server is the previous one"
    );
    assert!(!std::sync::Arc::ptr_eq(
        &reused.config.servers[1],
        &first.config.servers[1]
    ));
}

#[test]
fn server_wide_annotations_come_from_the_oldest_ingress_of_the_host() {
    let older = "  creationTimestamp: \"2024-01-01T00:00:00Z\"\n  annotations:\n    nginx.ingress.kubernetes.io/app-root: /old\n    nginx.ingress.kubernetes.io/server-alias: old.example.com\n";
    let newer = "  creationTimestamp: \"2025-01-01T00:00:00Z\"\n  annotations:\n    nginx.ingress.kubernetes.io/app-root: /new\n    nginx.ingress.kubernetes.io/from-to-www-redirect: \"true\"\n";
    let b = run(&format!(
        "{BACKENDS}{}{}",
        ingress("aaa", newer, &simple_rule("a.example.com", "/n", "Prefix")),
        ingress("zzz", older, &simple_rule("a.example.com", "/o", "Prefix")),
    ));
    let server = &b.config.servers[0];
    assert_eq!(server.app_root.as_ref().unwrap().as_str(), "/old");
    assert_eq!(server.aliases, ["old.example.com"]);
    // Set by the newer one only: it is the first to set it.
    let www: Vec<(&str, &str)> = b
        .config
        .www_redirects
        .iter()
        .map(|w| (w.server_name.as_str(), w.to.as_str()))
        .collect();
    assert_eq!(www, [("www.a.example.com", "a.example.com")]);
    let lines: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "warning ingress shop/aaa: metadata.annotations[\"nginx.ingress.kubernetes.io/app-root\"]: host a.example.com takes it from ingress shop/zzz, which is older or sorts first; this one is not used there"
        ]
    );
    // Both Ingresses are served.
    assert_eq!(b.served.len(), 2);
}

#[test]
fn a_setting_that_needs_a_missing_module_is_reported() {
    let mut o = opts();
    o.modules = wicket::config::Modules {
        dir: "/nowhere".into(),
        headers_more: false,
        brotli: false,
        set_misc: false,
        subs_filter: false,
        lua: false,
        modsecurity: false,
        crs: false,
        stream: false,
    };
    o.configmap = Some("shop/settings".parse().unwrap());
    let yaml = format!(
        "{BACKENDS}{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: shop}}\ndata: {{enable-brotli: \"true\"}}\n",
        ingress(
            "a",
            "",
            &format!(
                "  tls:\n  - hosts: [a.example.com]\n{}",
                simple_rule("a.example.com", "/", "Prefix")
            )
        )
    );
    let b = build::build(&cluster(&yaml), &o);
    let lines: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
    for needle in [
        "data[\"hsts\"]: nginx's headers-more module",
        "data[\"enable-brotli\"]: nginx's brotli module",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{needle}: {lines:?}"
        );
    }
    let text = Renderer::embedded()
        .unwrap()
        .render(&b.config, &RenderEnv::default())
        .unwrap();
    assert!(!text.contains("load_module"), "{text}");
    assert!(!text.contains("brotli on"), "{text}");
}

#[test]
fn an_object_an_annotation_names_that_is_unusable_makes_the_locations_answer_503() {
    let ann =
        |v: &str| format!("  annotations:\n    nginx.ingress.kubernetes.io/custom-headers: {v}\n");
    for (meta, why) in [
        (ann("nope"), "configmap shop/nope not found"),
        (ann("other/headers"), "other/headers is in another namespace"),
        (
            "  annotations:\n    nginx.ingress.kubernetes.io/proxy-ssl-secret: shop/nope\n"
                .to_string(),
            "secret shop/nope not found",
        ),
        (
            "  annotations:\n    nginx.ingress.kubernetes.io/backend-protocol: HTTPS\n    nginx.ingress.kubernetes.io/proxy-ssl-verify: \"on\"\n".to_string(),
            "no proxy-ssl-secret with a ca.crt",
        ),
    ] {
        let b = run(&format!(
            "{BACKENDS}{}",
            ingress("a", &meta, &simple_rule("a.example.com", "/", "Prefix"))
        ));
        let lines: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains(why) && l.contains("its locations answer 503")),
            "{why}: {lines:?}"
        );
        // Served (its routes are its own), but never proxied.
        let locations = &b.config.servers[0].locations;
        assert!(
            locations.iter().all(|l| match &l.action {
                Action::Status { code, .. } => *code == 503 || l.source.is_none(),
                _ => false,
            }),
            "{why}: {locations:?}"
        );
    }
}

#[test]
fn a_policy_shared_by_many_locations_is_rendered_into_each() {
    let ann = |size: &str| {
        format!(
            "  annotations:\n    nginx.ingress.kubernetes.io/proxy-body-size: {size}\n    nginx.ingress.kubernetes.io/proxy-read-timeout: \"120\"\n"
        )
    };
    let yaml = |third: &str| {
        format!(
            "{BACKENDS}{}{}{}",
            ingress(
                "a",
                &ann("8m"),
                &simple_rule("a.example.com", "/", "Prefix")
            ),
            ingress(
                "b",
                &ann("8m"),
                &simple_rule("b.example.com", "/x", "Prefix")
            ),
            ingress(
                "c",
                &ann(third),
                &simple_rule("c.example.com", "/", "Prefix")
            ),
        )
    };
    let r = Renderer::embedded().unwrap();
    let first = run(&yaml("2m"));
    let text = r.render(&first.config, &RenderEnv::default()).unwrap();
    assert!(!text.contains("wicket-policy"), "{text}");
    // a: `/`; b: `= /x` and `/x/`; c: `/`.
    assert_eq!(
        text.matches("client_max_body_size 8m;").count(),
        3,
        "{text}"
    );
    assert_eq!(
        text.matches("client_max_body_size 2m;").count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("proxy_read_timeout 120s;").count(),
        4,
        "{text}"
    );
    // Each inside its location, before the pass directive.
    let c = &text[text.find("server_name c.example.com;").unwrap()..];
    let (size, pass) = (
        c.find("client_max_body_size 2m;").unwrap(),
        c.find("proxy_pass").unwrap(),
    );
    assert!(size < pass, "{c}");
    // A render that reuses the last one's parts gives the same text.
    let mut cache = wicket::render::RenderCache::default();
    let first = std::sync::Arc::new(first.config);
    r.render_cached(&first, &RenderEnv::default(), &mut cache)
        .unwrap();
    let second = std::sync::Arc::new(run(&yaml("4m")).config);
    let cached = r
        .render_cached(&second, &RenderEnv::default(), &mut cache)
        .unwrap();
    assert_eq!(*cached, r.render(&second, &RenderEnv::default()).unwrap());
    assert_eq!(cached.matches("client_max_body_size 4m;").count(), 1);
}

#[test]
fn only_an_endpoint_change_is_sent_without_a_reload() {
    let mut o = opts();
    o.dynamic_endpoints = true;
    let route = ingress(
        "shop",
        "",
        "  rules:\n  - host: shop.example.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}",
    );
    let before = build::build(&cluster(&format!("{BACKENDS}{route}")), &o).config;

    // An endpoint becomes ready: the upstream of web:80, alone.
    let ready = BACKENDS.replace(
        "- addresses: [10.0.0.2]\n  conditions: {ready: false}",
        "- addresses: [10.0.0.2]\n  conditions: {ready: true}",
    );
    let after = build::build(&cluster(&format!("{ready}{route}")), &o).config;
    let changed = after.endpoint_changes(&before).expect("an endpoint change");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].service, "shop/web:80");
    assert_eq!(changed[0].servers.len(), 3);

    // No endpoint left: the upstream stays, empty, still only endpoints.
    let none = BACKENDS
        .replace(
            "- addresses: [10.0.0.1]\n",
            "- addresses: [10.0.0.1]\n  conditions: {ready: false}\n",
        )
        .replace(
            "- addresses: [10.0.0.3]\n  conditions: {ready: true}",
            "- addresses: [10.0.0.3]\n  conditions: {ready: false}",
        );
    let empty = build::build(&cluster(&format!("{none}{route}")), &o);
    let changed = empty
        .config
        .endpoint_changes(&before)
        .expect("an endpoint change");
    assert!(changed[0].servers.is_empty());
    assert!(
        empty
            .problems
            .iter()
            .any(|p| p.to_string().contains("answering 503 until it has some")),
        "{:?}",
        empty.problems
    );

    // Anything else, or nothing, is not one.
    assert!(before.endpoint_changes(&before).is_none());
    let other = ingress(
        "shop",
        "",
        "  rules:\n  - host: shop.example.com\n    http: {paths: [{path: /v2, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}",
    );
    let moved = build::build(&cluster(&format!("{ready}{other}")), &o).config;
    assert!(moved.endpoint_changes(&before).is_none());
    // Without dynamic endpoints, never.
    o.dynamic_endpoints = false;
    let a = build::build(&cluster(&format!("{BACKENDS}{route}")), &o).config;
    let b = build::build(&cluster(&format!("{ready}{route}")), &o).config;
    assert!(b.endpoint_changes(&a).is_none());
    // A cluster IP (service-upstream) is fixed: its change reloads.
    o.dynamic_endpoints = true;
    let ann = "  annotations: {nginx.ingress.kubernetes.io/service-upstream: \"true\"}\n";
    let svc = |ip: &str| {
        BACKENDS.replace(
            "spec: {ports: [{name: http, port: 80}]}",
            &format!("spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}"),
        )
    };
    let cip = ingress(
        "shop",
        ann,
        "  rules:\n  - host: shop.example.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}",
    );
    let a = build::build(&cluster(&format!("{}{cip}", svc("10.96.0.1"))), &o).config;
    let b = build::build(&cluster(&format!("{}{cip}", svc("10.96.0.2"))), &o).config;
    assert!(a.upstreams.iter().all(|u| u.fixed), "{:?}", a.upstreams);
    assert!(b.endpoint_changes(&a).is_none());
}

#[test]
fn external_names_are_those_of_the_externalname_services_served_ingresses_use() {
    let svc = |ns: &str, name: &str, spec: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}\n"
        )
    };
    let backend = |svc: &str| {
        format!(
            "  rules:\n  - host: a.example.com\n    http:\n      paths:\n      - path: /{svc}\n        pathType: Prefix\n        backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}\n"
        )
    };
    let yaml = [
        svc("shop", "ext", "  type: ExternalName\n  externalName: api.example.net.\n"),
        // Named by nobody: not looked up.
        svc("shop", "unused", "  type: ExternalName\n  externalName: unused.example.net\n"),
        // Same name in another namespace: not the Ingress's.
        svc("other", "ext2", "  type: ExternalName\n  externalName: other.example.net\n"),
        svc("shop", "ip", "  type: ExternalName\n  externalName: 192.0.2.7\n"),
        svc("shop", "local", "  type: ExternalName\n  externalName: localhost\n"),
        svc("shop", "web", "  ports:\n  - port: 80\n"),
        ingress("a", "", &backend("ext")),
        ingress("b", "", &backend("ext2")),
        ingress("c", "", &backend("ip")),
        ingress("d", "", &backend("local")),
        ingress("e", "", &backend("web")),
        ingress(
            "f",
            "  annotations:\n    nginx.ingress.kubernetes.io/auth-url: \"http://auth.example.org/check\"\n",
            &backend("web"),
        ),
        // Not ours: its ExternalName is not looked up.
        ingress("g", "", &format!("  ingressClassName: someone-else\n{}", backend("unused"))),
    ]
    .concat();
    let names = build::external_names(&cluster(&yaml), &opts());
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![
            "api.example.net".to_string(),
            "auth.example.org".to_string()
        ]
    );
}

#[test]
fn a_regex_that_takes_every_uri_leaves_no_catch_all_location() {
    let regex_meta = "  annotations:\n    nginx.ingress.kubernetes.io/use-regex: \"true\"\n";
    let roots = |path: &str| {
        let b = run(&format!(
            "{BACKENDS}{}",
            ingress(
                "re",
                regex_meta,
                &simple_rule("a.example.com", path, "ImplementationSpecific")
            )
        ));
        assert!(b.problems.is_empty(), "{:?}", b.problems);
        b.config.servers[0]
            .locations
            .iter()
            .filter(|l| matches!(l.matcher, Match::Root))
            .count()
    };
    // nginx tries these before `location /`, and they match every URI.
    for path in ["/", "/.*", "/(.*)"] {
        assert_eq!(roots(path), 0, "{path}");
    }
    // These leave URIs to the catch-all (404).
    for path in ["/api", "/a.*", "/(api|web)"] {
        assert_eq!(roots(path), 1, "{path}");
    }
}

#[test]
fn thousands_of_generated_maps_still_fit_nginx_s_variables_hash() {
    // Each distinct CORS origin list is a map of its own, and each canary
    // five: with nginx's default hash sizes (max 1024, bucket 64), 1,500 of
    // them made `nginx -t` warn that it could not build the variables hash
    // and fall back to a slower one.
    let mut yaml = BACKENDS.to_string();
    for i in 0..1500 {
        yaml.push_str(&ingress(
            &format!("c{i}"),
            &format!(
                "  annotations:\n    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: \"https://o{i}.example\"\n"
            ),
            &simple_rule(&format!("h{i}.example"), "/", "Prefix"),
        ));
    }
    let b = run(&yaml);
    assert_eq!(b.config.cors_maps.len(), 1500);
    let text = Renderer::embedded()
        .unwrap()
        .render(&b.config, &RenderEnv::default())
        .unwrap();
    assert!(text.contains("    variables_hash_bucket_size 256;\n"));
    let said = common::nginx_test(&text, &b.config);
    assert!(!said.contains("variables_hash"), "nginx -t said: {said}");
}

#[test]
fn the_variables_hash_keys_set_floors() {
    let yaml = format!(
        "{BACKENDS}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: wicket, namespace: shop}}\ndata: {{variables-hash-bucket-size: \"512\", variables-hash-max-size: \"16384\", server-name-hash-max-size: \"4096\"}}\n"
    );
    let mut o = opts();
    o.configmap = Some("shop/wicket".parse().unwrap());
    let b = build::build(&cluster(&yaml), &o);
    assert_eq!(b.config.variables_hash_bucket_size, 512);
    assert_eq!(b.config.variables_hash_max_size, 16384);
    assert_eq!(b.config.server_names_hash_max_size, 4096);
    let b = run(BACKENDS);
    assert_eq!(b.config.variables_hash_bucket_size, 256);
    assert_eq!(b.config.variables_hash_max_size, 2048);
    assert_eq!(b.config.server_names_hash_max_size, 1024);
}
