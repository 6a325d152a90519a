# syntax=docker/dockerfile:1
# The wicket image: wicket and Debian's nginx in one container, run as the
# non-root user wicket (65532). nginx is wicket's child process.
#
#   docker build -t REGISTRY/wicket:0.1.0 .
#
# Each RUN step is a script in scripts/image/, and CI runs the runtime ones
# on the test machine (scripts/install-test-deps.sh runs install-runtime.sh
# and create-user.sh; tests/chart.rs runs check.sh), so the steps are
# exercised where no image is built.

ARG DEBIAN_RELEASE=bookworm

# ---- build: the release binary
FROM rust:1.95-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/image/build.sh /out

# ---- runtime
FROM debian:${DEBIAN_RELEASE}-slim
COPY scripts/image/install-runtime.sh scripts/image/create-user.sh scripts/image/check.sh /usr/local/lib/wicket/image/
# nginx-light with the headers-more, brotli, set-misc (with ndk),
# subs-filter, Lua (with lua-resty-core) and ModSecurity (with the OWASP
# Core Rule Set, modsecurity-crs) and stream (libnginx-mod-stream) modules,
# tini, curl, openssl;
# a copy of nginx with cap_net_bind_service
# (/usr/local/lib/wicket/nginx-low-ports) for ports below 1024.
RUN WICKET_IMAGE_BUILD=1 /usr/local/lib/wicket/image/install-runtime.sh
# The user wicket (65532) and /var/lib/wicket/state.
RUN /usr/local/lib/wicket/image/create-user.sh
COPY --from=build /out/wicket /usr/local/bin/wicket
COPY scripts/image/webhook-cert.sh /usr/local/bin/wicket-webhook-cert
# wicket --version, nginx -V and its modules, the capability, the user.
RUN /usr/local/lib/wicket/image/check.sh /usr/local/bin/wicket /usr/local/bin/wicket-webhook-cert

USER 65532:65532
WORKDIR /var/lib/wicket
# Defaults for `docker run` (the chart passes every flag itself): the
# prepared state folder (the chart mounts an emptyDir on /var/lib/wicket),
# Debian's nginx, which has no file capability, and ports a non-root user
# may bind anywhere (`docker run -p 80:8080 -p 443:8443 ...`).
ENV WICKET_STATE_DIR=/var/lib/wicket/state \
    WICKET_NGINX_BINARY=/usr/sbin/nginx \
    WICKET_HTTP_PORT=8080 \
    WICKET_HTTPS_PORT=8443
EXPOSE 8080 8443 10254
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/wicket"]
CMD ["controller"]
