//! The wicket command line.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args, Parser, Subcommand};
use wicket::build::{self, ClassOptions};
use wicket::cluster::Cluster;
use wicket::controller::{self, ControllerOptions};
use wicket::leader::LeaderOptions;
use wicket::nginx::NginxOptions;
use wicket::render::{RenderEnv, Renderer};
use wicket::serve::{self, ServeOptions};
use wicket::source::files::{FileReport, Folder};
use wicket::source::kube::KubeOptions;
use wicket::status::StatusOptions;
use wicket::values::NamespacedName;

#[derive(Parser)]
#[command(
    name = "wicket",
    version,
    about = "A Kubernetes Ingress controller built on nginx"
)]
struct Cli {
    /// Log format: text, or json (one object per line).
    #[arg(long, global = true, env = "WICKET_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the nginx.conf that a folder of manifests produces.
    Render(RenderArgs),
    /// Serve a folder of manifests through nginx, watching it for changes.
    Serve(ServeArgs),
    /// Serve the Ingresses of a Kubernetes cluster (in-cluster service
    /// account, or KUBECONFIG).
    Controller(Box<ControllerArgs>),
    /// The migration report: for every Ingress, whether wicket serves it
    /// and what it does with each annotation. Exit 0: all accepted, no
    /// unsupported annotation; 1: not; 2: it could not run.
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// Folder of manifests (*.yaml, *.yml, *.json). Without it, the objects
    /// of the cluster KUBECONFIG (or the service account) points at.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// With no --manifests: read namespaced objects from this namespace only.
    #[arg(long, env = "WICKET_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// human, or json.
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    output: String,
    /// An annotation whose behaviour differs from ingress-nginx's fails the
    /// check too.
    #[arg(long, default_value_t = false)]
    strict: bool,
    #[arg(long, default_value_t = 80)]
    http_port: u16,
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    #[command(flatten)]
    build: BuildArgs,
}

