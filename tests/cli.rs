//! The `wicket render` command line: stdout, stderr and exit status.

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
