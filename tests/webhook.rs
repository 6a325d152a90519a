//! The validating admission webhook, called by a real kube-apiserver through
//! a ValidatingWebhookConfiguration.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::apiserver::*;
use common::*;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams, PostParams};

const CLASS: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: wicket}\nspec: {controller: wicket.dev/ingress-controller}\n";

/// A CA and a serving certificate for 127.0.0.1, written to `dir`.
fn webhook_cert(dir: &Path, tag: &str) -> String {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("webhook CA {tag}"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    // Write the key first: a reload sees a matching pair once both are in.
    std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt.new"), cert.pem()).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    ca.pem()
}

fn registration(port: u16, ca_pem: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: wicket}}
webhooks:
- name: validate.wicket.dev
  clientConfig:
    url: https://127.0.0.1:{port}/validate-ingress
    caBundle: {ca}
  rules:
  - apiGroups: [networking.k8s.io]
    apiVersions: [v1]
    operations: [CREATE, UPDATE]
    resources: [ingresses]
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 10
"#
    )
}

fn ing(name: &str, host: &str, path: &str, annotations: &str) -> Ingress {
    let yaml = ingress(
        "web",
        name,
        annotations,
        host,
        &[(path, "Prefix", "web", 80)],
    )
    .replace("spec:\n", "spec:\n  ingressClassName: wicket\n");
    serde_yaml::from_str(&yaml).unwrap()
}

