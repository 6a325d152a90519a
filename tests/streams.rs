//! TCP and UDP services (`--tcp-services-configmap`,
//! `--udp-services-configmap`): `wicket serve` with the real nginx and its
//! stream module, TCP and UDP echo backends written here, reached through
//! their external ports.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const FLAGS: &[&str] = &[
    "--tcp-services-configmap",
    "ingress/tcp",
    "--udp-services-configmap",
    "ingress/udp",
];

/// A TCP backend: for each line it reads it answers `NAME SOURCE LINE`,
/// SOURCE being the client address of the PROXY protocol v1 header the
/// connection started with, or `-` without one. Every header seen is kept.
struct TcpEcho {
    port: u16,
    headers: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    async fn start(name: &'static str) -> TcpEcho {
        Self::start_on(name, "127.0.0.1").await
    }

    async fn start_on(name: &'static str, ip: &str) -> TcpEcho {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let headers: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = headers.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut r = BufReader::new(r);
                    let mut source = "-".to_string();
                    let mut first = true;
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if first && line.starts_with("PROXY ") {
                            // PROXY TCP4 SRC DST SPORT DPORT\r\n
                            let header = line.trim_end().to_string();
                            source = header.split(' ').nth(2).unwrap_or("?").to_string();
                            seen.lock().unwrap().push(header);
                            first = false;
                            continue;
                        }
                        first = false;
                        let reply = format!("{name} {source} {}\n", line.trim_end());
                        if w.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TcpEcho {
            port,
            headers,
            task,
        }
    }
}

/// A UDP backend: answers each datagram with `NAME DATAGRAM`.
struct UdpEcho {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpEcho {
    async fn start(name: &'static str) -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let mut reply = format!("{name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, from).await;
            }
        });
        UdpEcho { port, task }
    }
}

/// A Service `NS/NAME` with a TCP port 7000 named `tcp` and a UDP port 53
/// named `dns`, and an EndpointSlice whose one endpoint, 127.0.0.1,
/// serves them on `tcp` and `udp` (none when `None`).
fn echo_service(ns: &str, name: &str, tcp: Option<u16>, udp: Option<u16>) -> String {
    echo_service_at(ns, name, "127.0.0.1", tcp, udp)
}

/// [`echo_service`] with its endpoint at `ip`.
fn echo_service_at(ns: &str, name: &str, ip: &str, tcp: Option<u16>, udp: Option<u16>) -> String {
    let mut ports = Vec::new();
    if let Some(p) = tcp {
        ports.push(format!("{{name: tcp, port: {p}, protocol: TCP}}"));
    }
    if let Some(p) = udp {
        ports.push(format!("{{name: dns, port: {p}, protocol: UDP}}"));
    }
    let endpoints = if ports.is_empty() {
        "endpoints: []".to_string()
    } else {
        format!("endpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}")
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: tcp, port: 7000}}, {{name: dns, port: 53, protocol: UDP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{}]\n{endpoints}\n",
        ports.join(", ")
    )
}

/// The services ConfigMap `ingress/NAME` with these entries.
fn services(name: &str, entries: &[(&str, &str)]) -> String {
    let mut data = String::new();
    for (k, v) in entries {
        data.push_str(&format!("  \"{k}\": \"{v}\"\n"));
    }
    if data.is_empty() {
        data = "  {}\n".into();
    }
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: ingress}}\ndata:\n{data}"
    )
}

