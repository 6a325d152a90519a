//! `wicket controller`: the pipeline fed by the Kubernetes API.
//!
//! Watches start first; nginx starts only after every cache has synced. One
//! loop then coalesces changes (a quiet period, a maximum wait, and a
//! minimum interval between rebuilds, so endpoint churn can neither starve
//! nor flood it) and hands each snapshot to the [`Engine`]. The leader
//! writes Ingress status and Events from each round.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::admin::Status;
use crate::build;
use crate::cluster::{Kind, ObjectKey};
use crate::engine::{Applied, Engine, RunError, Shutdown, coalesce, sleep_until, start_admin};
use crate::leader::{Election, LeaderOptions};
use crate::nginx::NginxOptions;
use crate::render::Renderer;
use crate::source::kube::{Change, KubeOptions, KubeSource};
use crate::status::{self, Round, StatusOptions, StatusWriter};

#[derive(Clone, Debug)]
pub struct ControllerOptions {
    pub build: build::Options,
    pub kube: KubeOptions,
    pub status: StatusOptions,
    /// Leader election; `None` disables status and Events.
    pub leader: Option<LeaderOptions>,
    pub admin_addr: SocketAddr,
    /// `--inspection-token-file`: the bearer token that opens `/config`,
    /// `/config/candidate` and `/model` on the admin TCP port.
    pub inspection_token_file: Option<std::path::PathBuf>,
    pub nginx: NginxOptions,
    pub debounce: Duration,
    pub max_wait: Duration,
    pub min_interval: Duration,
    /// The per-request metrics (flags).
    pub metrics: crate::request_metrics::RequestMetricsOptions,
    /// The admission webhook, if enabled.
    pub webhook: Option<WebhookOptions>,
}

/// `--webhook-port` and its certificate files.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub addr: SocketAddr,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("reading the Kubernetes client configuration: {0}")]
    Config(#[source] kube::config::InferConfigError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
}

