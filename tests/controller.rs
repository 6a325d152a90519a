//! `wicket controller` against a real kube-apiserver (see
//! `tests/common/apiserver.rs`), running with exactly
//! the RBAC the Helm chart renders (`charts/wicket/templates/rbac.yaml`); assertions are real objects and real HTTP through
//! nginx.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::apiserver::*;
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams};

const CLASS: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: wicket}\nspec: {controller: wicket.dev/ingress-controller}\n";

struct Setup {
    api: ApiServer,
    admin: kube::Client,
    ip: Ipv4Addr,
    kubeconfig: PathBuf,
}

async fn setup(namespaces: &[&str]) -> Setup {
    let api = ApiServer::start().await;
    let admin = api.admin().await;
    namespace(&admin, "wicket").await;
    for ns in namespaces {
        namespace(&admin, ns).await;
    }
    // The RBAC the Helm chart renders (ServiceAccount wicket in wicket).
    apply(&admin, &common::chart::rbac()).await;
    apply(&admin, CLASS).await;
    // The controller's token is bound only to the role above.
    let restricted = api.client(CONTROLLER_TOKEN).await;
    let denied = Api::<Pod>::all(restricted)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{denied:?}"
    );
    let kubeconfig = api.kubeconfig(CONTROLLER_TOKEN);
    Setup {
        api,
        admin,
        ip: host_ip(),
        kubeconfig,
    }
}

fn args<'a>(identity: &'a str, address: &'a str) -> Vec<&'a str> {
    vec![
        "--namespace",
        "wicket",
        "--identity",
        identity,
        "--publish-status-address",
        address,
        "--debounce-ms",
        "20",
        "--min-interval-ms",
        "50",
    ]
}

/// A Service and its EndpointSlice, pointing at an echo backend.
fn backend(ns: &str, name: &str, ip: Ipv4Addr, port: u16, ready: bool) -> String {
    service(ns, name, 80, None, port, &[(IpAddr::V4(ip), ready)])
}

fn ingress_yaml(ns: &str, name: &str, class: &str, host: &str, paths: &[(&str, &str)]) -> String {
    let p: Vec<(&str, &str, &str, u16)> = paths
        .iter()
        .map(|(path, svc)| (*path, "Prefix", *svc, 80))
        .collect();
    ingress(ns, name, "", host, &p)
        .replace("spec:\n", &format!("spec:\n  ingressClassName: {class}\n"))
}

async fn status_of(admin: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    let ing = Api::<Ingress>::namespaced(admin.clone(), ns)
        .get(name)
        .await
        .unwrap();
    ing.status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip.or(i.hostname))
        .collect()
}

