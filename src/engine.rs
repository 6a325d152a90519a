//! The part of every serving mode that is the same whatever the source:
//! build a snapshot, apply the config when it changed, keep nginx running,
//! report problems once, keep the admin status true.

use std::collections::{BTreeMap, BTreeSet, HashSet};
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
use crate::resolve::Resolver;
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

/// Binds the admin endpoint (TCP and the unix socket in the state folder)
/// and serves it in the background.
pub async fn start_admin(
    addr: std::net::SocketAddr,
    state_dir: &std::path::Path,
    status: &Status,
    metrics: &Metrics,
    token_file: Option<std::path::PathBuf>,
) -> Result<(), RunError> {
    crate::admin::start(addr, state_dir, status.clone(), metrics.clone(), token_file)
        .await
        .map_err(|source| RunError::Admin { addr, source })
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
    /// nginx serves the new config, whose endpoints only changed: sent to
    /// it without a reload.
    Endpoints,
    /// nginx keeps the last good config.
    Failed(ApplyError),
}

/// Why the newest config is not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// [`ApplyError::label`]: the kind of failure.
    pub label: &'static str,
    pub message: String,
}

/// An Ingress to blame for a config nginx refused, with the field and the
/// Service of the line nginx named, where they are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blamed {
    pub key: ObjectKey,
    /// Such as `spec.rules[0].http.paths[1]`.
    pub field: Option<String>,
    /// `namespace/service:port`, when the line was in an upstream.
    pub service: Option<String>,
}

impl Blamed {
    /// ` (FIELD, service SERVICE)`, or nothing.
    fn what(&self) -> String {
        let parts: Vec<String> = self
            .field
            .iter()
            .cloned()
            .chain(self.service.iter().map(|s| format!("service {s}")))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
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
    /// When [`Engine::wake`] wants to run: to start nginx again, or to
    /// apply again a config whose apply failed in a way that may pass.
    retry_at: Option<Instant>,
    /// The last apply failed in a way that may pass: apply again at
    /// `retry_at`.
    reapply: bool,
    quarantine: BTreeMap<ObjectKey, Quarantined>,
    metrics: Metrics,
    /// The config nginx serves.
    applied: Option<Arc<Config>>,
    /// The Ingresses the config nginx serves was built with.
    live: BTreeSet<ObjectKey>,
    /// Why the newest config is not served, while it is not.
    failure: Option<Failure>,
    /// The names of `ExternalName` Services, looked up by wicket.
    resolver: Resolver,
    /// When the names are looked up again.
    names_at: Option<Instant>,
    /// The ports wicket itself listens on (no backend may be one of them).
    own_ports: BTreeMap<u16, &'static str>,
}

impl Engine {
    /// `own_ports`: the ports wicket and nginx listen on, with what each
    /// is; build refuses backends that are one of them on this machine.
    pub fn new(
        opts: build::Options,
        renderer: Renderer,
        nginx: NginxOptions,
        status: Status,
        metrics: Metrics,
        own_ports: BTreeMap<u16, &'static str>,
    ) -> Result<Self, ApplyError> {
        status.not_ready("starting nginx");
        metrics.set_status_socket(nginx.state_dir.join(crate::nginx::STATUS_SOCKET));
        let nginx = Nginx::new(nginx)?;
        // Before any nginx -t: nginx opens the metrics pipe, which must
        // have its reader.
        let pipe = nginx.state_dir().join(crate::request_metrics::PIPE);
        metrics
            .start_request_log(nginx.state_dir())
            .map_err(|source| ApplyError::Write { path: pipe, source })?;
        Ok(Engine {
            opts,
            renderer,
            nginx,
            status,
            reporter: Reporter::default(),
            attempted: None,
            retry_at: None,
            reapply: false,
            quarantine: BTreeMap::new(),
            metrics,
            applied: None,
            live: BTreeSet::new(),
            failure: None,
            resolver: Resolver::new(crate::resolve::system_lookup()),
            names_at: None,
            own_ports,
        })
    }

    /// The Ingresses the config nginx serves now was built with: only
    /// these get a status address.
    pub fn live(&self) -> &BTreeSet<ObjectKey> {
        &self.live
    }

