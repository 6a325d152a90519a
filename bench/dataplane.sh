#!/usr/bin/env bash
# Data plane (issue 5, target 3): requests/second through the config wicket
# generates for a plain Prefix route (`/` of app-0.bench.test) against a
# minimal hand-written reverse proxy for the same route
# (bench/dataplane/hand.conf.in: upstream keepalive, HTTP/1.1, the same
# forwarded headers), the same nginx binary, the same backend (a separate
# nginx with `return 200`), with wrk. Runs alternate (hand, generated,
# serve; each round starting one further), RUNS times each.
#
#   generated: `wicket render` output run by nginx directly (access log to
#              /dev/stdout, sent to /dev/null, as the hand-written one; the
#              metrics log to its FIFO, drained into /dev/null).
#   serve:     the same config under `wicket serve`, where the access log
#              is piped through wicket (what a user runs). SERVE=0 skips it.
#   static:    the config rendered with --dynamic-endpoints=false (no Lua
#              balancer, as before issue 16): gen / static is what the
#              balancer costs while no update came. STATIC=0 skips it.
#   updated:   the generated config after an endpoint update sent to its
#              status socket (the same backend), so that wicket's Lua
#              balancer picks the endpoint of every request instead of
#              nginx's round robin (what follows any endpoint change with
#              --dynamic-endpoints). UPDATED=0 skips it.
#
#   POLICY=1   the route also has a source list and CORS
#              (whitelist-source-range, enable-cors), the hand-written
#              config the same directives (bench/dataplane/hand-policy.conf.in),
#              and every request an Origin header (issue 12's check).
#
#   bench/dataplane.sh    RUNS=5 DURATION=10s THREADS=2 CONNECTIONS=64
#                         TEMPLATES=DIR (--templates for generated and serve)
#
# Target: generated >= 95% of hand-written (median requests/second).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
SERVE=${SERVE:-1}
POLICY=${POLICY:-0}
UPDATED=${UPDATED:-1}
STATIC=${STATIC:-1}
BACKEND_PORT=${BACKEND_PORT:-18080}
extra=()
[[ -z ${TEMPLATES:-} ]] || extra=(--templates "$TEMPLATES")
command -v wrk >/dev/null || die "wrk missing: apt-get install wrk"
ensure_wicket

out=$REPO/target/bench-out/dataplane
rm -rf "$out"; mkdir -p "$out"/{gen,hand,upd,static,serve-manifests}
read -r gen_port gen_tls hand_port serve_port serve_tls admin_port upd_port upd_tls static_port static_tls < <(free_ports 10)
host=app-0.bench.test
backend=127.1.0.1:$BACKEND_PORT   # what gen-manifests.py gives Ingress 0
python3 "$BENCH_DIR/gen-manifests.py" --count 1 --out "$out/serve-manifests" --port "$BACKEND_PORT"
hand_conf=$BENCH_DIR/dataplane/hand.conf.in
headers=(-H "Host: $host")
if [[ $POLICY == 1 ]]; then
  sed -i '0,/^  namespace: bench-0$/s//  namespace: bench-0\n  annotations:\n    nginx.ingress.kubernetes.io\/enable-cors: "true"\n    nginx.ingress.kubernetes.io\/whitelist-source-range: 127.0.0.0\/8/' \
    "$out/serve-manifests/"*.yaml
  hand_conf=$BENCH_DIR/dataplane/hand-policy.conf.in
  headers+=(-H "Origin: https://app.example.com")
fi

