//! ingress-nginx's annotations and global settings, end to end: `wicket
//! serve` with the real nginx and backends written in the tests; every
//! assertion is what a client sees (status, `Location`, headers) or what
//! the backend received.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// An Ingress with one host and `/` to `svc`:80, with these annotations.
fn site(ns: &str, name: &str, host: &str, svc: &str, pairs: &[(&str, &str)]) -> String {
    ingress(
        ns,
        name,
        &annotated(pairs),
        host,
        &[("/", "Prefix", svc, 80)],
    )
}

/// A TLS section for `host` with `secret`, added to an Ingress.
fn with_tls(ing: &str, host: &str, secret: &str) -> String {
    ing.replace(
        "spec:\n",
        &format!("spec:\n  tls:\n  - hosts: [{host}]\n    secretName: {secret}\n"),
    )
}

fn config_map(ns: &str, name: &str, pairs: &[(&str, &str)]) -> String {
    settings(ns, pairs).replace("name: settings", &format!("name: {name}"))
}

async fn web(ns: &str, name: &str) -> (Echo, String) {
    let e = Echo::start(name, LO, 0).await;
    let svc = service(ns, name, 80, None, e.addr.port(), &[(IpAddr::V4(LO), true)]);
    (e, svc)
}

/// A raw HTTP/1.1 request over TCP: the status line and headers, and the
/// body.
async fn raw(port: u16, from: Ipv4Addr, request: &str) -> (String, Vec<u8>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((from, 0).into()).unwrap();
    let mut s = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    (
        String::from_utf8_lossy(&buf[..split]).to_string(),
        buf[split + 4..].to_vec(),
    )
}

/// A GET of `path` on `host`, from the address `from` (127.0.0.x).
async fn get_from(w: &Wicket, from: Ipv4Addr, host: &str, path: &str, extra: &str) -> String {
    raw(
        w.http,
        from,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n"),
    )
    .await
    .0
}

