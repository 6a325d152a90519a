//! The admin HTTP endpoint.
//!
//! - `/healthz`, `/readyz`, `/metrics`: for kubelet probes and Prometheus.
//! - `/config` (the nginx.conf nginx runs), `/config/candidate` (the last
//!   config tried, with its `nginx -t` error if it failed), `/model` (the
//!   Config model as JSON): answered only to loopback clients unless
//!   `--allow-remote-inspection`, since they show every route and backend.
//!
//! No endpoint reads a request body.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
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

#[derive(Clone)]
struct AdminState {
    status: Status,
    metrics: Metrics,
    remote_inspection: bool,
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

/// Refuses inspection to clients that are not on this machine, unless
/// allowed.
fn inspect(s: &AdminState, peer: SocketAddr) -> Option<Response> {
    (!s.remote_inspection && !peer.ip().is_loopback()).then(|| {
        text(
            StatusCode::FORBIDDEN,
            "inspection endpoints answer loopback clients only (see --allow-remote-inspection)\n"
                .into(),
        )
    })
}

async fn config(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(r) = inspect(&s, peer) {
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

async fn candidate(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(r) = inspect(&s, peer) {
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

async fn model(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(r) = inspect(&s, peer) {
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

pub fn router(status: Status, metrics: Metrics, remote_inspection: bool) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/config", get(config))
        .route("/config/candidate", get(candidate))
        .route("/model", get(model))
        .with_state(AdminState {
            status,
            metrics,
            remote_inspection,
        })
}

/// Binds the admin endpoint; serving starts when the returned future runs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the admin endpoint until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
