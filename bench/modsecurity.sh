#!/usr/bin/env bash
# ModSecurity's cost (issue 12): with TOTAL Ingresses (two locations each)
# of which K carry enable-owasp-core-rules, the time of `nginx -t` on the
# config `wicket serve` wrote, and the resident memory of the nginx master
# and of one worker once ready. libmodsecurity parses a rules file each time
# a `modsecurity_rules_file` names it; wicket names the CRS once, at the
# http level, so K should barely matter (every location still gets a copy
# of the http level's rule pointers when the module merges its config).
#
#   bench/modsecurity.sh [K...]      default K = 0 1 200; TOTAL=1000
#   WICKET=target/debug/wicket WICKET_NO_BUILD=1 bench/modsecurity.sh
#   ANNOTATION=enable-modsecurity bench/modsecurity.sh 200   (no CRS)
#
# K=0 loads no module at all (nothing asks for ModSecurity): the baseline.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

TOTAL=${TOTAL:-1000}
ANNOTATION=${ANNOTATION:-enable-owasp-core-rules}
ks=("$@")
[[ ${#ks[@]} -gt 0 ]] || ks=(0 1 200)
ensure_wicket
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
out=$REPO/target/bench-out/modsecurity
pid=
cleanup() { [[ -z $pid ]] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }; }
trap cleanup EXIT
trap 'exit 130' INT TERM
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$2/status"; }

printf '%-6s %-6s %-12s %-14s %-14s %s\n' TOTAL K "nginx -t s" "master RSS MiB" "worker RSS MiB" "CRS files named"
for k in "${ks[@]}"; do
  rm -rf "$out"; mkdir -p "$out/state"
  python3 "$BENCH_DIR/gen-manifests.py" --count "$TOTAL" --out "$out/manifests" >/dev/null
  # The first K Ingresses ask for the core rules (or $ANNOTATION).
  for ((i = 0; i < k; i++)); do
    f=$(printf '%s/manifests/app-%06d.yaml' "$out" "$i")
    sed -i '0,/^spec:/s//  annotations:\n    nginx.ingress.kubernetes.io\/'"$ANNOTATION"': "true"\nspec:/' "$f"
  done
  read -r http https admin < <(free_ports 3)
  NO_COLOR=1 "$WICKET" serve --manifests "$out/manifests" --state-dir "$out/state" \
    --http-port "$http" --https-port "$https" --admin-port "$admin" >/dev/null 2>"$out/wicket.log" &
  pid=$!
  for _ in $(seq 2400); do
    curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz" && break
    kill -0 "$pid" 2>/dev/null || die "wicket exited: $(tail -5 "$out/wicket.log")"
    sleep 0.05
  done
  curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz" || die "not ready: $(tail -5 "$out/wicket.log")"
  sleep 1
  master=$(cat "$out/state/nginx.pid")
  worker=$(pgrep -P "$master" | head -1)
  mrss=$(( $(kib VmRSS "$master") / 1024 ))
  wrss=$(( $(kib VmRSS "$worker") / 1024 ))
  times=()
  for _ in 1 2 3; do
    t0=$(now_ns)
    (cd "$out/state" && "$NGINX" -t -q -p "$out/state" -c "$out/state/nginx.conf" 2>/dev/null) || die "nginx -t failed"
    times+=("$(echo "scale=3; ($(now_ns) - t0) / 1000000000" | sed "s/t0/$t0/" | bc)")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)
  named=$(grep -c 'wicket-crs.conf' "$out/state/nginx.conf" || true)
  printf '%-6s %-6s %-12s %-14s %-14s %s\n' "$TOTAL" "$k" "$median" "$mrss" "$wrss" "$named"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