/// What decides the config: flags shared by every command.
#[derive(Args, Clone)]
struct BuildArgs {
    /// The class name for the legacy kubernetes.io/ingress.class
    /// annotation and --ingress-class-by-name (the chart's IngressClass
    /// has this name).
    #[arg(long, env = "WICKET_INGRESS_CLASS", default_value = "wicket")]
    ingress_class: String,
    /// Serve spec.ingressClassName equal to --ingress-class even when no
    /// IngressClass of that name exists [default: true for render, check
    /// and serve, false for controller].
    #[arg(long, env = "WICKET_INGRESS_CLASS_BY_NAME", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    ingress_class_by_name: Option<bool>,
    /// The spec.controller of the IngressClasses wicket serves (every one,
    /// whatever its name).
    #[arg(
        long,
        env = "WICKET_CONTROLLER_CLASS",
        default_value = "wicket.dev/ingress-controller"
    )]
    controller_class: String,
    /// Serve Ingresses that name no class [default: true for render and
    /// serve, false for controller].
    #[arg(long, env = "WICKET_WATCH_INGRESS_WITHOUT_CLASS", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    watch_ingress_without_class: Option<bool>,
    /// Prefix of the annotations wicket reads.
    #[arg(long, env = "WICKET_ANNOTATIONS_PREFIX", default_value = build::DEFAULT_ANNOTATIONS_PREFIX)]
    annotations_prefix: String,
    /// NAMESPACE/NAME of a ConfigMap with global settings.
    #[arg(long, env = "WICKET_CONFIGMAP")]
    configmap: Option<NamespacedName>,
    /// NAMESPACE/NAME of a TLS Secret presented for hosts without their own
    /// certificate, instead of a self-signed one.
    #[arg(long, env = "WICKET_DEFAULT_SSL_CERTIFICATE")]
    default_ssl_certificate: Option<NamespacedName>,
    /// NAMESPACE/NAME of a Service that answers requests no rule matches,
    /// instead of 404.
    #[arg(long, env = "WICKET_DEFAULT_BACKEND_SERVICE")]
    default_backend_service: Option<NamespacedName>,
    /// A folder of templates overriding the embedded ones by file name.
    #[arg(long, env = "WICKET_TEMPLATES")]
    templates: Option<PathBuf>,
    /// Where nginx's dynamic modules are (Debian's libnginx-mod-*
    /// packages); those wicket uses are loaded when present.
    #[arg(
        long,
        env = "WICKET_NGINX_MODULES_DIR",
        default_value = "/usr/lib/nginx/modules"
    )]
    nginx_modules_dir: PathBuf,
    /// Take endpoint changes (EndpointSlices, ExternalName answers) without
    /// reloading nginx, through a Lua balancer; needs Debian's
    /// libnginx-mod-http-lua. `false`, or without the module: every
    /// endpoint change reloads nginx.
    #[arg(
        long,
        env = "WICKET_DYNAMIC_ENDPOINTS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    dynamic_endpoints: bool,
    /// NAMESPACE/NAME of a ConfigMap of TCP services, in ingress-nginx's
    /// format: each key an external port, each value
    /// NAMESPACE/SERVICE:PORT[:PROXY[:PROXY]] (the first PROXY decodes the
    /// PROXY protocol, the second sends it). Needs Debian's
    /// libnginx-mod-stream.
    #[arg(long, env = "WICKET_TCP_SERVICES_CONFIGMAP")]
    tcp_services_configmap: Option<NamespacedName>,
    /// NAMESPACE/NAME of a ConfigMap of UDP services: each key an external
    /// port, each value NAMESPACE/SERVICE:PORT. Needs Debian's
    /// libnginx-mod-stream.
    #[arg(long, env = "WICKET_UDP_SERVICES_CONFIGMAP")]
    udp_services_configmap: Option<NamespacedName>,
    /// Honour the ssl-passthrough annotation: nginx's stream module listens
    /// on the HTTPS port and sends TLS whose SNI is such an Ingress's host
    /// to its backend unterminated; the rest reaches wicket's HTTPS server
    /// (through a unix socket, with the PROXY protocol). Needs Debian's
    /// libnginx-mod-stream.
    #[arg(long, env = "WICKET_ENABLE_SSL_PASSTHROUGH", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    enable_ssl_passthrough: bool,
}

