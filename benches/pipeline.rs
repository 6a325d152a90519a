//! criterion benches of the pure middle of the pipeline: `build` (snapshot
//! to Config) and `render` (Config to nginx.conf text) at 100, 1k, 10k and
//! 50k Ingresses.
//!
//! The manifests come from `bench/gen-manifests.py` (one file per Ingress
//! with its Service and EndpointSlice, 50 namespaces), generated once into
//! `target/bench-manifests/N` and read through `source::files::Folder`, as
//! `wicket render` reads them.
//!
//! `cargo bench --bench pipeline` runs everything;
//! `WICKET_BENCH_SIZES=100,1000 cargo bench --bench pipeline` a subset.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wicket::build::{self, Options};
use wicket::cluster::Cluster;
use wicket::render::{RenderEnv, Renderer};
use wicket::source::files::Folder;

const SIZES: &[usize] = &[100, 1_000, 10_000, 50_000];

fn sizes() -> Vec<usize> {
    match std::env::var("WICKET_BENCH_SIZES") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|n| n.trim().parse().expect("WICKET_BENCH_SIZES: numbers"))
            .collect(),
        _ => SIZES.to_vec(),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder of N generated Ingresses, generated if missing or incomplete.
fn manifests(n: usize) -> PathBuf {
    let dir = root().join("target/bench-manifests").join(n.to_string());
    let count = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".yaml"))
                .count()
        })
        .unwrap_or(0);
    if count != n {
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new("python3")
            .arg(root().join("bench/gen-manifests.py"))
            .arg("--count")
            .arg(n.to_string())
            .arg("--out")
            .arg(&dir)
            .status()
            .expect("running bench/gen-manifests.py");
        assert!(status.success(), "bench/gen-manifests.py failed");
    }
    dir
}

fn load(dir: &Path) -> Cluster {
    let mut folder = Folder::new(dir);
    folder.rescan().expect("reading the manifests");
    let (cluster, reports) = folder.cluster();
    assert!(reports.is_empty(), "{reports:?}");
    cluster
}

fn pipeline(c: &mut Criterion) {
    let mut opts = Options::new(
        80,
        443,
        wicket::certs::generate_default().expect("default certificate"),
    );
    // As `wicket render` and `wicket serve`: the generated Ingresses name no
    // class.
    opts.class.watch_without_class = true;
    let renderer = Renderer::embedded().expect("embedded templates");
    // No IPv6 listens, unlike `wicket render` on a machine with IPv6.
    let env = RenderEnv {
        generation: 1,
        ..RenderEnv::default()
    };
    for n in sizes() {
        let cluster = load(&manifests(n));
        assert_eq!(cluster.ingresses.len(), n);
        let built = build::build(&cluster, &opts);
        assert!(built.problems.is_empty(), "{:?}", &built.problems[..1]);
        assert_eq!(built.config.servers.len(), n);
        let text = renderer.render(&built.config, &env).expect("render");

        let mut g = c.benchmark_group("pipeline");
        g.throughput(Throughput::Elements(n as u64));
        match n {
            0..=1_000 => g.sample_size(50).measurement_time(Duration::from_secs(5)),
            1_001..=10_000 => g.sample_size(10).measurement_time(Duration::from_secs(10)),
            _ => g.sample_size(10).measurement_time(Duration::from_secs(30)),
        };
        g.warm_up_time(Duration::from_secs(1));
        g.bench_with_input(BenchmarkId::new("build", n), &cluster, |b, cluster| {
            b.iter(|| build::build(black_box(cluster), &opts))
        });
        g.bench_with_input(BenchmarkId::new("render", n), &built.config, |b, config| {
            b.iter(|| renderer.render(black_box(config), &env).expect("render"))
        });
        g.finish();
        eprintln!(
            "pipeline/{n}: {} servers, {} upstreams, nginx.conf {} bytes",
            built.config.servers.len(),
            built.config.upstreams.len(),
            text.len()
        );
    }
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