/// Each Ingress (`namespace/name`) has a log line naming it with `why`.
fn assert_told(w: &Wicket, told: &[(&str, &str)]) {
    let logs = w.logs();
    for (name, why) in told {
        assert!(
            logs.lines()
                .any(|l| l.contains(&format!("ingress {name}")) && l.contains(why)),
            "{name}: no reason with {why:?}\n{logs}"
        );
    }
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_rewrites() {
    // With the Lua module, its rewrite handler redirects to HTTPS.
    redirects_and_rewrites_with(&[], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_rewrites_without_the_lua_module() {
    redirects_and_rewrites_with(&["--dynamic-endpoints=false"], false).await;
}

/// The redirects a user sees, with `args` for `wicket serve`; `lua`: the
/// HTTPS redirects are made by the Lua module's rewrite handler (else by
/// `if` blocks).
async fn redirects_and_rewrites_with(args: &[&str], lua: bool) {
    let (_e, svc) = web("r", "web").await;
    let (cert, key) = cert_for(&["tls.test", "off.test", "tls2.test", "www.tls2.test"]);
    let files = [
        ("svc.yaml", svc.clone()),
        ("secret.yaml", tls_secret("r", "tls", &cert, &key)),
        // A TLS host: HTTP is redirected, except ACME challenges.
        (
            "tls.yaml",
            with_tls(
                &ingress(
                    "r",
                    "tls",
                    "",
                    "tls.test",
                    &[
                        ("/", "Prefix", "web", 80),
                        ("/.well-known/acme-challenge", "Prefix", "web", 80),
                    ],
                ),
                "tls.test",
                "tls",
            ),
        ),
        (
            "off.yaml",
            with_tls(
                &site("r", "off", "off.test", "web", &[("ssl-redirect", "false")]),
                "off.test",
                "tls",
            ),
        ),
        (
            "force.yaml",
            site(
                "r",
                "force",
                "force.test",
                "web",
                &[
                    ("force-ssl-redirect", "true"),
                    ("preserve-trailing-slash", "true"),
                    ("use-port-in-redirects", "true"),
                ],
            ),
        ),
        (
            "perm.yaml",
            site(
                "r",
                "perm",
                "perm.test",
                "web",
                &[("permanent-redirect", "https://new.example.com$request_uri")],
            ),
        ),
        (
            "perm-code.yaml",
            site(
                "r",
                "perm-code",
                "perm-code.test",
                "web",
                &[
                    ("permanent-redirect", "https://new.example.com"),
                    ("permanent-redirect-code", "308"),
                ],
            ),
        ),
        (
            "temp.yaml",
            site(
                "r",
                "temp",
                "temp.test",
                "web",
                &[
                    ("temporal-redirect", "https://maintenance.example.com/"),
                    ("temporal-redirect-code", "307"),
                ],
            ),
        ),
        (
            "relative.yaml",
            site(
                "r",
                "relative",
                "relative.test",
                "web",
                &[
                    ("permanent-redirect", "/new-location"),
                    ("relative-redirects", "true"),
                ],
            ),
        ),
        (
            "absolute.yaml",
            site(
                "r",
                "absolute",
                "absolute.test",
                "web",
                &[("permanent-redirect", "/new-location")],
            ),
        ),
        (
            "root.yaml",
            site("r", "root", "root.test", "web", &[("app-root", "/app")]),
        ),
        (
            "www.yaml",
            with_tls(
                &site(
                    "r",
                    "www",
                    "tls2.test",
                    "web",
                    &[("from-to-www-redirect", "true")],
                ),
                "tls2.test",
                "tls",
            ),
        ),
        (
            "prefix.yaml",
            ingress(
                "r",
                "prefix",
                &annotated(&[("rewrite-target", "/$2"), ("x-forwarded-prefix", "/api")]),
                "prefix.test",
                &[("/api(/|$)(.*)", "ImplementationSpecific", "web", 80)],
            ),
        ),
        (
            "logs.yaml",
            site(
                "r",
                "logs",
                "logs.test",
                "web",
                &[
                    ("enable-access-log", "false"),
                    ("enable-rewrite-log", "true"),
                    ("rewrite-target", "/rewritten"),
                ],
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let w = Wicket::start_with(&files, args).await;
    let conf = std::fs::read_to_string(w.state_dir().join("nginx.conf")).unwrap();
    // tls.test's two locations and force.test's one.
    let (by_lua, by_if) = (
        conf.matches("rewrite_by_lua_block { wicket.edge(").count(),
        conf.matches("if ($pass_access_scheme = http) {").count(),
    );
    assert_eq!((by_lua, by_if), if lua { (3, 0) } else { (0, 3) }, "{conf}");
    let loc = |a: &Answer| {
        a.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
    };

    // ssl-redirect by default for TLS hosts, path and query kept, a
    // trailing slash dropped at the end; no-tls-redirect-locations.
    let a = w.get("tls.test", "/x").await;
    assert_eq!(
        (a.status, loc(&a).as_deref()),
        (308, Some("https://tls.test/x"))
    );
    let a = w.get("tls.test", "/dir/").await;
    assert_eq!(
        (a.status, loc(&a).as_deref()),
        (308, Some("https://tls.test/dir"))
    );
    let a = w.get("tls.test", "/x?q=1").await;
    assert_eq!(
        (a.status, loc(&a).as_deref()),
        (308, Some("https://tls.test/x?q=1"))
    );
    // Over HTTPS, served.
    let a = fetch(&tls_client(&[&cert]), &w.https_url("tls.test", "/x"))
        .await
        .unwrap();
    assert_eq!(a.who(), "web");
    assert_eq!(
        w.get("tls.test", "/.well-known/acme-challenge/token")
            .await
            .who(),
        "web"
    );
    assert_eq!(
        w.get("off.test", "/x").await.who(),
        "web",
        "ssl-redirect: false"
    );
    // force-ssl-redirect on a host without TLS, with the trailing slash and
    // the HTTPS port.
    let a = w.get("force.test", "/dir/").await;
    assert_eq!(a.status, 308);
    assert_eq!(
        loc(&a),
        Some(format!("https://force.test:{}/dir/", w.https))
    );

    // permanent-redirect and temporal-redirect, with their codes.
    let a = w.get("perm.test", "/a/b?c=d").await;
    assert_eq!(
        (a.status, loc(&a).as_deref()),
        (301, Some("https://new.example.com/a/b?c=d"))
    );
    let a = w.get("perm-code.test", "/").await;
    assert_eq!(
        (a.status, loc(&a).as_deref()),
        (308, Some("https://new.example.com"))
    );
    let a = w.get("temp.test", "/x").await;
    assert_eq!(
        (a.status, loc(&a).as_deref()),
        (307, Some("https://maintenance.example.com/"))
    );
    // relative-redirects: the Location as written; otherwise absolute.
    let a = w.get("relative.test", "/x").await;
    assert_eq!((a.status, loc(&a).as_deref()), (301, Some("/new-location")));
    let a = w.get("absolute.test", "/x").await;
    assert_eq!(
        loc(&a).as_deref(),
        Some("http://absolute.test/new-location")
    );

    // app-root: only / is redirected.
    let a = w.get("root.test", "/").await;
    assert_eq!(
        (a.status, loc(&a)),
        (302, Some(format!("http://root.test:{}/app", w.http)))
    );
    assert_eq!(w.get("root.test", "/other").await.who(), "web");

    // from-to-www-redirect: www.tls2.test goes to tls2.test, port kept.
    let a = w.get("www.tls2.test", "/foo").await;
    assert_eq!(a.status, 308);
    assert_eq!(loc(&a), Some(format!("http://tls2.test:{}/foo", w.http)));
    let trusting = tls_client(&[&cert]);
    let a = fetch(&trusting, &w.https_url("www.tls2.test", "/foo"))
        .await
        .unwrap();
    assert_eq!(a.status, 308);
    assert_eq!(loc(&a), Some(format!("https://tls2.test:{}/foo", w.https)));

    // x-forwarded-prefix with rewrite-target.
    let a = w.get("prefix.test", "/api/users").await;
    let e = a.echo().unwrap();
    assert_eq!(e["path"], "/users");
    assert_eq!(e["headers"]["x-forwarded-prefix"], "/api");

    // enable-access-log: false leaves no line; enable-rewrite-log logs the
    // rewrite.
    assert_eq!(
        w.get("logs.test", "/only-logs").await.echo().unwrap()["path"],
        "/rewritten"
    );
    assert_eq!(w.get("perm.test", "/logged-path").await.status, 301);
    let deadline = std::time::Instant::now() + PATIENCE;
    while !w.logs().contains("/logged-path") {
        assert!(std::time::Instant::now() < deadline, "{}", w.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = w.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.starts_with("127.0.0.1 - ") && l.contains("GET /only-logs")),
        "an access log line for a location without one: {logs}"
    );
    assert!(logs.contains("rewritten data"), "rewrite_log: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_and_redirect_settings() {
    let (_e, svc) = web("h", "web").await;
    let (cert, key) = cert_for(&["a.test"]);
    let cm = settings(
        "h",
        &[
            ("hsts-max-age", "86400"),
            ("hsts-include-subdomains", "false"),
            ("hsts-preload", "true"),
            ("http-redirect-code", "301"),
        ],
    );
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            ("cm.yaml", &cm),
            ("secret.yaml", &tls_secret("h", "tls", &cert, &key)),
            (
                "a.yaml",
                &with_tls(&site("h", "a", "a.test", "web", &[]), "a.test", "tls"),
            ),
        ],
        &["--configmap", "h/settings"],
    )
    .await;
    let a = fetch(&tls_client(&[&cert]), &w.https_url("a.test", "/"))
        .await
        .unwrap();
    assert_eq!(a.who(), "web");
    assert_eq!(
        a.headers["strict-transport-security"],
        "max-age=86400; preload"
    );
    let a = w.get("a.test", "/x").await;
    assert_eq!(a.status, 301, "http-redirect-code");
    // HSTS off: no header.
    w.write("cm.yaml", &settings("h", &[("hsts", "false")]));
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        // A connection an old worker closes during the reload: not yet.
        if let Ok(a) = fetch(&tls_client(&[&cert]), &w.https_url("a.test", "/")).await
            && a.headers.get("strict-transport-security").is_none()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "HSTS still sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_settings_reach_the_backend() {
    let (_e, svc) = web("p", "web").await;
    // Two endpoints, one of them closed.
    let good = Echo::start("flaky", LO, 0).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().port();
    drop(closed);
    let flaky = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: flaky, namespace: p}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: flaky-a, namespace: p, labels: {{kubernetes.io/service-name: flaky}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: flaky-b, namespace: p, labels: {{kubernetes.io/service-name: flaky}}}}\naddressType: IPv4\nports: [{{name: http, port: {dead}}}]\nendpoints: [{{addresses: [127.0.0.2]}}]\n",
        good.addr.port()
    );
    let tuned = [
        ("proxy-body-size", "1k"),
        ("client-body-buffer-size", "16k"),
        ("proxy-connect-timeout", "3"),
        ("proxy-send-timeout", "4"),
        ("proxy-read-timeout", "1"),
        ("proxy-next-upstream-timeout", "7"),
        ("proxy-request-buffering", "off"),
        ("proxy-buffering", "on"),
        ("proxy-buffer-size", "8k"),
        ("proxy-buffers-number", "8"),
        ("proxy-busy-buffers-size", "16k"),
        ("proxy-max-temp-file-size", "64m"),
        ("proxy-http-version", "1.0"),
        ("proxy-cookie-domain", "backend.internal example.com"),
        ("proxy-cookie-path", "/app/ /"),
        ("proxy-redirect-from", "http://backend.internal/"),
        ("proxy-redirect-to", "https://example.com/"),
        ("connection-proxy-header", "close"),
        ("upstream-vhost", "internal.example.com"),
    ];
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        ("flaky.yaml", &flaky),
        ("plain.yaml", &site("p", "plain", "plain.test", "web", &[])),
        (
            "tuned.yaml",
            &site("p", "tuned", "tuned.test", "web", &tuned),
        ),
        (
            "off.yaml",
            &site(
                "p",
                "off",
                "off.test",
                "flaky",
                &[("proxy-next-upstream", "off")],
            ),
        ),
        (
            "retry.yaml",
            &site(
                "p",
                "retry",
                "retry.test",
                "flaky",
                &[
                    ("proxy-next-upstream", "error timeout"),
                    ("proxy-next-upstream-tries", "2"),
                ],
            ),
        ),
    ])
    .await;
    let post = |host: &str, n: usize| {
        w.client
            .post(w.url(host, "/upload"))
            .body(vec![b'x'; n])
            .send()
    };
    // ingress-nginx's default body limit, 1m; and the annotation's.
    assert_eq!(post("plain.test", 512 << 10).await.unwrap().status(), 200);
    assert_eq!(post("plain.test", 2 << 20).await.unwrap().status(), 413);
    assert_eq!(post("tuned.test", 500).await.unwrap().status(), 200);
    assert_eq!(post("tuned.test", 2048).await.unwrap().status(), 413);
    // proxy-read-timeout: 1 against a backend that takes 3 s.
    assert_eq!(w.get("tuned.test", "/delay/3000").await.status, 504);
    assert_eq!(w.get("plain.test", "/delay/1500").await.who(), "web");
    // What the backend sees.
    let e = w.get("tuned.test", "/x").await.echo().unwrap();
    assert_eq!(e["version"], "HTTP/1.0", "proxy-http-version");
    assert_eq!(e["headers"]["connection"], "close");
    assert_eq!(
        e["headers"]["host"], "internal.example.com",
        "upstream-vhost"
    );
    // The standard headers are still sent from a location with its own.
    assert_eq!(
        e["headers"]["x-forwarded-host"],
        format!("tuned.test:{}", w.http)
    );
    assert_eq!(e["headers"]["x-forwarded-proto"], "http");
    assert!(e["headers"]["x-request-id"].is_string());
    // Cookies and redirects the backend writes are rewritten.
    let a = w.get("tuned.test", "/set-cookie").await;
    assert_eq!(a.headers["set-cookie"], "s=1; Domain=example.com; Path=/");
    let a = w.get("tuned.test", "/location").await;
    assert_eq!(a.headers["location"], "https://example.com/next");
    // The settings nginx applies without a visible effect are in place.
    let config = w.inspect("/config").await.text;
    for line in [
        "client_body_buffer_size 16k;",
        "proxy_connect_timeout 3s;",
        "proxy_send_timeout 4s;",
        "proxy_next_upstream_timeout 7s;",
        "proxy_request_buffering off;",
        "proxy_buffering on;",
        "proxy_buffer_size 8k;",
        "proxy_buffers 8 8k;",
        "proxy_busy_buffers_size 16k;",
        "proxy_max_temp_file_size 64m;",
    ] {
        assert!(
            config.contains(&format!("            {line}")),
            "{line}\n{config}"
        );
    }
    // proxy-next-upstream: off fails on the closed endpoint once per worker
    // (nginx then leaves it out for a while); with retries nothing fails.
    let mut failed = 0;
    for _ in 0..6 {
        if status_of(&get_from(&w, LO, "off.test", "/", "").await) == 502 {
            failed += 1;
        }
    }
    assert!(failed >= 1, "no request failed without retries");
    for _ in 0..6 {
        assert_eq!(
            status_of(&get_from(&w, LO, "retry.test", "/", "").await),
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_aliases_service_upstream_and_default_backends() {
    let (_e, svc) = web("x", "web").await;
    let (_f, fallback) = web("x", "fallback").await;
    let down = service("x", "down", 80, None, 9, &[(IpAddr::V4(LO), false)]);
    // A Service whose endpoints are not ready, but whose cluster IP is.
    let viaip = Echo::start("viaip", LO, 0).await;
    let ip_svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: viaip, namespace: x}}\nspec:\n  clusterIP: 127.0.0.1\n  ports: [{{port: {}}}]\n",
        viaip.addr.port()
    );
    let cm = settings(
        "x",
        &[(
            "global-allowed-response-headers",
            "X-Frame-Options,X-Literal",
        )],
    );
    let headers = config_map(
        "x",
        "extra",
        &[
            ("X-Frame-Options", "DENY"),
            ("X-Literal", "a $remote_addr b"),
        ],
    );
    let forbidden = config_map("x", "forbidden", &[("Set-Cookie", "owned=1")]);
    let (_y, svc_y) = web("y", "web").await;
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            ("svc-y.yaml", &svc_y),
            ("fallback.yaml", &fallback),
            ("down.yaml", &down),
            ("viaip.yaml", &ip_svc),
            ("cm.yaml", &cm),
            ("headers.yaml", &headers),
            ("forbidden.yaml", &forbidden),
            (
                "h.yaml",
                &site("x", "h", "h.test", "web", &[("custom-headers", "extra")]),
            ),
            (
                "missing.yaml",
                &site(
                    "x",
                    "missing",
                    "missing.test",
                    "web",
                    &[("custom-headers", "nope")],
                ),
            ),
            (
                "denied.yaml",
                &site(
                    "x",
                    "denied",
                    "denied.test",
                    "web",
                    &[("custom-headers", "forbidden")],
                ),
            ),
            (
                "cross.yaml",
                &site(
                    "y",
                    "cross",
                    "cross.test",
                    "web",
                    &[("custom-headers", "x/extra")],
                ),
            ),
            (
                "alias.yaml",
                &site(
                    "x",
                    "alias",
                    "main.test",
                    "web",
                    &[("server-alias", "alias.test, *.wild.test")],
                ),
            ),
            (
                "ip.yaml",
                &ingress(
                    "x",
                    "ip",
                    &annotated(&[("service-upstream", "true")]),
                    "ip.test",
                    &[("/", "Prefix", "viaip", viaip.addr.port())],
                ),
            ),
            (
                "db.yaml",
                &ingress(
                    "x",
                    "db",
                    &annotated(&[("default-backend", "fallback")]),
                    "db.test",
                    &[("/", "Prefix", "down", 80)],
                ),
            ),
            (
                "errors.yaml",
                &site(
                    "x",
                    "errors",
                    "errors.test",
                    "web",
                    &[
                        ("custom-http-errors", "404,418"),
                        ("default-backend", "fallback"),
                    ],
                ),
            ),
            (
                "through.yaml",
                &site(
                    "x",
                    "through",
                    "through.test",
                    "web",
                    &[
                        ("custom-http-errors", "404"),
                        ("default-backend", "fallback"),
                        ("disable-proxy-intercept-errors", "true"),
                    ],
                ),
            ),
        ],
        &["--configmap", "x/settings"],
    )
    .await;
    // custom-headers: response headers, literal (the $ is not expanded).
    let a = w.get("h.test", "/").await;
    assert_eq!(a.who(), "web");
    assert_eq!(a.headers["x-frame-options"], "DENY");
    assert_eq!(a.headers["x-literal"], "a $remote_addr b");
    // A missing ConfigMap, or a header not allowed globally: 503, as
    // ingress-nginx answered; another namespace needs
    // allow-cross-namespace-resources.
    assert_eq!(w.get("missing.test", "/").await.status, 503);
    assert_eq!(w.get("denied.test", "/").await.status, 503);
    assert_eq!(w.get("cross.test", "/").await.status, 503);
    let logs = w.logs();
    assert!(
        logs.contains("configmap x/nope not found; its locations answer 503"),
        "{logs}"
    );
    assert!(
        logs.contains(
            "header Set-Cookie is not in the global setting global-allowed-response-headers"
        ),
        "{logs}"
    );
    assert!(
        logs.contains(
            "x/extra is in another namespace, and allow-cross-namespace-resources is not"
        ),
        "{logs}"
    );
    w.write(
        "cm.yaml",
        &settings(
            "x",
            &[
                (
                    "global-allowed-response-headers",
                    "X-Frame-Options,X-Literal",
                ),
                ("allow-cross-namespace-resources", "true"),
            ],
        ),
    );
    w.eventually("cross.test", "/", "served across namespaces", |a| {
        a.who() == "web" && a.headers.get("x-frame-options").is_some()
    })
    .await;

    // server-alias: more names for the host, wildcards one label deep.
    assert_eq!(w.get("alias.test", "/").await.who(), "web");
    assert_eq!(w.get("a.wild.test", "/").await.who(), "web");
    assert_eq!(w.get("a.b.wild.test", "/").await.status, 404);

    // service-upstream: the cluster IP, not the endpoints.
    assert_eq!(w.get("ip.test", "/").await.who(), "viaip");

    // default-backend: answers for a backend without endpoints, told why.
    let a = w.get("db.test", "/some/path").await;
    assert_eq!(a.who(), "fallback");
    let h = &a.echo().unwrap()["headers"];
    assert_eq!(h["x-code"], "503");
    assert_eq!(h["x-namespace"], "x");
    assert_eq!(h["x-ingress-name"], "db");
    assert_eq!(h["x-service-name"], "down");
    assert_eq!(h["x-service-port"], "80");
    assert!(h["x-request-id"].is_string());

    // custom-http-errors: the backend's 404 goes to the default backend,
    // with ingress-nginx's headers; other codes pass.
    // (The default backend's answer is the client's, its status too.)
    let a = w.get("errors.test", "/status/404").await;
    assert_eq!(a.who(), "fallback");
    let e = a.echo().unwrap();
    assert_eq!(e["service"], "fallback");
    assert_eq!(e["path"], "/");
    assert_eq!(e["headers"]["x-code"], "404");
    assert_eq!(e["headers"]["x-original-uri"], "/status/404");
    assert_eq!(e["headers"]["x-ingress-name"], "errors");
    assert_eq!(e["headers"]["x-service-name"], "web");
    let a = w.get("errors.test", "/status/500").await;
    assert_eq!(
        (a.status, a.echo().unwrap()["service"].as_str()),
        (500, Some("web"))
    );
    // disable-proxy-intercept-errors: the backend's own 404.
    let a = w.get("through.test", "/status/404").await;
    assert_eq!(
        (a.status, a.echo().unwrap()["service"].as_str()),
        (404, Some("web"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_protocols_and_tls_to_backends() {
    // An HTTPS backend with a certificate from its own CA.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "backend test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["backend.internal".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "backend.internal");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let https = Echo::start_tls("secure", LO, &leaf.pem(), &leaf_key.serialize_pem()).await;
    let plain = Echo::start("plain", LO, 0).await;
    let grpc = GrpcEcho::start(LO).await;
    let fcgi = FastCgi::start(LO).await;
    let svc = |name: &str, port: u16| service("b", name, 80, None, port, &[(IpAddr::V4(LO), true)]);
    let ca_secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: backend-ca, namespace: b}}\nstringData:\n  ca.crt: |\n{}",
        ca.pem()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let params = config_map(
        "b",
        "fcgi-params",
        &[
            ("SCRIPT_FILENAME", "/srv$fastcgi_script_name"),
            ("APP_ENV", "test"),
        ],
    );
    let (cert, key) = cert_for(&["grpc.test"]);
    let mut objects = vec![
        ("https.yaml".to_string(), svc("secure", https.addr.port())),
        ("plain.yaml".to_string(), svc("plain", plain.addr.port())),
        ("grpc.yaml".to_string(), svc("grpc", grpc.addr.port())),
        ("fcgi.yaml".to_string(), svc("fcgi", fcgi.addr.port())),
        ("ca.yaml".to_string(), ca_secret),
        ("params.yaml".to_string(), params),
        (
            "tls.yaml".to_string(),
            tls_secret("b", "grpc-tls", &cert, &key),
        ),
    ];
    for (name, host, svc, pairs) in [
        (
            "noverify",
            "noverify.test",
            "secure",
            vec![("backend-protocol", "HTTPS")],
        ),
        (
            "verify",
            "verify.test",
            "secure",
            vec![
                ("backend-protocol", "https"),
                ("proxy-ssl-secret", "backend-ca"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-name", "backend.internal"),
                ("proxy-ssl-server-name", "on"),
                ("proxy-ssl-protocols", "TLSv1.2 TLSv1.3"),
                ("proxy-ssl-ciphers", "HIGH:!aNULL"),
                ("proxy-ssl-verify-depth", "2"),
            ],
        ),
        (
            "mismatch",
            "mismatch.test",
            "secure",
            vec![
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-secret", "backend-ca"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-name", "other.internal"),
            ],
        ),
        (
            "unverifiable",
            "unverifiable.test",
            "secure",
            vec![("backend-protocol", "HTTPS"), ("proxy-ssl-verify", "on")],
        ),
        (
            "auto",
            "auto.test",
            "plain",
            vec![("backend-protocol", "AUTO_HTTP")],
        ),
        (
            "php",
            "php.test",
            "fcgi",
            vec![
                ("backend-protocol", "FCGI"),
                ("fastcgi-index", "index.php"),
                ("fastcgi-params-configmap", "fcgi-params"),
            ],
        ),
    ] {
        objects.push((
            format!("{name}-ing.yaml"),
            site("b", name, host, svc, &pairs),
        ));
    }
    objects.push((
        "grpc-ing.yaml".to_string(),
        with_tls(
            &site(
                "b",
                "grpc",
                "grpc.test",
                "grpc",
                &[("backend-protocol", "GRPC")],
            ),
            "grpc.test",
            "grpc-tls",
        ),
    ));
    let files: Vec<(&str, &str)> = objects
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let w = Wicket::start(&files).await;
    // HTTPS to the backend, without and with verification.
    assert_eq!(w.get("noverify.test", "/").await.who(), "secure");
    assert_eq!(w.get("verify.test", "/").await.who(), "secure");
    // A certificate that does not name what nginx expects is refused.
    let a = w.get("mismatch.test", "/").await;
    assert_eq!(a.status, 502, "{}", w.inspect("/config").await.text);
    // Verification without CAs to verify with: refused, 503.
    assert_eq!(w.get("unverifiable.test", "/").await.status, 503);
    assert!(
        w.logs()
            .contains("proxy-ssl-verify is on, but no proxy-ssl-secret with a ca.crt"),
        "{}",
        w.logs()
    );
    // AUTO_HTTP: the client's scheme (HTTP here).
    assert_eq!(w.get("auto.test", "/").await.who(), "plain");
    // FastCGI: the standard parameters, the index, the ConfigMap's.
    let a = w.get("php.test", "/app/").await;
    assert_eq!(a.status, 200, "{a:?}");
    for line in [
        "REQUEST_URI=/app/",
        "SCRIPT_NAME=/app/index.php",
        "SCRIPT_FILENAME=/srv/app/index.php",
        "APP_ENV=test",
        "REQUEST_METHOD=GET",
    ] {
        assert!(a.text.lines().any(|l| l == line), "{line}: {}", a.text);
    }
    // gRPC over TLS to nginx, h2c to the backend.
    let (status, message, trailers) = grpc_call(w.https, "grpc.test", &cert, b"hello")
        .await
        .unwrap();
    assert_eq!(status, "0", "{trailers:?}");
    assert_eq!(message, b"hello");
    assert_eq!(trailers["x-seen-authority"], "grpc.test");
}

fn decode_gzip(b: &[u8]) -> String {
    use std::io::Read;
    let mut out = String::new();
    flate2::read::GzDecoder::new(b)
        .read_to_string(&mut out)
        .unwrap();
    out
}

fn decode_brotli(b: &[u8]) -> String {
    use std::io::Read;
    let mut out = String::new();
    brotli_decompressor::Decompressor::new(b, 4096)
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// Dechunks an HTTP/1.1 chunked body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + n]);
        b = &b[line_end + 4 + n..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_settings_shape_every_answer() {
    let (_e, svc) = web("g", "web").await;
    let (_f, fallback) = web("g", "fallback").await;
    let (cert, key) = cert_for(&["a.test"]);
    let cm = settings(
        "g",
        &[
            ("add-headers", "g/resp"),
            ("proxy-set-headers", "g/req"),
            ("use-gzip", "true"),
            ("gzip-min-length", "10"),
            ("gzip-level", "5"),
            ("enable-brotli", "true"),
            ("brotli-min-length", "10"),
            ("server-tokens", "false"),
            ("block-cidrs", "127.0.0.3"),
            ("block-user-agents", "~*badbot,curl/7.0"),
            ("block-referers", "~*spam\\.example"),
            ("large-client-header-buffers", "2 1k"),
            ("client-header-buffer-size", "1k"),
            ("custom-http-errors", "404"),
            ("use-http2", "false"),
            ("ssl-protocols", "TLSv1.3"),
            ("worker-processes", "1"),
            ("error-log-level", "info"),
            (
                "log-format-upstream",
                "wicket-log $remote_addr $status $request_uri \"$http_user_agent\" $namespace/$ingress_name/$service_name/$service_port$location_path",
            ),
            ("log-format-escape-json", "true"),
            ("proxy-read-timeout", "1"),
            ("keep-alive", "30"),
            ("keep-alive-requests", "500"),
            ("upstream-keepalive-connections", "16"),
            ("upstream-keepalive-requests", "200"),
            ("upstream-keepalive-timeout", "20"),
            ("upstream-keepalive-time", "30m"),
            ("max-worker-connections", "2048"),
            ("server-name-hash-bucket-size", "256"),
            ("proxy-connect-timeout", "4"),
            ("proxy-send-timeout", "40"),
            ("proxy-buffering", "on"),
            ("proxy-buffer-size", "8k"),
            ("proxy-buffers-number", "6"),
            ("proxy-busy-buffers-size", "16k"),
            ("proxy-request-buffering", "off"),
            ("proxy-next-upstream", "error timeout http_503"),
            ("proxy-next-upstream-tries", "2"),
            ("proxy-next-upstream-timeout", "9"),
            ("proxy-http-version", "1.0"),
            ("client-body-buffer-size", "32k"),
        ],
    );
    let resp = config_map(
        "g",
        "resp",
        &[("X-Global", "on"), ("X-Via", "$server_port")],
    );
    let req = config_map(
        "g",
        "req",
        &[("X-From-Edge", "yes"), ("X-Client", "$remote_addr")],
    );
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            ("fallback.yaml", &fallback),
            ("cm.yaml", &cm),
            ("resp.yaml", &resp),
            ("req.yaml", &req),
            ("secret.yaml", &tls_secret("g", "tls", &cert, &key)),
            (
                "a.yaml",
                &with_tls(
                    &site("g", "a", "a.test", "web", &[("ssl-redirect", "false")]),
                    "a.test",
                    "tls",
                ),
            ),
            (
                "v.yaml",
                &site(
                    "g",
                    "v",
                    "v.test",
                    "web",
                    &[("upstream-vhost", "inside.test")],
                ),
            ),
        ],
        &[
            "--configmap",
            "g/settings",
            "--default-backend-service",
            "g/fallback",
        ],
    )
    .await;
    // add-headers on the answer, proxy-set-headers at the backend (also
    // from a location that sets headers of its own).
    let (head, body) = raw(
        w.http,
        LO,
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(header(&head, "x-global"), Some("on"));
    assert_eq!(header(&head, "x-via"), Some(w.http.to_string().as_str()));
    // server-tokens: false: no Server header at all.
    assert_eq!(header(&head, "server"), None, "{head}");
    let body = if header(&head, "transfer-encoding") == Some("chunked") {
        dechunk(&body)
    } else {
        body
    };
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["headers"]["x-from-edge"], "yes");
    assert_eq!(e["headers"]["x-client"], "127.0.0.1");
    assert_eq!(e["version"], "HTTP/1.0", "proxy-http-version");
    let e = w.get("v.test", "/").await.echo().unwrap();
    assert_eq!(e["headers"]["host"], "inside.test");
    assert_eq!(e["headers"]["x-from-edge"], "yes");
    // gzip and brotli, decoded.
    for (enc, decode) in [
        ("gzip", decode_gzip as fn(&[u8]) -> String),
        ("br", decode_brotli),
    ] {
        let (head, body) = raw(w.http, LO, &format!("GET /compressed HTTP/1.1\r\nHost: a.test\r\nAccept-Encoding: {enc}\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(header(&head, "content-encoding"), Some(enc), "{head}");
        let body = if header(&head, "transfer-encoding") == Some("chunked") {
            dechunk(&body)
        } else {
            body
        };
        let e: serde_json::Value = serde_json::from_str(&decode(&body)).unwrap();
        assert_eq!(e["path"], "/compressed");
    }
    // block-cidrs, block-user-agents, block-referers: 403.
    assert_eq!(
        status_of(&get_from(&w, Ipv4Addr::new(127, 0, 0, 3), "a.test", "/", "").await),
        403
    );
    for h in [
        "User-Agent: Mozilla BadBot/1.0\r\n",
        "User-Agent: curl/7.0\r\n",
        "Referer: http://www.spam.example/\r\n",
    ] {
        assert_eq!(
            status_of(&get_from(&w, LO, "a.test", "/", h).await),
            403,
            "{h}"
        );
    }
    assert_eq!(
        status_of(&get_from(&w, LO, "a.test", "/", "User-Agent: curl/8.0\r\n").await),
        200
    );
    // large-client-header-buffers: a header of 2 KiB is too large.
    let big = format!("X-Big: {}\r\n", "b".repeat(2048));
    assert_eq!(status_of(&get_from(&w, LO, "a.test", "/", &big).await), 400);
    // custom-http-errors with --default-backend-service.
    let a = w.get("a.test", "/status/404").await;
    assert_eq!(a.echo().unwrap()["service"], "fallback");
    assert_eq!(a.echo().unwrap()["headers"]["x-code"], "404");
    // proxy-read-timeout: 1.
    assert_eq!(w.get("a.test", "/delay/3000").await.status, 504);
    // use-http2: false; ssl-protocols: TLSv1.3 only.
    let a = fetch(&tls_client(&[&cert]), &w.https_url("a.test", "/"))
        .await
        .unwrap();
    assert_eq!(a.version, reqwest::Version::HTTP_11);
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let tls12 = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    let old = reqwest::Client::builder()
        .resolve("a.test", std::net::SocketAddr::from((LO, w.https)))
        .tls_backend_preconfigured(tls12)
        .no_proxy()
        .build()
        .unwrap();
    assert!(
        fetch(&old, &w.https_url("a.test", "/")).await.is_err(),
        "TLS 1.2 is refused"
    );
    // worker-processes: 1.
    let master = w.nginx_pid().unwrap();
    assert_eq!(
        processes_in_group(master).len(),
        2,
        "a master and one worker"
    );
    // The access log in the format asked for, JSON-escaped.
    assert_eq!(
        status_of(&get_from(&w, LO, "a.test", "/logged?x=1", "User-Agent: a\"b\r\n").await),
        200
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    while !w
        .logs()
        .contains("wicket-log 127.0.0.1 200 /logged?x=1 \"a\\\"b\" g/a/web/80/")
    {
        assert!(std::time::Instant::now() < deadline, "{}", w.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What nginx applies without a visible effect here.
    let config = w.inspect("/config").await.text;
    for line in [
        "error_log stderr info;",
        "    keepalive_timeout 30s;",
        "    keepalive_requests 500;",
        "        keepalive 16;",
        "        keepalive_requests 200;",
        "        keepalive_timeout 20s;",
        "        keepalive_time 30m;",
        "    worker_connections 2048;",
        "    server_names_hash_bucket_size 256;",
        "    client_header_buffer_size 1k;",
        "    client_body_buffer_size 32k;",
        "    proxy_connect_timeout 4s;",
        "    proxy_send_timeout 40s;",
        "    proxy_buffering on;",
        "    proxy_buffer_size 8k;",
        "    proxy_buffers 6 8k;",
        "    proxy_busy_buffers_size 16k;",
        "    proxy_request_buffering off;",
        "    proxy_next_upstream error timeout http_503;",
        "    proxy_next_upstream_tries 2;",
        "    proxy_next_upstream_timeout 9s;",
        "    gzip_comp_level 5;",
    ] {
        assert!(config.contains(line), "{line}\n{config}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ranges_global_and_per_ingress() {
    let (_e, svc) = web("s", "web").await;
    let cm = settings(
        "s",
        &[
            ("whitelist-source-range", "127.0.0.1/32"),
            ("denylist-source-range", "127.0.0.9"),
            ("block-cidrs", "127.0.0.3"),
        ],
    );
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            ("cm.yaml", &cm),
            ("plain.yaml", &site("s", "plain", "plain.test", "web", &[])),
            (
                "allow.yaml",
                &site(
                    "s",
                    "allow",
                    "allow.test",
                    "web",
                    &[("whitelist-source-range", "127.0.0.0/24")],
                ),
            ),
            (
                "deny.yaml",
                &site(
                    "s",
                    "deny",
                    "deny.test",
                    "web",
                    &[
                        ("denylist-source-range", "127.0.0.4"),
                        ("allowlist-source-range", "127.0.0.0/24"),
                    ],
                ),
            ),
        ],
        &["--configmap", "s/settings"],
    )
    .await;
    let from = |d: u8| Ipv4Addr::new(127, 0, 0, d);
    let code = |h: &'static str, d: u8| {
        let w = &w;
        async move { status_of(&get_from(w, from(d), h, "/", "").await) }
    };
    // The global allow list: only 127.0.0.1.
    assert_eq!(code("plain.test", 1).await, 200);
    assert_eq!(code("plain.test", 2).await, 403);
    // An Ingress's list replaces it; block-cidrs and the global deny list
    // still apply.
    assert_eq!(code("allow.test", 2).await, 200);
    assert_eq!(code("allow.test", 3).await, 403, "block-cidrs");
    assert_eq!(code("allow.test", 9).await, 403, "the global deny list");
    // Deny first, then allow, then 403 for the rest.
    assert_eq!(code("deny.test", 4).await, 403);
    assert_eq!(code("deny.test", 6).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_real_ip_and_proxy_protocol() {
    let (_e, svc) = web("f", "web").await;
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            (
                "cm.yaml",
                &settings("f", &[("use-forwarded-headers", "true")]),
            ),
            ("a.yaml", &site("f", "a", "a.test", "web", &[])),
            (
                "force.yaml",
                &site(
                    "f",
                    "force",
                    "force.test",
                    "web",
                    &[("force-ssl-redirect", "true")],
                ),
            ),
        ],
        &["--configmap", "f/settings"],
    )
    .await;
    let seen = |extra: &'static str| {
        let w = &w;
        async move {
            let (head, body) = raw(
                w.http,
                LO,
                &format!("GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n{extra}\r\n"),
            )
            .await;
            assert_eq!(status_of(&head), 200, "{head}");
            let body = if header(&head, "transfer-encoding") == Some("chunked") {
                dechunk(&body)
            } else {
                body
            };
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["headers"].clone()
        }
    };
    // use-forwarded-headers: what the proxy in front says is trusted.
    let h = seen("X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\nX-Forwarded-Port: 443\r\n").await;
    assert_eq!(h["x-real-ip"], "192.0.2.1");
    assert_eq!(h["x-forwarded-for"], "192.0.2.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "public.example");
    assert_eq!(h["x-forwarded-port"], "443");
    // force-ssl-redirect follows the forwarded scheme.
    assert_eq!(
        status_of(&get_from(&w, LO, "force.test", "/", "X-Forwarded-Proto: https\r\n").await),
        200
    );
    assert_eq!(
        status_of(&get_from(&w, LO, "force.test", "/", "X-Forwarded-Proto: http\r\n").await),
        308
    );

    // compute-full-forwarded-for: the chain, then this client.
    w.write(
        "cm.yaml",
        &settings(
            "f",
            &[
                ("use-forwarded-headers", "true"),
                ("compute-full-forwarded-for", "true"),
            ],
        ),
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let h = seen("X-Forwarded-For: 192.0.2.1\r\n").await;
        if h["x-forwarded-for"] == "192.0.2.1, 127.0.0.1" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // enable-real-ip alone, with another header: the client address from
    // it, the scheme not trusted.
    w.write(
        "cm.yaml",
        &settings(
            "f",
            &[
                ("enable-real-ip", "true"),
                ("forwarded-for-header", "X-Client-IP"),
            ],
        ),
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let h = seen("X-Client-IP: 198.51.100.7\r\nX-Forwarded-Proto: https\r\n").await;
        if h["x-real-ip"] == "198.51.100.7" {
            assert_eq!(h["x-forwarded-proto"], "http");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // use-proxy-protocol: the PROXY header names the client.
    w.write("cm.yaml", &settings("f", &[("use-proxy-protocol", "true")]));
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        let mut s = sock.connect(([127, 0, 0, 1], w.http).into()).await.unwrap();
        let _ = s
            .write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        if text.contains("\"x-real-ip\":\"203.0.113.9\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_wicket_cannot_honour_never_reaches_the_backend() {
    let (guarded, guarded_svc) = web("s", "guarded").await;
    let (open, open_svc) = web("s", "open").await;
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: basic-auth, namespace: s}\ntype: Opaque\nstringData: {auth: \"u:$apr1$x$y\"}\n";
    let guard =
        |name: &str, host: &str, pairs: &[(&str, &str)]| site("s", name, host, "guarded", pairs);
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &format!("{guarded_svc}---\n{open_svc}")),
            ("secret.yaml", secret),
            (
                "basic.yaml",
                &guard(
                    "basic",
                    "basic.test",
                    &[("auth-type", "digest"), ("auth-secret", "basic-auth")],
                ),
            ),
            (
                "url.yaml",
                &guard(
                    "url",
                    "url.test",
                    &[("auth-snippet", "proxy_set_header X-Tenant shop;")],
                ),
            ),
            (
                "tls.yaml",
                &guard("tls", "tls.test", &[("auth-tls-secret", "s/ca;")]),
            ),
            (
                "bad-range.yaml",
                &guard(
                    "bad-range",
                    "range.test",
                    &[("whitelist-source-range", "10.0.0.0/8;")],
                ),
            ),
            ("open.yaml", &site("s", "open", "open.test", "open", &[])),
        ],
        &["--configmap", "s/settings"],
    )
    .await;
    // Every guarded host answers the catch-all 404; the backend is never
    // reached, and its neighbour is served.
    for host in ["basic.test", "url.test", "tls.test", "range.test"] {
        for path in ["/", "/x", "/secret/file"] {
            assert_eq!(
                status_of(&get_from(&w, LO, host, path, "").await),
                404,
                "{host}{path}"
            );
        }
    }
    assert_eq!(w.get("open.test", "/").await.who(), "open");
    assert_eq!(
        guarded.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // Each is told why.
    assert_told(
        &w,
        &[
            ("s/basic", "auth-type"),
            ("s/url", "auth-snippet"),
            ("s/tls", "auth-tls-secret"),
            ("s/bad-range", "whitelist-source-range"),
        ],
    );
    drop(open);

    // A global protection key wicket cannot honour refuses every Ingress it
    // would apply to; `enable-global-auth: "false"` opts one out.
    w.write(
        "cm.yaml",
        &settings("s", &[("global-auth-url", "auth.example.com/check")]),
    );
    // Written before the opted-out one: served once that one is.
    w.write(
        "plain.yaml",
        &site("s", "plain", "plain.test", "guarded", &[]),
    );
    w.write(
        "optout.yaml",
        &site(
            "s",
            "optout",
            "optout.test",
            "guarded",
            &[("enable-global-auth", "false")],
        ),
    );
    w.eventually("optout.test", "/", "served", |a| a.status == 200)
        .await;
    let before = guarded.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        status_of(&get_from(&w, LO, "plain.test", "/", "").await),
        404
    );
    assert_eq!(
        guarded.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    let logs = w.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("ingress s/plain") && l.contains("global-auth-url")),
        "{logs}"
    );
}

/// A password hash as `htpasswd` or `openssl passwd` makes it.
fn password_hash(kind: &str, password: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args(["passwd", kind, password])
        .output()
        .expect("openssl");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_both_secret_formats_and_fail_closed() {
    let (guarded, guarded_svc) = web("b", "guarded").await;
    let file = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: staff, namespace: b}}\ntype: Opaque\nstringData:\n  auth: |\n    alice:{}\n    carol:{}\n",
        password_hash("-apr1", "wonderland"),
        password_hash("-6", "carol's"),
    );
    let map = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: users, namespace: b}}\ntype: Opaque\nstringData:\n  bob: {}\n",
        serde_json::to_string(&password_hash("-5", "builder")).unwrap()
    );
    let bad = "apiVersion: v1\nkind: Secret\nmetadata: {name: bad, namespace: b}\ntype: Opaque\nstringData:\n  auth: \"mallory:plaintext\"\n";
    let guard =
        |name: &str, host: &str, pairs: &[(&str, &str)]| site("b", name, host, "guarded", pairs);
    let w = Wicket::start(&[
        ("svc.yaml", &guarded_svc),
        ("secrets.yaml", &format!("{file}---\n{map}---\n{bad}")),
        (
            "file.yaml",
            &guard(
                "file",
                "file.test",
                &[
                    ("auth-type", "basic"),
                    ("auth-secret", "staff"),
                    ("auth-realm", "Staff only"),
                ],
            ),
        ),
        (
            "map.yaml",
            &guard(
                "map",
                "map.test",
                &[
                    ("auth-type", "basic"),
                    ("auth-secret", "b/users"),
                    ("auth-secret-type", "auth-map"),
                ],
            ),
        ),
        (
            "missing.yaml",
            &guard(
                "missing",
                "missing.test",
                &[("auth-type", "basic"), ("auth-secret", "nowhere")],
            ),
        ),
        (
            "unusable.yaml",
            &guard(
                "unusable",
                "unusable.test",
                &[("auth-type", "basic"), ("auth-secret", "bad")],
            ),
        ),
        (
            "no-type.yaml",
            &guard("no-type", "notype.test", &[("auth-secret", "staff")]),
        ),
        (
            "cross.yaml",
            &site(
                "other",
                "cross",
                "cross.test",
                "guarded",
                &[("auth-type", "basic"), ("auth-secret", "b/staff")],
            ),
        ),
    ])
    .await;

    // No or wrong credentials: 401 with the realm; good ones reach the backend.
    let head = get_from(&w, LO, "file.test", "/", "").await;
    assert_eq!(status_of(&head), 401, "{head}");
    assert_eq!(
        header(&head, "WWW-Authenticate"),
        Some("Basic realm=\"Staff only\""),
        "{head}"
    );
    let wrong = get_from(&w, LO, "file.test", "/", &basic("alice", "nope")).await;
    assert_eq!(status_of(&wrong), 401, "{wrong}");
    assert_eq!(
        guarded.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    for (user, pw) in [("alice", "wonderland"), ("carol", "carol's")] {
        let ok = get_from(&w, LO, "file.test", "/x", &basic(user, pw)).await;
        assert_eq!(status_of(&ok), 200, "{user}: {ok}");
    }
    // auth-map: one key per user; the realm defaults to empty.
    let head = get_from(&w, LO, "map.test", "/", &basic("alice", "wonderland")).await;
    assert_eq!(status_of(&head), 401, "{head}");
    assert_eq!(
        header(&head, "WWW-Authenticate"),
        Some("Basic realm=\"\""),
        "{head}"
    );
    let ok = get_from(&w, LO, "map.test", "/", &basic("bob", "builder")).await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    let seen = guarded.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(seen, 3);

    // Fail closed: a missing or unusable Secret, another namespace's, and
    // the keys without auth-type answer 503, whatever the credentials.
    for host in ["missing.test", "unusable.test", "notype.test", "cross.test"] {
        for extra in [String::new(), basic("alice", "wonderland")] {
            let head = get_from(&w, LO, host, "/", &extra).await;
            assert_eq!(status_of(&head), 503, "{host}: {head}");
        }
    }
    assert_eq!(
        guarded.requests.load(std::sync::atomic::Ordering::SeqCst),
        seen
    );
    assert_told(
        &w,
        &[
            ("b/missing", "secret b/nowhere not found"),
            ("b/unusable", "not a hash nginx reads"),
            ("b/no-type", "without auth-type: basic"),
            ("other/cross", "allow-cross-namespace-resources"),
        ],
    );
    // The users' file is the workers' alone, named by its content.
    let dir = w.state_dir().join(wicket::nginx::AUTH_DIR);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 2, "{files:?}");
    use std::os::unix::fs::PermissionsExt;
    for f in files {
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert!(mode == 0o400 || mode == 0o600, "{mode:o}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn satisfy_any_or_all_and_limit_rate() {
    let (_guarded, guarded_svc) = web("sa", "guarded").await;
    let users = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: staff, namespace: sa}}\ntype: Opaque\nstringData:\n  auth: {}\n",
        serde_json::to_string(&format!("alice:{}", password_hash("-apr1", "wonderland"))).unwrap()
    );
    let both = |name: &str, host: &str, extra: &[(&str, &str)]| {
        let mut pairs = vec![
            ("auth-type", "basic"),
            ("auth-secret", "staff"),
            ("whitelist-source-range", "127.0.0.2/32"),
        ];
        pairs.extend_from_slice(extra);
        site("sa", name, host, "guarded", &pairs)
    };
    let w = Wicket::start(&[
        ("svc.yaml", &guarded_svc),
        ("users.yaml", &users),
        ("any.yaml", &both("any", "any.test", &[("satisfy", "any")])),
        ("all.yaml", &both("all", "all.test", &[])),
        ("bad.yaml", &both("bad", "bad.test", &[("satisfy", "some")])),
        (
            "slow.yaml",
            &site(
                "sa",
                "slow",
                "slow.test",
                "guarded",
                &[
                    ("limit-rate", "100"),
                    ("limit-rate-after", "100"),
                    ("proxy-buffering", "on"),
                ],
            ),
        ),
        (
            "unbuffered.yaml",
            &site(
                "sa",
                "unbuffered",
                "unbuffered.test",
                "guarded",
                &[("limit-rate", "100")],
            ),
        ),
    ])
    .await;
    let creds = basic("alice", "wonderland");
    let (listed, other) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    // any: the listed address without credentials, or credentials from
    // anywhere.
    for (from, extra, want) in [
        (listed, "", 200),
        (other, "", 401),
        (other, creds.as_str(), 200),
    ] {
        let head = get_from(&w, from, "any.test", "/", extra).await;
        assert_eq!(status_of(&head), want, "any from {from} {extra:?}: {head}");
    }
    // all (the default): both.
    for (from, extra, want) in [
        (listed, "", 401),
        (other, creds.as_str(), 403),
        (listed, creds.as_str(), 200),
    ] {
        let head = get_from(&w, from, "all.test", "/", extra).await;
        assert_eq!(status_of(&head), want, "all from {from} {extra:?}: {head}");
    }
    // Another value rejects the Ingress: the catch-all answers.
    assert_eq!(
        status_of(&get_from(&w, listed, "bad.test", "/", &creds).await),
        404
    );

    // limit-rate: 100 KB/s after the first 100 KB, so 300 KB take at least
    // about two seconds (a lower bound only: a slow machine is slower).
    let started = Instant::now();
    let (head, body) = raw(
        w.http,
        LO,
        "GET /bytes/307200 HTTP/1.1\r\nHost: slow.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(body.len() >= 307_200, "{}", body.len());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "300 KB in {took:?}");
    // Without proxy-buffering (ingress-nginx's default) it cannot apply:
    // the Ingress is told.
    assert!(
        w.logs().lines().any(|l| l.contains("ingress sa/unbuffered")
            && l.contains("limit-rate applies only to buffered responses")),
        "{}",
        w.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_connection_limits_per_client_address() {
    let (web_echo, web_svc) = web("lim", "web").await;
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &web_svc),
            (
                "cm.yaml",
                &settings(
                    "lim",
                    &[
                        ("limit-req-status-code", "429"),
                        ("limit-conn-status-code", "503"),
                    ],
                ),
            ),
            (
                "rps.yaml",
                &site(
                    "lim",
                    "rps",
                    "rps.test",
                    "web",
                    &[
                        ("limit-rpm", "1"),
                        ("limit-burst-multiplier", "2"),
                        ("limit-allowlist", "127.0.0.5/32"),
                    ],
                ),
            ),
            (
                "conn.yaml",
                &site(
                    "lim",
                    "conn",
                    "conn.test",
                    "web",
                    &[("limit-connections", "1")],
                ),
            ),
        ],
        &["--configmap", "lim/settings"],
    )
    .await;
    // One a minute with a burst of two: three pass, the fourth is refused
    // with limit-req-status-code; another address has its own count, and
    // an exempt one none.
    let from = Ipv4Addr::new(127, 0, 0, 4);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(status_of(&get_from(&w, from, "rps.test", "/", "").await));
    }
    assert_eq!(got, [200, 200, 200, 429], "from {from}");
    assert_eq!(
        status_of(&get_from(&w, Ipv4Addr::new(127, 0, 0, 6), "rps.test", "/", "").await),
        200
    );
    for _ in 0..6 {
        let head = get_from(&w, Ipv4Addr::new(127, 0, 0, 5), "rps.test", "/", "").await;
        assert_eq!(status_of(&head), 200, "exempt: {head}");
    }

    // One connection at a time per address: a second request while a slow
    // one is open is refused.
    let port = w.http;
    let reached = web_echo.requests.load(std::sync::atomic::Ordering::SeqCst);
    let slow = tokio::spawn(async move {
        raw(
            port,
            Ipv4Addr::new(127, 0, 0, 7),
            "GET /delay/3000 HTTP/1.1\r\nHost: conn.test\r\nConnection: close\r\n\r\n",
        )
        .await
        .0
    });
    // Once the slow request holds its connection (it reached the backend).
    let deadline = std::time::Instant::now() + PATIENCE;
    while web_echo.requests.load(std::sync::atomic::Ordering::SeqCst) == reached {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loop {
        let head = get_from(&w, Ipv4Addr::new(127, 0, 0, 7), "conn.test", "/", "").await;
        if status_of(&head) == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never limited: {head}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(&slow.await.unwrap()), 200);

    // Dropping the allowlist changes what the zones are keyed by (nginx
    // refuses that for a zone it keeps): the change is applied, and the
    // address exempt before is limited now.
    w.write(
        "rps.yaml",
        &site(
            "lim",
            "rps",
            "rps.test",
            "web",
            &[("limit-rpm", "1"), ("limit-burst-multiplier", "2")],
        ),
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let head = get_from(&w, Ipv4Addr::new(127, 0, 0, 5), "rps.test", "/", "").await;
        if status_of(&head) == 429 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never limited: {head}\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!w.logs().contains("config not applied"), "{}", w.logs());
    // Once the slow request ended, its address is served again.
    assert_eq!(
        status_of(&get_from(&w, Ipv4Addr::new(127, 0, 0, 7), "conn.test", "/", "").await),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_headers_for_listed_wildcard_and_unlisted_origins() {
    // With the Lua module (dynamic endpoints), its rewrite handler answers
    // preflights; the config has no `if` for them.
    cors_preflights_and_headers(&[], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_headers_without_the_lua_module() {
    cors_preflights_and_headers(&["--dynamic-endpoints=false"], 0).await;
}

/// The CORS answers a user sees, with `args` for `wicket serve`; `by_lua`
/// of the three CORS locations answer preflights from Lua, the others with
/// an `if` (always the redirect's, whose `return` would answer first).
async fn cors_preflights_and_headers(args: &[&str], by_lua: usize) {
    let (web_echo, web_svc) = web("co", "web").await;
    let users = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: staff, namespace: co}}\ntype: Opaque\nstringData:\n  auth: {}\n",
        serde_json::to_string(&format!("alice:{}", password_hash("-apr1", "wonderland"))).unwrap()
    );
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &web_svc),
            ("users.yaml", &users),
            (
                "any.yaml",
                &site("co", "any", "any.test", "web", &[("enable-cors", "true")]),
            ),
            (
                "moved.yaml",
                &site(
                    "co",
                    "moved",
                    "moved.test",
                    "web",
                    &[
                        ("enable-cors", "true"),
                        ("permanent-redirect", "https://elsewhere.example/"),
                    ],
                ),
            ),
            (
                "list.yaml",
                &site(
                    "co",
                    "list",
                    "list.test",
                    "web",
                    &[
                        ("enable-cors", "true"),
                        (
                            "cors-allow-origin",
                            "https://app.example.com, https://*.example.org:8443",
                        ),
                        ("cors-allow-methods", "GET, POST"),
                        ("cors-expose-headers", "X-Request-ID"),
                        ("cors-allow-credentials", "false"),
                        ("cors-max-age", "600"),
                        ("auth-type", "basic"),
                        ("auth-secret", "staff"),
                    ],
                ),
            ),
        ],
        args,
    )
    .await;
    let conf = std::fs::read_to_string(w.state_dir().join("nginx.conf")).unwrap();
    let lua = "rewrite_by_lua_block { wicket.edge(nil, nil, nil, true) }";
    assert_eq!(conf.matches(lua).count(), by_lua, "{conf}");
    assert_eq!(
        conf.matches("if ($wicket_cors = 1o) {").count(),
        3 - by_lua,
        "{conf}"
    );
    // Each location names its header values (any.test and moved.test share
    // the defaults) with one variable; maps give the values.
    assert_eq!(conf.matches("set $wicket_cors_p p").count(), 3, "{conf}");
    assert_eq!(
        conf.matches("set $wicket_cors_methods").count(),
        0,
        "{conf}"
    );
    let methods_map = conf
        .split("map $wicket_cors_p $wicket_cors_methods {")
        .nth(1)
        .and_then(|m| m.split('}').next())
        .unwrap_or_else(|| panic!("no methods map: {conf}"));
    assert_eq!(methods_map.matches(';').count(), 3, "{methods_map}");
    let origin = |o: &str| format!("Origin: {o}\r\n");
    let preflight = |host: &str, o: &str| {
        format!(
            "OPTIONS / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nOrigin: {o}\r\nAccess-Control-Request-Method: POST\r\n\r\n"
        )
    };

    // Any origin: `*` on answers, preflights answered at the edge.
    let head = get_from(&w, LO, "any.test", "/", &origin("https://x.example")).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(
        header(&head, "Access-Control-Allow-Origin"),
        Some("*"),
        "{head}"
    );
    assert_eq!(
        header(&head, "Access-Control-Allow-Credentials"),
        Some("true"),
        "{head}"
    );
    assert_eq!(
        header(&head, "Access-Control-Allow-Methods"),
        Some("GET, PUT, POST, DELETE, PATCH, OPTIONS")
    );
    assert_eq!(header(&head, "Access-Control-Max-Age"), Some("1728000"));
    let before = web_echo.requests.load(std::sync::atomic::Ordering::SeqCst);
    let (head, body) = raw(w.http, LO, &preflight("any.test", "https://x.example")).await;
    assert_eq!(status_of(&head), 204, "{head}");
    assert!(body.is_empty(), "{body:?}");
    // A 204 has no body and so no Content-Length (RFC 9110, 8.6).
    assert_eq!(header(&head, "Content-Length"), None, "{head}");
    assert_eq!(
        header(&head, "Access-Control-Allow-Methods"),
        Some("GET, PUT, POST, DELETE, PATCH, OPTIONS"),
        "{head}"
    );
    assert_eq!(
        header(&head, "Access-Control-Allow-Origin"),
        Some("*"),
        "{head}"
    );
    assert_eq!(
        web_echo.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    // A redirect's preflight is answered too; other requests are redirected.
    let (head, _) = raw(w.http, LO, &preflight("moved.test", "https://x.example")).await;
    assert_eq!(status_of(&head), 204, "{head}");
    assert_eq!(header(&head, "Access-Control-Allow-Origin"), Some("*"));
    let head = get_from(&w, LO, "moved.test", "/", &origin("https://x.example")).await;
    assert_eq!(status_of(&head), 301, "{head}");
    assert_eq!(
        header(&head, "Location"),
        Some("https://elsewhere.example/")
    );

    // A list: listed and wildcard origins are echoed, on a 401 too; one
    // label for the `*`, ports exact, others get no CORS header.
    let creds = basic("alice", "wonderland");
    for o in ["https://app.example.com", "https://a.example.org:8443"] {
        let head = get_from(&w, LO, "list.test", "/", &format!("{}{creds}", origin(o))).await;
        assert_eq!(status_of(&head), 200, "{o}: {head}");
        assert_eq!(
            header(&head, "Access-Control-Allow-Origin"),
            Some(o),
            "{head}"
        );
        assert_eq!(
            header(&head, "Access-Control-Allow-Methods"),
            Some("GET, POST")
        );
        assert_eq!(
            header(&head, "Access-Control-Expose-Headers"),
            Some("X-Request-ID")
        );
        assert_eq!(header(&head, "Access-Control-Max-Age"), Some("600"));
        assert_eq!(
            header(&head, "Access-Control-Allow-Credentials"),
            None,
            "{head}"
        );
        let unauthorized = get_from(&w, LO, "list.test", "/", &origin(o)).await;
        assert_eq!(status_of(&unauthorized), 401, "{unauthorized}");
        assert_eq!(
            header(&unauthorized, "Access-Control-Allow-Origin"),
            Some(o),
            "{unauthorized}"
        );
        let (head, _) = raw(w.http, LO, &preflight("list.test", o)).await;
        assert_eq!(status_of(&head), 204, "preflight {o}: {head}");
        assert_eq!(
            header(&head, "Access-Control-Allow-Origin"),
            Some(o),
            "{head}"
        );
    }
    for o in [
        "https://evil.example",
        "https://a.b.example.org:8443",
        "https://a.example.org",
        "http://app.example.com",
        "https://app.example.com.evil.example",
    ] {
        let head = get_from(&w, LO, "list.test", "/", &format!("{}{creds}", origin(o))).await;
        assert_eq!(status_of(&head), 200, "{o}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("access-control-"),
            "{o}: {head}"
        );
        // Its preflight is not answered at the edge: authentication applies.
        let (head, _) = raw(w.http, LO, &preflight("list.test", o)).await;
        assert_eq!(status_of(&head), 401, "preflight {o}: {head}");
    }

    // The backend's own CORS headers: those the Ingress sets are replaced
    // (one of each), the others kept; for an origin not allowed, those the
    // Ingress sets are removed (a difference from ingress-nginx, which
    // passed the backend's on).
    let count = |head: &str, name: &str| {
        head.lines()
            .filter(|l| {
                l.split_once(':')
                    .is_some_and(|(k, _)| k.eq_ignore_ascii_case(name))
            })
            .count()
    };
    let head = get_from(&w, LO, "any.test", "/cors", &origin("https://x.example")).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(count(&head, "Access-Control-Allow-Origin"), 1, "{head}");
    assert_eq!(header(&head, "Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(
        header(&head, "Access-Control-Expose-Headers"),
        Some("X-Backend"),
        "{head}"
    );
    let listed = format!("{}{creds}", origin("https://app.example.com"));
    let head = get_from(&w, LO, "list.test", "/cors", &listed).await;
    assert_eq!(count(&head, "Access-Control-Allow-Origin"), 1, "{head}");
    assert_eq!(
        header(&head, "Access-Control-Allow-Origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        header(&head, "Access-Control-Expose-Headers"),
        Some("X-Request-ID"),
        "{head}"
    );
    let unlisted = format!("{}{creds}", origin("https://evil.example"));
    let head = get_from(&w, LO, "list.test", "/cors", &unlisted).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("access-control-"),
        "{head}"
    );
}

/// A CORS Ingress whose only path is lost to an older Ingress writes no
/// location: the variables CORS's maps read are declared anyway, so nginx
/// takes the config and the older Ingress is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cors_ingress_without_locations_does_not_break_the_config() {
    let (_web_echo, web_svc) = web("co", "web").await;
    let w = Wicket::start(&[
        ("svc.yaml", &web_svc),
        ("a.yaml", &site("co", "a-plain", "lost.test", "web", &[])),
        (
            "b.yaml",
            &site(
                "co",
                "b-cors",
                "lost.test",
                "web",
                &[("enable-cors", "true")],
            ),
        ),
    ])
    .await;
    let head = get_from(&w, LO, "lost.test", "/", "Origin: https://x.example\r\n").await;
    assert_eq!(status_of(&head), 200, "{head}\n{}", w.logs());
    assert!(
        !head.to_ascii_lowercase().contains("access-control-"),
        "{head}"
    );
    assert!(!w.logs().contains("config not applied"), "{}", w.logs());
}

