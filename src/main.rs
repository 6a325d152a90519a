//! The wicket command line.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args, Parser, Subcommand};
use wicket::build::{self, ClassOptions};
use wicket::nginx::NginxOptions;
use wicket::render::{RenderEnv, Renderer};
use wicket::serve::{self, ServeOptions};
use wicket::source::files::Folder;

#[derive(Parser)]
#[command(
    name = "wicket",
    version,
    about = "A Kubernetes Ingress controller built on nginx"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the nginx.conf that a folder of manifests produces.
    Render(RenderArgs),
    /// Serve a folder of manifests through nginx, watching it for changes.
    Serve(ServeArgs),
}

#[derive(Args, Clone)]
struct ClassArgs {
    /// The IngressClass name to serve.
    #[arg(long, env = "WICKET_INGRESS_CLASS", default_value = "wicket")]
    ingress_class: String,
    /// The spec.controller an IngressClass of that name must have.
    #[arg(
        long,
        env = "WICKET_CONTROLLER_CLASS",
        default_value = "wicket.dev/ingress-controller"
    )]
    controller_class: String,
    /// Serve Ingresses that name no class.
    #[arg(long, env = "WICKET_WATCH_INGRESS_WITHOUT_CLASS", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    watch_ingress_without_class: bool,
    /// Prefix of the annotations wicket reads.
    #[arg(long, env = "WICKET_ANNOTATIONS_PREFIX", default_value = build::DEFAULT_ANNOTATIONS_PREFIX)]
    annotations_prefix: String,
    /// A folder of templates overriding the embedded ones by file name.
    #[arg(long, env = "WICKET_TEMPLATES")]
    templates: Option<PathBuf>,
}

#[derive(Args)]
struct RenderArgs {
    /// Folder of manifests (*.yaml, *.yml, *.json).
    #[arg(long)]
    manifests: PathBuf,
    #[arg(long, default_value_t = 80)]
    http_port: u16,
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    #[command(flatten)]
    class: ClassArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Folder of manifests (*.yaml, *.yml, *.json), watched for changes.
    #[arg(long, env = "WICKET_MANIFESTS")]
    manifests: PathBuf,
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
    /// Folder for nginx.conf, certificates and nginx's temporary files;
    /// a fresh private temporary folder by default.
    #[arg(long, env = "WICKET_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, env = "WICKET_NGINX_BINARY", default_value = "nginx")]
    nginx_binary: PathBuf,
    /// Quiet time after a file change before rebuilding, in milliseconds.
    #[arg(long, default_value_t = 50)]
    debounce_ms: u64,
    /// Longest a stream of changes may delay a rebuild, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    max_wait_ms: u64,
    #[command(flatten)]
    class: ClassArgs,
}

fn build_options(c: &ClassArgs, http_port: u16, https_port: u16) -> anyhow::Result<build::Options> {
    Ok(build::Options {
        class: ClassOptions {
            ingress_class: c.ingress_class.clone(),
            controller_class: c.controller_class.clone(),
            watch_without_class: c.watch_ingress_without_class,
        },
        annotations_prefix: c.annotations_prefix.clone(),
        http_port,
        https_port,
        default_certificate: wicket::certs::generate_default()?,
    })
}

fn renderer(c: &ClassArgs) -> anyhow::Result<Renderer> {
    Ok(match &c.templates {
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

fn render(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let mut folder = Folder::new(&args.manifests);
    folder
        .rescan()
        .with_context(|| format!("reading {}", args.manifests.display()))?;
    let (cluster, reports) = folder.cluster();
    let opts = build_options(&args.class, args.http_port, args.https_port)?;
    let result = build::build(&cluster, &opts);
    for r in &reports {
        eprintln!("{r}");
    }
    for p in &result.problems {
        eprintln!("{p}");
    }
    let env = RenderEnv {
        ipv6: wicket::render::ipv6_available(),
        ..RenderEnv::default()
    };
    let text = renderer(&args.class)?.render(&result.config, &env)?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let build = build_options(&args.class, args.http_port, args.https_port)?;
    let renderer = renderer(&args.class)?;
    // The temporary folder is removed when this guard drops, after nginx stopped.
    let (state_dir, _guard) = match &args.state_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("wicket-")
                .tempdir()
                .context("creating the state folder")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let opts = ServeOptions {
        manifests: args.manifests,
        build,
        admin_addr: SocketAddr::new(args.admin_address, args.admin_port),
        nginx: NginxOptions {
            binary: find_binary(&args.nginx_binary),
            state_dir,
        },
        debounce: Duration::from_millis(args.debounce_ms),
        max_wait: Duration::from_millis(args.max_wait_ms),
    };
    serve::run(opts, renderer).await?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(a) => render(a),
        Command::Serve(a) => tokio::runtime::Runtime::new()
            .context("starting the runtime")
            .and_then(|rt| rt.block_on(serve(a))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wicket: {e:#}");
            ExitCode::FAILURE
        }
    }
}