pids=()
cleanup() {
  [[ -z ${wicket_pid:-} ]] || stop_wicket "$wicket_pid" "$out/serve.log"
  for p in "${pids[@]}"; do stop_pid "$p" 15; done
  stop_backend "$out/backend"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_backend "$out/backend" "$BACKEND_PORT" 1

# The generated config, run by nginx directly.
"$WICKET" render --manifests "$out/serve-manifests" "${extra[@]}" --http-port "$gen_port" --https-port "$gen_tls" \
  >"$out/gen/nginx.conf" 2>"$out/gen/render.stderr"
self_signed "$out/gen"; mkdir -p "$out/gen/tmp" "$out/gen/control"
pids+=("$(metrics_pipe "$out/gen")")
(cd "$out/gen" && exec "$NGINX" -p "$out/gen" -c "$out/gen/nginx.conf" >/dev/null 2>"$out/gen/error.log") &
pids+=($!)

# The hand-written config.
mkdir -p "$out/hand/tmp"
sed -e "s|@PORT@|127.0.0.1:$hand_port|" -e "s|@HOST@|$host|" -e "s|@BACKEND@|$backend|" -e "s|@STATE@|$out/hand|g" \
  "$hand_conf" >"$out/hand/nginx.conf"
"$NGINX" -t -q -p "$out/hand" -c "$out/hand/nginx.conf" || die "hand-written config refused"
("$NGINX" -p "$out/hand" -c "$out/hand/nginx.conf" >/dev/null 2>"$out/hand/error.log") &
pids+=($!)

kinds=(hand gen)
if [[ $STATIC == 1 ]]; then
  "$WICKET" render --manifests "$out/serve-manifests" "${extra[@]}" --http-port "$static_port" --https-port "$static_tls" \
    --dynamic-endpoints=false >"$out/static/nginx.conf" 2>"$out/static/render.stderr"
  self_signed "$out/static"; mkdir -p "$out/static/tmp" "$out/static/control"
  pids+=("$(metrics_pipe "$out/static")")
  (cd "$out/static" && exec "$NGINX" -p "$out/static" -c "$out/static/nginx.conf" >/dev/null 2>"$out/static/error.log") &
  pids+=($!)
  kinds+=(static)
fi
if [[ $UPDATED == 1 ]]; then
  "$WICKET" render --manifests "$out/serve-manifests" "${extra[@]}" --http-port "$upd_port" --https-port "$upd_tls" \
    >"$out/upd/nginx.conf" 2>"$out/upd/render.stderr"
  grep -q balancer_by_lua_block "$out/upd/nginx.conf" || die "the rendered config has no Lua balancer (is libnginx-mod-http-lua installed?)"
  self_signed "$out/upd"; mkdir -p "$out/upd/tmp" "$out/upd/control"
  pids+=("$(metrics_pipe "$out/upd")")
  (cd "$out/upd" && exec "$NGINX" -p "$out/upd" -c "$out/upd/nginx.conf" >/dev/null 2>"$out/upd/error.log") &
  pids+=($!)
  wait_http "http://127.0.0.1:$upd_port/" 30 || die "updated does not answer"
  generation=$(curl -s --unix-socket "$out/upd/control/wicket-status.sock" http://wicket/wicket/endpoints | awk 'NR == 1 {print $2}')
  upstream=$(awk '$1 == "upstream" {print $2; exit}' "$out/upd/nginx.conf")
  printf 'wicket-endpoints %s\n%s %s\n' "$generation" "$upstream" "$backend" |
    curl -sf --unix-socket "$out/upd/control/wicket-status.sock" --data-binary @- http://wicket/wicket/endpoints >/dev/null ||
    die "the endpoint update was refused"
  sleep 0.3
  kinds+=(upd)
fi
if [[ $SERVE == 1 ]]; then
  NO_COLOR=1 "$WICKET" serve --manifests "$out/serve-manifests" --http-port "$serve_port" \
    --https-port "$serve_tls" --admin-port "$admin_port" "${extra[@]}" >/dev/null 2>"$out/serve.log" &
  pids+=($!)
  wicket_pid=$!
  kinds+=(serve)
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$admin_port/readyz" && break; sleep 0.05; done
fi

declare -A port=([hand]=$hand_port [gen]=$gen_port [serve]=$serve_port [upd]=$upd_port [static]=$static_port)
for k in "${kinds[@]}"; do
  wait_http "http://127.0.0.1:${port[$k]}/" 30 || die "$k does not answer"
  body=$(curl -s -H "Host: $host" "http://127.0.0.1:${port[$k]}/")
  [[ $body == 127.1.0.1 ]] || die "$k: the route does not reach the backend (got '$body')"
  : >"$out/$k.rps"
done
log "warming up"
for k in "${kinds[@]}"; do
  wrk -t "$THREADS" -c "$CONNECTIONS" -d 2s "${headers[@]}" "http://127.0.0.1:${port[$k]}/" >/dev/null
done

# CPU seconds (user + sys) a process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$1/stat"; }
: >"$out/wicket.cpu"
n=${#kinds[@]}
for ((r = 1; r <= RUNS; r++)); do
  # Each round starts with the next kind, so no kind always runs first or
  # last (the machine's speed drifts within a round too).
  for ((j = 0; j < n; j++)); do
    k=${kinds[$(((r - 1 + j) % n))]}
    [[ $k != serve ]] || c0=$(cpu_of "$wicket_pid")
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" "${headers[@]}" \
      "http://127.0.0.1:${port[$k]}/" >"$out/$k.$r.txt"
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out/$k.$r.txt")
    errs=$(grep -E 'Non-2xx|Socket errors' "$out/$k.$r.txt" | tr -s ' ' | tr '\n' ';' || true)
    echo "$rps" >>"$out/$k.rps"
    note=
    if [[ $k == serve ]]; then
      c1=$(cpu_of "$wicket_pid")
      echo "$c1 - $c0" | bc >>"$out/wicket.cpu"
      note="(wicket process: $(echo "$c1 - $c0" | bc) CPU s)"
    fi
    printf 'run %d %-5s %10s req/s %s%s\n' "$r" "$k" "$rps" "$errs" "$note"
  done
done

echo
echo "data plane${TEMPLATES:+ (templates $TEMPLATES)}: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $RUNS runs each, alternating; nginx $("$NGINX" -v 2>&1 | sed 's/.*\///')"
declare -A med
for k in "${kinds[@]}"; do
  read -r mn md mx < <(stats <"$out/$k.rps")
  med[$k]=$md
  printf '  %-5s req/s min/median/max %s/%s/%s\n' "$k" "$mn" "$md" "$mx"
done
[[ $SERVE != 1 ]] || printf '  wicket process CPU s per %s serve run min/median/max %s (copying the access log)\n' "$DURATION" "$(stats <"$out/wicket.cpu" | tr ' ' /)"
for k in "${kinds[@]}"; do
  [[ $k == hand ]] && continue
  ratio=$(echo "scale=4; ${med[$k]} / ${med[hand]} * 100" | bc)
  # The machine's speed drifts over minutes: also the median of each
  # round's ratio (the kinds of a round run one after the other).
  paired=$(paste "$out/$k.rps" "$out/hand.rps" | awk '{printf "%.4f\n", $1 / $2 * 100}' | stats | awk '{print $2}')
  printf '  %s / hand: %.1f%% of the medians, %.1f%% median of the rounds'"'"' ratios (target >= 95%%: %s)\n' \
    "$k" "$ratio" "$paired" "$([[ $(echo "$ratio >= 95" | bc) == 1 ]] && echo PASS || echo FAIL)"
done
if [[ $STATIC == 1 ]]; then
  for k in gen upd; do
    [[ -s $out/$k.rps ]] || continue
    paired=$(paste "$out/$k.rps" "$out/static.rps" | awk '{printf "%.4f\n", $1 / $2 * 100}' | stats | awk '{print $2}')
    printf '  %s / static (the Lua balancer'"'"'s share): %.1f%% median of the rounds'"'"' ratios\n' "$k" "$paired"
  done
fi
