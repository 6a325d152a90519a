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
    /// Answer `/config`, `/config/candidate` and `/model` to clients that
    /// are not on this machine.
    pub remote_inspection: bool,
    pub nginx: NginxOptions,
    pub debounce: Duration,
    pub max_wait: Duration,
    pub min_interval: Duration,
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
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(opts: ControllerOptions, renderer: Renderer) -> Result<(), ControllerError> {
    let client = Client::try_default()
        .await
        .map_err(ControllerError::Client)?;
    let status = Status::default();
    status.not_ready("waiting for the caches to sync");
    let metrics = crate::metrics::Metrics::new();
    start_admin(opts.admin_addr, &status, &metrics, opts.remote_inspection).await?;
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
        .map(|l| Election::start(client.clone(), l));
    let (round_tx, round_rx) = watch::channel::<Option<Arc<Round>>>(None);
    let identity = opts
        .leader
        .as_ref()
        .map_or("wicket".to_string(), |l| l.identity.clone());
    let writer = election.as_ref().map(|e| {
        let w = StatusWriter::new(client.clone(), source.ingresses().clone(), &identity);
        tokio::spawn(w.run(round_rx.clone(), e.is_leader.clone()))
    });

    let mut engine = Engine::new(
        opts.build.clone(),
        renderer,
        opts.nginx.clone(),
        status,
        metrics,
    )
    .map_err(RunError::from)?;
    // Ingresses changed since the last config nginx accepted.
    let mut pending: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut last_rebuild = Instant::now();
    let mut served: BTreeSet<ObjectKey>;
    let rebuild = async |engine: &mut Engine, pending: &mut BTreeSet<ObjectKey>| {
        let cluster = source.snapshot();
        let (b, applied) = engine.rebuild(&cluster, &[]).await;
        let mut round = Round::new(
            &b.served,
            &b.problems,
            status::addresses(&opts.status, &cluster),
        );
        match applied {
            Applied::Applied => pending.clear(),
            Applied::Failed(e) => {
                round.reload_failed = Some((e.to_string(), pending.iter().cloned().collect()))
            }
            Applied::Unchanged => {}
        }
        let _ = round_tx.send(Some(Arc::new(round)));
        b.served.into_iter().collect::<BTreeSet<_>>()
    };
    served = rebuild(&mut engine, &mut pending).await;

    loop {
        let retry_at = engine.retry_at();
        tokio::select! {
            ch = changes.recv() => {
                let Some(ch) = ch else { break };
                let wait = opts.min_interval.saturating_sub(last_rebuild.elapsed()).max(opts.debounce);
                let batch = coalesce(&mut changes, ch, wait, opts.max_wait.max(wait)).await;
                pending.extend(batch.into_iter().filter(|c| c.kind == Kind::Ingress && !c.key.name.is_empty()).map(|c| c.key));
                last_rebuild = Instant::now();
                served = rebuild(&mut engine, &mut pending).await;
            }
            exit = engine.nginx_exited() => engine.restart(exit).await,
            _ = sleep_until(retry_at) => {
                let cluster = source.snapshot();
                engine.retry(&cluster, &[]).await;
            }
            _ = shutdown.requested() => break,
        }
    }

    info!("shutting down");
    if let Some(e) = election {
        let leading = *e.is_leader.borrow();
        if leading && opts.status.update_on_shutdown {
            status::clear(&client, source.ingresses(), &served).await;
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
