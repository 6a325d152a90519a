//! The Helm chart (`charts/wicket`) rendered by the real helm, and kubectl for
//! server-side dry-runs. Both binaries come from `tools/helm/install.sh`
//! (installed once, then answered from its cache) or
//! `$WICKET_KUBE_TOOLS_BIN`; tests fail, not skip, without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The folder with `helm` and `kubectl`.
pub fn kube_tools() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = super::cached_tool(
            "WICKET_KUBE_TOOLS_BIN",
            "tools/helm/install.sh",
            "helm and kubectl",
        );
        assert!(
            bin.join("helm").is_file() && bin.join("kubectl").is_file(),
            "no helm and kubectl in {}",
            bin.display()
        );
        bin
    })
    .clone()
}

pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/wicket")
}

/// Runs helm with `args` (and HOME-independent caches).
pub fn helm(args: &[&str]) -> Output {
    let cache = std::env::temp_dir().join("wicket-tests-helm");
    Command::new(kube_tools().join("helm"))
        .args(args)
        .env("HELM_CACHE_HOME", cache.join("cache"))
        .env("HELM_CONFIG_HOME", cache.join("config"))
        .env("HELM_DATA_HOME", cache.join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("helm runs")
}

/// `helm template RELEASE charts/wicket -n NAMESPACE [--set S]...`: the
/// manifests, or helm's error.
pub fn try_template(release: &str, namespace: &str, sets: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = helm(&args);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn template(release: &str, namespace: &str, sets: &[&str]) -> String {
    try_template(release, namespace, sets)
        .unwrap_or_else(|e| panic!("helm template with {sets:?} failed:\n{e}"))
}

/// The RBAC the chart renders for the release `wicket` in the namespace
/// `wicket`: the ServiceAccount `wicket` (so the user
/// `system:serviceaccount:wicket:wicket`), its ClusterRole and Role, and
/// their bindings.
pub fn rbac() -> String {
    let chart = chart_dir();
    let out = helm(&[
        "template",
        "wicket",
        chart.to_str().unwrap(),
        "--namespace",
        "wicket",
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ]);
    assert!(
        out.status.success(),
        "helm template (RBAC) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents of a multi-document YAML, as JSON values (empty ones
/// skipped).
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Runs kubectl with a kubeconfig, feeding `stdin`; its own discovery
/// cache, so nothing is read from or written to HOME.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: &str) -> Output {
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(kube_tools().join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache.path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
