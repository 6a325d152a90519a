#!/usr/bin/env bash
# Image step (runtime stage, last): proves the image has what wicket runs
# with. CI runs it on the test machine too (tests/chart.rs), after
# install-runtime.sh and create-user.sh.
#
#   check.sh [WICKET_BINARY [WEBHOOK_CERT_SCRIPT]]
#
# - `wicket --version` runs;
# - `nginx -V` runs and has the modules the templates use (TLS, HTTP/2,
#   PCRE, stub_status), and the dynamic modules wicket loads are there;
# - /usr/sbin/nginx has no file capability, its copy
#   /usr/local/lib/wicket/nginx-low-ports has cap_net_bind_service, and, when
#   run as root where ports below 1024 are privileged: as the wicket user
#   with only NET_BIND_SERVICE in the bounding set, the copy binds one and
#   /usr/sbin/nginx is refused;
# - the wicket user (65532) and its folders exist;
# - tini, curl, openssl are there, and the webhook certificate script parses.
set -euo pipefail

wicket=${1:-/usr/local/bin/wicket}
webhook_cert=${2:-/usr/local/bin/wicket-webhook-cert}
nginx=/usr/sbin/nginx
uid=${WICKET_UID:-65532}
gid=${WICKET_GID:-65532}

fail() { echo "check.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "check.sh: ok: $*" >&2; }

version=$("$wicket" --version) || fail "$wicket --version"
[[ $version == wicket\ * ]] || fail "unexpected version line: $version"
ok "$version"

nginx_v=$("$nginx" -V 2>&1) || fail "$nginx -V"
for m in --with-http_ssl_module --with-http_v2_module --with-http_stub_status_module --with-pcre-jit; do
    grep -q -- "$m" <<<"$nginx_v" || fail "nginx lacks $m"
done
ok "$(head -n1 <<<"$nginx_v")"
# The dynamic modules wicket loads (Debian's libnginx-mod-* packages).
for m in ngx_http_headers_more_filter_module.so ngx_http_brotli_filter_module.so ndk_http_module.so ngx_http_set_misc_module.so ngx_http_subs_filter_module.so ngx_http_lua_module.so ngx_http_modsecurity_module.so ngx_stream_module.so; do
    [ -f "/usr/lib/nginx/modules/$m" ] || fail "/usr/lib/nginx/modules/$m is missing (run install-runtime.sh again)"
done
ok "headers-more, brotli, ndk, set-misc, subs-filter, Lua, ModSecurity and stream modules"
# The OWASP Core Rule Set (modsecurity-crs) where wicket includes it from.
for f in /etc/modsecurity/crs/crs-setup.conf /usr/share/modsecurity-crs/rules/REQUEST-942-APPLICATION-ATTACK-SQLI.conf; do
    [ -f "$f" ] || fail "$f is missing (run install-runtime.sh again)"
done
ok "ModSecurity module and the Core Rule Set"

# /usr/sbin/nginx runs where no capability is left at all (so it has no
# file capability); the copy for ports below 1024 has cap_net_bind_service.
low=/usr/local/lib/wicket/nginx-low-ports
[ -z "$(getcap "$nginx")" ] || fail "$nginx has file capabilities ($(getcap "$nginx")): it would not run without them"
cmp -s "$nginx" "$low" || fail "$low is missing or is not a copy of $nginx (run install-runtime.sh again)"
caps=$(getcap "$low")
grep -q 'cap_net_bind_service[=+]*ep' <<<"$caps" || fail "$low has no cap_net_bind_service file capability ($caps)"
ok "$caps"

[ "$(id -u wicket 2>/dev/null)" = "$uid" ] || fail "no user wicket with uid $uid"
[ "$(id -g wicket)" = "$gid" ] || fail "user wicket's group is not $gid"
for d in /var/lib/wicket /var/lib/wicket/state; do
    [ "$(stat -c %u:%g "$d" 2>/dev/null)" = "$uid:$gid" ] || fail "$d is missing or not owned by $uid:$gid"
done
ok "user wicket ($uid:$gid) and /var/lib/wicket"

for b in /usr/bin/tini /usr/bin/curl /usr/bin/openssl; do
    [ -x "$b" ] || fail "$b is missing"
done
bash -n "$webhook_cert" || fail "$webhook_cert does not parse"
ok "tini, curl, openssl, $webhook_cert"

# A port below 1024 that nothing listens on (from /proc/net/tcp*).
free_privileged_port() {
    local used=" " f local_addr st
    for f in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$f" ] || continue
        while read -r _ local_addr _ st _; do
            if [ "$st" = 0A ]; then used+="$((16#${local_addr##*:})) "; fi
        done < <(tail -n +2 "$f")
    done
    for p in $(seq 1023 -1 900); do
        [[ $used == *" $p "* ]] || { echo "$p"; return 0; }
    done
    return 1
}

start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo 1024)
if [ "$(id -u)" -ne 0 ]; then
    ok "not root: the non-root bind check of nginx's file capability was not run"
elif [ "$start" -le 900 ]; then
    ok "ports from $start up need no capability here: the non-root bind check was not run"
else
    port=$(free_privileged_port) || fail "no free port below 1024 for the bind check"
    dir=$(mktemp -d)
    trap 'kill -QUIT "$(cat "$dir/tmp/nginx.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$dir"' EXIT
    chmod 0755 "$dir"
    mkdir "$dir/tmp"
    chown "$uid:$gid" "$dir/tmp"
    cat >"$dir/nginx.conf" <<CONF
pid $dir/tmp/nginx.pid;
error_log stderr;
events {}
http {
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    access_log off;
    server { listen 127.0.0.1:$port; return 204; }
}
CONF
    # As in the pod: the wicket user, every capability dropped from the
    # bounding set but NET_BIND_SERVICE.
    # shellcheck disable=SC2054 # the comma is setpriv's
    as_wicket=(setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all
        --bounding-set=-all,+net_bind_service)
    # Where NET_BIND_SERVICE is not in the bounding set, a binary with the
    # file capability cannot even start (why /usr/sbin/nginx has none).
    if setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all --bounding-set=-all \
        "$low" -v 2>/dev/null; then
        fail "$low started without NET_BIND_SERVICE in its bounding set"
    fi
    "${as_wicket[@]}" "$low" -e stderr -p "$dir" -c "$dir/nginx.conf" -t -q ||
        fail "nginx -t as user $uid refused the check's config"
    # Without the file capability it must be refused, or this check proves
    # nothing.
    if "${as_wicket[@]}" "$nginx" -e stderr -p "$dir" -c "$dir/nginx.conf" 2>"$dir/nocap.log"; then
        fail "$nginx bound port $port without a capability: the check proves nothing here"
    fi
    grep -q "Permission denied" "$dir/nocap.log" || fail "$nginx failed otherwise: $(cat "$dir/nocap.log")"
    "${as_wicket[@]}" "$low" -e stderr -p "$dir" -c "$dir/nginx.conf" ||
        fail "$low as user $uid could not bind port $port with its file capability"
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/") || true
    [ "$code" = 204 ] || fail "nginx on port $port answered '$code'"
    ok "as user $uid, $low binds port $port through its file capability ($nginx cannot), and cannot start without NET_BIND_SERVICE"
fi
ok "all checks passed"
