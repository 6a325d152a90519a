#!/usr/bin/env python3
"""Change to traffic (issue 5, target 2).

`wicket serve` (release) with 1,000 generated Ingresses and a real backend
(one nginx answering 200, with the address it was reached on, on every
127.1.x.y:PORT the EndpointSlices name). Then, CHANGES times: write a new
Ingress file (a new host, its own Service and EndpointSlice) and time until a
request for the new host answers 200 *from its own endpoint address*.
Meanwhile a paced loop of requests to existing hosts (a new connection each,
the body checked) counts every failure.

Each change is broken down with wicket's `reloaded nginx` log line:
  before-build = (log time - total_ms) - file written   (debounce, notify,
                  re-reading the file, the snapshot)
  build_ms, render_ms, write_ms, nginx_test_ms, reload_ms (from the line)
  first-answer = 200 seen - log time (the poll is every 2 ms)

    bench/change-to-traffic.py [--ingresses 1000] [--changes 10] [--debounce-ms MS]
                               [--templates DIR] [--annotated]

Targets: median <= 300 ms, none over 2 s, no failed request.
"""
import argparse
import http.client
import os
import shlex
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import REPO, WICKET, gen, out_dir, sh, stop_wicket  # noqa: E402

OUT = out_dir("change-to-traffic")


