//! The part of every serving mode that is the same whatever the source:
//! build a snapshot, apply the config when it changed, keep nginx running,
//! report problems once, keep the admin status true.

use std::collections::HashSet;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::admin::Status;
use crate::build::{self, Build};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::nginx::{ApplyError, Nginx, NginxOptions, Outcome};
use crate::problem::{Problem, Severity};
use crate::render::Renderer;
use crate::source::files::FileReport;

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

/// What became of a rebuild.
#[derive(Debug)]
pub enum Applied {
    /// The config is the one last tried: nothing to do.
    Unchanged,
    /// nginx serves the new config.
    Applied,
    /// nginx keeps the last good config.
    Failed(ApplyError),
}

/// Build, apply, supervise.
pub struct Engine {
    opts: build::Options,
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

impl Engine {
    pub fn new(
        opts: build::Options,
        renderer: Renderer,
        nginx: NginxOptions,
        status: Status,
    ) -> Result<Self, ApplyError> {
        status.not_ready("starting nginx");
        Ok(Engine {
            opts,
            renderer,
            nginx: Nginx::new(nginx)?,
            status,
            reporter: Reporter::default(),
            attempted: None,
            retry_at: None,
        })
    }

    pub fn nginx(&self) -> &Nginx {
        &self.nginx
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// When the engine wants [`Engine::retry`] to be called.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Builds the snapshot and applies the config if it changed.
    pub async fn rebuild(&mut self, cluster: &Cluster, files: &[FileReport]) -> (Build, Applied) {
        let started = Instant::now();
        let build = build::build(cluster, &self.opts);
        self.reporter.report(files, &build.problems);
        let built = started.elapsed();
        if self.attempted.as_ref() == Some(&build.config) {
            debug!(
                build_ms = built.as_millis() as u64,
                "no change to the config"
            );
            return (build, Applied::Unchanged);
        }
        let result = self.nginx.apply(&build.config, &self.renderer).await;
        self.attempted = Some(build.config.clone());
        let applied = match result {
            Ok((outcome, t)) => {
                let verb = match outcome {
                    Outcome::Started => "started nginx",
                    Outcome::Reloaded => "reloaded nginx",
                };
                info!(
                    servers = build.config.servers.len(),
                    upstreams = build.config.upstreams.len(),
                    problems = build.problems.len(),
                    build_ms = built.as_millis() as u64,
                    render_ms = t.render.as_millis() as u64,
                    write_ms = t.write.as_millis() as u64,
                    nginx_test_ms = t.test.as_millis() as u64,
                    reload_ms = t.reload.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "{verb}"
                );
                self.retry_at = None;
                self.status
                    .serving(self.nginx.running_config().unwrap_or_default(), "");
                Applied::Applied
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
                Applied::Failed(e)
            }
        };
        (build, applied)
    }

    /// Resolves when nginx exits unexpectedly.
    pub async fn nginx_exited(&mut self) -> ExitStatus {
        self.nginx.exited().await
    }

    /// Starts nginx again with the last good config after it died.
    pub async fn restart(&mut self, exit: ExitStatus) {
        error!(%exit, "nginx exited; starting it again with the last good config");
        self.status
            .not_ready(format!("nginx exited ({exit}); restarting"));
        self.restart_nginx().await;
    }

    async fn restart_nginx(&mut self) {
        match self.nginx.restart().await {
            Ok(()) => {
                info!("nginx restarted");
                self.retry_at = None;
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

    /// Called at [`Engine::retry_at`]: restarts nginx if it is down,
    /// otherwise applies the snapshot again.
    pub async fn retry(&mut self, cluster: &Cluster, files: &[FileReport]) {
        self.retry_at = None;
        if self.nginx.running_config().is_some() && !self.status.is_ready() {
            self.restart_nginx().await;
        } else {
            self.attempted = None;
            self.rebuild(cluster, files).await;
        }
    }

    /// Stops nginx gracefully.
    pub async fn stop(&mut self) {
        info!("stopping nginx");
        self.status.not_ready("shutting down");
        self.nginx.stop().await;
    }
}

/// Sleeps until `at`, or forever when there is none.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// After a first event, collects the ones that follow until `debounce`
/// passes without one, but for no longer than `max_wait` in all.
pub async fn coalesce<T>(
    events: &mut mpsc::UnboundedReceiver<T>,
    first: T,
    debounce: Duration,
    max_wait: Duration,
) -> Vec<T> {
    let started = tokio::time::Instant::now();
    let mut batch = vec![first];
    loop {
        let left = max_wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(debounce.min(left), events.recv()).await {
            Ok(Some(ev)) => batch.push(ev),
            _ => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn coalescing_waits_for_quiet_but_not_forever() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A steady stream, one event every 10ms: never quiet for 50ms.
        tokio::spawn(async move {
            for i in 0..1000 {
                if tx.send(i).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let first = rx.recv().await.unwrap();
        let started = tokio::time::Instant::now();
        let batch = coalesce(
            &mut rx,
            first,
            Duration::from_millis(50),
            Duration::from_millis(500),
        )
        .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_millis(520),
            "{waited:?}"
        );
        assert!(batch.len() >= 45, "{}", batch.len());
    }

    #[tokio::test(start_paused = true)]
    async fn coalescing_stops_after_a_quiet_period() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let first = rx.recv().await.unwrap();
        let started = tokio::time::Instant::now();
        let batch = coalesce(
            &mut rx,
            first,
            Duration::from_millis(50),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(batch, vec![1, 2]);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        drop(tx);
    }
}
