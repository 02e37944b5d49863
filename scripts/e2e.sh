#!/usr/bin/env bash
# End-to-end test of the dashboard in a real browser: installs Debian's
# chromium when it is missing, installs the pinned test tool (npm ci), and
# runs tests/e2e/dashboard.test.mjs (node's test runner) against the bridge
# binary in BRIDGE_BIN. test.sh passes the binary of its one test build; run
# alone, this script makes that build (scripts/test-build.sh: the same
# `cargo test --no-run` as the suite's, nothing new when the tests were built).
# The screenshot is kept at target/e2e/dashboard.png (CI artifact), next to
# the bridge and simulator logs of the run.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    echo "e2e: installing chromium and fonts from the system package manager (the dashboard test drives a headless Chromium)" >&2
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation fonts-dejavu-core >/dev/null
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "e2e: node and npm are required (node >= 20)" >&2
    exit 1
fi

(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)

if [ -z "${BRIDGE_BIN:-}" ]; then
    BRIDGE_BIN=$(./scripts/test-build.sh)
fi
[ -x "$BRIDGE_BIN" ] || {
    echo "e2e: BRIDGE_BIN=$BRIDGE_BIN is not an executable" >&2
    exit 1
}
BRIDGE_BIN=$(realpath "$BRIDGE_BIN")
mkdir -p target/e2e

export BRIDGE_BIN
export CHROMIUM
export E2E_OUT="$PWD/target/e2e"
cd tests/e2e
exec node --test --test-reporter=spec dashboard.test.mjs