/// Deadlines of the requests wicket makes (Lease, status, Events): an API
/// server that stops answering makes them fail instead of hang. Watches
/// use a client of their own, whose long polls kube bounds itself.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The two clients: one for watches, one with deadlines for requests.
async fn clients() -> Result<(Client, Client), ControllerError> {
    let config = kube::Config::infer()
        .await
        .map_err(ControllerError::Config)?;
    let watch = Client::try_from(config.clone()).map_err(ControllerError::Client)?;
    let mut timed = config;
    timed.connect_timeout = Some(CONNECT_TIMEOUT);
    timed.read_timeout = Some(REQUEST_TIMEOUT);
    timed.write_timeout = Some(REQUEST_TIMEOUT);
    timed.reset_reader_on_write = true;
    let requests = Client::try_from(timed).map_err(ControllerError::Client)?;
    Ok((watch, requests))
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(opts: ControllerOptions, renderer: Renderer) -> Result<(), ControllerError> {
    let (client, requests) = clients().await?;
    let status = Status::default();
    let metrics = crate::metrics::Metrics::with_options(opts.metrics.clone());
    let mut own_ports: std::collections::BTreeMap<u16, &'static str> = [
        (opts.build.http_port, "HTTP"),
        (opts.build.https_port, "HTTPS"),
        (opts.admin_addr.port(), "admin"),
    ]
    .into_iter()
    .collect();
    if let Some(w) = &opts.webhook {
        own_ports.insert(w.addr.port(), "webhook");
    }
    // The engine prepares the state folder, where the admin socket goes;
    // nginx starts later, with the first rebuild.
    let mut engine = Engine::new(
        opts.build.clone(),
        renderer,
        opts.nginx.clone(),
        status.clone(),
        metrics.clone(),
        own_ports,
    )
    .map_err(RunError::from)?;
    status.not_ready("waiting for the caches to sync");
    start_admin(
        opts.admin_addr,
        &opts.nginx.state_dir,
        &status,
        &metrics,
        opts.inspection_token_file.clone(),
    )
    .await?;
    let mut shutdown = Shutdown::new()?;

    let (tx, mut changes) = mpsc::unbounded_channel::<Change>();
    // Read the webhook certificate before anything else: a wrong path fails
    // at start, not at the first review.
    let webhook_cert = match &opts.webhook {
        Some(w) => Some(Arc::new(crate::webhook::ReloadingCert::new(
            w.cert_file.clone(),
            w.key_file.clone(),
        )?)),
        None => None,
    };
    let source = Arc::new(KubeSource::start(client.clone(), &opts.kube, tx));
    info!(
        namespace = opts.kube.namespace.as_deref().unwrap_or("(all)"),
        "waiting for the caches to sync"
    );
    tokio::select! {
        r = source.wait_synced() => if r.is_err() { return Ok(()) },
        _ = shutdown.requested() => return Ok(()),
    }
    info!("caches synced");
    if let (Some(w), Some(cert)) = (&opts.webhook, webhook_cert) {
        let s = source.clone();
        let app = crate::webhook::router(Arc::new(move || s.snapshot()), opts.build.clone());
        crate::webhook::serve(w.addr, cert, app).await?;
    }

    let election = opts
        .leader
        .clone()
        .map(|l| Election::start(requests.clone(), l, metrics.clone()));
    let (round_tx, round_rx) = watch::channel::<Option<Arc<Round>>>(None);
    let identity = opts
        .leader
        .as_ref()
        .map_or("wicket".to_string(), |l| l.identity.clone());
    let writer = election.as_ref().map(|e| {
        let w = StatusWriter::new(requests.clone(), source.ingresses().clone(), &identity);
        tokio::spawn(w.run(round_rx.clone(), e.is_leader.clone()))
    });

    // Ingresses changed since nginx last took a config.
    let mut pending: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut last_rebuild = Instant::now();
    // What each rebuild (or a retry, or a DNS refresh) decided, for the
    // status writer.
    let send_round = |engine: &Engine,
                      pending: &mut BTreeSet<ObjectKey>,
                      b: &build::Build,
                      applied: &Applied| {
        if matches!(applied, Applied::Applied | Applied::Endpoints) {
            pending.clear();
        }
        let publish = source.publish_service();
        let round = Round::new(
            &b.served,
            &b.problems,
            status::Live {
                served: engine.live(),
                failure: engine.failure(),
                pending,
            },
            status::addresses(&opts.status, publish.as_deref()),
        );
        let _ = round_tx.send(Some(Arc::new(round)));
    };
    {
        let cluster = source.snapshot();
        let (b, applied) = engine.rebuild(&cluster, &[]).await;
        send_round(&engine, &mut pending, &b, &applied);
    }

    loop {
        let wake_at = engine.wake_at();
        tokio::select! {
            ch = changes.recv() => {
                let Some(ch) = ch else { break };
                let wait = opts.min_interval.saturating_sub(last_rebuild.elapsed()).max(opts.debounce);
                let batch = coalesce(&mut changes, ch, wait, opts.max_wait.max(wait)).await;
                pending.extend(batch.into_iter().filter(|c| c.kind == Kind::Ingress && !c.key.name.is_empty()).map(|c| c.key));
                last_rebuild = Instant::now();
                let cluster = source.snapshot();
                let (b, applied) = engine.rebuild(&cluster, &[]).await;
                send_round(&engine, &mut pending, &b, &applied);
            }
            exit = engine.nginx_exited() => engine.restart(exit).await,
            _ = sleep_until(wake_at) => {
                let cluster = source.snapshot();
                if let Some((b, applied)) = engine.wake(&cluster, &[]).await {
                    send_round(&engine, &mut pending, &b, &applied);
                }
            }
            _ = shutdown.requested() => break,
        }
    }

    info!("shutting down");
    if let Some(e) = election {
        let leading = *e.is_leader.borrow();
        if leading && opts.status.update_on_shutdown {
            status::clear(&requests, source.ingresses(), engine.live()).await;
        }
        if let Some(w) = writer {
            w.abort();
        }
        e.release().await;
    }
    engine.stop().await;
    if !changes.is_empty() {
        warn!("changes seen during shutdown were not applied");
    }
    Ok(())
}
