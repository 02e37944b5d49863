#!/usr/bin/env bash
# Installs the real services some tests talk to, once, into a cache outside
# the repository, and prints where they are:
#
#   tansu     a Kafka-protocol broker (crates.io, Apache-2.0), built with
#             its in-memory/S3 (`dynostore`) and SQLite (`libsql`) storage
#             engines. About 15 minutes of CPU to build on 2 cores: cached.
#   s3s-fs    an S3-compatible server over a directory (crates.io).
#   python    a virtualenv with kafka-python (an independent Kafka client),
#             boto3 (an independent S3 client) and opentelemetry-proto (the
#             official OTLP definitions, for the test OTLP collector), from
#             PyPI.
#   prometheus  Debian's `prometheus` package (prometheus and promtool, for
#             the alert-rule tests): downloaded with `apt-get download` and
#             unpacked with `dpkg-deb -x` into the cache, never installed
#             system-wide (no service, no user, nothing outside the cache).
#
# The cache is $CALLLOG_TOOLS_DIR (default ~/.cache/calllog-bridge-tools);
# each tool is rebuilt only when its binary is missing. Usage:
#
#   scripts/test-tools.sh            install what is missing, print the env
#   eval "$(scripts/test-tools.sh)"  ... and export it
#
# The tests find the tools through CALLLOG_TANSU, CALLLOG_S3S_FS and
# CALLLOG_TOOLS_PYTHON, CALLLOG_PROMETHEUS, CALLLOG_PROMTOOL (or the default
# cache paths); a test whose tool is
# missing says so and is skipped, unless CALLLOG_REQUIRE_TOOLS=1 (CI), where
# it fails.
set -euo pipefail

dir="${CALLLOG_TOOLS_DIR:-$HOME/.cache/calllog-bridge-tools}"
mkdir -p "$dir"
log="$dir/install.log"

TANSU_VERSION=0.6.0
S3S_FS_VERSION=0.14.1

say() { echo "test-tools: $*" >&2; }

install_crate() { # name version features bin
    local name=$1 version=$2 features=$3 bin=$4
    local root="$dir/$name-$version"
    if [ -x "$root/bin/$bin" ]; then
        return 0
    fi
    say "building $name $version from crates.io (once; cached in $root) ..."
    local start=$SECONDS
    if ! cargo install "$name@$version" --locked --features "$features" --root "$root" \
        --target-dir "$dir/build/$name" >>"$log" 2>&1; then
        say "FAILED to build $name (see $log)"
        return 1
    fi
    rm -rf "$dir/build/$name"
    say "built $name in $((SECONDS - start)) s"
}

install_python() {
    local venv="$dir/python"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import kafka, boto3, opentelemetry.proto' 2>/dev/null; then
        return 0
    fi
    say "installing kafka-python, boto3 and opentelemetry-proto from PyPI into $venv ..."
    python3 -m venv "$venv" >>"$log" 2>&1
    "$venv/bin/pip" install --quiet 'kafka-python==2.0.2' 'boto3>=1.34,<2' 'opentelemetry-proto>=1.27,<2' >>"$log" 2>&1
}

install_prometheus() {
    local root="$dir/prometheus"
    if [ -x "$root/usr/bin/prometheus" ] && [ -x "$root/usr/bin/promtool" ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
        say "cannot install prometheus: no apt-get/dpkg-deb (not a Debian-family machine)"
        return 1
    fi
    say "downloading Debian's prometheus package (once; unpacked into $root) ..."
    local tmp
    tmp=$(mktemp -d)
    # The package lists may be empty on a fresh machine: refresh them once.
    if ! (cd "$tmp" && apt-get download prometheus) >>"$log" 2>&1; then
        apt-get update >>"$log" 2>&1 || true
        if ! (cd "$tmp" && apt-get download prometheus) >>"$log" 2>&1; then
            rm -rf "$tmp"
            say "FAILED to download the prometheus package (see $log)"
            return 1
        fi
    fi
    rm -rf "$root.new"
    if ! dpkg-deb -x "$tmp"/prometheus_*.deb "$root.new" >>"$log" 2>&1; then
        rm -rf "$tmp" "$root.new"
        say "FAILED to unpack the prometheus package (see $log)"
        return 1
    fi
    rm -rf "$tmp" "$root"
    mv "$root.new" "$root"
}

ok=1
install_crate tansu "$TANSU_VERSION" dynostore,libsql tansu || ok=0
install_crate s3s-fs "$S3S_FS_VERSION" binary s3s-fs || ok=0
install_python || { say "FAILED to install the Python clients (see $log)"; ok=0; }
install_prometheus || ok=0

[ -x "$dir/tansu-$TANSU_VERSION/bin/tansu" ] && echo "export CALLLOG_TANSU=$dir/tansu-$TANSU_VERSION/bin/tansu"
[ -x "$dir/s3s-fs-$S3S_FS_VERSION/bin/s3s-fs" ] && echo "export CALLLOG_S3S_FS=$dir/s3s-fs-$S3S_FS_VERSION/bin/s3s-fs"
[ -x "$dir/python/bin/python" ] && echo "export CALLLOG_TOOLS_PYTHON=$dir/python/bin/python"
[ -x "$dir/prometheus/usr/bin/prometheus" ] && echo "export CALLLOG_PROMETHEUS=$dir/prometheus/usr/bin/prometheus"
[ -x "$dir/prometheus/usr/bin/promtool" ] && echo "export CALLLOG_PROMTOOL=$dir/prometheus/usr/bin/promtool"
[ "$ok" = 1 ]
