#!/usr/bin/env bash
# Packaging check for CI (run as root on a Debian-family machine):
#   1. the unit passes `systemd-analyze verify` and rates <= 2.0 in
#      `systemd-analyze security`;
#   2. `cargo deb` builds the .deb;
#   3. `dpkg -i` installs it on this machine; the binary, unit, config
#      (a conffile, root:calllog-bridge 0640), state directory, enabled unit
#      and system user are in place, and the service user can read the config;
#   4. reinstalling (an upgrade) keeps a locally changed config;
#   5. `dpkg -P` removes it again, and the system user and group the package
#      created are deleted (Debian policy keeps them on a real host; a test
#      host must be left as it was found);
#   6. `cargo generate-rpm` builds the .rpm (skipped with a note when the tool
#      cannot be installed; CALLLOG_SKIP_RPM=1 skips it);
#   7. prints the package sizes.
# Tools missing from the machine are installed (systemd from apt, cargo-deb and
# cargo-generate-rpm from crates.io, ~1 minute each on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=calllog-bridge
UNIT=systemd/$NAME.service
MAX_EXPOSURE=2.0

say() { printf '== ci-packaging: %s\n' "$*"; }
fail() {
    printf '== ci-packaging: FAILED: %s\n' "$*" >&2
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    fail "must run as root (it installs and removes the package on this machine)"
fi
command -v dpkg-deb >/dev/null || fail "dpkg-deb not found: this check needs a Debian-family machine"

apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v systemd-analyze >/dev/null || apt_install systemd
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet

# --- 1. The unit, as written ------------------------------------------------
say "systemd-analyze security $UNIT"
security=$(systemd-analyze security --offline=true "$UNIT" 2>&1) || true
exposure=$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || {
    printf '%s\n' "$security"
    fail "no exposure figure from systemd-analyze security"
}
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' || {
    printf '%s\n' "$security"
    fail "exposure $exposure is above $MAX_EXPOSURE"
}
say "exposure $exposure (limit $MAX_EXPOSURE)"

# --- 2. Build the .deb --------------------------------------------------------
say "cargo deb"
rm -rf target/debian
cargo deb --locked --quiet
deb=$(ls target/debian/${NAME}_*.deb)
[ -f "$deb" ] || fail "no .deb in target/debian"
dpkg-deb --info "$deb" >/dev/null
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/$NAME ./usr/lib/systemd/system/$NAME.service ./etc/$NAME/config.toml ./usr/share/doc/$NAME/README.md; do
    printf '%s\n' "$contents" | grep -q " $f\$" || fail "$f missing from $deb"
done

# --- 3. Install on this machine ----------------------------------------------
if dpkg-query -W -f='${Status}' "$NAME" 2>/dev/null | grep -q installed; then
    say "removing a $NAME package left by an earlier run"
    dpkg -P "$NAME" >/dev/null
fi
# What this run creates on the host, removed again whatever happens: the
# package's system user and group (unless they were there before), and the
# Local Edition log directory the shipped config points at (check-config
# needs it to match a file; unless it was there before).
user_existed=; getent passwd "$NAME" >/dev/null && user_existed=1
group_existed=; getent group "$NAME" >/dev/null && group_existed=1
le_dir=/mnt/data/trafficmanager/enriched/access
le_created=
remove_user() {
    if [ -z "$user_existed" ] && getent passwd "$NAME" >/dev/null; then userdel "$NAME" >/dev/null 2>&1 || true; fi
    if [ -z "$group_existed" ] && getent group "$NAME" >/dev/null; then groupdel "$NAME" >/dev/null 2>&1 || true; fi
}
remove_le_dir() {
    if [ -n "$le_created" ]; then rm -rf "$le_created"; fi
}
cleanup() {
    dpkg -P "$NAME" >/dev/null 2>&1 || true
    remove_user
    remove_le_dir
}
trap cleanup EXIT

say "dpkg -i $deb"
dpkg -i "$deb" >/dev/null

/usr/bin/$NAME --version >/dev/null || fail "installed binary does not run"
[ -f /usr/lib/systemd/system/$NAME.service ] || fail "unit not installed"
say "systemd-analyze verify (installed unit)"
systemd-analyze verify /usr/lib/systemd/system/$NAME.service || fail "systemd-analyze verify"

getent passwd $NAME >/dev/null || fail "user $NAME not created"
getent group $NAME >/dev/null || fail "group $NAME not created"
shell=$(getent passwd $NAME | cut -d: -f7)
case "$shell" in */nologin | */false) ;; *) fail "user $NAME has a login shell ($shell)" ;; esac

