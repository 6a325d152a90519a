//! The Helm chart (`charts/wicket`) and the container image's steps.
//!
//! - `helm lint --strict`, and values typos refused by `values.schema.json`;
//! - `helm template` for the default values and variants (DaemonSet with
//!   hostNetwork, NodePort with autoscaling, webhook with the hook Jobs,
//!   webhook with cert-manager, ServiceMonitor, Grafana dashboard and
//!   PrometheusRule, ingress-nginx's class), each
//!   applied with a server-side dry-run into a real kube-apiserver
//!   (`tests/common/apiserver.rs`), which validates every object; the
//!   ServiceMonitor, PrometheusRule and cert-manager kinds are validated against minimal
//!   CRDs made here (the fields the chart uses, with their upstream types);
//!   the namespace enforces the `restricted` Pod Security Standard and no
//!   warning is allowed;
//! - the rendered controller flags are accepted by the real binary;
//! - a real `helm install`/`upgrade`/`uninstall` of the drop-in switch of
//!   docs/migration.md (the class `nginx` handed over from a stand-in
//!   release);
//! - the webhook certificate hook script, run for real against the API
//!   server with a token of the hook's service account and the RBAC the
//!   chart renders for it;
//! - the image's check script, and `wicket serve` run as the image's
//!   non-root user the way the pod runs it.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::apiserver::*;
use common::chart::*;
use common::*;
use serde_json::Value;

// ------------------------------------------------------------ helpers

fn kind_names(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kind_names(docs)))
}

fn has_kind(docs: &[Value], kind: &str) -> bool {
    docs.iter().any(|d| d["kind"] == kind)
}

/// The controller container of the Deployment or DaemonSet.
fn controller(docs: &[Value]) -> &Value {
    let w = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
        .expect("a Deployment or DaemonSet");
    &w["spec"]["template"]["spec"]["containers"][0]
}

fn args(docs: &[Value]) -> Vec<String> {
    controller(docs)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `wicket controller ARGS --help` exits 0 only when every flag before
/// `--help` exists and its value parses.
fn binary_accepts(flags: &[String]) -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_wicket"))
        .args(flags)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wicket_knows(flag: &str) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_wicket"))
        .args(["controller", "--help"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(flag)
}

// ------------------------------------------------------------ CRDs

/// The ServiceMonitor kind with the fields the chart uses, typed as in
/// prometheus-operator's CRD (unknown fields are refused by strict field
/// validation).
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [selector]
            properties:
              jobLabel: {type: string}
              namespaceSelector:
                type: object
                properties:
                  any: {type: boolean}
                  matchNames: {type: array, items: {type: string}}
              selector:
                type: object
                x-kubernetes-map-type: atomic
                properties:
                  matchLabels: {type: object, additionalProperties: {type: string}}
                  matchExpressions:
                    type: array
                    items:
                      type: object
                      required: [key, operator]
                      properties:
                        key: {type: string}
                        operator: {type: string}
                        values: {type: array, items: {type: string}}
              endpoints:
                type: array
                items:
                  type: object
                  properties:
                    port: {type: string}
                    path: {type: string}
                    scheme: {type: string, enum: [http, https, HTTP, HTTPS]}
                    interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                    scrapeTimeout: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                    honorLabels: {type: boolean}
                    relabelings: &relabel
                      type: array
                      items:
                        type: object
                        properties:
                          action: {type: string}
                          modulus: {type: integer, format: int64}
                          regex: {type: string}
                          replacement: {type: string}
                          separator: {type: string}
                          sourceLabels: {type: array, items: {type: string}}
                          targetLabel: {type: string}
                    metricRelabelings: *relabel
"#;

/// prometheus-operator's PrometheusRule with the fields the chart uses,
/// typed as in its CRD.
const PROMETHEUS_RULE_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            properties:
              groups:
                type: array
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string, minLength: 1}
                    interval: {type: string}
                    rules:
                      type: array
                      items:
                        type: object
                        required: [expr]
                        properties:
                          alert: {type: string}
                          record: {type: string}
                          expr: {x-kubernetes-int-or-string: true}
                          for: {type: string}
                          labels: {type: object, additionalProperties: {type: string}}
                          annotations: {type: object, additionalProperties: {type: string}}
"#;

/// cert-manager's Issuer and Certificate with the fields the chart uses,
/// typed as in cert-manager's CRDs.
const CERT_MANAGER_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: issuers.cert-manager.io}
spec:
  group: cert-manager.io
  names: {kind: Issuer, listKind: IssuerList, plural: issuers, singular: issuer}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            properties:
              selfSigned:
                type: object
                properties:
                  crlDistributionPoints: {type: array, items: {type: string}}
              ca:
                type: object
                required: [secretName]
                properties:
                  secretName: {type: string}
                  crlDistributionPoints: {type: array, items: {type: string}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: certificates.cert-manager.io}
