#!/usr/bin/env python3
"""Endpoint churn without reloads (issue 16).

One Service behind one Ingress is scaled from 1 endpoint to --max and back
to 1 in steps of --step while --threads clients send requests without a
pause (HTTP/1.1 keep-alive), in `serve` mode (the EndpointSlice file
replaced) or `controller` mode (EndpointSlices created and deleted through a
real kube-apiserver, see benchlib.start_apiserver). Then --changes more
endpoint changes, each waited for, between two memory readings.

Every endpoint is a port of one backend nginx on one address (127.0.0.1 in
serve mode; this machine's own address in controller mode, since the API
server refuses loopback endpoints), each in an EndpointSlice of its own;
the backend answers with the address and port it was reached on.

Prints: reloads (nginx's worker PIDs before and after, and wicket's log),
failed requests (anything but a 200 from an endpoint, errors included), the
time from each endpoint's change to its first answer, requests answered by
an endpoint more than 1 s after its removal, and the VmRSS of nginx (master
and workers) and of wicket before and after the --changes.

    bench/endpoint-churn.py [--mode serve|controller] [--max 100] [--step 10]
                            [--changes 1000] [--threads 4]

Targets: no reload, no failed request, every new endpoint answering within
1 s of its change; RSS after the changes within 10% of before, for nginx
and for wicket.
"""
import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import REPO, WICKET, out_dir, sh, start_apiserver, stop_procs, stop_wicket  # noqa: E402

HOST = "churn.bench.test"
NS = "churn"


def service_yaml():
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {NS}}}\n"
            f"spec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}\n---\n"
            f"apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: {NS}}}\n"
            f"spec:\n  rules:\n  - host: {HOST}\n    http: {{paths: [{{path: /, pathType: Prefix, "
            f"backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n")


def slice_obj(ip, port):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"web-{port}", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]}


def slices_yaml(ip, ports):
    return "".join(
        f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-{p}, "
        f"namespace: {NS}, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\n"
        f"ports: [{{name: http, port: {p}, protocol: TCP}}]\n"
        f"endpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n" for p in ports)


def own_address():
    for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split():
        if "." in a and not a.startswith("127."):
            return a
    raise SystemExit("no non-loopback IPv4 address on this machine")


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def group(pgid):
    """PIDs of the live processes of a process group."""
    out = set()
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if rest[0] != "Z" and int(rest[2]) == pgid:
            out.add(int(e))
    return out


