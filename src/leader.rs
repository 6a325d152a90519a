//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does
//! it: the holder renews the Lease; another replica takes it over when it has
//! not seen the Lease change for a whole lease duration (measured on its own
//! clock, so clock skew between replicas does not matter). Every replica
//! serves traffic; only the leader writes status and Events.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaderOptions {
    /// Namespace of the Lease (the controller's own).
    pub namespace: String,
    /// Name of the Lease (`--election-id`).
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    /// A leader that has not renewed within this steps down; shorter than
    /// the lease, so it stops before another replica may take over.
    pub renew_deadline: Duration,
    /// How often the leader renews and the others check.
    pub retry_period: Duration,
}

impl LeaderOptions {
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        LeaderOptions {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// A running election; `is_leader` follows this replica's state.
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Election {
    /// `client` should have request deadlines: a renewal must not hang
    /// past the renew deadline.
    pub fn start(
        client: Client,
        opts: LeaderOptions,
        metrics: crate::metrics::Metrics,
    ) -> Election {
        let (tx, rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let mut follow = rx.clone();
        tokio::spawn(async move {
            loop {
                metrics.set_leader(*follow.borrow_and_update());
                if follow.changed().await.is_err() {
                    return;
                }
            }
        });
        let task = tokio::spawn(run(
            Api::namespaced(client, &opts.namespace),
            opts,
            tx,
            stop_rx,
        ));
        Election {
            is_leader: rx,
            stop,
            task,
        }
    }

    /// Stops campaigning and, if leader, releases the Lease so another
    /// replica takes over at once.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

struct Observed {
    /// Holder and renew time as last read.
    record: (Option<String>, Option<Timestamp>),
    /// When this replica saw that record change.
    at: Instant,
}

async fn run(
    api: Api<Lease>,
    opts: LeaderOptions,
    tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut observed: Option<Observed> = None;
    let mut last_renewed: Option<Instant> = None;
    loop {
        // A leader's attempt ends when its renew deadline does; another
        // replica's within a renew deadline too.
        let leading = *tx.borrow();
        let deadline = match last_renewed {
            Some(t) if leading => t + opts.renew_deadline,
            _ => Instant::now() + opts.renew_deadline,
        };
        let attempt = tokio::time::timeout_at(
            deadline.into(),
            try_acquire_or_renew(&api, &opts, &mut observed),
        )
        .await
        .unwrap_or(Err(Failed::Deadline(opts.renew_deadline)));
        match attempt {
            Ok(true) => {
                last_renewed = Some(Instant::now());
                if !*tx.borrow() {
                    info!(lease = %opts.name, identity = %opts.identity, "became the leader");
                    let _ = tx.send(true);
                }
            }
            Ok(false) => {
                if *tx.borrow() {
                    info!(lease = %opts.name, "lost the lease to another replica");
                    let _ = tx.send(false);
                }
            }
            Err(e) => {
                warn!(lease = %opts.name, error = %e, "lease update failed");
                // A leader that cannot renew within its deadline steps
                // down, before others may take over.
                if *tx.borrow() && last_renewed.is_none_or(|t| t.elapsed() >= opts.renew_deadline) {
                    warn!(lease = %opts.name, "stepping down: the lease could not be renewed in time");
                    let _ = tx.send(false);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.retry_period) => {}
            _ = stop.changed() => break,
        }
    }
    if *tx.borrow() {
        let _ = tx.send(false);
        if let Err(e) = release(&api, &opts).await {
            warn!(lease = %opts.name, error = %e, "could not release the lease");
        } else {
            info!(lease = %opts.name, "released the lease");
        }
    }
}

/// Why an attempt on the Lease failed.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within the renew deadline ({0:?})")]
    Deadline(Duration),
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    opts: &LeaderOptions,
    observed: &mut Option<Observed>,
) -> Result<bool, Failed> {
    let duration_secs = opts.lease_duration.as_secs() as i32;
    let Some(mut lease) = api.get_opt(&opts.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(opts.name.clone()),
                namespace: Some(opts.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(opts.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let record = (
        spec.holder_identity.clone(),
        spec.renew_time.as_ref().map(|t| t.0),
    );
    if observed.as_ref().is_none_or(|o| o.record != record) {
        *observed = Some(Observed {
            record: record.clone(),
            at: Instant::now(),
        });
    }
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    let theirs = spec
        .lease_duration_seconds
        .map_or(
            opts.lease_duration,
            |s| Duration::from_secs(s.max(1) as u64),
        );
    let expired = observed.as_ref().is_some_and(|o| o.at.elapsed() > theirs);
    match holder {
        Some(h) if h == opts.identity => {}
        Some(_) if !expired => return Ok(false),
        _ => {
            spec.holder_identity = Some(opts.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(duration_secs);
    match api
        .replace(&opts.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        // Someone else wrote it first.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release(api: &Api<Lease>, opts: &LeaderOptions) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&opts.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(opts.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&opts.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}
