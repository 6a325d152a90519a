//! The part of every serving mode that is the same whatever the source:
//! build a snapshot, apply the config when it changed, keep nginx running,
//! report problems once, keep the admin status true.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::admin::Status;
use crate::build::{self, Build};
use crate::cluster::{Cluster, ObjectKey};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::nginx::{ApplyError, Nginx, NginxOptions, Outcome};
use crate::problem::{Problem, Severity};
use crate::render::Renderer;
use crate::source::files::FileReport;

/// What can stop a serving mode from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("binding the admin endpoint on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nginx(#[from] ApplyError),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Binds the admin endpoint and serves it in the background.
pub async fn start_admin(
    addr: std::net::SocketAddr,
    status: &Status,
    metrics: &Metrics,
    remote_inspection: bool,
) -> Result<(), RunError> {
    let listener = crate::admin::bind(addr)
        .await
        .map_err(|source| RunError::Admin { addr, source })?;
    let app = crate::admin::router(status.clone(), metrics.clone(), remote_inspection);
    tokio::spawn(crate::admin::serve(listener, app));
    Ok(())
}

/// SIGTERM or SIGINT: the request to stop.
pub struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    pub fn new() -> Result<Self, RunError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Shutdown {
            term: signal(SignalKind::terminate()).map_err(RunError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(RunError::Signals)?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn requested(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
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

/// An Ingress left out of the config because nginx refused the config
/// built with it.
struct Quarantined {
    /// The Ingress as it was; a changed Ingress is tried again.
    fingerprint: u64,
    since: Instant,
}

/// How long a quarantined Ingress stays out before it is tried again (with
/// the next change), in case what made nginx refuse it was elsewhere (a DNS
/// name that did not resolve, say).
const QUARANTINE_RETRY: Duration = Duration::from_secs(60);
/// Most Ingresses quarantined while applying one change.
const MAX_QUARANTINE_ROUNDS: usize = 16;

fn fingerprint(ing: &k8s_openapi::api::networking::v1::Ingress) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(ing).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Build, apply, supervise.
pub struct Engine {
    opts: build::Options,
    renderer: Renderer,
    nginx: Nginx,
    status: Status,
    reporter: Reporter,
    /// The last config handed to nginx, applied or refused.
    attempted: Option<Arc<Config>>,
    /// When to try again after a failure that may pass (nginx could not
    /// start, did not answer in time).
    retry_at: Option<Instant>,
    quarantine: BTreeMap<ObjectKey, Quarantined>,
    metrics: Metrics,
    /// The config nginx serves.
    applied: Option<Arc<Config>>,
}

impl Engine {
    pub fn new(
        opts: build::Options,
        renderer: Renderer,
        nginx: NginxOptions,
        status: Status,
        metrics: Metrics,
    ) -> Result<Self, ApplyError> {
        status.not_ready("starting nginx");
        metrics.set_status_socket(nginx.state_dir.join(crate::nginx::STATUS_SOCKET));
        Ok(Engine {
            opts,
            renderer,
            nginx: Nginx::new(nginx)?,
            status,
            reporter: Reporter::default(),
            attempted: None,
            retry_at: None,
            quarantine: BTreeMap::new(),
            metrics,
            applied: None,
        })
    }

    /// Ingresses quarantined now.
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Lifts the quarantine of Ingresses that changed, went away, or waited
    /// long enough.
    fn refresh_quarantine(&mut self, cluster: &Cluster) {
        let before = self.quarantine.len();
        self.quarantine.retain(|key, q| {
            cluster.ingresses.get(key).is_some_and(|ing| {
                fingerprint(ing) == q.fingerprint && q.since.elapsed() < QUARANTINE_RETRY
            })
        });
        self.opts
            .quarantine
            .retain(|k, _| self.quarantine.contains_key(k));
        if self.quarantine.len() < before {
            info!(
                lifted = before - self.quarantine.len(),
                "quarantined Ingresses will be tried again"
            );
        }
    }

    fn quarantine(&mut self, cluster: &Cluster, key: ObjectKey, reason: &str) {
        let Some(ing) = cluster.ingresses.get(&key) else {
            return;
        };
        warn!(ingress = %key, "quarantined: nginx refused the config built with it: {reason}");
        self.quarantine.insert(
            key.clone(),
            Quarantined {
                fingerprint: fingerprint(ing),
                since: Instant::now(),
            },
        );
        self.opts.quarantine.insert(
            key,
            format!("nginx -t refused the config built with this Ingress: {reason}"),
        );
    }

    /// The Ingress (or Ingresses) to blame for a config `nginx -t` refused:
    /// first from the line nginx names, then by bisection with `nginx -t`
    /// over the suspects.
    async fn culprit(
        &mut self,
        cluster: &Cluster,
        build: &Build,
        message: &str,
    ) -> Option<ObjectKey> {
        let text = self.nginx.refused_config().map(str::to_string);
        let mut suspects = match (text, error_line(message)) {
            (Some(text), Some(line)) => blame(&text, line, &build.config),
            _ => Vec::new(),
        };
        suspects.retain(|k| build.served.contains(k));
        if suspects.len() == 1 {
            return suspects.pop();
        }
        if suspects.is_empty() {
            suspects = build.served.clone();
        }
        debug!(
            suspects = suspects.len(),
            "looking for the Ingress nginx refuses by bisection"
        );
        let (nginx, renderer, opts) = (&mut self.nginx, &self.renderer, &self.opts);
        find_culprit(&suspects, async |quarantined: &[ObjectKey]| {
            let mut opts = opts.clone();
            opts.quarantine
                .extend(quarantined.iter().map(|k| (k.clone(), String::new())));
            let without = build::build(cluster, &opts);
            nginx.check(&without.config, renderer).await.is_err()
        })
        .await
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

    /// Builds the snapshot and applies the config if it changed. If nginx
    /// refuses a config, the Ingress responsible is found, quarantined (it
    /// is then reported as rejected) and the rest applied.
    pub async fn rebuild(&mut self, cluster: &Cluster, files: &[FileReport]) -> (Build, Applied) {
        self.refresh_quarantine(cluster);
        let mut rounds = 0;
        loop {
            let (build, applied) = self.rebuild_once(cluster, files).await;
            // The previous config, its text and the build's working set are
            // freed by now.
            release_free_memory();
            let Applied::Failed(ApplyError::Invalid(message)) = &applied else {
                return (build, applied);
            };
            rounds += 1;
            if rounds > MAX_QUARANTINE_ROUNDS {
                return (build, applied);
            }
            match self.culprit(cluster, &build, message).await {
                Some(key) => {
                    let message = message.clone();
                    self.quarantine(cluster, key, &message);
                }
                None => {
                    warn!(
                        "no single Ingress explains why nginx refused the config; the last good config keeps serving"
                    );
                    return (build, applied);
                }
            }
        }
    }

    async fn rebuild_once(&mut self, cluster: &Cluster, files: &[FileReport]) -> (Build, Applied) {
        let started = Instant::now();
        let build = build::build_reusing(cluster, &self.opts, self.attempted.as_deref());
        self.reporter.report(files, &build.problems);
        let built = started.elapsed();
        self.metrics.rebuild(
            built.as_secs_f64(),
            cluster,
            build.served.len(),
            &build.problems,
        );
        if self.attempted.as_deref() == Some(&*build.config) {
            debug!(
                build_ms = built.as_millis() as u64,
                "no change to the config"
            );
            return (build, Applied::Unchanged);
        }
        let previous = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| self.nginx.running_config().map(str::to_string))
            .flatten();
        let result = self.nginx.apply(&build.config, &self.renderer).await;
        self.attempted = Some(build.config.clone());
        let applied = match result {
            Ok((outcome, t)) => {
                let verb = match outcome {
                    Outcome::Started => "started nginx",
                    Outcome::Reloaded => "reloaded nginx",
                };
                let text = self.nginx.running_text().unwrap_or_default();
                if let Some(previous) = previous {
                    let diff = similar::TextDiff::from_lines(previous.as_str(), &*text)
                        .unified_diff()
                        .context_radius(2)
                        .header("nginx.conf (before)", "nginx.conf (after)")
                        .to_string();
                    debug!("config change:\n{diff}");
                }
                let changed = summary(self.applied.as_deref(), &build.config);
                info!(
                    changed = %changed,
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
                let model = build.config.clone();
                self.status.serving(text, model.clone(), "");
                self.metrics.reload(
                    "success",
                    Some((started.elapsed() - built).as_secs_f64()),
                    self.nginx.running_hash().as_deref(),
                );
                self.applied = Some(model);
                Applied::Applied
            }
            Err(e) => {
                error!(error = %e, reason = e.label(), "config not applied; the last good config keeps serving");
                self.metrics.reload(e.label(), None, None);
                if let (ApplyError::Invalid(msg), Some(text)) = (&e, self.nginx.refused_config()) {
                    self.status.refused(text, msg.clone());
                }
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
                self.status.restored();
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

/// What changed between two configs, for the log line of a reload: servers
/// and upstreams added, removed or changed.
fn summary(before: Option<&Config>, after: &Config) -> String {
    let Some(before) = before else {
        return format!(
            "{} servers, {} upstreams",
            after.servers.len(),
            after.upstreams.len()
        );
    };
    fn diff<T: PartialEq>(a: &[T], b: &[T], key: impl Fn(&T) -> &str) -> (usize, usize, usize) {
        let old: std::collections::HashMap<&str, &T> = a.iter().map(|x| (key(x), x)).collect();
        let new: std::collections::HashMap<&str, &T> = b.iter().map(|x| (key(x), x)).collect();
        let added = new.keys().filter(|k| !old.contains_key(*k)).count();
        let removed = old.keys().filter(|k| !new.contains_key(*k)).count();
        let changed = new
            .iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
            .count();
        (added, removed, changed)
    }
    let (sa, sr, sc) = diff(&before.servers, &after.servers, |s| s.server_name.as_str());
    let (ua, ur, uc) = diff(&before.upstreams, &after.upstreams, |u| u.name.as_str());
    let mut parts = Vec::new();
    for (n, what) in [
        (sa, "servers added"),
        (sr, "servers removed"),
        (sc, "servers changed"),
        (ua, "upstreams added"),
        (ur, "upstreams removed"),
        (uc, "upstreams changed"),
    ] {
        if n > 0 {
            parts.push(format!("{what}: {n}"));
        }
    }
    if before.default_server != after.default_server {
        parts.push("default server changed".into());
    }
    if parts.is_empty() {
        "settings or certificates changed".into()
    } else {
        parts.join(", ")
    }
}

/// One suspect that makes nginx refuse the config, found by bisection:
/// `refused(q)` says whether nginx refuses the config built with the
/// suspects `q` left out. The smallest prefix of the suspects that nginx
/// refuses ends with a culprit, so one is found even when several suspects
/// are refused; the caller quarantines it and looks again. `None` when the
/// config is refused without any suspect.
async fn find_culprit<K: Clone>(
    suspects: &[K],
    mut refused: impl AsyncFnMut(&[K]) -> bool,
) -> Option<K> {
    // Refused with the first `hi` suspects; accepted with the first `lo`
    // (with none, checked at the end if it comes to that).
    let (mut lo, mut hi) = (0, suspects.len());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if refused(&suspects[mid..]).await {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if hi == 0 || (lo == 0 && refused(suspects).await) {
        return None;
    }
    Some(suspects[hi - 1].clone())
}

/// The line number nginx names in an error (`... in FILE:LINE`).
fn error_line(message: &str) -> Option<usize> {
    message
        .split("; ")
        .find(|l| l.contains("[emerg]") || l.contains("[crit]") || l.contains("[alert]"))
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, n)| n.trim().parse().ok())
}

/// The Ingresses a line of a rendered config belongs to, from the comments
/// the templates write: a location's `# ingress NS/NAME FIELD`, a server's
/// `# ingress NS/NAME` list, or, in an upstream, the Ingresses that proxy to
/// it.
fn blame(text: &str, line: usize, config: &crate::config::Config) -> Vec<ObjectKey> {
    let lines: Vec<&str> = text.lines().collect();
    let key = |comment: &str| {
        let rest = comment.trim_start().strip_prefix("# ingress ")?;
        let id = rest.split_whitespace().next()?;
        let (ns, name) = id.split_once('/')?;
        Some(ObjectKey::new(ns, name))
    };
    // The comment lines right above line `i`.
    let comments_above = |i: usize| {
        (0..i)
            .rev()
            .map(|j| lines[j])
            .take_while(|l| l.trim_start().starts_with('#'))
    };
    let mut i = line.min(lines.len());
    while i > 0 {
        i -= 1;
        let t = lines[i].trim_start();
        if t.starts_with("location ") {
            return comments_above(i).filter_map(key).take(1).collect();
        }
        if t == "server {" {
            return comments_above(i).filter_map(key).collect();
        }
        if let Some(name) = t
            .strip_prefix("upstream ")
            .and_then(|r| r.split_whitespace().next())
        {
            let mut keys: Vec<ObjectKey> = config
                .servers
                .iter()
                .map(|s| &**s)
                .chain(std::iter::once(&config.default_server))
                .flat_map(|s| &s.locations)
                .filter(|l| matches!(&l.action, crate::config::Action::Proxy { upstream, .. } if upstream == name))
                .filter_map(|l| l.source.as_ref())
                .map(|s| ObjectKey::new(s.namespace.as_str(), s.name.as_str()))
                .collect();
            keys.sort();
            keys.dedup();
            return keys;
        }
        if t == "http {" {
            break;
        }
    }
    Vec::new()
}

/// Gives memory freed by a rebuild back to the system. A rebuild allocates
/// and frees its whole working set (the parsed objects, the model, the
/// rendered text); glibc would otherwise keep the freed pages, so the
/// resident size after a change would be that of the peak.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allocator settings for the long-running modes, set before the runtime
/// starts its threads. At most two malloc arenas (glibc's default is
/// eight per core): every arena keeps its own freed pieces, and the threads
/// that build and render on every core, the runtime's workers and the
/// watches each scatter theirs. A fixed mmap
/// threshold: glibc raises it after freeing a large block (up to 32 MiB),
/// and then puts later large blocks (texts, tables of 10,000 entries) in an
/// arena, where what is freed around them cannot be given back. See
/// BENCHMARKS.md for what this saves; `render` is not affected.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters, under malloc's own
    // lock; it is called before the runtime starts its threads, so they
    // all get the new limits.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
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

    #[tokio::test]
    async fn bisection_finds_one_culprit_among_several() {
        let suspects: Vec<u32> = (0..10).collect();
        for culprits in [vec![0], vec![9], vec![3, 7], vec![0, 9], vec![2, 3, 4, 5]] {
            let mut checks = 0;
            let found = find_culprit(&suspects, async |quarantined: &[u32]| {
                checks += 1;
                culprits.iter().any(|c| !quarantined.contains(c))
            })
            .await;
            // The first culprit in the suspects' order, in at most
            // log2(10) + 1 checks.
            assert_eq!(found, Some(culprits[0]), "{culprits:?}");
            assert!(checks <= 5, "{checks} checks for {culprits:?}");
        }
        // Refused whatever is left out: no suspect is to blame.
        assert_eq!(find_culprit(&suspects, async |_: &[u32]| true).await, None);
        assert_eq!(find_culprit(&[7], async |_: &[u32]| true).await, None);
        assert_eq!(
            find_culprit(&[7], async |q: &[u32]| q.is_empty()).await,
            Some(7)
        );
        assert_eq!(find_culprit::<u32>(&[], async |_: &[u32]| true).await, None);
    }

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
