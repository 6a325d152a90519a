//! The admin HTTP endpoint: `/healthz`, `/readyz`, `/config`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What the admin endpoint reports, updated by the serve loop.
#[derive(Clone, Default)]
pub struct Status {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    ready: bool,
    /// Why not ready, or a note about the last change while ready.
    note: String,
    config: Option<Arc<str>>,
}

impl Status {
    /// nginx serves `config`, the newest config that passed `nginx -t`.
    pub fn serving(&self, config: &str, note: impl Into<String>) {
        let mut i = self.inner.write().expect("status lock");
        i.ready = true;
        i.note = note.into();
        i.config = Some(config.into());
    }

    /// The newest config is not served yet (a change is being applied, or
    /// nginx is down).
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Status>) -> impl IntoResponse {
    let i = s.inner.read().expect("status lock");
    let code = if i.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if i.ready { "ready" } else { "not ready" };
    let body = if i.note.is_empty() {
        format!("{word}\n")
    } else {
        format!("{word}: {}\n", i.note)
    };
    (code, body)
}

async fn config(State(s): State<Status>) -> impl IntoResponse {
    let i = s.inner.read().expect("status lock");
    match &i.config {
        Some(c) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            c.to_string(),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no config is served yet\n".to_string(),
        ),
    }
}

pub fn router(status: Status) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/config", get(config))
        .with_state(status)
}

/// Binds the admin endpoint; serving starts when the returned future runs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the admin endpoint until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, status: Status) -> std::io::Result<()> {
    axum::serve(listener, router(status)).await
}
