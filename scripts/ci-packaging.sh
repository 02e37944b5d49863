#!/usr/bin/env bash
# Packaging check (root on a Debian-family machine). It never installs,
# upgrades or removes a package on this machine: the .deb goes into a
# throwaway root, a minimal Debian of this machine's release made by
# debootstrap (once, cached), copied afresh for each run and deleted at the
# end. Every command in it runs under chroot in its own mount, PID and
# network namespaces, so nothing it starts or mounts outlives it and its
# ports are not this machine's. A calllog-bridge installed here (its
# config, state, archive, user, running service) is not looked at, let
# alone changed; tests/packaging/host-untouched.sh proves that.
#
#   1. `cargo deb` packages the bridge;
#   2. `dpkg -i` in the throwaway root: its dependencies are there, the
#      binary runs, the unit passes `systemd-analyze verify` and rates
#      <= 2.0 in `systemd-analyze security`, the config is a conffile
#      (root:calllog-bridge 0640), the state directory, the enabled unit and
#      the system user are in place, and `check-config` as the service user
#      accepts the shipped config;
#   3. reinstalling (an upgrade) keeps a locally changed config;
#   4. `dpkg -P` removes the binary, unit, config and state;
#   5. `cargo generate-rpm` builds the .rpm (skipped with a note when the
#      tool cannot be installed; CALLLOG_SKIP_RPM=1 skips it);
#   6. prints the package sizes (of this debug binary, lightly compressed).
#
# The binary packaged is the test build's (BRIDGE_BIN, as test.sh passes it;
# scripts/test-build.sh otherwise), staged where cargo-deb and
# cargo-generate-rpm look for a release binary (CARGO_TARGET_DIR=
# target/package-check): what this checks is the package (its layout,
# conffile, maintainer scripts, unit, user), not the optimiser, so it does
# not spend a release build (LTO, ~270 crates) on it. `cargo deb`, as
# packaging/README.md says, builds the release package.
#
# Tools this machine lacks are installed, each with a line saying what and
# why: debootstrap from apt; cargo-deb and cargo-generate-rpm (pinned) built
# from crates.io once into $CALLLOG_TOOLS_DIR (default
# ~/.cache/calllog-bridge-tools), where the throwaway root's template is
# cached too.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=calllog-bridge
UNIT=/usr/lib/systemd/system/$NAME.service
CFG=/etc/$NAME/config.toml
MAX_EXPOSURE=2.0
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
# Bump when the packages below change: the cached root is made again.
ROOT_RECIPE=1
ROOT_PACKAGES=systemd,procps,iproute2

tools_dir="${CALLLOG_TOOLS_DIR:-$HOME/.cache/calllog-bridge-tools}"
tools_log="$tools_dir/install.log"

