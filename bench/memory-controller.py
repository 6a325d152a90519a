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
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import REPO, WICKET, gen, out_dir, sh, start_apiserver, stop_procs, stop_wicket  # noqa: E402

OUT = out_dir("memory-controller")


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
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    http_port, https_port, admin_port = map(int, sh("free_ports 3").split())
    procs = []
    wicket = None
    try:
        api, kubeconfig = start_apiserver(OUT, procs)

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
        stop_procs(procs)


if __name__ == "__main__":
    sys.exit(main())
