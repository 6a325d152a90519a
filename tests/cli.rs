//! The command line (`wicket render`, `wicket check`): stdout, stderr and exit status.

use std::process::Command;

fn wicket(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wicket"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn render_prints_the_config_and_one_line_per_rejected_object() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: good, namespace: x}
spec:
  rules:
  - host: good.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bad, namespace: x}
spec:
  rules:
  - host: "bad.example.com;"
    http: {paths: [{path: "/ok", pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
  - host: "bad2.example.com"
    http: {paths: [{path: "no-slash", pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}]}
"#,
    )
    .unwrap();
    let out = wicket(&["render", "--manifests", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stdout.contains("server_name good.example.com;"), "{stdout}");
    assert!(!stdout.contains("bad"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        vec![
            r#"rejected ingress x/bad: spec.rules[0].host "bad.example.com;": a host may only contain lowercase letters, digits, '-' and '.'; spec.rules[1].http.paths[0].path "no-slash": a path must begin with '/'"#,
            "warning ingress x/good: spec.rules[0].http.paths[0]: service x/web not found; answering 503",
        ]
    );
}

#[test]
fn render_fails_clearly_on_a_missing_folder() {
    let out = wicket(&["render", "--manifests", "/nonexistent/wicket"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("reading /nonexistent/wicket"), "{stderr}");
}

#[test]
fn version_is_printed() {
    let out = wicket(&["--version"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("wicket ")
    );
}

// ------------------------------------------------------------ wicket check

/// A folder with these Ingresses (and a Service for them), as `wicket
/// check` reads it.
fn check_folder(ingresses: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}]}\n",
    );
    for (name, meta) in ingresses {
        text.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: shop\n{meta}spec:\n  rules:\n  - host: {name}.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n"
        ));
    }
    std::fs::write(dir.path().join("all.yaml"), text).unwrap();
    dir
}

fn check(dir: &tempfile::TempDir, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["check", "--manifests", dir.path().to_str().unwrap()];
    args.extend(extra);
    let out = wicket(&args);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const ANN: &str = "nginx.ingress.kubernetes.io";

#[test]
fn check_reports_every_ingress_and_annotation() {
    let dir = check_folder(&[
        ("plain", ""),
        (
            "tuned",
            "  annotations:\n    nginx.ingress.kubernetes.io/proxy-body-size: 8m\n    nginx.ingress.kubernetes.io/rewrite-target: /\n",
        ),
        (
            "cors",
            "  annotations:\n    nginx.ingress.kubernetes.io/enable-opentelemetry: \"true\"\n    example.com/other: x\n",
        ),
        (
            "guarded",
            "  annotations:\n    nginx.ingress.kubernetes.io/auth-snippet: \"return 200;\"\n",
        ),
        (
            "elsewhere",
            "  annotations:\n    kubernetes.io/ingress.class: other\n    nginx.ingress.kubernetes.io/enable-opentelemetry: \"true\"\n",
        ),
    ]);
    let (code, stdout, stderr) = check(&dir, &["--output", "json"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let by_name = |n: &str| {
        report["ingresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing: {stdout}"))
            .clone()
    };
    // Exactly the documented fields.
    assert_eq!(
        by_name("plain"),
        serde_json::json!({"namespace": "shop", "name": "plain", "accepted": true,
            "problems": ["warning spec.rules[0].http.paths[0]: service shop/web:80 has no ready endpoints; answering 503 until it has some"],
            "annotations": []})
    );
    assert_eq!(
        by_name("tuned")["annotations"],
        serde_json::json!([
            {"key": format!("{ANN}/proxy-body-size"), "support": "supported", "note": ""},
            {"key": format!("{ANN}/rewrite-target"), "support": "differs",
             "note": "the target may only hold URI characters and $1..$9 (no other variables)"},
        ])
    );
    assert_eq!(by_name("tuned")["accepted"], true);
    let cors = by_name("cors");
    assert_eq!(cors["accepted"], true);
    assert_eq!(
        cors["annotations"],
        serde_json::json!([{"key": format!("{ANN}/enable-opentelemetry"), "support": "unsupported",
            "note": "Debian's nginx has no OpenTelemetry module"}]),
        "an annotation of another prefix is not listed"
    );
    let guarded = by_name("guarded");
    assert_eq!(guarded["accepted"], false);
    let problems: Vec<&str> = guarded["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("rejected") && p.contains("auth-snippet")),
        "{problems:?}"
    );
    let elsewhere = by_name("elsewhere");
    assert_eq!(elsewhere["accepted"], false);
    assert!(
        elsewhere["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("not served: "),
        "{elsewhere}"
    );

    // The human form: grouped by Ingress, namespace/name first.
    let (code, human, _) = check(&dir, &[]);
    assert_eq!(code, 1);
    assert!(human.contains("shop/plain: accepted\n"), "{human}");
    assert!(human.contains("shop/guarded: rejected\n"), "{human}");
    assert!(human.contains("shop/elsewhere: not served\n"), "{human}");
    assert!(
        human.contains(&format!(
            "shop/tuned: accepted\n  warning spec.rules[0].http.paths[0]: service shop/web:80 has no ready endpoints; answering 503 until it has some\n  {ANN}/proxy-body-size: supported\n  {ANN}/rewrite-target: differs: "
        )),
        "{human}"
    );
    assert!(
        human.ends_with("4 Ingresses served by wicket: 3 accepted, 1 rejected; annotations: 1 supported, 2 differ, 1 unsupported; 1 Ingress of other classes left alone\n"),
        "{human}"
    );
}

#[test]
fn check_exit_codes() {
    // All accepted, nothing unsupported: 0, also with a `differs`.
    let dir = check_folder(&[
        ("a", ""),
        (
            "b",
            "  annotations:\n    nginx.ingress.kubernetes.io/rewrite-target: /\n",
        ),
    ]);
    assert_eq!(check(&dir, &[]).0, 0);
    // --strict fails on a `differs`.
    assert_eq!(check(&dir, &["--strict"]).0, 1);
    let plain = check_folder(&[("a", "")]);
    assert_eq!(check(&plain, &["--strict"]).0, 0);
    // An unsupported annotation fails, even on an accepted Ingress.
    let unsupported = check_folder(&[(
        "a",
        "  annotations:\n    nginx.ingress.kubernetes.io/enable-opentelemetry: \"true\"\n",
    )]);
    assert_eq!(check(&unsupported, &[]).0, 1);
    // A rejected Ingress fails.
    let rejected = check_folder(&[(
        "a",
        "  annotations:\n    nginx.ingress.kubernetes.io/proxy-body-size: lots\n",
    )]);
    let (code, out, _) = check(&rejected, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("shop/a: rejected\n  rejected "), "{out}");
    assert!(out.contains("proxy-body-size"), "{out}");
    // It cannot run: 2, with the reason.
    let (code, _, err) = check(&plain, &["--configmap", "no-slash"]);
    assert_eq!(code, 2, "{err}");
    let missing = tempfile::tempdir().unwrap();
    let gone = missing.path().join("gone");
    let out = wicket(&["check", "--manifests", gone.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading "));
}
