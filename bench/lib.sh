# Shared helpers for the bench/ scripts. Source it: . "$(dirname "$0")/lib.sh"
# shellcheck shell=bash

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
WICKET=${WICKET:-$REPO/target/release/wicket}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
MANIFESTS_ROOT=${MANIFESTS_ROOT:-$REPO/target/bench-manifests}

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "$*"; exit 1; }

# Builds the release binary unless WICKET points at one that exists.
ensure_wicket() {
  if [[ ${WICKET_NO_BUILD:-} != 1 ]]; then
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
  fi
  [[ -x $WICKET ]] || die "no wicket binary at $WICKET"
}

# manifests N: prints the folder holding N generated Ingresses (generated
# once, reused by every script and by benches/pipeline.rs). With
# ANNOTATED=1, the variant whose Ingresses carry five typical annotations
# (folder N-annotated).
manifests() {
  local n=$1 dir=$MANIFESTS_ROOT/$1 have flags=()
  if [[ ${ANNOTATED:-} == 1 ]]; then
    dir=$MANIFESTS_ROOT/$1-annotated; flags=(--annotated)
  fi
  have=$(find "$dir" -maxdepth 1 -name '*.yaml' 2>/dev/null | wc -l)
  if [[ $have != "$n" ]]; then
    rm -rf "$dir"
    python3 "$BENCH_DIR/gen-manifests.py" --count "$n" --out "$dir" "${flags[@]}" || die "generator failed"
  fi
  printf '%s\n' "$dir"
}

now_ns() { date +%s%N; }

# stats: numbers on stdin -> "min median max" (3 decimals).
stats() {
  python3 -c '
import statistics, sys
v = sorted(float(x) for x in sys.stdin.read().split())
if not v: print("n/a n/a n/a"); sys.exit()
print(f"{v[0]:.3f} {statistics.median(v):.3f} {v[-1]:.3f}")'
}

# A self-signed pair certs/default.crt|key under $1 (what rendered configs
# reference).
self_signed() {
  mkdir -p "$1/certs"
  [[ -s $1/certs/default.crt ]] && return 0
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=wicket bench" -days 30 \
    -keyout "$1/certs/default.key" -out "$1/certs/default.crt" 2>/dev/null \
    || die "openssl failed"
}

# free_ports K: K free loopback TCP ports (the kernel picks them).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
}

# wait_http URL [SECONDS]: until URL answers anything.
wait_http() {
  local url=$1 t=${2:-30} i
  for ((i = 0; i < t * 20; i++)); do
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.05
  done
  return 1
}

# Stops a process this script started: TERM, then KILL after $2 seconds.
stop_pid() {
  local pid=$1 t=${2:-10} i
  [[ -n $pid ]] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < t * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

# A backend nginx answering 200 on PORT for every address (the generated
# EndpointSlices name 127.1.x.y:PORT), with the address it was reached on
# in the body. Starts it in folder $1; prints its PID file path.
backend_conf() {
  local dir=$1 port=$2 workers=${3:-1}
  mkdir -p "$dir/tmp"
  cat >"$dir/backend.conf" <<CONF
daemon on;
master_process on;
worker_processes $workers;
pid $dir/backend.pid;
error_log $dir/backend.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 100000;
    server {
        listen $port reuseport backlog=4096;
        location / { return 200 "\$server_addr\n"; }
    }
}
CONF
}
start_backend() {
  local dir=$1 port=$2 workers=${3:-1}
  backend_conf "$dir" "$port" "$workers"
  "$NGINX" -p "$dir" -c "$dir/backend.conf" || die "backend nginx did not start"
  wait_http "http://127.0.0.1:$port/" 10 || die "backend nginx does not answer on $port"
}
stop_backend() {
  local dir=$1 pid
  [[ -f $dir/backend.pid ]] || return 0
  pid=$(cat "$dir/backend.pid")
  kill -QUIT "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# stop_wicket PID LOG: stops a `wicket serve|controller` this script started
# (TERM, up to 60 s, then KILL), then the nginx it ran if wicket could not
# stop it (stop_nginx_of).
stop_wicket() {
  [[ -n $1 ]] && stop_pid "$1" 60
  stop_nginx_of "$2"
}

# stop_nginx_of LOG: the nginx of a stopped wicket, found through the
# state_dir in wicket's log and its nginx.pid, if it still runs.
stop_nginx_of() {
  local dir npid
  dir=$(grep -o 'state_dir=[^ ]*' "$1" 2>/dev/null | head -1 | cut -d= -f2)
  [[ -n $dir && -f $dir/nginx.pid ]] || return 0
  npid=$(cat "$dir/nginx.pid")
  kill -0 "$npid" 2>/dev/null || return 0
  log "wicket left nginx $npid running; stopping it"
  kill -QUIT "$npid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$npid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$npid" 2>/dev/null || kill -KILL "$npid" 2>/dev/null || true
}

# metrics_pipe DIR: the FIFO a rendered config's metrics log goes to
# (DIR/control/wicket-metrics.pipe), drained as wicket does (into
# /dev/null), for configs run by nginx without wicket. Prints the drainer's
# PID.
metrics_pipe() {
  mkdir -p "$1/control"
  rm -f "$1/control/wicket-metrics.pipe"
  mkfifo -m 600 "$1/control/wicket-metrics.pipe"
  # Read and write, as wicket opens it: nginx's open never waits.
  (exec cat <>"$1/control/wicket-metrics.pipe" >/dev/null) &
  echo $!
}
