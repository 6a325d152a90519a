//! Prometheus metrics, served on the admin port at `/metrics`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::cluster::Cluster;
use crate::problem::{Problem, Severity};
use crate::request_metrics::{CONTROLLER_LABELS, PREFIX, RequestMetrics, RequestMetricsOptions};

type Labels = Vec<(&'static str, String)>;

/// nginx's `stub_status` counters, read from the status socket at each
/// scrape.
#[derive(Debug, Default)]
struct NginxStats {
    controller: [String; 3],
    up: AtomicBool,
    active: AtomicU64,
    accepted: AtomicU64,
    handled: AtomicU64,
    requests: AtomicU64,
    reading: AtomicU64,
    writing: AtomicU64,
    waiting: AtomicU64,
}

impl Collector for NginxStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let up = ConstGauge::new(i64::from(self.up.load(Ordering::Relaxed)));
        up.encode(encoder.encode_descriptor(
            "wicket_nginx_up",
            "Whether nginx answers on its status socket",
            None,
            up.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "wicket_nginx_connections_accepted",
                "Client connections nginx accepted",
                get(&self.accepted),
            ),
            (
                "wicket_nginx_connections_handled",
                "Client connections nginx handled",
                get(&self.handled),
            ),
            (
                "wicket_nginx_requests",
                "Client requests nginx received",
                get(&self.requests),
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let g = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "wicket_nginx_connections",
            "Client connections by state",
            None,
            g.metric_type(),
        )?;
        for (state, value) in [
            ("active", get(&self.active)),
            ("reading", get(&self.reading)),
            ("writing", get(&self.writing)),
            ("waiting", get(&self.waiting)),
        ] {
            let labels = [("state", state)];
            ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
        }
        // ingress-nginx's names for the same counters.
        let controller = |extra: Option<(&'static str, &'static str)>| {
            let mut v: Vec<(&str, &str)> = CONTROLLER_LABELS
                .iter()
                .zip(self.controller.iter())
                .map(|(k, v)| (*k, v.as_str()))
                .collect();
            v.extend(extra);
            v
        };
        let name = format!("{PREFIX}nginx_process_connections");
        let mut family = encoder.encode_descriptor(
            &name,
            "current number of client connections with state {active, reading, writing, waiting}",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in [
            ("active", get(&self.active)),
            ("reading", get(&self.reading)),
            ("writing", get(&self.writing)),
            ("waiting", get(&self.waiting)),
        ] {
            let labels = controller(Some(("state", state)));
            ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
        }
        // Unknown: an OpenMetrics counter family of this name would clash
        // with the gauge above.
        let name = format!("{PREFIX}nginx_process_connections_total");
        let mut family = encoder.encode_descriptor(
            &name,
            "total number of connections with state {accepted, handled}",
            None,
            MetricType::Unknown,
        )?;
        for (state, value) in [
            ("accepted", get(&self.accepted)),
            ("handled", get(&self.handled)),
        ] {
            let labels = controller(Some(("state", state)));
            family.encode_family(&labels)?.encode_gauge(&value)?;
        }
        let c = ConstCounter::new(get(&self.requests));
        c.encode(
            encoder
                .encode_descriptor(
                    &format!("{PREFIX}nginx_process_requests"),
                    "total number of client requests",
                    None,
                    c.metric_type(),
                )?
                .encode_family(&controller(None))?,
        )?;
        Ok(())
    }
}

/// ingress-nginx's controller metrics (reloads, the config's hash) and
/// nginx's processes, with its names.
#[derive(Debug, Default)]
struct Compat {
    controller: [String; 3],
    hash: AtomicU64,
    last_ok: AtomicBool,
    last_ok_time: AtomicU64,
    success: AtomicU64,
    errors: AtomicU64,
}

/// What `/proc` says of nginx's master and workers.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub procs: u64,
    pub cpu_seconds: f64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub oldest_start: f64,
}

