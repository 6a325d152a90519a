//! Operating wicket: metrics, the inspection endpoints, reload logs.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;

/// `name{labels} value` lines of a Prometheus text exposition, and the
/// declared type of each metric family.
fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut values = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), ty.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, value) = line.rsplit_once(' ').unwrap();
            values.insert(name.to_string(), value.parse().unwrap());
        }
    }
    (values, types)
}

async fn scrape(w: &Wicket) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let a = w.admin_get("/metrics").await;
    assert_eq!(a.status, 200);
    parse(&a.text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_prometheus_names_and_types_and_move() {
    let e = Echo::start("web", Ipv4Addr::LOCALHOST, 0).await;
    let svc = service(
        "m",
        "web",
        80,
        None,
        e.addr.port(),
        &[(IpAddr::V4(Ipv4Addr::LOCALHOST), true)],
    );
    let bad = ingress(
        "m",
        "bad",
        "",
        "bad.example.com",
        &[("/x y", "Prefix", "web", 80)],
    );
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        (
            "a.yaml",
            &ingress("m", "a", "", "a.example.com", &[("/", "Prefix", "web", 80)]),
        ),
        ("bad.yaml", &bad),
    ])
    .await;
    let (v, types) = scrape(&w).await;
    for (family, ty) in [
        ("wicket_reloads", "counter"),
        ("wicket_last_reload_duration_seconds", "gauge"),
        ("wicket_last_reload_success_timestamp_seconds", "gauge"),
        ("wicket_config_info", "gauge"),
        ("wicket_rebuild_duration_seconds", "histogram"),
        ("wicket_ingresses_served", "gauge"),
        ("wicket_ingresses_rejected", "gauge"),
        ("wicket_objects", "gauge"),
        ("wicket_nginx_up", "gauge"),
        ("wicket_nginx_connections", "gauge"),
        ("wicket_nginx_connections_accepted", "counter"),
        ("wicket_nginx_requests", "counter"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(ty),
            "{family}: {types:?}"
        );
    }
    assert_eq!(v["wicket_reloads_total{result=\"success\"}"], 1.0);
    assert_eq!(v["wicket_ingresses_served"], 1.0);
    assert_eq!(v["wicket_ingresses_rejected{reason=\"invalid\"}"], 1.0);
    assert_eq!(v["wicket_objects{kind=\"Ingress\"}"], 2.0);
    assert_eq!(v["wicket_objects{kind=\"EndpointSlice\"}"], 1.0);
    assert_eq!(v["wicket_nginx_up"], 1.0);
    assert!(v["wicket_last_reload_duration_seconds"] > 0.0);
    let hash = v
        .keys()
        .find(|k| k.starts_with("wicket_config_info{hash="))
        .cloned()
        .unwrap();

    // Requests and a change move them.
    let requests = v["wicket_nginx_requests_total"];
    for _ in 0..5 {
        assert_eq!(w.get("a.example.com", "/").await.who(), "web");
    }
    w.write(
        "b.yaml",
        &ingress("m", "b", "", "b.example.com", &[("/", "Prefix", "web", 80)]),
    );
    w.eventually("b.example.com", "/", "served", |a| a.who() == "web")
        .await;
    let (v, _) = scrape(&w).await;
    assert!(v["wicket_nginx_requests_total"] >= requests + 5.0, "{v:?}");
    assert_eq!(v["wicket_reloads_total{result=\"success\"}"], 2.0);
    assert_eq!(v["wicket_ingresses_served"], 2.0);
    assert!(v["wicket_rebuild_duration_seconds_count"] >= 2.0);
    assert!(!v.contains_key(&hash), "the config hash changed: {v:?}");
    assert_eq!(
        v.keys()
            .filter(|k| k.starts_with("wicket_config_info{"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_endpoints_and_reload_logs() {
    let e = Echo::start("web", Ipv4Addr::LOCALHOST, 0).await;
    let svc = service(
        "i",
        "web",
        80,
        None,
        e.addr.port(),
        &[(IpAddr::V4(Ipv4Addr::LOCALHOST), true)],
    );
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            (
                "a.yaml",
                &ingress("i", "a", "", "a.example.com", &[("/", "Prefix", "web", 80)]),
            ),
        ],
        &["--admin-address", "0.0.0.0", "--log-format", "json"],
    )
    .await;
    // Every server and location says which Ingress and rule it came from.
    let config = w.inspect("/config").await.text;
    assert!(
        config.contains("    # host a.example.com\n    # ingress i/a spec.rules[0]\n    server {"),
        "{config}"
    );
    assert!(
        config.contains("        # ingress i/a spec.rules[0].http.paths[0]\n        location / {"),
        "{config}"
    );
    let candidate = w.inspect("/config/candidate").await.text;
    assert!(
        candidate.starts_with("# accepted by nginx -t and served\n"),
        "{candidate}"
    );
    let model: serde_json::Value = serde_json::from_str(&w.inspect("/model").await.text).unwrap();
    assert_eq!(model["servers"][0]["server_name"], "a.example.com");
    assert_eq!(model["servers"][0]["locations"][0]["source"]["name"], "a");
    assert!(
        model["certificates"][0].get("key_pem").is_none(),
        "keys are never shown"
    );

    // On the TCP port, from this machine or another: probes and metrics
    // yes, inspection no (it does not rest on the peer's address: nginx
    // itself connects from 127.0.0.1).
    for base in [
        format!("http://{}:{}", common::apiserver::host_ip(), w.admin),
        format!("http://127.0.0.1:{}", w.admin),
    ] {
        for (path, code) in [
            ("/healthz", 200),
            ("/readyz", 200),
            ("/metrics", 200),
            ("/config", 403),
            ("/config/candidate", 403),
            ("/model", 403),
        ] {
            let a = fetch(&w.client, &format!("{base}{path}")).await.unwrap();
            assert_eq!(a.status, code, "{base}{path}");
        }
    }
    // The socket is the state folder's, and only its owner's.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(w.state_dir().join("admin.sock"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // A change: one info line saying what changed, the diff at debug level.
    w.write(
        "b.yaml",
        &ingress("i", "b", "", "b.example.com", &[("/", "Prefix", "web", 80)]),
    );
    w.eventually("b.example.com", "/", "served", |a| a.who() == "web")
        .await;
    let deadline = Instant::now() + PATIENCE;
    let logs = loop {
        let logs = w.logs();
        if logs.contains("reloaded nginx") {
            break logs;
        }
        assert!(Instant::now() < deadline, "{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .skip_while(|l| !l.starts_with("--- wicket stderr"))
        .skip(1)
        .take_while(|l| !l.starts_with("--- wicket stdout"))
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let reload = lines
        .iter()
        .find(|l| l["fields"]["message"] == "reloaded nginx")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(reload["level"], "INFO");
    assert_eq!(reload["fields"]["changed"], "servers added: 1");
    for field in [
        "build_ms",
        "render_ms",
        "nginx_test_ms",
        "reload_ms",
        "total_ms",
    ] {
        assert!(reload["fields"][field].is_u64(), "{field}: {reload}");
    }
    let diff = lines
        .iter()
        .find(|l| {
            l["level"] == "DEBUG"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("config change:"))
        })
        .unwrap_or_else(|| panic!("no diff logged: {lines:?}"));
    let diff = diff["fields"]["message"].as_str().unwrap();
    assert!(
        diff.contains("+        server_name b.example.com;"),
        "{diff}"
    );
    assert!(diff.contains("--- nginx.conf (before)"), "{diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_nginx_refuses_is_shown_with_its_error() {
    // A template that breaks every config: nothing to quarantine, so nginx
    // never starts, and the candidate shows why.
    let templates = tempfile::tempdir().unwrap();
    let root =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/nginx.conf"))
            .unwrap();
    std::fs::write(
        templates.path().join("nginx.conf"),
        root.replace("sendfile on;", "sendfile on;\n    no_such_directive on;"),
    )
    .unwrap();
    let manifests = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let admin = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wicket"))
        .args(["serve", "--manifests"])
        .arg(manifests.path())
        .args([
            "--http-port",
            &free_port().to_string(),
            "--https-port",
            &free_port().to_string(),
        ])
        .args(["--admin-port", &admin.to_string(), "--templates"])
        .arg(templates.path())
        .arg("--state-dir")
        .arg(state.path().join("s"))
        .arg("--nginx-binary")
        .arg(nginx_binary())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{admin}{p}");
    let socket = state.path().join("s/admin.sock");
    let deadline = Instant::now() + PATIENCE;
    let candidate = loop {
        if let Ok(a) = unix_get(&socket, "/config/candidate").await
            && a.status == 200
        {
            break a.text;
        }
        assert!(Instant::now() < deadline, "no candidate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        candidate.starts_with("# refused by nginx -t: "),
        "{candidate}"
    );
    assert!(
        candidate
            .lines()
            .next()
            .unwrap()
            .contains("unknown directive \"no_such_directive\""),
        "{candidate}"
    );
    let ready = fetch(&c, &url("/readyz")).await.unwrap();
    assert_eq!(ready.status, 503);
    assert!(
        ready.text.contains("nginx -t refused the config"),
        "{}",
        ready.text
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_on_the_port_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let w = Wicket::start_with(&[], &["--inspection-token-file", token.to_str().unwrap()]).await;
    let url = format!("http://127.0.0.1:{}/config", w.admin);
    let with = |t: &str| {
        w.client
            .get(&url)
            .header("Authorization", format!("Bearer {t}"))
            .send()
    };
    assert_eq!(fetch(&w.client, &url).await.unwrap().status, 401);
    assert_eq!(with("wrong").await.unwrap().status().as_u16(), 401);
    assert_eq!(with("s3cret-tokenx").await.unwrap().status().as_u16(), 401);
    let ok = with("s3cret-token").await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert!(ok.text().await.unwrap().contains("server_name _;"));
    // A rotated token applies at once; the old one stops working.
    std::fs::write(&token, "rotated").unwrap();
    assert_eq!(with("s3cret-token").await.unwrap().status().as_u16(), 401);
    assert_eq!(with("rotated").await.unwrap().status().as_u16(), 200);
    // The socket needs no token.
    assert_eq!(w.inspect("/model").await.status, 200);
}
