//! Through `wicket serve` and the real nginx: hostile values in every field
//! with a good Ingress beside them, snippets, quarantine of an Ingress nginx
//! refuses, and no failed request while the config keeps changing.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn long_payload() -> String {
    format!("/{}", "a".repeat(70_000))
}

async fn web(ns: &str) -> (Echo, String) {
    let e = Echo::start("web", LO, 0).await;
    let svc = service(
        ns,
        "web",
        80,
        Some("http"),
        e.addr.port(),
        &[(IpAddr::V4(LO), true)],
    );
    (e, svc)
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_in_every_field_are_refused_or_contained() {
    let (_e, svc) = web("h").await;
    let good = ingress(
        "h",
        "good",
        "",
        "good.example.com",
        &[("/", "Prefix", "web", 80)],
    );
    let w = Wicket::start(&[("svc.yaml", &svc), ("good.yaml", &good)]).await;
    let long = long_payload();
    let mut payloads: Vec<&str> = PAYLOADS.to_vec();
    payloads.push(&long);
    for (i, p) in payloads.iter().enumerate() {
        let v = yaml_str(p);
        let fields: Vec<(&str, String)> = vec![
            (
                "name",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {v}, namespace: h}}\nspec:\n  rules:\n  - host: bad.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n"
                ),
            ),
            (
                "host",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: h}}\nspec:\n  rules:\n  - host: {v}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n"
                ),
            ),
            (
                "path",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: h}}\nspec:\n  rules:\n  - host: bad.example.com\n    http: {{paths: [{{path: {}, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n",
                    yaml_str(&format!("/{p}"))
                ),
            ),
            (
                "regex path",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: h, annotations: {{nginx.ingress.kubernetes.io/use-regex: \"true\"}}}}\nspec:\n  rules:\n  - host: bad.example.com\n    http: {{paths: [{{path: {}, pathType: ImplementationSpecific, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n",
                    yaml_str(&format!("/{p}"))
                ),
            ),
            (
                "rewrite target",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: h, annotations: {{nginx.ingress.kubernetes.io/rewrite-target: {}}}}}\nspec:\n  rules:\n  - host: bad.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n",
                    yaml_str(&format!("/{p}"))
                ),
            ),
            (
                "service name",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: h}}\nspec:\n  rules:\n  - host: bad.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {v}, port: {{number: 80}}}}}}}}]}}\n"
                ),
            ),
            (
                "port name",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: h}}\nspec:\n  rules:\n  - host: bad.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{name: {v}}}}}}}}}]}}\n"
                ),
            ),
            (
                "tls secret",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: h}}\nspec:\n  tls: [{{hosts: [bad.example.com], secretName: {v}}}]\n  rules:\n  - host: bad.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n"
                ),
            ),
            (
                "namespace",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: {v}}}\nspec:\n  rules:\n  - host: bad.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n"
                ),
            ),
            (
                "external name",
                format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: h}}\nspec: {{type: ExternalName, externalName: {v}, ports: [{{port: 80}}]}}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: h}}\nspec:\n  rules:\n  - host: bad.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: ext, port: {{number: 80}}}}}}}}]}}\n"
                ),
            ),
        ];
        for (field, yaml) in fields {
            w.write("bad.yaml", &yaml);
            // Give the watcher time to see the change, then check that the
            // good Ingress still routes and that nothing hostile is in the
            // running config.
            tokio::time::sleep(Duration::from_millis(120)).await;
            let a = w
                .eventually("good.example.com", "/", "served", |a| a.who() == "web")
                .await;
            assert_eq!(a.who(), "web", "payload {i} in {field}");
            let config = w.inspect("/config").await.text;
            let structure = wicket::conf_syntax::structure(&config).unwrap_or_else(|e| {
                panic!("payload {i} in {field}: the running config does not parse: {e}\n{config}")
            });
            for s in &structure {
                if let wicket::conf_syntax::Shape::Directive { name, depth, .. } = s {
                    // wicket's own load_module lines come first, at the top.
                    let own_module = name == "load_module" && *depth == 0;
                    assert!(
                        own_module
                            || !["root", "alias", "include", "load_module"]
                                .contains(&name.as_str()),
                        "payload {i} in {field}: directive {name}\n{config}"
                    );
                    // Lua only where wicket's balancer is.
                    assert!(
                        !name.contains("lua")
                            || [
                                "lua_shared_dict",
                                "init_by_lua_block",
                                "init_worker_by_lua_block",
                                "balancer_by_lua_block",
                                "content_by_lua_block"
                            ]
                            .contains(&name.as_str()),
                        "payload {i} in {field}: directive {name}\n{config}"
                    );
                }
            }
            let modules: Vec<&str> = config
                .lines()
                .filter(|l| l.starts_with("load_module"))
                .collect();
            assert_eq!(
                modules,
                [
                    "load_module /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so;",
                    "load_module /usr/lib/nginx/modules/ndk_http_module.so;",
                    "load_module /usr/lib/nginx/modules/ngx_http_set_misc_module.so;",
                    "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;",
                    "load_module /usr/lib/nginx/modules/ngx_http_subs_filter_module.so;",
                ],
                "payload {i} in {field}"
            );
            let bad = w.get("bad.example.com", "/").await;
            assert!(
                bad.status == 404 || bad.status == 503 || bad.who() == "web",
                "payload {i} in {field}: {bad:?}"
            );
            assert_ne!(bad.text, "owned", "payload {i} in {field}");
        }
    }
    assert_eq!(w.admin_get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snippets_are_refused_unless_allowed_and_a_bad_one_is_quarantined() {
    let (_e, svc) = web("s").await;
    let good = ingress(
        "s",
        "good",
        "",
        "good.example.com",
        &[("/", "Prefix", "web", 80)],
    );
    let snippet = |name: &str, host: &str, text: &str| {
        ingress(
            "s",
            name,
            &format!(
                "  annotations:\n    nginx.ingress.kubernetes.io/configuration-snippet: {}\n",
                yaml_str(text)
            ),
            host,
            &[("/", "Prefix", "web", 80)],
        )
    };
    let settings = |allow: bool| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: s}}\ndata: {{allow-snippet-annotations: \"{allow}\"}}\n"
        )
    };
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            ("good.yaml", &good),
            ("settings.yaml", &settings(false)),
            (
                "snip.yaml",
                &snippet("snip", "snip.example.com", "add_header X-Snippet yes;"),
            ),
        ],
        &["--configmap", "s/settings"],
    )
    .await;
    assert_eq!(
        w.get("snip.example.com", "/").await.status,
        404,
        "refused by default"
    );
    assert!(
        w.logs().contains("snippet annotations are refused"),
        "{}",
        w.logs()
    );

    // Allowed: the snippet is in.
    w.write("settings.yaml", &settings(true));
    let a = w
        .eventually("snip.example.com", "/", "served with the snippet", |a| {
            a.who() == "web"
        })
        .await;
    assert_eq!(a.headers["x-snippet"], "yes");
    // Snippets written for ingress-nginx use the modules its image had:
    // its documented example (more_set_headers), set-misc, subs_filter.
    w.write(
        "modules.yaml",
        &snippet(
            "modules",
            "modules.example.com",
            "more_set_headers \"Request-Id: $req_id\";\nset_escape_uri $escaped \"a b\";\nmore_set_headers \"X-Escaped: $escaped\";\nsubs_filter_types application/json;\nsubs_filter \"x-forwarded-scheme\" \"substituted\";",
        ),
    );
    let a = w
        .eventually(
            "modules.example.com",
            "/",
            "served with the module directives",
            |a| a.who() == "web",
        )
        .await;
    assert_eq!(a.headers["x-escaped"], "a%20b", "{a:?}");
    assert_eq!(a.headers["request-id"].len(), 32, "{a:?}");
    assert!(a.text.contains("substituted"), "{a:?}");

    // A snippet that is whole directives but that nginx refuses: that
    // Ingress is quarantined, the others keep being served and changed.
    w.write(
        "bogus.yaml",
        &snippet("bogus", "bogus.example.com", "bogus_directive on;"),
    );
    let deadline = Instant::now() + PATIENCE;
    while !w.logs().contains("quarantined") {
        assert!(Instant::now() < deadline, "never quarantined\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.get("bogus.example.com", "/").await.status, 404);
    w.write(
        "more.yaml",
        &ingress(
            "s",
            "more",
            "",
            "more.example.com",
            &[("/", "Prefix", "web", 80)],
        ),
    );
    w.eventually("more.example.com", "/", "a later change applied", |a| {
        a.who() == "web"
    })
    .await;
    assert_eq!(
        w.get("snip.example.com", "/").await.headers["x-snippet"],
        "yes"
    );
    assert!(
        // The field the refused line belongs to is named.
        w.logs().contains("rejected ingress s/bogus: quarantined: nginx -t refused the config built with this Ingress (spec.rules[0].http.paths[0]): "),
        "{}",
        w.logs()
    );
    assert_eq!(w.admin_get("/readyz").await.status, 200);

    // Fixed: the quarantine is lifted.
    w.write(
        "bogus.yaml",
        &snippet("bogus", "bogus.example.com", "add_header X-Fixed yes;"),
    );
    let a = w
        .eventually("bogus.example.com", "/", "served once fixed", |a| {
            a.who() == "web"
        })
        .await;
    assert_eq!(a.headers["x-fixed"], "yes");

    // A snippet that would close its block is refused before nginx sees it.
    w.write(
        "escape.yaml",
        &snippet(
            "escape",
            "escape.example.com",
            "} server { listen 9999; location / { return 200 owned; }",
        ),
    );
    let deadline = Instant::now() + PATIENCE;
    while !w.logs().contains("rejected ingress s/escape") {
        assert!(Instant::now() < deadline, "never rejected\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!w.inspect("/config").await.text.contains("9999"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_names_are_resolved_by_wicket_and_one_that_does_not_resolve_answers_503() {
    let (e, svc) = web("x").await;
    let good = ingress(
        "x",
        "good",
        "",
        "good.example.com",
        &[("/", "Prefix", "web", 80)],
    );
    let port = e.addr.port();
    let ext = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: x}}\nspec: {{type: ExternalName, externalName: no-such-host.invalid, ports: [{{port: 80}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: local, namespace: x}}\nspec: {{type: ExternalName, externalName: localhost, ports: [{{port: {port}}}]}}\n"
    );
    let bad = ingress(
        "x",
        "bad",
        "",
        "bad.example.com",
        &[("/", "Prefix", "ext", 80)],
    );
    let local = ingress(
        "x",
        "local",
        "",
        "local.example.com",
        &[("/", "Prefix", "local", port)],
    );
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        ("good.yaml", &good),
        ("ext.yaml", &ext),
        ("bad.yaml", &bad),
        ("local.yaml", &local),
    ])
    .await;
    assert_eq!(w.get("good.example.com", "/").await.who(), "web");
    // Not quarantined: the name does not resolve, so its backend answers
    // 503, and nginx -t never looked it up.
    assert_eq!(w.get("bad.example.com", "/").await.status, 503);
    assert_eq!(w.get("local.example.com", "/").await.who(), "web");
    let logs = w.logs();
    assert!(!logs.contains("quarantined"), "{logs}");
    assert!(
        logs.contains("externalName no-such-host.invalid does not resolve"),
        "{logs}"
    );
    let config = w.inspect("/config").await.text;
    assert!(!config.contains("server no-such-host"), "{config}");
    assert!(
        config.contains(&format!("server 127.0.0.1:{port};")),
        "{config}"
    );
}

