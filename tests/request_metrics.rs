//! Per-request metrics with ingress-nginx's names, end to end: real
//! requests through `wicket serve` and the real nginx, then what `/metrics`
//! says; and a real Prometheus (Debian's) scraping it, through which every
//! query of the chart's dashboard and every alert of its rules returns data.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
const P: &str = "nginx.ingress.kubernetes.io";

async fn web(ns: &str, name: &str) -> (Echo, String) {
    let e = Echo::start(name, LO, 0).await;
    let svc = service(ns, name, 80, None, e.addr.port(), &[(IpAddr::V4(LO), true)]);
    (e, svc)
}

fn annotated(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::from("  annotations:\n");
    for (k, v) in pairs {
        out.push_str(&format!(
            "    {P}/{k}: {}\n",
            serde_json::to_string(v).unwrap()
        ));
    }
    out
}

/// One sample of the metrics text: name, labels, value.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (head, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => {
                let rest = rest.strip_suffix('}').unwrap();
                let mut labels = Vec::new();
                // Values here never hold `",` (the tests choose them).
                for pair in rest.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap();
                    labels.push((k.to_string(), v.trim_end_matches('"').to_string()));
                }
                (n.to_string(), labels)
            }
            None => (head.to_string(), Vec::new()),
        };
        out.push(Sample {
            name,
            labels,
            value: value.parse().unwrap(),
        });
    }
    out
}

/// The sum of the samples named `name` whose labels include `want`.
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
        .sum()
}

async fn metrics(w: &Wicket) -> String {
    let a = w.admin_get("/metrics").await;
    assert_eq!(a.status, 200);
    a.text
}