cfg=/etc/$NAME/config.toml
[ "$(stat -c '%U:%G %a' "$cfg")" = "root:$NAME 640" ] || fail "$cfg is $(stat -c '%U:%G %a' "$cfg"), want root:$NAME 640"
[ "$(stat -c '%U:%G %a' /etc/$NAME)" = "root:$NAME 750" ] || fail "/etc/$NAME is $(stat -c '%U:%G %a' /etc/$NAME)"
[ "$(stat -c '%U:%G %a' /var/lib/$NAME)" = "$NAME:$NAME 750" ] || fail "/var/lib/$NAME is $(stat -c '%U:%G %a' /var/lib/$NAME)"
dpkg-query -W -f='${Conffiles}\n' $NAME | grep -q "^ $cfg " || fail "$cfg is not a conffile"
[ -L /etc/systemd/system/multi-user.target.wants/$NAME.service ] || fail "unit not enabled"
# check-config checks what `run` needs, as the service user: a readable log
# file where the shipped paths point (created for the check when this host
# has no Local Edition), the state directory writable, the ports free.
if [ ! -d "$le_dir" ]; then
    le_created=$le_dir
    while [ ! -e "$(dirname "$le_created")" ]; do le_created=$(dirname "$le_created"); done
    mkdir -p "$le_dir"
    : >"$le_dir/access.log"
    chmod -R a+rX "$le_created"
fi
out=$(runuser -u $NAME -- /usr/bin/$NAME check-config -c "$cfg" 2>&1) || {
    printf '%s\n' "$out"
    fail "check-config as the service user refuses $cfg"
}
printf '%s\n' "$out" | grep -q "access.log" || fail "check-config does not list the log file it found: $out"
remove_le_dir
le_created=

# --- 4. Upgrade keeps a changed config ---------------------------------------
printf '\n# changed by ci-packaging\n' >>"$cfg"
say "dpkg -i again (upgrade path)"
dpkg -i --force-confold "$deb" >/dev/null
grep -q 'changed by ci-packaging' "$cfg" || fail "reinstall replaced the changed config"
[ "$(stat -c '%U:%G %a' "$cfg")" = "root:$NAME 640" ] || fail "reinstall changed the config's ownership"

# --- 5. Purge --------------------------------------------------------------------
say "dpkg -P"
dpkg -P $NAME >/dev/null
remove_user
trap - EXIT
[ ! -e /usr/bin/$NAME ] || fail "binary left after purge"
[ ! -e /usr/lib/systemd/system/$NAME.service ] || fail "unit left after purge"
[ ! -e /etc/$NAME ] || fail "/etc/$NAME left after purge"
[ ! -e /var/lib/$NAME ] || fail "/var/lib/$NAME left after purge"
[ ! -e /etc/systemd/system/multi-user.target.wants/$NAME.service ] || fail "enable symlink left after purge"
if [ -z "$user_existed" ]; then ! getent passwd $NAME >/dev/null || fail "user $NAME left after the test"; fi
if [ -z "$group_existed" ]; then ! getent group $NAME >/dev/null || fail "group $NAME left after the test"; fi
[ -z "$le_created" ] || [ ! -e "$le_created" ] || fail "$le_created left after the test"

# --- 6. The .rpm -------------------------------------------------------------------
rpm_file=
if [ "${CALLLOG_SKIP_RPM:-}" = 1 ]; then
    say "rpm skipped (CALLLOG_SKIP_RPM=1)"
else
    command -v cargo-generate-rpm >/dev/null || cargo install cargo-generate-rpm --locked --quiet || true
    if command -v cargo-generate-rpm >/dev/null; then
        say "cargo generate-rpm"
        rm -rf target/generate-rpm
        # cargo-generate-rpm packages the binary as it is: strip it first, as
        # its documentation says (the .deb above already took its debug
        # symbols into the -dbgsym .ddeb).
        strip -s target/release/$NAME
        cargo generate-rpm
        rpm_file=$(ls target/generate-rpm/$NAME-*.rpm)
        [ -f "$rpm_file" ] || fail "no .rpm in target/generate-rpm"
        if command -v rpm >/dev/null; then
            list=$(rpm -qpl "$rpm_file" 2>/dev/null)
            for f in /usr/bin/$NAME /usr/lib/systemd/system/$NAME.service $cfg; do
                printf '%s\n' "$list" | grep -qx "$f" || fail "$f missing from $rpm_file"
            done
            rpm -qp --scripts "$rpm_file" 2>/dev/null | grep -q 'useradd --system' || fail "rpm %pre does not create the user"
            rpm -qpc "$rpm_file" 2>/dev/null | grep -qx "$cfg" || fail "$cfg is not a config file in the rpm"
        fi
    else
        say "rpm not built: cargo-generate-rpm could not be installed"
    fi
fi

# --- 7. Sizes ------------------------------------------------------------------------
installed_kib=$(dpkg-deb -f "$deb" Installed-Size)
say "deb: $deb $(stat -c %s "$deb") bytes (installed size ${installed_kib} KiB)"
for ddeb in target/debian/$NAME-dbgsym_*.ddeb; do
    [ -f "$ddeb" ] && say "debug symbols: $ddeb $(stat -c %s "$ddeb") bytes"
done
if [ -n "$rpm_file" ]; then
    say "rpm: $rpm_file $(stat -c %s "$rpm_file") bytes"
fi
say "ok"
