#!/usr/bin/env bash
# The demo: installs nginx if missing, builds wicket, starts echo backends,
# serves examples/ and prints curl lines that work. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

HTTP_PORT=${DEMO_HTTP_PORT:-8080}
HTTPS_PORT=${DEMO_HTTPS_PORT:-8443}
ADMIN_PORT=${DEMO_ADMIN_PORT:-10254}

ensure_nginx
cargo build --locked --quiet
STATE=$(mktemp -d /tmp/wicket-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$STATE"
}
trap cleanup EXIT INT TERM

# The EndpointSlices in examples/ point at these ports on 127.0.0.1.
python3 examples/demo-backend.py web 9001 api 9002 test 9003 &
pids+=($!)

"${CARGO_TARGET_DIR:-target}/debug/wicket" serve --manifests examples --state-dir "$STATE/state" \
    --http-port "$HTTP_PORT" --https-port "$HTTPS_PORT" --admin-port "$ADMIN_PORT" &
pids+=($!)

for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null

cat <<MSG

wicket is serving examples/ (edit the files there: changes apply at once).
Try:

  curl -H 'Host: shop.example.com' http://127.0.0.1:$HTTP_PORT/             # web
  curl -H 'Host: shop.example.com' http://127.0.0.1:$HTTP_PORT/api/orders   # api
  curl -H 'Host: x.apps.example.com' http://127.0.0.1:$HTTP_PORT/           # wildcard host: web
  curl http://127.0.0.1:$HTTP_PORT/testpath/anything                        # legacy v1beta1 Ingress: test sees /
  curl -i http://127.0.0.1:$HTTP_PORT/nothing                               # 404
  curl -k --resolve shop.example.com:$HTTPS_PORT:127.0.0.1 https://shop.example.com:$HTTPS_PORT/api
  curl --unix-socket $STATE/state/admin.sock http://wicket/config    # the nginx.conf being served

Ctrl-C stops the demo.
MSG
wait
