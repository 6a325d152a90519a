//! Per-request metrics with ingress-nginx's names, labels and buckets,
//! computed from the lines nginx writes to wicket's metrics pipe.
//!
//! Every location of an Ingress sets `$namespace`, `$ingress_name`,
//! `$service_name` and `$location_path` from the config, and nginx.conf's
//! `wicket_metrics` log format writes them, tab separated, with the server's
//! name, the method, the status, sizes and times, to
//! `STATE/control/wicket-metrics.pipe` (a FIFO) for every request, whatever
//! the access log settings. A thread of wicket reads the pipe (opened read
//! and write, so nginx's open never blocks and a restart of nginx is no end
//! of file) and counts each line into one series per label set.
//!
//! Label sets stay bounded whatever clients send: the path is the
//! Ingress's path, the host the server's name (a rule's host), methods
//! outside HTTP's and WebDAV's fold into `OTHER`, a status is three digits;
//! only `--metrics-per-undefined-host` labels a host the client sent, and
//! at most [`MAX_UNDEFINED_HOSTS`] of them.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

/// The prefix of ingress-nginx's metrics.
pub const PREFIX: &str = "nginx_ingress_controller_";

/// The metrics pipe, relative to the state folder (nginx.conf names it).
pub const PIPE: &str = "control/wicket-metrics.pipe";

/// Distinct client-sent hosts labelled under `--metrics-per-undefined-host`;
/// the rest are labelled `_other`.
pub const MAX_UNDEFINED_HOSTS: usize = 1000;

/// ingress-nginx's `--time-buckets` default.
pub const TIME_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// ingress-nginx's `--length-buckets` default.
pub const LENGTH_BUCKETS: [f64; 10] = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];
/// ingress-nginx's `--size-buckets` default.
pub const SIZE_BUCKETS: [f64; 7] = [10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];

/// The methods labelled as they are; any other is `OTHER`.
const METHODS: [&str; 16] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
];

/// What the request metrics are, from the flags.
#[derive(Clone, Debug)]
pub struct RequestMetricsOptions {
    /// `--metrics-per-host`: a `host` label.
    pub per_host: bool,
    /// `--metrics-per-undefined-host`: requests to hosts no rule names are
    /// counted too (else they are skipped, as ingress-nginx does).
    pub per_undefined_host: bool,
    /// `--exclude-socket-metrics`: names, with or without the prefix.
    pub exclude: Vec<String>,
    pub time_buckets: Vec<f64>,
    pub length_buckets: Vec<f64>,
    pub size_buckets: Vec<f64>,
    /// `controller_namespace`, `controller_class`, `controller_pod`.
    pub controller: [String; 3],
}

impl Default for RequestMetricsOptions {
    fn default() -> Self {
        RequestMetricsOptions {
            per_host: true,
            per_undefined_host: false,
            exclude: Vec::new(),
            time_buckets: TIME_BUCKETS.to_vec(),
            length_buckets: LENGTH_BUCKETS.to_vec(),
            size_buckets: SIZE_BUCKETS.to_vec(),
            controller: Default::default(),
        }
    }
}

