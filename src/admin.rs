//! The admin HTTP endpoint.
//!
//! - `/healthz`, `/readyz`, `/metrics`: for kubelet probes and Prometheus.
//! - `/config` (the nginx.conf nginx runs), `/config/candidate` (the last
//!   config tried, with its `nginx -t` error if it failed), `/model` (the
//!   Config model as JSON), `/endpoints` (each upstream's endpoints as
//!   nginx uses them now, updates without a reload included): they show
//!   every route and backend, so they
//!   never rest on who the peer seems to be (nginx itself connects from
//!   127.0.0.1 when it proxies to a backend on this machine). They answer
//!   on the unix socket `STATE/admin.sock` (mode 0600, in the private
//!   state folder, which no Ingress can make nginx connect to), and on the
//!   TCP port only to a request that carries the bearer token of
//!   `--inspection-token-file`.
//!
//! No endpoint reads a request body.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::Config;
use crate::metrics::Metrics;

/// What the admin endpoint reports, updated by the serving loop.
#[derive(Clone, Default)]
pub struct Status {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    ready: bool,
    /// Why not ready, or a note about the last change while ready.
    note: String,
    config: Option<Arc<String>>,
    model: Option<Arc<Config>>,
    /// The last config tried, and why nginx refused it if it did.
    candidate: Option<(Arc<String>, Option<String>)>,
}

impl Status {
    /// nginx serves `config`, built from `model`, the newest config that
    /// passed `nginx -t`.
    pub fn serving(&self, text: Arc<String>, model: Arc<Config>, note: impl Into<String>) {
        let mut i = self.inner.write().expect("status lock");
        i.ready = true;
        i.note = note.into();
        i.config = Some(text.clone());
        i.model = Some(model);
        i.candidate = Some((text, None));
    }

    /// nginx is back with the config it served.
    pub fn restored(&self) {
        let mut i = self.inner.write().expect("status lock");
        i.ready = i.config.is_some();
        i.note.clear();
    }

    /// nginx refused a config.
    pub fn refused(&self, config: &str, error: String) {
        self.inner.write().expect("status lock").candidate =
            Some((Arc::new(config.to_string()), Some(error)));
    }

    /// The newest config is not served yet (nginx is down, or never
    /// started).
    pub fn not_ready(&self, why: impl Into<String>) {
        let mut i = self.inner.write().expect("status lock");
        i.ready = false;
        i.note = why.into();
    }

    /// Keeps readiness, updates the note (for example: the newest change was
    /// refused, the last good config keeps serving).
    pub fn note(&self, note: impl Into<String>) {
        self.inner.write().expect("status lock").note = note.into();
    }

    pub fn is_ready(&self) -> bool {
        self.inner.read().expect("status lock").ready
    }
}

/// Who may use the inspection endpoints on a listener.
#[derive(Clone, Debug)]
pub enum Inspection {
    /// Everyone who can connect: the unix socket, whose file mode decides.
    Open,
    /// Requests with `Authorization: Bearer TOKEN`, the token being the
    /// content of this file (read at each request, so a rotated Secret
    /// applies at once).
    Token(PathBuf),
    /// Nobody: the TCP port without `--inspection-token-file`.
    Closed,
}

#[derive(Clone)]
struct AdminState {
    status: Status,
    metrics: Metrics,
    inspection: Arc<Inspection>,
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let i = s.status.inner.read().expect("status lock");
    let (code, word) = if i.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    let body = if i.note.is_empty() {
        format!("{word}\n")
    } else {
        format!("{word}: {}\n", i.note)
    };
    text(code, body)
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode().await,
    )
        .into_response()
}

/// Compares two byte strings in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses inspection to a request this listener does not allow.
fn inspect(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let path = match &*s.inspection {
        Inspection::Open => return None,
        Inspection::Closed => {
            return Some(text(
                StatusCode::FORBIDDEN,
                "inspection is served on the unix socket admin.sock in the state folder; on this port it needs --inspection-token-file\n".into(),
            ));
        }
        Inspection::Token(path) => path,
    };
    let token = match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) => {
            return Some(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the inspection token file is empty\n".into(),
            ));
        }
        Err(e) => {
            return Some(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the inspection token file cannot be read: {e}\n"),
            ));
        }
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => None,
        _ => Some(text(
            StatusCode::UNAUTHORIZED,
            "inspection needs Authorization: Bearer with the token of --inspection-token-file\n"
                .into(),
        )),
    }
}

