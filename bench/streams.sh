#!/usr/bin/env bash
# TCP services (issue 13): throughput and connections/second through the
# stream config wicket generates for a --tcp-services-configmap entry
# against a minimal hand-written stream config for the same backend
# (bench/streams/hand.conf.in), the same nginx binary, the same backend (a
# separate nginx serving HTTP), with wrk through the TCP port:
#
#   throughput: GET of a 1 MiB file on kept-alive connections (MB/s);
#   conn/s:     GET of a 2-byte answer with "Connection: close", so every
#               request is a new TCP connection through the proxy.
#
# Runs alternate (hand, generated; each round starting one further), RUNS
# times each.
#
#   bench/streams.sh    RUNS=5 DURATION=10s THREADS=2 CONNECTIONS=32
#
# Target: generated >= 95% of hand-written (medians) for both.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
BACKEND_PORT=${BACKEND_PORT:-18090}
command -v wrk >/dev/null || die "wrk missing: apt-get install wrk"
[[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]] || die "no stream module: apt-get install libnginx-mod-stream"
ensure_wicket

out=$REPO/target/bench-out/streams
rm -rf "$out"; mkdir -p "$out"/{gen,hand,manifests}
read -r gen_port gen_http gen_tls hand_port < <(free_ports 4)

# The backend: an HTTP nginx with a 1 MiB file and a 2-byte answer.
mkdir -p "$out/backend/tmp" "$out/backend/www"
head -c 1048576 /dev/urandom >"$out/backend/www/big"
cat >"$out/backend/backend.conf" <<CONF
daemon on;
master_process on;
worker_processes 1;
pid $out/backend/backend.pid;
error_log $out/backend/backend.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $out/backend/tmp/client_body;
    proxy_temp_path $out/backend/tmp/proxy;
    fastcgi_temp_path $out/backend/tmp/fastcgi;
    uwsgi_temp_path $out/backend/tmp/uwsgi;
    scgi_temp_path $out/backend/tmp/scgi;
    keepalive_requests 100000;
    sendfile on;
    server {
        listen $BACKEND_PORT reuseport backlog=4096;
        location / { return 200 "ok"; }
        location = /big { root $out/backend/www; }
    }
}
CONF
"$NGINX" -p "$out/backend" -c "$out/backend/backend.conf" || die "backend nginx did not start"
wait_http "http://127.0.0.1:$BACKEND_PORT/" 10 || die "backend does not answer"