spec:
  group: cert-manager.io
  names: {kind: Certificate, listKind: CertificateList, plural: certificates, singular: certificate}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [issuerRef, secretName]
            properties:
              secretName: {type: string}
              commonName: {type: string}
              dnsNames: {type: array, items: {type: string}}
              duration: {type: string}
              renewBefore: {type: string}
              isCA: {type: boolean}
              usages:
                type: array
                items:
                  type: string
                  enum: [signing, digital signature, content commitment, key encipherment, key agreement, data encipherment, cert sign, crl sign, encipher only, decipher only, any, server auth, client auth, code signing, email protection, s/mime, ipsec end system, ipsec tunnel, ipsec user, timestamping, ocsp signing, microsoft sgc, netscape sgc]
              privateKey:
                type: object
                properties:
                  algorithm: {type: string, enum: [RSA, ECDSA, Ed25519]}
                  encoding: {type: string, enum: [PKCS1, PKCS8]}
                  rotationPolicy: {type: string, enum: [Never, Always]}
                  size: {type: integer}
              issuerRef:
                type: object
                required: [name]
                properties:
                  name: {type: string}
                  kind: {type: string}
                  group: {type: string}
"#;

// ------------------------------------------------------------ lint and schema

#[test]
fn lint_and_values_schema() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for sets in [
        vec![],
        vec!["kind=DaemonSet", "hostNetwork=true"],
        vec!["webhook.enabled=true"],
        vec!["webhook.enabled=true", "webhook.certManager.enabled=true"],
        vec!["metrics.serviceMonitor.enabled=true"],
        vec!["tcp.5432=db/postgres:5432", "udp.5353=kube-system/dns:dns"],
        vec![
            "metrics.grafanaDashboard.enabled=true",
            "metrics.prometheusRule.enabled=true",
        ],
    ] {
        let mut a = vec!["lint", "--strict", chart];
        for s in &sets {
            a.extend(["--set", s]);
        }
        let out = helm(&a);
        assert!(
            out.status.success(),
            "helm lint --strict {sets:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Typos and wrong values fail at template time (so at install), each
    // naming what is wrong.
    for (set, says) in [
        ("replicas=3", "replicas"),
        ("service.typ=NodePort", "typ"),
        ("service.type=Loadbalancer", "/service/type"),
        ("kind=StatefulSet", "/kind"),
        ("containerPorts.http=0", "http"),
        ("webhook.certManager.enable=true", "enable"),
        ("webhook.failurePolicy=fail", "/webhook/failurePolicy"),
        ("metrics.serviceMonitor.interval=30 seconds", "interval"),
        ("metrics.grafanaDashboard.enable=true", "enable"),
        (
            "metrics.excludeSocketMetrics={requests_total}",
            "excludeSocketMetrics",
        ),
        ("defaultSslCertificate=just-a-name", "defaultSslCertificate"),
        ("ingressClass.name=Not_A_Name", "name"),
        ("extraArgs[0]=verbose", "extraArgs"),
        ("resources.request.cpu=1", "request"),
        (
            "securityContext.readOnlyRootFileSystem=true",
            "readOnlyRootFileSystem",
        ),
        ("livenessProbe.periodSecond=5", "periodSecond"),
        ("tcp.ssh=git/ssh:22", "ssh"),
        ("tcp.70000=git/ssh:22", "70000"),
        ("udp.53=no-namespace:53", "/udp/53"),
        ("tcp.22=git/ssh:22:SOCKS", "/tcp/22"),
        ("updateStrategy.rollingUpdate.maxSurg=1", "maxSurg"),
        (
            "podDisruptionBudget.minAvailable=1",
            "minAvailable or maxUnavailable",
        ),
    ] {
        match try_template("wicket", "wicket", &[set]) {
            Ok(_) => panic!("helm template accepted --set {set}"),
            Err(e) => assert!(
                e.contains(says),
                "--set {set}: error does not name {says:?}:\n{e}"
            ),
        }
    }
    // The same typo in a values file fails `helm lint --strict` too.
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "service:\n  type: NodePort\n  externalTraficPolicy: Local\n",
    )
    .unwrap();
    let out = helm(&["lint", "--strict", chart, "-f", values.to_str().unwrap()]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "lint accepted a misspelled key:\n{said}"
    );
    assert!(said.contains("externalTraficPolicy"), "{said}");
    // Values that contradict each other.
    let e = try_template(
        "wicket",
        "wicket",
        &["hostNetwork=true", "hostPort.enabled=true"],
    )
    .unwrap_err();
    assert!(e.contains("choose one"), "{e}");
    let e = try_template(
        "wicket",
        "wicket",
        &["kind=DaemonSet", "autoscaling.enabled=true"],
    )
    .unwrap_err();
    assert!(
        e.contains("autoscaling.enabled needs kind: Deployment"),
        "{e}"
    );
}

#[test]
fn dockerfile_runs_the_image_scripts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    // Every RUN step is one of the scripts, which exist and are executable.
    let runs: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("RUN "))
        .collect();
    assert_eq!(runs.len(), 4, "{runs:?}");
    for script in [
        "build.sh",
        "install-runtime.sh",
        "create-user.sh",
        "check.sh",
    ] {
        assert!(
            dockerfile
                .lines()
                .any(|l| (l.starts_with("RUN ") || l.starts_with("    "))
                    && l.contains(&format!("/{script}"))),
            "the Dockerfile does not run {script}"
        );
        let mode = std::fs::metadata(root.join("scripts/image").join(script))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
    // The user of the image is the chart's runAsUser; the hook Jobs' script
    // is where the chart runs it.
    let docs = documents(&template("wicket", "wicket", &["webhook.enabled=true"]));
    let pod = &docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    let gid = pod["securityContext"]["runAsGroup"].as_u64().unwrap();
    assert!(dockerfile.contains(&format!("\nUSER {uid}:{gid}\n")));
    let job = find(&docs, "Job", "wicket-admission-create");
    let command = strings(&job["spec"]["template"]["spec"]["containers"][0]["command"]);
    assert_eq!(command, ["/usr/local/bin/wicket-webhook-cert", "create"]);
    assert!(dockerfile.contains(&format!(
        "COPY scripts/image/webhook-cert.sh {}\n",
        command[0]
    )));
    assert!(args(&docs).contains(&"--nginx-binary=/usr/sbin/nginx".to_string()));
    // The copy of nginx for ports below 1024 is what install-runtime.sh makes.
    let low = documents(&template("wicket", "wicket", &["containerPorts.http=80"]));
    let flag = "--nginx-binary=/usr/local/lib/wicket/nginx-low-ports";
    assert!(args(&low).contains(&flag.to_string()));
    let install = std::fs::read_to_string(root.join("scripts/image/install-runtime.sh")).unwrap();
    assert!(install.contains("low=/usr/local/lib/wicket/nginx-low-ports"));
}