    /// Why the newest config is not served, while it is not.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// Looks up the `ExternalName` names the snapshot needs (all of them
    /// with `all`, else those not known or due) and this machine's
    /// addresses, for the next build. Returns whether an answer changed.
    async fn refresh_inputs(&mut self, cluster: &Cluster, all: bool) -> bool {
        let names = build::external_names(cluster, &self.opts);
        let resolved = self.resolver.resolve(&names, all).await;
        for (name, e) in &self.resolver.stale {
            warn!(name = %name, error = %e, "externalName lookup failed; its last addresses are kept");
        }
        let changed = self.opts.resolved.as_deref() != Some(&resolved);
        self.opts.resolved = Some(Arc::new(resolved));
        // TCP and UDP service ports another process holds: nginx could not
        // bind them, and would refuse the whole config.
        let in_use =
            crate::build::streams::ports_in_use(cluster, &self.opts, self.applied.as_deref());
        let freed = in_use != self.opts.ports_in_use;
        if freed && in_use.len() < self.opts.ports_in_use.len() {
            info!("a TCP or UDP service port is free now");
        }
        self.opts.ports_in_use = in_use;
        // Looked up again: names, and ports that were taken.
        self.names_at = (!names.is_empty() || !self.opts.ports_in_use.is_empty())
            .then(|| Instant::now() + crate::resolve::REFRESH);
        let changed = changed || freed;
        self.opts.backend_policy.own_ports = self.own_ports.clone();
        self.opts.backend_policy.own_addresses = crate::netinfo::local_addresses();
        changed
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

    fn quarantine(&mut self, cluster: &Cluster, blamed: Blamed, reason: &str) {
        let key = blamed.key.clone();
        let Some(ing) = cluster.ingresses.get(&key) else {
            return;
        };
        let what = blamed.what();
        let serving = if self.applied.is_some() {
            "the rest is applied; the last good config serves meanwhile"
        } else {
            "the rest is applied"
        };
        warn!(ingress = %key, field = blamed.field.as_deref().unwrap_or(""), service = blamed.service.as_deref().unwrap_or(""),
            "quarantined: nginx refused the config built with it{what}: {reason}; {serving}");
        self.quarantine.insert(
            key.clone(),
            Quarantined {
                fingerprint: fingerprint(ing),
                since: Instant::now(),
            },
        );
        self.opts.quarantine.insert(
            key,
            format!("nginx -t refused the config built with this Ingress{what}: {reason}"),
        );
    }

    /// The Ingress (or Ingresses) to blame for a config `nginx -t` refused:
    /// first from the line nginx names (with the field and Service that
    /// line belongs to), then by bisection with `nginx -t` over the
    /// suspects.
    async fn culprit(&mut self, cluster: &Cluster, build: &Build, message: &str) -> Option<Blamed> {
        let text = self.nginx.refused_config().map(str::to_string);
        let mut blamed = match (text, error_line(message)) {
            (Some(text), Some(line)) => blame(&text, line, &build.config),
            _ => Vec::new(),
        };
        blamed.retain(|b| build.served.contains(&b.key));
        if blamed.len() == 1 {
            return blamed.pop();
        }
        let mut suspects: Vec<ObjectKey> = blamed.into_iter().map(|b| b.key).collect();
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
        .map(|key| Blamed {
            key,
            field: None,
            service: None,
        })
    }

    pub fn nginx(&self) -> &Nginx {
        &self.nginx
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// When the engine wants [`Engine::wake`] to be called.
    pub fn wake_at(&self) -> Option<Instant> {
        match (self.retry_at, self.names_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Builds the snapshot and applies the config if it changed. If nginx
    /// refuses a config, the Ingress responsible is found, quarantined (it
    /// is then reported as rejected) and the rest applied.
    pub async fn rebuild(&mut self, cluster: &Cluster, files: &[FileReport]) -> (Build, Applied) {
        self.refresh_inputs(cluster, false).await;
        self.rebuild_resolved(cluster, files).await
    }

    /// [`Engine::rebuild`] with the names already looked up.
    async fn rebuild_resolved(
        &mut self,
        cluster: &Cluster,
        files: &[FileReport],
    ) -> (Build, Applied) {
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
                Some(blamed) => {
                    let message = message.clone();
                    self.quarantine(cluster, blamed, &message);
                }
                None => {
                    if self.applied.is_some() {
                        warn!(
                            "no single Ingress explains why nginx refused the config; the last good config keeps serving"
                        );
                    } else {
                        warn!(
                            "no single Ingress explains why nginx refused the config; nothing is served yet"
                        );
                    }
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
            // The config nginx serves is also this build's.
            if self.failure.is_none() && self.applied.as_deref() == Some(&*build.config) {
                self.live = build.served.iter().cloned().collect();
            }
            return (build, Applied::Unchanged);
        }
        if let Some(applied) = self.send_endpoints(&build, started).await {
            return (build, applied);
        }
        let previous = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| self.nginx.running_config().map(str::to_string))
            .flatten();
        self.metrics.serving_soon(&build.served);
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
                self.reapply = false;
                self.failure = None;
                let model = build.config.clone();
                self.status.serving(text, model.clone(), "");
                self.metrics.reload(
                    "success",
                    Some((started.elapsed() - built).as_secs_f64()),
                    self.nginx.running_hash().as_deref(),
                );
                self.applied = Some(model);
                self.live = build.served.iter().cloned().collect();
                self.metrics.served(&build.served);
                Applied::Applied
            }
            Err(e) => {
                let serving = self.nginx.running_config().is_some();
                if serving {
                    error!(error = %e, reason = e.label(), "config not applied; the last good config keeps serving");
                } else {
                    error!(error = %e, reason = e.label(), "config not applied; nothing is served yet");
                }
                self.metrics.reload(e.label(), None, None);
                if let (ApplyError::Invalid(msg), Some(text)) = (&e, self.nginx.refused_config()) {
                    self.status.refused(text, msg.clone());
                }
                self.reapply = e.transient();
                if self.reapply {
                    self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
                // Ready only while an nginx serves the newest config that
                // nginx accepted: not when nginx is down, nor when a
                // config it accepted did not load (its retry decides).
                if !serving || !self.nginx.is_running() {
                    self.status.not_ready(if serving {
                        format!("nginx is down: {e}")
                    } else {
                        e.to_string()
                    });
                } else if e.after_test() {
                    self.status
                        .not_ready(format!("the newest config is not served: {e}; retrying"));
                } else {
                    self.status
                        .note(format!("the newest change was not applied: {e}"));
                }
                Applied::Failed(e)
            }
        };
        if let Applied::Failed(e) = &applied {
            self.failure = Some(Failure {
                label: e.label(),
                message: e.to_string(),
            });
        }
        (build, applied)
    }

    /// When the build differs from the config nginx serves in endpoints
    /// only (and nothing else is pending), sends them to nginx instead of
    /// reloading it. `None`: reload (also when nginx did not take them).
    async fn send_endpoints(&mut self, build: &Build, started: Instant) -> Option<Applied> {
        let (Some(attempted), Some(applied)) = (&self.attempted, &self.applied) else {
            return None;
        };
        if self.failure.is_some() || !Arc::ptr_eq(attempted, applied) {
            return None;
        }
        let applied = applied.clone();
        let changed = build.config.endpoint_changes(&applied)?;
        let endpoints: usize = changed.iter().map(|u| u.servers.len()).sum();
        let names = changed.len();
        let sent = self
            .nginx
            .update_endpoints(&build.config, &changed, &self.renderer)
            .await;
        match sent {
            Ok((render, send)) => {
                info!(
                    upstreams = names,
                    endpoints,
                    render_ms = render.as_millis() as u64,
                    send_ms = send.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "updated endpoints without a reload"
                );
                self.metrics
                    .endpoint_update("success", self.nginx.running_hash().as_deref());
                let model = build.config.clone();
                let text = self.nginx.running_text().unwrap_or_default();
                self.status.serving(text, model.clone(), "");
                self.attempted = Some(model.clone());
                self.applied = Some(model);
                self.live = build.served.iter().cloned().collect();
                Some(Applied::Endpoints)
            }
            Err(e) => {
                warn!(error = %e, "endpoints not sent to nginx; reloading it instead");
                self.metrics.endpoint_update(e.label(), None);
                None
            }
        }
    }

    /// Resolves when nginx exits unexpectedly.
    pub async fn nginx_exited(&mut self) -> ExitStatus {
        self.nginx.exited().await
    }

    /// Starts nginx again with the last good config after it died (and
    /// then applies the newest config, if its apply had failed).
    pub async fn restart(&mut self, exit: ExitStatus) {
        error!(%exit, "nginx exited; starting it again with the last good config");
        self.status
            .not_ready(format!("nginx exited ({exit}); restarting"));
        if self.restart_nginx().await && self.reapply {
            self.retry_at = Some(Instant::now());
        }
    }

    /// Whether nginx serves the last good config again.
    async fn restart_nginx(&mut self) -> bool {
        match self.nginx.restart().await {
            Ok(()) => {
                info!("nginx restarted");
                if self.reapply {
                    self.status
                        .note("nginx restarted with the last good config; applying the newest");
                } else {
                    self.status.restored();
                }
                true
            }
            Err(e) => {
                error!(error = %e, "nginx did not restart; trying again in 1s");
                self.status.not_ready(format!("nginx is down: {e}"));
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                false
            }
        }
    }

    /// Called at [`Engine::wake_at`]: starts nginx again if it is down,
    /// applies again a config whose apply failed in a way that may pass,
    /// and looks up the `ExternalName` names again, rebuilding if one
    /// moved. Returns the rebuild, if there was one.
    pub async fn wake(
        &mut self,
        cluster: &Cluster,
        files: &[FileReport],
    ) -> Option<(Build, Applied)> {
        let now = Instant::now();
        let mut rebuild = false;
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            if !self.nginx.is_running()
                && self.nginx.running_config().is_some()
                && !self.restart_nginx().await
            {
                return None;
            }
            rebuild |= self.reapply;
        }
        if self.names_at.is_some_and(|t| t <= now) {
            let moved = self.refresh_inputs(cluster, true).await;
            if moved {
                info!("an externalName resolves to other addresses now");
            }
            rebuild |= moved;
        }
        if !rebuild {
            return None;
        }
        // Compare with what nginx serves, so a config whose apply failed
        // is applied again.
        self.attempted = self.applied.clone();
        Some(self.rebuild_resolved(cluster, files).await)
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
/// `# ingress NS/NAME FIELD` list, or, in an upstream, the Ingresses that
/// proxy to it (with the fields that do, and the upstream's Service).
fn blame(text: &str, line: usize, config: &crate::config::Config) -> Vec<Blamed> {
    let lines: Vec<&str> = text.lines().collect();
    let parse = |comment: &str| {
        let rest = comment.trim_start().strip_prefix("# ingress ")?;
        let mut words = rest.split_whitespace();
        let (ns, name) = words.next()?.split_once('/')?;
        Some(Blamed {
            key: ObjectKey::new(ns, name),
            field: words.next().map(str::to_string),
            service: None,
        })
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
            return comments_above(i).filter_map(parse).take(1).collect();
        }
        if t == "server {" {
            return comments_above(i).filter_map(parse).collect();
        }
        if let Some(name) = t
            .strip_prefix("upstream ")
            .and_then(|r| r.split_whitespace().next())
        {
            let service = config
                .upstreams
                .iter()
                .find(|u| u.name == name)
                .map(|u| u.service.clone());
            let mut found: BTreeMap<ObjectKey, BTreeSet<String>> = BTreeMap::new();
            for l in config
                .servers
                .iter()
                .map(|s| &**s)
                .chain(std::iter::once(&config.default_server))
                .flat_map(|s| &s.locations)
                .filter(|l| matches!(&l.action, crate::config::Action::Proxy { upstream, .. } if upstream == name))
            {
                if let Some(s) = &l.source {
                    found
                        .entry(ObjectKey::new(s.namespace.as_str(), s.name.as_str()))
                        .or_default()
                        .insert(s.field.clone());
                }
            }
            return found
                .into_iter()
                .map(|(key, fields)| Blamed {
                    key,
                    field: Some(fields.into_iter().collect::<Vec<_>>().join(", ")),
                    service: service.clone(),
                })
                .collect();
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

/// Allocator settings, set before any thread starts (serve, controller;
/// render and check take [`tune_allocator_one_off`], whose fixed threshold
/// lowers render's peak at 10,000 annotated Ingresses from 175 to about
/// 153 MiB). At most two malloc arenas (glibc's default is
/// eight per core): every arena keeps its own freed pieces, and the threads
/// that build and render on every core, the runtime's workers and the
/// watches each scatter theirs. A fixed mmap
/// threshold: glibc raises it after freeing a large block (up to 32 MiB),
/// and then puts later large blocks (texts, tables of 10,000 entries) in an
/// arena, where what is freed around them cannot be given back. See
/// BENCHMARKS.md for what this saves.
pub fn tune_allocator() {
    tune_allocator_with(2);
}

/// [`tune_allocator`] for a one-off command (render, check), whose threads
/// each build or render a share of the Ingresses at once: an arena per
/// working thread and one for the main thread, so they never wait for each
/// other's arena lock (two arenas for three threads made `wicket render`
/// a third slower at 10,000 Ingresses).
pub fn tune_allocator_one_off() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tune_allocator_with(i32::try_from(cores + 1).unwrap_or(i32::MAX));
}

fn tune_allocator_with(arenas: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters, under malloc's own
    // lock; it is called before the runtime starts its threads, so they
    // all get the new limits.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        // No fastbins (the per-thread cache still serves small blocks):
        // merging them back before each larger request took ~5% of a
        // render at 10,000 Ingresses (`malloc_consolidate`).
        libc::mallopt(libc::M_MXFAST, 0);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
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
