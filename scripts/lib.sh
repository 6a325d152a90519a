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

# Installs nginx from Debian's packages when it is missing.
ensure_nginx() {
    if find_nginx >/dev/null; then
        return 0
    fi
    echo "installing nginx-light from Debian's packages" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >&2
    find_nginx >/dev/null || { echo "error: nginx is still missing after apt-get" >&2; return 1; }
}
