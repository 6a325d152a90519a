"""What the Python benchmark scripts share: where things are, the manifest
generator, and the shell helpers of lib.sh."""
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
gen = __import__("gen-manifests")
WICKET = os.environ.get("WICKET", os.path.join(REPO, "target/release/wicket"))


def out_dir(name: str) -> str:
    """target/bench-out/NAME, where a script keeps what it wrote."""
    return os.path.join(REPO, "target/bench-out", name)


def sh(cmd: str) -> str:
    """Runs CMD in bash after sourcing lib.sh; returns its stdout."""
    return subprocess.run(["bash", "-c", f'. "{HERE}/lib.sh"; {cmd}'],
                          check=True, capture_output=True, text=True).stdout.strip()


def stop_wicket(wicket, log_path: str) -> None:
    """SIGTERM to a wicket process (SIGKILL after 30 s), then make sure the
    nginx it started (named in its log) is gone too."""
    if wicket is None:
        return
    if wicket.poll() is None:
        wicket.send_signal(signal.SIGTERM)
        try:
            wicket.wait(30)
        except subprocess.TimeoutExpired:
            wicket.kill()
    sh(f'stop_nginx_of "{log_path}"')

TOKEN = "wicket-bench-admin-token"


class Api:
    def __init__(self, port, ca):
        self.port = port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=60)
        return c

    def post(self, path, body):
        for attempt in range(5):
            try:
                c = self.conn()
                c.request("POST", path, json.dumps(body), {
                    "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                if r.status in (200, 201, 409):
                    return
                if r.status in (429, 500, 503, 504):
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise RuntimeError(f"POST {path}: {r.status} {data[:300]!r}")
            except (OSError, http.client.HTTPException):
                self.local.c = None
                time.sleep(0.2)
        raise RuntimeError(f"POST {path}: gave up")

    def send(self, method, path, body, content_type="application/json"):
        """One request with the admin token; returns (status, body)."""
        c = self.conn()
        try:
            c.request(method, path, json.dumps(body), {
                "Authorization": f"Bearer {TOKEN}", "Content-Type": content_type})
            r = c.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            self.local.c = None
            raise

    def get(self, path):
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        try:
            c.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()



def start_apiserver(out: str, procs: list):
    """etcd and kube-apiserver (binaries from tools/apiserver/build.sh, the
    flags of tests/common/apiserver.rs) with their files under OUT, appended
    to PROCS (the caller stops them); returns (Api, kubeconfig path) once the
    API server is ready."""
    binp = os.environ.get("WICKET_APISERVER_BIN") or subprocess.run(
        [os.path.join(REPO, "tools/apiserver/build.sh")], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1]
    pki = os.path.join(out, "pki")
    os.makedirs(pki)
    run = lambda *c: subprocess.run(c, cwd=pki, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", "1", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=wicket-bench-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    with open(os.path.join(pki, "ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver")
    run("openssl", "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "ext", "-out", "apiserver.crt")
    run("openssl", "genrsa", "-out", "sa.key", "2048")
    run("openssl", "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
    with open(os.path.join(pki, "tokens.csv"), "w") as f:
        f.write(f'{TOKEN},wicket-admin,admin-uid,"system:masters"\n')

    etcd_port, peer_port, api_port = map(int, sh("free_ports 3").split())
    procs.append(subprocess.Popen([
        f"{binp}/etcd", "--name=bench", f"--data-dir={out}/etcd",
        f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
        f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=bench=http://127.0.0.1:{peer_port}",
        "--unsafe-no-fsync=true", "--log-level=error", "--quota-backend-bytes=4294967296"],
        stdout=subprocess.DEVNULL, stderr=open(f"{out}/etcd.log", "w")))
    p = lambda n: os.path.join(pki, n)  # noqa: E731
    procs.append(subprocess.Popen([
        f"{binp}/kube-apiserver", f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
        f"--cert-dir={out}/apiserver-certs", f"--tls-cert-file={p('apiserver.crt')}",
        f"--tls-private-key-file={p('apiserver.key')}", f"--client-ca-file={p('ca.crt')}",
        f"--token-auth-file={p('tokens.csv')}", "--authorization-mode=RBAC",
        f"--service-account-issuer=https://127.0.0.1:{api_port}/",
        f"--service-account-key-file={p('sa.pub')}", f"--service-account-signing-key-file={p('sa.key')}",
        "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
        "--disable-admission-plugins=ServiceAccount", "--endpoint-reconciler-type=none", "--v=0"],
        stdout=subprocess.DEVNULL, stderr=open(f"{out}/kube-apiserver.log", "w")))
    api = Api(api_port, p("ca.crt"))
    deadline = time.time() + 120
    while True:
        try:
            if api.get("/readyz")[0] == 200:
                break
        except OSError:
            pass
        if time.time() > deadline or any(x.poll() is not None for x in procs):
            raise SystemExit("kube-apiserver not ready; see " + out)
        time.sleep(0.3)
    print(f"kube-apiserver ready on {api_port}")
    kubeconfig = os.path.join(out, "kubeconfig")
    with open(kubeconfig, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "bench",
                   "clusters": [{"name": "bench", "cluster": {
                       "server": f"https://127.0.0.1:{api_port}",
                       "certificate-authority": p("ca.crt")}}],
                   "users": [{"name": "admin", "user": {"token": TOKEN}}],
                   "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "admin"}}]}, f)
    return api, kubeconfig


def stop_procs(procs: list) -> None:
    """Stops what start_apiserver started, last first."""
    for x in reversed(procs):
        x.terminate()
        try:
            x.wait(30)
        except subprocess.TimeoutExpired:
            x.kill()
