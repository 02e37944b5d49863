#!/usr/bin/env bash
# The README's test command (CI runs exactly this through .ci/run). It installs
# what the tests need itself (Chromium and the pinned browser driver for the
# dashboard test, cargo-deb/cargo-generate-rpm and systemd-analyze for the
# packaging check), then runs:
#   1. the Rust suite: unit tests and the integration binary (tests/it),
#      which drive the real binary, real files and real loopback sockets;
#   2. a compile check of the benchmarks (run them with `cargo bench`);
#   3. the dashboard end-to-end test in headless Chromium (scripts/e2e.sh);
#   4. the packaging check (scripts/ci-packaging.sh; needs root and a
#      Debian-family machine, skipped with a note otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked
cargo check --locked --benches
./scripts/e2e.sh
if [ "$(id -u)" = 0 ] && command -v dpkg-deb >/dev/null; then
    bash scripts/ci-packaging.sh
else
    echo "test.sh: packaging check skipped (needs root on a Debian-family machine)"
fi
