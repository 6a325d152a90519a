//! `wicket serve`: a folder of manifests, watched, served through nginx.
//!
//! One loop: file events are coalesced (a quiet period with a maximum wait),
//! the folder is re-read where it changed, and the [`Engine`] rebuilds and
//! applies the config when it differs from the one nginx serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::admin::Status;
use crate::build;
use crate::engine::{Engine, RunError, Shutdown, coalesce, sleep_until, start_admin};
use crate::nginx::NginxOptions;
use crate::render::Renderer;
use crate::source::files::Folder;

/// How often the targets of symlinked manifests are checked for changes.
const LINK_RECHECK: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub manifests: PathBuf,
    pub build: build::Options,
    pub admin_addr: SocketAddr,
    /// `--inspection-token-file`: the bearer token that opens `/config`,
    /// `/config/candidate` and `/model` on the admin TCP port.
    pub inspection_token_file: Option<PathBuf>,
    pub nginx: NginxOptions,
    /// Quiet time after the last file event before rebuilding.
    pub debounce: Duration,
    /// Longest time a stream of events may delay a rebuild.
    pub max_wait: Duration,
    /// The per-request metrics (flags).
    pub metrics: crate::request_metrics::RequestMetricsOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading the manifests folder {dir}: {source}")]
    Manifests {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching the manifests folder {dir}: {source}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Runs until SIGTERM or SIGINT, then stops nginx gracefully.
pub async fn run(opts: ServeOptions, renderer: Renderer) -> Result<(), ServeError> {
    let dir = opts.manifests.clone();
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let _ = tx.send(ev);
    })
    .map_err(|source| ServeError::Watch {
        dir: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| ServeError::Watch {
            dir: dir.clone(),
            source,
        })?;
    let mut folder = Folder::new(&dir);
    folder.rescan().map_err(|source| ServeError::Manifests {
        dir: dir.clone(),
        source,
    })?;

    let status = Status::default();
    let metrics = crate::metrics::Metrics::with_options(opts.metrics.clone());
    let own_ports = [
        (opts.build.http_port, "HTTP"),
        (opts.build.https_port, "HTTPS"),
        (opts.admin_addr.port(), "admin"),
    ]
    .into_iter()
    .collect();
    // The engine prepares the state folder, where the admin socket goes.
    let mut engine = Engine::new(
        opts.build.clone(),
        renderer,
        opts.nginx.clone(),
        status.clone(),
        metrics.clone(),
        own_ports,
    )
    .map_err(RunError::from)?;
    start_admin(
        opts.admin_addr,
        &opts.nginx.state_dir,
        &status,
        &metrics,
        opts.inspection_token_file.clone(),
    )
    .await?;
    let mut shutdown = Shutdown::new()?;
    info!(
        manifests = %dir.display(),
        state_dir = %engine.nginx().state_dir().display(),
        "serving manifests"
    );
    let (cluster, reports) = folder.cluster();
    engine.rebuild(&cluster, &reports).await;

    // Symlinked manifests: their targets are not in the watched folder.
    let mut links = tokio::time::interval(LINK_RECHECK);
    links.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake_at = engine.wake_at();
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let batch = coalesce(&mut events, ev, opts.debounce, opts.max_wait).await;
                if apply_events(&mut folder, batch) {
                    let (cluster, reports) = folder.cluster();
                    engine.rebuild(&cluster, &reports).await;
                }
            }
            exit = engine.nginx_exited() => engine.restart(exit).await,
            _ = sleep_until(wake_at) => {
                let (cluster, reports) = folder.cluster();
                engine.wake(&cluster, &reports).await;
            }
            _ = links.tick(), if folder.has_links() => {
                if folder.recheck_links() {
                    debug!("a symlinked manifest's target changed");
                    let (cluster, reports) = folder.cluster();
                    engine.rebuild(&cluster, &reports).await;
                }
            }
            _ = shutdown.requested() => break,
        }
    }
    engine.stop().await;
    drop(watcher);
    Ok(())
}

/// Whether an event may mean new content. Opening and reading a file (which
/// wicket itself does when it re-reads one) does not: acting on those would
/// re-read every file read, forever. A close after writing does.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Re-reads what the events touched. Returns whether anything changed.
fn apply_events(folder: &mut Folder, batch: Vec<notify::Result<notify::Event>>) -> bool {
    let mut changed = false;
    let mut full = false;
    for ev in batch {
        match ev {
            Ok(ev) => {
                if ev.need_rescan() {
                    full = true;
                }
                if !changes_content(&ev.kind) {
                    continue;
                }
                for p in &ev.paths {
                    if folder.owns(p) {
                        debug!(file = %p.display(), kind = ?ev.kind, "re-reading a manifest file");
                        changed |= folder.refresh(p);
                    } else if p.as_path() != folder.dir() {
                        // Something else in the folder changed (a symlinked
                        // `..data` swap, for example).
                        full = true;
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "file watch error; re-reading the folder");
                full = true;
            }
        }
    }
    if full {
        match folder.rescan() {
            Ok(c) => changed |= c,
            Err(e) => {
                error!(dir = %folder.dir().display(), error = %e, "cannot read the manifests folder; keeping what was read")
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn reading_a_file_is_not_a_change() {
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Read)));
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
            EventKind::Other,
        ] {
            assert!(changes_content(&kind), "{kind:?}");
        }
    }
}
