//! The validating admission webhook: `POST /validate-ingress` over TLS,
//! AdmissionReview v1 for Ingress CREATE and UPDATE.
//!
//! It runs the same validation and the same `build` the controller runs,
//! over the cluster as it would be with the submitted object (host and path
//! conflicts included), and refuses with the reason. It never runs nginx on
//! anything submitted. The request body is capped, at most a few reviews run
//! at once, and each answers within a deadline well inside the API server's
//! timeout: a review that cannot finish in time is admitted with a warning
//! (the controller still rejects a bad Ingress on its own, and nothing it
//! rejects reaches nginx).
//!
//! The certificate and key are read from files and reloaded when they
//! change, without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::networking::v1::Ingress;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::build::{self, class};
use crate::cluster::{Cluster, Kind, ObjectKey};
use crate::problem::Severity;

/// Largest AdmissionReview accepted (the API server's own object limit is
/// about 1.5 MiB; a review holds the object twice on UPDATE).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Reviews that may run at once.
const CONCURRENCY: usize = 4;
/// Answer within this, whatever the load (the API server waits 10 s by
/// default).
const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading the webhook certificate {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("binding the webhook on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and key from files, reloaded when either file changes.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: RwLock<CertState>,
}

#[derive(Debug)]
struct CertState {
    loaded: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

fn stamp(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<Arc<CertifiedKey>, WebhookError> {
    let bad = |path: &PathBuf, message: String| WebhookError::Certificate {
        path: path.clone(),
        message,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| bad(cert, e.to_string()))?;
    let key_pem = std::fs::read(key).map_err(|e| bad(key, e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(key, e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider)
        .map(Arc::new)
        .map_err(|e| bad(key, e.to_string()))
}

impl ReloadingCert {
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, WebhookError> {
        let loaded = load(&cert, &key)?;
        let stamps = (stamp(&cert), stamp(&key));
        Ok(ReloadingCert {
            cert,
            key,
            state: RwLock::new(CertState {
                loaded,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The current certificate, re-read if the files changed (checked at
    /// most once a second).
    fn current(&self) -> Arc<CertifiedKey> {
        {
            let s = self.state.read().expect("cert lock");
            if s.checked.elapsed() < Duration::from_secs(1) {
                return s.loaded.clone();
            }
        }
        let mut s = self.state.write().expect("cert lock");
        s.checked = Instant::now();
        let stamps = (stamp(&self.cert), stamp(&self.key));
        if stamps != s.stamps {
            match load(&self.cert, &self.key) {
                Ok(k) => {
                    info!(cert = %self.cert.display(), "webhook certificate reloaded");
                    s.loaded = k;
                    s.stamps = stamps;
                }
                // Half-written files, say: keep serving the old one.
                Err(e) => warn!(error = %e, "webhook certificate not reloaded"),
            }
        }
        s.loaded.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What a review decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub message: String,
    pub warnings: Vec<String>,
}

/// Reviews an Ingress against a snapshot: the cluster as it would be with
/// it.
pub fn review(cluster: &Cluster, opts: &build::Options, namespace: &str, ing: &Ingress) -> Verdict {
    let allow = Verdict {
        allowed: true,
        message: String::new(),
        warnings: Vec::new(),
    };
    if !class::is_ours(ing, cluster, &opts.class) {
        return allow;
    }
    let ns = ing
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.to_string());
    let name = ing
        .metadata
        .name
        .clone()
        .or_else(|| ing.metadata.generate_name.clone().map(|g| format!("{g}x")))
        .unwrap_or_default();
    let key = ObjectKey::new(ns, name);
    let mut cluster = cluster.clone();
    let mut ing = ing.clone();
    ing.metadata.namespace = Some(key.namespace.clone());
    // On create the object has no timestamp yet: it is the newest, so it
    // loses a conflict with any existing Ingress, as it will once created.
    cluster.ingresses.insert(key.clone(), Arc::new(ing));
    let b = build::build(&cluster, opts);
    let mine: Vec<_> = b
        .problems
        .iter()
        .filter(|p| p.object.kind == Kind::Ingress && p.object.key == key)
        .collect();
    let line = |p: &crate::problem::Problem| match &p.field {
        Some(f) => format!("{f}: {}", p.message),
        None => p.message.clone(),
    };
    let refused: Vec<String> = mine
        .iter()
        .filter(|p| {
            p.severity == Severity::Rejected
                || (p.severity == Severity::Warning && p.message.contains("is served by ingress"))
        })
        .map(|p| line(p))
        .collect();
    let warnings: Vec<String> = mine
        .iter()
        .filter(|p| {
            !(p.severity == Severity::Rejected || p.message.contains("is served by ingress"))
        })
        .map(|p| line(p))
        .collect();
    if refused.is_empty() {
        Verdict { warnings, ..allow }
    } else {
        Verdict {
            allowed: false,
            message: format!("wicket refuses ingress {key}: {}", refused.join("; ")),
            warnings,
        }
    }
}

/// Gives the webhook the current snapshot and options.
pub type Snapshot = Arc<dyn Fn() -> Cluster + Send + Sync>;

#[derive(Clone)]
struct WebhookState {
    snapshot: Snapshot,
    opts: Arc<build::Options>,
    limit: Arc<Semaphore>,
}

fn json(review: AdmissionReview<kube::core::DynamicObject>) -> Response {
    match serde_json::to_vec(&review) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn validate(State(st): State<WebhookState>, body: Bytes) -> Response {
    let submitted: AdmissionReview<Ingress> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json(
                AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")).into_review(),
            );
        }
    };
    let req: AdmissionRequest<Ingress> = match submitted.try_into() {
        Ok(r) => r,
        Err(_) => {
            return json(
                AdmissionResponse::invalid("the AdmissionReview has no request").into_review(),
            );
        }
    };
    let resp = AdmissionResponse::from(&req);
    let object = match (&req.operation, req.object.clone()) {
        (Operation::Create | Operation::Update, Some(o)) => o,
        _ => return json(resp.into_review()),
    };
    let namespace = req.namespace.clone().unwrap_or_default();
    let started = Instant::now();
    let work = async {
        let permit = st.limit.clone().acquire_owned().await.ok()?;
        let (snapshot, opts) = (st.snapshot.clone(), st.opts.clone());
        // The permit goes with the review: one that outlives the deadline
        // still counts until it ends, so no more than CONCURRENCY run.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            review(&snapshot(), &opts, &namespace, &object)
        })
        .await
        .ok()
    };
    let verdict = tokio::time::timeout(DEADLINE, work).await.ok().flatten();
    let mut resp = match verdict {
        Some(v) if v.allowed => {
            let mut r = resp;
            r.warnings = (!v.warnings.is_empty()).then_some(v.warnings);
            r
        }
        Some(v) => {
            debug!(uid = %req.uid, "admission refused: {}", v.message);
            let mut r = resp.deny(v.message);
            r.warnings = (!v.warnings.is_empty()).then_some(v.warnings);
            r
        }
        None => {
            warn!(uid = %req.uid, "admission review not finished in time; admitted unchecked");
            let mut r = resp;
            r.warnings = Some(vec!["wicket could not validate this Ingress in time; it checks it again before serving it".into()]);
            r
        }
    };
    resp.result.code = if resp.allowed { 200 } else { 400 };
    debug!(uid = %req.uid, allowed = resp.allowed, ms = started.elapsed().as_millis() as u64, "admission review");
    json(resp.into_review())
}

pub fn router(snapshot: Snapshot, opts: build::Options) -> Router {
    Router::new()
        .route("/validate-ingress", post(validate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(WebhookState {
            snapshot,
            opts: Arc::new(opts),
            limit: Arc::new(Semaphore::new(CONCURRENCY)),
        })
}

/// Serves the webhook over TLS until the process exits, with the limits
/// of [`crate::listen::WEBHOOK`] (connections are not authenticated: the
/// API server calls in, so idle ones must not pile up).
pub async fn serve(
    addr: SocketAddr,
    cert: Arc<ReloadingCert>,
    app: Router,
) -> Result<(), WebhookError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(cert);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    info!(%addr, "admission webhook listening");
    crate::listen::spawn(
        listener,
        crate::listen::WEBHOOK,
        Some(acceptor),
        app,
        "webhook",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Object;

    fn objects(yaml: &str) -> Vec<Object> {
        crate::source::manifest::parse(yaml, false).unwrap().objects
    }

    #[test]
    fn refuses_a_path_another_ingress_serves_and_invalid_values() {
        let mut cluster = Cluster::default();
        for o in objects(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: taken, namespace: web, creationTimestamp: \"2026-01-01T00:00:00Z\"}\nspec:\n  rules:\n  - host: t.example.com\n    http: {paths: [{path: /api, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n",
        ) {
            cluster.insert(o);
        }
        let mut opts = build::Options::new(80, 443, crate::certs::generate_default().unwrap());
        opts.class.watch_without_class = true;
        let submitted = |name: &str, ts: &str, path: &str| -> Ingress {
            serde_yaml::from_str(&format!(
                "metadata: {{name: {name}, namespace: web, creationTimestamp: \"{ts}\"}}\nspec:\n  rules:\n  - host: t.example.com\n    http: {{paths: [{{path: '{path}', pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n"
            ))
            .unwrap()
        };
        let v = review(
            &cluster,
            &opts,
            "web",
            &submitted("conflict", "2026-02-01T00:00:00Z", "/api"),
        );
        assert!(!v.allowed);
        assert!(
            v.message.contains("is served by ingress web/taken"),
            "{}",
            v.message
        );
        let v = review(
            &cluster,
            &opts,
            "web",
            &submitted("fine", "2026-02-01T00:00:00Z", "/other"),
        );
        assert!(v.allowed, "{v:?}");
        assert_eq!(
            v.warnings,
            ["spec.rules[0].http.paths[0]: service web/web not found; answering 503"]
        );
        // Updating the owner of the path is not a conflict with itself.
        let v = review(
            &cluster,
            &opts,
            "web",
            &submitted("taken", "2026-01-01T00:00:00Z", "/api"),
        );
        assert!(v.allowed, "{v:?}");
        let v = review(
            &cluster,
            &opts,
            "web",
            &submitted("bad", "2026-02-01T00:00:00Z", "/a{b"),
        );
        assert!(!v.allowed);
        assert!(
            v.message
                .starts_with("wicket refuses ingress web/bad: spec.rules[0].http.paths[0].path"),
            "{}",
            v.message
        );
    }
}
