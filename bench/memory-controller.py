#!/usr/bin/env python3
"""Memory in controller mode (issue 5, target 4).

Starts etcd and kube-apiserver (binaries from tools/apiserver/build.sh, the
flags of tests/common/apiserver.rs), creates N Ingresses with their Services
(headless, so no cluster IP is allocated) and EndpointSlices over 50
namespaces through the API with concurrent requests (the same objects as
bench/gen-manifests.py, except the endpoint addresses: the API server refuses
loopback ones, so they are 198.18.x.y, the benchmarking range; no request is
ever sent to them), then runs `wicket controller` (release) and samples the
VmRSS/VmHWM of the wicket process (nginx not counted) from /proc once it is
ready and while it writes the Ingress statuses.

    bench/memory-controller.py [--ingresses 10000] [--concurrency 16] [--watch 60]
                               [--templates DIR]

Target: <= 150 MiB resident.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import REPO, WICKET, gen, out_dir, sh, stop_wicket  # noqa: E402

OUT = out_dir("memory-controller")
TOKEN = "wicket-bench-admin-token"


def bench_address(i):
    block, host = divmod(i, 254)
    return f"198.{18 + block // 256}.{block % 256}.{host + 1}"


def objects(i):
    ns, name = gen.namespace(i), f"app-{i}"
    ing = {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"rules": [{"host": gen.host(i), "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": name, "port": {"number": 80}}}},
            {"path": "/healthz", "pathType": "Exact",
             "backend": {"service": {"name": name, "port": {"name": "http"}}}}]}}]},
    }
    svc = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    eps = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-1", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [bench_address(i)], "conditions": {"ready": True}}],
    }
    return [
        (f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses", ing),
        (f"/api/v1/namespaces/{ns}/services", svc),
        (f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", eps),
    ]


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

    def get(self, path):
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        try:
            c.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingresses", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--watch", type=int, default=60, help="seconds of sampling after ready")
    ap.add_argument("--templates", help="passed to wicket controller as --templates")
    ap.add_argument("--ready-timeout", type=int, default=180, help="seconds to wait for /readyz")
    a = ap.parse_args()

    if os.environ.get("WICKET_NO_BUILD") != "1":
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    binp = os.environ.get("WICKET_APISERVER_BIN") or subprocess.run(
        [os.path.join(REPO, "tools/apiserver/build.sh")], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1]
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    pki = os.path.join(OUT, "pki")
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

    etcd_port, peer_port, api_port, http_port, https_port, admin_port = map(int, sh("free_ports 6").split())
    procs = []
    wicket = None
    try:
        procs.append(subprocess.Popen([
            f"{binp}/etcd", "--name=bench", f"--data-dir={OUT}/etcd",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=bench=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true", "--log-level=error", "--quota-backend-bytes=4294967296"],
            stdout=subprocess.DEVNULL, stderr=open(f"{OUT}/etcd.log", "w")))
        p = lambda n: os.path.join(pki, n)  # noqa: E731
        procs.append(subprocess.Popen([
            f"{binp}/kube-apiserver", f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--cert-dir={OUT}/apiserver-certs", f"--tls-cert-file={p('apiserver.crt')}",
            f"--tls-private-key-file={p('apiserver.key')}", f"--client-ca-file={p('ca.crt')}",
            f"--token-auth-file={p('tokens.csv')}", "--authorization-mode=RBAC",
            f"--service-account-issuer=https://127.0.0.1:{api_port}/",
            f"--service-account-key-file={p('sa.pub')}", f"--service-account-signing-key-file={p('sa.key')}",
            "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount", "--endpoint-reconciler-type=none", "--v=0"],
            stdout=subprocess.DEVNULL, stderr=open(f"{OUT}/kube-apiserver.log", "w")))
        api = Api(api_port, p("ca.crt"))
        deadline = time.time() + 120
        while True:
            try:
                if api.get("/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or any(x.poll() is not None for x in procs):
                raise SystemExit("kube-apiserver not ready; see " + OUT)
            time.sleep(0.3)
        print(f"kube-apiserver ready on {api_port}")

        for k in range(gen.NAMESPACES):
            api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": f"bench-{k}"}})
        work = [o for i in range(a.ingresses) for o in objects(i)]
        t0 = time.time()
        lock = threading.Lock()
        pos = [0]
        errors = []

        def worker():
            while True:
                with lock:
                    if pos[0] >= len(work) or errors:
                        return
                    j = pos[0]
                    pos[0] += 1
                try:
                    api.post(*work[j])
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
                    return

        threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit(f"creating objects: {errors[0]}")
        print(f"created {len(work)} objects in {time.time() - t0:.0f}s")

        kubeconfig = os.path.join(OUT, "kubeconfig")
        with open(kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "bench",
                       "clusters": [{"name": "bench", "cluster": {
                           "server": f"https://127.0.0.1:{api_port}",
                           "certificate-authority": p("ca.crt")}}],
                       "users": [{"name": "admin", "user": {"token": TOKEN}}],
                       "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "admin"}}]}, f)
        env = dict(os.environ, KUBECONFIG=kubeconfig, NO_COLOR="1", RUST_LOG="info")
        t0 = time.time()
        wicket = subprocess.Popen([
            WICKET, "controller", "--http-port", str(http_port), "--https-port", str(https_port),
            "--admin-port", str(admin_port), "--namespace", "default",
            "--watch-ingress-without-class", "true", "--publish-status-address", "192.0.2.1"]
            + (["--templates", a.templates] if a.templates else []),
            stdout=subprocess.DEVNULL, stderr=open(f"{OUT}/wicket.log", "w"), env=env,
            start_new_session=True)
        samples = []
        ready_at = None
        while True:
            if wicket.poll() is not None:
                raise SystemExit("wicket controller exited; see " + f"{OUT}/wicket.log")
            s = status(wicket.pid)
            s.setdefault("VmRSS", 0)
            s.setdefault("VmHWM", 0)
            samples.append((time.time() - t0, s))
            if ready_at is None:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1)
                    c.request("GET", "/readyz")
                    if c.getresponse().status == 200:
                        ready_at = time.time() - t0
                        print(f"wicket controller ready after {ready_at:.1f}s: "
                              f"VmRSS {s['VmRSS']:.0f} MiB, VmHWM {s['VmHWM']:.0f} MiB")
                except OSError:
                    pass
            elif time.time() - t0 > ready_at + a.watch:
                break
            if ready_at is None and time.time() - t0 > a.ready_timeout:
                print(f"NOT READY after {a.ready_timeout}s (figures taken anyway)")
                ready_at = time.time() - t0 - a.watch
                break
            time.sleep(1)
        last = samples[-1][1]
        rss = [s.get("VmRSS", 0) for t, s in samples if t >= ready_at] or [0]
        print(f"after {a.watch}s more: VmRSS {last['VmRSS']:.0f} MiB, VmHWM {last['VmHWM']:.0f} MiB "
              f"(VmRSS sampled each second after ready: min {min(rss):.0f} max {max(rss):.0f} MiB)")
        statuses = sum(1 for line in open(f"{OUT}/wicket.log") if "status" in line.lower())
        print(f"  target <= 150 MiB resident: {'PASS' if last['VmHWM'] <= 150 else 'FAIL'} "
              f"(peak VmHWM {last['VmHWM']:.0f} MiB); wicket log lines mentioning status: {statuses}")
    finally:
        stop_wicket(wicket, os.path.join(OUT, "wicket.log"))
        for x in reversed(procs):
            x.terminate()
            try:
                x.wait(30)
            except subprocess.TimeoutExpired:
                x.kill()


if __name__ == "__main__":
    sys.exit(main())
