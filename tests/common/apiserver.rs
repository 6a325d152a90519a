//! A real kube-apiserver and etcd for the controller tests, built from the
//! Kubernetes Go modules by `tools/apiserver/build.sh` and cached per
//! machine. Each test starts its own pair on free loopback ports, with RBAC,
//! certificates made here, and static tokens for an admin and for the
//! controller's service account.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;

use super::{PATIENCE, free_port};

pub const ADMIN_TOKEN: &str = "wicket-test-admin-token";
pub const CONTROLLER_TOKEN: &str = "wicket-test-controller-token";
/// The user the controller token authenticates as: the service account the
/// Helm chart's RBAC (`charts/wicket/templates/rbac.yaml`) binds.
pub const CONTROLLER_USER: &str = "system:serviceaccount:wicket:wicket";

/// The folder with kube-apiserver and etcd: `$WICKET_APISERVER_BIN`, else
/// what `tools/apiserver/build.sh` prints (it builds once, then answers from
/// its cache).
pub fn binaries() -> PathBuf {
    super::cached_tool(
        "WICKET_APISERVER_BIN",
        "tools/apiserver/build.sh",
        "the test API server",
    )
}

pub struct ApiServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    etcd: Child,
    apiserver: Option<Child>,
    pub port: u16,
    etcd_port: u16,
    /// Whether the API server was ready once (its port is then known).
    served: bool,
    pub ca_pem: String,
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let bin = binaries();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        // A CA, a serving certificate for 127.0.0.1, a service account key.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wicket test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let sa_key = rcgen::KeyPair::generate().unwrap();
        write(d, "ca.crt", &ca.pem());
        write(d, "apiserver.crt", &cert.pem());
        write(d, "apiserver.key", &key.serialize_pem());
        write(d, "sa.key", &sa_key.serialize_pem());
        write(d, "sa.pub", &sa_key.public_key_pem());
        write(
            d,
            "tokens.csv",
            &format!(
                "{ADMIN_TOKEN},wicket-admin,admin-uid,\"system:masters\"\n{CONTROLLER_TOKEN},{CONTROLLER_USER},controller-uid,\"system:serviceaccounts,system:serviceaccounts:wicket,system:authenticated\"\n"
            ),
        );

        let (etcd_port, peer_port) = (free_port(), free_port());
        let etcd = Command::new(bin.join("etcd"))
            .current_dir(d)
            .args([
                "--name=wicket-test",
                &format!("--data-dir={}", d.join("etcd").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-cluster=wicket-test=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync=true",
                "--log-level=error",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd starts");
        let mut s = ApiServer {
            ca_pem: ca.pem(),
            dir,
            bin,
            etcd,
            apiserver: None,
            port: free_port(),
            etcd_port,
            served: false,
        };
        s.start_apiserver().await;
        s
    }

    fn spawn_apiserver(&mut self) {
        let d = self.dir.path();
        let p = |n: &str| d.join(n).display().to_string();
        let child = Command::new(self.bin.join("kube-apiserver"))
            .current_dir(d)
            .args([
                format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={}", self.port),
                format!("--cert-dir={}", p("certs")),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--token-auth-file={}", p("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-issuer=https://127.0.0.1:{}/", self.port),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--endpoint-reconciler-type=none".into(),
                "--v=0".into(),
            ])
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.join("apiserver.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("kube-apiserver starts");
        self.apiserver = Some(child);
    }

    /// Starts (again) the API server and waits until it is ready.
    pub async fn start_apiserver(&mut self) {
        self.spawn_apiserver();
        let client = super::tls_client(&[&self.ca_pem]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempts = 1;
        loop {
            if let Some(st) = self.apiserver.as_mut().unwrap().try_wait().unwrap() {
                let logs = self.logs();
                // Another test may take the port between free_port() and
                // the bind; only a first start may move to another one.
                if !self.served && attempts < 5 && logs.contains("address already in use") {
                    attempts += 1;
                    self.port = free_port();
                    self.spawn_apiserver();
                    continue;
                }
                panic!("kube-apiserver exited ({st})\n{logs}");
            }
            let url = format!("https://127.0.0.1:{}/readyz", self.port);
            let r = client.get(&url).bearer_auth(ADMIN_TOKEN).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                self.served = true;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 60s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the API server (etcd keeps running): SIGTERM, and SIGKILL if it
    /// still drains open watches after 3 seconds.
    /// Freezes the API server (SIGSTOP): connections stay open and nothing
    /// answers, as with a hung control plane.
    pub fn pause_apiserver(&self) {
        if let Some(c) = &self.apiserver {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
    }

    /// Lets a paused API server go on (SIGCONT).
    pub fn resume_apiserver(&self) {
        if let Some(c) = &self.apiserver {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }

    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(3);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn logs(&self) -> String {
        let tail = |n: &str| {
            let t = std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- kube-apiserver ---\n{}\n--- etcd ---\n{}",
            tail("apiserver.log"),
            tail("etcd.log")
        )
    }

    /// Writes a kubeconfig for a token and returns its path.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        write(
            self.dir.path(),
            &format!("kubeconfig-{}", &token[..16]),
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: user}}\ncurrent-context: test\n",
                self.port
            ),
        )
    }

    pub async fn client(&self, token: &str) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig(token)).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    pub async fn admin(&self) -> kube::Client {
        self.client(ADMIN_TOKEN).await
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.stop_apiserver();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

/// Creates or updates every object of a multi-document YAML with
/// server-side apply, as `kubectl apply --server-side` would.
pub async fn apply(client: &kube::Client, yaml: &str) {
    use serde::Deserialize;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(v).unwrap();
        let tm = obj.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&tm).unwrap();
        let (ar, caps) = pinned_kind(client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = match (&obj.metadata.namespace, caps.scope) {
            (Some(ns), kube::discovery::Scope::Namespaced) => {
                Api::namespaced_with(client.clone(), ns, &ar)
            }
            (None, kube::discovery::Scope::Namespaced) => {
                Api::default_namespaced_with(client.clone(), &ar)
            }
            _ => Api::all_with(client.clone(), &ar),
        };
        let name = obj.metadata.name.clone().expect("a name");
        api.patch(
            &name,
            &PatchParams::apply("wicket-tests").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", tm.kind));
    }
}

pub async fn namespace(client: &kube::Client, name: &str) {
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// Polls `check` until it returns `Some`, for at most [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A non-loopback IPv4 address of this machine: the API server refuses
/// loopback addresses in EndpointSlices, so backends listen here.
pub fn host_ip() -> std::net::Ipv4Addr {
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
        .find(|ip| !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
        .expect("the controller tests need a non-loopback IPv4 address on this machine")
}