/// Sends `send` on a new connection to `port` and reads one line back.
async fn tcp_ask(port: u16, send: &str) -> Result<String, String> {
    let attempt = async {
        let mut c = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        c.write_all(send.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut r = BufReader::new(c);
        let mut line = String::new();
        match r.read_line(&mut line).await {
            Ok(0) => Err("closed without an answer".to_string()),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer in 5 s".into()))
}

/// Sends a datagram to `port` and waits for one back.
async fn udp_ask(port: u16, send: &str) -> Result<String, String> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(send.as_bytes(), ("127.0.0.1", port))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(Err(e)) => Err(format!("recv: {e}")),
        Err(_) => Err("no answer in 2 s".into()),
    }
}

/// Polls `ask` until `check` holds of its answer.
async fn eventually<F, Fut>(
    w: &Wicket,
    what: &str,
    ask: F,
    check: impl Fn(&Result<String, String>) -> bool,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        let a = ask().await;
        if check(&a) {
            return;
        }
        if Instant::now() > deadline {
            panic!("never {what}; last answer {a:?}\n{}", w.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ports free for TCP and UDP both.
fn free_ports(n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    while out.len() < n {
        let p = free_port();
        if std::net::UdpSocket::bind(("0.0.0.0", p)).is_ok() && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_services_reach_their_backends() {
    let tcp = TcpEcho::start("tcp-echo").await;
    let udp = UdpEcho::start("udp-echo").await;
    let p = free_ports(3);
    let (by_number, by_name, dns) = (p[0].to_string(), p[1].to_string(), p[2].to_string());
    let w = Wicket::start_with(
        &[
            (
                "svc.yaml",
                &echo_service("apps", "echo", Some(tcp.port), Some(udp.port)),
            ),
            (
                "tcp.yaml",
                &services(
                    "tcp",
                    &[(&by_number, "apps/echo:7000"), (&by_name, "apps/echo:tcp")],
                ),
            ),
            ("udp.yaml", &services("udp", &[(&dns, "apps/echo:dns")])),
        ],
        FLAGS,
    )
    .await;
    assert_eq!(
        tcp_ask(p[0], "hello\n").await.unwrap(),
        "tcp-echo - hello",
        "{}",
        w.logs()
    );
    assert_eq!(
        tcp_ask(p[1], "by name\n").await.unwrap(),
        "tcp-echo - by name"
    );
    assert_eq!(udp_ask(p[2], "ping").await.unwrap(), "udp-echo ping");
    // A long-lived connection carries many exchanges.
    let mut c = BufReader::new(TcpStream::connect(("127.0.0.1", p[0])).await.unwrap());
    for i in 0..50 {
        c.get_mut()
            .write_all(format!("line {i}\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        c.read_line(&mut line).await.unwrap();
        assert_eq!(line, format!("tcp-echo - line {i}\n"));
    }
    // HTTP is served as before.
    assert_eq!(w.get("any.example.com", "/").await.status, 404);
    // render and /config show the stream block.
    let config = w.inspect("/config").await;
    assert!(config.text.contains("stream {"), "{}", config.text);
    assert!(
        config.text.contains(&format!("listen {} udp;", p[2])),
        "{}",
        config.text
    );
    assert!(config.text.contains("ngx_stream_module.so"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_is_decoded_and_sent() {
    let tcp = TcpEcho::start("tcp-echo").await;
    let p = free_ports(3);
    let keys: Vec<String> = p.iter().map(u16::to_string).collect();
    let w = Wicket::start_with(
        &[
            (
                "svc.yaml",
                &echo_service("apps", "echo", Some(tcp.port), None),
            ),
            (
                "tcp.yaml",
                &services(
                    "tcp",
                    &[
                        (&keys[0], "apps/echo:7000:PROXY:PROXY"),
                        (&keys[1], "apps/echo:7000::PROXY"),
                        (&keys[2], "apps/echo:7000:PROXY"),
                    ],
                ),
            ),
            ("udp.yaml", &services("udp", &[])),
        ],
        FLAGS,
    )
    .await;
    let header = |port: u16| format!("PROXY TCP4 203.0.113.7 127.0.0.1 40000 {port}\r\n");
    // Decoded and sent: the backend sees the address the client's header
    // carried.
    assert_eq!(
        tcp_ask(p[0], &format!("{}hello\n", header(p[0])))
            .await
            .unwrap(),
        "tcp-echo 203.0.113.7 hello",
        "{}",
        w.logs()
    );
    // Sent only: the backend sees the client's own address.
    assert_eq!(
        tcp_ask(p[1], "hello\n").await.unwrap(),
        "tcp-echo 127.0.0.1 hello"
    );
    // Decoded only: the header is not passed on, the data is.
    assert_eq!(
        tcp_ask(p[2], &format!("{}hello\n", header(p[2])))
            .await
            .unwrap(),
        "tcp-echo - hello"
    );
    // A listener that decodes refuses a connection without a header.
    assert!(tcp_ask(p[0], "no header\n").await.is_err());
    let headers = tcp.headers.lock().unwrap().clone();
    assert_eq!(headers.len(), 2, "{headers:?}");
    assert!(
        headers[0].starts_with("PROXY TCP4 203.0.113.7 "),
        "{headers:?}"
    );
    assert!(
        headers[1].starts_with("PROXY TCP4 127.0.0.1 "),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_reported_and_the_others_served_and_changes_applied() {
    let tcp = TcpEcho::start("tcp-echo").await;
    let udp = UdpEcho::start("udp-echo").await;
    let p = free_ports(3);
    let keys: Vec<String> = p.iter().map(u16::to_string).collect();
    let w = Wicket::start_with(
        &[
            (
                "svc.yaml",
                &echo_service("apps", "echo", Some(tcp.port), Some(udp.port)),
            ),
            (
                "tcp.yaml",
                &services("tcp", &[(&keys[0], "apps/echo:7000")]),
            ),
            ("udp.yaml", &services("udp", &[])),
        ],
        FLAGS,
    )
    .await;
    assert_eq!(tcp_ask(p[0], "a\n").await.unwrap(), "tcp-echo - a");

    // The ConfigMap changes: the first port goes, another comes, with
    // entries that cannot be served beside them.
    let http = w.http.to_string();
    let admin = w.admin.to_string();
    w.replace(
        "tcp.yaml",
        &services(
            "tcp",
            &[
                (&keys[1], "apps/echo:tcp"),
                (&http, "apps/echo:7000"),
                (&admin, "apps/echo:7000"),
                ("0", "apps/echo:7000"),
                ("70000", "apps/echo:7000"),
                ("ssh", "apps/echo:7000"),
                ("9", "apps/echo"),
                ("10", "apps/echo:7000:SOCKS"),
                ("11", "apps/missing:7000"),
                ("12", "apps/echo:7001"),
                ("13", "apps/echo:53"),
            ],
        ),
    );
    w.replace(
        "udp.yaml",
        &services("udp", &[(&keys[2], "apps/echo:53:PROXY")]),
    );
    eventually(
        &w,
        "the new port answers",
        || tcp_ask(p[1], "b\n"),
        |a| a.is_ok(),
    )
    .await;
    assert_eq!(tcp_ask(p[1], "b\n").await.unwrap(), "tcp-echo - b");
    eventually(
        &w,
        "the old port is closed",
        || tcp_ask(p[0], "a\n"),
        |a| a.is_err(),
    )
    .await;
    // UDP, PROXY left out.
    assert_eq!(udp_ask(p[2], "q").await.unwrap(), "udp-echo q");
    let logs = w.logs();
    for expected in [
        format!(
            "configmap ingress/tcp: data[\"{http}\"]: port {http} is wicket's own HTTP port; not served"
        ),
        format!(
            "configmap ingress/tcp: data[\"{admin}\"]: port {admin} is wicket's own admin port; not served"
        ),
        "data[\"0\"]: the port is out of range (1 to 65535); not served".into(),
        "data[\"70000\"]: the port is out of range (1 to 65535); not served".into(),
        "data[\"ssh\"]: the key must be a port number (1 to 65535); not served".into(),
        "data[\"9\"]: \"apps/echo\": must be NAMESPACE/SERVICE:PORT[:PROXY[:PROXY]]; not served"
            .into(),
        "data[\"10\"]: \"apps/echo:7000:SOCKS\": part 3 must be PROXY or empty".into(),
        "data[\"11\"]: service apps/missing not found; not served".into(),
        "data[\"12\"]: service apps/echo:7001 has no such port; not served".into(),
        "data[\"13\"]: service apps/echo:53 is not a TCP port (it is UDP); not served".into(),
        format!(
            "configmap ingress/udp: data[\"{}\"]: the PROXY protocol is for TCP only: served without it",
            keys[2]
        ),
    ] {
        assert!(logs.contains(&expected), "no {expected:?} in\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_endpoints_closes_connections_until_it_has_some() {
    let tcp = TcpEcho::start("tcp-echo").await;
    let p = free_ports(1);
    let key = p[0].to_string();
    let w = Wicket::start_with(
        &[
            ("svc.yaml", &echo_service("apps", "echo", None, None)),
            ("tcp.yaml", &services("tcp", &[(&key, "apps/echo:7000")])),
            ("udp.yaml", &services("udp", &[])),
        ],
        FLAGS,
    )
    .await;
    // Accepted, then closed at once: no answer, no wait.
    let mut c = TcpStream::connect(("127.0.0.1", p[0])).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("the connection is closed, not left open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        w.logs().contains(&format!(
            "data[\"{key}\"]: service apps/echo:7000 has no ready endpoints: connections to port {key} are closed at once"
        )),
        "{}",
        w.logs()
    );
    // Endpoints come: the stream config is reloaded with them.
    w.replace(
        "svc.yaml",
        &echo_service("apps", "echo", Some(tcp.port), None),
    );
    eventually(
        &w,
        "the endpoint answers",
        || tcp_ask(p[0], "x\n"),
        |a| a.is_ok(),
    )
    .await;
    // And a second backend replaces the first.
    let other = TcpEcho::start("other-echo").await;
    w.replace(
        "svc.yaml",
        &echo_service("apps", "echo", Some(other.port), None),
    );
    eventually(
        &w,
        "the new endpoint answers",
        || tcp_ask(p[0], "y\n"),
        |a| a.as_deref() == Ok("other-echo - y"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_stream_module_http_is_served_and_the_flag_named() {
    // The module folder without the stream module.
    let dir = tempfile::tempdir().unwrap();
    let modules = std::path::PathBuf::from(modules().dir);
    for entry in std::fs::read_dir(&modules).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if name != "ngx_stream_module.so" {
            std::os::unix::fs::symlink(&path, dir.path().join(name)).unwrap();
        }
    }
    let tcp = TcpEcho::start("tcp-echo").await;
    let p = free_ports(1);
    let key = p[0].to_string();
    let dir_arg = dir.path().display().to_string();
    let mut args = FLAGS.to_vec();
    args.extend(["--nginx-modules-dir", &dir_arg]);
    let w = Wicket::start_with(
        &[
            (
                "svc.yaml",
                &echo_service("apps", "echo", Some(tcp.port), None),
            ),
            ("tcp.yaml", &services("tcp", &[(&key, "apps/echo:7000")])),
            ("udp.yaml", &services("udp", &[])),
        ],
        &args,
    )
    .await;
    assert_eq!(w.get("any.example.com", "/").await.status, 404);
    assert!(tcp_ask(p[0], "x\n").await.is_err());
    let logs = w.logs();
    assert!(
        logs.contains("ngx_stream_module.so not found: --tcp-services-configmap is not honoured"),
        "{logs}"
    );
    assert!(
        logs.contains("the TCP services of --tcp-services-configmap are not served"),
        "{logs}"
    );
    assert!(!w.inspect("/config").await.text.contains("stream {"));
}

/// Stream upstreams take no endpoint update (Debian's Lua module is
/// http-only): a change of their endpoints reloads; the same change of an
/// HTTP upstream does not.
#[test]
fn stream_endpoint_changes_reload() {
    use wicket::build::{self, ClassOptions, Options};
    let cluster = |port: u16| {
        let mut c = wicket::cluster::Cluster::default();
        let text = format!(
            "{}---\n{}---\n{}",
            echo_service("apps", "echo", Some(port), None),
            services("tcp", &[("9000", "apps/echo:7000")]),
            ingress(
                "apps",
                "web",
                "",
                "web.example.com",
                &[("/", "Prefix", "echo", 7000)]
            ),
        );
        for o in wicket::source::manifest::parse(&text, false)
            .unwrap()
            .objects
        {
            c.insert(o);
        }
        c
    };
    let mut cert = wicket::certs::generate_default().unwrap();
    cert.name = "default".into();
    let mut opts = Options {
        class: ClassOptions {
            watch_without_class: true,
            by_name: true,
            ..ClassOptions::default()
        },
        modules: modules(),
        dynamic_endpoints: true,
        tcp_services: Some("ingress/tcp".parse().unwrap()),
        ..Options::new(80, 443, cert)
    };
    opts.backend_policy.allow_local = true;
    let a = build::build(&cluster(1000), &opts);
    let b = build::build(&cluster(2000), &opts);
    assert_eq!(a.config.streams.servers.len(), 1, "{:?}", a.problems);
    let addr: SocketAddr = "127.0.0.1:2000".parse().unwrap();
    assert_eq!(
        b.config.streams.servers[0].servers,
        vec![wicket::config::UpstreamServer::Addr(addr)]
    );
    assert!(b.config.endpoint_changes(&a.config).is_none());
    // Without the stream entry, the same change is an endpoint update.
    opts.tcp_services = None;
    let a = build::build(&cluster(1000), &opts);
    let b = build::build(&cluster(2000), &opts);
    assert!(b.config.endpoint_changes(&a.config).is_some());
}

/// `wicket render` writes the stream block and `wicket check` reports the
/// services and fails on an entry it cannot serve.
#[test]
fn render_and_check_cover_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        (
            "svc.yaml",
            echo_service("apps", "echo", Some(17000), Some(1053)),
        ),
        (
            "tcp.yaml",
            services(
                "tcp",
                &[("9000", "apps/echo:7000:PROXY"), ("9001", "apps/nope:1")],
            ),
        ),
        ("udp.yaml", services("udp", &[("9053", "apps/echo:dns")])),
    ];
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let run = |cmd: &str, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wicket"))
            .args([cmd, "--manifests"])
            .arg(dir.path())
            .args(FLAGS)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = run("render", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("load_module /usr/lib/nginx/modules/ngx_stream_module.so;"));
    assert!(
        text.contains("\n    upstream wicket_tcp_9000 {\n        server 127.0.0.1:17000;\n    }\n"),
        "{text}"
    );
    assert!(text.contains("listen 9000 proxy_protocol;"), "{text}");
    assert!(text.contains("listen 9053 udp;"), "{text}");
    assert!(text.contains("server 127.0.0.1:1053;"), "{text}");
    assert!(
        err.contains("data[\"9001\"]: service apps/nope not found; not served"),
        "{err}"
    );
    let (code, out, _) = run("check", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("tcp port 9000: apps/echo:7000, 1 ready endpoint, PROXY protocol decoded\n"),
        "{out}"
    );
    assert!(
        out.contains("udp port 9053: apps/echo:dns, 1 ready endpoint\n"),
        "{out}"
    );
    assert!(
        out.contains("data[\"9001\"]: service apps/nope not found"),
        "{out}"
    );
    // Without the bad entry, the check passes.
    std::fs::write(
        dir.path().join("tcp.yaml"),
        services("tcp", &[("9000", "apps/echo:7000:PROXY")]),
    )
    .unwrap();
    let (code, out, _) = run("check", &["--output", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["streams"][0]["port"], 9000);
    assert_eq!(json["streams"][0]["proxy_protocol_decode"], true);
}

/// Controller mode: the services ConfigMap is watched where it is, outside
/// `--watch-namespace` too, and a change of it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_watches_the_services_configmap() {
    use common::apiserver::{ApiServer, CONTROLLER_TOKEN, apply, host_ip, namespace};
    let api = ApiServer::start().await;
    let admin = api.admin().await;
    for ns in ["wicket", "apps"] {
        namespace(&admin, ns).await;
    }
    apply(&admin, &common::chart::rbac()).await;
    let ip = host_ip().to_string();
    let tcp = TcpEcho::start_on("tcp-echo", &ip).await;
    apply(
        &admin,
        &echo_service_at("apps", "echo", &ip, Some(tcp.port), None),
    )
    .await;
    let p = free_ports(2);
    let keys: Vec<String> = p.iter().map(u16::to_string).collect();
    // In the controller's namespace, which --watch-namespace leaves out.
    let cm = |entries: &[(&str, &str)]| {
        services("tcp", entries).replace("namespace: ingress", "namespace: wicket")
    };
    apply(&admin, &cm(&[(&keys[0], "apps/echo:tcp")])).await;
    let kubeconfig = api.kubeconfig(CONTROLLER_TOKEN);
    let w = Wicket::controller(
        &kubeconfig,
        &[
            "--namespace",
            "wicket",
            "--identity",
            "only",
            "--watch-namespace",
            "apps",
            "--publish-status-address",
            "203.0.113.9",
            "--tcp-services-configmap",
            "wicket/tcp",
            "--debounce-ms",
            "20",
        ],
    )
    .await;
    eventually(
        &w,
        "the port answers",
        || tcp_ask(p[0], "a\n"),
        |a| a.is_ok(),
    )
    .await;
    assert_eq!(tcp_ask(p[0], "a\n").await.unwrap(), "tcp-echo - a");
    apply(&admin, &cm(&[(&keys[1], "apps/echo:7000")])).await;
    eventually(
        &w,
        "the new port answers",
        || tcp_ask(p[1], "b\n"),
        |a| a.is_ok(),
    )
    .await;
    eventually(
        &w,
        "the old port is closed",
        || tcp_ask(p[0], "a\n"),
        |a| a.is_err(),
    )
    .await;
}

/// An HTTPS client that trusts only `trusted` and connects from
/// 127.0.0.2, so the address wicket's backends see can be told apart
/// from nginx's own.
fn tls_client_from(trusted: &str, from: std::net::IpAddr) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .resolve_to_addrs("pt.example.com", &["127.0.0.1:0".parse().unwrap()])
        .resolve_to_addrs("term.example.com", &["127.0.0.1:0".parse().unwrap()])
        .local_address(from)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_passthrough_sends_tls_by_sni_and_wicket_terminates_the_rest() {
    let (pt_cert, pt_key) = cert_for(&["pt.example.com"]);
    let (term_cert, term_key) = cert_for(&["term.example.com"]);
    let backend = Echo::start_tls(
        "pt-backend",
        std::net::Ipv4Addr::LOCALHOST,
        &pt_cert,
        &pt_key,
    )
    .await;
    let web = Echo::start("web", std::net::Ipv4Addr::LOCALHOST, 0).await;
    let eps = [(std::net::IpAddr::from([127, 0, 0, 1]), true)];
    let pt = ingress(
        "apps",
        "pt",
        "  annotations: {nginx.ingress.kubernetes.io/ssl-passthrough: \"true\"}\n",
        "pt.example.com",
        &[("/plain", "Prefix", "web", 80), ("/", "Prefix", "tls", 443)],
    );
    let term = ingress(
        "apps",
        "term",
        "",
        "term.example.com",
        &[("/", "Prefix", "web", 80)],
    )
    .replace(
        "spec:\n",
        "spec:\n  tls: [{hosts: [term.example.com], secretName: term}]\n",
    );
    let w = Wicket::start_with(
        &[
            (
                "tls.yaml",
                &service("apps", "tls", 443, None, backend.addr.port(), &eps),
            ),
            (
                "web.yaml",
                &service("apps", "web", 80, None, web.addr.port(), &eps),
            ),
            (
                "secret.yaml",
                &tls_secret("apps", "term", &term_cert, &term_key),
            ),
            ("pt.yaml", &pt),
            ("term.yaml", &term),
        ],
        &["--enable-ssl-passthrough"],
    )
    .await;
    let from = std::net::IpAddr::from([127, 0, 0, 2]);
    // The passthrough host: the client verifies the backend's own
    // certificate (wicket's would fail), and the backend terminates TLS.
    let pt_client = tls_client_from(&pt_cert, from);
    let url = |host: &str| format!("https://{host}:{}/x", w.https);
    let a = pt_client
        .get(url("pt.example.com"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", w.logs()));
    let echo: serde_json::Value = a.json().await.unwrap();
    assert_eq!(echo["service"], "pt-backend", "{echo}");
    // Unterminated: no proxy headers were added.
    assert!(echo["headers"]["x-forwarded-for"].is_null(), "{echo}");
    // The other host on the same port: wicket's certificate, wicket's
    // locations, and the client's address kept through the PROXY protocol.
    let term_client = tls_client_from(&term_cert, from);
    let a = term_client
        .get(url("term.example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
    let echo: serde_json::Value = a.json().await.unwrap();
    assert_eq!(echo["service"], "web", "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.2", "{echo}");
    assert_eq!(echo["headers"]["x-real-ip"], "127.0.0.2", "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    assert_eq!(
        echo["headers"]["x-forwarded-port"],
        w.https.to_string(),
        "{echo}"
    );
    // The passthrough host's certificate is not one wicket presents.
    assert!(pt_client.get(url("term.example.com")).send().await.is_err());
    // Plain HTTP to the passthrough host is served by its locations.
    assert_eq!(w.get("pt.example.com", "/plain").await.who(), "web");
    // The stream block listens on the HTTPS port; wicket's HTTPS on the socket.
    let config = w.inspect("/config").await.text;
    assert!(config.contains("ssl_preread on;"), "{config}");
    assert!(
        config.contains("listen unix:wicket-https.sock ssl"),
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_passthrough_is_ignored_without_the_flag() {
    let (pt_cert, pt_key) = cert_for(&["pt.example.com"]);
    let backend = Echo::start_tls(
        "pt-backend",
        std::net::Ipv4Addr::LOCALHOST,
        &pt_cert,
        &pt_key,
    )
    .await;
    let eps = [(std::net::IpAddr::from([127, 0, 0, 1]), true)];
    let pt = ingress(
        "apps",
        "pt",
        "  annotations: {nginx.ingress.kubernetes.io/ssl-passthrough: \"true\"}\n",
        "pt.example.com",
        &[("/", "Prefix", "tls", 443)],
    );
    let w = Wicket::start(&[
        (
            "tls.yaml",
            &service("apps", "tls", 443, None, backend.addr.port(), &eps),
        ),
        ("pt.yaml", &pt),
    ])
    .await;
    // wicket terminates TLS: the backend's certificate is not presented.
    let client = tls_client_from(&pt_cert, std::net::IpAddr::from([127, 0, 0, 1]));
    assert!(
        client
            .get(format!("https://pt.example.com:{}/", w.https))
            .send()
            .await
            .is_err()
    );
    assert!(
        w.logs()
            .contains("ignored: --enable-ssl-passthrough is off"),
        "{}",
        w.logs()
    );
    assert!(!w.inspect("/config").await.text.contains("stream {"));
}

/// Behind a load balancer that sends the PROXY protocol
/// (`use-proxy-protocol`), the stream block reads it on the HTTPS port and
/// wicket's HTTPS servers still see the client's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_passthrough_behind_a_proxy_protocol_load_balancer() {
    let (term_cert, term_key) = cert_for(&["term.example.com"]);
    let web = Echo::start("web", std::net::Ipv4Addr::LOCALHOST, 0).await;
    let eps = [(std::net::IpAddr::from([127, 0, 0, 1]), true)];
    let term = ingress(
        "apps",
        "term",
        "",
        "term.example.com",
        &[("/", "Prefix", "web", 80)],
    )
    .replace(
        "spec:\n",
        "spec:\n  tls: [{hosts: [term.example.com], secretName: term}]\n",
    );
    let w = Wicket::start_with(
        &[
            ("web.yaml", &service("apps", "web", 80, None, web.addr.port(), &eps)),
            ("secret.yaml", &tls_secret("apps", "term", &term_cert, &term_key)),
            ("term.yaml", &term),
            (
                "settings.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: ingress}\ndata: {use-proxy-protocol: \"true\"}\n",
            ),
        ],
        &["--enable-ssl-passthrough", "--configmap", "ingress/settings"],
    )
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(term_cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut tcp = TcpStream::connect(("127.0.0.1", w.https)).await.unwrap();
    tcp.write_all(format!("PROXY TCP4 198.51.100.23 127.0.0.1 50000 {}\r\n", w.https).as_bytes())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("term.example.com").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: term.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let echo: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}\n{}", w.logs()));
    assert_eq!(echo["service"], "web", "{echo}");
    assert_eq!(
        echo["headers"]["x-forwarded-for"], "198.51.100.23",
        "{echo}"
    );
}

/// With `use-forwarded-headers`, passthrough is refused (HTTPS would take
/// the client address from a header any client can send): wicket
/// terminates TLS and says why.
#[test]
fn ssl_passthrough_is_refused_with_forwarded_headers() {
    let dir = tempfile::tempdir().unwrap();
    let pt = ingress(
        "apps",
        "pt",
        "  annotations: {nginx.ingress.kubernetes.io/ssl-passthrough: \"true\"}\n",
        "pt.example.com",
        &[("/", "Prefix", "tls", 443)],
    );
    std::fs::write(dir.path().join("pt.yaml"), pt).unwrap();
    std::fs::write(
        dir.path().join("settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: ingress}\ndata: {use-forwarded-headers: \"true\"}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wicket"))
        .args(["render", "--manifests"])
        .arg(dir.path())
        .args([
            "--enable-ssl-passthrough",
            "--configmap",
            "ingress/settings",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("ssl_preread"), "{text}");
    assert!(text.contains("listen 443 ssl"), "{text}");
    assert!(
        err.contains("configmap --configmap: data[\"use-forwarded-headers\"]: --enable-ssl-passthrough is not honoured while it is on"),
        "{err}"
    );
    assert!(
        err.contains("ingress apps/pt: metadata.annotations[\"nginx.ingress.kubernetes.io/ssl-passthrough\"]: not passed through while the global use-forwarded-headers is on"),
        "{err}"
    );
}

/// `log-format-stream` may name `$proxy_upstream_name` whatever the stream
/// block holds: with passthrough on and no entry at all, nginx -t still
/// accepts the config.
#[test]
fn the_stream_log_format_is_valid_in_every_stream_block() {
    use wicket::build::{self, ClassOptions, Options};
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: ingress}\ndata: {log-format-stream: \"$remote_addr $proxy_upstream_name $ssl_preread_server_name\"}\n";
    let mut cluster = wicket::cluster::Cluster::default();
    for o in wicket::source::manifest::parse(text, false)
        .unwrap()
        .objects
    {
        cluster.insert(o);
    }
    let mut cert = wicket::certs::generate_default().unwrap();
    cert.name = "default".into();
    let opts = Options {
        class: ClassOptions {
            watch_without_class: true,
            by_name: true,
            ..ClassOptions::default()
        },
        modules: modules(),
        configmap: Some("ingress/settings".parse().unwrap()),
        ssl_passthrough: true,
        ..Options::new(80, 443, cert)
    };
    let b = build::build(&cluster, &opts);
    assert!(b.problems.is_empty(), "{:?}", b.problems);
    let text = wicket::render::Renderer::embedded()
        .unwrap()
        .render(&b.config, &wicket::render::RenderEnv::default())
        .unwrap();
    assert!(
        text.contains("$proxy_upstream_name $ssl_preread_server_name"),
        "{text}"
    );
    nginx_test(&text, &b.config);
    // A variable the stream module does not have is refused, and the
    // default kept.
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: ingress}\ndata: {log-format-stream: \"$request_uri\"}\n";
    let mut cluster = wicket::cluster::Cluster::default();
    for o in wicket::source::manifest::parse(bad, false).unwrap().objects {
        cluster.insert(o);
    }
    let b = build::build(&cluster, &opts);
    assert!(
        b.problems.iter().any(|p| p.to_string().contains(
            "$request_uri is not a variable of nginx's stream module; the default is used"
        )),
        "{:?}",
        b.problems
    );
}

/// A port another process holds is reported and left out (nginx could not
/// bind it and would refuse the whole config); the rest is served, and
/// the port is served once it is free and the objects change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_another_process_holds_is_reported_and_the_rest_served() {
    let tcp = TcpEcho::start("tcp-echo").await;
    let p = free_ports(2);
    let holder = std::net::TcpListener::bind(("0.0.0.0", p[0])).unwrap();
    let keys: Vec<String> = p.iter().map(u16::to_string).collect();
    let entries = [
        (keys[0].as_str(), "apps/echo:7000"),
        (keys[1].as_str(), "apps/echo:7000"),
    ];
    let w = Wicket::start_with(
        &[
            (
                "svc.yaml",
                &echo_service("apps", "echo", Some(tcp.port), None),
            ),
            ("tcp.yaml", &services("tcp", &entries)),
            ("udp.yaml", &services("udp", &[])),
        ],
        FLAGS,
    )
    .await;
    assert_eq!(w.get("any.example.com", "/").await.status, 404);
    assert_eq!(tcp_ask(p[1], "a\n").await.unwrap(), "tcp-echo - a");
    assert!(
        w.logs().contains(&format!(
            "data[\"{}\"]: TCP port {} is in use by another process on this machine; not served",
            keys[0], keys[0]
        )),
        "{}",
        w.logs()
    );
    drop(holder);
    // Any change rebuilds, and the port is looked at again.
    w.replace(
        "svc.yaml",
        &echo_service("apps", "echo", Some(tcp.port), None).replace("name: echo-1", "name: echo-2"),
    );
    eventually(
        &w,
        "the freed port answers",
        || tcp_ask(p[0], "b\n"),
        |a| a.is_ok(),
    )
    .await;
}
