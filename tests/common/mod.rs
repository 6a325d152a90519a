//! Test harness shared by the integration tests: the real nginx, echo
//! backends, and a `wicket serve` child process driven through its folder
//! and real HTTP requests.
#![allow(dead_code)]

pub mod apiserver;
pub mod chart;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wicket::config::Config;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The injection shapes of ingress-nginx's history, and then some: quotes,
/// braces, semicolons, `#`, newlines, bare carriage returns, `$`, NUL,
/// backslashes, Unicode look-alikes and line separators.
pub const PAYLOADS: &[&str] = &[
    "\"",
    "x\"; return 200 \"owned",
    "}",
    "x} server { listen 1; } #",
    ";",
    "x; root /etc; #",
    "#",
    "x\nreturn 200 owned;",
    "x\rreturn 200 owned;",
    "$host",
    "x${host}",
    "\0",
    "x\\",
    "'",
    "\u{ff1b}\u{ff5d}", // fullwidth ; and }
    "\u{2028}return 200;",
    "ｒｅｔｕｒｎ",
];

/// The folder a tool script under `tools/` prints as its last line (it
/// builds or downloads once, then answers from its cache), or `$env_var`.
pub fn cached_tool(env_var: &str, script: &str, what: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: run `make test`, which installs {what}",
        script.display()
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints its bin folder")
            .trim(),
    )
}

/// The nginx binary the tests run: `$WICKET_NGINX_BINARY`, else `nginx` from
/// PATH or the sbin folders. Tests fail (they do not skip) without it.
pub fn nginx_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WICKET_NGINX_BINARY") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .expect("nginx is not installed: run `make test`, which installs it from Debian's packages")
}

/// The nginx modules wicket uses, from Debian's packages (`make test`
/// installs them); the tests fail without them.
pub fn modules() -> wicket::config::Modules {
    let dir = std::env::var_os("WICKET_NGINX_MODULES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/nginx/modules"));
    let m = wicket::config::Modules::find(&dir);
    assert!(
        m.headers_more && m.brotli && m.set_misc && m.subs_filter && m.lua && m.stream,
        "nginx's headers-more, brotli, ndk, set-misc, subs-filter, lua and stream modules are not all in {}: run `make test`, which installs them from Debian's packages",
        dir.display()
    );
    m
}

