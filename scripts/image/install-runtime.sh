#!/usr/bin/env bash
# Image step (runtime stage, as root): the packages wicket runs with, all
# from Debian's own repositories, and a copy of nginx with the file
# capability that lets a non-root nginx master bind ports below 1024.
#
# - nginx-light: the nginx wicket runs as its child process (/usr/sbin/nginx);
# - libnginx-mod-http-headers-more-filter: response headers that replace the
#   backend's and apply to every status (HSTS, custom-headers, add-headers),
#   and what snippets written for ingress-nginx use (more_set_headers);
# - libnginx-mod-http-brotli-filter: enable-brotli;
# - libnginx-mod-http-ndk, libnginx-mod-http-set-misc,
#   libnginx-mod-http-subs-filter: set_escape_uri and friends, subs_filter,
#   which ingress-nginx's image had and snippets written for it use;
# - libnginx-mod-http-lua, lua-resty-core: the balancer that takes endpoint
#   changes without a reload (templates/balancer.lua);
# - libnginx-mod-http-modsecurity, modsecurity-crs: ModSecurity and the OWASP
#   Core Rule Set (enable-modsecurity, enable-owasp-core-rules), loaded only
#   when an Ingress or the ConfigMap turns them on;
# - libnginx-mod-stream: TCP and UDP services (--tcp-services-configmap,
#   --udp-services-configmap), loaded only when there are some;
# - tini: PID 1, forwards signals to wicket and reaps orphaned nginx workers;
# - curl, openssl, ca-certificates: the webhook certificate hook Jobs
#   (wicket-webhook-cert);
# - libcap2-bin: setcap/getcap, for the capability below.
#
# It also makes /usr/local/lib/wicket/nginx-low-ports (below).
#
# The Dockerfile runs it; CI runs it on the test machine too
# (scripts/install-test-deps.sh), so it must stay idempotent: packages
# already installed are left alone, the copy is made again only when nginx
# changed.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "install-runtime.sh: run as root" >&2; exit 1; }

packages=(nginx-light libnginx-mod-http-headers-more-filter libnginx-mod-http-brotli-filter libnginx-mod-http-ndk libnginx-mod-http-set-misc libnginx-mod-http-subs-filter libnginx-mod-http-lua lua-resty-core libnginx-mod-http-modsecurity modsecurity-crs libnginx-mod-stream tini curl openssl ca-certificates libcap2-bin)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-runtime.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# In the image (and only there), the package lists are not needed any more.
if [ "${WICKET_IMAGE_BUILD:-}" = 1 ]; then
    rm -rf /var/lib/apt/lists/*
fi

# A copy of nginx with the file capability cap_net_bind_service, for pods
# whose nginx listens on ports below 1024 as a non-root user (the chart
# passes it as --nginx-binary only then, with NET_BIND_SERVICE added and
# privilege escalation allowed). /usr/sbin/nginx itself stays without file
# capabilities: a binary with one cannot even be executed where the
# capability is not in the bounding set (capabilities dropped to none, the
# chart's default), and the system's nginx is left as Debian ships it.
nginx=/usr/sbin/nginx
low=/usr/local/lib/wicket/nginx-low-ports
if ! cmp -s "$nginx" "$low" || ! getcap "$low" | grep -q cap_net_bind_service; then
    install -D -m 0755 "$nginx" "$low.new"
    setcap cap_net_bind_service=+ep "$low.new"
    mv -f "$low.new" "$low"
fi
getcap "$low" | grep -q 'cap_net_bind_service[=+]*ep' || {
    echo "install-runtime.sh: setcap did not stick on $low ($(getcap "$low"))" >&2
    exit 1
}
echo "install-runtime.sh: $($nginx -v 2>&1); $(getcap "$low")" >&2