say() { printf "== ci-packaging [%ss]: %s\n" "$SECONDS" "$*"; }
fail() {
    printf '== ci-packaging: FAILED: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "must run as root (chroot and namespaces for the throwaway root)"
command -v dpkg-deb >/dev/null || fail "dpkg-deb not found: this check needs a Debian-family machine"
for tool in unshare chroot apt-get; do
    command -v "$tool" >/dev/null || fail "$tool not found: the throwaway root needs it"
done
# In a subshell: os-release's variables (NAME, ID, ...) stay out of ours.
read -r distro release < <(. /etc/os-release && echo "${ID:-} ${VERSION_CODENAME:-}")
[ -n "$release" ] || fail "no VERSION_CODENAME in /etc/os-release: cannot tell which release to make the throwaway root of"
mkdir -p "$tools_dir"

# --- Tools ---------------------------------------------------------------------
apt_updated=
apt_install() { # package why
    say "installing $1 from apt: $2"
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}

cargo_tool() { # crate version why: built once into the tools cache, put on PATH
    local root="$tools_dir/$1-$2" start=$SECONDS
    if [ ! -x "$root/bin/$1" ]; then
        say "building $1 $2 from crates.io: $3 (once, a few minutes on 2 cores; cached in $root, log in $tools_log)"
        if ! cargo install "$1@$2" --locked --root "$root" --target-dir "$tools_dir/build/$1" >>"$tools_log" 2>&1; then
            tail -n 20 "$tools_log" >&2
            say "building $1 failed (see $tools_log)"
            return 1
        fi
        rm -rf "$tools_dir/build/$1"
        say "built $1 in $((SECONDS - start)) s"
    fi
    PATH="$root/bin:$PATH"
}

command -v debootstrap >/dev/null ||
    apt_install debootstrap "it makes the throwaway root the package is installed in"
cargo_tool cargo-deb "$CARGO_DEB_VERSION" "it builds the .deb from [package.metadata.deb] in Cargo.toml" ||
    fail "cannot install cargo-deb"

# --- The throwaway root ------------------------------------------------------------
# The template: debootstrap's minbase (what every Debian system has) plus
# systemd (systemd-analyze, deb-systemd-helper's targets), procps (/bin/kill,
# which the unit's ExecReload names) and iproute2 (the loopback of the
# root's own network namespace), from this machine's own apt mirror.
template="$tools_dir/packaging-root-$distro-$release-$ROOT_RECIPE"
if [ ! -x "$template/usr/bin/dpkg" ]; then
    mirror=$(apt-get indextargets --format '$(REPO_URI)' "Release: $release" "Identifier: Packages" | head -n 1)
    [ -n "$mirror" ] || fail "no apt source for $release on this machine: cannot make the throwaway root"
    say "making a minimal $distro $release root with debootstrap for the package to be installed in (once, about 2 minutes; cached in $template, log in $tools_log)"
    start=$SECONDS
    rm -rf --one-file-system "$template.tmp"
    # In a mount namespace of its own: the /proc and /sys it mounts in the
    # new root go with it, even when it fails half-way.
    if ! unshare --mount debootstrap --variant=minbase --include="$ROOT_PACKAGES" "$release" "$template.tmp" "$mirror" >>"$tools_log" 2>&1; then
        tail -n 20 "$tools_log" >&2
        rm -rf --one-file-system "$template.tmp"
        fail "debootstrap could not make the throwaway root (see $tools_log)"
    fi
    rm -f "$template.tmp"/var/cache/apt/archives/*.deb
    mv "$template.tmp" "$template"
    say "made the root in $((SECONDS - start)) s"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/calllog-packaging.XXXXXX")
root="$work/root"
# The root's mounts live in the namespaces of each `in_root` command and go
# with them; --one-file-system keeps the removal on the root's own files
# whatever happens.
trap 'rm -rf --one-file-system "$work"' EXIT
cp -a "$template" "$root"

# Runs a command in the throwaway root: its own mount namespace (a /proc of
# its own PID namespace, gone when the command ends), its own network
# namespace (loopback only: the shipped config's ports never meet this
# machine's), a clean environment.
in_root() {
    unshare --mount --pid --fork --net --mount-proc="$root/proc" \
        chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        sh -c 'ip link set lo up && exec "$@"' sh "$@"
}
# A file's owner, group and mode as the root's own users and groups name them.
perms() { in_root stat -c '%U:%G %a' "$1"; }

# --- 1. Build the .deb ---------------------------------------------------------------
bin="${BRIDGE_BIN:-}"
[ -n "$bin" ] || bin=$(./scripts/test-build.sh)
[ -x "$bin" ] || fail "BRIDGE_BIN=$bin is not an executable"
target_dir=$(cargo metadata --locked --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
stage="$target_dir/package-check"
rm -rf "$stage"
mkdir -p "$stage/release"
cp "$bin" "$stage/release/$NAME"
# --fast: light compression (the 7-fold CPU of the default xz level buys
# nothing for a package that is installed once and thrown away).
say "cargo deb --no-build --fast (the test build's binary, staged in $stage/release)"
CARGO_TARGET_DIR="$stage" cargo deb --locked --no-build --fast --quiet
deb=$(ls "$stage"/debian/${NAME}_*.deb)
[ -f "$deb" ] || fail "no .deb in $stage/debian"
dpkg-deb --info "$deb" >/dev/null
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/$NAME .$UNIT .$CFG ./usr/share/doc/$NAME/README.md; do
    printf '%s\n' "$contents" | grep -q " $f\$" || fail "$f missing from $deb"
done

# --- 2. Install it in the throwaway root ------------------------------------------
cp "$deb" "$root/tmp/$NAME.deb"
say "dpkg -i $(basename "$deb") (in the throwaway root)"
in_root dpkg -i /tmp/$NAME.deb >/dev/null || fail "dpkg -i in a minimal $distro $release root"

in_root /usr/bin/$NAME --version >/dev/null || fail "installed binary does not run"
[ -f "$root$UNIT" ] || fail "unit not installed"
say "systemd-analyze verify (installed unit)"
in_root systemd-analyze verify "$UNIT" || fail "systemd-analyze verify"
security=$(in_root systemd-analyze security --offline=true "$UNIT" 2>&1) || true
exposure=$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || {
    printf '%s\n' "$security"
    fail "no exposure figure from systemd-analyze security"
}
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' || {
    printf '%s\n' "$security"
    fail "exposure $exposure is above $MAX_EXPOSURE"
}
say "systemd-analyze security: exposure $exposure (limit $MAX_EXPOSURE)"

in_root getent passwd $NAME >/dev/null || fail "user $NAME not created"
in_root getent group $NAME >/dev/null || fail "group $NAME not created"
shell=$(in_root getent passwd $NAME | cut -d: -f7)
case "$shell" in */nologin | */false) ;; *) fail "user $NAME has a login shell ($shell)" ;; esac

