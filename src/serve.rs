//! `wicket serve`: a folder of manifests, watched, served through nginx.
//!
//! One loop owns everything: file events are coalesced (a quiet period with
//! a maximum wait), the folder is re-read where it changed, the snapshot is
//! built and rendered, and the config is applied only when it differs from
//! the one nginx serves. If nginx dies it is started again with the last good
//! config.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::admin::{self, Status};
use crate::build::{self, Build};
use crate::config::Config;
use crate::nginx::{ApplyError, Nginx, NginxOptions, Outcome};
use crate::problem::{Problem, Severity};
use crate::render::{RenderError, Renderer};
use crate::source::files::{FileReport, Folder};

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub manifests: PathBuf,
    pub build: build::Options,
    pub admin_addr: SocketAddr,
    pub nginx: NginxOptions,
    /// Quiet time after the last file event before rebuilding.
    pub debounce: Duration,
    /// Longest time a stream of events may delay a rebuild.
    pub max_wait: Duration,
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
    #[error("binding the admin endpoint on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nginx(#[from] ApplyError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Logs each problem once while it lasts: a problem that goes away and
/// comes back is logged again.
#[derive(Default)]
pub struct Reporter {
    seen: HashSet<String>,
}

impl Reporter {
    pub fn report(&mut self, files: &[FileReport], problems: &[Problem]) {
        let mut now = HashSet::new();
        for f in files {
            let line = f.to_string();
            if !self.seen.contains(&line) {
                warn!(target: "wicket::manifests", "{line}");
            }
            now.insert(line);
        }
        for p in problems {
            let line = p.to_string();
            if !self.seen.contains(&line) {
                match p.severity {
                    Severity::Rejected | Severity::Warning => {
                        warn!(target: "wicket::build", "{line}")
                    }
                    Severity::Ignored => info!(target: "wicket::build", "{line}"),
                }
            }
            now.insert(line);
        }
        self.seen = now;
    }
}

struct Server {
    folder: Folder,
    opts: ServeOptions,
    renderer: Renderer,
    nginx: Nginx,
    status: Status,
    reporter: Reporter,
    /// The last config handed to nginx, applied or refused.
    attempted: Option<Config>,
    /// When to try again after a failure that may pass (nginx could not
    /// start, did not answer in time).
    retry_at: Option<Instant>,
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
    status.not_ready("starting nginx");
    let listener = admin::bind(opts.admin_addr)
        .await
        .map_err(|source| ServeError::Admin {
            addr: opts.admin_addr,
            source,
        })?;
    tokio::spawn(admin::serve(listener, status.clone()));

    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;

    let nginx = Nginx::new(opts.nginx.clone())?;
    info!(
        manifests = %dir.display(),
        state_dir = %nginx.state_dir().display(),
        "serving manifests"
    );
    let mut s = Server {
        folder,
        opts,
        renderer,
        nginx,
        status,
        reporter: Reporter::default(),
        attempted: None,
        retry_at: None,
    };
    s.rebuild().await;

    loop {
        let retry_at = s.retry_at;
        let retry = async move {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let mut batch = vec![ev];
                let started = Instant::now();
                // Coalesce: wait for a quiet period, but never longer than max_wait.
                loop {
                    let left = s.opts.max_wait.saturating_sub(started.elapsed());
                    match tokio::time::timeout(s.opts.debounce.min(left), events.recv()).await {
                        Ok(Some(ev)) => batch.push(ev),
                        _ => break,
                    }
                }
                if s.apply_events(batch) {
                    s.rebuild().await;
                }
            }
            exit = s.nginx.exited() => {
                error!(%exit, "nginx exited; starting it again with the last good config");
                s.status.not_ready(format!("nginx exited ({exit}); restarting"));
                s.restart().await;
            }
            _ = retry => {
                s.retry_at = None;
                if s.nginx.running_config().is_some() && !s.status.is_ready() {
                    s.restart().await;
                } else {
                    s.attempted = None;
                    s.rebuild().await;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("stopping nginx");
    s.status.not_ready("shutting down");
    s.nginx.stop().await;
    drop(watcher);
    Ok(())
}

impl Server {
    /// Re-reads what the events touched. Returns whether anything changed.
    fn apply_events(&mut self, batch: Vec<notify::Result<notify::Event>>) -> bool {
        let mut changed = false;
        let mut full = false;
        for ev in batch {
            match ev {
                Ok(ev) => {
                    if ev.need_rescan() {
                        full = true;
                    }
                    for p in &ev.paths {
                        if self.folder.owns(p) {
                            changed |= self.folder.refresh(p);
                        } else if p.as_path() != self.folder.dir() {
                            // Something else in the folder changed (a
                            // symlinked `..data` swap, for example).
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
            match self.folder.rescan() {
                Ok(c) => changed |= c,
                Err(e) => {
                    error!(dir = %self.folder.dir().display(), error = %e, "cannot read the manifests folder; keeping what was read")
                }
            }
        }
        changed
    }

    async fn rebuild(&mut self) {
        let started = Instant::now();
        let (cluster, file_reports) = self.folder.cluster();
        let Build {
            config, problems, ..
        } = build::build(&cluster, &self.opts.build);
        self.reporter.report(&file_reports, &problems);
        let built = started.elapsed();
        if self.attempted.as_ref() == Some(&config) {
            debug!("no change to the config");
            return;
        }
        let result = self.nginx.apply(&config, &self.renderer).await;
        let servers = config.servers.len();
        let upstreams = config.upstreams.len();
        self.attempted = Some(config);
        match result {
            Ok(outcome) => {
                let verb = match outcome {
                    Outcome::Started => "started nginx",
                    Outcome::Reloaded => "reloaded nginx",
                };
                info!(
                    servers,
                    upstreams,
                    build_ms = built.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "{verb}"
                );
                self.status
                    .serving(self.nginx.running_config().unwrap_or_default(), "");
            }
            Err(e) => {
                error!(error = %e, reason = e.label(), "config not applied; the last good config keeps serving");
                let transient = matches!(
                    e,
                    ApplyError::Exited(_)
                        | ApplyError::Timeout(_)
                        | ApplyError::Spawn { .. }
                        | ApplyError::Write { .. }
                );
                if transient {
                    self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
                if self.nginx.running_config().is_some() {
                    self.status
                        .note(format!("the newest change was not applied: {e}"));
                } else {
                    self.status.not_ready(e.to_string());
                }
            }
        }
    }

    async fn restart(&mut self) {
        match self.nginx.restart().await {
            Ok(()) => {
                info!("nginx restarted");
                self.status
                    .serving(self.nginx.running_config().unwrap_or_default(), "");
            }
            Err(e) => {
                error!(error = %e, "nginx did not restart; trying again in 1s");
                self.status.not_ready(format!("nginx is down: {e}"));
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }
}