/// Runs `nginx -t` on a rendered config with its certificates in a
/// temporary state folder; panics with nginx's message if it refuses, and
/// returns what it said (its warnings) if it accepts.
pub fn nginx_test(text: &str, config: &Config) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    std::fs::create_dir(dir.path().join(wicket::nginx::CONTROL_DIR)).unwrap();
    for c in &config.certificates {
        std::fs::write(
            dir.path().join(format!("certs/{}.crt", c.name)),
            &c.cert_pem,
        )
        .unwrap();
        std::fs::write(dir.path().join(format!("certs/{}.key", c.name)), &c.key_pem).unwrap();
    }
    for t in &config.trusted {
        std::fs::write(dir.path().join(format!("certs/{}.ca.crt", t.name)), &t.pem).unwrap();
    }
    std::fs::write(dir.path().join("nginx.conf"), text).unwrap();
    let out = Command::new(nginx_binary())
        .current_dir(dir.path())
        .arg("-t")
        .arg("-q")
        .arg("-p")
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
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A free TCP port on all addresses (bound and released; the test binds it
/// again right after). Never one it gave before in this process: the
/// kernel can hand out a port just released again, and two of a test's
/// ports (or two tests' running at once) must differ.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

// ---------------------------------------------------------------- backends

/// An echo backend: answers every request with JSON naming the service and
/// endpoint that served it and what it saw (method, path, HTTP version,
/// headers). A request asking for an upgrade gets `101` and then every byte
/// sent is echoed back.
pub struct Echo {
    pub addr: SocketAddr,
    /// How many requests reached it.
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct EchoState {
    service: Arc<str>,
    endpoint: Arc<str>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

async fn echo(
    State(st): State<EchoState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    st.requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if let Some(proto) = req.headers().get(header::UPGRADE).cloned() {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, proto)
            .body(Body::empty())
            .unwrap();
    }
    // `/bytes/N`: N bytes, for bodies larger than nginx buffers in memory.
    if let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures::stream::iter((0..n.div_ceil(chunk.len())).map(move |i| {
            let len = (n - i * chunk.len()).min(chunk.len());
            Ok::<_, std::io::Error>(chunk.slice(..len))
        }));
        return Response::builder()
            .header(header::CONTENT_LENGTH, n)
            .body(Body::from_stream(stream))
            .unwrap();
    }
    let path = req.uri().path().to_string();
    // `/delay/MS`: answer after a while (for timeouts).
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // `/status/N`: answer N (with the echo body).
    let status = path
        .strip_prefix("/status/")
        .and_then(|n| n.parse::<u16>().ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).to_string();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e: &mut String| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let method = req.method().as_str().to_string();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    // Read the whole request body: an answer before it is read would race
    // nginx still sending it.
    let got = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .map(|b| b.len())
        .unwrap_or(0);
    let body = serde_json::json!({
        "service": &*st.service,
        "endpoint": &*st.endpoint,
        "peer": peer.ip().to_string(),
        "method": method,
        "path": uri,
        "version": version,
        "headers": headers,
        "body_bytes": got,
    });
    let mut r = (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("x-echo-response"), "kept"),
        ],
        body.to_string(),
    )
        .into_response();
    // `/set-cookie`: a cookie for the backend's own domain and path.
    if path == "/set-cookie" {
        r.headers_mut().insert(
            header::SET_COOKIE,
            "s=1; Domain=backend.internal; Path=/app/".parse().unwrap(),
        );
    }
    // `/cors`: CORS headers of the backend's own.
    if path == "/cors" {
        for (k, v) in [
            ("access-control-allow-origin", "https://backend.example"),
            ("access-control-expose-headers", "X-Backend"),
        ] {
            r.headers_mut()
                .insert(header::HeaderName::from_static(k), v.parse().unwrap());
        }
    }
    // `/location`: a redirect naming the backend's own address.
    if path == "/location" {
        *r.status_mut() = StatusCode::FOUND;
        r.headers_mut().insert(
            header::LOCATION,
            "http://backend.internal/next".parse().unwrap(),
        );
    }
    r
}

impl Echo {
    /// Starts an echo backend for `service` on `ip` (port 0: any free one).
    pub async fn start(service: &str, ip: Ipv4Addr, port: u16) -> Echo {
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = axum::Router::new().fallback(echo).with_state(EchoState {
            service: service.into(),
            endpoint: addr.to_string().into(),
            requests: requests.clone(),
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Echo {
            addr,
            requests,
            task,
        }
    }

    /// An echo backend over TLS, with this certificate and key (PEM).
    pub async fn start_tls(service: &str, ip: Ipv4Addr, cert: &str, key: &str) -> Echo {
        use rustls::pki_types::pem::PemObject;
        install_crypto();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = axum::Router::new().fallback(echo).with_state(EchoState {
            service: service.into(),
            endpoint: addr.to_string().into(),
            requests: requests.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let app = app.layer(axum::Extension(ConnectInfo(peer)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            TokioIo::new(stream),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                });
            }
        });
        Echo {
            addr,
            requests,
            task,
        }
    }
}

/// A gRPC backend over h2c: every call answers with the message it got
/// and grpc-status 0, and the `x-seen-authority` trailer says which
/// authority nginx sent.
pub struct GrpcEcho {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcEcho {
    pub async fn start(ip: Ipv4Addr) -> GrpcEcho {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let authority = req
                                .uri()
                                .authority()
                                .map(|a| a.to_string())
                                .or_else(|| {
                                    req.headers()
                                        .get("host")
                                        .and_then(|h| h.to_str().ok())
                                        .map(String::from)
                                })
                                .unwrap_or_default();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            trailers.insert(
                                "x-seen-authority",
                                authority.parse().unwrap_or_else(|_| "?".parse().unwrap()),
                            );
                            let frames = futures::stream::iter(vec![
                                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(body)),
                                Ok(hyper::body::Frame::trailers(trailers)),
                            ]);
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(http_body_util::StreamBody::new(frames))
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                });
            }
        });
        GrpcEcho { addr, task }
    }
}

