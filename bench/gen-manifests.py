#!/usr/bin/env python3
"""Generates the benchmark manifests: N Ingresses, one file each.

Ingress i (0-based) lives in namespace bench-(i % NAMESPACES), is named
app-i, serves host app-i.bench.test with two paths -- `/` (Prefix) and
`/healthz` (Exact) -- both to its own Service app-i (port 80, named http),
whose EndpointSlice app-i-1 has one ready endpoint: 127.1.X.Y:PORT, a
distinct loopback address per Ingress (see `address`), all on one port so a
single backend listening on 0.0.0.0:PORT answers for all of them.

    gen-manifests.py --count N --out DIR [--start S] [--port P] [--namespaces 50]
                     [--annotated]

--annotated gives every Ingress five typical ingress-nginx annotations
(ANNOTATIONS: proxy-body-size, proxy-read-timeout, ssl-redirect,
rewrite-target, enable-cors).

--start S writes Ingresses S..S+N-1 (used to add new Ingresses to a folder
that already holds 0..S-1). The folder is created if missing; existing files
of the same names are overwritten; nothing else in it is touched. Output is
deterministic.
"""
import argparse
import os
import sys

NAMESPACES = 50


def address(i: int) -> str:
    """A distinct loopback address per index (127.1.0.1 .. 127.255.255.254)."""
    block, host = divmod(i, 254)
    hi, mid = divmod(block, 256)
    if hi > 254:
        raise ValueError("index too large")
    return f"127.{hi + 1}.{mid}.{host + 1}"


def namespace(i: int, namespaces: int = NAMESPACES) -> str:
    return f"bench-{i % namespaces}"


def host(i: int) -> str:
    return f"app-{i}.bench.test"


# Five annotations an Ingress moved from ingress-nginx typically carries.
ANNOTATIONS = {
    "nginx.ingress.kubernetes.io/proxy-body-size": "8m",
    "nginx.ingress.kubernetes.io/proxy-read-timeout": "120",
    "nginx.ingress.kubernetes.io/ssl-redirect": "false",
    "nginx.ingress.kubernetes.io/rewrite-target": "/",
    "nginx.ingress.kubernetes.io/enable-cors": "true",
}


def manifest(i: int, port: int, namespaces: int = NAMESPACES, annotated: bool = False) -> str:
    ns = namespace(i, namespaces)
    name = f"app-{i}"
    meta = ""
    if annotated:
        meta = "  annotations:\n" + "".join(f'    {k}: "{v}"\n' for k, v in ANNOTATIONS.items())
    return f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: {ns}
{meta}spec:
  rules:
  - host: {host(i)}
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service: {{name: {name}, port: {{number: 80}}}}
      - path: /healthz
        pathType: Exact
        backend:
          service: {{name: {name}, port: {{name: http}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
- addresses: [{address(i)}]
  conditions: {{ready: true}}
"""


def write(out: str, i: int, port: int, namespaces: int = NAMESPACES, annotated: bool = False) -> str:
    """Writes Ingress i atomically (temp file + rename); returns the path."""
    path = os.path.join(out, f"app-{i:06d}.yaml")
    tmp = os.path.join(out, f".app-{i:06d}.yaml.tmp")
    with open(tmp, "w") as f:
        f.write(manifest(i, port, namespaces, annotated))
    os.rename(tmp, path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--namespaces", type=int, default=NAMESPACES)
    ap.add_argument("--annotated", action="store_true", help="five typical annotations on every Ingress")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for i in range(a.start, a.start + a.count):
        write(a.out, i, a.port, a.namespaces, a.annotated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