/// Polls /metrics until `check` holds (nginx writes the metrics lines at
/// least once a second).
async fn metrics_until(w: &Wicket, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = metrics(w).await;
        if check(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("never {what}:\n{text}\n{}", w.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const REQUESTS: &str = "nginx_ingress_controller_requests";

#[tokio::test]
async fn counts_status_codes_and_paths_per_ingress() {
    let (_shop, shop_svc) = web("shop", "shop").await;
    let (_api, api_svc) = web("shop", "api").await;
    let w = Wicket::start(&[
        ("svc.yaml", &format!("{shop_svc}---\n{api_svc}")),
        (
            "shop.yaml",
            &ingress(
                "shop",
                "front",
                "",
                "shop.example",
                &[("/", "Prefix", "shop", 80)],
            ),
        ),
        (
            "api.yaml",
            &ingress(
                "shop",
                "api",
                "",
                "shop.example",
                &[("/status", "Prefix", "api", 80)],
            ),
        ),
    ])
    .await;
    for i in 0..5 {
        assert_eq!(
            w.get("shop.example", &format!("/page/{i}")).await.status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(w.get("shop.example", "/status/503").await.status, 503);
    }
    for i in 0..2 {
        assert_eq!(
            w.get("shop.example", &format!("/status/404?q={i}"))
                .await
                .status,
            404
        );
    }
    let text = metrics_until(&w, "counted 10 requests", |t| {
        value(t, REQUESTS, &[("namespace", "shop")]) >= 10.0
    })
    .await;
    let front = [
        ("ingress", "front"),
        ("namespace", "shop"),
        ("service", "shop"),
        ("path", "/"),
        ("host", "shop.example"),
        ("method", "GET"),
        ("canary", ""),
    ];
    assert_eq!(value(&text, REQUESTS, &front), 5.0, "{text}");
    assert_eq!(
        value(
            &text,
            REQUESTS,
            &[&front[..], &[("status", "200")]].concat()
        ),
        5.0
    );
    let api = [("ingress", "api"), ("service", "api"), ("path", "/status")];
    assert_eq!(
        value(&text, REQUESTS, &[&api[..], &[("status", "503")]].concat()),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(&text, REQUESTS, &[&api[..], &[("status", "404")]].concat()),
        2.0
    );
    // The path label is the Ingress's path, never the request's.
    let paths: BTreeSet<String> = samples(&text)
        .into_iter()
        .filter(|s| s.name == REQUESTS)
        .flat_map(|s| {
            s.labels
                .into_iter()
                .filter(|(k, _)| k == "path")
                .map(|(_, v)| v)
        })
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from(["/".to_string(), "/status".to_string()])
    );
    // The histograms carry the same labels; every request is in the count.
    assert_eq!(
        value(
            &text,
            "nginx_ingress_controller_request_duration_seconds_count",
            &front
        ),
        5.0
    );
    assert_eq!(
        value(&text, "nginx_ingress_controller_response_size_count", &api),
        5.0
    );
    assert!(value(&text, "nginx_ingress_controller_request_size_sum", &front) > 0.0);
    // ingress-nginx's controller metrics are there too.
    assert_eq!(
        value(
            &text,
            "nginx_ingress_controller_config_last_reload_successful",
            &[]
        ),
        1.0
    );
    assert!(value(&text, "nginx_ingress_controller_success", &[]) >= 1.0);
    assert!(value(&text, "nginx_ingress_controller_config_hash", &[]) > 0.0);
    assert!(
        value(
            &text,
            "nginx_ingress_controller_nginx_process_num_procs",
            &[]
        ) >= 2.0
    );
    assert!(
        value(
            &text,
            "nginx_ingress_controller_nginx_process_resident_memory_bytes",
            &[]
        ) > 0.0
    );
    assert!(text.contains("# TYPE nginx_ingress_controller_requests unknown"));
    assert!(text.contains("# TYPE nginx_ingress_controller_request_duration_seconds histogram"));
    assert_eq!(
        value(&text, "wicket_request_log_malformed_lines_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_regex_path_is_the_label_as_written() {
    let (_e, svc) = web("x", "web").await;
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        (
            "ing.yaml",
            &ingress(
                "x",
                "re",
                &annotated(&[("use-regex", "true")]),
                "x.example",
                &[
                    ("/re(/|$)(.*)", "ImplementationSpecific", "web", 80),
                    ("/h$host", "ImplementationSpecific", "web", 80),
                ],
            ),
        ),
    ])
    .await;
    assert_eq!(w.get("x.example", "/re/anything").await.status, 200);
    let text = metrics_until(&w, "counted", |t| {
        value(t, REQUESTS, &[("ingress", "re")]) >= 1.0
    })
    .await;
    // nginx did not expand `$` in the path: it is the Ingress's.
    assert_eq!(
        value(
            &text,
            REQUESTS,
            &[("ingress", "re"), ("path", "/re(/|$)(.*)")]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn durations_land_in_their_buckets() {
    let (_e, svc) = web("d", "slow").await;
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        (
            "ing.yaml",
            &ingress(
                "d",
                "slow",
                "",
                "slow.example",
                &[("/", "Prefix", "slow", 80)],
            ),
        ),
    ])
    .await;
    assert_eq!(w.get("slow.example", "/delay/300").await.status, 200);
    assert_eq!(w.get("slow.example", "/fast").await.status, 200);
    let text = metrics_until(&w, "counted 2 requests", |t| {
        value(t, REQUESTS, &[("ingress", "slow")]) >= 2.0
    })
    .await;
    let bucket = |name: &str, le: &str| {
        value(
            &text,
            &format!("nginx_ingress_controller_{name}_bucket"),
            &[("ingress", "slow"), ("le", le)],
        )
    };
    for name in [
        "request_duration_seconds",
        "response_duration_seconds",
        "header_duration_seconds",
    ] {
        // The fast one is under 250 ms, the slow one between 250 and 500.
        assert_eq!(bucket(name, "0.25"), 1.0, "{name}\n{text}");
        assert_eq!(bucket(name, "0.5"), 2.0, "{name}\n{text}");
        assert_eq!(bucket(name, "+Inf"), 2.0, "{name}");
    }
    assert_eq!(bucket("connect_duration_seconds", "0.25"), 2.0);
    let sum = value(
        &text,
        "nginx_ingress_controller_request_duration_seconds_sum",
        &[("ingress", "slow")],
    );
    assert!((0.3..0.5).contains(&sum), "{sum}");
}

#[tokio::test]
async fn random_uris_hosts_and_methods_add_no_label_sets() {
    let (_e, svc) = web("r", "web").await;
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        (
            "ing.yaml",
            &ingress("r", "web", "", "r.example", &[("/", "Prefix", "web", 80)]),
        ),
    ])
    .await;
    let client = client();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let n = 300;
    for i in 0..n {
        let r = next();
        // Letters only: nginx answers 400 to any other method, before a
        // server is chosen.
        let name: String = (0..6)
            .map(|k| (b'A' + ((r >> (k * 5)) % 26) as u8) as char)
            .collect();
        let method = reqwest::Method::from_bytes(format!("X{name}").as_bytes()).unwrap();
        let uri = format!("/{:x}/{:x}?{i}", r, next());
        // Known host, random method and URI.
        let a = client
            .request(method, w.url("r.example", &uri))
            .send()
            .await
            .unwrap();
        assert!(a.status().as_u16() < 500);
        // Random host nobody names.
        let host = format!("h{:x}.random.example", next());
        client.get(w.url(&host, &uri)).send().await.unwrap();
    }
    let text = metrics_until(&w, "counted every request", |t| {
        value(t, "wicket_request_log_lines_total", &[]) >= 2.0 * n as f64
    })
    .await;
    assert_eq!(
        value(&text, REQUESTS, &[("ingress", "web"), ("method", "OTHER")]),
        n as f64,
        "{text}"
    );
    // One label set: the Ingress's path and host, the folded method, one
    // status; the random hosts are left out, as ingress-nginx does.
    assert_eq!(
        value(&text, "wicket_request_metrics_series", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "wicket_request_log_skipped_lines_total",
            &[("reason", "undefined_host")]
        ),
        n as f64
    );
    let hosts: BTreeSet<String> = samples(&text)
        .into_iter()
        .filter(|s| s.name == REQUESTS)
        .flat_map(|s| {
            s.labels
                .into_iter()
                .filter(|(k, _)| k == "host")
                .map(|(_, v)| v)
        })
        .collect();
    assert_eq!(hosts, BTreeSet::from(["r.example".to_string()]));
}

#[tokio::test]
async fn undefined_hosts_are_counted_only_when_asked_and_bounded() {
    let (_e, svc) = web("u", "web").await;
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            (
                "ing.yaml",
                &ingress("u", "web", "", "u.example", &[("/", "Prefix", "web", 80)]),
            ),
        ],
        &["--metrics-per-undefined-host"],
    )
    .await;
    for i in 0..5 {
        assert_eq!(w.get(&format!("other{i}.example"), "/").await.status, 404);
    }
    let text = metrics_until(&w, "counted the undefined hosts", |t| {
        value(t, REQUESTS, &[("status", "404")]) >= 5.0
    })
    .await;
    assert_eq!(
        value(
            &text,
            REQUESTS,
            &[("host", "other3.example"), ("ingress", "")]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_canary_backend_is_labelled_canary() {
    let (_main, main_svc) = web("c", "main").await;
    let (_canary, canary_svc) = web("c", "canary").await;
    let w = Wicket::start(&[
        ("svc.yaml", &format!("{main_svc}---\n{canary_svc}")),
        (
            "main.yaml",
            &ingress("c", "main", "", "c.example", &[("/", "Prefix", "main", 80)]),
        ),
        (
            "canary.yaml",
            &ingress(
                "c",
                "main-canary",
                &annotated(&[("canary", "true"), ("canary-by-header", "X-Canary")]),
                "c.example",
                &[("/", "Prefix", "canary", 80)],
            ),
        ),
    ])
    .await;
    let client = client();
    for _ in 0..3 {
        let a = client
            .get(w.url("c.example", "/"))
            .header("X-Canary", "always")
            .send()
            .await
            .unwrap();
        assert_eq!(a.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(w.get("c.example", "/").await.who(), "main");
    }
    let text = metrics_until(&w, "counted 5 requests", |t| {
        value(t, REQUESTS, &[("ingress", "main")]) >= 5.0
    })
    .await;
    assert_eq!(
        value(&text, REQUESTS, &[("ingress", "main"), ("canary", "")]),
        2.0,
        "{text}"
    );
    let canaries: Vec<Sample> = samples(&text)
        .into_iter()
        .filter(|s| s.name == REQUESTS)
        .filter(|s| s.labels.iter().any(|(k, v)| k == "canary" && !v.is_empty()))
        .collect();
    assert_eq!(canaries.len(), 1, "{text}");
    assert_eq!(canaries[0].value, 3.0);
    let label = &canaries[0]
        .labels
        .iter()
        .find(|(k, _)| k == "canary")
        .unwrap()
        .1;
    assert!(label.contains("canary"), "{label}");
}

#[tokio::test]
async fn metrics_stay_with_the_access_log_off_and_across_reloads() {
    let (_e, svc) = web("q", "web").await;
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            (
                "settings.yaml",
                &settings("q", &[("disable-access-log", "true")]),
            ),
            (
                "ing.yaml",
                &ingress("q", "web", "", "q.example", &[("/", "Prefix", "web", 80)]),
            ),
            (
                "quiet.yaml",
                &ingress(
                    "q",
                    "quiet",
                    &annotated(&[("enable-access-log", "false")]),
                    "quiet.example",
                    &[("/", "Prefix", "web", 80)],
                ),
            ),
        ],
        &["--configmap", "q/settings"],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(w.get("q.example", "/").await.status, 200);
        assert_eq!(w.get("quiet.example", "/").await.status, 200);
    }
    metrics_until(&w, "counted with the access log off", |t| {
        value(t, REQUESTS, &[("ingress", "web")]) == 3.0
            && value(t, REQUESTS, &[("ingress", "quiet")]) == 3.0
    })
    .await;
    // No access log line reached wicket's standard output.
    assert!(!w.logs().contains("q.example"), "{}", w.logs());
    // A reload (a new Ingress): the counts go on from where they were.
    w.write(
        "more.yaml",
        &ingress(
            "q",
            "more",
            "",
            "more.example",
            &[("/", "Prefix", "web", 80)],
        ),
    );
    w.eventually("more.example", "/", "served", |a| a.status == 200)
        .await;
    for _ in 0..2 {
        assert_eq!(w.get("q.example", "/").await.status, 200);
    }
    metrics_until(&w, "counted across the reload", |t| {
        value(t, REQUESTS, &[("ingress", "web")]) == 5.0
    })
    .await;
    // An Ingress removed: its series go, as in ingress-nginx.
    std::fs::remove_file(w.path("quiet.yaml")).unwrap();
    w.eventually("quiet.example", "/", "gone", |a| a.status == 404)
        .await;
    metrics_until(&w, "forgot the removed Ingress", |t| {
        value(t, REQUESTS, &[("ingress", "quiet")]) == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_malformed_line_is_counted_and_the_pipe_goes_on() {
    let (_e, svc) = web("m", "web").await;
    let w = Wicket::start(&[
        ("svc.yaml", &svc),
        (
            "ing.yaml",
            &ingress("m", "web", "", "m.example", &[("/", "Prefix", "web", 80)]),
        ),
    ])
    .await;
    let pipe = w.state_dir().join("control/wicket-metrics.pipe");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&pipe).unwrap();
        f.write_all(b"not a metrics line\nw2\tm|web|web|80|/\t-\tm.example\tm.example\tGET\t2x0\t1\t0.1\t1\t-\t-\t-\n")
            .unwrap();
        // A line longer than wicket's buffer.
        f.write_all(&vec![b'x'; 600 * 1024]).unwrap();
        f.write_all(b"\n").unwrap();
    }
    // Counted once each, the long one too.
    metrics_until(&w, "counted the malformed lines", |t| {
        value(t, "wicket_request_log_malformed_lines_total", &[]) == 3.0
    })
    .await;
    for _ in 0..2 {
        assert_eq!(w.get("m.example", "/").await.status, 200);
    }
    metrics_until(&w, "counted requests after them", |t| {
        value(t, REQUESTS, &[("ingress", "web"), ("status", "200")]) == 2.0
    })
    .await;
}

// ------------------------------------------------------------ Prometheus

/// Debian's `prometheus` and `promtool` (scripts/install-test-deps.sh
/// installs the package), or `$WICKET_PROMETHEUS_DIR`.
fn prometheus_tool(name: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("WICKET_PROMETHEUS_DIR") {
        return PathBuf::from(d).join(name);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run `make test`, which installs Debian's prometheus package")
        })
}

fn chart_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("charts/wicket/files")
        .join(name)
}

/// Every `expr` of the dashboard's panels.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(chart_file("wicket-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            out.push((title.clone(), expr.to_string()));
        }
    }
    out
}