// ------------------------------------------------------------ server-side dry-run

struct Variant {
    name: &'static str,
    namespace: &'static str,
    sets: &'static [&'static str],
    check: fn(&[Value]),
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "tcp and udp services",
        namespace: "wicket",
        sets: &[
            "tcp.5432=db/postgres:5432",
            "tcp.2222=git/ssh:ssh:PROXY",
            "udp.5353=kube-system/dns:dns",
            "sslPassthrough=true",
        ],
        check: |docs| {
            let a = args(docs);
            for flag in [
                "--tcp-services-configmap=wicket/wicket-tcp",
                "--udp-services-configmap=wicket/wicket-udp",
                "--enable-ssl-passthrough=true",
            ] {
                assert!(a.iter().any(|x| x == flag), "no {flag} in {a:?}");
            }
            let tcp = find(docs, "ConfigMap", "wicket-tcp");
            assert_eq!(tcp["data"]["5432"], "db/postgres:5432");
            assert_eq!(tcp["data"]["2222"], "git/ssh:ssh:PROXY");
            let udp = find(docs, "ConfigMap", "wicket-udp");
            assert_eq!(udp["data"]["5353"], "kube-system/dns:dns");
            let svc = find(docs, "Service", "wicket");
            let ports = svc["spec"]["ports"].as_array().unwrap();
            let port = |name: &str| {
                ports
                    .iter()
                    .find(|p| p["name"] == name)
                    .unwrap_or_else(|| panic!("no Service port {name}: {ports:?}"))
            };
            assert_eq!(port("5432-tcp")["port"], 5432);
            assert_eq!(port("5432-tcp")["targetPort"], "5432-tcp");
            assert_eq!(port("5432-tcp")["protocol"], "TCP");
            assert_eq!(port("5353-udp")["protocol"], "UDP");
            assert_eq!(port("2222-tcp")["port"], 2222);
            let c = controller(docs);
            let pod_ports = c["ports"].as_array().unwrap();
            let pod_port = |name: &str| {
                pod_ports
                    .iter()
                    .find(|p| p["name"] == name)
                    .unwrap_or_else(|| panic!("no container port {name}: {pod_ports:?}"))
            };
            assert_eq!(pod_port("5432-tcp")["containerPort"], 5432);
            assert_eq!(pod_port("5353-udp")["containerPort"], 5353);
            assert_eq!(pod_port("5353-udp")["protocol"], "UDP");
            // No port below 1024: no capability.
            assert!(c["securityContext"]["capabilities"]["add"].is_null());
        },
    },
    Variant {
        name: "a tcp service below 1024",
        // hostPort: not for the restricted namespace.
        namespace: "wicket-host",
        sets: &["tcp.22=git/ssh:ssh", "hostPort.enabled=true"],
        check: |docs| {
            let c = controller(docs);
            assert_eq!(
                strings(&c["securityContext"]["capabilities"]["add"]),
                ["NET_BIND_SERVICE"]
            );
            let a = args(docs);
            assert!(
                a.iter()
                    .any(|x| x == "--nginx-binary=/usr/local/lib/wicket/nginx-low-ports"),
                "{a:?}"
            );
            let p = c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "22-tcp")
                .unwrap();
            assert_eq!(p["hostPort"], 22);
            // No udp values: no ConfigMap, no flag.
            assert!(!a.iter().any(|x| x.starts_with("--udp-services-configmap")));
            assert!(!a.iter().any(|x| x.starts_with("--enable-ssl-passthrough")));
            assert!(
                !docs
                    .iter()
                    .any(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "wicket-udp")
            );
        },
    },
    Variant {
        name: "default values",
        namespace: "wicket",
        sets: &[],
        check: |docs| {
            let a = args(docs);
            for flag in [
                "controller",
                "--ingress-class=wicket",
                "--controller-class=wicket.dev/ingress-controller",
                "--watch-ingress-without-class=false",
                "--dynamic-endpoints=true",
                "--election-id=wicket-leader",
                "--configmap=wicket/wicket",
                "--publish-service=wicket/wicket",
                "--http-port=8080",
                "--https-port=8443",
                "--admin-port=10254",
                "--admin-address=0.0.0.0",
                "--state-dir=/var/lib/wicket/state",
                "--temp-dir=/var/lib/wicket/tmp",
            ] {
                assert!(a.iter().any(|x| x == flag), "no {flag} in {a:?}");
            }
            let deploy = find(docs, "Deployment", "wicket");
            assert_eq!(deploy["spec"]["replicas"], 2);
            let pod = &deploy["spec"]["template"]["spec"];
            assert_eq!(pod["automountServiceAccountToken"], true);
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault"
            );
            let c = controller(docs);
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
            assert!(sc["capabilities"]["add"].is_null(), "{sc}");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
            assert!(!c["resources"]["requests"]["cpu"].is_null());
            let mounts: Vec<&str> = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["mountPath"].as_str().unwrap())
                .collect();
            assert_eq!(mounts, ["/var/lib/wicket", "/var/lib/wicket/tmp", "/tmp"]);
            // nginx's temporary files have a volume of their own, bounded.
            let tmp = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "nginx-tmp")
                .expect("the nginx-tmp volume");
            assert_eq!(tmp["emptyDir"]["sizeLimit"], "1Gi");
            // The traffic Service never exposes the admin port.
            let svc = find(docs, "Service", "wicket");
            assert_eq!(svc["spec"]["type"], "LoadBalancer");
            let ports: Vec<(&str, u64)> = svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["targetPort"].as_str().unwrap(),
                        p["port"].as_u64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(ports, [("http", 80), ("https", 443)]);
            assert_eq!(
                find(docs, "ServiceAccount", "wicket")["automountServiceAccountToken"],
                false
            );
            let class = find(docs, "IngressClass", "wicket");
            assert_eq!(class["spec"]["controller"], "wicket.dev/ingress-controller");
            assert!(class["metadata"]["annotations"].is_null());
            assert_eq!(
                find(docs, "PodDisruptionBudget", "wicket")["spec"]["maxUnavailable"],
                1
            );
            assert!(!has_kind(docs, "HorizontalPodAutoscaler"));
            assert!(!has_kind(docs, "ValidatingWebhookConfiguration"));
            assert!(!has_kind(docs, "ServiceMonitor"));
        },
    },
    Variant {
        name: "NodePort, Local traffic policy, autoscaling, settings, default class",
        namespace: "wicket",
        sets: &[
            "service.type=NodePort",
            "service.externalTrafficPolicy=Local",
            "service.nodePorts.http=30080",
            "service.nodePorts.https=30443",
            "autoscaling.enabled=true",
            "autoscaling.targetMemoryUtilizationPercentage=70",
            "podDisruptionBudget.minAvailable=1",
            "podDisruptionBudget.maxUnavailable=null",
            "config.proxy-body-size=8m",
            "config.keep-alive=30",
            "ingressClass.default=true",
            "watchNamespace=shop",
            "defaultSslCertificate=wicket/default-cert",
            "defaultBackendService=wicket/fallback",
            "publishStatusAddress=203.0.113.7",
            "updateStatusOnShutdown=true",
            "extraArgs[0]=--max-wait-ms=2000",
            "logLevel=info\\,wicket=debug",
        ],
        check: |docs| {
            let a = args(docs);
            for flag in [
                "--watch-namespace=shop",
                "--default-ssl-certificate=wicket/default-cert",
                "--default-backend-service=wicket/fallback",
                "--publish-status-address=203.0.113.7",
                "--update-status-on-shutdown=true",
                "--max-wait-ms=2000",
            ] {
                assert!(a.iter().any(|x| x == flag), "no {flag} in {a:?}");
            }
            assert!(
                !a.iter().any(|x| x.starts_with("--publish-service")),
                "{a:?}"
            );
            let svc = find(docs, "Service", "wicket");
            assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
            assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
            let deploy = find(docs, "Deployment", "wicket");
            assert!(
                deploy["spec"]["replicas"].is_null(),
                "the HPA owns replicas"
            );
            assert_eq!(
                find(docs, "HorizontalPodAutoscaler", "wicket")["spec"]["metrics"]
                    .as_array()
                    .unwrap()
                    .len(),
                2
            );
            assert_eq!(
                find(docs, "PodDisruptionBudget", "wicket")["spec"]["minAvailable"],
                1
            );
            let cm = find(docs, "ConfigMap", "wicket");
            assert_eq!(cm["data"]["proxy-body-size"], "8m");
            assert_eq!(cm["data"]["keep-alive"], "30");
            let class = find(docs, "IngressClass", "wicket");
            assert_eq!(
                class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
                "true"
            );
            assert_eq!(controller(docs)["env"][2]["value"], "info,wicket=debug");
        },
    },
    Variant {
        name: "DaemonSet on the host network, ports 80/443",
        namespace: "wicket-host",
        sets: &[
            "kind=DaemonSet",
            "hostNetwork=true",
            "containerPorts.http=80",
            "containerPorts.https=443",
            "service.enabled=false",
        ],
        check: |docs| {
            let ds = find(docs, "DaemonSet", "wicket");
            let pod = &ds["spec"]["template"]["spec"];
            assert_eq!(pod["hostNetwork"], true);
            assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
            let sc = &controller(docs)["securityContext"];
            assert_eq!(strings(&sc["capabilities"]["add"]), ["NET_BIND_SERVICE"]);
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
            assert_eq!(sc["allowPrivilegeEscalation"], true);
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            let a = args(docs);
            assert!(a.contains(&"--http-port=80".to_string()), "{a:?}");
            assert!(
                a.contains(&"--nginx-binary=/usr/local/lib/wicket/nginx-low-ports".to_string()),
                "{a:?}"
            );
            assert!(
                !a.iter().any(|x| x.starts_with("--publish-service")),
                "{a:?}"
            );
            assert!(!has_kind(docs, "Deployment"));
            assert!(!has_kind(docs, "PodDisruptionBudget"));
            assert!(!has_kind(docs, "Service"));
        },
    },
    Variant {
        name: "webhook with the hook Jobs",
        namespace: "wicket",
        sets: &["webhook.enabled=true"],
        check: |docs| {
            let vwc = find(docs, "ValidatingWebhookConfiguration", "wicket-admission");
            let hook = &vwc["webhooks"][0];
            assert_eq!(hook["clientConfig"]["service"]["name"], "wicket-admission");
            assert_eq!(hook["clientConfig"]["service"]["path"], "/validate-ingress");
            assert_eq!(
                strings(&hook["rules"][0]["operations"]),
                ["CREATE", "UPDATE"]
            );
            assert_eq!(hook["failurePolicy"], "Fail");
            let svc = find(docs, "Service", "wicket-admission");
            assert_eq!(svc["spec"]["type"], "ClusterIP");
            assert_eq!(svc["spec"]["ports"][0]["targetPort"], "webhook");
            let a = args(docs);
            for flag in [
                "--webhook-port=8444",
                "--webhook-cert-file=/etc/wicket/webhook/tls.crt",
                "--webhook-key-file=/etc/wicket/webhook/tls.key",
            ] {
                assert!(a.iter().any(|x| x == flag), "no {flag} in {a:?}");
            }
            let pod = &find(docs, "Deployment", "wicket")["spec"]["template"]["spec"];
            assert!(
                pod["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["secret"]["secretName"] == "wicket-admission")
            );
            for step in ["create", "patch"] {
                let job = find(docs, "Job", &format!("wicket-admission-{step}"));
                assert_eq!(
                    job["spec"]["template"]["spec"]["serviceAccountName"],
                    "wicket-admission"
                );
            }
            assert_eq!(
                find(docs, "Job", "wicket-admission-create")["metadata"]["annotations"]["helm.sh/hook"],
                "pre-install,pre-upgrade"
            );
            assert!(!has_kind(docs, "Certificate"));
        },
    },
    Variant {
        name: "webhook with cert-manager",
        namespace: "wicket",
        sets: &["webhook.enabled=true", "webhook.certManager.enabled=true"],
        check: |docs| {
            let vwc = find(docs, "ValidatingWebhookConfiguration", "wicket-admission");
            assert_eq!(
                vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                "wicket/wicket-admission"
            );
            let cert = find(docs, "Certificate", "wicket-admission");
            assert_eq!(cert["spec"]["secretName"], "wicket-admission");
            assert!(strings(&cert["spec"]["dnsNames"]).contains(&"wicket-admission.wicket.svc"));
            find(docs, "Issuer", "wicket-admission-ca");
            assert!(!has_kind(docs, "Job"));
        },
    },
    Variant {
        name: "ServiceMonitor",
        namespace: "wicket",
        sets: &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=prometheus",
            "metrics.serviceMonitor.scrapeTimeout=10s",
            "metrics.serviceMonitor.metricRelabelings[0].action=drop",
            "metrics.serviceMonitor.metricRelabelings[0].regex=go_.*",
            "metrics.serviceMonitor.metricRelabelings[0].sourceLabels[0]=__name__",
        ],
        check: |docs| {
            let sm = find(docs, "ServiceMonitor", "wicket");
            assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
            assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
            // It selects the metrics Service, not the traffic Service.
            let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
            let selects = |svc: &Value| {
                selector
                    .iter()
                    .all(|(k, v)| &svc["metadata"]["labels"][k] == v)
            };
            let metrics = find(docs, "Service", "wicket-metrics");
            assert!(selects(metrics));
            assert!(!selects(find(docs, "Service", "wicket")));
            assert_eq!(metrics["spec"]["type"], "ClusterIP");
            assert_eq!(metrics["spec"]["ports"][0]["name"], "metrics");
            assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "admin");
        },
    },
    Variant {
        name: "Grafana dashboard, PrometheusRule and request-metrics flags",
        namespace: "wicket",
        sets: &[
            "metrics.grafanaDashboard.enabled=true",
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.labels.release=prometheus",
            "metrics.perUndefinedHost=true",
            "metrics.excludeSocketMetrics={nginx_ingress_controller_bytes_sent,response_size}",
            "metrics.timeBuckets={1,5,30}",
            "metrics.sizeBuckets={100,10000}",
        ],
        check: |docs| {
            let cm = find(docs, "ConfigMap", "wicket-dashboard");
            assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
            let dash: Value =
                serde_json::from_str(cm["data"]["wicket.json"].as_str().unwrap()).unwrap();
            assert_eq!(dash["uid"], "wicket-ingress");
            let rule = find(docs, "PrometheusRule", "wicket");
            assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
            let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["alert"].as_str().unwrap())
                .collect();
            assert_eq!(
                alerts,
                [
                    "WicketReloadFailed",
                    "WicketIngressRejected",
                    "WicketIngressHigh5xxRate"
                ]
            );
            let a = args(docs);
            for flag in [
                "--metrics-per-host=true",
                "--metrics-per-undefined-host=true",
                "--exclude-socket-metrics=nginx_ingress_controller_bytes_sent,response_size",
                "--time-buckets=1,5,30",
                "--size-buckets=100,10000",
            ] {
                assert!(a.iter().any(|x| x == flag), "no {flag} in {a:?}");
            }
            assert!(
                !a.iter().any(|x| x.starts_with("--length-buckets")),
                "{a:?}"
            );
        },
    },
    Variant {
        name: "ingress-nginx's class (docs/migration.md)",
        namespace: "wicket",
        sets: &[
            "ingressClass.name=nginx",
            "ingressClass.controllerValue=k8s.io/ingress-nginx",
            "ingressClass.create=false",
            "ingressClass.otherNames={internal}",
            "ingressClass.byName=true",
            "webhook.enabled=true",
        ],
        check: |docs| {
            let a = args(docs);
            assert!(a.contains(&"--ingress-class=nginx".to_string()), "{a:?}");
            assert!(
                a.contains(&"--controller-class=k8s.io/ingress-nginx".to_string()),
                "{a:?}"
            );
            assert!(!has_kind(docs, "IngressClass"));
            let vwc = find(docs, "ValidatingWebhookConfiguration", "wicket-admission");
            let cel = vwc["webhooks"][0]["matchConditions"][0]["expression"]
                .as_str()
                .unwrap();
            assert!(cel.contains("== 'nginx'"), "{cel}");
            // The other classes of the controller reach the webhook too.
            assert!(
                cel.contains("object.spec.ingressClassName in ['nginx', 'internal']"),
                "{cel}"
            );
            assert!(
                a.contains(&"--ingress-class-by-name=true".to_string()),
                "{a:?}"
            );
        },
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_pass_server_side_dry_run() {
    let api = ApiServer::start().await;
    let admin = api.admin().await;
    let kubeconfig = api.kubeconfig(ADMIN_TOKEN);
    // The chart's namespace enforces the restricted Pod Security Standard
    // (and warns, which kubectl prints); the host-network variant has its own.
    apply(
        &admin,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: wicket\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/warn: restricted\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: wicket-host}\n",
    )
    .await;
    for crds in [SERVICE_MONITOR_CRD, PROMETHEUS_RULE_CRD, CERT_MANAGER_CRDS] {
        apply(&admin, crds).await;
    }
    let out = kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd",
            "--all",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dry_run = |yaml: &str| {
        kubectl(
            &kubeconfig,
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=wicket-chart-test",
                "--validate=strict",
                "-f",
                "-",
            ],
            yaml,
        )
    };

    // The check is live: a privileged pod in the restricted namespace is
    // refused by the API server.
    let privileged = template(
        "wicket",
        "wicket",
        &[
            "kind=DaemonSet",
            "hostNetwork=true",
            "containerPorts.http=80",
        ],
    );
    let out = dry_run(&privileged);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would violate PodSecurity \"restricted"),
        "no Pod Security warning for a host-network pod in the restricted namespace:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And strict: a misspelled field is refused, in a built-in kind and in
    // a custom one.
    let monitored = template("wicket", "wicket", &["metrics.serviceMonitor.enabled=true"]);
    for (right, wrong) in [
        ("readOnlyRootFilesystem:", "readOnlyRootFileSystem:"),
        ("honorLabels:", "honourLabels:"),
    ] {
        assert!(monitored.contains(right));
        let out = dry_run(&monitored.replace(right, wrong));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(wrong.trim_end_matches(':')),
            "{wrong} was not refused:\n{stderr}"
        );
    }

    let webhook_flags = wicket_knows("--webhook-port");
    for v in VARIANTS {
        let yaml = template("wicket", v.namespace, v.sets);
        let docs = documents(&yaml);
        (v.check)(&docs);
        let out = dry_run(&yaml);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: the API server refused the chart:\n{stderr}\n{yaml}",
            v.name
        );
        assert!(
            !stderr.contains("Warning"),
            "{}: the API server warned:\n{stderr}",
            v.name
        );
        // Every object went through the API server.
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.ends_with("(server dry run)"))
                .count(),
            docs.len(),
            "{}:\n{stdout}",
            v.name
        );

        // The real binary accepts the rendered flags.
        let mut flags = args(&docs);
        if !webhook_flags {
            // The webhook flags come with the admission webhook (issue 4);
            // until the binary has them they are checked by name only.
            flags.retain(|f| !f.starts_with("--webhook-"));
        }
        if let Err(e) = binary_accepts(&flags) {
            panic!(
                "{}: wicket refuses the chart's flags {flags:?}:\n{e}",
                v.name
            );
        }
    }
    if !webhook_flags {
        eprintln!(
            "note: this wicket has no --webhook-port yet; the chart's webhook flags were not run"
        );
    }

    drop_in_switch_hands_the_class_over(&kubeconfig, &admin).await;
}