/// The names of the controller's const labels, in `controller` order.
pub const CONTROLLER_LABELS: [&str; 3] =
    ["controller_namespace", "controller_class", "controller_pod"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Buckets {
    Time,
    Length,
    Size,
}

/// The histograms: name (after the prefix), help, buckets, and the field of
/// [`Line`] observed.
const HISTOGRAMS: [(&str, &str, Buckets); 7] = [
    (
        "request_duration_seconds",
        "The request processing time in seconds",
        Buckets::Time,
    ),
    (
        "response_duration_seconds",
        "The time spent on receiving the response from the upstream server",
        Buckets::Time,
    ),
    (
        "connect_duration_seconds",
        "The time spent on establishing a connection with the upstream server",
        Buckets::Time,
    ),
    (
        "header_duration_seconds",
        "The time spent on receiving first header from the upstream server",
        Buckets::Time,
    ),
    (
        "request_size",
        "The request length (including request line, header, and request body)",
        Buckets::Length,
    ),
    (
        "response_size",
        "The response length (including request line, header, and request body)",
        Buckets::Length,
    ),
    (
        "bytes_sent",
        "DEPRECATED The number of bytes sent to a client",
        Buckets::Size,
    ),
];

/// The label names of every request metric, in key order; `host` only
/// with `--metrics-per-host`.
const LABELS: [&str; 8] = [
    "status",
    "method",
    "path",
    "namespace",
    "ingress",
    "service",
    "canary",
    "host",
];

/// One parsed metrics line.
#[derive(Debug, PartialEq)]
pub struct Line<'a> {
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub path: String,
    pub canary: String,
    pub server_name: String,
    pub host: &'a [u8],
    pub method: &'static str,
    pub status: &'a str,
    /// request, upstream response, connect, header times; sizes: request,
    /// bytes sent (twice: response_size and bytes_sent). `None`: not there
    /// (no upstream).
    pub values: [Option<f64>; 7],
}

/// A field as nginx wrote it: `-` for empty, `\xHH` for bytes it escapes.
fn text(field: &[u8]) -> Option<String> {
    if field == b"-" {
        return Some(String::new());
    }
    if !field.contains(&b'\\') {
        return std::str::from_utf8(field).ok().map(str::to_string);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            let hex = field.get(i + 1..i + 4)?;
            if hex[0] != b'x' {
                return None;
            }
            let b = u8::from_str_radix(std::str::from_utf8(&hex[1..]).ok()?, 16).ok()?;
            out.push(if b == 0 { b'?' } else { b });
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn number(field: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(field).ok()?;
    let v: f64 = s.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// An upstream time: `-` (no upstream), one number, or one per try
/// (`0.001, 0.002`, ` : ` between internal redirects), summed.
fn upstream_time(field: &[u8]) -> Result<Option<f64>, ()> {
    if field == b"-" {
        return Ok(None);
    }
    let mut sum = 0.0;
    let mut any = false;
    for part in field.split(|&b| b == b',' || b == b':') {
        let part = part.trim_ascii();
        if part == b"-" {
            continue;
        }
        sum += number(part).ok_or(())?;
        any = true;
    }
    Ok(any.then_some(sum))
}

fn method(field: &[u8]) -> &'static str {
    METHODS
        .iter()
        .find(|m| m.as_bytes() == field)
        .copied()
        .unwrap_or("OTHER")
}

/// Parses one line (without its newline); `None` if it is not one nginx's
/// `wicket_metrics` format writes. Its second field is the location's
/// `$wicket_loc`, `NAMESPACE|INGRESS|SERVICE|PORT|PATH` (empty outside an
/// Ingress's locations); nginx escapes no `|`, so it is split before its
/// parts are unescaped, and the path, last, may hold more.
pub fn parse(line: &[u8]) -> Option<Line<'_>> {
    let mut f: [&[u8]; 13] = [b""; 13];
    let mut n = 0;
    for part in line.split(|&b| b == b'\t') {
        *f.get_mut(n)? = part;
        n += 1;
    }
    if n != 13 || f[0] != b"w2" {
        return None;
    }
    let [namespace, ingress, service, path] = if f[1].is_empty() || f[1] == b"-" {
        [const { String::new() }; 4]
    } else {
        let mut loc = f[1].splitn(5, |&b| b == b'|');
        let mut part = || loc.next().and_then(text);
        let [ns, ing, svc, _port, path] = [part(), part(), part(), part(), part()];
        [ns?, ing?, svc?, path?]
    };
    let status = std::str::from_utf8(f[6]).ok()?;
    if status.len() != 3 || !status.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let integer = |b: &[u8]| -> Option<f64> {
        (!b.is_empty() && b.iter().all(u8::is_ascii_digit))
            .then(|| number(b))
            .flatten()
    };
    let request_length = integer(f[7])?;
    let bytes_sent = integer(f[9])?;
    let request_time = number(f[8])?;
    Some(Line {
        namespace,
        ingress,
        service,
        path,
        canary: text(f[2])?,
        server_name: text(f[3])?,
        host: f[4],
        method: method(f[5]),
        status,
        values: [
            Some(request_time),
            upstream_time(f[12]).ok()?,
            upstream_time(f[10]).ok()?,
            upstream_time(f[11]).ok()?,
            Some(request_length),
            Some(bytes_sent),
            Some(bytes_sent),
        ],
    })
}

struct Histogram {
    /// Per bucket (not cumulative), the last one +Inf.
    counts: Box<[u64]>,
    sum: f64,
}

struct Series {
    requests: u64,
    histograms: Box<[Histogram]>,
}

#[derive(Default)]
struct State {
    /// Keyed by the label values in [`LABELS`] order, `\0` between them.
    series: HashMap<Box<str>, Series>,
    undefined_hosts: HashSet<Box<str>>,
    malformed: u64,
    undefined_skipped: u64,
    removed_skipped: u64,
    lines: u64,
    /// The Ingresses served (`namespace/name`), once nginx serves a config:
    /// a line of another makes no new series (an old worker's late line
    /// for a removed Ingress would otherwise keep it forever).
    served: Option<HashSet<String>>,
}

/// The per-request metrics, a collector of the metrics registry.
pub struct RequestMetrics {
    opts: RequestMetricsOptions,
    /// For each histogram: whether it is kept, and its bounds.
    histograms: Vec<(usize, Vec<f64>)>,
    requests: bool,
    state: Mutex<State>,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestMetrics")
    }
}