/// Neither an ExternalName Service nor an EndpointSlice can point nginx at
/// wicket's own ports: the admin endpoint (which nginx would reach from
/// 127.0.0.1), or nginx's own listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_reaches_wickets_own_ports() {
    let (_e, svc) = web("o").await;
    let good = ingress("o", "good", "", "good.test", &[("/", "Prefix", "web", 80)]);
    // The ports are chosen when wicket starts: write the hostile objects
    // after, with its admin and HTTP ports.
    let w = Wicket::start(&[("svc.yaml", &svc), ("good.yaml", &good)]).await;
    let mut hostile = String::new();
    for (name, target) in [
        ("byname", "localhost"),
        ("byip", "127.0.0.1"),
        ("any", "0.0.0.0"),
    ] {
        hostile.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: o}}\nspec: {{type: ExternalName, externalName: \"{target}\", ports: [{{port: {}}}]}}\n---\n",
            w.admin
        ));
    }
    hostile.push_str(&service(
        "o",
        "slice",
        w.admin,
        None,
        w.admin,
        &[(IpAddr::V4(LO), true)],
    ));
    hostile.push_str("---\n");
    hostile.push_str(&service(
        "o",
        "loop",
        w.http,
        None,
        w.http,
        &[(IpAddr::V4(LO), true)],
    ));
    hostile.push_str("---\n");
    let paths: Vec<(String, &str, &str, u16)> = [
        ("byname", w.admin),
        ("byip", w.admin),
        ("any", w.admin),
        ("slice", w.admin),
        ("loop", w.http),
    ]
    .iter()
    .map(|(n, p)| (format!("/{n}"), "Prefix", *n, *p))
    .collect();
    let paths: Vec<(&str, &str, &str, u16)> = paths
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), *b, *c, *d))
        .collect();
    hostile.push_str(&ingress("o", "peek", "", "peek.test", &paths));
    w.write("hostile.yaml", &hostile);
    w.eventually("peek.test", "/byname/config", "answered 503", |a| {
        a.status == 503
    })
    .await;
    for n in ["byname", "byip", "any", "slice", "loop"] {
        for page in ["config", "model", "metrics", "readyz"] {
            let a = w.get("peek.test", &format!("/{n}/{page}")).await;
            assert_eq!(a.status, 503, "/{n}/{page}: {a:?}");
            assert!(!a.text.contains("server_name"), "{a:?}");
        }
    }
    assert_eq!(w.get("good.test", "/").await.who(), "web");
    let logs = w.logs();
    assert!(
        logs.contains(&format!("127.0.0.1:{} is wicket's own admin port", w.admin)),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("127.0.0.1:{} is wicket's own HTTP port", w.http)),
        "{logs}"
    );
}