/// docs/migration.md, "Drop-in switch", for real with helm: wicket installed
/// beside a release that owns the IngressClass `nginx` (a stand-in for
/// ingress-nginx's chart) without clashing with it; after that release is
/// uninstalled, wicket's release creates the class and owns it.
async fn drop_in_switch_hands_the_class_over(kubeconfig: &Path, admin: &kube::Client) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::networking::v1::IngressClass;
    use kube::api::Api;

    let kc = kubeconfig.to_str().unwrap();
    let run_helm = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--kubeconfig", kc]);
        let out = helm(&a);
        assert!(
            out.status.success(),
            "helm {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let classes: Api<IngressClass> = Api::all(admin.clone());
    let owner = |c: &IngressClass| {
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("meta.helm.sh/release-name").cloned())
    };

    namespace(admin, "ingress-nginx").await;
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir(other.path().join("templates")).unwrap();
    std::fs::write(
        other.path().join("Chart.yaml"),
        "apiVersion: v2\nname: ingress-nginx\nversion: 4.0.0\n",
    )
    .unwrap();
    std::fs::write(
        other.path().join("templates/class.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: nginx\n  annotations:\n    ingressclass.kubernetes.io/is-default-class: \"true\"\nspec:\n  controller: k8s.io/ingress-nginx\n",
    )
    .unwrap();
    let other_chart = other.path().to_str().unwrap();
    run_helm(&[
        "install",
        "ingress-nginx",
        other_chart,
        "-n",
        "ingress-nginx",
    ]);

    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let dropin = [
        "--set",
        "ingressClass.name=nginx",
        "--set",
        "ingressClass.controllerValue=k8s.io/ingress-nginx",
        "--set",
        "ingressClass.create=false",
        "--set",
        "publishService.pathOverride=ingress-nginx/ingress-nginx-controller",
        "--set",
        "watchIngressWithoutClass=true",
    ];
    let mut install = vec!["install", "wicket", chart, "-n", "wicket"];
    install.extend(dropin);
    run_helm(&install);
    assert_eq!(
        owner(&classes.get("nginx").await.unwrap()).as_deref(),
        Some("ingress-nginx")
    );

    // Step 3: wicket publishes its own Service's addresses.
    let mut own = vec!["upgrade", "wicket", chart, "-n", "wicket"];
    own.extend(dropin);
    own.extend(["--set", "publishService.pathOverride="]);
    run_helm(&own);
    // Step 4. Uninstalling ingress-nginx deletes the class (Helm deletes what its
    // release manifest holds, whatever the live object's annotations say);
    // wicket keeps serving the class meanwhile, it does not need the object.
    run_helm(&["uninstall", "ingress-nginx", "-n", "ingress-nginx"]);
    assert!(classes.get_opt("nginx").await.unwrap().is_none());
    let mut upgrade = vec!["upgrade", "wicket", chart, "-n", "wicket"];
    upgrade.extend(dropin);
    upgrade.extend([
        "--set",
        "ingressClass.create=true",
        "--set",
        "publishService.pathOverride=",
        "--set",
        "ingressClass.default=true",
    ]);
    run_helm(&upgrade);

    let class = classes.get("nginx").await.unwrap();
    assert_eq!(owner(&class).as_deref(), Some("wicket"));
    assert_eq!(
        class.spec.unwrap().controller.as_deref(),
        Some("k8s.io/ingress-nginx")
    );
    let annotations = class.metadata.annotations.unwrap();
    assert_eq!(
        annotations["ingressclass.kubernetes.io/is-default-class"],
        "true"
    );
    let deploy = Api::<Deployment>::namespaced(admin.clone(), "wicket")
        .get("wicket")
        .await
        .unwrap();
    let args = deploy.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"--publish-service=wicket/wicket".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--ingress-class=nginx".to_string()),
        "{args:?}"
    );

    // The class now goes with wicket's release.
    run_helm(&["uninstall", "wicket", "-n", "wicket"]);
    assert!(classes.get_opt("nginx").await.unwrap().is_none());
}

