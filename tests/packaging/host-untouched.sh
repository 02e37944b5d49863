#!/usr/bin/env bash
# Test of the packaging check itself: it must leave an installed
# calllog-bridge package, its config and its data as they were.
#
# When this machine has no calllog-bridge package, a stand-in is installed
# first: a small .deb of that name (version 0~host-untouched) with a conffile
# /etc/calllog-bridge/config.toml, a system user and data under
# /var/lib/calllog-bridge (a checkpoint and an archive file, written by its
# postinst). When a real one is installed it is the one watched, and
# nothing is installed beside it. The check (scripts/ci-packaging.sh, or the
# script given as $1) then runs, and afterwards the package's status and
# version, its user and group, the files of its config, binary and unit,
# and its state directory must be exactly as before: every file's content,
# owner and mode, also under /var/lib for the stand-in; for a real package
# only the state directory itself, since a running service writes there.
# The stand-in and its user are removed at the end, and only them.
#
# Run as root on a Debian-family machine (test.sh runs it as its packaging
# step). Extra environment (BRIDGE_BIN, CALLLOG_SKIP_RPM, ...) is passed on.
set -euo pipefail
cd "$(dirname "$0")/../.."

NAME=calllog-bridge
STANDIN_VERSION=0~host-untouched
check="${1:-scripts/ci-packaging.sh}"

say() { printf '== host-untouched: %s\n' "$*"; }
fail() {
    printf '== host-untouched: FAILED: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "must run as root"
command -v dpkg-deb >/dev/null || fail "needs a Debian-family machine"

installed_version() {
    { dpkg-query -W -f='${Status} ${Version}\n' "$NAME" 2>/dev/null || true; } | sed -n 's/^install ok installed //p'
}

# What the check must not change. The stand-in's state directory is compared
# file by file; a real package's only as a directory (owner, mode).
snapshot() { # strict|loose
    dpkg-query -W -f='package ${Package} ${Version} ${Status}\n' "$NAME" 2>/dev/null || echo "package $NAME not installed"
    dpkg-query -W -f='${Conffiles}\n' "$NAME" 2>/dev/null || true
    getent passwd "$NAME" || echo "no user $NAME"
    getent group "$NAME" || echo "no group $NAME"
    local paths=(/etc/$NAME /usr/bin/$NAME /usr/lib/systemd/system/$NAME.service
        /etc/systemd/system/multi-user.target.wants/$NAME.service)
    if [ "$1" = strict ]; then paths+=(/var/lib/$NAME); fi
    local p
    for p in "${paths[@]}"; do
        if [ -e "$p" ] || [ -L "$p" ]; then
            find "$p" -printf '%p %u:%g %m %y %s %l\n' | sort
            find "$p" -type f -exec sha256sum {} + | sort -k 2
        else
            echo "$p absent"
        fi
    done
    if [ "$1" = loose ]; then
        stat -c '%n %U:%G %a' /var/lib/$NAME 2>/dev/null || echo "/var/lib/$NAME absent"
    fi
}

work=$(mktemp -d "${TMPDIR:-/tmp}/host-untouched.XXXXXX")
standin_installed=
user_existed=
group_existed=
cleanup() {
    if [ -n "$standin_installed" ] && [ "$(installed_version)" = "$STANDIN_VERSION" ]; then
        dpkg -P "$NAME" >/dev/null || say "could not remove the stand-in package: dpkg -P $NAME"
    fi
    if [ -n "$standin_installed" ]; then
        if [ -z "$user_existed" ] && getent passwd "$NAME" >/dev/null; then userdel "$NAME" || true; fi
        if [ -z "$group_existed" ] && getent group "$NAME" >/dev/null; then groupdel "$NAME" || true; fi
    fi
    rm -rf "$work"
}
trap cleanup EXIT

version=$(installed_version)
if [ "$version" = "$STANDIN_VERSION" ]; then
    # Left by an interrupted run of this test: ours to remove.
    say "removing the stand-in package an interrupted run left"
    dpkg -P "$NAME" >/dev/null
    version=
fi

if [ -n "$version" ]; then
    mode=loose
    say "$NAME $version is installed here: watching it (nothing is installed beside it)"
else
    mode=strict
    getent passwd "$NAME" >/dev/null && user_existed=1
    getent group "$NAME" >/dev/null && group_existed=1
    pkg="$work/pkg"
    mkdir -p "$pkg/DEBIAN" "$pkg/etc/$NAME"
    cat >"$pkg/DEBIAN/control" <<EOF
Package: $NAME
Version: $STANDIN_VERSION
Architecture: all
Maintainer: calllog-bridge tests <tests@calllog-bridge.invalid>
Description: stand-in for an installed calllog-bridge
 Installed by tests/packaging/host-untouched.sh and removed by it.
EOF
    echo "/etc/$NAME/config.toml" >"$pkg/DEBIAN/conffiles"
    printf '# the operator'"'"'s config (stand-in)\nstate_dir = "/var/lib/%s"\n' "$NAME" >"$pkg/etc/$NAME/config.toml"
    cat >"$pkg/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
getent group $NAME >/dev/null || groupadd --system $NAME
getent passwd $NAME >/dev/null || useradd --system --gid $NAME --home-dir /var/lib/$NAME --no-create-home --shell /usr/sbin/nologin $NAME
mkdir -p /var/lib/$NAME/archive
echo '{"file":"/var/log/le/access.log","offset":123456}' >/var/lib/$NAME/checkpoints.json
echo '{"request_id":"stand-in"}' >/var/lib/$NAME/archive/records.ndjson
chown -R $NAME:$NAME /var/lib/$NAME
chmod 0750 /var/lib/$NAME
chown root:$NAME /etc/$NAME/config.toml
chmod 0640 /etc/$NAME/config.toml
EOF
    cat >"$pkg/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e
if [ "\$1" = purge ]; then rm -rf /var/lib/$NAME /etc/$NAME; fi
EOF
    chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm"
    dpkg-deb --root-owner-group --build "$pkg" "$work/standin.deb" >/dev/null
    say "installing a stand-in $NAME package ($STANDIN_VERSION: a config, a user, a checkpoint and an archive file)"
    standin_installed=1
    dpkg -i "$work/standin.deb" >/dev/null
    # The operator changed the config after installing.
    printf 'log_level = "debug"\n' >>"/etc/$NAME/config.toml"
fi

snapshot "$mode" >"$work/before"
say "running $check"
"$check" || fail "$check failed"
snapshot "$mode" >"$work/after"
if ! diff -u "$work/before" "$work/after" >&2; then
    fail "$check changed the installed $NAME (diff above: - before, + after)"
fi
say "ok: the installed $NAME, its config and its data are as they were"