def unix_get(path, url):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    s.sendall(f"GET {url} HTTP/1.0\r\nHost: wicket\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return data.split(b"\r\n\r\n", 1)[1].decode()


class Load:
    """Clients sending GET / without a pause; every answer recorded."""

    def __init__(self, port, threads):
        self.port, self.stop = port, False
        self.lock = threading.Lock()
        self.answers = []   # (time, endpoint)
        self.failures = []  # (time, what)
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def end(self):
        self.stop = True
        for t in self.threads:
            t.join()

    def run(self):
        c = None
        mine, failed = [], []
        while not self.stop:
            try:
                if c is None:
                    c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/", headers={"Host": HOST})
                r = c.getresponse()
                body = r.read().decode().strip()
                now = time.time()
                if r.status == 200:
                    mine.append((now, body))
                else:
                    failed.append((now, f"status {r.status}"))
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
                    c = None
            except (OSError, http.client.HTTPException) as e:
                failed.append((time.time(), repr(e)))
                c = None
            if len(mine) >= 512 or failed:
                with self.lock:
                    self.answers += mine
                    self.failures += failed
                mine, failed = [], []
        with self.lock:
            self.answers += mine
            self.failures += failed

    def first_after(self, endpoint, t):
        with self.lock:
            return min((a for a, e in self.answers if e == endpoint and a >= t), default=None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["serve", "controller"], default="serve")
    ap.add_argument("--max", type=int, default=100)
    ap.add_argument("--step", type=int, default=10)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between steps")
    a = ap.parse_args()
    if os.environ.get("WICKET_NO_BUILD") != "1":
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)

    out = out_dir(f"endpoint-churn-{a.mode}")
    subprocess.run(["rm", "-rf", out], check=True)
    os.makedirs(out)
    ip = "127.0.0.1" if a.mode == "serve" else own_address()
    http_port, https_port, admin_port = map(int, sh("free_ports 3").split())
    ports = list(map(int, sh(f"free_ports {a.max}").split()))
    endpoint = {p: f"{ip}:{p}" for p in ports}

    # The backend: one nginx answering on every endpoint's port.
    be = os.path.join(out, "backend")
    os.makedirs(os.path.join(be, "tmp"))
    listens = "\n".join(f"        listen {ip}:{p} reuseport backlog=4096;" for p in ports)
    with open(os.path.join(be, "backend.conf"), "w") as f:
        f.write(f"""daemon on;
worker_processes 1;
pid {be}/backend.pid;
error_log {be}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {be}/tmp; proxy_temp_path {be}/tmp; fastcgi_temp_path {be}/tmp;
    uwsgi_temp_path {be}/tmp; scgi_temp_path {be}/tmp;
    keepalive_requests 100000;
    server {{
{listens}
        location / {{ return 200 "$server_addr:$server_port\\n"; }}
    }}
}}
""")
    nginx = sh('printf %s "$NGINX"')
    subprocess.run([nginx, "-p", be, "-c", os.path.join(be, "backend.conf")], check=True)

    procs, wicket, load = [], None, None
    log_path = os.path.join(out, "wicket.log")
    state = os.path.join(out, "state")
    try:
        common = ["--http-port", str(http_port), "--https-port", str(https_port),
                  "--admin-port", str(admin_port), "--state-dir", state]
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
        if a.mode == "serve":
            manifests = os.path.join(out, "manifests")
            os.makedirs(manifests)
            with open(os.path.join(manifests, "web.yaml"), "w") as f:
                f.write(service_yaml())

            def set_endpoints(live):
                tmp = os.path.join(manifests, ".slices.tmp")
                with open(tmp, "w") as f:
                    f.write(slices_yaml(ip, live))
                os.rename(tmp, os.path.join(manifests, "slices.yaml"))

            set_endpoints(ports[:1])
            cmd = [WICKET, "serve", "--manifests", manifests] + common
        else:
            api, kubeconfig = start_apiserver(out, procs)
            api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": NS}})
            api.post(f"/api/v1/namespaces/{NS}/services", {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
                "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}})
            api.post(f"/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses", {
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "web", "namespace": NS},
                "spec": {"rules": [{"host": HOST, "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
            slices = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
            current = set()

            def set_endpoints(live):
                for p in live:
                    if p not in current:
                        api.post(slices, slice_obj(ip, p))
                for p in sorted(current - set(live)):
                    code, body = api.send("DELETE", f"{slices}/web-{p}", {})
                    if code not in (200, 202):
                        raise SystemExit(f"DELETE web-{p}: {code} {body[:200]!r}")
                current.clear()
                current.update(live)

            set_endpoints(ports[:1])
            env["KUBECONFIG"] = kubeconfig
            cmd = [WICKET, "controller", "--namespace", "default", "--watch-ingress-without-class", "true",
                   "--publish-status-address", "192.0.2.1"] + common
        wicket = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"),
                                  env=env, start_new_session=True)
        deadline = time.time() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if wicket.poll() is not None or time.time() > deadline:
                raise SystemExit(f"wicket not ready; see {log_path}")
            time.sleep(0.1)
        status_socket = os.path.join(state, "control", "wicket-status.sock")

        def nginx_pids():
            with open(os.path.join(state, "nginx.pid")) as f:
                return group(int(f.read().strip()))

        load = Load(http_port, a.threads)
        load.start()
        time.sleep(1)
        before = nginx_pids()
        reloads_before = open(log_path).read().count("reloaded nginx")

        # 1 -> max -> 1 in steps.
        counts = list(range(1 + a.step, a.max + 1, a.step))
        if counts[-1] != a.max:
            counts.append(a.max)
        counts += list(range(a.max - a.step, 0, -a.step))
        if counts[-1] != 1:
            counts.append(1)
        live = ports[:1]
        latencies, missing, late = [], [], 0
        for n in counts:
            new = ports[:n]
            added = [p for p in new if p not in live]
            removed = [p for p in live if p not in new]
            t = time.time()
            set_endpoints(new)
            live = new
            time.sleep(a.settle)
            for p in added:
                first = load.first_after(endpoint[p], t)
                if first is None:
                    missing.append(endpoint[p])
                else:
                    latencies.append(first - t)
            with load.lock:
                late += sum(1 for at, e in load.answers
                            if at > t + 1 and e in {endpoint[p] for p in removed})
            print(f"  {len(new):3d} endpoints (+{len(added)} -{len(removed)}): "
                  f"{len(load.answers)} answers, {len(load.failures)} failed so far", flush=True)
        after = nginx_pids()
        reloads = open(log_path).read().count("reloaded nginx") - reloads_before

        # Memory: --changes more changes, each waited for.
        with open(os.path.join(state, "nginx.pid")) as f:
            master = int(f.read().strip())

        def memory():
            return sum(rss_mib(p) for p in group(master)), rss_mib(wicket.pid)

        set_endpoints(ports[: a.max // 2])
        time.sleep(a.settle)
        mem_before = memory()

        def version():
            return int(unix_get(status_socket, "/wicket/endpoints").split()[3])

        t0 = time.time()
        for k in range(a.changes):
            v = version()
            # Alternate between two sets of the same size.
            half = a.max // 2
            set_endpoints(ports[:half] if k % 2 else ports[1: half + 1])
            deadline = time.time() + 5
            while version() == v and time.time() < deadline:
                time.sleep(0.005)
        changes_s = time.time() - t0
        set_endpoints(ports[: a.max // 2])
        time.sleep(a.settle)
        mem_after = memory()
        load.end()
        load_end = time.time()

        answered = len(load.answers)
        print()
        print(f"endpoint churn ({a.mode} mode): 1 -> {a.max} -> 1 endpoints in steps of {a.step}, "
              f"{a.threads} clients, {a.settle:.1f}s between steps")
        print(f"  reloads: {reloads} (wicket's log); nginx processes "
              f"{'unchanged' if before == after else 'CHANGED'} ({len(before)} before, {len(after)} after)")
        print(f"  requests: {answered} answered by an endpoint, {len(load.failures)} failed")
        for at, what in load.failures[:5]:
            print(f"    failed at +{at - t0:.1f}s: {what}")
        if latencies:
            lat = sorted(latencies)
            print(f"  change to first answer of a new endpoint ({len(lat)} endpoints): "
                  f"median {statistics.median(lat) * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; "
                  f"never answered: {len(missing)}")
        print(f"  answers from removed endpoints more than 1 s after their removal: {late}")
        print(f"  {a.changes} more changes in {changes_s:.1f}s (load until +{load_end - t0:.0f}s):")
        for name, b, f in (("nginx", mem_before[0], mem_after[0]), ("wicket", mem_before[1], mem_after[1])):
            print(f"    {name} VmRSS {b:.1f} -> {f:.1f} MiB ({(f / b - 1) * 100:+.1f}%)")
        ok = (reloads == 0 and before == after and not load.failures and not missing
              and latencies and max(latencies) <= 1.0
              and all(f <= b * 1.1 for b, f in zip(mem_before, mem_after)))
        print(f"  targets: {'PASS' if ok else 'FAIL'}")
        return 0
    finally:
        if load is not None:
            load.stop = True
        stop_wicket(wicket, log_path)
        stop_procs(procs)
        sh(f'stop_backend "{be}"')


if __name__ == "__main__":
    sys.exit(main())