[ "$(perms $CFG)" = "root:$NAME 640" ] || fail "$CFG is $(perms $CFG), want root:$NAME 640"
[ "$(perms /etc/$NAME)" = "root:$NAME 750" ] || fail "/etc/$NAME is $(perms /etc/$NAME)"
[ "$(perms /var/lib/$NAME)" = "$NAME:$NAME 750" ] || fail "/var/lib/$NAME is $(perms /var/lib/$NAME)"
in_root dpkg-query -W -f='${Conffiles}\n' $NAME | grep -q "^ $CFG " || fail "$CFG is not a conffile"
[ -L "$root/etc/systemd/system/multi-user.target.wants/$NAME.service" ] || fail "unit not enabled"
# check-config checks what `run` needs, as the service user: a readable log
# file where the shipped paths point (the root has no Local Edition: made
# for the check), the state directory writable, the ports free.
le_dir=/mnt/data/trafficmanager/enriched/access
mkdir -p "$root$le_dir"
: >"$root$le_dir/access.log"
chmod -R a+rX "$root/mnt/data"
out=$(in_root runuser -u $NAME -- /usr/bin/$NAME check-config -c "$CFG" 2>&1) || {
    printf '%s\n' "$out"
    fail "check-config as the service user refuses $CFG"
}
printf '%s\n' "$out" | grep -q "access.log" || fail "check-config does not list the log file it found: $out"

# --- 3. Upgrade keeps a changed config -------------------------------------------
printf '\n# changed by ci-packaging\n' >>"$root$CFG"
say "dpkg -i again (upgrade path)"
in_root dpkg -i --force-confold /tmp/$NAME.deb >/dev/null || fail "reinstall"
grep -q 'changed by ci-packaging' "$root$CFG" || fail "reinstall replaced the changed config"
[ "$(perms $CFG)" = "root:$NAME 640" ] || fail "reinstall changed the config's ownership"

# --- 4. Purge ----------------------------------------------------------------------
say "dpkg -P"
in_root dpkg -P $NAME >/dev/null || fail "dpkg -P"
for f in /usr/bin/$NAME $UNIT /etc/$NAME /var/lib/$NAME /etc/systemd/system/multi-user.target.wants/$NAME.service; do
    [ ! -e "$root$f" ] && [ ! -L "$root$f" ] || fail "$f left after purge"
done
# The package created the system user and group: purge removes them (its
# home, /var/lib/calllog-bridge, is gone with the state).
! in_root getent passwd $NAME >/dev/null || fail "user $NAME left after purge (its home is gone)"
! in_root getent group $NAME >/dev/null || fail "group $NAME left after purge"

# --- 5. The .rpm -------------------------------------------------------------------
rpm_file=
if [ "${CALLLOG_SKIP_RPM:-}" = 1 ]; then
    say "rpm skipped (CALLLOG_SKIP_RPM=1)"
elif cargo_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION" \
    "it builds the .rpm from [package.metadata.generate-rpm] in Cargo.toml"; then
    say "cargo generate-rpm"
    # cargo-generate-rpm packages the binary as it is: strip it first, as
    # its documentation says (cargo deb above stripped its own copy).
    # gzip instead of the default zstd: a fifteenth of the CPU, as --fast
    # for the .deb.
    strip -s "$stage/release/$NAME"
    CARGO_TARGET_DIR="$stage" cargo generate-rpm --payload-compress gzip
    rpm_file=$(ls "$stage"/generate-rpm/$NAME-*.rpm)
    [ -f "$rpm_file" ] || fail "no .rpm in $stage/generate-rpm"
    if command -v rpm >/dev/null; then
        list=$(rpm -qpl "$rpm_file" 2>/dev/null)
        for f in /usr/bin/$NAME $UNIT $CFG; do
            printf '%s\n' "$list" | grep -qx "$f" || fail "$f missing from $rpm_file"
        done
        rpm -qp --scripts "$rpm_file" 2>/dev/null | grep -q 'useradd --system' || fail "rpm %pre does not create the user"
        rpm -qpc "$rpm_file" 2>/dev/null | grep -qx "$CFG" || fail "$CFG is not a config file in the rpm"
    fi
else
    say "rpm not built: cargo-generate-rpm could not be installed"
fi

# --- 6. Sizes ------------------------------------------------------------------------
say "sizes (a debug binary, light compression: not those of a release package, which \`cargo deb\` builds)"
installed_kib=$(dpkg-deb -f "$deb" Installed-Size)
say "deb: $deb $(stat -c %s "$deb") bytes (installed size ${installed_kib} KiB)"
for ddeb in "$stage"/debian/$NAME-dbgsym_*.ddeb; do
    [ -f "$ddeb" ] && say "debug symbols: $ddeb $(stat -c %s "$ddeb") bytes"
done
if [ -n "$rpm_file" ]; then
    say "rpm: $rpm_file $(stat -c %s "$rpm_file") bytes"
fi
say "ok"