/// Requests to unchanged hosts never fail while Ingresses are added,
/// annotations changed, endpoints churn and a certificate rotates; a
/// WebSocket stays open across the reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failed_request_and_no_dropped_websocket_across_reloads() {
    let (_e, svc) = web("r").await;
    let churn = Echo::start("churn", LO, 0).await;
    // Certificates from one CA, so the client trusts every rotation.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf = || {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["tls.example.com".to_string()]).unwrap();
        (
            params.signed_by(&key, &ca).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (cert, key) = leaf();
    let tls = |c: &str, k: &str| tls_secret("r", "tls", c, k);
    let tls_ing = ingress(
        "r",
        "tls",
        "",
        "tls.example.com",
        &[("/", "Prefix", "web", 80)],
    )
    .replace(
        "spec:\n",
        "spec:\n  tls: [{hosts: [tls.example.com], secretName: tls}]\n",
    );
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        (
            "stable.yaml",
            &ingress(
                "r",
                "stable",
                "",
                "stable.example.com",
                &[("/", "Prefix", "web", 80)],
            ),
        ),
        ("secret.yaml", &tls(&cert, &key)),
        ("tls.yaml", &tls_ing),
    ])
    .await;

    // A WebSocket opened before the changes.
    let mut ws = tokio::net::TcpStream::connect(("127.0.0.1", w.http))
        .await
        .unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: stable.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut ws).await.starts_with("HTTP/1.1 101"));

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed, retried) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut loads = Vec::new();
    for (url, c) in [
        (w.url("stable.example.com", "/"), client()),
        (
            w.https_url("tls.example.com", "/"),
            tls_client(&[&ca.pem()]),
        ),
    ] {
        let (stop, sent, failed, retried) =
            (stop.clone(), sent.clone(), failed.clone(), retried.clone());
        loads.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (answer, again) = fetch_idempotent(&c, &url).await;
                if again {
                    retried.fetch_add(1, Ordering::Relaxed);
                }
                match answer {
                    Ok(a) if a.who() == "web" => {}
                    other => {
                        eprintln!("failed request to {url}: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    for round in 0..12 {
        match round % 4 {
            0 => w.write(
                &format!("new{round}.yaml"),
                &ingress(
                    "r",
                    &format!("new{round}"),
                    "",
                    &format!("new{round}.example.com"),
                    &[("/", "Prefix", "web", 80)],
                ),
            ),
            1 => w.write(
                "stable-extra.yaml",
                &ingress(
                    "r",
                    "extra",
                    &format!(
                        "  annotations: {{nginx.ingress.kubernetes.io/rewrite-target: /r{round}}}\n"
                    ),
                    "extra.example.com",
                    &[("/", "Prefix", "web", 80)],
                ),
            ),
            2 => w.write(
                "churn.yaml",
                &service(
                    "r",
                    "churn",
                    80,
                    None,
                    churn.addr.port(),
                    &[(IpAddr::V4(LO), round % 8 == 2)],
                ),
            ),
            _ => {
                // Rotated as tools do it, by replacing the file whole: an
                // in-place write could be read half-written, and a Secret
                // whose certificate is cut short gets the default one.
                let (c, k) = leaf();
                w.replace("secret.yaml", &tls(&c, &k));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The WebSocket still echoes.
        let msg = format!("round {round}");
        ws.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    let (sent, failed, retried) = (
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed),
    );
    eprintln!(
        "{sent} requests, {retried} retried once on a keep-alive connection closed by a reload, {failed} failed"
    );
    assert!(sent > 200, "{sent}");
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} requests failed\n{}",
        w.logs()
    );
    assert!(retried * 100 <= sent, "{retried} retries of {sent}");
    assert!(
        w.logs().matches("reloaded nginx").count() >= 6,
        "{}",
        w.logs()
    );
}

/// Idle connections to the admin port (which the Helm chart opens to the
/// cluster for probes and Prometheus) cannot exhaust wicket: a client gets
/// a few at most, each closed when its headers do not come, and with a
/// small file limit the config is still written and applied and the
/// probes still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_exhaust_the_admin_endpoint() {
    let (_e, svc) = web("idle").await;
    let w = Wicket::start_limited(&[("svc.yaml", &svc)], &[], Some(256)).await;
    // 300 connections from 127.0.0.2 that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..300 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(
            sock.connect(format!("127.0.0.1:{}", w.admin).parse().unwrap())
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The probes answer, from another address, at once.
    let started = Instant::now();
    assert_eq!(w.admin_get("/readyz").await.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A change is written, checked and served.
    w.write(
        "new.yaml",
        &ingress("idle", "new", "", "new.test", &[("/", "Prefix", "web", 80)]),
    );
    w.eventually("new.test", "/", "served", |a| a.who() == "web")
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut open = idle.len();
    while open > 0 && Instant::now() < deadline {
        open = 0;
        for c in &mut idle {
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(1), c.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                _ => open += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past the cap for one address they were closed at once; the others
    // when their headers were late.
    assert_eq!(open, 0, "idle connections still open");
    assert!(!w.logs().contains("Too many open files"), "{}", w.logs());
    assert_eq!(w.admin_get("/readyz").await.status, 200);
}