/// One gRPC call over HTTP/2 with TLS to `port` on 127.0.0.1, for `host`
/// (SNI and authority), trusting `ca`: the grpc-status, the message back
/// and the trailers.
pub async fn grpc_call(
    port: u16,
    host: &str,
    ca: &str,
    message: &[u8],
) -> Result<(String, Vec<u8>, hyper::HeaderMap), String> {
    use http_body_util::BodyExt;
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    // A gRPC message: not compressed, a 4-byte length, the bytes.
    let mut framed = vec![0u8];
    framed.extend((message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    let req = hyper::Request::post(format!("https://{host}/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(axum::body::Bytes::from(framed)))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let header_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes().to_vec();
    let status = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or(header_status)
        .unwrap_or_default();
    let message = body.get(5..).map(<[u8]>::to_vec).unwrap_or_default();
    Ok((status, message, trailers))
}

/// A FastCGI responder: answers every request with `text/plain` lines
/// `NAME=VALUE` of the parameters it got.
pub struct FastCgi {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FastCgi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FastCgi {
    pub async fn start(ip: Ipv4Addr) -> FastCgi {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut params = Vec::new();
                    let mut id;
                    loop {
                        let mut head = [0u8; 8];
                        if s.read_exact(&mut head).await.is_err() {
                            return;
                        }
                        let (kind, rid) = (head[1], u16::from_be_bytes([head[2], head[3]]));
                        let len = u16::from_be_bytes([head[4], head[5]]) as usize;
                        let pad = head[6] as usize;
                        let mut body = vec![0u8; len + pad];
                        if s.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        body.truncate(len);
                        id = rid;
                        match kind {
                            4 => params.extend(body),
                            // The end of the request body: answer.
                            5 if len == 0 => break,
                            _ => {}
                        }
                    }
                    let mut out = String::from("Content-Type: text/plain\r\n\r\n");
                    let mut i = 0;
                    let read_len = |i: &mut usize| -> usize {
                        if params[*i] & 0x80 == 0 {
                            *i += 1;
                            params[*i - 1] as usize
                        } else {
                            let n = u32::from_be_bytes([
                                params[*i] & 0x7f,
                                params[*i + 1],
                                params[*i + 2],
                                params[*i + 3],
                            ]);
                            *i += 4;
                            n as usize
                        }
                    };
                    while i < params.len() {
                        let nl = read_len(&mut i);
                        let vl = read_len(&mut i);
                        let name = String::from_utf8_lossy(&params[i..i + nl]).to_string();
                        let value =
                            String::from_utf8_lossy(&params[i + nl..i + nl + vl]).to_string();
                        i += nl + vl;
                        out.push_str(&format!("{name}={value}\n"));
                    }
                    let record = |kind: u8, content: &[u8]| {
                        let mut r = vec![1, kind];
                        r.extend(id.to_be_bytes());
                        r.extend((content.len() as u16).to_be_bytes());
                        r.extend([0, 0]);
                        r.extend_from_slice(content);
                        r
                    };
                    let mut reply = record(6, out.as_bytes());
                    reply.extend(record(6, &[]));
                    reply.extend(record(3, &[0, 0, 0, 0, 0, 0, 0, 0]));
                    let _ = s.write_all(&reply).await;
                });
            }
        });
        FastCgi { addr, task }
    }
}

/// A Service with one port (`port`, named `name` if given) and an
/// EndpointSlice with the given endpoints (address, ready) on `target`.
pub fn service(
    ns: &str,
    svc: &str,
    port: u16,
    port_name: Option<&str>,
    target: u16,
    endpoints: &[(IpAddr, bool)],
) -> String {
    let name = port_name
        .map(|n| format!("name: {n}, "))
        .unwrap_or_default();
    let eps = if endpoints.is_empty() {
        "endpoints: []\n".to_string()
    } else {
        let mut e = "endpoints:\n".to_string();
        for (ip, ready) in endpoints {
            e.push_str(&format!(
                "- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}}}\n"
            ));
        }
        e
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: {ns}}}\nspec:\n  ports: [{{{name}port: {port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc}-slice, namespace: {ns}, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{{{name}port: {target}}}]\n{eps}"
    )
}