impl RequestMetrics {
    pub fn new(opts: RequestMetricsOptions) -> Self {
        let excluded = |name: &str| {
            opts.exclude
                .iter()
                .any(|e| e.strip_prefix(PREFIX).unwrap_or(e) == name)
        };
        let histograms = HISTOGRAMS
            .iter()
            .enumerate()
            .filter(|(_, (name, _, _))| !excluded(name))
            .map(|(i, (_, _, b))| {
                let mut bounds = match b {
                    Buckets::Time => opts.time_buckets.clone(),
                    Buckets::Length => opts.length_buckets.clone(),
                    Buckets::Size => opts.size_buckets.clone(),
                };
                bounds.retain(|v| v.is_finite());
                bounds.sort_by(f64::total_cmp);
                bounds.dedup();
                (i, bounds)
            })
            .collect();
        RequestMetrics {
            requests: !excluded("requests"),
            histograms,
            opts,
            state: Mutex::new(State::default()),
        }
    }

    /// Counts the lines of `chunk` (whole lines, without a trailing part).
    pub fn feed(&self, chunk: &[u8]) {
        let mut key = String::with_capacity(256);
        let mut state = self.state.lock().expect("request metrics lock");
        for line in chunk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            state.lines += 1;
            match parse(line) {
                Some(l) => self.count(&mut state, &l, &mut key),
                None => state.malformed += 1,
            }
        }
    }

    fn count(&self, state: &mut State, l: &Line<'_>, key: &mut String) {
        let host = if !self.opts.per_host {
            String::new()
        } else if l.server_name != "_" {
            // The server's name: a rule's host, from the config.
            l.server_name.clone()
        } else if !self.opts.per_undefined_host {
            state.undefined_skipped += 1;
            return;
        } else {
            let sent = String::from_utf8_lossy(l.host).to_ascii_lowercase();
            if state.undefined_hosts.contains(sent.as_str()) {
                sent
            } else if state.undefined_hosts.len() < MAX_UNDEFINED_HOSTS {
                state.undefined_hosts.insert(sent.clone().into_boxed_str());
                sent
            } else {
                "_other".to_string()
            }
        };
        key.clear();
        for (i, v) in [
            l.status,
            l.method,
            &l.path,
            &l.namespace,
            &l.ingress,
            &l.service,
            &l.canary,
            &host,
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                key.push('\0');
            }
            key.push_str(v);
        }
        if !state.series.contains_key(key.as_str()) {
            if !l.ingress.is_empty()
                && let Some(served) = &state.served
                && !served.contains(&format!("{}/{}", l.namespace, l.ingress))
            {
                state.removed_skipped += 1;
                return;
            }
            let series = Series {
                requests: 0,
                histograms: self
                    .histograms
                    .iter()
                    .map(|(_, b)| Histogram {
                        counts: vec![0; b.len() + 1].into_boxed_slice(),
                        sum: 0.0,
                    })
                    .collect(),
            };
            state.series.insert(key.as_str().into(), series);
        }
        let series = state.series.get_mut(key.as_str()).expect("inserted");
        series.requests += 1;
        for ((i, bounds), h) in self.histograms.iter().zip(series.histograms.iter_mut()) {
            if let Some(v) = l.values[*i] {
                let b = bounds
                    .iter()
                    .position(|&le| v <= le)
                    .unwrap_or(bounds.len());
                h.counts[b] += 1;
                h.sum += v;
            }
        }
    }

    /// Forgets the series of Ingresses no longer served (`namespace/name`),
    /// as ingress-nginx does when an Ingress is deleted.
    pub fn retain_ingresses(&self, served: HashSet<String>) {
        let mut state = self.state.lock().expect("request metrics lock");
        state.series.retain(|key, _| {
            let mut parts = key.split('\0').skip(3);
            let (ns, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            name.is_empty() || served.contains(&format!("{ns}/{name}"))
        });
        state.served = Some(served);
    }

    /// Ingresses about to be served (before a reload): their lines may
    /// come before the reload is confirmed.
    pub fn add_ingresses(&self, soon: impl IntoIterator<Item = String>) {
        let mut state = self.state.lock().expect("request metrics lock");
        if let Some(served) = &mut state.served {
            served.extend(soon);
        }
    }

    /// Series held now (for tests and benchmarks).
    pub fn series(&self) -> usize {
        self.state
            .lock()
            .expect("request metrics lock")
            .series
            .len()
    }

    /// Makes the FIFO at `path` and reads it on a thread of its own for as
    /// long as wicket runs.
    pub fn start_reader(self: &Arc<Self>, path: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_file(path);
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(std::io::Error::from)?;
        // Read and write: opening for writing (nginx) never waits for a
        // reader, and the pipe has a writer while nginx restarts.
        let mut pipe = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: F_SETPIPE_SZ only resizes the pipe behind a file
            // descriptor we own; failing leaves it as it was.
            unsafe {
                libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
            }
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("request-metrics".into())
            .spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut held = 0;
                // Within a line longer than the buffer: up to its end.
                let mut skipping = false;
                loop {
                    let n = match pipe.read(&mut buf[held..]) {
                        Ok(0) => return,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "reading the metrics pipe");
                            return;
                        }
                    };
                    let mut end = held + n;
                    if skipping {
                        match buf[..end].iter().position(|&b| b == b'\n') {
                            Some(first) => {
                                buf.copy_within(first + 1..end, 0);
                                end -= first + 1;
                                skipping = false;
                            }
                            None => {
                                held = 0;
                                continue;
                            }
                        }
                    }
                    match buf[..end].iter().rposition(|&b| b == b'\n') {
                        Some(last) => {
                            me.feed(&buf[..last]);
                            buf.copy_within(last + 1..end, 0);
                            held = end - last - 1;
                        }
                        None if end == buf.len() => {
                            // A line longer than the buffer: not ours.
                            let mut state = me.state.lock().expect("request metrics lock");
                            state.malformed += 1;
                            state.lines += 1;
                            held = 0;
                            skipping = true;
                        }
                        None => held = end,
                    }
                }
            })?;
        Ok(())
    }
}