/// nginx's processes: the child of this process that leads its own process
/// group (the master; `nginx -t` runs in wicket's group), and that group.
pub fn nginx_processes() -> Option<ProcessStats> {
    let me = std::process::id() as u64;
    let mut procs: Vec<(u64, Vec<String>)> = Vec::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        procs.push((pid, rest.split_whitespace().map(str::to_string).collect()));
    }
    let field = |f: &[String], i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let master = procs
        .iter()
        .find(|(pid, f)| field(f, 1) == me && field(f, 2) == *pid)?
        .0;
    // SAFETY: sysconf only reads a configuration value.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
        )
    };
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0);
    let mut out = ProcessStats::default();
    let mut oldest = u64::MAX;
    for (pid, f) in procs.iter().filter(|(_, f)| field(f, 2) == master) {
        out.procs += 1;
        out.cpu_seconds += (field(f, 11) + field(f, 12)) as f64 / tick;
        oldest = oldest.min(field(f, 19));
        out.virtual_bytes += field(f, 20);
        out.resident_bytes += field(f, 21) * page;
        if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
            for l in io.lines() {
                let num = |p: &str| l.strip_prefix(p).and_then(|v| v.trim().parse::<u64>().ok());
                if let Some(v) = num("read_bytes:") {
                    out.read_bytes += v;
                } else if let Some(v) = num("write_bytes:") {
                    out.write_bytes += v;
                }
            }
        }
    }
    out.oldest_start = boot + oldest as f64 / tick;
    Some(out)
}

impl Collector for Compat {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels: Vec<(&str, &str)> = CONTROLLER_LABELS
            .iter()
            .zip(self.controller.iter())
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let f = |a: &AtomicU64| f64::from_bits(a.load(Ordering::Relaxed));
        for (name, help, value) in [
            (
                "config_hash",
                "Running configuration hash actually running",
                f(&self.hash),
            ),
            (
                "config_last_reload_successful",
                "Whether the last configuration reload attempt was successful",
                f64::from(u8::from(self.last_ok.load(Ordering::Relaxed))),
            ),
            (
                "config_last_reload_successful_timestamp_seconds",
                "Timestamp of the last successful configuration reload.",
                f(&self.last_ok_time),
            ),
        ] {
            ConstGauge::new(value).encode(
                encoder
                    .encode_descriptor(&format!("{PREFIX}{name}"), help, None, MetricType::Gauge)?
                    .encode_family(&labels)?,
            )?;
        }
        // Unknown, so the samples keep ingress-nginx's names (an
        // OpenMetrics counter's end in `_total`).
        for (name, help, value) in [
            (
                "success",
                "Cumulative number of Ingress controller reload operations",
                self.success.load(Ordering::Relaxed),
            ),
            (
                "errors",
                "Cumulative number of Ingress controller errors during reload operations",
                self.errors.load(Ordering::Relaxed),
            ),
        ] {
            encoder
                .encode_descriptor(&format!("{PREFIX}{name}"), help, None, MetricType::Unknown)?
                .encode_family(&labels)?
                .encode_gauge(&value)?;
        }
        let Some(p) = nginx_processes() else {
            return Ok(());
        };
        let sub = |n: &str| format!("{PREFIX}nginx_process_{n}");
        for (name, help, value) in [
            ("num_procs", "number of processes", p.procs as f64),
            (
                "resident_memory_bytes",
                "number of bytes of memory in use",
                p.resident_bytes as f64,
            ),
            (
                "virtual_memory_bytes",
                "number of bytes of memory in use",
                p.virtual_bytes as f64,
            ),
            (
                "oldest_start_time_seconds",
                "start time in seconds since 1970/01/01",
                p.oldest_start,
            ),
        ] {
            ConstGauge::new(value).encode(
                encoder
                    .encode_descriptor(&sub(name), help, None, MetricType::Gauge)?
                    .encode_family(&labels)?,
            )?;
        }
        for (name, help, value) in [
            ("cpu_seconds", "Cpu usage in seconds", p.cpu_seconds),
            ("read_bytes", "number of bytes read", p.read_bytes as f64),
            (
                "write_bytes",
                "number of bytes written",
                p.write_bytes as f64,
            ),
        ] {
            ConstCounter::new(value).encode(
                encoder
                    .encode_descriptor(&sub(name), help, None, MetricType::Counter)?
                    .encode_family(&labels)?,
            )?;
        }
        Ok(())
    }
}

impl NginxStats {
    /// Parses `stub_status` output.
    fn update(&self, text: Option<&str>) {
        let Some(text) = text else {
            self.up.store(false, Ordering::Relaxed);
            return;
        };
        let numbers: Vec<u64> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        // Active connections: N / accepts handled requests / A B C /
        // Reading: R Writing: W Waiting: X
        if let [
            active,
            accepted,
            handled,
            requests,
            reading,
            writing,
            waiting,
        ] = numbers[..]
        {
            self.active.store(active, Ordering::Relaxed);
            self.accepted.store(accepted, Ordering::Relaxed);
            self.handled.store(handled, Ordering::Relaxed);
            self.requests.store(requests, Ordering::Relaxed);
            self.reading.store(reading, Ordering::Relaxed);
            self.writing.store(writing, Ordering::Relaxed);
            self.waiting.store(waiting, Ordering::Relaxed);
            self.up.store(true, Ordering::Relaxed);
        } else {
            self.up.store(false, Ordering::Relaxed);
        }
    }
}