/// How nginx runs: flags shared by serve and controller.
#[derive(Args, Clone)]
struct RunArgs {
    /// Port nginx serves HTTP on, on all addresses.
    #[arg(long, env = "WICKET_HTTP_PORT", default_value_t = 80)]
    http_port: u16,
    /// Port nginx serves HTTPS on, on all addresses.
    #[arg(long, env = "WICKET_HTTPS_PORT", default_value_t = 443)]
    https_port: u16,
    /// Port of the admin endpoint (/healthz, /readyz, /config).
    #[arg(long, env = "WICKET_ADMIN_PORT", default_value_t = 10254)]
    admin_port: u16,
    /// Address of the admin endpoint.
    #[arg(long, env = "WICKET_ADMIN_ADDRESS", default_value = "127.0.0.1")]
    admin_address: IpAddr,
    /// A file holding a bearer token that opens /config, /config/candidate
    /// and /model on the admin port (they show every route and backend);
    /// without it they answer only on the unix socket STATE/admin.sock.
    #[arg(long, env = "WICKET_INSPECTION_TOKEN_FILE")]
    inspection_token_file: Option<PathBuf>,
    /// No longer honoured: inspection never rests on the client's address
    /// (see --inspection-token-file).
    #[arg(long, hide = true, env = "WICKET_ALLOW_REMOTE_INSPECTION", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_remote_inspection: Option<bool>,
    /// Folder for nginx.conf, certificates and nginx's temporary files;
    /// a fresh private temporary folder by default.
    #[arg(long, env = "WICKET_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Folder for nginx's temporary files (buffered request and response
    /// bodies) [default: STATE_DIR/tmp]. Give it its own volume, so a slow
    /// client of a large download cannot fill the one the config is
    /// written to.
    #[arg(long, env = "WICKET_TEMP_DIR")]
    temp_dir: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, env = "WICKET_NGINX_BINARY", default_value = "nginx")]
    nginx_binary: PathBuf,
    /// Quiet time after a change before rebuilding, in milliseconds.
    #[arg(long, env = "WICKET_DEBOUNCE_MS", default_value_t = 20)]
    debounce_ms: u64,
    /// Longest a stream of changes may delay a rebuild, in milliseconds.
    #[arg(long, env = "WICKET_MAX_WAIT_MS", default_value_t = 1000)]
    max_wait_ms: u64,
    /// Label the request metrics with the host (the rule's host the
    /// request went to).
    #[arg(long, env = "WICKET_METRICS_PER_HOST", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    metrics_per_host: bool,
    /// Count requests to hosts no rule names too, labelled with the host
    /// the client sent (at most 1000 distinct, the rest `_other`); with
    /// --metrics-per-host.
    #[arg(long, env = "WICKET_METRICS_PER_UNDEFINED_HOST", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    metrics_per_undefined_host: bool,
    /// Request metrics not to export, comma separated (e.g.
    /// nginx_ingress_controller_bytes_sent,nginx_ingress_controller_response_size).
    #[arg(long, env = "WICKET_EXCLUDE_SOCKET_METRICS", value_delimiter = ',')]
    exclude_socket_metrics: Vec<String>,
    /// Buckets of the duration histograms, in seconds, comma separated.
    #[arg(long, env = "WICKET_TIME_BUCKETS", value_delimiter = ',', value_parser = bucket, default_values_t = wicket::request_metrics::TIME_BUCKETS)]
    time_buckets: Vec<f64>,
    /// Buckets of request_size and response_size, in bytes, comma separated.
    #[arg(long, env = "WICKET_LENGTH_BUCKETS", value_delimiter = ',', value_parser = bucket, default_values_t = wicket::request_metrics::LENGTH_BUCKETS)]
    length_buckets: Vec<f64>,
    /// Buckets of bytes_sent, in bytes, comma separated.
    #[arg(long, env = "WICKET_SIZE_BUCKETS", value_delimiter = ',', value_parser = bucket, default_values_t = wicket::request_metrics::SIZE_BUCKETS)]
    size_buckets: Vec<f64>,
}

/// A histogram bound: a finite number.
fn bucket(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a finite number")),
    }
}

/// The request metrics' options, with ingress-nginx's controller labels
/// (the pod's namespace and name from the downward API, the class).
fn request_metrics(
    run: &RunArgs,
    class: &str,
    namespace: Option<String>,
) -> wicket::request_metrics::RequestMetricsOptions {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    wicket::request_metrics::RequestMetricsOptions {
        per_host: run.metrics_per_host,
        per_undefined_host: run.metrics_per_undefined_host,
        exclude: run.exclude_socket_metrics.clone(),
        time_buckets: run.time_buckets.clone(),
        length_buckets: run.length_buckets.clone(),
        size_buckets: run.size_buckets.clone(),
        controller: [
            namespace.unwrap_or_else(|| env("POD_NAMESPACE")),
            class.to_string(),
            env("POD_NAME"),
        ],
    }
}

#[derive(Args)]
struct RenderArgs {
    /// Folder of manifests (*.yaml, *.yml, *.json). Without it, the objects
    /// come from the cluster KUBECONFIG (or the service account) points at:
    /// what the controller would serve.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// With no --manifests: read namespaced objects from this namespace only.
    #[arg(long, env = "WICKET_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    #[arg(long, default_value_t = 80)]
    http_port: u16,
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    /// With no --manifests: allow backends on loopback, link-local and
    /// unspecified addresses, as `controller --allow-local-backends` does
    /// (with --manifests they are allowed, as in `serve`).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_local_backends: bool,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Folder of manifests (*.yaml, *.yml, *.json), watched for changes.
    #[arg(long, env = "WICKET_MANIFESTS")]
    manifests: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Args)]
