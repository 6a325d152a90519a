#!/usr/bin/env bash
# Image step (runtime stage, as root): the non-root user wicket and nginx
# run as, and the folders they write (the chart mounts emptyDirs there; the
# root filesystem is read-only).
#
#   /var/lib/wicket        the state folder's parent (--state-dir /var/lib/wicket/state)
#   /var/lib/wicket/state  nginx.conf, certificates, nginx's temporary files
#
# uid/gid 65532 (WICKET_UID/WICKET_GID to change): outside the ranges Debian
# allocates, so it collides neither in the image nor on a CI machine; the
# chart's runAsUser/runAsGroup/fsGroup use the same number.
#
# Idempotent (CI runs it on the test machine, scripts/install-test-deps.sh):
# an existing user with the right ids is kept; a clash is an error.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "create-user.sh: run as root" >&2; exit 1; }

uid=${WICKET_UID:-65532}
gid=${WICKET_GID:-65532}
name=wicket

if getent group "$name" >/dev/null; then
    [ "$(getent group "$name" | cut -d: -f3)" = "$gid" ] ||
        { echo "create-user.sh: group $name exists with another gid" >&2; exit 1; }
elif getent group "$gid" >/dev/null; then
    echo "create-user.sh: gid $gid belongs to group $(getent group "$gid" | cut -d: -f1)" >&2
    exit 1
else
    groupadd --system -K SYS_GID_MAX=65535 --gid "$gid" "$name"
fi

if id -u "$name" >/dev/null 2>&1; then
    [ "$(id -u "$name")" = "$uid" ] ||
        { echo "create-user.sh: user $name exists with another uid" >&2; exit 1; }
elif getent passwd "$uid" >/dev/null; then
    echo "create-user.sh: uid $uid belongs to user $(getent passwd "$uid" | cut -d: -f1)" >&2
    exit 1
else
    useradd --system -K SYS_UID_MAX=65535 --uid "$uid" --gid "$gid" --no-create-home \
        --home-dir /var/lib/wicket --shell /usr/sbin/nologin "$name"
fi

install -d -o "$uid" -g "$gid" -m 0755 /var/lib/wicket
install -d -o "$uid" -g "$gid" -m 0700 /var/lib/wicket/state
echo "create-user.sh: $(id "$name"); $(stat -c '%A %U:%G %n' /var/lib/wicket /var/lib/wicket/state | tr '\n' ' ')" >&2