/// An Ingress with one rule: `host` (empty: none), and `(path, type, service, port)` paths.
pub fn ingress(
    ns: &str,
    name: &str,
    meta: &str,
    host: &str,
    paths: &[(&str, &str, &str, u16)],
) -> String {
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {ns}\n{meta}spec:\n  rules:\n  - "
    );
    if !host.is_empty() {
        out.push_str(&format!("host: \"{host}\"\n    "));
    }
    out.push_str("http:\n      paths:\n");
    for (path, ty, svc, port) in paths {
        out.push_str(&format!(
            "      - path: \"{path}\"\n        pathType: {ty}\n        backend: {{service: {{name: {svc}, port: {{number: {port}}}}}}}\n"
        ));
    }
    out
}

// ---------------------------------------------------------------- clients

struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client that resolves every name to 127.0.0.1 and never follows
/// redirects (a redirect is an answer the tests check).
pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(Loopback))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// An HTTPS client that trusts only the given PEM certificates.
pub fn tls_client(trusted_pem: &[&str]) -> reqwest::Client {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for pem in trusted_pem {
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .dns_resolver(Arc::new(Loopback))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap()
}

/// A self-signed certificate and key (PEM) for the given names.
pub fn cert_for(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// A `kubernetes.io/tls` Secret manifest.
pub fn tls_secret(ns: &str, name: &str, cert: &str, key: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

/// What a request got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: reqwest::Version,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    /// The echo backend's JSON, if an echo backend answered.
    pub fn echo(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.text).ok()
    }
    /// Which service answered: the echo's `service`, or `status N`.
    pub fn who(&self) -> String {
        match self.echo() {
            Some(v) if self.status == 200 => v["service"].as_str().unwrap_or("?").to_string(),
            _ => format!("status {}", self.status),
        }
    }
}

pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<Answer, reqwest::Error> {
    let r = client.get(url).send().await?;
    Ok(Answer {
        status: r.status().as_u16(),
        version: r.version(),
        headers: r.headers().clone(),
        text: r.text().await?,
    })
}

/// GET as an RFC 9112 client does: a request sent on a reused keep-alive
/// connection that the server closed at that instant (an old nginx worker
/// ending after a reload closes its idle connections) is retried once.
/// Returns the answer and whether it needed the retry.
pub async fn fetch_idempotent(
    client: &reqwest::Client,
    url: &str,
) -> (Result<Answer, reqwest::Error>, bool) {
    let closed = |e: &reqwest::Error| {
        let d = format!("{e:?}");
        e.is_request() && (d.contains("IncompleteMessage") || d.contains("ConnectionReset"))
    };
    match fetch(client, url).await {
        Err(e) if closed(&e) => (fetch(client, url).await, true),
        other => (other, false),
    }
}

// ---------------------------------------------------------------- wicket

/// A `wicket serve` child process with its own manifests folder, ports and
/// state folder.
pub struct Wicket {
    pub manifests: tempfile::TempDir,
    pub state: tempfile::TempDir,
    logs: tempfile::TempDir,
    pub http: u16,
    pub https: u16,
    pub admin: u16,
    child: Option<Child>,
    pub client: reqwest::Client,
}

impl Wicket {
    /// Writes the files, starts `wicket serve` and waits until it is ready.
    pub async fn start(files: &[(&str, &str)]) -> Wicket {
        Self::start_with(files, &[]).await
    }

    pub async fn start_with(files: &[(&str, &str)], args: &[&str]) -> Wicket {
        Self::start_limited(files, args, None).await
    }

    /// [`Wicket::start_with`], with at most `nofile` open files (wicket
    /// and nginx alike) when given.
    pub async fn start_limited(
        files: &[(&str, &str)],
        args: &[&str],
        nofile: Option<u64>,
    ) -> Wicket {
        let manifests = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(manifests.path().join(name), text).unwrap();
        }
        let mut cmd: Vec<String> = vec![
            "serve".into(),
            "--manifests".into(),
            manifests.path().display().to_string(),
        ];
        cmd.extend(args.iter().map(|a| a.to_string()));
        Self::launch_limited(manifests, &cmd, &[], nofile).await
    }

    /// Starts `wicket controller` against an API server, with `args` added.
    pub async fn controller(kubeconfig: &Path, args: &[&str]) -> Wicket {
        let mut cmd: Vec<String> = vec!["controller".into()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        Self::launch(
            tempfile::tempdir().unwrap(),
            &cmd,
            &[("KUBECONFIG", kubeconfig.as_os_str())],
        )
        .await
    }

    /// Starts wicket on free ports and waits until it is ready. Ports are
    /// found free and then bound by wicket and nginx: if another test took
    /// one meanwhile, it starts again on others.
    async fn launch(
        manifests: tempfile::TempDir,
        cmd: &[String],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Wicket {
        Self::launch_limited(manifests, cmd, env, None).await
    }

    async fn launch_limited(
        manifests: tempfile::TempDir,
        cmd: &[String],
        env: &[(&str, &std::ffi::OsStr)],
        nofile: Option<u64>,
    ) -> Wicket {
        let mut manifests = Some(manifests);
        for attempt in 1.. {
            let state = tempfile::tempdir().unwrap();
            let logs = tempfile::tempdir().unwrap();
            let (http, https, admin) = (free_port(), free_port(), free_port());
            let mut command = Command::new(env!("CARGO_BIN_EXE_wicket"));
            if let Some(n) = nofile {
                use std::os::unix::process::CommandExt;
                // SAFETY: setrlimit is async-signal-safe; it only lowers the
                // child's own limit before exec.
                unsafe {
                    command.pre_exec(move || {
                        let lim = libc::rlimit {
                            rlim_cur: n,
                            rlim_max: n,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
            }
            let child = command
                .args(cmd)
                .args(["--http-port", &http.to_string()])
                .args(["--https-port", &https.to_string()])
                .args(["--admin-port", &admin.to_string()])
                .arg("--state-dir")
                .arg(state.path().join("state"))
                .arg("--nginx-binary")
                .arg(nginx_binary())
                .env("RUST_LOG", "info,wicket=debug")
                .envs(env.iter().map(|(k, v)| (*k, *v)))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(logs.path().join("stdout")).unwrap())
                .stderr(std::fs::File::create(logs.path().join("stderr")).unwrap())
                .spawn()
                .unwrap();
            let mut w = Wicket {
                manifests: manifests.take().expect("kept across attempts"),
                state,
                logs,
                http,
                https,
                admin,
                child: Some(child),
                client: client(),
            };
            match w.wait_ready().await {
                Ok(()) => return w,
                Err(e) if attempt < 3 && w.logs().contains("Address already in use") => {
                    eprintln!("a port was taken meanwhile; starting again ({e})");
                    if let Some(mut c) = w.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    manifests = Some(std::mem::replace(
                        &mut w.manifests,
                        tempfile::tempdir().unwrap(),
                    ));
                }
                Err(e) => panic!("{e}\n{}", w.logs()),
            }
        }
        unreachable!()
    }

    /// The state folder wicket was given.
    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.logs.path().join(n)).unwrap_or_default();
        format!(
            "--- wicket stderr ---\n{}\n--- wicket stdout ---\n{}",
            read("stderr"),
            read("stdout")
        )
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // Let a still-running nginx child release its ports.
                self.child = None;
                return Err(format!("wicket exited ({status}) before it was ready"));
            }
            if let Ok(a) = fetch(
                &self.client,
                &format!("http://127.0.0.1:{}/readyz", self.admin),
            )
            .await
                && a.status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("wicket was not ready in time".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes a manifest file in place (not atomically, as an editor might).
    pub fn write(&self, name: &str, text: &str) {
        let mut f = std::fs::File::create(self.manifests.path().join(name)).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Replaces a manifest file atomically (a temporary hidden file, then a
    /// rename), as deployment tools do: wicket never sees it half-written.
    pub fn replace(&self, name: &str, text: &str) {
        let tmp = self.manifests.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests.path().join(name)).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.manifests.path().join(name)
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.http)
    }

    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https)
    }

    /// GET over HTTP with this Host (resolved to 127.0.0.1).
    /// Retried once if it met a keep-alive connection that
    /// nginx closed at that instant (see `fetch_idempotent`): the tests
    /// write files and reload nginx while they send requests.
    pub async fn get(&self, host: &str, path: &str) -> Answer {
        fetch_idempotent(&self.client, &self.url(host, path))
            .await
            .0
            .unwrap_or_else(|e| panic!("GET {}: {e}\n{}", self.url(host, path), self.logs()))
    }

    /// Polls until `check` is true for the answer to GET host/path.
    pub async fn eventually(
        &self,
        host: &str,
        path: &str,
        what: &str,
        check: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(a) = fetch(&self.client, &self.url(host, path)).await
                && check(&a)
            {
                return a;
            }
            if Instant::now() > deadline {
                let last = fetch(&self.client, &self.url(host, path)).await;
                panic!(
                    "{host}{path}: never {what}; last answer {last:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// GET on the admin unix socket in the state folder, where the
    /// inspection endpoints answer.
    pub async fn inspect(&self, path: &str) -> Answer {
        unix_get(&self.state_dir().join("admin.sock"), path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} on admin.sock: {e}\n{}", self.logs()))
    }

    /// GET on the admin listener, on a new connection: a pooled one may
    /// be closed by the listener's header timeout just as it is reused.
    pub async fn admin_get(&self, path: &str) -> Answer {
        fetch(&client(), &format!("http://127.0.0.1:{}{path}", self.admin))
            .await
            .unwrap()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        // Close this client's pooled connections first: nginx's graceful
        // shutdown waits (up to worker_shutdown_timeout) for connections that
        // were opened but never sent a request, which a client pool may hold.
        self.client = client();
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("wicket did not stop after SIGTERM\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// PID of the nginx master, from its pid file.
    pub fn nginx_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state_dir().join("nginx.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for Wicket {
    fn drop(&mut self) {
        if self.child.is_some() {
            if std::thread::panicking() || std::env::var_os("WICKET_TEST_LOGS").is_some() {
                eprintln!("{}", self.logs());
            }
            self.stop();
        }
    }
}

/// Reads the whole of a raw TCP answer up to the end of its headers.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(
            n > 0,
            "connection closed mid-head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// GET over a unix socket (HTTP/1.0, so the answer ends with the
/// connection).
pub async fn unix_get(socket: &Path, path: &str) -> Result<Answer, String> {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: wicket\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "no answer within 10s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8(buf).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let mut headers = reqwest::header::HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(k, v);
        }
    }
    Ok(Answer {
        status,
        version: reqwest::Version::HTTP_10,
        headers,
        text: body.to_string(),
    })
}

/// The processes of a process group that are still there (zombies
/// excluded: they hold no port).
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split
        // after its closing parenthesis.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2].parse::<i32>() == Ok(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Bytes of the files under `dir` that the processes of a process group
/// hold open, deleted ones included (nginx unlinks its temporary files
/// right after creating them).
pub fn open_bytes_under(pgid: i32, dir: &Path) -> u64 {
    let mut total = 0;
    for pid in processes_in_group(pgid) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.starts_with(dir)
                && let Ok(m) = std::fs::metadata(fd.path())
            {
                total += m.len();
            }
        }
    }
    total
}

/// Total size of the files under a folder.
pub fn folder_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            folder_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

/// Whether a file exists in a folder.
pub fn exists(dir: &Path, name: &str) -> bool {
    dir.join(name).exists()
}

/// `metadata` lines with these annotations under ingress-nginx's prefix
/// (`nginx.ingress.kubernetes.io`).
pub fn annotated(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("  annotations:\n");
    for (k, v) in pairs {
        out.push_str(&format!(
            "    nginx.ingress.kubernetes.io/{k}: {}\n",
            serde_json::to_string(v).unwrap()
        ));
    }
    out
}

/// The ConfigMap `NS/settings` with these keys (for `--configmap NS/settings`).
pub fn settings(ns: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: {ns}}}\ndata:\n"
    );
    for (k, v) in pairs {
        out.push_str(&format!("  {k}: {}\n", serde_json::to_string(v).unwrap()));
    }
    out
}
