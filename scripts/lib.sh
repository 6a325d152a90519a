# Shared helpers for wicket's scripts (sourced, not run).

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: '$*' needs root and sudo is not installed" >&2
        return 1
    fi
}

# The nginx binary, from PATH or Debian's /usr/sbin.
find_nginx() {
    command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || return 1
}

# The nginx modules wicket loads, from Debian's packages.
NGINX_MODULE_PACKAGES=(libnginx-mod-http-headers-more-filter libnginx-mod-http-brotli-filter libnginx-mod-http-ndk libnginx-mod-http-set-misc libnginx-mod-http-subs-filter libnginx-mod-http-lua lua-resty-core libnginx-mod-http-modsecurity modsecurity-crs libnginx-mod-stream)

# Installs nginx and the modules wicket loads from Debian's packages when
# they are missing.
ensure_nginx() {
    local missing=()
    find_nginx >/dev/null || missing+=(nginx-light)
    for p in "${NGINX_MODULE_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]} from Debian's packages" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    find_nginx >/dev/null || { echo "error: nginx is still missing after apt-get" >&2; return 1; }
}

# Packages only the tests use: Debian's Prometheus (`prometheus` and
# `promtool`, for tests/request_metrics.rs: the chart's dashboard queries and
# alert rules against a real Prometheus scraping wicket).
TEST_PACKAGES=(prometheus)

# Installs the TEST_PACKAGES that are missing.
ensure_test_packages() {
    local missing=()
    for p in "${TEST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]} from Debian's packages" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
