//! The applier: owns the nginx child process and its state folder.
//!
//! Each config is written as a candidate, swapped in with a rename, and
//! loaded with SIGHUP; the applier then waits until a new worker answers
//! with the new generation on the status socket, or until nginx's master
//! logs an `[emerg]` line (it refused the config and keeps the old one).
//! A refused config is proven with `nginx -t` for the reason reported;
//! a config nginx is started with is proven with `nginx -t` first. When
//! any step fails, the last good config stays on disk and keeps serving.
//!
//! State folder layout:
//!
//! ```text
//! nginx.conf             the config nginx runs (the last good one)
//! nginx.conf.candidate   the last config that nginx refused, if any
//! certs/NAME.crt|.key    certificates, mode 0600, in a 0700 folder
//! auth/NAME.htpasswd     basic authentication's users (read by the workers:
//!                        theirs alone, 0400, when wicket runs as root)
//! modsecurity/NAME.conf  ModSecurity's rules (read by the master, 0600)
//! tmp/                   nginx's temporary files (tmp/auth-cache: the
//!                        answers of auth services, with auth-cache-key)
//! nginx.pid
//! control/wicket-status.sock  (0700 folder) generation, stub_status,
//!                           endpoint updates
//! wicket-unavailable.sock   (dynamic endpoints) what upstreams without
//!                           endpoints send requests to: 503
//! ```
//!
//! With dynamic endpoints, a change of endpoints only is sent to nginx on
//! the status socket (`/wicket/endpoints`, see templates/balancer.lua)
//! instead of reloading it, and nginx.conf is rewritten with them (same
//! generation) so that a restart starts with them.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::config::Config;
use crate::render::{RenderEnv, RenderError, Renderer};

pub const CONF: &str = "nginx.conf";
pub const CANDIDATE: &str = "nginx.conf.candidate";
/// Where configs are checked while looking for the Ingress nginx refuses.
pub const CHECK: &str = "nginx.conf.check";
/// In `control/` (0700 whoever runs wicket): nginx makes its unix sockets
/// 0666, and the state folder is 0711 when workers run as `nobody`, while
/// this socket takes endpoint updates. Workers accept on the socket nginx's
/// master bound, so they need no access to the folder.
pub const STATUS_SOCKET: &str = "control/wicket-status.sock";
/// The folder of [`STATUS_SOCKET`].
pub const CONTROL_DIR: &str = "control";
/// The users' files of basic authentication (`auth/NAME.htpasswd`).
pub const AUTH_DIR: &str = "auth";
/// ModSecurity's rules files (`modsecurity/NAME.conf`).
pub const MODSECURITY_DIR: &str = "modsecurity";
/// Where upstreams without endpoints send requests, with dynamic endpoints
/// (a server of the config answering 503).
pub const UNAVAILABLE_SOCKET: &str = "wicket-unavailable.sock";
/// The longest wait after a SIGHUP before the first probe of the new
/// generation.
const MAX_QUIET: Duration = Duration::from_secs(2);
/// Least time a reload or start may take before it counts as failed; a
/// large config gets longer: three times what the last load (or `nginx -t`
/// before a start) took.
const MIN_LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time on top of `worker-shutdown-timeout` before a stopping nginx is killed.
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// Least time `nginx -t` may take; a large config gets ten times what the
/// last check took. wicket resolves every name itself, so nginx -t does
/// no DNS lookup and this bounds a hung process, not a slow resolver.
const MIN_TEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nginx -t refused the config: {0}")]
    Invalid(String),
    #[error("running {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nginx exited ({0}) before serving the config")]
    Exited(ExitStatus),
    #[error("nginx did not serve the new config within {0:?}; the previous one keeps serving")]
    Timeout(Duration),
    #[error("nginx -t did not finish within {0:?}")]
    TestTimeout(Duration),
    #[error("nginx did not take the endpoints: {0}")]
    Endpoints(String),
}

