//! ModSecurity end to end: `wicket serve`, the real nginx with Debian's
//! libnginx-mod-http-modsecurity and modsecurity-crs, echo backends; every
//! assertion is what a client sees or what the backend received.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// `?id=1' OR '1'='1`: what the core rules block (942100, libinjection).
const SQLI: &str = "/?id=1%27%20OR%20%271%27%3D%271";

fn site(ns: &str, name: &str, host: &str, svc: &str, pairs: &[(&str, &str)]) -> String {
    ingress(
        ns,
        name,
        &annotated(pairs),
        host,
        &[("/", "Prefix", svc, 80)],
    )
}

async fn web(ns: &str, name: &str) -> (Echo, String) {
    let e = Echo::start(name, LO, 0).await;
    let svc = service(ns, name, 80, None, e.addr.port(), &[(IpAddr::V4(LO), true)]);
    (e, svc)
}

/// A GET over a fresh connection: the status, with `extra` header lines.
async fn status(w: &Wicket, host: &str, path: &str, extra: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect((LO, w.http)).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {head:?}"))
}

fn requests(e: &Echo) -> usize {
    e.requests.load(Ordering::SeqCst)
}

fn assert_told(w: &Wicket, name: &str, why: &str) {
    let logs = w.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(&format!("ingress {name}")) && l.contains(why)),
        "{name}: no reason with {why:?}\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_rules_block_an_injection_where_they_are_on() {
    assert!(
        modules().modsecurity && modules().crs,
        "ModSecurity is not installed: run scripts/install-test-deps.sh"
    );
    let (crs, crs_svc) = web("m", "crs").await;
    let (plain, plain_svc) = web("m", "plain").await;
    let (detect, detect_svc) = web("m", "detect").await;
    let files = [
        (
            "svc.yaml",
            format!("{crs_svc}---\n{plain_svc}---\n{detect_svc}"),
        ),
        (
            "crs.yaml",
            site(
                "m",
                "crs",
                "crs.test",
                "crs",
                &[
                    ("enable-modsecurity", "true"),
                    ("enable-owasp-core-rules", "true"),
                    ("modsecurity-transaction-id", "wicket-tx-$http_x_tx"),
                ],
            ),
        ),
        // The core rules alone turn ModSecurity on.
        (
            "only.yaml",
            site(
                "m",
                "only",
                "only.test",
                "crs",
                &[("enable-owasp-core-rules", "true")],
            ),
        ),
        ("plain.yaml", site("m", "plain", "plain.test", "plain", &[])),
        // ModSecurity without the core rules: detection only, as in
        // ingress-nginx, and the CRS loaded for crs.test does not run here.
        (
            "detect.yaml",
            site(
                "m",
                "detect",
                "detect.test",
                "detect",
                &[("enable-modsecurity", "true")],
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let w = Wicket::start(&files).await;

    assert_eq!(status(&w, "crs.test", "/normal?id=12", "").await, 200);
    let before = requests(&crs);
    assert_eq!(
        status(&w, "crs.test", SQLI, "X-Tx: abc123\r\n").await,
        403,
        "{}",
        w.logs()
    );
    assert_eq!(
        status(&w, "only.test", SQLI, "").await,
        403,
        "enable-owasp-core-rules alone"
    );
    assert_eq!(
        requests(&crs),
        before,
        "a blocked request never reaches the backend"
    );
    // Neighbours let the same request through.
    assert_eq!(status(&w, "plain.test", SQLI, "").await, 200);
    assert_eq!(requests(&plain), 1);
    assert_eq!(status(&w, "detect.test", SQLI, "").await, 200);
    assert_eq!(requests(&detect), 1);
    // The transaction id names the intervention in nginx's error log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !w.logs().contains("wicket-tx-abc123") {
        assert!(
            std::time::Instant::now() < deadline,
            "the transaction id is not in the log\n{}",
            w.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let logs = w.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("wicket-tx-abc123"))
        .unwrap();
    assert!(line.contains("ModSecurity"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modsecurity_snippet_is_refused_unless_snippets_are_allowed() {
    let (e, svc) = web("s", "web").await;
    let rules = "SecRuleEngine On\nSecRule REQUEST_HEADERS:User-Agent \"@contains block-ua\" \"id:107,phase:1,log,deny,status:403,msg:'UA blocked'\"";
    let ing = site(
        "s",
        "rules",
        "rules.test",
        "web",
        &[("modsecurity-snippet", rules)],
    );
    let other = site("s", "other", "other.test", "web", &[]);
    // The Ingress's own settings win over wicket's: the core rules only
    // detect here.
    let quiet = site(
        "s",
        "quiet",
        "quiet.test",
        "web",
        &[
            ("enable-owasp-core-rules", "true"),
            ("modsecurity-snippet", "SecRuleEngine DetectionOnly"),
        ],
    );
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            ("ing.yaml", &ing),
            ("other.yaml", &other),
            ("quiet.yaml", &quiet),
            ("cm.yaml", &settings("s", &[])),
        ],
        &["--configmap", "s/settings"],
    )
    .await;
    // Refused: the Ingress is not served at all.
    assert_eq!(status(&w, "rules.test", "/", "").await, 404);
    assert_eq!(status(&w, "other.test", "/", "").await, 200);
    assert_told(&w, "s/rules", "allow-snippet-annotations");

    w.replace(
        "cm.yaml",
        &settings("s", &[("allow-snippet-annotations", "true")]),
    );
    w.eventually("rules.test", "/", "served", |a| a.status == 200)
        .await;
    let before = requests(&e);
    assert_eq!(
        status(&w, "rules.test", "/", "User-Agent: x-block-ua-y\r\n").await,
        403
    );
    assert_eq!(requests(&e), before);
    assert_eq!(
        status(&w, "rules.test", "/", "User-Agent: curl\r\n").await,
        200
    );
    // The rules are the Ingress's own.
    assert_eq!(
        status(&w, "other.test", "/", "User-Agent: block-ua\r\n").await,
        200
    );
    assert_eq!(status(&w, "quiet.test", SQLI, "").await, 200);
    // They are in a file of their own, not in nginx.conf.
    let conf = std::fs::read_to_string(w.state_dir().join("nginx.conf")).unwrap();
    assert!(!conf.contains("block-ua"), "{conf}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_keys_turn_it_on_everywhere_but_where_an_ingress_opts_out() {
    let (e, svc) = web("g", "web").await;
    let cm = settings(
        "g",
        &[
            ("enable-modsecurity", "true"),
            ("enable-owasp-modsecurity-crs", "true"),
            (
                "modsecurity-snippet",
                "SecRule REQUEST_HEADERS:X-Evil \"@streq yes\" \"id:108,phase:1,deny,status:403,log\"",
            ),
        ],
    );
    let files = [
        ("svc.yaml", svc),
        ("cm.yaml", cm),
        ("a.yaml", site("g", "a", "a.test", "web", &[])),
        (
            "out.yaml",
            site(
                "g",
                "out",
                "out.test",
                "web",
                &[("enable-modsecurity", "false")],
            ),
        ),
        (
            "nocrs.yaml",
            site(
                "g",
                "nocrs",
                "nocrs.test",
                "web",
                &[("enable-owasp-core-rules", "false")],
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let w = Wicket::start_with(&files, &["--configmap", "g/settings"]).await;
    assert_eq!(status(&w, "a.test", "/", "").await, 200);
    let before = requests(&e);
    assert_eq!(status(&w, "a.test", SQLI, "").await, 403);
    assert_eq!(status(&w, "a.test", "/", "X-Evil: yes\r\n").await, 403);
    assert_eq!(requests(&e), before);
    // Opted out: nothing runs.
    assert_eq!(status(&w, "out.test", SQLI, "X-Evil: yes\r\n").await, 200);
    // Without the core rules: the global rules still run.
    assert_eq!(status(&w, "nocrs.test", SQLI, "").await, 200);
    assert_eq!(status(&w, "nocrs.test", "/", "X-Evil: yes\r\n").await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_module_an_ingress_asking_for_it_answers_503() {
    // Every module but ModSecurity.
    let dir = tempfile::tempdir().unwrap();
    let real = std::path::Path::new(&modules().dir).to_path_buf();
    for e in std::fs::read_dir(&real).unwrap().flatten() {
        let name = e.file_name();
        if name.to_string_lossy().contains("modsecurity") {
            continue;
        }
        std::os::unix::fs::symlink(e.path(), dir.path().join(&name)).unwrap();
    }
    let (e, svc) = web("n", "web").await;
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            (
                "waf.yaml",
                &site(
                    "n",
                    "waf",
                    "waf.test",
                    "web",
                    &[("enable-owasp-core-rules", "true")],
                ),
            ),
            ("plain.yaml", &site("n", "plain", "plain.test", "web", &[])),
        ],
        &["--nginx-modules-dir", dir.path().to_str().unwrap()],
    )
    .await;
    assert_eq!(status(&w, "waf.test", SQLI, "").await, 503);
    assert_eq!(status(&w, "waf.test", "/", "").await, 503);
    assert_eq!(requests(&e), 0);
    assert_eq!(status(&w, "plain.test", SQLI, "").await, 200);
    assert_told(&w, "n/waf", "libnginx-mod-http-modsecurity");
    let conf = std::fs::read_to_string(w.state_dir().join("nginx.conf")).unwrap();
    assert!(
        !conf
            .lines()
            .any(|l| l.contains("modsecurity") && !l.trim_start().starts_with('#')),
        "{conf}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_modsecurity_refuses_leave_their_ingress_out_and_the_rest_served() {
    let (_e, svc) = web("q", "web").await;
    let bad = site(
        "q",
        "bad",
        "bad.test",
        "web",
        &[("modsecurity-snippet", "SecRuleEngine Sometimes")],
    );
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            (
                "cm.yaml",
                &settings("q", &[("allow-snippet-annotations", "true")]),
            ),
            (
                "good.yaml",
                &site(
                    "q",
                    "good",
                    "good.test",
                    "web",
                    &[("enable-owasp-core-rules", "true")],
                ),
            ),
            ("bad.yaml", &bad),
        ],
        &["--configmap", "q/settings"],
    )
    .await;
    w.eventually("good.test", "/", "served", |a| a.status == 200)
        .await;
    assert_eq!(status(&w, "good.test", SQLI, "").await, 403);
    assert_eq!(status(&w, "bad.test", "/", "").await, 404);
    assert_told(&w, "q/bad", "quarantined");
}

// ------------------------------------------------- build and nginx -t alone

fn build_with(yaml: &str, modules: wicket::config::Modules) -> wicket::build::Build {
    let mut cluster = wicket::cluster::Cluster::default();
    for o in wicket::source::manifest::parse(yaml, false)
        .unwrap()
        .objects
    {
        cluster.insert(o);
    }
    let mut c = wicket::certs::generate_default().unwrap();
    c.name = "default".into();
    let opts = wicket::build::Options {
        class: wicket::build::ClassOptions {
            watch_without_class: true,
            by_name: true,
            ..Default::default()
        },
        configmap: Some("b/settings".parse().unwrap()),
        modules,
        ..wicket::build::Options::new(80, 443, c)
    };
    wicket::build::build(&cluster, &opts)
}

/// `nginx -t` on a rendered config with its ModSecurity files.
fn nginx_t(b: &wicket::build::Build) -> String {
    let text = wicket::render::Renderer::embedded()
        .unwrap()
        .render(&b.config, &wicket::render::RenderEnv::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for d in ["certs", "tmp", "modsecurity", wicket::nginx::CONTROL_DIR] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    for c in &b.config.certificates {
        std::fs::write(
            dir.path().join(format!("certs/{}.crt", c.name)),
            &c.cert_pem,
        )
        .unwrap();
        std::fs::write(dir.path().join(format!("certs/{}.key", c.name)), &c.key_pem).unwrap();
    }
    for f in &b.config.modsecurity_files {
        std::fs::write(
            dir.path().join(format!("modsecurity/{}.conf", f.name)),
            &f.content,
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("nginx.conf"), &text).unwrap();
    let out = std::process::Command::new(nginx_binary())
        .current_dir(dir.path())
        .args(["-t", "-q", "-p"])
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -t refused the config: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

const BACKEND: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: b}\nspec: {ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: b, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}]\n";

fn every_annotation() -> String {
    format!(
        "{BACKEND}---\n{}---\n{}---\n{}",
        settings(
            "b",
            &[
                ("allow-snippet-annotations", "true"),
                ("modsecurity-snippet", "SecRequestBodyAccess On"),
            ]
        ),
        site(
            "b",
            "waf",
            "waf.test",
            "web",
            &[
                ("enable-modsecurity", "true"),
                ("enable-owasp-core-rules", "true"),
                ("modsecurity-transaction-id", "$request_id"),
                (
                    "modsecurity-snippet",
                    "SecRule ARGS:x \"@streq y\" \"id:1001,phase:1,deny\"",
                ),
            ],
        ),
        site("b", "plain", "plain.test", "web", &[]),
    )
}

#[test]
fn nginx_accepts_the_config_with_and_without_the_module() {
    let with = build_with(&every_annotation(), modules());
    let text = nginx_t(&with);
    // Parsed once, at the http level: the CRS is named once.
    assert_eq!(text.matches("wicket-crs.conf").count(), 1, "{text}");
    assert!(text.contains("ngx_http_modsecurity_module.so"));
    // The admin's rules first (a setting keeps its first value), then the
    // base, then the CRS.
    let http: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("    modsecurity_rules_file"))
        .collect();
    assert_eq!(http.len(), 3, "{http:?}");
    assert!(http[1].contains("wicket-base") && http[2].contains("wicket-crs"));

    let mut without = modules();
    without.modsecurity = false;
    let b = build_with(&every_annotation(), without);
    let text = nginx_t(&b);
    assert!(!text.contains("ngx_http_modsecurity_module.so"), "{text}");
    assert!(b.config.modsecurity_files.is_empty());
    let problems: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
    assert!(
        problems.iter().any(|p| p.contains("ingress b/waf")
            && p.contains("libnginx-mod-http-modsecurity")
            && p.contains("answer 503")),
        "{problems:#?}"
    );
}

#[test]
fn the_core_rules_without_their_package_fail_closed() {
    let mut m = modules();
    m.crs = false;
    let yaml = format!(
        "{BACKEND}---\n{}---\n{}",
        site(
            "b",
            "crs",
            "crs.test",
            "web",
            &[("enable-owasp-core-rules", "true")]
        ),
        site(
            "b",
            "detect",
            "detect.test",
            "web",
            &[("enable-modsecurity", "true")]
        ),
    );
    let b = build_with(&yaml, m);
    nginx_t(&b);
    let status = |host: &str| {
        let s = b
            .config
            .servers
            .iter()
            .find(|s| s.server_name == host)
            .unwrap();
        s.locations
            .iter()
            .find(|l| l.source.is_some())
            .map(|l| matches!(l.action, wicket::config::Action::Status { code: 503, .. }))
            .unwrap()
    };
    assert!(status("crs.test"), "the CRS is missing: 503");
    assert!(!status("detect.test"), "the neighbour is served");
    assert!(
        b.problems
            .iter()
            .any(|p| p.to_string().contains("modsecurity-crs"))
    );
}

#[test]
fn a_rule_id_of_the_global_rules_is_refused_in_an_ingress() {
    let yaml = format!(
        "{BACKEND}---\n{}---\n{}---\n{}",
        settings(
            "b",
            &[
                ("allow-snippet-annotations", "true"),
                (
                    "modsecurity-snippet",
                    "SecRule ARGS:a \"@streq b\" \"id:108,phase:1,deny\"",
                ),
            ]
        ),
        site(
            "b",
            "dup",
            "dup.test",
            "web",
            &[(
                "modsecurity-snippet",
                "SecRule ARGS:c \"@streq d\" \"id:108,phase:1,deny\"",
            )],
        ),
        site(
            "b",
            "plain",
            "plain.test",
            "web",
            &[("enable-modsecurity", "true")]
        ),
    );
    let b = build_with(&yaml, modules());
    nginx_t(&b);
    let problems: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("ingress b/dup") && p.contains("rule id 108")),
        "{problems:#?}"
    );
}

#[test]
fn keys_that_do_nothing_are_reported() {
    let yaml = format!(
        "{BACKEND}---\n{}---\n{}",
        site(
            "b",
            "tx",
            "tx.test",
            "web",
            &[("modsecurity-transaction-id", "$request_id")]
        ),
        site(
            "b",
            "off",
            "off.test",
            "web",
            &[
                ("enable-modsecurity", "false"),
                ("enable-owasp-core-rules", "true")
            ],
        ),
    );
    let b = build_with(&yaml, modules());
    let problems: Vec<String> = b.problems.iter().map(ToString::to_string).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("ingress b/tx") && p.contains("does nothing")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("ingress b/off") && p.contains("do nothing")),
        "{problems:#?}"
    );
    // Nothing turns ModSecurity on: the module is not loaded.
    assert!(b.config.modsecurity.is_none());
    let text = nginx_t(&b);
    assert!(!text.contains("ngx_http_modsecurity_module"), "{text}");
}
