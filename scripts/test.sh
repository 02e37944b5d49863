#!/usr/bin/env bash
# The README's test command (CI runs exactly this through .ci/run). It installs
# what the tests need itself (Chromium and the pinned browser driver for the
# dashboard test, cargo-deb/cargo-generate-rpm and systemd-analyze for the
# packaging check, and the real services of the Kafka and export tests through
# scripts/test-tools.sh: a Kafka-protocol broker, an S3-compatible store and
# two independent clients, built once and cached outside the repository),
# then runs:
#   1. the Rust suite: unit tests and the integration binary (tests/it),
#      which drive the real binary, real files and real loopback sockets;
#   2. a compile check of the benchmarks (run them with `cargo bench`);
#   3. the dashboard end-to-end test in headless Chromium (scripts/e2e.sh);
#   4. the packaging check (scripts/ci-packaging.sh; needs root and a
#      Debian-family machine, skipped with a note otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

# The tools the Kafka and export tests talk to. Installed (once, cached) by
# our own script; when one cannot be installed here the tests that need it
# print "SKIPPED: ..." and this script says so loudly at the end, rather
# than failing on a machine that cannot build it.
if tools_env=$(./scripts/test-tools.sh); then
    eval "$tools_env"
    export CALLLOG_REQUIRE_TOOLS=1
    tools_note=""
else
    eval "$tools_env"
    tools_note="test.sh: WARNING: some test tools could not be installed (see above); the tests that need them were SKIPPED"
    echo "$tools_note" >&2
fi

cargo test --locked
cargo check --locked --benches
./scripts/e2e.sh
if [ "$(id -u)" = 0 ] && command -v dpkg-deb >/dev/null; then
    bash scripts/ci-packaging.sh
else
    echo "test.sh: packaging check skipped (needs root on a Debian-family machine)"
fi
if [ -n "$tools_note" ]; then
    echo "$tools_note" >&2
fi