/// Creates an Ingress; the API server's answer, or the webhook's refusal.
async fn create(api: &Api<Ingress>, i: &Ingress) -> Result<(), String> {
    match api.create(&PostParams::default(), i).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_refuses_what_wicket_would_reject_and_admits_the_rest() {
    let api = ApiServer::start().await;
    let admin = api.admin().await;
    namespace(&admin, "wicket").await;
    namespace(&admin, "web").await;
    apply(&admin, &common::chart::rbac()).await;
    apply(&admin, CLASS).await;
    let ip = host_ip();
    let echo = Echo::start("web", ip, 0).await;
    apply(
        &admin,
        &service(
            "web",
            "web",
            80,
            None,
            echo.addr.port(),
            &[(IpAddr::V4(ip), true)],
        ),
    )
    .await;
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), "web");
    // Named to sort first: creation times have whole seconds, and a tie goes
    // to the name that sorts first.
    create(&ingresses, &ing("a-taken", "t.example.com", "/api", ""))
        .await
        .unwrap();

    let certs = tempfile::tempdir().unwrap();
    let ca = webhook_cert(certs.path(), "one");
    let port = free_port();
    let (cert_file, key_file) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    let port_s = port.to_string();
    let w = Wicket::controller(
        &api.kubeconfig(CONTROLLER_TOKEN),
        &[
            "--namespace",
            "wicket",
            "--debounce-ms",
            "20",
            "--webhook-port",
            &port_s,
            "--webhook-address",
            "127.0.0.1",
            "--webhook-cert-file",
            cert_file.to_str().unwrap(),
            "--webhook-key-file",
            key_file.to_str().unwrap(),
        ],
    )
    .await;
    w.eventually("t.example.com", "/api", "served", |a| a.who() == "web")
        .await;
    apply(&admin, &registration(port, &ca)).await;

    // A hostile Ingress is refused with a message a person can act on (the
    // API server takes a moment to start calling a new webhook).
    let hostile = ing(
        "hostile",
        "h.example.com",
        "/",
        "  annotations: {nginx.ingress.kubernetes.io/rewrite-target: \"/$host;}\"}\n",
    );
    let refusal = eventually("the webhook refuses", || async {
        match create(&ingresses, &hostile).await {
            Err(m) if m.contains("wicket refuses") => Some(m),
            Ok(()) => {
                let _ = ingresses.delete("hostile", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
    assert!(
        refusal.contains("wicket refuses ingress web/hostile: metadata.annotations[\"nginx.ingress.kubernetes.io/rewrite-target\"]"),
        "{refusal}"
    );
    assert!(
        refusal.contains("may only start a capture reference"),
        "{refusal}"
    );

    // A path another Ingress already serves is refused too.
    let e = create(&ingresses, &ing("conflict", "t.example.com", "/api", ""))
        .await
        .unwrap_err();
    assert!(
        e.contains("the same path for host t.example.com is served by ingress web/a-taken"),
        "{e}"
    );

    // A good one is admitted and served.
    create(&ingresses, &ing("good", "g.example.com", "/", ""))
        .await
        .unwrap();
    w.eventually("g.example.com", "/", "served", |a| a.who() == "web")
        .await;
    // An update that would break it is refused; the served one stays.
    let patch = serde_json::json!({"metadata": {"annotations": {"nginx.ingress.kubernetes.io/use-regex": "maybe"}}});
    let e = ingresses
        .patch("good", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("must be \\\"true\\\" or \\\"false\\\"")
            || e.to_string().contains("must be \"true\" or \"false\""),
        "{e}"
    );
    assert_eq!(w.get("g.example.com", "/").await.who(), "web");
    // Ingresses of other classes are not wicket's business.
    let mut other = ing(
        "other",
        "o.example.com",
        "/",
        "  annotations: {nginx.ingress.kubernetes.io/rewrite-target: \"/$host\"}\n",
    );
    other.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
    create(&ingresses, &other).await.unwrap();

    // Under load: every review is answered well within the API server's
    // timeout.
    let client = tls_client(&[&ca]);
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
            "namespace": "web", "operation": "CREATE", "userInfo": {},
            "object": serde_json::to_value(ing("load", "l.example.com", "/", "")).unwrap()}
    });
    let started = Instant::now();
    let answers = futures::future::join_all((0..40).map(|_| {
        client
            .post(format!("https://127.0.0.1:{port}/validate-ingress"))
            .json(&review)
            .send()
    }))
    .await;
    let took = started.elapsed();
    for a in answers {
        let body: serde_json::Value = a.unwrap().json().await.unwrap();
        assert_eq!(body["response"]["allowed"], true, "{body}");
    }
    assert!(took < Duration::from_secs(10), "{took:?}");
    // A body over the cap is refused without being read whole.
    let big = client
        .post(format!("https://127.0.0.1:{port}/validate-ingress"))
        .body(vec![b' '; 5 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);

    // The certificate rotates without a restart.
    let ca2 = webhook_cert(certs.path(), "two");
    apply(&admin, &registration(port, &ca2)).await;
    let hostile2 = ing(
        "hostile2",
        "h2.example.com",
        "/",
        "  annotations: {nginx.ingress.kubernetes.io/use-regex: \"yes\"}\n",
    );
    eventually("refused again with the new certificate", || async {
        match create(&ingresses, &hostile2).await {
            Err(m) if m.contains("wicket refuses") => Some(()),
            Ok(()) => {
                let _ = ingresses.delete("hostile2", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
    assert!(
        w.logs().contains("webhook certificate reloaded"),
        "{}",
        w.logs()
    );
    assert_eq!(w.get("t.example.com", "/api").await.who(), "web");

    // 100 connections from another address that never start TLS: the API
    // server's reviews go on meanwhile, and they are closed once the
    // handshake deadline passes.
    let mut idle = Vec::new();
    for _ in 0..100 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(
            sock.connect(format!("127.0.0.1:{port}").parse().unwrap())
                .await
                .unwrap(),
        );
    }
    let hostile3 = ing(
        "hostile3",
        "h3.example.com",
        "/",
        "  annotations: {nginx.ingress.kubernetes.io/use-regex: \"yes\"}\n",
    );
    let refused = create(&ingresses, &hostile3).await;
    assert!(
        matches!(&refused, Err(m) if m.contains("wicket refuses")),
        "{refused:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut open = 0;
        for c in &mut idle {
            let mut b = [0u8; 1];
            use tokio::io::AsyncReadExt;
            match tokio::time::timeout(Duration::from_millis(1), c.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                _ => open += 1,
            }
        }
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} idle connections still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
