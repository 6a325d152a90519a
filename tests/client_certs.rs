//! Client certificates (`auth-tls-*`), end to end: `wicket serve` with the
//! real nginx, real TLS handshakes from clients with and without
//! certificates signed by a CA made here, and an echo backend that shows
//! the `ssl-client-*` headers nginx sent it.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

// ---------------------------------------------------------------- objects

/// An Ingress with one host and `path` (Prefix) to `svc`:80, with these
/// annotations, listing the host under `spec.tls` with the Secret `site`.
fn site(ns: &str, name: &str, host: &str, path: &str, pairs: &[(&str, &str)]) -> String {
    ingress(
        ns,
        name,
        &annotated(pairs),
        host,
        &[(path, "Prefix", "web", 80)],
    )
    .replace(
        "spec:\n",
        &format!("spec:\n  tls:\n  - hosts: [{host}]\n    secretName: site\n"),
    )
}

/// An Opaque Secret with these keys.
fn secret(ns: &str, name: &str, data: &[(&str, &str)]) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let mut out = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: Opaque\nstringData:\n"
    );
    for (k, v) in data {
        out.push_str(&format!("  {k}: |\n{}", indent(v)));
    }
    out
}

/// Each Ingress (`namespace/name`) has a log line naming it with `why`.
fn assert_told(w: &Wicket, told: &[(&str, &str)]) {
    let logs = w.logs();
    for (name, why) in told {
        assert!(
            logs.lines()
                .any(|l| l.contains(&format!("ingress {name}")) && l.contains(why)),
            "{name}: no reason with {why:?}\n{logs}"
        );
    }
}

// ---------------------------------------------------------------- certificates

/// A CA that signs client certificates.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A client certificate for `cn` (with this serial number), signed by
    /// the CA: (certificate, key) in PEM.
    fn client(&self, cn: &str, serial: u64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A revocation list naming these serial numbers.
    fn crl(&self, revoked: &[u64]) -> String {
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// Offers a client certificate when the server asks for one, and
/// remembers that it asked.
#[derive(Debug)]
struct Offer {
    key: Option<Arc<rustls::sign::CertifiedKey>>,
    asked: Arc<AtomicBool>,
}

impl rustls::client::ResolvesClientCert for Offer {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// An HTTPS client (every name is 127.0.0.1) that trusts `server_ca` and
/// offers `identity` (a certificate and key, PEM) when asked for one; and
/// whether a server asked.
fn client_with(
    server_ca: &str,
    identity: Option<&(String, String)>,
) -> (reqwest::Client, Arc<AtomicBool>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(server_ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let key = identity.map(|(cert, key)| {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let signing = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
        Arc::new(rustls::sign::CertifiedKey::new(chain, signing))
    });
    let asked = Arc::new(AtomicBool::new(false));
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Offer {
            key,
            asked: asked.clone(),
        }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let c = reqwest::Client::builder()
        .dns_resolver(Arc::new(Loopback))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap();
    (c, asked)
}

struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(std::net::SocketAddr::from(
                ([127, 0, 0, 1], 0),
            )));
            Ok(addrs)
        })
    }
}