impl ApplyError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ApplyError::Render(_) => "render",
            ApplyError::Write { .. } => "write",
            ApplyError::Invalid(_) => "invalid",
            ApplyError::Spawn { .. } => "spawn",
            ApplyError::Exited(_) => "exited",
            ApplyError::Timeout(_) => "timeout",
            ApplyError::TestTimeout(_) => "test_timeout",
            ApplyError::Endpoints(_) => "endpoints",
        }
    }

    /// Whether trying the same config again later may succeed: the failure
    /// came from the machine (nginx died, a write failed, a step ran out
    /// of time), not from the config.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            ApplyError::Exited(_)
                | ApplyError::Timeout(_)
                | ApplyError::TestTimeout(_)
                | ApplyError::Spawn { .. }
                | ApplyError::Write { .. }
        )
    }

    /// Whether the config had passed `nginx -t` when this happened: it is
    /// accepted, but nginx does not serve it.
    pub fn after_test(&self) -> bool {
        matches!(self, ApplyError::Exited(_) | ApplyError::Timeout(_))
    }
}

/// How to run nginx.
#[derive(Clone, Debug)]
pub struct NginxOptions {
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    /// nginx's temporary files; `None`: `STATE_DIR/tmp`.
    pub temp_dir: Option<PathBuf>,
}

/// How waiting for a config to load ended.
#[derive(Debug, PartialEq, Eq)]
enum Loaded {
    /// A new worker answers with its generation.
    Served,
    /// nginx's master logged an `[emerg]` line: it refused the config.
    Refused,
}

/// What the applier did with a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// nginx was started with it.
    Started,
    /// nginx was reloaded with it.
    Reloaded,
}

/// How long each step of an apply took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    pub render: Duration,
    /// Writing the candidate and certificates.
    pub write: Duration,
    /// `nginx -t`.
    pub test: Duration,
    /// From SIGHUP (or start) until a new worker answered.
    pub reload: Duration,
}

/// The nginx child process and the files it reads.
pub struct Nginx {
    opts: NginxOptions,
    user: Option<(String, String)>,
    ipv6: bool,
    child: Option<Child>,
    /// The process group of the child (its PID), kept after the child is
    /// reaped so its workers can still be found.
    pgid: Option<u32>,
    generation: u64,
    /// Generation and text of the config nginx serves.
    good: Option<(u64, std::sync::Arc<String>)>,
    /// The served config's `worker-shutdown-timeout`.
    shutdown_timeout: Duration,
    /// The text of the last config `nginx -t` refused.
    refused: Option<std::sync::Arc<String>>,
    /// How long loading a config may take (see [`MIN_LOAD_TIMEOUT`]).
    load_timeout: Duration,
    /// How long `nginx -t` may take (see [`MIN_TEST_TIMEOUT`]).
    test_timeout: Duration,
    /// How long the last reload took until a new worker answered.
    last_reload: Duration,
    /// The servers and upstreams last rendered, reused while unchanged.
    render_cache: crate::render::RenderCache,
    /// nginx's error log (its standard error), watched for refusals.
    errors: std::sync::Arc<ErrorLog>,
}

/// nginx's error log, which goes to its standard error: copied to
/// wicket's, with its `[emerg]` lines counted. A master that refuses the
/// config a reload asks for writes one (and keeps the old config, its
/// workers and sockets: nginx's reload is all or nothing).
#[derive(Default)]
struct ErrorLog {
    emergs: std::sync::atomic::AtomicU64,
    last_emerg: std::sync::Mutex<String>,
}

/// The longest line of the error log looked at whole; the rest of a longer
/// one is still copied.
const MAX_ERROR_LINE: usize = 16 * 1024;