// ------------------------------------------------------------ webhook certificate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_certificate_hook_works_with_its_rbac() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    use kube::api::{Api, ListParams, PostParams};

    let api = ApiServer::start().await;
    let admin = api.admin().await;
    namespace(&admin, "wicket").await;
    let docs = documents(&template("wicket", "wicket", &["webhook.enabled=true"]));
    // The hook's service account and RBAC, the webhook configuration and its
    // Service, as Helm would create them (for real this time).
    let wanted = [
        ("ServiceAccount", "wicket-admission"),
        ("Role", "wicket-admission"),
        ("RoleBinding", "wicket-admission"),
        ("ClusterRole", "wicket-admission"),
        ("ClusterRoleBinding", "wicket-admission"),
        ("Service", "wicket-admission"),
        ("ValidatingWebhookConfiguration", "wicket-admission"),
    ];
    for (kind, name) in wanted {
        apply(
            &admin,
            &serde_yaml::to_string(find(&docs, kind, name)).unwrap(),
        )
        .await;
    }
    // A token of the hook's service account, from the API server.
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), "wicket")
        .create_token_request(
            "wicket-admission",
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), &token).unwrap();
    std::fs::write(dir.path().join("apiserver-ca.crt"), &api.ca_pem).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image/webhook-cert.sh");

    // Each step with the environment its Job sets.
    let run = |step: &str| {
        let job = find(&docs, "Job", &format!("wicket-admission-{step}"));
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(strings(&c["command"])[1], step);
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg(step);
        for e in c["env"].as_array().unwrap() {
            match e["value"].as_str() {
                Some(v) => cmd.env(e["name"].as_str().unwrap(), v),
                // NAMESPACE, from the pod's namespace.
                None => cmd.env(e["name"].as_str().unwrap(), "wicket"),
            };
        }
        let out = cmd
            .env("KUBE_API", format!("https://127.0.0.1:{}", api.port))
            .env("KUBE_TOKEN_FILE", dir.path().join("token"))
            .env("KUBE_CA_FILE", dir.path().join("apiserver-ca.crt"))
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "wicket-webhook-cert {step} failed:\n{log}"
        );
        log
    };

    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "wicket");
    assert!(secrets.get_opt("wicket-admission").await.unwrap().is_none());
    let log = run("create");
    assert!(
        log.contains("created Secret wicket/wicket-admission"),
        "{log}"
    );
    let secret = secrets.get("wicket-admission").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.clone().unwrap();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.path().join(key), &data[key].0).unwrap();
    }
    // The certificate is signed by the CA and names the admission Service as
    // the API server calls it.
    let out = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "verify",
            "-CAfile",
            "ca.crt",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "wicket-admission.wicket.svc",
            "tls.crt",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The key matches the certificate (rustls would refuse it otherwise).
    let key = String::from_utf8(data["tls.key"].0.clone()).unwrap();
    let cert = String::from_utf8(data["tls.crt"].0.clone()).unwrap();
    {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a usable serving certificate and key");
    }

    let log = run("patch");
    assert!(log.contains("caBundle of wicket-admission"), "{log}");
    let vwc = Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .get("wicket-admission")
        .await
        .unwrap();
    let hook = &vwc.webhooks.unwrap()[0];
    assert_eq!(
        hook.client_config.ca_bundle.as_ref().unwrap().0,
        data["ca.crt"].0
    );
    // The rest of the webhook is as the chart made it.
    assert_eq!(
        hook.client_config.service.as_ref().unwrap().path.as_deref(),
        Some("/validate-ingress")
    );

    // An upgrade keeps the certificate.
    let log = run("create");
    assert!(log.contains("exists; keeping it"), "{log}");
    let again = secrets.get("wicket-admission").await.unwrap();
    assert_eq!(
        again.metadata.resource_version,
        secret.metadata.resource_version
    );
    run("patch");

    // The hook's account may do nothing else: not list Secrets, not read
    // another one, not touch another webhook configuration.
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "other", "namespace": "wicket"},
                "stringData": {"k": "v"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let hook_client = api.client(&token).await;
    let theirs: Api<Secret> = Api::namespaced(hook_client.clone(), "wicket");
    for denied in [
        theirs.list(&ListParams::default()).await.map(|_| ()),
        theirs.get("other").await.map(|_| ()),
        Api::<Secret>::namespaced(hook_client.clone(), "default")
            .get("any")
            .await
            .map(|_| ()),
        Api::<ValidatingWebhookConfiguration>::all(hook_client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403),
            "{denied:?}"
        );
    }
}

