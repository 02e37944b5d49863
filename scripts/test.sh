#!/usr/bin/env bash
# The README's test command (CI runs exactly this through .ci/run). It installs
# what the tests need itself (Chromium and the pinned browser driver for the
# dashboard test, debootstrap, cargo-deb and cargo-generate-rpm for the
# packaging check, and the real services of the Kafka and export tests through
# scripts/test-tools.sh: a Kafka-protocol broker, an S3-compatible store and
# two independent clients, built once and cached outside the repository),
# then runs:
#   1. one debug build of everything (scripts/test-build.sh --all-targets:
#      `cargo test --no-run` of the unit tests, the integration binary, the
#      bridge binary and the benchmarks, which is the benchmarks' compile
#      check; run them with `cargo bench`);
#   2. the Rust suite: unit tests and the integration binary (tests/it),
#      which drive the real binary, real files and real loopback sockets
#      (nothing left to compile but the doc tests);
#   3. the dashboard end-to-end test in headless Chromium (scripts/e2e.sh),
#      on the binary of step 1;
#   4. the packaging check (scripts/ci-packaging.sh, run by its own test,
#      tests/packaging/host-untouched.sh, which shows that an installed
#      calllog-bridge is left as it was): the binary of step 1 packaged and
#      installed, upgraded and purged in a throwaway root, never on this
#      machine. It needs root and a Debian-family machine, and is skipped
#      with a note otherwise.
# It prints how long each step took at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

times=()
timed() { # label command...: runs the command, notes its wall time
    local label=$1 start=$SECONDS rc=0
    shift
    echo "== test.sh: $label" >&2
    "$@" || rc=$?
    times+=("$label $((SECONDS - start)) s")
    return "$rc"
}

# The tools the Kafka and export tests talk to. Installed (once, cached) by
# their own script; when one cannot be installed here the tests that need it
# print "SKIPPED: ..." and this script says so loudly at the end, rather
# than failing on a machine that cannot build it.
tools_env=
tools() { tools_env=$(./scripts/test-tools.sh); }
if timed "test tools" tools; then
    eval "$tools_env"
    export CALLLOG_REQUIRE_TOOLS=1
    tools_note=""
else
    eval "$tools_env"
    tools_note="test.sh: WARNING: some test tools could not be installed (see above); the tests that need them were SKIPPED"
    echo "$tools_note" >&2
fi

build() { BRIDGE_BIN=$(./scripts/test-build.sh --all-targets); }
timed "build (tests, binary, benchmarks)" build
export BRIDGE_BIN
timed "rust suite" cargo test --locked
timed "dashboard e2e" ./scripts/e2e.sh
if [ "$(id -u)" = 0 ] && command -v dpkg-deb >/dev/null; then
    timed "packaging check" ./tests/packaging/host-untouched.sh
else
    echo "test.sh: packaging check skipped (needs root on a Debian-family machine)"
fi

echo "== test.sh: wall time per step: $(printf '%s, ' "${times[@]}")total $SECONDS s"
if [ -n "$tools_note" ]; then
    echo "$tools_note" >&2
fi