/// Every metric wicket keeps.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reloads: Family<Labels, Counter>,
    endpoint_updates: Family<Labels, Counter>,
    last_reload_duration: Gauge<f64, AtomicU64>,
    last_reload_success: Gauge<f64, AtomicU64>,
    config_info: Family<Labels, Gauge>,
    rebuild_duration: Histogram,
    ingresses: Gauge,
    rejected: Family<Labels, Gauge>,
    objects: Family<Labels, Gauge>,
    leader: Gauge,
    nginx: Arc<NginxStats>,
    compat: Arc<Compat>,
    requests: Arc<RequestMetrics>,
    socket: Arc<std::sync::RwLock<Option<PathBuf>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_options(RequestMetricsOptions::default())
    }

    pub fn with_options(opts: RequestMetricsOptions) -> Self {
        let controller = opts.controller.clone();
        let mut r = Registry::default();
        let reloads = Family::<Labels, Counter>::default();
        r.register(
            "wicket_reloads",
            "Configs applied to nginx, by result (success, or why not)",
            reloads.clone(),
        );
        let endpoint_updates = Family::<Labels, Counter>::default();
        r.register(
            "wicket_endpoint_updates",
            "Endpoint changes sent to nginx without a reload, by result (success, or why not: a reload followed)",
            endpoint_updates.clone(),
        );
        let last_reload_duration = Gauge::<f64, AtomicU64>::default();
        r.register_with_unit(
            "wicket_last_reload_duration",
            "Time the last successful apply took: render, write, nginx -t, reload",
            Unit::Seconds,
            last_reload_duration.clone(),
        );
        let last_reload_success = Gauge::<f64, AtomicU64>::default();
        r.register_with_unit(
            "wicket_last_reload_success_timestamp",
            "Unix time of the last successful reload",
            Unit::Seconds,
            last_reload_success.clone(),
        );
        let config_info = Family::<Labels, Gauge>::default();
        r.register(
            "wicket_config_info",
            "The config nginx serves, by hash (an info metric)",
            config_info.clone(),
        );
        let rebuild_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        r.register_with_unit(
            "wicket_rebuild_duration",
            "Time to build the config from a snapshot",
            Unit::Seconds,
            rebuild_duration.clone(),
        );
        let ingresses = Gauge::default();
        r.register(
            "wicket_ingresses_served",
            "Ingresses served (including those with warnings)",
            ingresses.clone(),
        );
        let rejected = Family::<Labels, Gauge>::default();
        r.register(
            "wicket_ingresses_rejected",
            "Ingresses not served, by reason (invalid or quarantined)",
            rejected.clone(),
        );
        let objects = Family::<Labels, Gauge>::default();
        r.register(
            "wicket_objects",
            "Objects in the snapshot, by kind",
            objects.clone(),
        );
        let leader = Gauge::default();
        r.register(
            "wicket_leader",
            "Whether this replica holds the Lease and writes status and Events (controller mode)",
            leader.clone(),
        );
        let nginx = Arc::new(NginxStats {
            controller: controller.clone(),
            ..Default::default()
        });
        r.register_collector(Box::new(nginx.clone()));
        let compat = Arc::new(Compat {
            controller,
            ..Default::default()
        });
        r.register_collector(Box::new(compat.clone()));
        let requests = Arc::new(RequestMetrics::new(opts));
        r.register_collector(Box::new(requests.clone()));
        Metrics {
            registry: Arc::new(r),
            reloads,
            endpoint_updates,
            last_reload_duration,
            last_reload_success,
            config_info,
            rebuild_duration,
            ingresses,
            rejected,
            objects,
            leader,
            nginx,
            compat,
            requests,
            socket: Default::default(),
        }
    }

    /// Reads nginx's metrics pipe, `STATE/control/wicket-metrics.pipe`.
    pub fn start_request_log(&self, state_dir: &std::path::Path) -> std::io::Result<()> {
        self.requests
            .start_reader(&state_dir.join(crate::request_metrics::PIPE))
    }

    /// The per-request metrics.
    pub fn requests(&self) -> &RequestMetrics {
        &self.requests
    }

    /// Forgets the request metrics of Ingresses no longer served (nginx
    /// serves a config built with `served`).
    pub fn served(&self, served: &[crate::cluster::ObjectKey]) {
        self.requests
            .retain_ingresses(served.iter().map(ingress_key).collect());
    }

    /// Ingresses of a config about to be applied.
    pub fn serving_soon(&self, served: &[crate::cluster::ObjectKey]) {
        self.requests.add_ingresses(served.iter().map(ingress_key));
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Where nginx's status socket is, for `stub_status`.
    pub fn set_status_socket(&self, path: PathBuf) {
        *self.socket.write().expect("metrics lock") = Some(path);
    }

    /// Where nginx's status socket is, once nginx runs.
    pub fn status_socket(&self) -> Option<PathBuf> {
        self.socket.read().expect("metrics lock").clone()
    }

    pub fn reload(&self, result: &str, seconds: Option<f64>, hash: Option<&str>) {
        self.reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        let ok = result == "success";
        self.compat.last_ok.store(ok, Ordering::Relaxed);
        if ok {
            self.compat.success.fetch_add(1, Ordering::Relaxed);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            self.compat
                .last_ok_time
                .store(now.to_bits(), Ordering::Relaxed);
        } else {
            self.compat.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(h) = hash {
            self.compat
                .hash
                .store(hash_value(h).to_bits(), Ordering::Relaxed);
        }
        if let Some(s) = seconds {
            self.last_reload_duration.set(s);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            self.last_reload_success.set(now);
        }
        if let Some(h) = hash {
            self.config_info.clear();
            self.config_info
                .get_or_create(&vec![("hash", h.to_string())])
                .set(1);
        }
    }

    /// An endpoint update sent to nginx (no reload), and the hash of the
    /// config nginx serves after it.
    pub fn endpoint_update(&self, result: &str, hash: Option<&str>) {
        self.endpoint_updates
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        if let Some(h) = hash {
            self.compat
                .hash
                .store(hash_value(h).to_bits(), Ordering::Relaxed);
            self.config_info.clear();
            self.config_info
                .get_or_create(&vec![("hash", h.to_string())])
                .set(1);
        }
    }

    pub fn rebuild(&self, seconds: f64, cluster: &Cluster, served: usize, problems: &[Problem]) {
        self.rebuild_duration.observe(seconds);
        for (kind, n) in cluster.counts() {
            self.objects
                .get_or_create(&vec![("kind", kind.as_str().to_string())])
                .set(n as i64);
        }
        self.ingresses.set(served as i64);
        let (mut quarantined, mut invalid) = (0, 0);
        for p in problems.iter().filter(|p| p.severity == Severity::Rejected) {
            if p.message.starts_with("quarantined:") {
                quarantined += 1;
            } else {
                invalid += 1;
            }
        }
        self.rejected
            .get_or_create(&vec![("reason", "invalid".to_string())])
            .set(invalid);
        self.rejected
            .get_or_create(&vec![("reason", "quarantined".to_string())])
            .set(quarantined);
    }

    /// The metrics in Prometheus' text format, nginx's read first.
    pub async fn encode(&self) -> String {
        let socket = self.socket.read().expect("metrics lock").clone();
        let stub = match socket {
            Some(s) => crate::nginx::query_status(&s, "/wicket/stub_status").await,
            None => None,
        };
        self.nginx.update(stub.as_deref());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

fn ingress_key(k: &crate::cluster::ObjectKey) -> String {
    format!("{}/{}", k.namespace, k.name)
}

/// The config's hash (hex) as ingress-nginx's `config_hash` gauge: its
/// first 52 bits, which a float holds exactly.
fn hash_value(hex: &str) -> f64 {
    let digits: String = hex.chars().take(13).collect();
    u64::from_str_radix(&digits, 16).map_or(0.0, |v| v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stub_status() {
        let s = NginxStats::default();
        s.update(Some("Active connections: 3 \nserver accepts handled requests\n 10 10 42 \nReading: 0 Writing: 1 Waiting: 2 \n"));
        assert!(s.up.load(Ordering::Relaxed));
        assert_eq!(s.requests.load(Ordering::Relaxed), 42);
        assert_eq!(s.waiting.load(Ordering::Relaxed), 2);
        s.update(None);
        assert!(!s.up.load(Ordering::Relaxed));
    }
}