impl Collector for RequestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.state.lock().expect("request metrics lock");
        let labels = |key: &str| -> Vec<(&str, String)> {
            let mut v: Vec<(&str, String)> = CONTROLLER_LABELS
                .iter()
                .zip(&self.opts.controller)
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            v.extend(
                LABELS
                    .iter()
                    .zip(key.split('\0'))
                    .filter(|(k, _)| self.opts.per_host || **k != "host")
                    .map(|(k, v)| (*k, v.to_string())),
            );
            v
        };
        let mut keys: Vec<&str> = state.series.keys().map(|k| &**k).collect();
        keys.sort();
        let sets: Vec<Vec<(&str, String)>> = keys.iter().map(|k| labels(k)).collect();
        if self.requests {
            // Typed unknown: an OpenMetrics counter's samples end in
            // `_total`, and ingress-nginx's dashboards name the series
            // `nginx_ingress_controller_requests`.
            let name = format!("{PREFIX}requests");
            let mut family = encoder.encode_descriptor(
                &name,
                "The total number of client requests",
                None,
                MetricType::Unknown,
            )?;
            for (k, set) in keys.iter().zip(&sets) {
                family
                    .encode_family(set)?
                    .encode_gauge(&state.series[*k].requests)?;
            }
        }
        for (slot, (i, bounds)) in self.histograms.iter().enumerate() {
            let (name, help, _) = HISTOGRAMS[*i];
            let name = format!("{PREFIX}{name}");
            let mut family = encoder.encode_descriptor(&name, help, None, MetricType::Histogram)?;
            for (k, set) in keys.iter().zip(&sets) {
                let h = &state.series[*k].histograms[slot];
                let buckets: Vec<(f64, u64)> = bounds
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(h.counts.iter().copied())
                    .collect();
                let count = h.counts.iter().sum();
                family
                    .encode_family(set)?
                    .encode_histogram::<Vec<(String, String)>>(h.sum, count, &buckets, None)?;
            }
        }
        for (name, help, value) in [
            (
                "wicket_request_log_lines",
                "Lines read from nginx's metrics pipe",
                state.lines,
            ),
            (
                "wicket_request_log_malformed_lines",
                "Lines of nginx's metrics pipe that did not parse (not counted in the request metrics)",
                state.malformed,
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let mut family = encoder.encode_descriptor(
            "wicket_request_log_skipped_lines",
            "Requests left out of the request metrics: to a host no rule names (--metrics-per-undefined-host counts them), or of an Ingress no longer served",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in [
            ("undefined_host", state.undefined_skipped),
            ("removed_ingress", state.removed_skipped),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        let series = state.series.len() as i64;
        let g = prometheus_client::metrics::gauge::ConstGauge::new(series);
        g.encode(encoder.encode_descriptor(
            "wicket_request_metrics_series",
            "Label sets held by the request metrics",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ns: &str, method: &str, status: &str, server: &str, host: &str) -> String {
        format!(
            "w2\t{ns}|web|web-svc|http|/api\t-\t{server}\t{host}\t{method}\t{status}\t120\t0.003\t512\t0.001\t0.002\t0.002"
        )
    }

    #[test]
    fn parses_a_line() {
        let text = line("default", "GET", "200", "a.example", "a.example");
        let l = parse(text.as_bytes()).unwrap();
        assert_eq!(l.namespace, "default");
        assert_eq!(l.path, "/api");
        assert_eq!(l.canary, "");
        assert_eq!(l.method, "GET");
        assert_eq!(l.values[0], Some(0.003));
        assert_eq!(l.values[5], Some(512.0));
    }

    #[test]
    fn upstream_times_with_tries_are_summed() {
        assert_eq!(upstream_time(b"-"), Ok(None));
        assert_eq!(upstream_time(b"0.5, 0.25 : 0.25"), Ok(Some(1.0)));
        assert_eq!(upstream_time(b"0.5, -"), Ok(Some(0.5)));
        assert!(upstream_time(b"x").is_err());
    }

    #[test]
    fn refuses_what_nginx_does_not_write() {
        for bad in [
            "",
            "w2",
            "w1\ta|b|c|d|e\tf\tg\th\tGET\t200\t1\t0.1\t1\t-\t-\t-",
            "w2\ta|b|c|d|e\tf\tg\th\tGET\t20x\t1\t0.1\t1\t-\t-\t-",
            "w2\ta|b|c|d|e\tf\tg\th\tGET\t200\t-1\t0.1\t1\t-\t-\t-",
            "w2\ta|b|c|d|e\tf\tg\th\tGET\t200\t1\tNaN\t1\t-\t-\t-",
            "w2\ta|b|c|d|e\tf\tg\th\tGET\t200\t1\t0.1\t1\t-\t-\t-\textra",
            "w2\ta\\x|b|c|d|e\tf\tg\th\tGET\t200\t1\t0.1\t1\t-\t-\t-",
            // Fewer than five parts.
            "w2\ta|b|c|d\tf\tg\th\tGET\t200\t1\t0.1\t1\t-\t-\t-",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
        let ok = "w2\ta\\x22b|b|c|80|/x|y\\x09\tf\tg\th\tGET\t200\t1\t0.1\t1\t-\t-\t-";
        let l = parse(ok.as_bytes()).unwrap();
        assert_eq!(l.namespace, "a\"b");
        assert_eq!((l.ingress.as_str(), l.service.as_str()), ("b", "c"));
        // The path is the rest, `|` and all.
        assert_eq!(l.path, "/x|y\t");
        // Outside an Ingress's locations: no labels.
        for none in [
            "w2\t\t\t_\th\tGET\t404\t1\t0.1\t1\t-\t-\t-",
            "w2\t-\t-\t_\th\tGET\t404\t1\t0.1\t1\t-\t-\t-",
        ] {
            let l = parse(none.as_bytes()).unwrap();
            assert_eq!((l.namespace.as_str(), l.path.as_str()), ("", ""));
        }
    }

    #[test]
    fn labels_stay_bounded() {
        let m = RequestMetrics::new(RequestMetricsOptions::default());
        let mut text = String::new();
        for i in 0..500 {
            text += &line(
                "default",
                &format!("M{i}"),
                "200",
                "a.example",
                &format!("h{i}"),
            );
            text.push('\n');
            text += &line("default", "GET", "404", "_", &format!("random{i}.example"));
            text.push('\n');
        }
        text += "garbage\n";
        m.feed(text.as_bytes());
        assert_eq!(m.series(), 1);
        let s = m.state.lock().unwrap();
        assert_eq!(s.malformed, 1);
        assert_eq!(s.undefined_skipped, 500);
        let (key, series) = s.series.iter().next().unwrap();
        assert_eq!(series.requests, 500);
        assert!(key.starts_with("200\0OTHER\0/api\0default\0web\0web-svc\0\0a.example"));
    }

    #[test]
    fn undefined_hosts_are_capped() {
        let m = RequestMetrics::new(RequestMetricsOptions {
            per_undefined_host: true,
            ..Default::default()
        });
        let mut text = String::new();
        for i in 0..(MAX_UNDEFINED_HOSTS + 50) {
            text += &line("", "GET", "404", "_", &format!("r{i}.example"));
            text.push('\n');
        }
        m.feed(text.as_bytes());
        assert_eq!(m.series(), MAX_UNDEFINED_HOSTS + 1);
    }

    #[test]
    fn buckets_and_exclusions() {
        let m = RequestMetrics::new(RequestMetricsOptions {
            exclude: vec![
                "nginx_ingress_controller_bytes_sent".into(),
                "header_duration_seconds".into(),
            ],
            ..Default::default()
        });
        assert_eq!(m.histograms.len(), 5);
        m.feed(line("ns", "GET", "200", "a", "a").as_bytes());
        let s = m.state.lock().unwrap();
        let series = s.series.values().next().unwrap();
        // request_duration 0.003 is in the first bucket (le 0.005).
        assert_eq!(series.histograms[0].counts[0], 1);
        let mut r = prometheus_client::registry::Registry::default();
        drop(s);
        let m = Arc::new(m);
        r.register_collector(Box::new(m.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("# TYPE nginx_ingress_controller_requests unknown"),
            "{out}"
        );
        assert!(
            out.contains("nginx_ingress_controller_request_duration_seconds_bucket{"),
            "{out}"
        );
        assert!(!out.contains("bytes_sent"), "{out}");
        assert!(!out.contains("header_duration"), "{out}");
    }
}