struct ControllerArgs {
    /// Watch namespaced objects in this namespace only (default: all).
    #[arg(long, env = "WICKET_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// NAMESPACE/NAME of the Service whose addresses go into Ingress status.
    #[arg(long, env = "WICKET_PUBLISH_SERVICE")]
    publish_service: Option<NamespacedName>,
    /// Addresses (IPs or host names, comma-separated) for Ingress status.
    #[arg(long, env = "WICKET_PUBLISH_STATUS_ADDRESS", value_delimiter = ',')]
    publish_status_address: Vec<String>,
    /// Name of the Lease used for leader election, in the controller's
    /// namespace.
    #[arg(long, env = "WICKET_ELECTION_ID", default_value = "wicket-leader")]
    election_id: String,
    /// The controller's own namespace (for the Lease); in a pod, from
    /// POD_NAMESPACE or the service account.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// This replica's name in the Lease; in a pod, POD_NAME.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Clear the status of served Ingresses when the leader shuts down.
    #[arg(long, env = "WICKET_UPDATE_STATUS_ON_SHUTDOWN", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    update_status_on_shutdown: bool,
    /// Least time between two rebuilds, in milliseconds.
    #[arg(long, env = "WICKET_MIN_INTERVAL_MS", default_value_t = 200)]
    min_interval_ms: u64,
    /// Allow backends (EndpointSlice addresses of Services without a
    /// selector, ExternalName targets) on loopback, link-local
    /// (169.254.0.0/16, fe80::/10: cloud metadata services) and
    /// unspecified addresses.
    #[arg(long, env = "WICKET_ALLOW_LOCAL_BACKENDS", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_local_backends: bool,
    /// Serve the validating admission webhook (HTTPS, POST
    /// /validate-ingress) on this port.
    #[arg(long, env = "WICKET_WEBHOOK_PORT", requires_all = ["webhook_cert_file", "webhook_key_file"])]
    webhook_port: Option<u16>,
    /// Address of the webhook.
    #[arg(long, env = "WICKET_WEBHOOK_ADDRESS", default_value = "0.0.0.0")]
    webhook_address: IpAddr,
    /// The webhook's certificate (PEM); reloaded when it changes.
    #[arg(long, env = "WICKET_WEBHOOK_CERT_FILE")]
    webhook_cert_file: Option<PathBuf>,
    /// The webhook's private key (PEM); reloaded when it changes.
    #[arg(long, env = "WICKET_WEBHOOK_KEY_FILE")]
    webhook_key_file: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    build: BuildArgs,
}