/// What an auth service written for the tests saw of one check.
#[derive(Clone, Debug)]
struct Check {
    method: String,
    uri: String,
    headers: std::collections::BTreeMap<String, String>,
    body_bytes: usize,
}

/// An auth service: `Authorization: Bearer good` is allowed (200, with
/// `X-User`, `X-Email` and a cookie), `Bearer forbidden` gets 403, `Bearer
/// broken` 502, anything else 401. It records every check.
struct AuthService {
    port: u16,
    checks: std::sync::Arc<std::sync::Mutex<Vec<Check>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AuthService {
    async fn start() -> AuthService {
        use axum::extract::{Request, State};
        use axum::response::IntoResponse;
        type Log = std::sync::Arc<std::sync::Mutex<Vec<Check>>>;
        async fn check(State(log): State<Log>, req: Request) -> axum::response::Response {
            let headers: std::collections::BTreeMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).to_string(),
                    )
                })
                .collect();
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .map(|b| b.len())
                .unwrap_or(0);
            let auth = headers.get("authorization").cloned().unwrap_or_default();
            log.lock().unwrap().push(Check {
                method,
                uri,
                headers,
                body_bytes: body,
            });
            match auth.as_str() {
                "Bearer good" => (
                    [
                        ("X-User", "alice"),
                        ("X-Email", "alice@example.com"),
                        ("Set-Cookie", "auth=fresh; Path=/"),
                    ],
                    "ok",
                )
                    .into_response(),
                // No cookie: an answer nginx may cache.
                "Bearer cached" => ([("X-User", "carol")], "ok").into_response(),
                "Bearer forbidden" => axum::http::StatusCode::FORBIDDEN.into_response(),
                "Bearer broken" => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                _ => (
                    axum::http::StatusCode::UNAUTHORIZED,
                    [("Set-Cookie", "auth=expired; Path=/")],
                )
                    .into_response(),
            }
        }
        let checks: Log = Default::default();
        let app = axum::Router::new()
            .fallback(check)
            .with_state(checks.clone());
        let listener = tokio::net::TcpListener::bind((LO, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        AuthService { port, checks, task }
    }

    fn checks(&self) -> Vec<Check> {
        self.checks.lock().unwrap().clone()
    }

    fn take(&self) -> Vec<Check> {
        std::mem::take(&mut *self.checks.lock().unwrap())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn external_auth_allows_denies_passes_headers_and_signs_in() {
    let (app, app_svc) = web("x", "app").await;
    let auth = AuthService::start().await;
    let url = format!("http://127.0.0.1:{}", auth.port);
    // The auth service as a Service too, for an auth-url of `$host`.
    let auth_svc = service("x", "oauth", 80, None, auth.port, &[(IpAddr::V4(LO), true)]);
    let w = Wicket::start(&[
        ("svc.yaml", &format!("{app_svc}---\n{auth_svc}")),
        (
            "headers.yaml",
            &config_map(
                "x",
                "auth-headers",
                &[("X-Tenant", "shop"), ("X-Via", "$server_port")],
            ),
        ),
        (
            "ext.yaml",
            &site(
                "x",
                "ext",
                "ext.test",
                "app",
                &[
                    ("auth-url", &format!("{url}/verify?host=$host")),
                    ("auth-response-headers", "X-User, X-Email"),
                    ("auth-proxy-set-headers", "auth-headers"),
                ],
            ),
        ),
        (
            "signin.yaml",
            &site(
                "x",
                "signin",
                "signin.test",
                "app",
                &[
                    ("auth-url", &format!("{url}/signin-check")),
                    ("auth-method", "POST"),
                    ("auth-signin", "https://login.example.com/start"),
                    ("auth-request-redirect", "https://signin.test/after"),
                ],
            ),
        ),
        (
            "cache.yaml",
            &site(
                "x",
                "cache",
                "cache.test",
                "app",
                &[
                    ("auth-url", &format!("{url}/cached")),
                    ("auth-cache-key", "$http_authorization"),
                    ("auth-cache-duration", "200 401 1m"),
                    ("auth-always-set-cookie", "true"),
                ],
            ),
        ),
        (
            "self.yaml",
            &format!(
                "{}---\n{}",
                site(
                    "x",
                    "self",
                    "self.test",
                    "app",
                    &[("auth-url", "http://$host/oauth2/auth")],
                ),
                ingress(
                    "x",
                    "oauth2",
                    "",
                    "self.test",
                    &[("/oauth2", "Prefix", "oauth", 80)]
                ),
            ),
        ),
        (
            "down.yaml",
            &site(
                "x",
                "down",
                "down.test",
                "app",
                &[("auth-url", "http://127.0.0.1:1/")],
            ),
        ),
        (
            "orphan.yaml",
            &site(
                "x",
                "orphan",
                "orphan.test",
                "app",
                &[("auth-signin", "https://login.example.com/")],
            ),
        ),
        ("open.yaml", &site("x", "open", "open.test", "app", &[])),
    ])
    .await;
    let served = || app.requests.load(std::sync::atomic::Ordering::SeqCst);
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");

    // No credentials: the auth service's 401 reaches the client, and the
    // backend is never asked.
    let before = served();
    let head = get_from(&w, LO, "ext.test", "/shop/cart?item=1", "").await;
    assert_eq!(status_of(&head), 401, "{head}");
    let head = get_from(&w, LO, "ext.test", "/", &bearer("forbidden")).await;
    assert_eq!(status_of(&head), 403, "{head}");
    let head = get_from(&w, LO, "ext.test", "/", &bearer("broken")).await;
    assert_eq!(status_of(&head), 500, "{head}");
    assert_eq!(served(), before);

    // Allowed: the backend gets the auth answer's headers (over what the
    // client sent), the client the auth service's cookie.
    auth.take();
    let (head, body) = raw(
        w.http,
        LO,
        &format!(
            "POST /shop/cart?item=1 HTTP/1.1\r\nHost: ext.test\r\nConnection: close\r\n{}X-User: mallory\r\nContent-Length: 5\r\n\r\nhello",
            bearer("good")
        ),
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(head.contains("auth=fresh"), "{head}");
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["x-user"], "alice", "{seen}");
    assert_eq!(seen["headers"]["x-email"], "alice@example.com", "{seen}");
    assert_eq!(seen["body_bytes"], 5, "{seen}");
    // The check: the URL's path and query, the original request in
    // headers, the tenant's headers, no body.
    let c = auth.take().pop().expect("a check");
    assert_eq!(c.method, "GET");
    assert_eq!(c.uri, "/verify?host=ext.test");
    assert_eq!(
        c.headers["x-original-url"],
        "http://ext.test/shop/cart?item=1"
    );
    assert_eq!(c.headers["x-original-method"], "POST");
    assert_eq!(c.headers["x-auth-request-redirect"], "/shop/cart?item=1");
    assert_eq!(c.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(c.headers["x-forwarded-for"], "127.0.0.1");
    assert!(c.headers.contains_key("x-request-id"), "{c:?}");
    assert_eq!(c.headers["x-tenant"], "shop");
    assert_eq!(c.headers["x-via"], w.http.to_string());
    assert_eq!(c.headers["host"], format!("127.0.0.1:{}", auth.port));
    assert_eq!(c.body_bytes, 0);
    assert!(!c.headers.contains_key("content-length") || c.headers["content-length"] == "0");

    // A 401 sends the client to sign in, with where it was going.
    let head = get_from(&w, LO, "signin.test", "/a/b?c=1&d=2", "").await;
    assert_eq!(status_of(&head), 302, "{head}");
    let location = header(&head, "Location").unwrap();
    let (base, rd) = location.split_once("?rd=").expect(location);
    assert_eq!(base, "https://login.example.com/start");
    assert_eq!(
        percent_decode(rd),
        "http://signin.test/a/b?c=1&d=2",
        "{location}"
    );
    assert!(!rd.contains('&'), "{location}");
    assert!(head.contains("auth=expired"), "{head}");
    let c = auth.take().pop().expect("a check");
    assert_eq!(
        (c.method.as_str(), c.uri.as_str()),
        ("POST", "/signin-check")
    );
    assert_eq!(
        c.headers["x-auth-request-redirect"],
        "https://signin.test/after"
    );
    assert_eq!(c.headers["x-original-uri"], "/a/b?c=1&d=2");
    let head = get_from(&w, LO, "signin.test", "/", &bearer("good")).await;
    assert_eq!(status_of(&head), 200, "{head}");

    // Cached answers: the second request with the same key asks nobody;
    // another key is checked. (An answer with a cookie is never cached,
    // which is nginx's rule: it would hand one user's cookie to another.)
    auth.take();
    for _ in 0..3 {
        let head = get_from(&w, LO, "cache.test", "/", &bearer("cached")).await;
        assert_eq!(status_of(&head), 200, "{head}");
    }
    assert_eq!(auth.take().len(), 1, "cached");
    for _ in 0..2 {
        let head = get_from(&w, LO, "cache.test", "/", &bearer("good")).await;
        assert_eq!(status_of(&head), 200, "{head}");
    }
    assert_eq!(auth.take().len(), 2, "answers with a cookie are not cached");
    let head = get_from(&w, LO, "cache.test", "/", &bearer("forbidden")).await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert_eq!(auth.take().len(), 1);

    // `$host`: the check goes through wicket's own listener, where another
    // Ingress of the host routes /oauth2 to the auth service.
    let head = get_from(&w, LO, "self.test", "/", "").await;
    assert_eq!(status_of(&head), 401, "{head}");
    let head = get_from(&w, LO, "self.test", "/", &bearer("good")).await;
    assert_eq!(status_of(&head), 200, "{head}");
    let c = auth.take().pop().expect("a check");
    assert_eq!(c.uri, "/oauth2/auth");
    assert_eq!(c.headers["host"], "self.test");

    // An auth service that cannot be reached: 500, never the backend.
    let before = served();
    let head = get_from(&w, LO, "down.test", "/", &bearer("good")).await;
    assert_eq!(status_of(&head), 500, "{head}");
    // An auth key without auth-url: 503, and the Ingress is told.
    let head = get_from(&w, LO, "orphan.test", "/", &bearer("good")).await;
    assert_eq!(status_of(&head), 503, "{head}");
    assert_eq!(served(), before);
    assert_told(&w, &[("x/orphan", "auth-signin is set without auth-url")]);
    // Its neighbour needs nothing.
    assert_eq!(w.get("open.test", "/").await.status, 200);
    assert!(auth.checks().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn global_external_auth_with_opt_outs_and_exempt_paths() {
    let (app, app_svc) = web("g", "app").await;
    let auth = AuthService::start().await;
    let url = format!("http://127.0.0.1:{}", auth.port);
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &app_svc),
            (
                "cm.yaml",
                &settings(
                    "g",
                    &[
                        ("global-auth-url", &format!("{url}/global")),
                        ("global-auth-response-headers", "X-User"),
                        ("global-auth-signin", "https://login.example.com/"),
                        ("global-auth-signin-redirect-param", "back"),
                        ("no-auth-locations", "/.well-known/acme-challenge, /healthz"),
                        (
                            "global-auth-snippet",
                            "proxy_set_header X-From-Snippet global;",
                        ),
                        ("allow-snippet-annotations", "true"),
                    ],
                ),
            ),
            ("plain.yaml", &site("g", "plain", "plain.test", "app", &[])),
            (
                "exempt.yaml",
                &ingress(
                    "g",
                    "exempt",
                    "",
                    "plain.test",
                    &[
                        ("/.well-known/acme-challenge/token", "Exact", "app", 80),
                        ("/healthz", "Prefix", "app", 80),
                    ],
                ),
            ),
            (
                "optout.yaml",
                &site(
                    "g",
                    "optout",
                    "optout.test",
                    "app",
                    &[("enable-global-auth", "false")],
                ),
            ),
            (
                "own.yaml",
                &site(
                    "g",
                    "own",
                    "own.test",
                    "app",
                    &[
                        ("auth-url", &format!("{url}/own")),
                        ("auth-snippet", "proxy_set_header X-From-Snippet own;"),
                    ],
                ),
            ),
        ],
        &["--configmap", "g/settings"],
    )
    .await;
    // Every Ingress without its own check gets the global one.
    let head = get_from(&w, LO, "plain.test", "/", "").await;
    assert_eq!(status_of(&head), 302, "{head}");
    let location = header(&head, "Location").unwrap();
    assert!(
        location.starts_with("https://login.example.com/?back=http"),
        "{location}"
    );
    let (head, body) = raw(
        w.http,
        LO,
        "GET / HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\nAuthorization: Bearer good\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["x-user"], "alice", "{seen}");
    let c = auth.take().pop().unwrap();
    assert_eq!(c.uri, "/global");
    // The global snippet is in the check's location.
    assert_eq!(c.headers["x-from-snippet"], "global");
    // Ingress paths under no-auth-locations (as in ingress-nginx, the
    // path of the rule, not of the request), and Ingresses that opt out,
    // are not checked.
    for (host, path) in [
        ("plain.test", "/.well-known/acme-challenge/token"),
        ("plain.test", "/healthz/live"),
        ("optout.test", "/"),
    ] {
        let head = get_from(&w, LO, host, path, "").await;
        assert_eq!(status_of(&head), 200, "{host}{path}: {head}");
    }
    assert!(auth.take().is_empty());
    // A request path under it, on a rule that is not, is checked.
    let head = get_from(
        &w,
        LO,
        "plain.test",
        "/.well-known/acme-challenge/other",
        "",
    )
    .await;
    assert_eq!(status_of(&head), 302, "{head}");
    auth.take();
    // An Ingress's own auth-url replaces the global one.
    let head = get_from(&w, LO, "own.test", "/", "").await;
    assert_eq!(status_of(&head), 401, "{head}");
    let c = auth.take().pop().unwrap();
    assert_eq!(c.uri, "/own");
    assert_eq!(c.headers["x-from-snippet"], "own");

    // A global auth URL that does not parse refuses what it would apply to
    // (never serves it unchecked); the opted-out Ingress stays.
    let before = app.requests.load(std::sync::atomic::Ordering::SeqCst);
    w.write(
        "cm.yaml",
        &settings(
            "g",
            &[("global-auth-url", "http://auth.example.com/\"; allow all")],
        ),
    );
    w.eventually("plain.test", "/", "refused", |a| a.status == 404)
        .await;
    assert_eq!(w.get("optout.test", "/").await.status, 200);
    assert_eq!(
        app.requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
    assert_told(&w, &[("g/plain", "global-auth-url")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_by_header_cookie_and_weight() {
    let (stable, stable_svc) = web("c", "stable").await;
    let (beta, beta_svc) = web("c", "beta").await;
    let main = |name: &str, host: &str| site("c", name, host, "stable", &[]);
    let canary = |name: &str, host: &str, pairs: &[(&str, &str)]| {
        let mut all = vec![("canary", "true")];
        all.extend_from_slice(pairs);
        site("c", name, host, "beta", &all)
    };
    let w = Wicket::start(&[
        ("svc.yaml", &format!("{stable_svc}---\n{beta_svc}")),
        (
            "mixed.yaml",
            &format!(
                "{}---\n{}",
                main("mixed", "mixed.test"),
                canary(
                    "mixed-canary",
                    "mixed.test",
                    &[
                        ("canary-by-header", "X-Canary"),
                        ("canary-by-cookie", "canary_user"),
                        ("canary-weight", "30"),
                    ],
                ),
            ),
        ),
        (
            "value.yaml",
            &format!(
                "{}---\n{}",
                main("value", "value.test"),
                canary(
                    "value-canary",
                    "value.test",
                    &[
                        ("canary-by-header", "X-Version"),
                        ("canary-by-header-value", "v2"),
                    ],
                ),
            ),
        ),
        (
            "pattern.yaml",
            &format!(
                "{}---\n{}",
                main("pattern", "pattern.test"),
                canary(
                    "pattern-canary",
                    "pattern.test",
                    &[
                        ("canary-by-header", "X-Version"),
                        ("canary-by-header-pattern", "^v[23]$"),
                    ],
                ),
            ),
        ),
        (
            "all.yaml",
            &format!(
                "{}---\n{}",
                main("all", "all.test"),
                canary(
                    "all-canary",
                    "all.test",
                    &[("canary-weight", "10"), ("canary-weight-total", "10")],
                ),
            ),
        ),
        (
            "lonely.yaml",
            &canary("lonely", "lonely.test", &[("canary-weight", "100")]),
        ),
        (
            "guarded.yaml",
            &format!(
                "{}---\n{}",
                main("guarded", "guarded.test"),
                canary(
                    "guarded-canary",
                    "guarded.test",
                    &[
                        ("canary-weight", "100"),
                        ("auth-url", "http://127.0.0.1:9/")
                    ],
                ),
            ),
        ),
    ])
    .await;
    let who = |head: &str, body: &[u8]| -> String {
        assert_eq!(status_of(head), 200, "{head}");
        serde_json::from_slice::<serde_json::Value>(body).unwrap()["service"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ask = |host: &'static str, extra: String| {
        let port = w.http;
        async move {
            let (head, body) = raw(
                port,
                LO,
                &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n"),
            )
            .await;
            who(&head, &body)
        }
    };
    // Header first, then cookie, then weight.
    let cases = [
        ("X-Canary: always\r\n", "beta"),
        ("X-Canary: never\r\n", "stable"),
        (
            "X-Canary: never\r\nCookie: canary_user=always\r\n",
            "stable",
        ),
        ("X-Canary: always\r\nCookie: canary_user=never\r\n", "beta"),
        ("Cookie: canary_user=always\r\n", "beta"),
        ("X-Canary: maybe\r\nCookie: canary_user=always\r\n", "beta"),
    ];
    for (extra, expected) in cases {
        for _ in 0..10 {
            assert_eq!(
                ask("mixed.test", extra.to_string()).await,
                expected,
                "{extra}"
            );
        }
    }
    // `never` by cookie beats the weight.
    for _ in 0..50 {
        assert_eq!(
            ask("mixed.test", "Cookie: canary_user=never\r\n".into()).await,
            "stable"
        );
    }
    // The weight: 30% of 600 requests, within bounds more than five
    // standard deviations wide.
    let mut to_beta = 0;
    for _ in 0..600 {
        if ask("mixed.test", String::new()).await == "beta" {
            to_beta += 1;
        }
    }
    assert!(
        (120..=240).contains(&to_beta),
        "{to_beta} of 600 to the canary"
    );

    // An exact value, or a pattern; any other value (and no header) goes
    // to the main backend when there is no weight.
    for (host, value, expected) in [
        ("value.test", "v2", "beta"),
        ("value.test", "v3", "stable"),
        ("value.test", "always", "stable"),
        ("pattern.test", "v2", "beta"),
        ("pattern.test", "v3", "beta"),
        ("pattern.test", "v4", "stable"),
    ] {
        assert_eq!(
            ask(host, format!("X-Version: {value}\r\n")).await,
            expected,
            "{host} {value}"
        );
    }
    assert_eq!(ask("value.test", String::new()).await, "stable");
    // The whole weight: every request.
    for _ in 0..20 {
        assert_eq!(ask("all.test", String::new()).await, "beta");
    }
    // A canary alone makes no route; one with a protection annotation is
    // refused (its traffic would not be protected by it).
    assert_eq!(
        status_of(&get_from(&w, LO, "lonely.test", "/", "").await),
        404
    );
    for _ in 0..20 {
        assert_eq!(ask("guarded.test", String::new()).await, "stable");
    }
    assert_told(
        &w,
        &[
            ("c/lonely", "a canary alone makes no route"),
            ("c/guarded-canary", "set it on the main Ingress"),
        ],
    );
    drop((stable, beta));
}

#[tokio::test(flavor = "multi_thread")]
async fn affinity_keeps_a_client_on_one_endpoint_and_hashing_keeps_a_key() {
    // Three endpoints of one Service, on three loopback addresses.
    let port = free_port();
    let mut pool = Vec::new();
    for last in [2u8, 3, 4] {
        pool.push(Echo::start("pool", Ipv4Addr::new(127, 0, 0, last), port).await);
    }
    let eps: Vec<(IpAddr, bool)> = pool.iter().map(|e| (e.addr.ip(), true)).collect();
    let svc = service("a", "pool", 80, None, port, &eps);
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        (
            "sticky.yaml",
            &site(
                "a",
                "sticky",
                "sticky.test",
                "pool",
                &[
                    ("affinity", "cookie"),
                    ("session-cookie-name", "ROUTE"),
                    ("session-cookie-max-age", "3600"),
                    ("session-cookie-samesite", "Lax"),
                ],
            ),
        ),
        (
            "persistent.yaml",
            // Under a path: the cookie's Path is the Ingress's.
            &ingress(
                "a",
                "persistent",
                &annotated(&[("affinity", "cookie"), ("affinity-mode", "persistent")]),
                "persistent.test",
                &[("/shop", "Prefix", "pool", 80)],
            ),
        ),
        (
            "hash.yaml",
            &site(
                "a",
                "hash",
                "hash.test",
                "pool",
                &[("upstream-hash-by", "$arg_user")],
            ),
        ),
        (
            "subset.yaml",
            &site(
                "a",
                "subset",
                "subset.test",
                "pool",
                &[
                    ("upstream-hash-by", "$arg_user"),
                    ("upstream-hash-by-subset", "true"),
                    ("upstream-hash-by-subset-size", "2"),
                ],
            ),
        ),
        (
            "plain.yaml",
            &site(
                "a",
                "plain",
                "plain.test",
                "pool",
                &[("load-balance", "ewma")],
            ),
        ),
    ])
    .await;
    let endpoint = |body: &[u8]| -> String {
        serde_json::from_slice::<serde_json::Value>(body).unwrap()["endpoint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ask = |host: &str, path: &str, extra: &str| {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
        let port = w.http;
        async move { raw(port, LO, &req).await }
    };
    for (host, name, path) in [
        ("sticky.test", "ROUTE", "/"),
        ("persistent.test", "INGRESSCOOKIE", "/shop"),
    ] {
        // Clients without the cookie are spread, each told its cookie.
        let mut seen = std::collections::BTreeSet::new();
        let mut cookies = Vec::new();
        for _ in 0..30 {
            let (head, body) = ask(host, path, "").await;
            assert_eq!(status_of(&head), 200, "{head}");
            let set = header(&head, "Set-Cookie").unwrap_or_else(|| panic!("{host}: {head}"));
            assert!(set.starts_with(&format!("{name}=")), "{set}");
            assert!(
                set.contains(&format!("; Path={path};")) && set.ends_with("; HttpOnly"),
                "{set}"
            );
            if host == "sticky.test" {
                assert!(set.contains("; Max-Age=3600; SameSite=Lax"), "{set}");
            }
            let value = set.split(';').next().unwrap().to_string();
            cookies.push((value, endpoint(&body)));
            seen.insert(endpoint(&body));
        }
        assert!(seen.len() >= 2, "{host}: every client on {seen:?}");
        // A client with its cookie stays on its endpoint, and is not told
        // again.
        for (cookie, first) in cookies.iter().take(5) {
            for _ in 0..10 {
                let (head, body) = ask(host, path, &format!("Cookie: {cookie}\r\n")).await;
                assert_eq!(endpoint(&body), *first, "{host} {cookie}");
                assert!(header(&head, "Set-Cookie").is_none(), "{head}");
            }
        }
    }
    // A persistent cookie that names no endpoint (one gone) gets a new one.
    let (head, _) = ask("persistent.test", "/shop", "Cookie: INGRESSCOOKIE=00ff\r\n").await;
    assert!(header(&head, "Set-Cookie").is_some(), "{head}");

    // A hash key keeps its endpoint; keys are spread.
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..20 {
        let path = format!("/?user=u{user}");
        let (_, body) = ask("hash.test", &path, "").await;
        let first = endpoint(&body);
        for _ in 0..5 {
            let (_, body) = ask("hash.test", &path, "").await;
            assert_eq!(endpoint(&body), first, "user {user}");
        }
        seen.insert(first);
        // A subset of two: never more than two endpoints for one key.
        let mut subset = std::collections::BTreeSet::new();
        for _ in 0..12 {
            let (_, body) = ask("subset.test", &path, "").await;
            subset.insert(endpoint(&body));
        }
        assert!(subset.len() <= 2, "user {user}: {subset:?}");
    }
    assert!(seen.len() >= 2, "every key on {seen:?}");
    // ewma: round robin, and told so.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (_, body) = ask("plain.test", "/", "").await;
        seen.insert(endpoint(&body));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_told(&w, &[("a/plain", "ewma is balanced round robin")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirroring_copies_requests_without_the_client_waiting() {
    let (app, app_svc) = web("m", "app").await;
    let copies = AuthService::start().await;
    // A mirror that takes connections and never answers.
    let hung = tokio::net::TcpListener::bind((LO, 0)).await.unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            keep.push(s);
        }
    });
    let target = format!("http://127.0.0.1:{}$request_uri", copies.port);
    let w = Wicket::start(&[
        ("svc.yaml", &app_svc),
        (
            "copy.yaml",
            &site(
                "m",
                "copy",
                "copy.test",
                "app",
                &[
                    ("mirror-target", &target),
                    ("mirror-host", "shadow.example.com"),
                ],
            ),
        ),
        (
            "nobody.yaml",
            &site(
                "m",
                "nobody",
                "nobody.test",
                "app",
                &[("mirror-target", &target), ("mirror-request-body", "off")],
            ),
        ),
        (
            "hung.yaml",
            &site(
                "m",
                "hung",
                "hung.test",
                "app",
                &[(
                    "mirror-target",
                    &format!("http://127.0.0.1:{hung_port}$request_uri"),
                )],
            ),
        ),
    ])
    .await;
    let post = |host: &str| {
        format!(
            "POST /orders?id=7 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: Bearer forbidden\r\nContent-Length: 5\r\n\r\nhello"
        )
    };
    // The client's answer is the backend's (the mirror would say 403).
    let (head, body) = raw(w.http, LO, &post("copy.test")).await;
    assert_eq!(status_of(&head), 200, "{head}");
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["service"], "app");
    assert_eq!(seen["body_bytes"], 5);
    // The mirror got the same request, with its own Host, body included.
    let copies = &copies;
    let wait = |n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while copies.checks().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait(1).await;
    let c = copies.take().pop().expect("a copy");
    assert_eq!(
        (c.method.as_str(), c.uri.as_str()),
        ("POST", "/orders?id=7")
    );
    assert_eq!(c.headers["host"], "shadow.example.com");
    assert_eq!(c.headers["x-original-uri"], "/orders?id=7");
    assert_eq!(c.body_bytes, 5);
    // Without the body.
    let (head, _) = raw(w.http, LO, &post("nobody.test")).await;
    assert_eq!(status_of(&head), 200, "{head}");
    wait(1).await;
    let c = copies.take().pop().expect("a copy");
    assert_eq!(c.body_bytes, 0);
    assert_eq!(c.headers["host"], format!("127.0.0.1:{}", copies.port));
    // A mirror that never answers does not hold the client's answer.
    let before = app.requests.load(std::sync::atomic::Ordering::SeqCst);
    let answer = tokio::time::timeout(Duration::from_secs(20), w.get("hung.test", "/x")).await;
    assert_eq!(answer.expect("answered while the mirror hangs").status, 200);
    assert_eq!(
        app.requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
    held.abort();
}