async fn events_for(admin: &kube::Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    Api::<KubeEvent>::namespaced(admin.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_status_and_events_follow_the_api() {
    let s = setup(&["shop"]).await;
    let web = Echo::start("web", s.ip, 0).await;
    let api_echo = Echo::start("api", s.ip, 0).await;
    apply(
        &s.admin,
        &backend("shop", "web", s.ip, web.addr.port(), true),
    )
    .await;
    apply(
        &s.admin,
        &backend("shop", "api", s.ip, api_echo.addr.port(), true),
    )
    .await;
    apply(
        &s.admin,
        &ingress_yaml("shop", "shop", "wicket", "a.example.com", &[("/", "web")]),
    )
    .await;

    let w = Wicket::controller(&s.kubeconfig, &args("replica-a", "203.0.113.7")).await;
    w.eventually("a.example.com", "/", "served from the API", |a| {
        a.who() == "web"
    })
    .await;
    eventually("status published", || async {
        (status_of(&s.admin, "shop", "shop").await == ["203.0.113.7"]).then_some(())
    })
    .await;
    eventually("an Accepted event", || async {
        events_for(&s.admin, "shop", "shop")
            .await
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "Accepted")
            .then_some(())
    })
    .await;

    // Update: a new path to another Service.
    apply(
        &s.admin,
        &ingress_yaml(
            "shop",
            "shop",
            "wicket",
            "a.example.com",
            &[("/", "web"), ("/v2", "api")],
        ),
    )
    .await;
    w.eventually("a.example.com", "/v2/x", "routed to api", |a| {
        a.who() == "api"
    })
    .await;

    // Endpoint churn: not ready means 503, ready again means served.
    apply(
        &s.admin,
        &backend("shop", "api", s.ip, api_echo.addr.port(), false),
    )
    .await;
    w.eventually("a.example.com", "/v2", "503 without ready endpoints", |a| {
        a.status == 503
    })
    .await;
    apply(
        &s.admin,
        &backend("shop", "api", s.ip, api_echo.addr.port(), true),
    )
    .await;
    w.eventually("a.example.com", "/v2", "served again", |a| a.who() == "api")
        .await;

    // Every IngressClass of our controller is served, whatever its name,
    // with its status; one of another controller is left alone.
    apply(
        &s.admin,
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: internal}\nspec: {controller: wicket.dev/ingress-controller}\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: other}\nspec: {controller: example.com/other}\n",
    )
    .await;
    apply(
        &s.admin,
        &ingress_yaml(
            "shop",
            "internal",
            "internal",
            "b.example.com",
            &[("/", "api")],
        ),
    )
    .await;
    apply(
        &s.admin,
        &ingress_yaml("shop", "foreign", "other", "c.example.com", &[("/", "api")]),
    )
    .await;
    w.eventually("b.example.com", "/", "a second class of ours served", |a| {
        a.who() == "api"
    })
    .await;
    assert_eq!(w.get("a.example.com", "/").await.who(), "web");
    eventually("status of the second class published", || async {
        (status_of(&s.admin, "shop", "internal").await == ["203.0.113.7"]).then_some(())
    })
    .await;
    assert_eq!(w.get("c.example.com", "/").await.status, 404);
    assert!(status_of(&s.admin, "shop", "foreign").await.is_empty());
    // A class without its IngressClass object is nobody's in controller
    // mode (no --ingress-class-by-name).
    apply(
        &s.admin,
        &ingress_yaml("shop", "ghost", "ghost", "d.example.com", &[("/", "api")]),
    )
    .await;

    // Another class: no longer ours, so the route goes and the status is cleared.
    apply(
        &s.admin,
        &ingress_yaml("shop", "shop", "other", "a.example.com", &[("/", "web")]),
    )
    .await;
    w.eventually("a.example.com", "/", "dropped", |a| a.status == 404)
        .await;
    eventually("status cleared", || async {
        status_of(&s.admin, "shop", "shop")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(w.get("d.example.com", "/").await.status, 404);
    assert!(status_of(&s.admin, "shop", "ghost").await.is_empty());
    assert!(status_of(&s.admin, "shop", "foreign").await.is_empty());

    // Only Secrets a served Ingress references reach the disk.
    let (cert, key) = cert_for(&["a.example.com"]);
    apply(&s.admin, &tls_secret("shop", "unused", &cert, &key)).await;
    apply(&s.admin, &tls_secret("shop", "used", &cert, &key)).await;
    let tls = ingress_yaml("shop", "tls", "wicket", "a.example.com", &[("/tls", "web")]).replace(
        "spec:\n",
        "spec:\n  tls:\n  - {hosts: [a.example.com], secretName: used}\n",
    );
    apply(&s.admin, &tls).await;
    let a = eventually("the Secret's certificate served", || async {
        fetch(&tls_client(&[&cert]), &w.https_url("a.example.com", "/tls"))
            .await
            .ok()
    })
    .await;
    assert_eq!(a.who(), "web");
    let mut files: Vec<String> = std::fs::read_dir(w.state_dir().join("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        4,
        "the default pair and the used Secret's pair: {files:?}"
    );
    assert!(files.contains(&"default.key".to_string()), "{files:?}");
    assert!(
        !w.logs().contains("PRIVATE KEY"),
        "no key material in the logs"
    );

    // Deleted: its route disappears.
    apply(
        &s.admin,
        &ingress_yaml(
            "shop",
            "gone",
            "wicket",
            "gone.example.com",
            &[("/", "web")],
        ),
    )
    .await;
    w.eventually("gone.example.com", "/", "served", |a| a.who() == "web")
        .await;
    Api::<Ingress>::namespaced(s.admin.clone(), "shop")
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    w.eventually("gone.example.com", "/", "gone", |a| a.status == 404)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_ingress_gets_an_event_and_the_others_stay_served() {
    let s = setup(&["app"]).await;
    let web = Echo::start("web", s.ip, 0).await;
    apply(
        &s.admin,
        &backend("app", "web", s.ip, web.addr.port(), true),
    )
    .await;
    apply(
        &s.admin,
        &ingress_yaml("app", "good", "wicket", "good.example.com", &[("/", "web")]),
    )
    .await;
    let bad = ingress_yaml("app", "bad", "wicket", "bad.example.com", &[("/", "web")]).replace(
        "metadata:\n",
        "metadata:\n  annotations: {nginx.ingress.kubernetes.io/rewrite-target: \"/$host\"}\n",
    );
    apply(&s.admin, &bad).await;

    let w = Wicket::controller(&s.kubeconfig, &args("replica-a", "203.0.113.7")).await;
    w.eventually("good.example.com", "/", "served", |a| a.who() == "web")
        .await;
    assert_eq!(w.get("bad.example.com", "/").await.status, 404);
    let (_, _, note) = eventually("a Rejected event", || async {
        events_for(&s.admin, "app", "bad")
            .await
            .into_iter()
            .find(|(t, r, _)| t == "Warning" && r == "Rejected")
    })
    .await;
    assert!(
        note.contains("rewrite-target") && note.contains("may only start a capture reference"),
        "{note}"
    );
    assert!(status_of(&s.admin, "app", "bad").await.is_empty());
    eventually("status on the good one", || async {
        (status_of(&s.admin, "app", "good").await == ["203.0.113.7"]).then_some(())
    })
    .await;

    // Fixed: served, and told so.
    apply(&s.admin, &bad.replace("/$host", "/")).await;
    w.eventually("bad.example.com", "/", "served once fixed", |a| {
        a.who() == "web"
    })
    .await;
    eventually("an Accepted event after the fix", || async {
        events_for(&s.admin, "app", "bad")
            .await
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "Accepted")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_serving_while_the_api_server_is_down_and_catches_up() {
    let mut s = setup(&["rs"]).await;
    let web = Echo::start("web", s.ip, 0).await;
    apply(&s.admin, &backend("rs", "web", s.ip, web.addr.port(), true)).await;
    apply(
        &s.admin,
        &ingress_yaml("rs", "one", "wicket", "one.example.com", &[("/", "web")]),
    )
    .await;
    let w = Wicket::controller(&s.kubeconfig, &args("replica-a", "203.0.113.7")).await;
    w.eventually("one.example.com", "/", "served", |a| a.who() == "web")
        .await;

    // Steady requests the whole time; none may fail.
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (failures, sent, stop) = (failures.clone(), sent.clone(), stop.clone());
        let client = client();
        let url = w.url("one.example.com", "/");
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = fetch_idempotent(&client, &url)
                    .await
                    .0
                    .is_ok_and(|a| a.who() == "web");
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    s.api.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        w.admin_get("/readyz").await.status,
        200,
        "still ready: nginx serves the last good config"
    );
    s.api.start_apiserver().await;
    let admin = s.api.admin().await;
    apply(
        &admin,
        &ingress_yaml("rs", "two", "wicket", "two.example.com", &[("/", "web")]),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if w.get("two.example.com", "/").await.who() == "web" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change made after the restart was never served\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (sent, failed) = (
        sent.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    assert!(sent > 100, "{sent}");
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} requests failed\n{}",
        w.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_but_only_the_leader_writes_status() {
    let s = setup(&["ha"]).await;
    let web = Echo::start("web", s.ip, 0).await;
    apply(&s.admin, &backend("ha", "web", s.ip, web.addr.port(), true)).await;
    apply(
        &s.admin,
        &ingress_yaml("ha", "ha", "wicket", "ha.example.com", &[("/", "web")]),
    )
    .await;

    let a = Wicket::controller(&s.kubeconfig, &args("replica-a", "203.0.113.1")).await;
    let b = Wicket::controller(&s.kubeconfig, &args("replica-b", "203.0.113.2")).await;
    for w in [&a, &b] {
        w.eventually("ha.example.com", "/", "served by every replica", |x| {
            x.who() == "web"
        })
        .await;
    }
    let leases: Api<Lease> = Api::namespaced(s.admin.clone(), "wicket");
    let holder = || async {
        leases
            .get_opt("wicket-leader")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
    };
    let first = eventually("a leader", || async { holder().await }).await;
    let (leader_addr, other_addr) = if first == "replica-a" {
        ("203.0.113.1", "203.0.113.2")
    } else {
        ("203.0.113.2", "203.0.113.1")
    };
    eventually("the leader's status", || async {
        (status_of(&s.admin, "ha", "ha").await == [leader_addr]).then_some(())
    })
    .await;
    // The other replica never overwrites it.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status_of(&s.admin, "ha", "ha").await, [leader_addr]);
        assert_eq!(holder().await.as_deref(), Some(first.as_str()));
    }

    // The leader stops: the other takes over and writes its address.
    let (mut leader, follower) = if first == "replica-a" { (a, b) } else { (b, a) };
    assert!(leader.stop().success());
    let second = eventually("the other replica leads", || async {
        holder().await.filter(|h| *h != first)
    })
    .await;
    assert_ne!(second, first);
    eventually("the new leader's status", || async {
        (status_of(&s.admin, "ha", "ha").await == [other_addr]).then_some(())
    })
    .await;
    follower
        .eventually("ha.example.com", "/", "still served", |x| x.who() == "web")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_service_addresses_and_watch_namespace() {
    let s = setup(&["mine", "other"]).await;
    let web = Echo::start("web", s.ip, 0).await;
    for ns in ["mine", "other"] {
        apply(&s.admin, &backend(ns, "web", s.ip, web.addr.port(), true)).await;
        apply(
            &s.admin,
            &ingress_yaml(
                ns,
                "site",
                "wicket",
                &format!("{ns}.example.com"),
                &[("/", "web")],
            ),
        )
        .await;
    }
    let publish = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: edge, namespace: mine}}\nspec:\n  ports: [{{port: 80}}]\n  externalIPs: [{ip}]\n"
        )
    };
    apply(&s.admin, &publish("198.51.100.9")).await;
    let w = Wicket::controller(
        &s.kubeconfig,
        &[
            "--namespace",
            "wicket",
            "--identity",
            "only",
            "--watch-namespace",
            "mine",
            "--publish-service",
            "mine/edge",
            "--debounce-ms",
            "20",
        ],
    )
    .await;
    w.eventually("mine.example.com", "/", "served", |a| a.who() == "web")
        .await;
    assert_eq!(
        w.get("other.example.com", "/").await.status,
        404,
        "other namespaces are not watched"
    );
    eventually("the publish Service's address", || async {
        (status_of(&s.admin, "mine", "site").await == ["198.51.100.9"]).then_some(())
    })
    .await;
    // The Service's address changes: so does the status.
    apply(&s.admin, &publish("198.51.100.10")).await;
    eventually("the new address", || async {
        (status_of(&s.admin, "mine", "site").await == ["198.51.100.10"]).then_some(())
    })
    .await;
    assert!(status_of(&s.admin, "other", "site").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_against_the_cluster_prints_what_the_controller_would_serve() {
    let s = setup(&["rn"]).await;
    apply(&s.admin, &backend("rn", "web", s.ip, 8080, true)).await;
    apply(
        &s.admin,
        &ingress_yaml(
            "rn",
            "site",
            "wicket",
            "render.example.com",
            &[("/", "web")],
        ),
    )
    .await;
    apply(
        &s.admin,
        &ingress_yaml(
            "rn",
            "theirs",
            "nginx",
            "theirs.example.com",
            &[("/", "web")],
        ),
    )
    .await;
    let kubeconfig = s.kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wicket"))
            .arg("render")
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("server_name render.example.com;"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("server {}:8080;", s.ip)),
        "{stdout}"
    );
    assert!(!stdout.contains("theirs.example.com"), "{stdout}");

    // `wicket check` reads the same objects with the same access.
    apply(
        &s.admin,
        &ingress_yaml("rn", "cors", "wicket", "cors.example.com", &[("/", "web")]).replace(
            "metadata:",
            "metadata:\n  annotations: {nginx.ingress.kubernetes.io/enable-opentelemetry: \"true\"}",
        ),
    )
    .await;
    let kubeconfig = s.kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wicket"))
            .args(["check", "--output", "json"])
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unsupported annotation: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let verdicts: Vec<(String, bool, Vec<String>)> = report["ingresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["accepted"].as_bool().unwrap(),
                i["annotations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {}",
                            a["key"].as_str().unwrap(),
                            a["support"].as_str().unwrap()
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![
            (
                "cors".to_string(),
                true,
                vec!["nginx.ingress.kubernetes.io/enable-opentelemetry unsupported".to_string()]
            ),
            ("site".to_string(), true, vec![]),
            ("theirs".to_string(), false, vec![]),
        ]
    );
}

/// `wicket_leader` as the replica's metrics say it.
async fn leads(w: &Wicket) -> Option<bool> {
    let m = w.admin_get("/metrics").await.text;
    m.lines()
        .find_map(|l| l.strip_prefix("wicket_leader "))
        .map(|v| v.trim() == "1")
}

/// An API server that stops answering (frozen, its connections open): the
/// leader's renewals run out of time and it steps down within its renew
/// deadline, before the Lease expires and another replica may take over;
/// nginx keeps serving; when the API server answers again it leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_steps_down_when_the_api_server_stops_answering() {
    let s = setup(&["ls"]).await;
    let web = Echo::start("web", s.ip, 0).await;
    apply(&s.admin, &backend("ls", "web", s.ip, web.addr.port(), true)).await;
    apply(
        &s.admin,
        &ingress_yaml("ls", "one", "wicket", "one.example.com", &[("/", "web")]),
    )
    .await;
    let w = Wicket::controller(&s.kubeconfig, &args("replica-a", "203.0.113.7")).await;
    w.eventually("one.example.com", "/", "served", |a| a.who() == "web")
        .await;
    eventually("leading", || async {
        (leads(&w).await == Some(true)).then_some(())
    })
    .await;

    s.api.pause_apiserver();
    let paused = Instant::now();
    // The Lease lasts 15 s from the last renewal, which was at most 2 s
    // before the pause: stepping down after that would be too late.
    while leads(&w).await != Some(false) {
        assert!(
            paused.elapsed() < Duration::from_secs(14),
            "still the leader {:?} after the API server stopped answering\n{}",
            paused.elapsed(),
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(w.logs().contains("stepping down"), "{}", w.logs());
    assert_eq!(w.get("one.example.com", "/").await.who(), "web");
    s.api.resume_apiserver();
    eventually("leading again", || async {
        (leads(&w).await == Some(true)).then_some(())
    })
    .await;
}

/// Status and Events say what nginx serves: with the config unwritable, a
/// new Ingress gets no address and no `Accepted`, but one `ReloadFailed`
/// however many rebuilds fail; once writes work again it is served, with
/// its address and an `Accepted`. An Ingress deleted and created again the
/// same is announced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_events_only_for_what_nginx_serves() {
    let s = setup(&["sf"]).await;
    let web = Echo::start("web", s.ip, 0).await;
    apply(&s.admin, &backend("sf", "web", s.ip, web.addr.port(), true)).await;
    apply(
        &s.admin,
        &ingress_yaml("sf", "old", "wicket", "old.example.com", &[("/", "web")]),
    )
    .await;
    let w = Wicket::controller(&s.kubeconfig, &args("only", "203.0.113.8")).await;
    w.eventually("old.example.com", "/", "served", |a| a.who() == "web")
        .await;
    eventually("old's status", || async {
        (status_of(&s.admin, "sf", "old").await == ["203.0.113.8"]).then_some(())
    })
    .await;

    // Writing the config now fails (even as root: the temporary file's
    // name is taken by a folder).
    let blocker = w.state_dir().join("nginx.conf.tmp");
    std::fs::create_dir(&blocker).unwrap();
    apply(
        &s.admin,
        &ingress_yaml("sf", "new", "wicket", "new.example.com", &[("/", "web")]),
    )
    .await;
    eventually("a ReloadFailed Event", || async {
        events_for(&s.admin, "sf", "new")
            .await
            .iter()
            .any(|e| e.1 == "ReloadFailed")
            .then_some(())
    })
    .await;
    // Endpoint churn: new configs, each failing the same way.
    for i in 1..=6 {
        apply(
            &s.admin,
            &backend("sf", "web", s.ip, web.addr.port(), i % 2 == 0),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(w.get("new.example.com", "/").await.status, 404);
    assert!(status_of(&s.admin, "sf", "new").await.is_empty());
    let events = events_for(&s.admin, "sf", "new").await;
    let reasons: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(reasons, ["ReloadFailed"], "{events:?}");
    // The Ingress nginx serves keeps its address and is not blamed.
    assert_eq!(status_of(&s.admin, "sf", "old").await, ["203.0.113.8"]);
    assert!(
        !events_for(&s.admin, "sf", "old")
            .await
            .iter()
            .any(|e| e.1 == "ReloadFailed")
    );

    // Writes work again: the retry applies the config.
    std::fs::remove_dir(&blocker).unwrap();
    w.eventually("new.example.com", "/", "served", |a| a.who() == "web")
        .await;
    eventually("new's status", || async {
        (status_of(&s.admin, "sf", "new").await == ["203.0.113.8"]).then_some(())
    })
    .await;
    eventually("an Accepted Event", || async {
        events_for(&s.admin, "sf", "new")
            .await
            .iter()
            .any(|e| e.1 == "Accepted")
            .then_some(())
    })
    .await;

    // Deleted and created again, the same: announced again.
    let api: Api<Ingress> = Api::namespaced(s.admin.clone(), "sf");
    api.delete("old", &DeleteParams::default()).await.unwrap();
    w.eventually("old.example.com", "/", "gone", |a| a.status == 404)
        .await;
    let before = events_for(&s.admin, "sf", "old")
        .await
        .iter()
        .filter(|e| e.1 == "Accepted")
        .count();
    apply(
        &s.admin,
        &ingress_yaml("sf", "old", "wicket", "old.example.com", &[("/", "web")]),
    )
    .await;
    eventually("Accepted again", || async {
        (events_for(&s.admin, "sf", "old")
            .await
            .iter()
            .filter(|e| e.1 == "Accepted")
            .count()
            > before)
            .then_some(())
    })
    .await;
}

/// `--watch-namespace` with the publish Service in another namespace (the
/// chart's own namespace): its addresses are published; when it goes away
/// the status is left as it is, not cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_service_outside_the_watched_namespace() {
    let s = setup(&["app"]).await;
    let web = Echo::start("web", s.ip, 0).await;
    apply(
        &s.admin,
        &backend("app", "web", s.ip, web.addr.port(), true),
    )
    .await;
    apply(
        &s.admin,
        &ingress_yaml("app", "site", "wicket", "app.example.com", &[("/", "web")]),
    )
    .await;
    apply(
        &s.admin,
        "apiVersion: v1\nkind: Service\nmetadata: {name: edge, namespace: wicket}\nspec:\n  ports: [{port: 80}]\n  externalIPs: [198.51.100.20]\n",
    )
    .await;
    let w = Wicket::controller(
        &s.kubeconfig,
        &[
            "--namespace",
            "wicket",
            "--identity",
            "only",
            "--watch-namespace",
            "app",
            "--publish-service",
            "wicket/edge",
            "--debounce-ms",
            "20",
        ],
    )
    .await;
    w.eventually("app.example.com", "/", "served", |a| a.who() == "web")
        .await;
    eventually("the publish Service's address", || async {
        (status_of(&s.admin, "app", "site").await == ["198.51.100.20"]).then_some(())
    })
    .await;
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(s.admin.clone(), "wicket")
        .delete("edge", &DeleteParams::default())
        .await
        .unwrap();
    // A change, so a round runs without the Service.
    apply(
        &s.admin,
        &ingress_yaml("app", "more", "wicket", "more.example.com", &[("/", "web")]),
    )
    .await;
    w.eventually("more.example.com", "/", "served", |a| a.who() == "web")
        .await;
    let deadline = Instant::now() + PATIENCE;
    while !w
        .logs()
        .contains("the --publish-service Service does not exist")
    {
        assert!(Instant::now() < deadline, "{}", w.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(&s.admin, "app", "site").await, ["198.51.100.20"]);
}

/// In controller mode no Service can point nginx at this machine or at a
/// cloud metadata address: an ExternalName `localhost` on the admin port
/// or `169.254.169.254` answers 503 and the Ingress is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_on_loopback_or_link_local_addresses_are_refused() {
    let s = setup(&["bp"]).await;
    let web = Echo::start("web", s.ip, 0).await;
    apply(&s.admin, &backend("bp", "web", s.ip, web.addr.port(), true)).await;
    let w = Wicket::controller(&s.kubeconfig, &args("only", "203.0.113.9")).await;
    let ext = |name: &str, target: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bp}}\nspec: {{type: ExternalName, externalName: \"{target}\", ports: [{{port: {port}}}]}}\n"
        )
    };
    apply(&s.admin, &ext("peek", "localhost", w.admin)).await;
    apply(&s.admin, &ext("meta", "169.254.169.254", 80)).await;
    let peek = ingress(
        "bp",
        "peek",
        "",
        "peek.example.com",
        &[("/", "Prefix", "peek", w.admin)],
    )
    .replace("spec:\n", "spec:\n  ingressClassName: wicket\n");
    apply(&s.admin, &peek).await;
    apply(
        &s.admin,
        &ingress_yaml("bp", "meta", "wicket", "meta.example.com", &[("/", "meta")]),
    )
    .await;
    apply(
        &s.admin,
        &ingress_yaml("bp", "good", "wicket", "good.example.com", &[("/", "web")]),
    )
    .await;
    w.eventually("good.example.com", "/", "served", |a| a.who() == "web")
        .await;
    for host in ["peek.example.com", "meta.example.com"] {
        let a = w.get(host, "/config").await;
        assert_eq!(a.status, 503, "{host}: {a:?}");
    }
    for (name, want) in [
        ("peek", "is wicket's own admin port"),
        ("meta", "169.254.169.254:80 is a link-local address"),
    ] {
        eventually("a Degraded Event naming the address", || async {
            events_for(&s.admin, "bp", name)
                .await
                .iter()
                .any(|e| e.1 == "Degraded" && e.2.contains(want))
                .then_some(())
        })
        .await;
    }
}

/// An EndpointSlice of Service `svc` with one endpoint, on its own port.
fn slice(ns: &str, svc: &str, name: &str, ip: Ipv4Addr, port: u16, ready: bool) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{{port: {port}}}]\nendpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_created_and_patched_reach_nginx_without_a_reload() {
    let s = setup(&["dyn"]).await;
    // Two endpoints on this machine's address, told apart by their port
    // (each in its own EndpointSlice, as during a rolling update).
    let a = Echo::start("a", s.ip, 0).await;
    let b = Echo::start("b", s.ip, 0).await;
    apply(&s.admin, &backend("dyn", "web", s.ip, a.addr.port(), true)).await;
    apply(
        &s.admin,
        &ingress_yaml("dyn", "web", "wicket", "dyn.example.com", &[("/", "web")]),
    )
    .await;
    let w = Wicket::controller(&s.kubeconfig, &args("replica-a", "203.0.113.7")).await;
    w.eventually("dyn.example.com", "/", "served by a", |r| r.who() == "a")
        .await;
    let group = w.nginx_pid().expect("nginx.pid");
    let processes: BTreeSet<i32> = processes_in_group(group).into_iter().collect();
    let who = |n: usize| {
        let w = &w;
        async move {
            let mut seen = BTreeSet::new();
            for _ in 0..n {
                seen.insert(w.get("dyn.example.com", "/").await.who());
            }
            seen
        }
    };

    // A new EndpointSlice: both endpoints get requests.
    apply(
        &s.admin,
        &slice("dyn", "web", "web-b", s.ip, b.addr.port(), true),
    )
    .await;
    eventually("both endpoints served", || async {
        (who(16).await == BTreeSet::from(["a".to_string(), "b".to_string()])).then_some(())
    })
    .await;
    // The first one's endpoint is not ready: only b.
    apply(&s.admin, &backend("dyn", "web", s.ip, a.addr.port(), false)).await;
    eventually("only b", || async {
        (who(16).await == BTreeSet::from(["b".to_string()])).then_some(())
    })
    .await;
    // The second slice deleted: nothing ready, 503.
    Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(s.admin.clone(), "dyn")
        .delete("web-b", &DeleteParams::default())
        .await
        .unwrap();
    w.eventually("dyn.example.com", "/", "503", |r| r.status == 503)
        .await;
    apply(&s.admin, &backend("dyn", "web", s.ip, a.addr.port(), true)).await;
    w.eventually("dyn.example.com", "/", "a again", |r| r.who() == "a")
        .await;

    let now: BTreeSet<i32> = processes_in_group(group).into_iter().collect();
    assert_eq!(
        now,
        processes,
        "the same nginx processes: no reload\n{}",
        w.logs()
    );
    assert!(!w.logs().contains("reloaded nginx"), "{}", w.logs());
    assert!(w.logs().contains("updated endpoints without a reload"));
}
