//! Golden configs: the rendered nginx.conf of fixed manifests, compared with
//! reviewed snapshots (insta), and each proven by the real `nginx -t`.

mod common;

use std::path::Path;

use wicket::build::{self, ClassOptions, Options};
use wicket::config::Certificate;
use wicket::render::{RenderEnv, Renderer};
use wicket::source::files::Folder;

/// A fixed default certificate, so snapshots do not change from run to run
/// (its content is not part of the rendered text, only its name).
fn default_certificate() -> Certificate {
    let mut c = wicket::certs::generate_default().unwrap();
    c.name = "default".into();
    c
}

fn render(dir: &str) -> (String, Vec<String>, std::sync::Arc<wicket::config::Config>) {
    render_with(dir, |_| {})
}

fn render_with(
    dir: &str,
    tweak: impl FnOnce(&mut Options),
) -> (String, Vec<String>, std::sync::Arc<wicket::config::Config>) {
    let mut folder = Folder::new(Path::new(dir));
    folder.rescan().unwrap();
    let (cluster, reports) = folder.cluster();
    assert!(reports.is_empty(), "{reports:?}");
    let opts = Options {
        class: ClassOptions {
            watch_without_class: true,
            by_name: true,
            ..ClassOptions::default()
        },
        annotations_prefix: build::DEFAULT_ANNOTATIONS_PREFIX.into(),
        http_port: 80,
        https_port: 443,
        default_certificate: default_certificate(),
        default_ssl_certificate: None,
        default_backend_service: None,
        configmap: None,
        quarantine: Default::default(),
        // As `render --manifests` and `serve`: the examples' backends are
        // on this machine.
        backend_policy: wicket::build::backends::BackendPolicy {
            allow_local: true,
            ..Default::default()
        },
        resolved: None,
        modules: common::modules(),
        // As the flag's default.
        dynamic_endpoints: true,
        tcp_services: None,
        udp_services: None,
        ssl_passthrough: false,
        ports_in_use: Default::default(),
    };
    let mut opts = opts;
    tweak(&mut opts);
    let b = build::build(&cluster, &opts);
    let text = Renderer::embedded()
        .unwrap()
        .render(&b.config, &golden_env())
        .unwrap();
    (
        text,
        b.problems.iter().map(ToString::to_string).collect(),
        b.config,
    )
}

/// What the golden configs are rendered with.
fn golden_env() -> RenderEnv {
    RenderEnv {
        generation: 1,
        user: None,
        ipv6: true,
        temp_dir: None,
    }
}

fn golden(name: &str, dir: &str) {
    golden_with(name, dir, |_| {})
}

fn golden_with(name: &str, dir: &str, tweak: impl FnOnce(&mut Options)) {
    let (text, problems, config) = render_with(dir, tweak);
    // What `wicket render` prints, written part by part, is the same text.
    let mut streamed = Vec::new();
    Renderer::embedded()
        .unwrap()
        .render_to(&config, &golden_env(), &mut streamed)
        .unwrap();
    assert!(
        String::from_utf8(streamed).unwrap() == text,
        "render_to differs from render"
    );
    insta::assert_snapshot!(name, text);
    insta::assert_snapshot!(format!("{name}-problems"), problems.join("\n"));
    common::nginx_test(&text, &config);
}

#[test]
fn examples() {
    golden("examples", "examples");
}

#[test]
fn tls() {
    golden("tls", "tests/fixtures/golden/tls");
}

#[test]
fn client_certificates() {
    golden("client-certs", "tests/fixtures/golden/client-certs");
}

#[test]
fn regex_and_rewrite() {
    golden("regex", "tests/fixtures/golden/regex");
}

#[test]
fn default_backends_and_unavailable_services() {
    golden("defaults", "tests/fixtures/golden/defaults");
}

#[test]
fn tcp_udp_services_and_ssl_passthrough() {
    golden_with("streams", "tests/fixtures/golden/streams", |o| {
        o.tcp_services = Some("ingress/tcp".parse().unwrap());
        o.udp_services = Some("ingress/udp".parse().unwrap());
        o.ssl_passthrough = true;
    });
}

#[test]
fn a_cached_render_is_the_same_as_a_full_one() {
    let (_, _, before) = render("examples");
    let (_, _, after) = render("tests/fixtures/golden/defaults");
    // With TLS passthrough every server listens elsewhere.
    let (_, _, streams) = render_with("examples", |o| {
        o.tcp_services = Some("ingress/tcp".parse().unwrap());
        o.ssl_passthrough = true;
    });
    assert!(streams.streams.passthrough.is_some());
    let r = Renderer::embedded().unwrap();
    let env = RenderEnv {
        generation: 3,
        user: None,
        ipv6: true,
        temp_dir: None,
    };
    let mut cache = wicket::render::RenderCache::default();
    // Fill the cache with one config, then render others through it: each
    // must come out exactly as a render from scratch.
    r.render_cached(&before, &env, &mut cache).unwrap();
    let mut changed = (*before).clone();
    changed.servers.pop();
    changed.upstreams.reverse();
    changed.upstreams.pop();
    let changed = std::sync::Arc::new(changed);
    for c in [
        &changed, &after, &before, &streams, &changed, &streams, &before,
    ] {
        assert_eq!(
            &*r.render_cached(c, &env, &mut cache).unwrap(),
            r.render(c, &env).unwrap().as_str()
        );
    }
}
