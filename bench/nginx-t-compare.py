#!/usr/bin/env python3
"""`nginx -t` on several configs, alternating, RUNS times each; prints the
median wall time per config. For comparing a config change before making it
(the configs are usually copies of one render with an edit).

    bench/nginx-t-compare.py [--runs 7] [--prefix DIR] A.conf B.conf ...

DIR is nginx's prefix (default: the folder of the first config), where the
relative paths the config names (certs/, tmp/, control/) are found.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--prefix")
    ap.add_argument("configs", nargs="+")
    a = ap.parse_args()
    configs = [os.path.abspath(c) for c in a.configs]
    prefix = os.path.abspath(a.prefix or os.path.dirname(configs[0])) + "/"
    times = {c: [] for c in configs}
    for _ in range(a.runs):
        for c in configs:
            t = time.perf_counter()
            r = subprocess.run(["nginx", "-t", "-q", "-p", prefix, "-c", c],
                               stderr=subprocess.PIPE, text=True)
            times[c].append(time.perf_counter() - t)
            if r.returncode != 0:
                print(f"{c}: nginx -t failed: {r.stderr.strip()[:500]}", file=sys.stderr)
                return 1
    for c in configs:
        v = times[c]
        print(f"{os.path.basename(c)}: median {1000 * statistics.median(v):.0f} ms "
              f"(min {1000 * min(v):.0f}, max {1000 * max(v):.0f}; {os.path.getsize(c)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
