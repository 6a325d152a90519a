#!/usr/bin/env bash
# Build (once) a real kube-apiserver and etcd for wicket's integration tests.
#
#   BIN=$(tools/apiserver/build.sh)   # -> .../k8s-<ver>-etcd-<ver>-<hash>/bin
#
# The binaries are built from the pinned wrapper module next to this script
# (go.mod / go.sum) with nothing but the Go module proxy, and cached outside
# the repo in ${WICKET_CACHE:-$HOME/.cache/wicket}. The cache folder is keyed
# by the Kubernetes and etcd versions and a hash of go.sum (plus the build
# recipe below), so bumping a pin rebuilds. When both binaries exist the
# script only prints the folder.
#
# Only the bin folder goes to stdout (as the last line); logs go to stderr.
# Env: WICKET_CACHE (cache root), WICKET_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${WICKET_CACHE:-$HOME/.cache/wicket}

# Bump when the way the binaries are built changes (flags, ldflags, ...).
recipe=2

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Versions straight from go.mod (no go command needed on the fast path).
modver() {
  awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$here/go.mod"
}
kube_version=$(modver k8s.io/kubernetes)
etcd_version=$(modver go.etcd.io/etcd/server/v3)
[[ -n $kube_version && -n $etcd_version ]] ||
  die "cannot read k8s.io/kubernetes / go.etcd.io/etcd/server/v3 versions from $here/go.mod"

sum_hash=$( { cat "$here/go.sum"; echo "recipe=$recipe"; } | sha256sum | cut -c1-12)
dir="$cache_root/k8s-${kube_version#v}-etcd-${etcd_version#v}-$sum_hash"
bin="$dir/bin"

have_bins() { [[ -x $bin/kube-apiserver && -x $bin/etcd ]]; }

if have_bins; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "$dir"

# One build at a time per cache folder; a second caller waits and then
# finds the binaries.
exec 9>"$dir/.lock"
if ! flock -n 9; then
  log "another build is running for $dir; waiting"
  flock 9
fi
if have_bins; then
  echo "$bin"
  exit 0
fi

# Stamp /version like the upstream release build (hack/lib/version.sh) does.
# buildDate is the module's publication time, so the binary is reproducible.
kube_nov=${kube_version#v}
major=${kube_nov%%.*}
minor=${kube_nov#*.}
minor=${minor%%.*}
build_date=$(cd "$here" && GOWORK=off GOFLAGS=-mod=readonly \
  go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes \
  2>/dev/null || true)
[[ -n $build_date ]] || build_date=1970-01-01T00:00:00Z
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version"
  ldflags+=" -X $pkg.gitMajor=$major"
  ldflags+=" -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitCommit="  # unknown: the module zip has no git data
  ldflags+=" -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.buildDate=$build_date"
done
etcd_ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${etcd_version}-module"

export CGO_ENABLED=0
export GOWORK=off
export GOFLAGS="-mod=readonly -buildvcs=false"
jobs=${WICKET_BUILD_JOBS:-2}

tmp="$dir/tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
log "building kube-apiserver $kube_version and etcd $etcd_version into $bin (go $(go env GOVERSION), -p $jobs)"
log "this takes a while on a cold Go build cache (about 5 minutes on 2 cores, ~500 MB of modules)"

cd "$here"
log "go build kube-apiserver"
go build -p "$jobs" -trimpath -ldflags "$ldflags" \
  -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
log "go build etcd"
go build -p "$jobs" -trimpath -ldflags "$etcd_ldflags" \
  -o "$tmp/etcd" go.etcd.io/etcd/server/v3 >&2

"$tmp/kube-apiserver" --version >&2 || die "built kube-apiserver does not run"
"$tmp/etcd" --version >&2 || die "built etcd does not run"

mkdir -p "$bin"
# etcd last: have_bins checks both, and each mv is atomic.
mv -f "$tmp/kube-apiserver" "$bin/kube-apiserver"
mv -f "$tmp/etcd" "$bin/etcd"
log "done in $((SECONDS - start))s"
echo "$bin"