async fn config(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = inspect(&s, &headers) {
        return r;
    }
    match &s.status.inner.read().expect("status lock").config {
        Some(c) => text(StatusCode::OK, c.to_string()),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no config is served yet\n".into(),
        ),
    }
}

async fn candidate(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = inspect(&s, &headers) {
        return r;
    }
    match &s.status.inner.read().expect("status lock").candidate {
        Some((c, None)) => text(
            StatusCode::OK,
            format!("# accepted by nginx -t and served\n{c}"),
        ),
        Some((c, Some(e))) => text(
            StatusCode::OK,
            format!("# refused by nginx -t: {}\n{c}", e.replace('\n', " ")),
        ),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no config was tried yet\n".into(),
        ),
    }
}

async fn model(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = inspect(&s, &headers) {
        return r;
    }
    let model = s.status.inner.read().expect("status lock").model.clone();
    match model.map(|m| serde_json::to_string_pretty(&*m)) {
        Some(Ok(json)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Some(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no config is served yet\n".into(),
        ),
    }
}

/// One upstream of `/endpoints`.
#[derive(serde::Serialize)]
struct UpstreamNow<'a> {
    name: &'a str,
    service: &'a str,
    /// `update`: sent to nginx since it loaded its config; `config`: the
    /// servers of the config it loaded.
    source: &'static str,
    endpoints: Vec<String>,
}

/// The endpoints nginx uses now: each upstream's from the last update
/// nginx took (asked of an nginx worker on the status socket), else from
/// the config it loaded. Only updates change an upstream's servers, so the
/// servers of an upstream without one are those of the model.
async fn endpoints(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = inspect(&s, &headers) {
        return r;
    }
    let model = s.status.inner.read().expect("status lock").model.clone();
    let Some(model) = model else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no config is served yet\n".into(),
        );
    };
    let mut updated: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut version = None;
    if model.dynamic_endpoints {
        let Some(socket) = s.metrics.status_socket() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "nginx runs nowhere\n".into(),
            );
        };
        let Some(report) = crate::nginx::query_status(&socket, "/wicket/endpoints").await else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "nginx did not answer on its status socket\n".into(),
            );
        };
        let mut lines = report.lines();
        version = lines.next().map(str::to_string);
        for line in lines {
            let mut words = line.split_whitespace();
            if let Some(name) = words.next() {
                updated.insert(name.to_string(), words.map(str::to_string).collect());
            }
        }
    }
    let upstreams: Vec<UpstreamNow> = model
        .upstreams
        .iter()
        .map(|u| match updated.remove(&u.name) {
            Some(endpoints) => UpstreamNow {
                name: &u.name,
                service: &u.service,
                source: "update",
                endpoints,
            },
            None => UpstreamNow {
                name: &u.name,
                service: &u.service,
                source: "config",
                endpoints: u.servers.iter().map(|s| s.to_string()).collect(),
            },
        })
        .collect();
    let body = serde_json::json!({
        "dynamic": model.dynamic_endpoints,
        "nginx": version,
        "upstreams": upstreams,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&body).unwrap_or_default(),
    )
        .into_response()
}

pub fn router(status: Status, metrics: Metrics, inspection: Inspection) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/config", get(config))
        .route("/config/candidate", get(candidate))
        .route("/model", get(model))
        .route("/endpoints", get(endpoints))
        .with_state(AdminState {
            status,
            metrics,
            inspection: Arc::new(inspection),
        })
}

/// The admin unix socket's file name in the state folder.
pub const SOCKET: &str = "admin.sock";

/// Binds the admin endpoint on TCP and on its unix socket in the state
/// folder (mode 0600), and serves both in the background, each with the
/// limits of [`crate::listen::ADMIN`].
pub async fn start(
    addr: std::net::SocketAddr,
    state_dir: &std::path::Path,
    status: Status,
    metrics: Metrics,
    token_file: Option<PathBuf>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let socket = state_dir.join(SOCKET);
    // A socket left by a wicket that did not stop cleanly.
    let _ = std::fs::remove_file(&socket);
    let unix = tokio::net::UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let on_tcp = match token_file {
        Some(f) => Inspection::Token(f),
        None => Inspection::Closed,
    };
    crate::listen::spawn(
        tcp,
        crate::listen::ADMIN,
        None,
        router(status.clone(), metrics.clone(), on_tcp),
        "admin",
    );
    crate::listen::spawn(
        unix,
        crate::listen::ADMIN,
        None,
        router(status, metrics, Inspection::Open),
        "admin socket",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
