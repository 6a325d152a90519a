#!/usr/bin/env bash
# Smoke test for the integration-test control plane: builds/finds the cached
# kube-apiserver + etcd (build.sh) and kubectl (../helm/install.sh), starts
# etcd and kube-apiserver on free loopback ports with generated certificates,
# waits for /readyz, creates a namespace and a networking.k8s.io/v1 Ingress
# with kubectl, reads it back, and stops both processes.
#
# Exits 0 only if all of that worked. Set SMOKE_KEEP=1 to keep the temp
# folder (certs, logs, kubeconfig) for inspection.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'smoke.sh: %s\n' "$*" >&2; }

BIN=${WICKET_APISERVER_BIN:-$("$here/build.sh")}
KBIN=${WICKET_KUBECTL_BIN:-$("$here/../helm/install.sh")}
kubectl_bin="$KBIN/kubectl"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/wicket-smoke.XXXXXX")
etcd_pid=
api_pid=
ok=0

# Stop one process we started: TERM, wait up to $2 seconds, then KILL.
stop() {
  local name=$1 pid=$2 timeout=$3 i rc
  [[ -n $pid ]] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop within ${timeout}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  rc=0
  wait "$pid" 2>/dev/null || rc=$?
  log "$name (pid $pid) stopped (exit status $rc)"
}

cleanup() {
  local status=$?
  stop kube-apiserver "$api_pid" 60 || status=1
  api_pid=
  stop etcd "$etcd_pid" 30 || status=1
  etcd_pid=
  if [[ $ok != 1 ]]; then
    status=1
    for f in etcd.log kube-apiserver.log; do
      [[ -f $tmp/$f ]] || continue
      log "---- last lines of $f ----"
      tail -n 40 "$tmp/$f" >&2 || true
    done
  fi
  if [[ ${SMOKE_KEEP:-} == 1 ]]; then
    log "kept $tmp"
  else
    rm -rf "$tmp"
  fi
  if [[ $status == 0 ]]; then log "PASS"; else log "FAIL"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback TCP ports (the kernel picks; there is a small race until use).
read -r etcd_port peer_port api_port < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
log "ports: etcd client $etcd_port, etcd peer $peer_port, apiserver $api_port"

# ---- certificates and credentials -----------------------------------------
pki="$tmp/pki"
mkdir -p "$pki"
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -keyout ca.key -out ca.crt \
    -subj "/CN=wicket-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
    -subj "/CN=kube-apiserver" 2>/dev/null
  cat >apiserver.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1
EOF
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days 1 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
  # Service-account token signing key pair.
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
# TOKEN,user,uid,"group1,group2"
printf '%s,wicket-admin,wicket-admin,"system:masters"\n' "$token" >"$pki/tokens.csv"
chmod 600 "$pki"/*.key "$pki/tokens.csv"

# ---- etcd -----------------------------------------------------------------
etcd_args=(
  --name=wicket-smoke
  --data-dir="$tmp/etcd-data"
  --listen-client-urls="http://127.0.0.1:$etcd_port"
  --advertise-client-urls="http://127.0.0.1:$etcd_port"
  --listen-peer-urls="http://127.0.0.1:$peer_port"
  --initial-advertise-peer-urls="http://127.0.0.1:$peer_port"
  --initial-cluster="wicket-smoke=http://127.0.0.1:$peer_port"
  --unsafe-no-fsync=true
  --log-level=warn
)
log "starting etcd: $BIN/etcd ${etcd_args[*]}"
"$BIN/etcd" "${etcd_args[@]}" >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!

for ((i = 0; ; i++)); do
  kill -0 "$etcd_pid" 2>/dev/null || { log "etcd exited early"; exit 1; }
  if curl -fsS "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"'; then
    break
  fi
  ((i < 300)) || { log "etcd not healthy after 30s"; exit 1; }
  sleep 0.1
done
log "etcd healthy after ~$((i / 10))s"

# ---- kube-apiserver -------------------------------------------------------
api_args=(
  --etcd-servers="http://127.0.0.1:$etcd_port"
  --bind-address=127.0.0.1
  --advertise-address=127.0.0.1
  --secure-port="$api_port"
  --cert-dir="$tmp/apiserver-certs"
  --tls-cert-file="$pki/apiserver.crt"
  --tls-private-key-file="$pki/apiserver.key"
  --client-ca-file="$pki/ca.crt"
  --token-auth-file="$pki/tokens.csv"
  --authorization-mode=RBAC
  --service-account-issuer="https://127.0.0.1:$api_port/"
  --service-account-key-file="$pki/sa.pub"
  --service-account-signing-key-file="$pki/sa.key"
  --service-cluster-ip-range=10.0.0.0/24
  --allow-privileged=true
  --disable-admission-plugins=ServiceAccount
  # A loopback advertise address cannot go into the "kubernetes" Endpoints;
  # without this the reconciler logs an error every 10s.
  --endpoint-reconciler-type=none
)
log "starting kube-apiserver: $BIN/kube-apiserver ${api_args[*]}"
"$BIN/kube-apiserver" "${api_args[@]}" >"$tmp/kube-apiserver.log" 2>&1 &
api_pid=$!

url="https://127.0.0.1:$api_port"
start=$SECONDS
for ((i = 0; ; i++)); do
  kill -0 "$api_pid" 2>/dev/null || { log "kube-apiserver exited early"; exit 1; }
  if [[ $(curl -sS --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" \
    "$url/readyz" 2>/dev/null) == ok ]]; then
    break
  fi
  ((SECONDS - start < 90)) || { log "kube-apiserver not ready after 90s"; exit 1; }
  sleep 0.2
done
log "kube-apiserver ready after ~$((SECONDS - start))s"

version_json=$(curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" "$url/version")
log "/version: $(tr -d ' \n' <<<"$version_json")"
version=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["gitVersion"])' <<<"$version_json")
[[ $version == v[0-9]*.[0-9]*.[0-9]* && $version != v0.0.0* ]] ||
  { log "unexpected /version gitVersion $version"; exit 1; }

# ---- kubectl --------------------------------------------------------------
export KUBECONFIG="$tmp/kubeconfig"
k() { "$kubectl_bin" --request-timeout=30s "$@"; }
k config set-cluster smoke --server="$url" --certificate-authority="$pki/ca.crt" --embed-certs=true >/dev/null
k config set-credentials admin --token="$token" >/dev/null
k config set-context smoke --cluster=smoke --user=admin >/dev/null
k config use-context smoke >/dev/null

k version >&2
k auth can-i '*' '*' --all-namespaces | grep -qx yes || { log "admin is not cluster-admin"; exit 1; }

ns=wicket-smoke
k create namespace "$ns" >&2
k apply -f - >&2 <<EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: smoke
  namespace: $ns
  annotations:
    wicket.dev/smoke: "true"
spec:
  ingressClassName: wicket
  rules:
    - host: smoke.wicket.test
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: echo
                port:
                  number: 8080
EOF

got=$(k get ingress.v1.networking.k8s.io smoke -n "$ns" \
  -o jsonpath='{.spec.ingressClassName} {.spec.rules[0].host} {.spec.rules[0].http.paths[0].backend.service.name}:{.spec.rules[0].http.paths[0].backend.service.port.number}')
log "read back Ingress: $got"
[[ $got == "wicket smoke.wicket.test echo:8080" ]] || { log "Ingress read back wrong"; exit 1; }
k get ingress -n "$ns" >&2

# ---- stop -----------------------------------------------------------------
stop kube-apiserver "$api_pid" 60 || exit 1
api_pid=
stop etcd "$etcd_pid" 30 || exit 1
etcd_pid=
ok=1
