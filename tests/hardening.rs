//! Operating hazards, through `wicket serve` and the real nginx: the nginx
//! master dying in the middle of a reload, large responses to slow
//! clients, manifests that are symlinks.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

async fn web(ns: &str) -> (Echo, String) {
    let e = Echo::start("web", LO, 0).await;
    let svc = service(
        ns,
        "web",
        80,
        None,
        e.addr.port(),
        &[(IpAddr::V4(LO), true)],
    );
    (e, svc)
}

/// The master is frozen when wicket sends the reload, then killed: its
/// workers go with it (they would keep the ports and serve the old config,
/// and every start after would fail to bind), nginx starts again with the
/// new config, and wicket is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_killed_during_a_reload_leaves_no_worker_and_the_new_config_serves() {
    let (_e, svc) = web("k").await;
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        (
            "a.yaml",
            &ingress("k", "a", "", "a.test", &[("/", "Prefix", "web", 80)]),
        ),
    ])
    .await;
    assert_eq!(w.get("a.test", "/").await.who(), "web");
    let master = w.nginx_pid().expect("nginx runs");
    assert!(processes_in_group(master).len() > 1, "master and workers");

    kill(Pid::from_raw(master), Signal::SIGSTOP).unwrap();
    w.write(
        "b.yaml",
        &ingress("k", "b", "", "b.test", &[("/", "Prefix", "web", 80)]),
    );
    // nginx -t passes and the reload is sent; the frozen master cannot act.
    let deadline = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(w.state_dir().join("nginx.conf"))
        .unwrap()
        .contains("server_name b.test;")
    {
        assert!(Instant::now() < deadline, "never tried\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(Pid::from_raw(master), Signal::SIGKILL).unwrap();

    w.eventually("b.test", "/", "served by the new config", |a| {
        a.who() == "web"
    })
    .await;
    assert_eq!(w.get("a.test", "/").await.who(), "web");
    let deadline = Instant::now() + PATIENCE;
    while !processes_in_group(master).is_empty() {
        assert!(
            Instant::now() < deadline,
            "workers of the dead master are left: {:?}\n{}",
            processes_in_group(master),
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_master = w.nginx_pid().expect("nginx runs again");
    assert_ne!(new_master, master);
    let deadline = Instant::now() + PATIENCE;
    while w.admin_get("/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "not ready again\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stopping wicket leaves no nginx process behind, even when the master
/// does not go quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_nginx_process_outlives_wicket() {
    let (_e, svc) = web("s").await;
    let mut w = Wicket::start(&[("svc.yaml", &svc)]).await;
    let master = w.nginx_pid().expect("nginx runs");
    assert!(w.stop().success());
    let deadline = Instant::now() + PATIENCE;
    while !processes_in_group(master).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            processes_in_group(master)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A large response to a client that reads slowly is buffered on disk up
/// to `proxy-max-temp-file-size`, in the folder of `--temp-dir`, and still
/// arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_download_is_bounded_in_the_temp_folder() {
    let (_e, svc) = web("t").await;
    // Buffering on (ingress-nginx's default is off), so nginx does buffer.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: t}\ndata: {proxy-max-temp-file-size: 2m, proxy-buffering: \"on\"}\n";
    let temp = tempfile::tempdir().unwrap();
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            ("cm.yaml", cm),
            (
                "a.yaml",
                &ingress("t", "a", "", "big.test", &[("/", "Prefix", "web", 80)]),
            ),
        ],
        &[
            "--configmap",
            "t/settings",
            "--temp-dir",
            temp.path().to_str().unwrap(),
        ],
    )
    .await;
    let config = w.inspect("/config").await.text;
    assert!(config.contains("proxy_max_temp_file_size 2m;"), "{config}");
    let size: usize = 64 << 20;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", w.http))
        .await
        .unwrap();
    s.write_all(
        format!("GET /bytes/{size} HTTP/1.1\r\nHost: big.test\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The client reads nothing for a while: nginx buffers what it can, in
    // temporary files it unlinks at once (so they are counted open).
    let master = w.nginx_pid().expect("nginx runs");
    let mut largest = 0;
    for _ in 0..30 {
        largest = largest.max(open_bytes_under(master, temp.path()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        largest <= 3 << 20,
        "{largest} bytes buffered on disk for one response"
    );
    assert!(
        largest >= 1 << 20,
        "nothing was buffered on disk ({largest} bytes)"
    );
    assert_eq!(
        open_bytes_under(master, &w.state_dir()),
        0,
        "the state folder holds no body"
    );
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, size, "the whole body arrived");
}

/// A manifest that is a symlink: editing its target is a change, although
/// the target is not in the watched folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_symlinked_manifest_is_a_change() {
    let (_e, svc) = web("l").await;
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("site.yaml");
    std::fs::write(
        &target,
        ingress("l", "site", "", "one.test", &[("/", "Prefix", "web", 80)]),
    )
    .unwrap();
    let w = Wicket::start(&[("svc.yaml", &svc)]).await;
    std::os::unix::fs::symlink(&target, w.path("site.yaml")).unwrap();
    w.eventually("one.test", "/", "served", |a| a.who() == "web")
        .await;
    // Edited in place, where wicket does not watch.
    std::fs::write(
        &target,
        ingress("l", "site", "", "two.test", &[("/", "Prefix", "web", 80)]),
    )
    .unwrap();
    w.eventually("two.test", "/", "served after the edit", |a| {
        a.who() == "web"
    })
    .await;
    assert_eq!(w.get("one.test", "/").await.status, 404);
}
