//! Endpoint changes without a reload (`--dynamic-endpoints`, on by
//! default): `wicket serve` with the real nginx and its Lua module, echo
//! backends, EndpointSlice files rewritten while requests flow. "No
//! reload" is checked on nginx's processes: a reload starts new workers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;

const HOST: &str = "dyn.example.com";

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn svc(port: u16, endpoints: &[(Ipv4Addr, bool)]) -> String {
    let eps: Vec<(IpAddr, bool)> = endpoints.iter().map(|(i, r)| ((*i).into(), *r)).collect();
    service("dyn", "dyn", 80, Some("http"), port, &eps)
}

fn ing(paths: &[&str]) -> String {
    let p: Vec<(&str, &str, &str, u16)> = paths.iter().map(|p| (*p, "Prefix", "dyn", 80)).collect();
    ingress("dyn", "dyn", "", HOST, &p)
}

/// The processes of nginx's group (master and workers): a reload replaces
/// the workers.
fn nginx_processes(w: &Wicket) -> BTreeSet<i32> {
    let pid = w.nginx_pid().expect("nginx.pid");
    processes_in_group(pid).into_iter().collect()
}

/// Which endpoints (or statuses) answered `n` requests.
async fn answers(w: &Wicket, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let a = w.get(HOST, path).await;
        let key = match a.echo() {
            Some(e) if a.status == 200 => e["endpoint"].as_str().unwrap_or("?").to_string(),
            _ => format!("status {}", a.status),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// Polls until `n` requests in a row are answered by exactly `want`.
async fn until_answered_by(w: &Wicket, what: &str, want: &[String]) {
    let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = answers(w, "/", 24).await;
        if seen.keys().map(String::as_str).collect::<BTreeSet<_>>() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never answered by exactly {want:?}; last {seen:?}\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reloads(w: &Wicket) -> usize {
    w.logs().matches("reloaded nginx").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_reaches_nginx_without_a_reload() {
    let a = Echo::start("dyn", ip(21), 0).await;
    let port = a.addr.port();
    let b = Echo::start("dyn", ip(22), port).await;
    let c = Echo::start("dyn", ip(23), port).await;
    let (a_, b_, c_) = (a.addr.to_string(), b.addr.to_string(), c.addr.to_string());
    let w = Wicket::start(&[
        ("svc.yaml", &svc(port, &[(ip(21), true)])),
        ("ing.yaml", &ing(&["/"])),
    ])
    .await;
    until_answered_by(&w, "one endpoint", std::slice::from_ref(&a_)).await;
    let processes = nginx_processes(&w);
    assert!(processes.len() >= 2, "a master and workers: {processes:?}");

    // Scale up: every new endpoint gets requests.
    w.replace(
        "svc.yaml",
        &svc(port, &[(ip(21), true), (ip(22), true), (ip(23), true)]),
    );
    until_answered_by(&w, "three endpoints", &[a_.clone(), b_.clone(), c_.clone()]).await;

    // An endpoint that is not ready stops getting new requests.
    w.replace(
        "svc.yaml",
        &svc(port, &[(ip(21), true), (ip(22), false), (ip(23), true)]),
    );
    until_answered_by(&w, "b not ready", &[a_.clone(), c_.clone()]).await;
    let seen = answers(&w, "/", 40).await;
    assert!(!seen.contains_key(&b_), "{seen:?}");

    // None ready: 503; back: served, without a reload either way.
    w.replace("svc.yaml", &svc(port, &[(ip(21), false)]));
    until_answered_by(&w, "no ready endpoint", &["status 503".into()]).await;
    w.replace("svc.yaml", &svc(port, &[(ip(22), true)]));
    until_answered_by(&w, "b alone", std::slice::from_ref(&b_)).await;

    // An endpoint nothing listens on: its requests go to the next one.
    w.replace("svc.yaml", &svc(port, &[(ip(22), true), (ip(29), true)]));
    let deadline = Instant::now() + PATIENCE;
    while !w.inspect("/endpoints").await.text.contains("127.0.0.29") {
        assert!(Instant::now() < deadline, "never sent\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every worker applies updates within 0.1 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = answers(&w, "/", 30).await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec![&b_],
        "every request answered by b, the dead endpoint retried on the next: {seen:?}"
    );

    assert_eq!(
        nginx_processes(&w),
        processes,
        "the same nginx processes: no reload\n{}",
        w.logs()
    );
    assert_eq!(reloads(&w), 0, "{}", w.logs());
    assert!(w.logs().contains("updated endpoints without a reload"));
    let metrics = w.admin_get("/metrics").await.text;
    let updates = metrics
        .lines()
        .find(|l| l.starts_with("wicket_endpoint_updates_total{result=\"success\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(updates >= 5, "{metrics}");

    // /endpoints says what nginx uses now.
    let now = w.inspect("/endpoints").await;
    assert_eq!(now.status, 200, "{}", now.text);
    let v: serde_json::Value = serde_json::from_str(&now.text).unwrap();
    let up = &v["upstreams"][0];
    assert_eq!(up["source"], "update", "{v}");
    assert_eq!(
        up["endpoints"],
        serde_json::json!([b_, "127.0.0.29:".to_string() + &port.to_string()]),
        "{v}"
    );
    // The file nginx would load next has them too.
    let conf = std::fs::read_to_string(w.state_dir().join("nginx.conf")).unwrap();
    assert!(
        conf.contains(&format!("server 127.0.0.29:{port};")),
        "{conf}"
    );

    // An Ingress change still reloads, and keeps the endpoints.
    w.replace("ing.yaml", &ing(&["/", "/two"]));
    let deadline = Instant::now() + PATIENCE;
    while reloads(&w) == 0 {
        assert!(Instant::now() < deadline, "never reloaded\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reloads(&w), 1, "{}", w.logs());
    assert_ne!(nginx_processes(&w), processes, "new workers");
    let seen = answers(&w, "/", 30).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec![&b_], "{seen:?}");
    drop((a, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nginx_starts_with_the_endpoints_it_was_sent() {
    let a = Echo::start("dyn", ip(31), 0).await;
    let port = a.addr.port();
    let b = Echo::start("dyn", ip(32), port).await;
    let b_ = b.addr.to_string();
    let w = Wicket::start(&[
        ("svc.yaml", &svc(port, &[(ip(31), true)])),
        ("ing.yaml", &ing(&["/"])),
    ])
    .await;
    until_answered_by(&w, "a", &[a.addr.to_string()]).await;
    w.replace("svc.yaml", &svc(port, &[(ip(32), true)]));
    until_answered_by(&w, "b", std::slice::from_ref(&b_)).await;
    assert_eq!(reloads(&w), 0, "{}", w.logs());
    // Nothing answers at a's address any more: a request sent there fails.
    drop(a);

    let pid = w.nginx_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Every answer from the new nginx, from its first, is b's.
    let deadline = Instant::now() + PATIENCE;
    let mut answered = 0;
    while answered < 30 {
        assert!(
            Instant::now() < deadline,
            "nginx never came back\n{}",
            w.logs()
        );
        if w.nginx_pid().is_none_or(|p| p == pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let Ok(got) = fetch(&w.client, &w.url(HOST, "/")).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let who = got.echo().map(|e| e["endpoint"].to_string());
        assert_eq!(
            (got.status, who),
            (200, Some(format!("\"{b_}\""))),
            "answer {answered} after the restart\n{}",
            w.logs()
        );
        answered += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_endpoint_updates_are_refused_and_change_nothing() {
    let a = Echo::start("dyn", ip(41), 0).await;
    let port = a.addr.port();
    let a_ = a.addr.to_string();
    let w = Wicket::start(&[
        ("svc.yaml", &svc(port, &[(ip(41), true)])),
        ("ing.yaml", &ing(&["/"])),
    ])
    .await;
    until_answered_by(&w, "a", std::slice::from_ref(&a_)).await;
    let socket = w.state_dir().join(wicket::nginx::STATUS_SOCKET);
    // Only wicket's user reaches the socket that takes updates.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(w.state_dir().join(wicket::nginx::CONTROL_DIR))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    let report = || async {
        let r = unix_get(&socket, "/wicket/endpoints").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        r.text
    };
    let before = report().await;
    let generation: u64 = before
        .split_whitespace()
        .nth(1)
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("{before}"));
    let conf = std::fs::read_to_string(w.state_dir().join("nginx.conf")).unwrap();
    let upstream = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("upstream ")?.strip_suffix(" {"))
        .expect("an upstream")
        .to_string();
    let g = generation;
    let bad = [
        ("no header", format!("{upstream} 127.0.0.1:80\n"), "400"),
        (
            "another generation",
            format!("wicket-endpoints {}\n{upstream} 127.0.0.1:80\n", g + 1),
            "409",
        ),
        ("no upstream", format!("wicket-endpoints {g}\n"), "400"),
        (
            "a name with a quote",
            format!("wicket-endpoints {g}\nx\") os.exit() (\" 127.0.0.1:80\n"),
            "400",
        ),
        (
            "a directive",
            format!("wicket-endpoints {g}\n{upstream} 127.0.0.1:80; 127.0.0.2:80\n"),
            "400",
        ),
        (
            "an octet above 255",
            format!("wicket-endpoints {g}\n{upstream} 127.0.0.256:80\n"),
            "400",
        ),
        (
            "port 0",
            format!("wicket-endpoints {g}\n{upstream} 127.0.0.1:0\n"),
            "400",
        ),
        (
            "a port above 65535",
            format!("wicket-endpoints {g}\n{upstream} 127.0.0.1:65536\n"),
            "400",
        ),
        (
            "a name for an address",
            format!("wicket-endpoints {g}\n{upstream} evil.example.com:80\n"),
            "400",
        ),
        (
            "a unix socket",
            format!("wicket-endpoints {g}\n{upstream} unix:/tmp/x.sock\n"),
            "400",
        ),
        (
            "IPv6 without brackets",
            format!("wicket-endpoints {g}\n{upstream} ::1:80\n"),
            "400",
        ),
        // The good line first: nothing is applied when a later one is bad.
        (
            "a bad second line",
            format!("wicket-endpoints {g}\n{upstream} 127.0.0.9:{port}\n{upstream} 1.2.3:80\n"),
            "400",
        ),
    ];
    for (what, body, code) in bad {
        let r = wicket::nginx::post_status(&socket, "/wicket/endpoints", &body).await;
        match r {
            Err(e) => assert!(e.starts_with(code), "{what}: {e}"),
            Ok(ok) => panic!("{what}: taken ({ok})"),
        }
    }
    assert_eq!(report().await, before, "no update was applied");
    let seen = answers(&w, "/", 20).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec![&a_], "{seen:?}");

    // A well-formed update is taken (what wicket itself sends).
    let ok = wicket::nginx::post_status(
        &socket,
        "/wicket/endpoints",
        &format!("wicket-endpoints {g}\n{upstream} {a_} [::1]:{port}\n"),
    )
    .await
    .unwrap();
    assert!(ok.starts_with("version 1"), "{ok}");
    assert!(
        report()
            .await
            .contains(&format!("{upstream} {a_} [::1]:{port}"))
    );
}
