#!/usr/bin/env bash
# Request metrics (issue 14): what counting nginx's metrics lines costs
# wicket, and whether its memory stays put under hostile traffic.
#
#   1. CPU: `wicket serve` in front of a backend nginx, one Ingress (`/` of
#      app-0.bench.test), wrk for DURATION, RUNS times. wicket's CPU seconds
#      (user + sys, /proc) over each run, as a share of one core per
#      10,000 requests/s. With ACCESS_LOG=0 (the default) the access log is
#      off (disable-access-log), so wicket's CPU is the metrics pipe alone;
#      ACCESS_LOG=1 keeps it on (wicket also copies it to its stdout, here
#      /dev/null).
#   2. Memory: REQUESTS (1,000,000) requests with random URIs, random Host
#      headers (half of them: hosts no rule names) and random methods,
#      through wrk's Lua (methods: the 20 wrk's parser knows, most
#      folding into OTHER; tests/request_metrics.rs sends arbitrary ones);
#      wicket's RSS (VmRSS) after a warm-up and at the
#      end, and the label sets it holds (wicket_request_metrics_series).
#      UNDEFINED=1 adds --metrics-per-undefined-host (at most 1000 hosts
#      labelled).
#
#   bench/request-metrics.sh   RUNS=3 DURATION=10s THREADS=2 CONNECTIONS=64
#                              REQUESTS=1000000 ACCESS_LOG=0 UNDEFINED=0
#
# Targets: under 5% of a core per 10,000 requests/s; RSS within 5 MiB.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
REQUESTS=${REQUESTS:-1000000}
ACCESS_LOG=${ACCESS_LOG:-0}
UNDEFINED=${UNDEFINED:-0}
BACKEND_PORT=${BACKEND_PORT:-18081}
command -v wrk >/dev/null || die "wrk missing: apt-get install wrk"
ensure_wicket

out=$REPO/target/bench-out/request-metrics
rm -rf "$out"; mkdir -p "$out/manifests"
read -r http_port https_port admin_port < <(free_ports 3)
host=app-0.bench.test
python3 "$BENCH_DIR/gen-manifests.py" --count 1 --out "$out/manifests" --port "$BACKEND_PORT"
disable=true; [[ $ACCESS_LOG == 1 ]] && disable=false
cat >"$out/manifests/settings.yaml" <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: bench-0}
data: {disable-access-log: "$disable"}
YAML
flags=(--configmap bench-0/settings)
[[ $UNDEFINED == 1 ]] && flags+=(--metrics-per-undefined-host)

wicket_pid=
cleanup() {
  [[ -z $wicket_pid ]] || stop_wicket "$wicket_pid" "$out/serve.log"
  stop_backend "$out/backend"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_backend "$out/backend" "$BACKEND_PORT" 1
NO_COLOR=1 "$WICKET" serve --manifests "$out/manifests" --http-port "$http_port" \
  --https-port "$https_port" --admin-port "$admin_port" "${flags[@]}" >/dev/null 2>"$out/serve.log" &
wicket_pid=$!
for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$admin_port/readyz" && break; sleep 0.05; done
body=$(curl -s -H "Host: $host" "http://127.0.0.1:$http_port/")
[[ $body == 127.1.0.1 ]] || die "the route does not reach the backend (got '$body')"

cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f\n", ($14 + $15) / hz}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$admin_port/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%d\n", s}'; }
counted() { metric nginx_ingress_controller_requests; }

log "warming up"
wrk -t "$THREADS" -c "$CONNECTIONS" -d 2s -H "Host: $host" "http://127.0.0.1:$http_port/" >/dev/null
: >"$out/share"
for ((r = 1; r <= RUNS; r++)); do
  sleep 1.5   # nginx flushes its metrics buffers at least once a second
  n0=$(counted); c0=$(cpu_of "$wicket_pid")
  wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" -H "Host: $host" "http://127.0.0.1:$http_port/" >"$out/cpu.$r.txt"
  c1=$(cpu_of "$wicket_pid")
  sleep 1.5
  n1=$(counted)
  rps=$(awk '/^Requests\/sec/ {print $2}' "$out/cpu.$r.txt")
  secs=$(awk '/requests in/ {sub(/s,?$/, "", $4); print $4}' "$out/cpu.$r.txt")
  cpu=$(echo "$c1 - $c0" | bc)
  # Share of one core, scaled to 10,000 requests/s.
  share=$(echo "scale=6; ($cpu / $secs) / ($rps / 10000) * 100" | bc)
  echo "$share" >>"$out/share"
  printf 'run %d: %s req/s for %ss, wicket %s CPU s, %s requests counted -> %.2f%% of a core per 10k req/s\n' \
    "$r" "$rps" "$secs" "$cpu" "$((n1 - n0))" "$share"
done

# Random URIs, hosts and methods.
cat >"$out/random.lua" <<'LUA'
local chars = "abcdefghijklmnopqrstuvwxyz0123456789"
local function word(n)
  local t = {}
  for i = 1, n do
    local k = math.random(#chars)
    t[i] = chars:sub(k, k)
  end
  return table.concat(t)
end
-- wrk sends only the methods its HTTP parser knows (and no HEAD: it
-- reads a body after every answer); most of these fold into OTHER.
local methods = {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE",
  "MKCALENDAR", "SUBSCRIBE", "UNSUBSCRIBE", "NOTIFY", "SEARCH", "REPORT",
  "MKACTIVITY", "CHECKOUT", "MERGE", "LINK", "UNLINK", "BIND", "REBIND"}
init = function() math.randomseed(os.time() + math.random(1e6)) end
request = function()
  local method = methods[math.random(#methods)]
  local host = "app-0.bench.test"
  if math.random() < 0.5 then host = word(10) .. ".random.test" end
  return wrk.format(method, "/" .. word(12) .. "/" .. word(8) .. "?" .. word(6), {Host = host})
end
LUA
sleep 1.5
rss0=$(rss_kib "$wicket_pid"); series0=$(metric wicket_request_metrics_series); lines0=$(metric wicket_request_log_lines_total)
log "sending $REQUESTS random requests (RSS at start $rss0 KiB)"
t0=$(now_ns)
while :; do
  sent=$(($(metric wicket_request_log_lines_total) - lines0))
  ((sent >= REQUESTS)) && break
  wrk -t "$THREADS" -c "$CONNECTIONS" -d 5s -s "$out/random.lua" "http://127.0.0.1:$http_port/" >"$out/random.txt" || die "wrk failed: $(cat "$out/random.txt")"
  sleep 1.2
done
t1=$(now_ns)
rss1=$(rss_kib "$wicket_pid"); series1=$(metric wicket_request_metrics_series)
malformed=$(metric wicket_request_log_malformed_lines_total)
skipped=$(metric wicket_request_log_skipped_lines_total)
echo
echo "request metrics: wicket serve, nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), access log $([[ $ACCESS_LOG == 1 ]] && echo on || echo off), wrk -t$THREADS -c$CONNECTIONS"
printf '  wicket CPU per 10k req/s (%% of one core) min/median/max %s (target < 5%%)\n' "$(stats <"$out/share" | tr ' ' /)"
printf '  %s random requests (lines read) in %.0f s: RSS %s -> %s KiB (%+d KiB; target within 5120), label sets %s -> %s, skipped (undefined hosts) %s, malformed %s\n' \
  "$sent" "$(echo "($t1 - $t0) / 1000000000" | bc -l)" "$rss0" "$rss1" "$((rss1 - rss0))" "$series0" "$series1" "$skipped" "$malformed"