// ------------------------------------------------------------ the image's steps

/// The image's check script, on this machine (after `make test` ran
/// install-runtime.sh and create-user.sh), then `wicket serve` the way the
/// pod runs it: as the user 65532 (when the test runs as root; else as the
/// current non-root user), with no capability at all and no_new_privs
/// (allowPrivilegeEscalation: false), unprivileged ports, and a state folder
/// made inside a folder it does not own (the emptyDir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_steps_and_the_pod_user() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/image/check.sh"))
        .arg(env!("CARGO_BIN_EXE_wicket"))
        .arg(root.join("scripts/image/webhook-cert.sh"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/image/check.sh failed (has `make test` run scripts/install-test-deps.sh?):\n{log}"
    );
    eprint!("{log}");

    let is_root = nix::unistd::geteuid().is_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary where the other user can run it, an empty manifests folder,
    // and an emptyDir-like folder: owned by root, writable by all.
    let bin = d.join("wicket");
    std::fs::copy(env!("CARGO_BIN_EXE_wicket"), &bin).unwrap();
    std::fs::create_dir(d.join("manifests")).unwrap();
    std::fs::create_dir(d.join("emptydir")).unwrap();
    std::fs::set_permissions(d.join("emptydir"), std::fs::Permissions::from_mode(0o777)).unwrap();
    // The temporary files' own volume, mounted inside the first: its mode
    // is not the pod user's to change.
    std::fs::create_dir(d.join("emptydir/tmp")).unwrap();
    std::fs::set_permissions(
        d.join("emptydir/tmp"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(
        d.join("manifests/class.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: wicket}\nspec: {controller: wicket.dev/ingress-controller}\n",
    )
    .unwrap();
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let mut cmd = if is_root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65532",
            "--regid=65532",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
        ])
        .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let logs = d.join("log");
    let mut child = cmd
        .args(["serve", "--manifests"])
        .arg(d.join("manifests"))
        .args(["--http-port", &http.to_string()])
        .args(["--https-port", &https.to_string()])
        .args(["--admin-port", &admin.to_string()])
        .arg("--state-dir")
        .arg(d.join("emptydir/state"))
        .arg("--temp-dir")
        .arg(d.join("emptydir/tmp"))
        .arg("--nginx-binary")
        .arg(nginx_binary())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&logs).unwrap())
        .spawn()
        .unwrap();
    let client = client();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "wicket serve as the pod's user exited ({st}):\n{}",
                std::fs::read_to_string(&logs).unwrap()
            );
        }
        if let Ok(a) = fetch(&client, &format!("http://127.0.0.1:{admin}/readyz")).await
            && a.status == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready:\n{}",
            std::fs::read_to_string(&logs).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = fetch(&client, &format!("http://127.0.0.1:{http}/"))
        .await
        .unwrap();
    assert_eq!(a.status, 404, "nginx answers");
    if is_root {
        // nginx runs as the pod's user, not root.
        let pid = std::fs::read_to_string(d.join("emptydir/state/nginx.pid"))
            .map(|p| p.trim().to_string())
            .unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains("65532")),
            "nginx master {pid}: {status}"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert!(
        st.success(),
        "{st}:\n{}",
        std::fs::read_to_string(&logs).unwrap()
    );
}