def get(port: int, host: str, path: str = "/", timeout: float = 2.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace").strip()
    finally:
        c.close()


LINE = re.compile(r"^(\S+)\s+INFO\s+\S+ (reloaded|started) nginx (.*)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def reload_lines(path: str):
    """[(unix time, {field: int})] for each started/reloaded line."""
    out = []
    with open(path, errors="replace") as f:
        for raw in f:
            m = LINE.match(ANSI.sub("", raw.strip()))
            if not m:
                continue
            ts = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            fields = dict(kv.split("=", 1) for kv in m.group(3).split() if "=" in kv)
            out.append((ts, m.group(2), {k: int(v) for k, v in fields.items() if v.isdigit()}))
    return out


class Load(threading.Thread):
    """Requests to existing hosts, paced, a new connection each."""

    def __init__(self, port, hosts, interval):
        super().__init__(daemon=True)
        self.port, self.hosts, self.interval = port, hosts, interval
        self.ok = self.failed = 0
        self.failures = []
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set():
            idx = self.hosts[i % len(self.hosts)]
            i += 1
            try:
                status, body = get(self.port, gen.host(idx))
                good = status == 200 and body == gen.address(idx)
                detail = f"{status} {body[:40]!r}"
            except Exception as e:  # noqa: BLE001 - any failure counts
                good, detail = False, repr(e)
            if good:
                self.ok += 1
            else:
                self.failed += 1
                self.failures.append((time.time(), gen.host(idx), detail))
            self.stop.wait(self.interval)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingresses", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--debounce-ms", type=int, help="passed to wicket serve (default: wicket's own)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between changes")
    ap.add_argument("--load-interval", type=float, default=0.005, help="seconds between load requests")
    ap.add_argument("--backend-port", type=int, default=18080)
    ap.add_argument("--templates", help="passed to wicket serve as --templates")
    ap.add_argument("--annotated", action="store_true",
                    help="every Ingress (and every new one) carries five typical annotations")
    a = ap.parse_args()

    if os.environ.get("WICKET_NO_BUILD") != "1":
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    src = sh(f"ANNOTATED={int(a.annotated)} manifests {a.ingresses}")
    shutil.rmtree(OUT, ignore_errors=True)
    manifests = os.path.join(OUT, "manifests")
    shutil.copytree(src, manifests)
    backend = os.path.join(OUT, "backend")
    http_port, https_port, admin_port = map(int, sh("free_ports 3").split())
    log_path = os.path.join(OUT, "wicket.log")

    sh(f'start_backend "{backend}" {a.backend_port} 1')
    wicket = None
    load = None
    try:
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
        with open(log_path, "w") as logf:
            t_start = time.time()
            wicket = subprocess.Popen(
                [WICKET, "serve", "--manifests", manifests,
                 "--http-port", str(http_port), "--https-port", str(https_port),
                 "--admin-port", str(admin_port)]
                + (["--debounce-ms", str(a.debounce_ms)] if a.debounce_ms is not None else [])
                + (["--templates", a.templates] if a.templates else [])
                + shlex.split(os.environ.get("WICKET_ARGS", "")),
                stdout=subprocess.DEVNULL, stderr=logf, env=env, start_new_session=True)
        deadline = time.time() + 120
        while True:
            try:
                status, _ = get(admin_port, "wicket", "/readyz", timeout=1)
                if status == 200:
                    break
            except OSError:
                pass
            if wicket.poll() is not None or time.time() > deadline:
                print(open(log_path).read()[-3000:], file=sys.stderr)
                raise SystemExit("wicket serve did not become ready")
            time.sleep(0.02)
        t_ready = time.time() - t_start
        status, body = get(http_port, gen.host(0))
        assert status == 200 and body == gen.address(0), (status, body)
        print(f"wicket serve ready with {a.ingresses} Ingresses in {t_ready:.2f}s "
              f"(http {http_port}, backend 127.1.x.y:{a.backend_port})")

        load = Load(http_port, list(range(a.ingresses)), a.load_interval)
        load.start()
        time.sleep(a.pause)
        results = []
        for k in range(a.changes):
            idx = a.ingresses + k
            before = len(reload_lines(log_path))
            t0 = time.time()
            gen.write(manifests, idx, a.backend_port, annotated=a.annotated)
            host, want = gen.host(idx), gen.address(idx)
            while True:
                try:
                    status, body = get(http_port, host, timeout=2)
                except OSError:
                    status, body = 0, ""
                if status == 200 and body == want:
                    break
                if time.time() - t0 > 30:
                    raise SystemExit(f"{host} did not answer from {want} within 30 s (last {status} {body!r})")
                time.sleep(0.002)
            t1 = time.time()
            time.sleep(0.2)  # let the log line land
            lines = reload_lines(log_path)[before:]
            row = {"total": (t1 - t0) * 1000}
            if lines:
                ts, _, f = lines[0]
                row.update({k: f.get(k, 0) for k in ("build_ms", "render_ms", "write_ms", "nginx_test_ms", "reload_ms", "total_ms")})
                row["before_build"] = (ts - f.get("total_ms", 0) / 1000 - t0) * 1000
                row["first_answer"] = (t1 - ts) * 1000
                row["reloads"] = len(lines)
            results.append(row)
            print(f"change {k + 1:2d}: {row['total']:7.1f} ms  " + "  ".join(
                f"{k}={row[k]:.0f}" for k in ("before_build", "build_ms", "render_ms", "write_ms",
                                              "nginx_test_ms", "reload_ms", "first_answer") if k in row))
            time.sleep(a.pause)
        load.stop.set()
        load.join()
    finally:
        if load:
            load.stop.set()
        stop_wicket(wicket, log_path)
        sh(f'stop_backend "{backend}"')

    totals = [r["total"] for r in results]
    print()
    print(f"change to traffic, {a.changes} changes over {a.ingresses} Ingresses (debounce "
          + (f"{a.debounce_ms} ms" if a.debounce_ms is not None else "wicket's default")
          + (f", templates {a.templates}" if a.templates else "") + "):")
    print(f"  total ms min/median/max {min(totals):.1f}/{statistics.median(totals):.1f}/{max(totals):.1f}")
    parts = ["before_build", "build_ms", "render_ms", "write_ms", "nginx_test_ms", "reload_ms", "first_answer"]
    med = {}
    for p in parts:
        v = [r[p] for r in results if p in r]
        if v:
            med[p] = statistics.median(v)
            print(f"  {p:14s} ms min/median/max {min(v):7.1f}/{med[p]:7.1f}/{max(v):7.1f}")
    if med:
        big = max(med, key=med.get)
        print(f"  largest part (median): {big} ({med[big]:.0f} ms)")
    print(f"  requests to existing hosts: {load.ok} ok, {load.failed} failed")
    for f in load.failures[:10]:
        print(f"    failure at {f[0]:.3f} {f[1]}: {f[2]}")
    ok_med = statistics.median(totals) <= 300
    ok_max = max(totals) <= 2000
    print(f"  target median <= 300 ms: {'PASS' if ok_med else 'FAIL'}; none over 2 s: "
          f"{'PASS' if ok_max else 'FAIL'}; no failed request: {'PASS' if load.failed == 0 else 'FAIL'}")
    print(f"  wicket log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