fn build_options(
    b: &BuildArgs,
    // A folder of manifests (render, check, serve) rather than the cluster:
    // class-less Ingresses and a class without its IngressClass object are
    // served by default.
    from_files: bool,
    http_port: u16,
    https_port: u16,
    allow_local_backends: bool,
) -> anyhow::Result<build::Options> {
    let modules = wicket::config::Modules::find(&b.nginx_modules_dir);
    if b.dynamic_endpoints && !modules.lua {
        tracing::warn!(
            dir = %b.nginx_modules_dir.display(),
            "{} (and {}) not found: every endpoint change reloads nginx (install libnginx-mod-http-lua)",
            wicket::config::LUA_MODULE,
            wicket::config::NDK_MODULE,
        );
    }
    if !modules.stream {
        for (flag, set) in [
            (
                "--tcp-services-configmap",
                b.tcp_services_configmap.is_some(),
            ),
            (
                "--udp-services-configmap",
                b.udp_services_configmap.is_some(),
            ),
            ("--enable-ssl-passthrough", b.enable_ssl_passthrough),
        ] {
            if set {
                tracing::warn!(
                    dir = %b.nginx_modules_dir.display(),
                    "{} not found: {flag} is not honoured, HTTP and HTTPS are served as without it (install libnginx-mod-stream)",
                    wicket::config::STREAM_MODULE,
                );
            }
        }
    }
    Ok(build::Options {
        class: ClassOptions {
            ingress_class: b.ingress_class.clone(),
            controller_class: b.controller_class.clone(),
            watch_without_class: b.watch_ingress_without_class.unwrap_or(from_files),
            by_name: b.ingress_class_by_name.unwrap_or(from_files),
        },
        annotations_prefix: b.annotations_prefix.clone(),
        http_port,
        https_port,
        default_certificate: wicket::certs::generate_default()?,
        default_ssl_certificate: b.default_ssl_certificate.clone(),
        default_backend_service: b.default_backend_service.clone(),
        configmap: b.configmap.clone(),
        quarantine: Default::default(),
        backend_policy: build::backends::BackendPolicy {
            allow_local: allow_local_backends,
            ..Default::default()
        },
        resolved: None,
        modules,
        dynamic_endpoints: b.dynamic_endpoints,
        tcp_services: b.tcp_services_configmap.clone(),
        udp_services: b.udp_services_configmap.clone(),
        ssl_passthrough: b.enable_ssl_passthrough,
        // Found by serve and controller before each build.
        ports_in_use: Default::default(),
    })
}

/// Warns that --allow-remote-inspection is not honoured any more.
fn warn_remote_inspection(run: &RunArgs) {
    if run.allow_remote_inspection.is_some() {
        tracing::warn!(
            "--allow-remote-inspection is no longer honoured: inspection never rests on the client's address; use --inspection-token-file, or the unix socket admin.sock in the state folder"
        );
    }
}

fn renderer(b: &BuildArgs) -> anyhow::Result<Renderer> {
    Ok(match &b.templates {
        Some(dir) => Renderer::from_dir(dir)?,
        None => Renderer::embedded()?,
    })
}

/// Finds a bare binary name on PATH, then in the sbin folders where
/// distributions install nginx.
fn find_binary(name: &Path) -> PathBuf {
    if name.components().count() > 1 {
        return name.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.to_path_buf())
}

/// The state folder, and the guard that removes it if it is temporary.
fn state_dir(run: &RunArgs) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    Ok(match &run.state_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("wicket-")
                .tempdir()
                .context("creating the state folder")?;
            (t.path().to_path_buf(), Some(t))
        }
    })
}

fn nginx_options(run: &RunArgs, state_dir: PathBuf) -> NginxOptions {
    NginxOptions {
        binary: find_binary(&run.nginx_binary),
        state_dir,
        temp_dir: run.temp_dir.clone(),
    }
}

/// The objects render and check read: the folder's (kept, with the
/// problems of its files), or the cluster's.
fn snapshot(
    manifests: Option<&Path>,
    watch_namespace: Option<&str>,
    build: &BuildArgs,
) -> anyhow::Result<(Cluster, Vec<FileReport>, Option<Folder>)> {
    match manifests {
        Some(dir) => {
            let mut folder = Folder::new(dir);
            folder
                .rescan()
                .with_context(|| format!("reading {}", dir.display()))?;
            let (cluster, reports) = folder.cluster();
            Ok((cluster, reports, Some(folder)))
        }
        None => {
            let opts = KubeOptions {
                namespace: watch_namespace.map(str::to_string),
                configmap: build.configmap.clone(),
                tcp_services: build.tcp_services_configmap.clone(),
                udp_services: build.udp_services_configmap.clone(),
                publish_service: None,
            };
            let cluster = tokio::runtime::Runtime::new()
                .context("starting the runtime")?
                .block_on(snapshot_from_cluster(&opts))?;
            Ok((cluster, Vec::new(), None))
        }
    }
}

