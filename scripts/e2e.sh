#!/usr/bin/env bash
# End-to-end test of the dashboard in a real browser: installs Debian's
# chromium when it is missing, installs the pinned test tool (npm ci), builds
# the bridge and runs tests/e2e/dashboard.test.mjs (node's test runner).
# The screenshot is kept at target/e2e/dashboard.png (CI artifact), next to
# the bridge and simulator logs of the run.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    echo "e2e: installing chromium from the system package manager" >&2
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

cargo build --locked --bin calllog-bridge
mkdir -p target/e2e

export BRIDGE_BIN="$PWD/target/debug/calllog-bridge"
export CHROMIUM
export E2E_OUT="$PWD/target/e2e"
cd tests/e2e
exec node --test --test-reporter=spec dashboard.test.mjs
