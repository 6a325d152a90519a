//! Prometheus metrics, served on the admin port at `/metrics`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::cluster::Cluster;
use crate::problem::{Problem, Severity};

type Labels = Vec<(&'static str, String)>;

/// nginx's `stub_status` counters, read from the status socket at each
/// scrape.
#[derive(Debug, Default)]
struct NginxStats {
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
        let nginx = Arc::new(NginxStats::default());
        r.register_collector(Box::new(nginx.clone()));
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
            socket: Default::default(),
        }
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