/// GET over HTTPS with a new client (a new TLS handshake): the answer,
/// and whether nginx asked for a client certificate.
async fn get_tls(
    w: &Wicket,
    server_ca: &str,
    identity: Option<&(String, String)>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (Answer, bool) {
    try_get_tls(w, server_ca, identity, host, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {}: {e:?}\n{}", w.https_url(host, path), w.logs()))
}

/// As `get_tls`, with the transport error instead of a panic.
async fn try_get_tls(
    w: &Wicket,
    server_ca: &str,
    identity: Option<&(String, String)>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Answer, bool), reqwest::Error> {
    let (c, asked) = client_with(server_ca, identity);
    let mut req = c.get(w.https_url(host, path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await?;
    let a = Answer {
        status: r.status().as_u16(),
        version: r.version(),
        headers: r.headers().clone(),
        text: r.text().await?,
    };
    Ok((a, asked.load(Ordering::SeqCst)))
}

/// The header the echo backend received, if any.
fn seen(a: &Answer, name: &str) -> Option<String> {
    a.echo()?["headers"][name].as_str().map(str::to_string)
}

// ---------------------------------------------------------------- fixture

/// `wicket serve` with one host per case, an echo backend, a CA with
/// client certificates, and one of another CA.
struct Fixture {
    w: Wicket,
    _echo: Echo,
    /// The certificate every host presents (for the clients to trust).
    server: String,
    alice: (String, String),
    bob: (String, String),
    /// Revoked in the CRL of `client-ca-crl`.
    revoked: (String, String),
    /// "alice", signed by another CA.
    forged: (String, String),
    /// That other CA.
    stranger: String,
}

impl Fixture {
    async fn get(
        &self,
        id: Option<&(String, String)>,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Answer, bool) {
        get_tls(&self.w, &self.server, id, host, path, headers).await
    }
}

async fn fixture() -> Fixture {
    let e = Echo::start("web", LO, 0).await;
    let ca = Ca::new("Test Client CA");
    let stranger = Ca::new("Some Other CA");
    let alice = ca.client("alice", 10);
    let bob = ca.client("bob", 11);
    let revoked = ca.client("mallory", 12);
    let forged = stranger.client("alice", 10);
    let hosts = [
        "on.test",
        "optional.test",
        "cn.test",
        "errpage.test",
        "missing.test",
        "cross.test",
        "plain.test",
        "noredirect.test",
        "crl.test",
        "noca.test",
        "bad.test",
        "nosecret.test",
    ];
    let (server_cert, server_key) = cert_for(&hosts);
    let files = [
        (
            "svc.yaml",
            service(
                "c",
                "web",
                80,
                None,
                e.addr.port(),
                &[(IpAddr::V4(LO), true)],
            ),
        ),
        (
            "site.yaml",
            tls_secret("c", "site", &server_cert, &server_key),
        ),
        ("ca.yaml", secret("c", "client-ca", &[("ca.crt", &ca.pem)])),
        (
            "ca-crl.yaml",
            secret(
                "c",
                "client-ca-crl",
                &[("ca.crt", &ca.pem), ("ca.crl", &ca.crl(&[12]))],
            ),
        ),
        (
            "other-ns.yaml",
            secret("other", "client-ca", &[("ca.crt", &ca.pem)]),
        ),
        ("noca.yaml", secret("c", "no-ca", &[("tls.crt", &ca.pem)])),
        // on.test: verified, the certificate passed on. Ingresses from
        // files are taken in name order: on-a decides for the host.
        (
            "on-a.yaml",
            site(
                "c",
                "on-a",
                "on.test",
                "/",
                &[
                    ("auth-tls-secret", "c/client-ca"),
                    ("auth-tls-pass-certificate-to-upstream", "true"),
                ],
            ),
        ),
        // Other verification on the same host: answers 503 there.
        (
            "on-b.yaml",
            site(
                "c",
                "on-b",
                "on.test",
                "/b",
                &[
                    ("auth-tls-secret", "client-ca"),
                    ("auth-tls-verify-client", "off"),
                ],
            ),
        ),
        // No auth-tls: verified as the host is.
        ("on-c.yaml", site("c", "on-c", "on.test", "/c", &[])),
        // An ACME HTTP challenge (no-tls-redirect-locations): served over
        // plain HTTP.
        (
            "on-acme.yaml",
            site(
                "c",
                "on-acme",
                "on.test",
                "/.well-known/acme-challenge",
                &[],
            ),
        ),
        (
            "optional.yaml",
            site(
                "c",
                "optional",
                "optional.test",
                "/",
                &[
                    ("auth-tls-secret", "client-ca"),
                    ("auth-tls-verify-client", "optional"),
                    ("auth-tls-verify-depth", "2"),
                ],
            ),
        ),
        (
            "cn.yaml",
            site(
                "c",
                "cn",
                "cn.test",
                "/",
                &[
                    ("auth-tls-secret", "client-ca"),
                    ("auth-tls-match-cn", "CN=(alice|carol)$"),
                ],
            ),
        ),
        (
            "errpage.yaml",
            site(
                "c",
                "errpage",
                "errpage.test",
                "/",
                &[
                    ("auth-tls-secret", "client-ca"),
                    (
                        "auth-tls-error-page",
                        "https://login.example.com/certificate",
                    ),
                ],
            ),
        ),
        (
            "missing.yaml",
            site(
                "c",
                "missing",
                "missing.test",
                "/",
                &[("auth-tls-secret", "nope")],
            ),
        ),
        (
            "cross.yaml",
            site(
                "c",
                "cross",
                "cross.test",
                "/",
                &[("auth-tls-secret", "other/client-ca")],
            ),
        ),
        (
            "noca-ing.yaml",
            site(
                "c",
                "noca",
                "noca.test",
                "/",
                &[("auth-tls-secret", "no-ca")],
            ),
        ),
        ("plain.yaml", site("c", "plain", "plain.test", "/", &[])),
        (
            "noredirect.yaml",
            site(
                "c",
                "noredirect",
                "noredirect.test",
                "/",
                &[("auth-tls-secret", "client-ca"), ("ssl-redirect", "false")],
            ),
        ),
        (
            "crl.yaml",
            site(
                "c",
                "crl",
                "crl.test",
                "/",
                &[("auth-tls-secret", "client-ca-crl")],
            ),
        ),
        // A value that does not parse rejects the Ingress.
        (
            "bad.yaml",
            site(
                "c",
                "bad",
                "bad.test",
                "/",
                &[
                    ("auth-tls-secret", "client-ca"),
                    ("auth-tls-verify-client", "maybe"),
                ],
            ),
        ),
        // Another auth-tls-* key without the Secret: 503.
        (
            "nosecret.yaml",
            site(
                "c",
                "nosecret",
                "nosecret.test",
                "/",
                &[("auth-tls-match-cn", "CN=alice")],
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Fixture {
        w: Wicket::start(&files).await,
        _echo: e,
        server: server_cert,
        alice,
        bob,
        revoked,
        forged,
        stranger: stranger.pem.clone(),
    }
}

// ---------------------------------------------------------------- tests

/// A certificate of the CA gets through, with the headers ingress-nginx
/// sets and the escaped PEM; none, or one of another CA, gets nginx's 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_the_ca_is_accepted_and_others_are_refused() {
    let f = fixture().await;
    let (a, asked) = f.get(Some(&f.alice), "on.test", "/", &[]).await;
    assert_eq!(a.status, 200, "{}\n{}", a.text, f.w.logs());
    assert!(asked);
    assert_eq!(seen(&a, "ssl-client-verify").as_deref(), Some("SUCCESS"));
    assert_eq!(
        seen(&a, "ssl-client-subject-dn").as_deref(),
        Some("CN=alice")
    );
    assert_eq!(
        seen(&a, "ssl-client-issuer-dn").as_deref(),
        Some("CN=Test Client CA")
    );
    let pem = seen(&a, "ssl-client-cert").unwrap();
    assert!(pem.starts_with("-----BEGIN%20CERTIFICATE-----%0A"), "{pem}");
    let (a, asked) = f.get(None, "on.test", "/", &[]).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(asked);
    let (a, _) = f.get(Some(&f.forged), "on.test", "/", &[]).await;
    assert_eq!(a.status, 400, "{}", a.text);
    // The client cannot pose as verified.
    let (a, _) = f
        .get(None, "on.test", "/", &[("ssl-client-verify", "SUCCESS")])
        .await;
    assert_eq!(a.status, 400);
    // A revoked certificate (ca.crl) is refused, others are not.
    let (a, _) = f.get(Some(&f.revoked), "crl.test", "/", &[]).await;
    assert_eq!(a.status, 400, "{}", a.text);
    let (a, _) = f.get(Some(&f.alice), "crl.test", "/", &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

/// The host's verification covers every Ingress of the host; one that
/// asks for other verification answers 503 there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_verifies_for_all_its_ingresses() {
    let f = fixture().await;
    let (a, _) = f.get(None, "on.test", "/c", &[]).await;
    assert_eq!(a.status, 400);
    let (a, _) = f.get(Some(&f.alice), "on.test", "/c", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(seen(&a, "ssl-client-verify").as_deref(), Some("SUCCESS"));
    let (a, _) = f.get(Some(&f.alice), "on.test", "/b", &[]).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_told(
        &f.w,
        &[
            (
                "c/on-b",
                "verifies client certificates as ingress c/on-a sets them",
            ),
            ("c/on-b", "takes it from ingress c/on-a"),
        ],
    );
}

/// optional: a client without a certificate gets through and the backend
/// is told; a bad certificate is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_lets_a_client_without_a_certificate_through() {
    let f = fixture().await;
    let (a, asked) = f
        .get(
            None,
            "optional.test",
            "/",
            &[
                ("ssl-client-verify", "SUCCESS"),
                ("ssl-client-cert", "forged"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(asked);
    assert_eq!(seen(&a, "ssl-client-verify").as_deref(), Some("NONE"));
    // Without pass-certificate-to-upstream, the client's header is removed.
    assert_eq!(seen(&a, "ssl-client-cert"), None);
    let (a, _) = f.get(Some(&f.bob), "optional.test", "/", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(seen(&a, "ssl-client-verify").as_deref(), Some("SUCCESS"));
    assert_eq!(seen(&a, "ssl-client-subject-dn").as_deref(), Some("CN=bob"));
    let (a, _) = f.get(Some(&f.forged), "optional.test", "/", &[]).await;
    assert_eq!(a.status, 400);
}

/// auth-tls-match-cn: 403 for a subject that does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_cn_refuses_other_subjects() {
    let f = fixture().await;
    let (a, _) = f.get(Some(&f.alice), "cn.test", "/", &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let (a, _) = f.get(Some(&f.bob), "cn.test", "/", &[]).await;
    assert_eq!(a.status, 403, "{}", a.text);
    let (a, _) = f.get(None, "cn.test", "/", &[]).await;
    assert_eq!(a.status, 400);
}

/// auth-tls-error-page: a redirect instead of the 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_page_redirects_a_client_that_failed() {
    let f = fixture().await;
    for id in [None, Some(&f.forged)] {
        let (a, _) = f.get(id, "errpage.test", "/", &[]).await;
        assert_eq!(a.status, 302, "{}", a.text);
        assert_eq!(
            a.headers.get("location").unwrap(),
            "https://login.example.com/certificate"
        );
    }
    let (a, _) = f.get(Some(&f.alice), "errpage.test", "/", &[]).await;
    assert_eq!(a.status, 200);
}

/// Only HTTPS can verify: plain HTTP is redirected to HTTPS
/// (ssl-redirect) or refused with 403, except ACME's HTTP challenges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_never_served_unverified() {
    let f = fixture().await;
    for path in ["/", "/c"] {
        let a = f.w.get("on.test", path).await;
        assert_eq!(a.status, 308, "{path}: {}", a.text);
    }
    let a = f.w.get("noredirect.test", "/").await;
    assert_eq!(a.status, 403, "{}", a.text);
    let (a, _) = f.get(Some(&f.alice), "noredirect.test", "/", &[]).await;
    assert_eq!(a.status, 200);
    // no-tls-redirect-locations (ACME): served over plain HTTP, as in
    // ingress-nginx; verified over HTTPS.
    let a =
        f.w.get("on.test", "/.well-known/acme-challenge/token")
            .await;
    assert_eq!(a.who(), "web");
    assert_eq!(seen(&a, "ssl-client-verify"), None);
    let (a, _) = f
        .get(None, "on.test", "/.well-known/acme-challenge/token", &[])
        .await;
    assert_eq!(a.status, 400);
}

/// CAs that cannot be used: 503 for that host, with or without a
/// certificate, over HTTPS and plain HTTP, the Ingress told why; other
/// hosts keep serving. A value that does not parse rejects the Ingress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_cas_answer_503_and_other_hosts_keep_serving() {
    let f = fixture().await;
    for host in ["missing.test", "cross.test", "noca.test", "nosecret.test"] {
        for id in [None, Some(&f.alice)] {
            let (a, _) = f.get(id, host, "/", &[]).await;
            assert_eq!(a.status, 503, "{host}: {}", a.text);
        }
        // (Without a Secret the host verifies nothing, and plain HTTP
        // is sent to HTTPS, which answers 503.)
        let a = f.w.get(host, "/").await;
        let want = if host == "nosecret.test" { 308 } else { 503 };
        assert_eq!(a.status, want, "{host}");
    }
    assert_told(
        &f.w,
        &[
            ("c/missing", "secret c/nope not found"),
            ("c/cross", "allow-cross-namespace-resources"),
            ("c/noca", "no ca.crt"),
            ("c/nosecret", "without auth-tls-secret"),
            ("c/bad", "auth-tls-verify-client"),
        ],
    );
    // Rejected: not served at all (the catch-all server answers).
    let a = f.w.get("bad.test", "/").await;
    assert_eq!(a.status, 404, "{}", a.text);
    let (a, _) = f.get(None, "plain.test", "/", &[]).await;
    assert_eq!(a.status, 200);
}

/// A host without auth-tls on the same nginx: never asked for a
/// certificate, served, and nothing about one reaches its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_auth_tls_asks_for_no_certificate() {
    let f = fixture().await;
    let (a, asked) = f
        .get(
            Some(&f.alice),
            "plain.test",
            "/",
            &[("ssl-client-verify", "SUCCESS")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(!asked, "plain.test asked for a client certificate");
    assert_eq!(seen(&a, "ssl-client-subject-dn"), None);
    let (a, asked) = f.get(None, "plain.test", "/", &[]).await;
    assert_eq!(a.status, 200);
    assert!(!asked);
    // While the host next to it does.
    let (_, asked) = f.get(None, "on.test", "/", &[]).await;
    assert!(asked);
}

/// What alice and the forged alice get on optional.test.
async fn statuses(f: &Fixture) -> (u16, u16) {
    let (a, _) = f.get(Some(&f.alice), "optional.test", "/", &[]).await;
    let (b, _) = f.get(Some(&f.forged), "optional.test", "/", &[]).await;
    (a.status, b.status)
}

/// `statuses` while nginx reloads: a connection that an old worker
/// accepted as it began to shut down is closed before it answers (HTTP/2
/// GOAWAY; the request was never processed, and a client may send it
/// again), so that attempt gives `None` and the caller asks again. Any
/// other transport error panics.
async fn statuses_across_reload(f: &Fixture) -> Option<(u16, u16)> {
    let mut got = [0; 2];
    for (slot, who) in got.iter_mut().zip([&f.alice, &f.forged]) {
        match try_get_tls(&f.w, &f.server, Some(who), "optional.test", "/", &[]).await {
            Ok((a, _)) => *slot = a.status,
            Err(e) if format!("{e:?}").contains("connection closed") => return None,
            Err(e) => panic!("GET optional.test/: {e:?}\n{}", f.w.logs()),
        }
    }
    Some((got[0], got[1]))
}

/// The Secret changes: the host verifies with the new CA after the
/// reload, and a Secret that goes away makes the host answer 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_takes_effect() {
    let f = fixture().await;
    assert_eq!(statuses(&f).await, (200, 400));
    f.w.replace(
        "ca.yaml",
        &secret("c", "client-ca", &[("ca.crt", &f.stranger)]),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while statuses_across_reload(&f).await != Some((400, 200)) {
        assert!(
            std::time::Instant::now() < deadline,
            "never the new CA\n{}",
            f.w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(f.w.path("ca.yaml")).unwrap();
    while statuses_across_reload(&f).await != Some((503, 503)) {
        assert!(
            std::time::Instant::now() < deadline,
            "never 503\n{}",
            f.w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- the model

/// `build` alone, on these manifests (with the Service `web` and a Secret
/// `client-ca` with a CA, in namespace `c`).
fn built(yaml: &str) -> wicket::build::Build {
    let ca = Ca::new("Model CA");
    let base = format!(
        "{}---\n{}---\n{yaml}",
        service("c", "web", 80, None, 8080, &[(IpAddr::V4(LO), true)]),
        secret("c", "client-ca", &[("ca.crt", &ca.pem)])
    );
    let mut cluster = wicket::cluster::Cluster::default();
    for o in wicket::source::manifest::parse(&base, false)
        .unwrap()
        .objects
    {
        cluster.insert(o);
    }
    let mut cert = wicket::certs::generate_default().unwrap();
    cert.name = "default".into();
    let opts = wicket::build::Options {
        class: wicket::build::ClassOptions {
            watch_without_class: true,
            by_name: true,
            ..Default::default()
        },
        backend_policy: wicket::build::backends::BackendPolicy {
            allow_local: true,
            ..Default::default()
        },
        ..wicket::build::Options::new(80, 443, cert)
    };
    wicket::build::build(&cluster, &opts)
}

fn with_created(ing: &str, when: &str) -> String {
    ing.replacen(
        "metadata:\n",
        &format!("metadata:\n  creationTimestamp: \"{when}\"\n"),
        1,
    )
}

/// The oldest Ingress of the host decides, whatever the names; a host
/// without a certificate of its own names the default one (nginx asks for
/// client certificates per TLS context).
#[test]
fn the_oldest_ingress_of_the_host_decides() {
    let old = with_created(
        &ingress(
            "c",
            "z-old",
            &annotated(&[("auth-tls-secret", "client-ca")]),
            "h.test",
            &[("/", "Prefix", "web", 80)],
        ),
        "2020-01-01T00:00:00Z",
    );
    let new = with_created(
        &ingress(
            "c",
            "a-new",
            &annotated(&[
                ("auth-tls-secret", "client-ca"),
                ("auth-tls-verify-client", "optional"),
            ]),
            "h.test",
            &[("/new", "Prefix", "web", 80)],
        ),
        "2024-01-01T00:00:00Z",
    );
    let b = built(&format!("{old}---\n{new}"));
    let s = b
        .config
        .servers
        .iter()
        .find(|s| s.server_name == "h.test")
        .unwrap();
    let ca = s.client_auth.as_ref().expect("the host verifies");
    assert_eq!(ca.ingress, "c/z-old");
    assert_eq!(ca.verify, wicket::annotations::tls::VerifyClient::On);
    assert_eq!(s.certificate.as_deref(), Some("default"));
    for l in &s.locations {
        let from = l.source.as_ref().map(|x| x.name.as_str());
        match (&l.action, from) {
            (wicket::config::Action::Status { code, reason }, Some("a-new")) => {
                assert_eq!(*code, 503);
                assert!(reason.contains("as ingress c/z-old sets them"), "{reason}");
            }
            (a, Some("a-new")) => panic!("a-new served: {a:?}"),
            _ => {}
        }
    }
    assert!(b.config.trusted.iter().any(|t| t.name == ca.trusted));
}

/// Rules without a host are served by the catch-all server, which verifies
/// no client certificate: an Ingress that asks for it answers 503 there.
#[test]
fn the_catch_all_server_does_not_serve_an_ingress_that_verifies() {
    let b = built(&ingress(
        "c",
        "anyhost",
        &annotated(&[("auth-tls-secret", "client-ca")]),
        "",
        &[("/", "Prefix", "web", 80)],
    ));
    assert!(b.config.default_server.client_auth.is_none());
    let served: Vec<_> = b
        .config
        .default_server
        .locations
        .iter()
        .filter(|l| l.source.as_ref().is_some_and(|s| s.name == "anyhost"))
        .collect();
    assert!(!served.is_empty());
    for l in served {
        assert!(
            matches!(&l.action, wicket::config::Action::Status { code: 503, reason } if reason.contains("needs a host")),
            "{:?}",
            l.action
        );
    }
}