/// Every alert of the rules file: name and expression.
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(chart_file("prometheus-rules.yaml")).unwrap();
    let rules: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            out.push((
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// Replaces the dashboard's template variables as Grafana would with
/// "All" (`.*`) and a 1m interval.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "1m")
        .replace("$controller_class", ".*")
        .replace("$controller_namespace", ".*")
        .replace("$ingress", ".*")
        .replace("$namespace", ".*")
}

struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // The target's namespace label, as a ServiceMonitor gives it: the
        // metrics' own `namespace` becomes `exported_namespace`.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: wicket\n  scrape_interval: 1s\n  static_configs:\n  - targets: [\"{target}\"]\n    labels: {{namespace: wicket}}\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let child = Command::new(prometheus_tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/-/ready", self.port);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(a) = reqwest::get(&url).await
                && a.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus never ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let url = reqwest::Url::parse_with_params(&url, &[("query", expr)]).unwrap();
        let a = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = a.json().await.map_err(|e| e.to_string())?;
        if v["status"] != "success" {
            return Err(format!("{v}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

#[test]
fn promtool_accepts_the_rules() {
    let out = Command::new(prometheus_tool("promtool"))
        .arg("check")
        .arg("rules")
        .arg(chart_file("prometheus-rules.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_returns_data_from_prometheus() {
    let (_e, svc) = web("p", "web").await;
    let snippet = |name: &str, host: &str, text: &str| {
        ingress(
            "p",
            name,
            &annotated(&[("configuration-snippet", text)]),
            host,
            &[("/", "Prefix", "web", 80)],
        )
    };
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &svc),
            (
                "settings.yaml",
                &settings("p", &[("allow-snippet-annotations", "true")]),
            ),
            (
                "ing.yaml",
                &ingress("p", "web", "", "p.example", &[("/", "Prefix", "web", 80)]),
            ),
            // Rejected: a path that is not one.
            (
                "bad.yaml",
                &ingress(
                    "p",
                    "bad",
                    "",
                    "bad.example",
                    &[("nope", "Prefix", "web", 80)],
                ),
            ),
        ],
        &["--configmap", "p/settings"],
    )
    .await;
    let prom = Prometheus::start(&format!("127.0.0.1:{}", w.admin));
    // Scraped before the failure below, so increase() sees it.
    prom.wait_ready().await;
    let deadline = Instant::now() + PATIENCE;
    while prom
        .query("nginx_ingress_controller_errors")
        .await
        .map_or(true, |r| r.is_empty())
    {
        assert!(Instant::now() < deadline, "never scraped:\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A snippet nginx refuses: a failed reload, then a quarantine.
    w.write(
        "bogus.yaml",
        &snippet("bogus", "bogus.example", "bogus_directive on;"),
    );
    let deadline = Instant::now() + PATIENCE;
    while !w.logs().contains("rejected ingress p/bogus: quarantined") {
        assert!(Instant::now() < deadline, "never quarantined\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // An endpoint more: an update without a reload.
    let e2 = Echo::start("web", Ipv4Addr::new(127, 0, 0, 2), _e.addr.port()).await;
    w.write(
        "svc.yaml",
        &service(
            "p",
            "web",
            80,
            None,
            e2.addr.port(),
            &[
                (IpAddr::V4(LO), true),
                (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), true),
            ],
        ),
    );
    let deadline = Instant::now() + PATIENCE;
    while !metrics(&w)
        .await
        .contains("wicket_endpoint_updates_total{result=\"success\"}")
    {
        assert!(
            Instant::now() < deadline,
            "no endpoint update\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Traffic, 5xx among it, for a while (rates need two scrapes).
    let client = client();
    let traffic = {
        let url_ok = w.url("p.example", "/");
        let url_err = w.url("p.example", "/status/503");
        let url_slow = w.url("p.example", "/delay/20");
        tokio::spawn(async move {
            loop {
                for u in [&url_ok, &url_err, &url_slow] {
                    let _ = client.get(u.as_str()).send().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut missing: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .chain(alert_rules())
        .map(|(n, e)| (n, expand(&e)))
        .collect();
    assert!(missing.len() >= 10, "{missing:?}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while !missing.is_empty() {
        let mut still = Vec::new();
        for (name, expr) in missing {
            match prom.query(&expr).await {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => still.push((name, expr)),
                Err(e) => panic!("{name}: {expr}: {e}"),
            }
        }
        missing = still;
        if Instant::now() > deadline {
            traffic.abort();
            let up = prom.query("up").await;
            last = format!("{up:?}\n{}", prom.log());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    traffic.abort();
    assert!(
        missing.is_empty(),
        "no data for: {missing:#?}\n{last}\n{}",
        w.logs()
    );
    let by_ns = prom
        .query("nginx_ingress_controller_requests{exported_namespace=\"p\", ingress=\"web\"}")
        .await
        .unwrap();
    assert!(!by_ns.is_empty());
    // Prometheus scraped wicket without errors.
    let up = prom.query("up{job=\"wicket\"} == 1").await.unwrap();
    assert_eq!(up.len(), 1);
}