/// Options for a one-off build (render, check) on these ports, with the
/// names of ExternalName Services looked up as serve and controller look
/// them up, so the result is what they would serve.
fn one_off_options(
    cluster: &Cluster,
    b: &BuildArgs,
    from_files: bool,
    http_port: u16,
    https_port: u16,
    allow_local: bool,
) -> anyhow::Result<build::Options> {
    let mut opts = build_options(b, from_files, http_port, https_port, allow_local)?;
    opts.backend_policy.own_ports = [(http_port, "HTTP"), (https_port, "HTTPS")].into();
    opts.backend_policy.own_addresses = wicket::netinfo::local_addresses();
    let names = build::external_names(cluster, &opts);
    if !names.is_empty() {
        let mut resolver = wicket::resolve::Resolver::new(wicket::resolve::system_lookup());
        let resolved = tokio::runtime::Runtime::new()
            .context("starting the runtime")?
            .block_on(resolver.resolve(&names, true));
        opts.resolved = Some(std::sync::Arc::new(resolved));
    } else {
        opts.resolved = Some(Default::default());
    }
    Ok(opts)
}

fn render(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let (cluster, reports, folder) = snapshot(
        args.manifests.as_deref(),
        args.watch_namespace.as_deref(),
        &args.build,
    )?;
    let opts = one_off_options(
        &cluster,
        &args.build,
        args.manifests.is_some(),
        args.http_port,
        args.https_port,
        args.manifests.is_some() || args.allow_local_backends,
    )?;
    let result = build::build(&cluster, &opts);
    // The model owns what it took from the objects: free them while the
    // text is rendered, which lowers the peak memory.
    let drop_objects = std::thread::spawn(move || drop((cluster, folder)));
    {
        // One write per problem would be one system call each: 10,000
        // Ingresses with an unsupported annotation print 10,000 lines.
        let mut err = std::io::BufWriter::new(std::io::stderr().lock());
        for r in &reports {
            writeln!(err, "{r}").context("writing to standard error")?;
        }
        for p in &result.problems {
            writeln!(err, "{p}").context("writing to standard error")?;
        }
        err.flush().context("writing to standard error")?;
    }
    let env = RenderEnv {
        ipv6: wicket::render::ipv6_available(),
        ..RenderEnv::default()
    };
    // Written part by part (every part is rendered before the first byte
    // is written, so a template error prints nothing): the whole text is
    // never held, which lowers the peak memory by its size.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    renderer(&args.build)?.render_to(&result.config, &env, &mut out)?;
    out.flush()
        .context("writing the config to standard output")?;
    drop_objects.join().expect("freeing the objects panicked");
    // The process ends now: freeing the model one allocation at a time
    // would only delay that.
    std::mem::forget(result);
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (cluster, reports, _folder) = snapshot(
        args.manifests.as_deref(),
        args.watch_namespace.as_deref(),
        &args.build,
    )?;
    let opts = one_off_options(
        &cluster,
        &args.build,
        args.manifests.is_some(),
        args.http_port,
        args.https_port,
        args.manifests.is_some(),
    )?;
    let report = wicket::check::check(&cluster, &opts);
    let mut out = std::io::stdout().lock();
    if args.output == "json" {
        serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        for r in &reports {
            writeln!(out, "{r}").context("writing the report")?;
        }
        out.write_all(report.human().as_bytes())
            .context("writing the report")?;
    }
    Ok(ExitCode::from(report.exit_code(args.strict)))
}

