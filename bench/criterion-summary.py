#!/usr/bin/env python3
"""Per-iteration min/median/max of the last `cargo bench --bench pipeline`
run, from criterion's raw samples (target/criterion/pipeline/*/*/new/
sample.json: each sample is a number of iterations and their total time).

    bench/criterion-summary.py [TARGET_DIR]     default: target
"""
import json
import os
import statistics
import sys


def fmt(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.0f} ns"


def main() -> int:
    root = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "target", "criterion", "pipeline")
    rows = []
    for op in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        for n in os.listdir(os.path.join(root, op)):
            p = os.path.join(root, op, n, "new", "sample.json")
            if not n.isdigit() or not os.path.exists(p):
                continue
            s = json.load(open(p))
            per = sorted(t / i for t, i in zip(s["times"], s["iters"]))
            rows.append((op, int(n), per))
    if not rows:
        print(f"no samples under {root}: run cargo bench --bench pipeline first")
        return 1
    print(f"{'bench':8s} {'Ingresses':>9s} {'samples':>7s}  {'min':>9s} {'median':>9s} {'max':>9s}  per Ingress (median)")
    for op, n, per in sorted(rows, key=lambda r: (r[0], r[1])):
        med = statistics.median(per)
        print(f"{op:8s} {n:9d} {len(per):7d}  {fmt(per[0]):>9s} {fmt(med):>9s} {fmt(per[-1]):>9s}  {fmt(med / n)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
