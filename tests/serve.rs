//! End to end: `wicket serve` with the real nginx on loopback, echo backends
//! written here, and assertions made by sending real HTTP requests.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn lo() -> IpAddr {
    IpAddr::V4(LO)
}

/// Services, each backed by one echo backend on 127.0.0.1.
async fn backends(ns: &str, names: &[&str]) -> (Vec<Echo>, String) {
    let mut echoes = Vec::new();
    let mut yaml = String::new();
    for n in names {
        let e = Echo::start(n, LO, 0).await;
        yaml.push_str(&service(ns, n, 80, None, e.addr.port(), &[(lo(), true)]));
        yaml.push_str("---\n");
        echoes.push(e);
    }
    (echoes, yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_wildcards_match_as_the_ingress_api_says() {
    let (_b, svcs) = backends("shop", &["web", "wild"]).await;
    let w = Wicket::start(&[
        ("svc.yaml", &svcs),
        (
            "a.yaml",
            &ingress(
                "shop",
                "a",
                "",
                "shop.example.com",
                &[("/", "Prefix", "web", 80)],
            ),
        ),
        (
            "b.yaml",
            &ingress("shop", "b", "", "*.foo.com", &[("/", "Prefix", "wild", 80)]),
        ),
    ])
    .await;
    for (host, want) in [
        ("shop.example.com", "web"),
        ("SHOP.Example.com", "web"),
        ("bar.foo.com", "wild"),
        ("x-1.foo.com", "wild"),
        ("baz.bar.foo.com", "status 404"),
        ("foo.com", "status 404"),
        ("unknown.example.com", "status 404"),
        ("127.0.0.1", "status 404"),
    ] {
        assert_eq!(w.get(host, "/some/path").await.who(), want, "host {host}");
    }
    // nginx listens on all addresses, IPv6 included.
    let a = fetch(&w.client, &format!("http://[::1]:{}/", w.http))
        .await
        .unwrap();
    assert_eq!(a.who(), "status 404");
    let v6 = reqwest::Client::builder()
        .resolve(
            "shop.example.com",
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, w.http)),
        )
        .no_proxy()
        .build()
        .unwrap();
    assert_eq!(
        fetch(&v6, &w.url("shop.example.com", "/"))
            .await
            .unwrap()
            .who(),
        "web"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_types_longest_match_and_never_a_redirect() {
    let (_b, svcs) = backends(
        "p",
        &[
            "exact",
            "foo",
            "foobar",
            "dir",
            "both-exact",
            "both-prefix",
            "root-exact",
            "slash-exact",
            "slash-prefix",
        ],
    )
    .await;
    let ing = ingress(
        "p",
        "paths",
        "",
        "p.example.com",
        &[
            ("/exact", "Exact", "exact", 80),
            ("/foo", "Prefix", "foo", 80),
            ("/foo/bar", "Prefix", "foobar", 80),
            ("/aaa/bbb/", "Prefix", "dir", 80),
            ("/both", "Exact", "both-exact", 80),
            ("/both", "Prefix", "both-prefix", 80),
            ("/", "Exact", "root-exact", 80),
            ("/impl", "ImplementationSpecific", "foo", 80),
            // An Exact path ending in `/`: nginx would answer the path
            // without it with a 301 for an exact location that proxies.
            ("/ends/", "Exact", "slash-exact", 80),
            ("/dir/sub/", "Exact", "slash-exact", 80),
            ("/dir", "Prefix", "slash-prefix", 80),
        ],
    );
    let w = Wicket::start(&[("svc.yaml", &svcs), ("ing.yaml", &ing)]).await;
    for (path, want) in [
        ("/exact", "exact"),
        ("/exact?q=1", "exact"),
        ("/exact/", "status 404"),
        ("/exactly", "status 404"),
        ("/Exact", "status 404"),
        ("/foo", "foo"),
        ("/foo/", "foo"),
        ("/foo/x", "foo"),
        ("/foo?x=/bar", "foo"),
        ("/foobar", "status 404"),
        ("/foo/bar", "foobar"),
        ("/foo/bar/", "foobar"),
        ("/foo/bar/baz", "foobar"),
        ("/foo/barx", "foo"),
        ("/foo//bar", "foobar"),
        ("/foo/%62ar", "foobar"),
        ("/aaa/bbb", "dir"),
        ("/aaa/bbb/", "dir"),
        ("/aaa/bbb/c", "dir"),
        ("/aaa/bbbb", "status 404"),
        ("/aaa", "status 404"),
        ("/both", "both-exact"),
        ("/both/", "both-prefix"),
        ("/both/x", "both-prefix"),
        ("/", "root-exact"),
        ("/impl/x", "foo"),
        ("/implx", "status 404"),
        ("/nothing", "status 404"),
        ("/nothing/", "status 404"),
        ("/ends/", "slash-exact"),
        ("/ends", "status 404"),
        ("/ends/x", "status 404"),
        ("/dir/sub/", "slash-exact"),
        ("/dir/sub", "slash-prefix"),
        ("/dir/sub/x", "slash-prefix"),
        ("/dir/", "slash-prefix"),
    ] {
        let a = w.get("p.example.com", path).await;
        assert_eq!(a.who(), want, "path {path}: {a:?}");
        assert!(
            a.headers.get("location").is_none(),
            "path {path} redirected: {a:?}"
        );
    }
}

/// ingress-nginx's path-matching guide: Prefix `/foo/bar` and `/foo/bar/`
/// on one host are both served; the longer as written takes `/foo/bar/`
/// and below, the other `/foo/bar` itself. Across Ingresses too, and in
/// regex mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_twins_split_by_the_trailing_slash() {
    let (_b, svcs) = backends("t", &["service1", "service2", "other"]).await;
    let twins = &[
        ("/foo/bar", "Prefix", "service1", 80),
        ("/foo/bar/", "Prefix", "service2", 80),
    ];
    let plain = ingress("t", "plain", "", "twins.example.com", twins);
    // On a host that another Ingress puts in regex mode, the twins'
    // locations become regular expressions, with the same split.
    let regex = ingress("t", "regex", "", "regex.example.com", twins);
    let regex_mode = ingress(
        "t",
        "regex-mode",
        "  annotations: {nginx.ingress.kubernetes.io/use-regex: \"true\"}\n",
        "regex.example.com",
        &[("/z[0-9]+", "ImplementationSpecific", "other", 80)],
    );
    // Twins in two Ingresses: neither is a conflict of the other.
    let first = ingress(
        "t",
        "first",
        "",
        "apart.example.com",
        &[("/foo/bar/", "Prefix", "service2", 80)],
    );
    let second = ingress(
        "t",
        "second",
        "",
        "apart.example.com",
        &[
            ("/foo/bar", "Prefix", "service1", 80),
            ("/", "Prefix", "other", 80),
        ],
    );
    let w = Wicket::start(&[
        ("svc.yaml", &svcs),
        ("plain.yaml", &plain),
        ("regex.yaml", &regex),
        ("regex-mode.yaml", &regex_mode),
        ("first.yaml", &first),
        ("second.yaml", &second),
    ])
    .await;
    for host in [
        "twins.example.com",
        "regex.example.com",
        "apart.example.com",
    ] {
        let miss = if host == "apart.example.com" {
            "other"
        } else {
            "status 404"
        };
        for (path, want) in [
            ("/foo/bar", "service1"),
            ("/foo/bar?x=/", "service1"),
            ("/foo/bar/", "service2"),
            ("/foo/bar/x", "service2"),
            ("/foo/bar/x/", "service2"),
            ("/foo/barx", miss),
            ("/foo", miss),
            (
                "/z12",
                if host == "regex.example.com" {
                    "other"
                } else {
                    miss
                },
            ),
        ] {
            let a = w.get(host, path).await;
            assert_eq!(a.who(), want, "{host}{path}: {a:?}");
            assert!(
                a.headers.get("location").is_none(),
                "{host}{path} redirected: {a:?}"
            );
        }
    }
    let logs = w.logs();
    assert!(!logs.contains("not served"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backends_503_and_404() {
    let (_b, svcs) = backends("site", &["app", "fallback", "catchall"]).await;
    let down = service("site", "down", 80, None, 9, &[(lo(), false)]);
    let mut site = ingress(
        "site",
        "site",
        "",
        "site.example.com",
        &[
            ("/app", "Prefix", "app", 80),
            ("/down", "Prefix", "down", 80),
            ("/missing", "Prefix", "nosuchservice", 80),
            ("/badport", "Prefix", "app", 81),
        ],
    );
    site = site.replace(
        "spec:\n",
        "spec:\n  defaultBackend: {service: {name: fallback, port: {number: 80}}}\n",
    );
    let w = Wicket::start(&[
        ("svc.yaml", &svcs),
        ("down.yaml", &down),
        ("site.yaml", &site),
    ])
    .await;
    for (host, path, want) in [
        ("site.example.com", "/app/x", "app"),
        ("site.example.com", "/other", "fallback"),
        ("site.example.com", "/", "fallback"),
        ("site.example.com", "/down", "status 503"),
        ("site.example.com", "/missing/y", "status 503"),
        ("site.example.com", "/badport", "status 503"),
        // The site's default backend is for its own host only.
        ("elsewhere.example.com", "/", "status 404"),
    ] {
        assert_eq!(w.get(host, path).await.who(), want, "{host}{path}");
    }
    // An Ingress with nothing but a default backend catches every other host.
    w.write(
        "catchall.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: catchall, namespace: site}\nspec:\n  defaultBackend: {service: {name: catchall, port: {number: 80}}}\n",
    );
    w.eventually(
        "elsewhere.example.com",
        "/x",
        "served by the catch-all",
        |a| a.who() == "catchall",
    )
    .await;
    assert_eq!(w.get("site.example.com", "/other").await.who(), "fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_classes_select_what_is_served() {
    let (_b, svcs) = backends("c", &["web"]).await;
    let class = |name: &str, spec_class: &str| {
        ingress(
            "c",
            name,
            "",
            &format!("{name}.example.com"),
            &[("/", "Prefix", "web", 80)],
        )
        .replace("spec:\n", &format!("spec:\n{spec_class}"))
    };
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svcs),
            ("ours.yaml", &class("ours", "  ingressClassName: wicket\n")),
            (
                "theirs.yaml",
                &class("theirs", "  ingressClassName: nginx\n"),
            ),
            ("none.yaml", &class("none", "")),
            // Two more classes: one of our controller, one of another.
            (
                "classes.yaml",
                "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: nginx-example}\nspec: {controller: wicket.dev/ingress-controller}\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: nginx}\nspec: {controller: k8s.io/ingress-nginx}\n",
            ),
            (
                "second.yaml",
                &class("second", "  ingressClassName: nginx-example\n"),
            ),
            ("ghost.yaml", &class("ghost", "  ingressClassName: ghost\n")),
            (
                "legacy.yaml",
                &class("legacy", "").replace(
                    "metadata:\n",
                    "metadata:\n  annotations: {kubernetes.io/ingress.class: wicket}\n",
                ),
            ),
        ],
        &["--watch-ingress-without-class=false"],
    )
    .await;
    for (host, want) in [
        // No IngressClass named wicket: served by name (serve's default).
        ("ours.example.com", "web"),
        ("second.example.com", "web"),
        ("legacy.example.com", "web"),
        ("theirs.example.com", "status 404"),
        ("ghost.example.com", "status 404"),
        ("none.example.com", "status 404"),
    ] {
        assert_eq!(w.get(host, "/").await.who(), want, "{host}");
    }
    // Marking our IngressClass as the default takes class-less Ingresses in.
    w.write(
        "class.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: wicket\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: wicket.dev/ingress-controller}\n",
    );
    w.eventually(
        "none.example.com",
        "/",
        "served once the class is default",
        |a| a.who() == "web",
    )
    .await;
    // An IngressClass of our name that another controller owns: not ours.
    w.write(
        "class.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: wicket}\nspec: {controller: example.com/other}\n",
    );
    w.eventually("ours.example.com", "/", "dropped", |a| a.status == 404)
        .await;
    assert_eq!(w.get("second.example.com", "/").await.who(), "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_chosen_by_sni_and_verified_against_the_secret() {
    let (_b, svcs) = backends("tls", &["web"]).await;
    let (cert, key) = cert_for(&["secure.example.com"]);
    let ing = ingress(
        "tls",
        "secure",
        "",
        "secure.example.com",
        &[("/", "Prefix", "web", 80)],
    )
    .replace(
        "spec:\n",
        "spec:\n  tls:\n  - hosts: [secure.example.com]\n    secretName: secure-tls\n",
    );
    let plain = ingress(
        "tls",
        "plain",
        "",
        "plain.example.com",
        &[("/", "Prefix", "web", 80)],
    );
    let w = Wicket::start(&[
        ("svc.yaml", &svcs),
        ("secret.yaml", &tls_secret("tls", "secure-tls", &cert, &key)),
        ("ing.yaml", &ing),
        ("plain.yaml", &plain),
    ])
    .await;

    let trusting = tls_client(&[&cert]);
    let a = fetch(&trusting, &w.https_url("secure.example.com", "/x"))
        .await
        .unwrap();
    assert_eq!(a.who(), "web");
    assert_eq!(a.version, reqwest::Version::HTTP_2, "HTTP/2 on TLS");
    let echo = a.echo().unwrap();
    assert_eq!(echo["version"], "HTTP/1.1", "the upstream sees HTTP/1.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    // Another host gets the default certificate, which this client refuses.
    let e = fetch(&trusting, &w.https_url("plain.example.com", "/"))
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").contains("InvalidCertificate(UnknownIssuer)"),
        "{e:?}"
    );
    // ... and so does a host no rule names.
    assert!(
        fetch(&trusting, &w.https_url("nobody.example.com", "/"))
            .await
            .is_err()
    );

    // HTTPS answers of a TLS host carry HSTS, ingress-nginx's default;
    // those of a host without TLS do not.
    assert_eq!(
        a.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    // Plain HTTP to the TLS host is redirected to HTTPS with 308, path and
    // query kept (ingress-nginx drops one trailing slash).
    for (path, location) in [
        ("/x?a=1", "https://secure.example.com/x?a=1"),
        ("/dir/", "https://secure.example.com/dir"),
        ("/", "https://secure.example.com"),
    ] {
        let r = w.get("secure.example.com", path).await;
        assert_eq!(r.status, 308, "{path}");
        assert_eq!(r.headers["location"], location, "{path}");
    }
    // The host without TLS is served on plain HTTP.
    assert_eq!(w.get("plain.example.com", "/").await.who(), "web");

    // A rotated certificate is served after the Secret changes.
    let (cert2, key2) = cert_for(&["secure.example.com"]);
    w.write(
        "secret.yaml",
        &tls_secret("tls", "secure-tls", &cert2, &key2),
    );
    let rotated = tls_client(&[&cert2]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(a) = fetch(&rotated, &w.https_url("secure.example.com", "/")).await {
            assert_eq!(a.who(), "web");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotated certificate never served\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Keys are private to wicket.
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(w.state_dir().join("certs")).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", e.path());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_balanced_over_ready_endpoints_only() {
    let a = Echo::start("lb", Ipv4Addr::new(127, 0, 0, 2), 0).await;
    let port = a.addr.port();
    let b = Echo::start("lb", Ipv4Addr::new(127, 0, 0, 3), port).await;
    let _not_ready = Echo::start("lb", Ipv4Addr::new(127, 0, 0, 4), port).await;
    let svc = service(
        "lb",
        "lb",
        80,
        Some("http"),
        port,
        &[
            (a.addr.ip(), true),
            (b.addr.ip(), true),
            ("127.0.0.4".parse().unwrap(), false),
        ],
    );
    let ing = ingress(
        "lb",
        "lb",
        "",
        "lb.example.com",
        &[("/", "Prefix", "lb", 80)],
    );
    let w = Wicket::start(&[("svc.yaml", &svc), ("ing.yaml", &ing)]).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let echo = w.get("lb.example.com", "/").await.echo().unwrap();
        *seen
            .entry(echo["endpoint"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let endpoints: Vec<&String> = seen.keys().collect();
    assert_eq!(
        endpoints,
        vec![&a.addr.to_string(), &b.addr.to_string()],
        "round robin over both ready endpoints, never the unready one: {seen:?}"
    );
    assert!(seen.values().all(|n| *n >= 5), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_v1beta1_example_routes_as_written() {
    let e = Echo::start("test", LO, 0).await;
    let legacy = r#"apiVersion: extensions/v1beta1
kind: Ingress
metadata:
  name: test-ingress
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  rules:
  - http:
      paths:
      - path: /testpath
        backend:
          serviceName: test
          servicePort: 80
"#;
    let svc = service("default", "test", 80, None, e.addr.port(), &[(lo(), true)]);
    let w = Wicket::start(&[("legacy.yaml", legacy), ("svc.yaml", &svc)]).await;
    for (path, upstream_path) in [
        ("/testpath", "/"),
        ("/testpath/foo", "/"),
        ("/TestPath?x=1", "/?x=1"),
    ] {
        let a = w.get("any.example.com", path).await;
        assert_eq!(a.who(), "test", "{path}");
        assert_eq!(a.echo().unwrap()["path"], upstream_path, "{path}");
    }
    assert_eq!(w.get("any.example.com", "/other").await.who(), "status 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_target_uses_capture_groups() {
    let (_b, svcs) = backends("rw", &["app"]).await;
    let meta = "  annotations:\n    nginx.ingress.kubernetes.io/rewrite-target: /$2\n";
    let ing = ingress(
        "rw",
        "rw",
        meta,
        "rw.example.com",
        &[("/something(/|$)(.*)", "ImplementationSpecific", "app", 80)],
    );
    let w = Wicket::start(&[("svc.yaml", &svcs), ("ing.yaml", &ing)]).await;
    for (path, upstream) in [
        ("/something", "/"),
        ("/something/", "/"),
        ("/something/new", "/new"),
        ("/SOMETHING/new/x", "/new/x"),
        ("/something/new?a=1&b=2", "/new?a=1&b=2"),
    ] {
        let a = w.get("rw.example.com", path).await;
        assert_eq!(a.who(), "app", "{path}");
        assert_eq!(a.echo().unwrap()["path"], upstream, "{path}");
    }
    assert_eq!(
        w.get("rw.example.com", "/somethingelse").await.who(),
        "status 404"
    );
    assert_eq!(w.get("rw.example.com", "/other").await.who(), "status 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_http11_the_host_and_forwarded_headers() {
    let (_b, svcs) = backends("h", &["web"]).await;
    let ing = ingress("h", "h", "", "h.example.com", &[("/", "Prefix", "web", 80)]);
    let w = Wicket::start(&[("svc.yaml", &svcs), ("ing.yaml", &ing)]).await;

    let r = w
        .client
        .post(w.url("h.example.com", "/form?a=b"))
        .header("x-custom", "kept as is")
        .header("x-request-id", "client-chosen-id")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-echo-response"],
        "kept",
        "response headers pass through"
    );
    let echo: serde_json::Value = r.json().await.unwrap();
    let h = &echo["headers"];
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/form?a=b");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(h["host"], format!("h.example.com:{}", w.http));
    assert_eq!(h["x-custom"], "kept as is");
    assert_eq!(h["x-request-id"], "client-chosen-id");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("h.example.com:{}", w.http));
    assert_eq!(h["x-forwarded-port"], w.http.to_string());
    assert!(h.get("proxy").is_none());

    // Without a client ID, nginx makes one.
    let echo = w.get("h.example.com", "/").await.echo().unwrap();
    let id = echo["headers"]["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

    // Keepalive to the upstream: several requests share a connection, so the
    // upstream never sees `Connection: close`.
    assert!(echo["headers"].get("connection").is_none(), "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_proxied() {
    let (_b, svcs) = backends("ws", &["web"]).await;
    let ing = ingress(
        "ws",
        "ws",
        "",
        "ws.example.com",
        &[("/", "Prefix", "web", 80)],
    );
    let w = Wicket::start(&[("svc.yaml", &svcs), ("ing.yaml", &ing)]).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", w.http))
        .await
        .unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [&b"hello"[..], b"across the proxy"] {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_edited_renamed_broken_and_deleted_while_serving() {
    let (_b, svcs) = backends("f", &["one", "two"]).await;
    let w = Wicket::start(&[
        ("svc.yaml", &svcs),
        (
            "a.yaml",
            &ingress("f", "a", "", "a.example.com", &[("/", "Prefix", "one", 80)]),
        ),
    ])
    .await;
    assert_eq!(w.get("a.example.com", "/").await.who(), "one");

    // Reading a file is not a change: while nothing is written nothing is
    // read again (wicket's own reads once fed a loop that never ended).
    const REREAD: &str = "re-reading a manifest file";
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        w.logs().matches(REREAD).count(),
        0,
        "files re-read with no change\n{}",
        w.logs()
    );

    // Edited in place.
    w.write(
        "a.yaml",
        &ingress("f", "a", "", "a.example.com", &[("/", "Prefix", "two", 80)]),
    );
    w.eventually("a.example.com", "/", "switched to two", |a| {
        a.who() == "two"
    })
    .await;
    assert!(w.logs().contains(REREAD), "{}", w.logs());

    // Renamed: still served, from the new name.
    std::fs::rename(w.path("a.yaml"), w.path("b.yml")).unwrap();
    std::fs::rename(w.path("svc.yaml"), w.path("svc.json.tmp")).unwrap();
    w.eventually("a.example.com", "/", "503 without its services", |a| {
        a.status == 503
    })
    .await;
    std::fs::rename(w.path("svc.json.tmp"), w.path("svc.yaml")).unwrap();
    w.eventually("a.example.com", "/", "served again", |a| a.who() == "two")
        .await;

    // Broken (half-written): the last good objects keep serving.
    w.write(
        "b.yml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a, namespace: f\n",
    );
    let deadline = Instant::now() + PATIENCE;
    while !w.logs().contains("b.yml: not valid YAML") {
        assert!(
            Instant::now() < deadline,
            "the broken file was never reported\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(w.get("a.example.com", "/").await.who(), "two");
    assert_eq!(w.admin_get("/readyz").await.status, 200);

    // Fixed, with another host.
    w.write(
        "b.yml",
        &ingress("f", "a", "", "b.example.com", &[("/", "Prefix", "one", 80)]),
    );
    w.eventually("b.example.com", "/", "served", |a| a.who() == "one")
        .await;
    assert_eq!(w.get("a.example.com", "/").await.who(), "status 404");

    // A JSON file works as well as YAML.
    let json = r#"{"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{"name":"j","namespace":"f"},
      "spec":{"rules":[{"host":"j.example.com","http":{"paths":[{"path":"/","pathType":"Prefix",
      "backend":{"service":{"name":"one","port":{"number":80}}}}]}}]}}"#;
    w.write("j.json", json);
    w.eventually("j.example.com", "/", "served from JSON", |a| {
        a.who() == "one"
    })
    .await;

    // Deleted: its objects go.
    std::fs::remove_file(w.path("b.yml")).unwrap();
    w.eventually("b.example.com", "/", "gone", |a| a.status == 404)
        .await;
    assert_eq!(w.get("j.example.com", "/").await.who(), "one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_goes_to_the_oldest_ingress() {
    let (_b, svcs) = backends("cf", &["old", "new"]).await;
    let old = ingress(
        "cf",
        "zz-old",
        "  creationTimestamp: \"2020-01-01T00:00:00Z\"\n",
        "c.example.com",
        &[("/api", "Prefix", "old", 80)],
    );
    let new = ingress(
        "cf",
        "aa-new",
        "  creationTimestamp: \"2024-01-01T00:00:00Z\"\n",
        "c.example.com",
        &[
            ("/api", "Prefix", "new", 80),
            ("/other", "Prefix", "new", 80),
        ],
    );
    let w = Wicket::start(&[("svc.yaml", &svcs), ("old.yaml", &old), ("new.yaml", &new)]).await;
    assert_eq!(w.get("c.example.com", "/api/x").await.who(), "old");
    assert_eq!(
        w.get("c.example.com", "/other").await.who(),
        "new",
        "the rest of the loser is served"
    );
    assert!(
        w.logs().contains("warning ingress cf/aa-new: spec.rules[0].http.paths[0]: the same path for host c.example.com is served by ingress cf/zz-old"),
        "{}",
        w.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_ingress_leaves_the_others_served() {
    let (_b, svcs) = backends("r", &["web"]).await;
    let bad = ingress(
        "r",
        "bad",
        "",
        "bad.example.com",
        &[
            ("/ok", "Prefix", "web", 80),
            ("/x {;}", "Prefix", "web", 80),
        ],
    );
    let good = ingress(
        "r",
        "good",
        "",
        "good.example.com",
        &[("/", "Prefix", "web", 80)],
    );
    let w = Wicket::start(&[
        ("svc.yaml", &svcs),
        ("bad.yaml", &bad),
        ("good.yaml", &good),
    ])
    .await;
    assert_eq!(w.get("good.example.com", "/").await.who(), "web");
    assert_eq!(w.get("bad.example.com", "/ok").await.who(), "status 404");
    assert!(
        w.logs().contains(r#"rejected ingress r/bad: spec.rules[0].http.paths[1].path "/x {;}": a path may only contain URI path characters"#),
        "{}",
        w.logs()
    );
    // The config does not hold the rejected object at all.
    let config = w.inspect("/config").await.text;
    assert!(!config.contains("bad.example.com"), "{config}");
    assert!(config.contains("server_name good.example.com;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_a_dead_nginx_is_restarted() {
    let (_b, svcs) = backends("adm", &["web"]).await;
    let ing = ingress(
        "adm",
        "a",
        "",
        "adm.example.com",
        &[("/", "Prefix", "web", 80)],
    );
    let mut w = Wicket::start(&[("svc.yaml", &svcs), ("ing.yaml", &ing)]).await;
    assert_eq!(w.admin_get("/healthz").await.status, 200);
    assert_eq!(w.admin_get("/readyz").await.status, 200);
    let config = w.inspect("/config").await;
    assert_eq!(config.status, 200);
    assert!(
        config.text.contains("server_name adm.example.com;"),
        "{}",
        config.text
    );
    assert_eq!(
        config.text,
        std::fs::read_to_string(w.state_dir().join("nginx.conf")).unwrap()
    );

    // Kill the nginx master outright: wicket starts it again.
    let pid = w.nginx_pid().expect("nginx.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if w.nginx_pid().is_some_and(|p| p != pid)
            && w.get("adm.example.com", "/").await.who() == "web"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx never came back\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ready again once wicket has seen the new nginx answer with its
    // generation (which may come a moment after the first request does).
    let deadline = Instant::now() + PATIENCE;
    while w.admin_get("/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "never ready again\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: nginx stops gracefully and wicket exits 0.
    let pid = w.nginx_pid().unwrap();
    let status = w.stop();
    assert!(status.success(), "{status}");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        "nginx master {pid} still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_settings_default_backend_and_default_certificate_flags() {
    let (_b, svcs) = backends("d", &["web", "fallback"]).await;
    let (cert, key) = cert_for(&["*.wicket.test"]);
    let settings = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: d}\ndata:\n  proxy-body-size: 1k\n  use-gzip: \"true\"\n";
    let ing = ingress(
        "d",
        "web",
        "",
        "web.example.com",
        &[("/", "Prefix", "web", 80)],
    );
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svcs),
            ("settings.yaml", settings),
            ("cert.yaml", &tls_secret("d", "default-cert", &cert, &key)),
            ("ing.yaml", &ing),
        ],
        &[
            "--configmap",
            "d/settings",
            "--default-backend-service",
            "d/fallback",
            "--default-ssl-certificate",
            "d/default-cert",
        ],
    )
    .await;
    // proxy-body-size: 1k.
    let post = |n: usize| {
        w.client
            .post(w.url("web.example.com", "/upload"))
            .body(vec![b'x'; n])
            .send()
    };
    assert_eq!(post(500).await.unwrap().status(), 200);
    assert_eq!(post(2048).await.unwrap().status(), 413);
    // Hosts no rule names go to the default backend service.
    assert_eq!(w.get("unknown.example.com", "/x").await.who(), "fallback");
    assert_eq!(w.get("web.example.com", "/x").await.who(), "web");
    // The default certificate is the Secret's.
    let a = fetch(&tls_client(&[&cert]), &w.https_url("any.wicket.test", "/"))
        .await
        .unwrap();
    assert_eq!(a.who(), "fallback");
}