/// Lists every object the controller would watch, once.
async fn snapshot_from_cluster(opts: &KubeOptions) -> anyhow::Result<wicket::cluster::Cluster> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or the service account)")?;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let source = wicket::source::kube::KubeSource::start(client, opts, tx);
    tokio::time::timeout(Duration::from_secs(60), source.wait_synced())
        .await
        .context("listing the objects took more than 60s (see the log for watch errors)")?
        .context("listing the objects")?;
    Ok(source.snapshot())
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    warn_remote_inspection(&args.run);
    // serve's folder is the admin's, and local backends are its use.
    let build = build_options(
        &args.build,
        true,
        args.run.http_port,
        args.run.https_port,
        true,
    )?;
    let renderer = renderer(&args.build)?;
    // The temporary folder is removed when this guard drops, after nginx stopped.
    let (state_dir, _guard) = state_dir(&args.run)?;
    let opts = ServeOptions {
        manifests: args.manifests,
        build,
        admin_addr: SocketAddr::new(args.run.admin_address, args.run.admin_port),
        inspection_token_file: args.run.inspection_token_file.clone(),
        nginx: nginx_options(&args.run, state_dir),
        debounce: Duration::from_millis(args.run.debounce_ms),
        max_wait: Duration::from_millis(args.run.max_wait_ms),
        metrics: request_metrics(&args.run, &args.build.ingress_class, None),
    };
    serve::run(opts, renderer).await?;
    Ok(ExitCode::SUCCESS)
}

/// The namespace of the pod, from the service account, when not given.
fn own_namespace(given: Option<String>) -> String {
    given
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

async fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    warn_remote_inspection(&args.run);
    let build = build_options(
        &args.build,
        false,
        args.run.http_port,
        args.run.https_port,
        args.allow_local_backends,
    )?;
    let renderer = renderer(&args.build)?;
    let (state_dir, _guard) = state_dir(&args.run)?;
    let identity = args.identity.unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "wicket".into());
        format!("{host}-{}", std::process::id())
    });
    let opts = ControllerOptions {
        kube: KubeOptions {
            namespace: args.watch_namespace,
            configmap: build.configmap.clone(),
            tcp_services: build.tcp_services.clone(),
            udp_services: build.udp_services.clone(),
            publish_service: args.publish_service.clone(),
        },
        build,
        status: StatusOptions {
            publish_service: args.publish_service,
            publish_addresses: args.publish_status_address,
            update_on_shutdown: args.update_status_on_shutdown,
        },
        metrics: request_metrics(
            &args.run,
            &args.build.ingress_class,
            Some(own_namespace(args.namespace.clone())),
        ),
        leader: Some(LeaderOptions::new(
            own_namespace(args.namespace),
            args.election_id,
            identity,
        )),
        admin_addr: SocketAddr::new(args.run.admin_address, args.run.admin_port),
        inspection_token_file: args.run.inspection_token_file.clone(),
        nginx: nginx_options(&args.run, state_dir),
        debounce: Duration::from_millis(args.run.debounce_ms),
        max_wait: Duration::from_millis(args.run.max_wait_ms),
        min_interval: Duration::from_millis(args.min_interval_ms),
        webhook: match (
            args.webhook_port,
            args.webhook_cert_file,
            args.webhook_key_file,
        ) {
            (Some(port), Some(cert_file), Some(key_file)) => Some(controller::WebhookOptions {
                addr: SocketAddr::new(args.webhook_address, port),
                cert_file,
                key_file,
            }),
            _ => None,
        },
    };
    controller::run(opts, renderer).await?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = || {
        wicket::engine::tune_allocator();
        tokio::runtime::Runtime::new().context("starting the runtime")
    };
    let checking = matches!(cli.command, Command::Check(_));
    let result = match cli.command {
        Command::Render(a) => {
            wicket::engine::tune_allocator_one_off();
            render(a)
        }
        Command::Check(a) => {
            wicket::engine::tune_allocator_one_off();
            check(a)
        }
        Command::Serve(a) => runtime().and_then(|rt| rt.block_on(serve(a))),
        Command::Controller(a) => runtime().and_then(|rt| rt.block_on(controller(*a))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Each cause, unless the message before it already says it.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !line.contains(&c) {
                    line = format!("{line}: {c}");
                }
            }
            eprintln!("wicket: {line}");
            // check: 1 is a verdict about the Ingresses; 2 says it could
            // not run.
            if checking {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