pids=()
cleanup() {
  for p in "${pids[@]}"; do stop_pid "$p" 15; done
  stop_backend "$out/backend"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The generated config: a Service with one endpoint and the TCP entry.
cat >"$out/manifests/streams.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: bench}
spec:
  ports: [{name: web, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: backend-1, namespace: bench, labels: {kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{name: web, port: $BACKEND_PORT}]
endpoints:
- addresses: ["127.0.0.1"]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: tcp, namespace: bench}
data:
  "$gen_port": "bench/backend:80"
YAML
"$WICKET" render --manifests "$out/manifests" --http-port "$gen_http" --https-port "$gen_tls" \
  --tcp-services-configmap bench/tcp >"$out/gen/nginx.conf" 2>"$out/gen/render.stderr"
grep -q "listen $gen_port;" "$out/gen/nginx.conf" || die "the rendered config has no stream server (see $out/gen/render.stderr)"
self_signed "$out/gen"; mkdir -p "$out/gen/tmp" "$out/gen/control"
(cd "$out/gen" && exec "$NGINX" -p "$out/gen" -c "$out/gen/nginx.conf" >/dev/null 2>"$out/gen/error.log") &
pids+=($!)

mkdir -p "$out/hand/tmp"
sed -e "s|@PORT@|127.0.0.1:$hand_port|" -e "s|@BACKEND@|127.0.0.1:$BACKEND_PORT|" -e "s|@STATE@|$out/hand|g" \
  "$BENCH_DIR/streams/hand.conf.in" >"$out/hand/nginx.conf"
"$NGINX" -t -q -p "$out/hand" -c "$out/hand/nginx.conf" || die "hand-written config refused"
("$NGINX" -p "$out/hand" -c "$out/hand/nginx.conf" >/dev/null 2>"$out/hand/error.log") &
pids+=($!)

kinds=(hand gen)
declare -A port=([hand]=$hand_port [gen]=$gen_port)
for k in "${kinds[@]}"; do
  wait_http "http://127.0.0.1:${port[$k]}/" 30 || die "$k does not answer"
  [[ $(curl -s "http://127.0.0.1:${port[$k]}/") == ok ]] || die "$k does not reach the backend"
  [[ $(curl -s "http://127.0.0.1:${port[$k]}/big" | wc -c) == 1048576 ]] || die "$k: /big is not 1 MiB"
  : >"$out/$k.mbps"; : >"$out/$k.cps"
done
log "warming up"
for k in "${kinds[@]}"; do
  wrk -t "$THREADS" -c "$CONNECTIONS" -d 2s "http://127.0.0.1:${port[$k]}/big" >/dev/null
  wrk -t "$THREADS" -c "$CONNECTIONS" -d 2s -H "Connection: close" "http://127.0.0.1:${port[$k]}/" >/dev/null
done

# MB/s from wrk's "Transfer/sec: 1.23GB".
mbps() { awk '/^Transfer\/sec/ {v = $2; u = substr(v, length(v) - 1); n = substr(v, 1, length(v) - 2)
  f = (u == "GB") ? 1024 : (u == "MB") ? 1 : (u == "KB") ? 1 / 1024 : 1 / 1048576; printf "%.1f\n", n * f}' "$1"; }
n=${#kinds[@]}
for ((r = 1; r <= RUNS; r++)); do
  for ((j = 0; j < n; j++)); do
    k=${kinds[$(((r - 1 + j) % n))]}
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" "http://127.0.0.1:${port[$k]}/big" >"$out/$k.big.$r.txt"
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" -H "Connection: close" \
      "http://127.0.0.1:${port[$k]}/" >"$out/$k.conn.$r.txt"
    m=$(mbps "$out/$k.big.$r.txt")
    c=$(awk '/^Requests\/sec/ {print $2}' "$out/$k.conn.$r.txt")
    errs=$(cat "$out/$k.big.$r.txt" "$out/$k.conn.$r.txt" | grep -E 'Non-2xx|Socket errors' | tr -s ' ' | tr '\n' ';' || true)
    echo "$m" >>"$out/$k.mbps"; echo "$c" >>"$out/$k.cps"
    printf 'run %d %-4s %10s MB/s %10s conn/s %s\n' "$r" "$k" "$m" "$c" "$errs"
  done
done

echo
echo "streams: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $RUNS runs each, alternating; nginx $("$NGINX" -v 2>&1 | sed 's/.*\///')"
for what in mbps cps; do
  declare -A med=()
  for k in "${kinds[@]}"; do
    read -r mn md mx < <(stats <"$out/$k.$what")
    med[$k]=$md
    printf '  %-4s %-6s min/median/max %s/%s/%s\n' "$k" "$what" "$mn" "$md" "$mx"
  done
  ratio=$(echo "scale=4; ${med[gen]} / ${med[hand]} * 100" | bc)
  paired=$(paste "$out/gen.$what" "$out/hand.$what" | awk '{printf "%.4f\n", $1 / $2 * 100}' | stats | awk '{print $2}')
  printf '  gen / hand %s: %.1f%% of the medians, %.1f%% median of the rounds'"'"' ratios (target >= 95%%: %s)\n' \
    "$what" "$ratio" "$paired" "$([[ $(echo "$ratio >= 95" | bc) == 1 ]] && echo PASS || echo FAIL)"
done
