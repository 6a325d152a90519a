#!/usr/bin/env bash
# wicket-webhook-cert: the serving certificate of wicket's admission webhook,
# for the Helm chart's hook Jobs (installed in the image as
# /usr/local/bin/wicket-webhook-cert; used when cert-manager is not).
#
#   wicket-webhook-cert create   # before install/upgrade
#   wicket-webhook-cert patch    # after install/upgrade
#
# create: unless the Secret SECRET_NAME exists in NAMESPACE, generates a CA
#   and a certificate for the Service SERVICE_NAME signed by it (ECDSA P-256,
#   CERT_DAYS days), and creates the Secret (kubernetes.io/tls: tls.crt,
#   tls.key, ca.crt). An existing Secret is kept, so upgrades do not rotate.
# patch: sets caBundle of the webhook WEBHOOK_NAME in the
#   ValidatingWebhookConfiguration WEBHOOK_CONFIGURATION to the Secret's ca.crt.
#
# It talks to the API server with the pod's service account (in-cluster
# variables and files); KUBE_API, KUBE_TOKEN_FILE and KUBE_CA_FILE override
# them (the tests do). Needs bash, curl, openssl, base64, grep.
set -euo pipefail

die() { echo "wicket-webhook-cert: error: $*" >&2; exit 1; }
log() { echo "wicket-webhook-cert: $*" >&2; }

mode=${1:-}
[[ $mode == create || $mode == patch ]] || die "usage: wicket-webhook-cert create|patch"

name_re='^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'
for v in NAMESPACE SECRET_NAME; do
    [[ ${!v:-} =~ $name_re ]] || die "$v must be set to a Kubernetes name (got '${!v:-}')"
done

sa=/var/run/secrets/kubernetes.io/serviceaccount
token_file=${KUBE_TOKEN_FILE:-$sa/token}
ca_file=${KUBE_CA_FILE:-$sa/ca.crt}
if [[ -n ${KUBE_API:-} ]]; then
    api=$KUBE_API
else
    host=${KUBERNETES_SERVICE_HOST:?not in a pod: set KUBE_API}
    [[ $host == *:* ]] && host="[$host]"
    api="https://$host:${KUBERNETES_SERVICE_PORT:-443}"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
umask 077
# The token goes to curl in a file, never on a command line.
printf 'Authorization: Bearer %s\n' "$(cat "$token_file")" >"$tmp/auth"

# kube METHOD PATH [CONTENT-TYPE BODY-FILE]: the response body goes to
# $tmp/body, the HTTP status to stdout.
kube() {
    local args=(--silent --show-error --cacert "$ca_file" -H "@$tmp/auth"
        -H 'Accept: application/json' -X "$1" -o "$tmp/body" -w '%{http_code}')
    if [[ $# -gt 2 ]]; then
        args+=(-H "Content-Type: $3" --data-binary "@$4")
    fi
    curl "${args[@]}" "$api$2"
}

b64() { base64 -w0 <"$1"; }

secret_path=/api/v1/namespaces/$NAMESPACE/secrets/$SECRET_NAME

create() {
    [[ ${SERVICE_NAME:-} =~ $name_re ]] || die "SERVICE_NAME must be set to a Kubernetes name"
    local days=${CERT_DAYS:-3650}
    [[ $days =~ ^[1-9][0-9]*$ ]] || die "CERT_DAYS must be a number of days (got '$days')"
    local code
    code=$(kube GET "$secret_path")
    case $code in
    200)
        log "Secret $NAMESPACE/$SECRET_NAME exists; keeping it"
        return 0
        ;;
    404) ;;
    *) die "reading Secret $NAMESPACE/$SECRET_NAME: HTTP $code: $(cat "$tmp/body")" ;;
    esac

    local svc=$SERVICE_NAME ns=$NAMESPACE
    log "generating a CA and a certificate for $svc.$ns.svc ($days days)"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$tmp/ca.key" -out "$tmp/ca.crt" -days "$days" \
        -subj "/CN=$svc-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$tmp/tls.key" -out "$tmp/tls.csr" -subj "/CN=$svc.$ns.svc"
    cat >"$tmp/ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$svc,DNS:$svc.$ns,DNS:$svc.$ns.svc,DNS:$svc.$ns.svc.cluster.local
EXT
    openssl x509 -req -in "$tmp/tls.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$tmp/ext" \
        -out "$tmp/tls.crt"
    openssl verify -CAfile "$tmp/ca.crt" "$tmp/tls.crt" >/dev/null

    cat >"$tmp/secret.json" <<JSON
{"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/tls",
 "metadata":{"name":"$SECRET_NAME","namespace":"$ns",
  "labels":{"app.kubernetes.io/name":"wicket","app.kubernetes.io/component":"admission-webhook"}},
 "data":{"tls.crt":"$(b64 "$tmp/tls.crt")","tls.key":"$(b64 "$tmp/tls.key")","ca.crt":"$(b64 "$tmp/ca.crt")"}}
JSON
    code=$(kube POST "/api/v1/namespaces/$ns/secrets" application/json "$tmp/secret.json")
    case $code in
    201) log "created Secret $ns/$SECRET_NAME" ;;
    409) log "Secret $ns/$SECRET_NAME was created meanwhile; keeping it" ;;
    *) die "creating Secret $ns/$SECRET_NAME: HTTP $code: $(cat "$tmp/body")" ;;
    esac
}

patch() {
    [[ ${WEBHOOK_CONFIGURATION:-} =~ $name_re ]] || die "WEBHOOK_CONFIGURATION must be set"
    [[ ${WEBHOOK_NAME:-} =~ $name_re ]] || die "WEBHOOK_NAME must be set"
    local code ca
    code=$(kube GET "$secret_path")
    [[ $code == 200 ]] || die "reading Secret $NAMESPACE/$SECRET_NAME: HTTP $code: $(cat "$tmp/body")"
    # The Secret's data values are base64, which is what caBundle takes.
    ca=$(grep -o '"ca\.crt": *"[A-Za-z0-9+/=]*"' "$tmp/body" | head -n1 | sed 's/.*: *"\(.*\)"/\1/')
    [[ -n $ca ]] || die "Secret $NAMESPACE/$SECRET_NAME has no ca.crt"
    printf '{"webhooks":[{"name":"%s","clientConfig":{"caBundle":"%s"}}]}' "$WEBHOOK_NAME" "$ca" >"$tmp/patch.json"
    code=$(kube PATCH "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/$WEBHOOK_CONFIGURATION" \
        application/strategic-merge-patch+json "$tmp/patch.json")
    [[ $code == 200 ]] || die "patching ValidatingWebhookConfiguration $WEBHOOK_CONFIGURATION: HTTP $code: $(cat "$tmp/body")"
    log "caBundle of $WEBHOOK_CONFIGURATION/$WEBHOOK_NAME set from Secret $NAMESPACE/$SECRET_NAME"
}

"$mode"