impl ErrorLog {
    fn emergs(&self) -> u64 {
        self.emergs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes the next piece of the log; `partial` holds the end of a line
    /// a piece cut.
    fn take(&self, partial: &mut Vec<u8>, piece: &[u8]) {
        for chunk in piece.split_inclusive(|&b| b == b'\n') {
            if partial.len() < MAX_ERROR_LINE {
                let room = MAX_ERROR_LINE - partial.len();
                partial.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            if chunk.ends_with(b"\n") {
                if is_emerg(partial) {
                    let line = String::from_utf8_lossy(partial).trim_end().to_string();
                    *self.last_emerg.lock().unwrap_or_else(|e| e.into_inner()) = line;
                    self.emergs
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                partial.clear();
            }
        }
    }

    fn last_emerg(&self) -> String {
        self.last_emerg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Whether a line of the error log is one of level `emerg`: nginx writes
/// `YYYY/MM/DD HH:MM:SS [emerg] ...` once its log is open and
/// `nginx: [emerg] ...` before. Only the level's own place counts, so a
/// request line that carries the word does not.
fn is_emerg(line: &[u8]) -> bool {
    const LEVEL: &[u8] = b"[emerg]";
    if line.starts_with(b"nginx: [emerg]") {
        return true;
    }
    let stamp = b"0000/00/00 00:00:00 ";
    line.len() >= stamp.len() + LEVEL.len()
        && line[..stamp.len()].iter().zip(stamp).all(|(&b, &f)| {
            if f == b'0' {
                b.is_ascii_digit()
            } else {
                b == f
            }
        })
        && &line[stamp.len()..stamp.len() + LEVEL.len()] == LEVEL
}

/// Writes a file atomically: a temporary file in the same folder, then a
/// rename over the target.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), ApplyError> {
    let err = |source| ApplyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

fn make_dir(path: &Path, mode: u32) -> Result<(), ApplyError> {
    let err = |source| ApplyError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// A temporary folder given by flag, often a volume of its own (an
/// emptyDir whose mode wicket may not change): created if missing, made
/// traversable where wicket may, and it must be writable.
fn make_temp_dir(path: &Path) -> Result<(), ApplyError> {
    let err = |source| ApplyError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    let mode = std::fs::metadata(path).map_err(err)?.permissions().mode();
    if mode & 0o755 != 0o755 {
        // Workers (as `nobody`, when wicket is root) must reach it.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o755));
    }
    // nginx creates its folders in it: check it can be written now, not at
    // the first buffered body.
    let probe = path.join(".wicket-write-check");
    std::fs::write(&probe, b"").map_err(err)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The user and group workers run as when wicket runs as root.
fn worker_user() -> Option<(String, String)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("nobody").ok().flatten()?;
    let group = nix::unistd::Group::from_gid(user.gid).ok().flatten()?;
    Some((user.name, group.name))
}

impl Nginx {
    /// Prepares the state folder. As root, the folder is traversable (0711)
    /// so unprivileged workers reach their temporary folders; certificates
    /// stay in a 0700 folder that only the master reads.
    pub fn new(mut opts: NginxOptions) -> Result<Self, ApplyError> {
        let user = worker_user();
        make_dir(&opts.state_dir, if user.is_some() { 0o711 } else { 0o700 })?;
        // nginx runs in the state folder: a relative path would be taken
        // from there.
        opts.state_dir =
            std::path::absolute(&opts.state_dir).map_err(|source| ApplyError::Write {
                path: opts.state_dir.clone(),
                source,
            })?;
        make_dir(&opts.state_dir.join("certs"), 0o700)?;
        make_dir(&opts.state_dir.join(CONTROL_DIR), 0o700)?;
        make_dir(&opts.state_dir.join(MODSECURITY_DIR), 0o700)?;
        // Workers read the users' files of basic authentication for every
        // request: as root, they can pass through (0711) to files that are
        // theirs alone (see write_certificates).
        make_dir(
            &opts.state_dir.join(AUTH_DIR),
            if user.is_some() { 0o711 } else { 0o700 },
        )?;
        match &opts.temp_dir {
            None => make_dir(&opts.state_dir.join("tmp"), 0o755)?,
            Some(dir) => make_temp_dir(dir)?,
        }
        Ok(Nginx {
            opts,
            user,
            ipv6: crate::render::ipv6_available(),
            child: None,
            pgid: None,
            generation: 0,
            good: None,
            shutdown_timeout: Duration::from_secs(10),
            refused: None,
            load_timeout: MIN_LOAD_TIMEOUT,
            test_timeout: MIN_TEST_TIMEOUT,
            last_reload: Duration::ZERO,
            render_cache: Default::default(),
            errors: Default::default(),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.opts.state_dir
    }

    fn env(&self) -> RenderEnv {
        RenderEnv {
            generation: self.generation,
            user: self.user.clone(),
            ipv6: self.ipv6,
            temp_dir: self.opts.temp_dir.as_ref().map(|d| d.display().to_string()),
        }
    }

    /// The config nginx serves now.
    pub fn running_config(&self) -> Option<&str> {
        self.good.as_ref().map(|(_, t)| t.as_str())
    }

    /// The config nginx serves now, shared.
    pub fn running_text(&self) -> Option<std::sync::Arc<String>> {
        self.good.as_ref().map(|(_, t)| t.clone())
    }

    /// A short hash of the config nginx serves (without its generation
    /// line, so the same config always has the same hash).
    pub fn running_hash(&self) -> Option<String> {
        use sha2::Digest;
        let text = self.running_config()?;
        let body = text.split_once("\n# generation").map_or(text, |(_, rest)| {
            rest.split_once('\n').map_or(rest, |(_, r)| r)
        });
        Some(hex::encode(&sha2::Sha256::digest(body.as_bytes())[..8]))
    }

    /// Renders, proves and loads a config.
    ///
    /// A running nginx proves a config itself: on SIGHUP its master parses
    /// the new config and, when it refuses it, logs why (`[emerg]`) and
    /// keeps the old one, its workers and sockets. So a reload loads the
    /// config once, not twice; `nginx -t` proves a config before nginx is
    /// started with it, and explains a config a reload refused (its
    /// message is the one reported, and the engine's quarantine runs
    /// `nginx -t` to find the Ingress responsible).
    pub async fn apply(
        &mut self,
        config: &std::sync::Arc<Config>,
        renderer: &Renderer,
    ) -> Result<(Outcome, Timings), ApplyError> {
        self.generation += 1;
        let env = self.env();
        let mut timings = Timings::default();
        let mut step = Instant::now();
        let mut lap = |slot: &mut Duration| {
            *slot = step.elapsed();
            step = Instant::now();
        };
        let text = renderer.render_cached(config, &env, &mut self.render_cache)?;
        lap(&mut timings.render);
        self.write_certificates(config)?;
        let dir = self.opts.state_dir.clone();
        write_atomic(&dir.join(CANDIDATE), text.as_bytes(), 0o644)?;
        lap(&mut timings.write);
        let reload = self.good.is_some() && self.running();
        if !reload {
            if let Err(e) = self.test(&dir.join(CANDIDATE)).await {
                self.refused = Some(text);
                return Err(e);
            }
            self.refused = None;
            lap(&mut timings.test);
            self.learn_load_time(timings.test);
        }
        std::fs::rename(dir.join(CANDIDATE), dir.join(CONF)).map_err(|source| {
            ApplyError::Write {
                path: dir.join(CONF),
                source,
            }
        })?;

        let refusals = self.errors.emergs();
        let mut outcome = if reload {
            self.signal(Signal::SIGHUP);
            Outcome::Reloaded
        } else {
            self.spawn()?;
            Outcome::Started
        };
        let mut waited = self
            .wait_for_generation(self.generation, reload.then_some(refusals))
            .await;
        if let Ok(Loaded::Refused) = waited {
            // nginx serves the config it had. Why it refused this one:
            write_atomic(&dir.join(CANDIDATE), text.as_bytes(), 0o644)?;
            match self.test(&dir.join(CANDIDATE)).await {
                Err(e) => {
                    self.put_back(false)?;
                    if matches!(e, ApplyError::Invalid(_)) {
                        self.refused = Some(text);
                    }
                    return Err(e);
                }
                Ok(()) => {
                    // The config is valid: what nginx wrote was about
                    // something else (a port it could not bind, a line of
                    // a worker). It may still load; wait for it.
                    tracing::warn!(
                        line = %self.errors.last_emerg(),
                        "nginx logged an error while reloading a config nginx -t accepts"
                    );
                    let _ = std::fs::remove_file(dir.join(CANDIDATE));
                    waited = self.wait_for_generation(self.generation, None).await;
                }
            }
        }
        if let Err(ApplyError::Exited(status)) = &waited {
            // The master died while loading the config (its workers are
            // gone with it, see `wait_for_generation`).
            let status = *status;
            if reload && let Err(e) = self.test(&dir.join(CONF)).await {
                // One it refuses: nginx starts again with the last good
                // one (the engine retries if that fails too).
                tracing::warn!(%status, "nginx exited while loading a config nginx -t refuses; starting it again with the last good config");
                self.put_back(false)?;
                if matches!(e, ApplyError::Invalid(_)) {
                    self.refused = Some(text);
                }
                let _ = self.restart().await;
                return Err(e);
            }
            tracing::warn!(%status, "nginx exited while loading the new config; starting it again with that config");
            self.spawn()?;
            outcome = Outcome::Started;
            waited = self.wait_for_generation(self.generation, None).await;
        }
        if let Err(e) = waited {
            // Put the last good config back on disk (and in nginx, in case it
            // loaded the new one after all).
            self.put_back(true)?;
            return Err(e);
        }
        lap(&mut timings.reload);
        if reload {
            self.refused = None;
            self.learn_load_time(timings.reload);
            self.last_reload = timings.reload;
        }
        self.good = Some((self.generation, text));
        self.shutdown_timeout =
            Duration::from_secs(config.settings.worker_shutdown_timeout.0.into());
        self.remove_unused_certificates(config);
        Ok((outcome, timings))
    }

    /// Sets how long loading a config and `nginx -t` may take from how
    /// long the last one took.
    fn learn_load_time(&mut self, took: Duration) {
        self.load_timeout = MIN_LOAD_TIMEOUT.max(took * 3);
        self.test_timeout = MIN_TEST_TIMEOUT.max(took * 10);
    }

    /// Writes the last good config back over nginx.conf, and with `signal`
    /// asks a running nginx to load it again.
    fn put_back(&mut self, signal: bool) -> Result<(), ApplyError> {
        if let Some((_, good)) = &self.good {
            write_atomic(&self.opts.state_dir.join(CONF), good.as_bytes(), 0o644)?;
            if signal && self.running() {
                self.signal(Signal::SIGHUP);
            }
        }
        Ok(())
    }

    /// Sends the endpoints of `changed` (upstreams of `config`, which
    /// differs from the config nginx serves only in them, see
    /// [`Config::endpoint_changes`]) to the running nginx, without a
    /// reload, and writes `config` as the one nginx loads next: a restart
    /// starts with these endpoints. Returns the render time and the time
    /// nginx took to answer. When nginx does not take them, the config on
    /// disk is put back.
    pub async fn update_endpoints(
        &mut self,
        config: &std::sync::Arc<Config>,
        changed: &[&crate::config::Upstream],
        renderer: &Renderer,
    ) -> Result<(Duration, Duration), ApplyError> {
        let Some((generation, good)) = self.good.clone() else {
            return Err(ApplyError::Endpoints("nginx serves no config yet".into()));
        };
        if !self.running() {
            return Err(ApplyError::Endpoints("nginx is not running".into()));
        }
        let started = Instant::now();
        let mut env = self.env();
        env.generation = generation;
        let text = renderer.render_cached(config, &env, &mut self.render_cache)?;
        let rendered = started.elapsed();
        let dir = self.opts.state_dir.clone();
        write_atomic(&dir.join(CONF), text.as_bytes(), 0o644)?;
        let body = endpoints_update(generation, changed);
        let socket = dir.join(STATUS_SOCKET);
        // A worker of the config before the last reload may still accept
        // on the socket for a moment; it refuses the generation (409).
        let mut result = Err(String::new());
        for _ in 0..50 {
            result = post_status(&socket, "/wicket/endpoints", &body).await;
            match &result {
                Err(e) if e.starts_with("409") => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => break,
            }
        }
        if let Err(e) = result {
            // The config on disk stays the one nginx serves.
            write_atomic(&dir.join(CONF), good.as_bytes(), 0o644)?;
            self.render_cache = Default::default();
            return Err(ApplyError::Endpoints(e));
        }
        self.good = Some((generation, text));
        Ok((rendered, started.elapsed() - rendered))
    }

    /// The text of the last config `nginx -t` refused, if the last apply
    /// failed that way.
    pub fn refused_config(&self) -> Option<&str> {
        self.refused.as_deref().map(String::as_str)
    }

    /// Runs `nginx -t` on a config without applying it.
    pub async fn check(&mut self, config: &Config, renderer: &Renderer) -> Result<(), ApplyError> {
        let env = self.env();
        let text = renderer.render(config, &env)?;
        self.write_certificates(config)?;
        let path = self.opts.state_dir.join(CHECK);
        write_atomic(&path, text.as_bytes(), 0o644)?;
        self.test(&path).await
    }

    /// Starts nginx again with the last good config, after it died.
    pub async fn restart(&mut self) -> Result<(), ApplyError> {
        let Some((generation, _)) = self.good.clone() else {
            return Ok(());
        };
        self.kill_group();
        self.spawn()?;
        self.wait_for_generation(generation, None).await.map(|_| ())
    }

    fn write_certificates(&self, config: &Config) -> Result<(), ApplyError> {
        let certs = self.opts.state_dir.join("certs");
        let files = config
            .certificates
            .iter()
            .flat_map(|c| {
                [
                    (format!("{}.crt", c.name), &c.cert_pem),
                    (format!("{}.key", c.name), &c.key_pem),
                ]
            })
            .chain(
                config
                    .trusted
                    .iter()
                    .map(|t| (format!("{}.ca.crt", t.name), &t.pem)),
            );
        for (name, content) in files {
            let path = certs.join(name);
            if std::fs::read(&path).is_ok_and(|old| old == content.as_bytes()) {
                continue;
            }
            write_atomic(&path, content.as_bytes(), 0o600)?;
        }
        let rules = self.opts.state_dir.join(MODSECURITY_DIR);
        for f in &config.modsecurity_files {
            let path = rules.join(format!("{}.conf", f.name));
            if std::fs::read(&path).is_ok_and(|old| old == f.content.as_bytes()) {
                continue;
            }
            write_atomic(&path, f.content.as_bytes(), 0o600)?;
        }
        let auth = self.opts.state_dir.join(AUTH_DIR);
        for h in &config.htpasswd {
            let path = auth.join(format!("{}.htpasswd", h.name));
            if std::fs::read(&path).is_ok_and(|old| old == h.content.as_bytes()) {
                continue;
            }
            // As root: the workers' user's alone (0400).
            let mode = if self.user.is_some() { 0o400 } else { 0o600 };
            write_atomic(&path, h.content.as_bytes(), mode)?;
            if let Some((user, _)) = &self.user
                && let Ok(Some(u)) = nix::unistd::User::from_name(user)
            {
                nix::unistd::chown(&path, Some(u.uid), Some(u.gid)).map_err(|e| {
                    ApplyError::Write {
                        path: path.clone(),
                        source: e.into(),
                    }
                })?;
            }
        }
        Ok(())
    }

    fn remove_unused_certificates(&self, config: &Config) {
        let used: BTreeSet<String> = config
            .certificates
            .iter()
            .flat_map(|c| [format!("{}.crt", c.name), format!("{}.key", c.name)])
            .chain(config.trusted.iter().map(|t| format!("{}.ca.crt", t.name)))
            .collect();
        let htpasswd: BTreeSet<String> = config
            .htpasswd
            .iter()
            .map(|h| format!("{}.htpasswd", h.name))
            .collect();
        let rules: BTreeSet<String> = config
            .modsecurity_files
            .iter()
            .map(|f| format!("{}.conf", f.name))
            .collect();
        for (dir, used) in [
            ("certs", &used),
            (AUTH_DIR, &htpasswd),
            (MODSECURITY_DIR, &rules),
        ] {
            let Ok(entries) = std::fs::read_dir(self.opts.state_dir.join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                if let Some(name) = e.file_name().to_str()
                    && !used.contains(name)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.opts.binary);
        cmd.current_dir(&self.opts.state_dir)
            .arg("-p")
            .arg(&self.opts.state_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn test(&self, conf: &Path) -> Result<(), ApplyError> {
        // `kill_on_drop`: a check that runs out of time is killed.
        let run = self
            .command()
            .arg("-t")
            .arg("-q")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let out = tokio::time::timeout(self.test_timeout, run)
            .await
            .map_err(|_| ApplyError::TestTimeout(self.test_timeout))?
            .map_err(|source| ApplyError::Spawn {
                binary: self.opts.binary.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(ApplyError::Invalid(if msg.is_empty() {
            format!("exit status {}", out.status)
        } else {
            msg
        }))
    }

    fn spawn(&mut self) -> Result<(), ApplyError> {
        // A socket left by a process that died would make bind() fail.
        let _ = std::fs::remove_file(self.opts.state_dir.join(STATUS_SOCKET));
        let _ = std::fs::remove_file(self.opts.state_dir.join(UNAVAILABLE_SOCKET));
        // Its own process group, so the workers of a master that died can be
        // found and stopped: orphaned, they would keep the ports.
        let child = self
            .command()
            .arg("-c")
            .arg(self.opts.state_dir.join(CONF))
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ApplyError::Spawn {
                binary: self.opts.binary.clone(),
                source,
            })?;
        // The access log goes to nginx's /dev/stdout: a pipe of ours, which
        // nginx can open whatever user it runs as, copied to our stdout.
        // nginx's workers block writing to it when it is full, so it is
        // made large (1 MiB, the default limit for a pipe) and drained in
        // large reads.
        let mut child = child;
        self.pgid = child.id();
        if let Some(out) = child.stdout.take() {
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsRawFd;
                // SAFETY: F_SETPIPE_SZ only resizes the pipe behind a file
                // descriptor we own; failing leaves it as it was.
                unsafe {
                    libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
                }
            }
            tokio::spawn(async move {
                let mut out = tokio::io::BufReader::with_capacity(256 * 1024, out);
                let _ = tokio::io::copy_buf(&mut out, &mut tokio::io::stdout()).await;
            });
        }
        if let Some(err) = child.stderr.take() {
            // The error log: copied to our stderr (when that fails, still
            // read, or nginx would block), its `[emerg]` lines counted.
            let log = self.errors.clone();
            tokio::spawn(async move {
                let mut err = err;
                let mut buf = vec![0u8; 64 * 1024];
                let mut partial = Vec::new();
                let mut out = Some(tokio::io::stderr());
                loop {
                    let n = match err.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    log.take(&mut partial, &buf[..n]);
                    if let Some(o) = &mut out
                        && o.write_all(&buf[..n]).await.is_err()
                    {
                        out = None;
                    }
                }
            });
        }
        self.child = Some(child);
        Ok(())
    }

    /// Whether the nginx master runs. A master found gone takes its
    /// process group with it: its workers would keep the ports and serve
    /// an old config.
    fn running(&mut self) -> bool {
        let alive = match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => return false,
        };
        if !alive {
            self.kill_group();
        }
        alive
    }

    /// Whether nginx runs now.
    pub fn is_running(&mut self) -> bool {
        self.running()
    }

    /// Kills every process of the nginx child's process group (the master,
    /// if it still runs, and its workers) and forgets the child.
    fn kill_group(&mut self) {
        self.child = None;
        if let Some(pgid) = self.pgid.take() {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// Waits until a worker answers with `generation` on the status socket,
    /// or, with `refusals`, until nginx's error log has more `[emerg]`
    /// lines than that: the master refused the config.
    async fn wait_for_generation(
        &mut self,
        generation: u64,
        refusals: Option<u64>,
    ) -> Result<Loaded, ApplyError> {
        let deadline = Instant::now() + self.load_timeout;
        let socket = self.opts.state_dir.join(STATUS_SOCKET);
        let want = generation.to_string();
        if refusals.is_some() {
            // After a SIGHUP, for half the time the last reload took, the
            // master is still loading the config: the probes would reach
            // old workers only, and take the CPU it loads with.
            tokio::time::sleep((self.last_reload / 2).min(MAX_QUIET)).await;
        }
        loop {
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                self.kill_group();
                return Err(ApplyError::Exited(status));
            }
            // Old workers keep answering for a while after a reload (nginx
            // lets them go ~100 ms after the new ones start), each probe
            // reaching whichever worker accepts it: ask several at once.
            let probes = (0..4).map(|_| query_status(&socket, "/wicket/generation"));
            if futures::future::join_all(probes)
                .await
                .iter()
                .any(|g| g.as_deref() == Some(want.as_str()))
            {
                return Ok(Loaded::Served);
            }
            if refusals.is_some_and(|n| self.errors.emergs() > n) {
                return Ok(Loaded::Refused);
            }
            if Instant::now() > deadline {
                return Err(ApplyError::Timeout(self.load_timeout));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Resolves when the nginx child exits; never, when there is none. The
    /// workers it leaves behind are killed.
    pub async fn exited(&mut self) -> ExitStatus {
        match &mut self.child {
            Some(c) => {
                let status = c.wait().await;
                self.kill_group();
                status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(1))
            }
            None => std::future::pending().await,
        }
    }

    /// Stops nginx gracefully (SIGQUIT: workers finish their requests), and
    /// kills it if that takes too long. Either way no process of its group
    /// is left.
    pub async fn stop(&mut self) {
        if self.running() {
            self.signal(Signal::SIGQUIT);
            if let Some(c) = &mut self.child {
                let _ = tokio::time::timeout(self.shutdown_timeout + STOP_MARGIN, c.wait()).await;
            }
        }
        self.kill_group();
    }
}

impl Drop for Nginx {
    /// wicket is ending: no nginx process outlives it.
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// The body of an update of `/wicket/endpoints` (templates/balancer.lua):
/// the generation, then each upstream's name and endpoints on a line.
pub fn endpoints_update(generation: u64, changed: &[&crate::config::Upstream]) -> String {
    use std::fmt::Write as _;
    let mut body = format!("wicket-endpoints {generation}\n");
    for u in changed {
        body.push_str(&u.name);
        for s in &u.servers {
            let _ = write!(body, " {s}");
        }
        body.push('\n');
    }
    body
}

/// POSTs `body` to a path on nginx's status socket: the answer's body on
/// 200, else "STATUS BODY" (or what went wrong).
pub async fn post_status(socket: &Path, path: &str, body: &str) -> Result<String, String> {
    let fut = async {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        let head = format!(
            "POST {path} HTTP/1.0\r\nHost: wicket\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("sending: {e}"))?;
        s.write_all(body.as_bytes())
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, answer) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .unwrap_or("no status")
            .to_string();
        if status == "200" {
            Ok(answer.to_string())
        } else {
            Err(format!("{status} {}", answer.trim()))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| Err("no answer within 10s".into()))
}

/// GETs a path on nginx's status socket; the body on a 200 answer.
pub async fn query_status(socket: &Path, path: &str) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: wicket\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_log_counts_emerg_lines_across_pieces() {
        let log = ErrorLog::default();
        let mut partial = Vec::new();
        let line =
            b"2026/12/03 03:09:11 [emerg] 42#42: unknown directive \"x\" in /s/nginx.conf:3\n";
        // Cut in every place: one line, counted once.
        for cut in 0..line.len() {
            let before = log.emergs();
            log.take(&mut partial, &line[..cut]);
            log.take(&mut partial, &line[cut..]);
            assert_eq!(log.emergs(), before + 1, "cut at {cut}");
            assert!(partial.is_empty());
        }
        assert_eq!(
            log.last_emerg(),
            "2026/12/03 03:09:11 [emerg] 42#42: unknown directive \"x\" in /s/nginx.conf:3"
        );
        // A line not yet ended is not counted.
        let before = log.emergs();
        log.take(&mut partial, b"nginx: [emerg] bind() failed");
        assert_eq!(log.emergs(), before);
        log.take(&mut partial, b"\n");
        assert_eq!(log.emergs(), before + 1);
    }

    #[test]
    fn error_log_counts_only_the_level_in_its_place() {
        let log = ErrorLog::default();
        let mut partial = Vec::new();
        log.take(
            &mut partial,
            b"2026/12/03 03:09:11 [error] 7#7: *1 open() \"/srv/[emerg]\" failed, request: \"GET /[emerg] HTTP/1.1\"\n\
              2026/12/03 03:09:11 [notice] 7#7: signal process started\n\
              [emerg] not at the start of a line of nginx's\n",
        );
        assert_eq!(log.emergs(), 0);
        log.take(
            &mut partial,
            b"2026/12/03 03:09:12 [emerg] 7#7: a\n2026/12/03 03:09:12 [emerg] 7#7: b\n",
        );
        assert_eq!(log.emergs(), 2);
        assert_eq!(log.last_emerg(), "2026/12/03 03:09:12 [emerg] 7#7: b");
    }

    #[test]
    fn error_log_keeps_a_bounded_piece_of_a_long_line() {
        let log = ErrorLog::default();
        let mut partial = Vec::new();
        let mut line = b"2026/12/03 03:09:11 [emerg] 7#7: ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 3 * MAX_ERROR_LINE));
        for piece in line.chunks(1000) {
            log.take(&mut partial, piece);
            assert!(partial.len() <= MAX_ERROR_LINE);
        }
        log.take(&mut partial, b"\n");
        assert_eq!(log.emergs(), 1);
        assert_eq!(log.last_emerg().len(), MAX_ERROR_LINE);
        assert!(partial.is_empty());
    }
}
