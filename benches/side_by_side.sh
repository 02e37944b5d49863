#!/usr/bin/env bash
# The bridge side by side with other log agents on one Local Edition 6
# access log: lines per CPU-second, peak RSS, and how many records came out
# (checked by request_uuid against the input).
#
#   benches/side_by_side.sh [BRIDGE_BINARY]
#
# It builds nothing: it runs the bridge binary given (or $CALLLOG_BRIDGE,
# target/release/calllog-bridge, or calllog-bridge on the PATH; build one
# with `cargo build --release`). It generates the file with the bridge's
# own simulator (LINES lines, 200,000 by default), then, ROUNDS times
# (3) round-robin, runs each tool reading the whole file from its start
# into a file of JSON lines:
#
#   - the bridge: `run` tail → archive (file_output, NDJSON), and `parse`
#     of the same file (the parsing alone, no pipeline) for reference;
#   - Fluent Bit, when `fluent-bit` is found ($FLUENT_BIT or the PATH):
#     tail → LE 6 regex parser → file (benches/peers/fluent-bit.conf,
#     parsers.conf), and the same without the parser (raw lines);
#   - syslog-ng, when `syslog-ng` is found ($SYSLOG_NG or the PATH): file
#     source → csv-parser into the 71 LE 6 fields → format-json → file
#     (benches/peers/syslog-ng.conf).
#
# Each run's CPU time (user + system) and peak RSS (VmHWM) come from
# /proc/<pid> once its output holds every line (or has stopped growing
# for STALL_SECS, 10), before it is stopped. The table gives the median
# round per tool, and how many of the input's request_uuids its output
# holds. Nothing is installed: a tool that is not found is skipped, and
# the table says so. Scratch files go to a temporary directory (KEEP=1
# keeps it).
set -euo pipefail

LINES=${LINES:-200000}
ROUNDS=${ROUNDS:-3}
STALL_SECS=${STALL_SECS:-10}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
peers="$here/peers"

bridge=${1:-${CALLLOG_BRIDGE:-}}
if [ -z "$bridge" ]; then
    if [ -x "$here/../target/release/calllog-bridge" ]; then
        bridge="$here/../target/release/calllog-bridge"
    else
        bridge=$(command -v calllog-bridge || true)
    fi
fi
if [ -z "$bridge" ] || [ ! -x "$bridge" ]; then
    echo "side_by_side: no calllog-bridge binary (give its path, set CALLLOG_BRIDGE, or cargo build --release)" >&2
    exit 2
fi
fluentbit=${FLUENT_BIT:-$(command -v fluent-bit || command -v /opt/fluent-bit/bin/fluent-bit || true)}
syslogng=${SYSLOG_NG:-$(command -v syslog-ng || command -v /usr/sbin/syslog-ng || true)}

work=$(mktemp -d "${TMPDIR:-/tmp}/side-by-side.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "scratch files kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

tck=$(getconf CLK_TCK)

# CPU seconds (user + system) of a process, from /proc.
cpu_of() { awk -v t="$tck" '{ sub(/^.*\) /, ""); print ($12 + $13) / t }' "/proc/$1/stat"; }
# Peak resident memory in KiB.
hwm_of() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# Waits until `$2` (a command printing a number) reaches `$3`, or stops
# growing for STALL_SECS, while process $1 lives.
wait_for() {
    local pid=$1 probe=$2 want=$3 last=-1 since
    since=$(date +%s)
    while kill -0 "$pid" 2>/dev/null; do
        local n
        n=$(eval "$probe" 2>/dev/null || echo 0)
        [ "${n:-0}" -ge "$want" ] && return 0
        if [ "$n" != "$last" ]; then last=$n; since=$(date +%s); fi
        [ $(( $(date +%s) - since )) -ge "$STALL_SECS" ] && return 1
        sleep 0.02
    done
    return 1
}

echo "side by side: $LINES LE 6 lines, $ROUNDS rounds; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "bridge: $bridge ($("$bridge" --version 2>/dev/null || echo '?'))"
"$bridge" simulate --dir "$work/gen" --rate "$LINES" --duration 1 --burst --seed 1 >/dev/null
input="$work/gen/access.log"
size=$(stat -c %s "$input")
awk '{ print $8 }' "$input" | sort -u > "$work/uuids.in"
echo "input: $input, $(wc -l < "$input") lines, $((size / 1000000)) MB"

# The request_uuids a JSON-lines output holds, checked against the input's.
checked_json() { grep -o '"request_uuid":"[^"]*"' "$1" | cut -d'"' -f4 | sort -u | comm -12 - "$work/uuids.in" | wc -l; }
# ... and those of raw lines passed through as {"log":"<line>"}.
checked_raw() { sed 's/^.*"log":"//' "$1" | awk '{ print $8 }' | sort -u | comm -12 - "$work/uuids.in" | wc -l; }

declare -A cpu hwm checked skipped
record() { cpu[$1]="${cpu[$1]:-} $2"; hwm[$1]="${hwm[$1]:-} $3"; checked[$1]=$4; }

run_bridge() {
    local d="$work/bridge"
    rm -rf "$d"; mkdir -p "$d"
    ln "$input" "$d/access.log"
    cat > "$d/bridge.toml" <<EOT
state_dir = "$d/state"
log_level = "warn"
[[source]]
paths = ["$d/access.log"]
format = "le6"
[file_output]
path = "$d/out/out.ndjson"
rotate_bytes = 0
[status]
enabled = false
EOT
    "$bridge" run --config "$d/bridge.toml" >/dev/null 2>"$d/stderr" &
    local pid=$!; pids+=("$pid")
    local probe="grep -o '\"offset\": *[0-9]*' '$d/state/checkpoints.json' | grep -o '[0-9]*\$' | head -1"
    wait_for "$pid" "$probe" "$size" || echo "  bridge: did not reach the end of the file" >&2
    record "bridge run" "$(cpu_of "$pid")" "$(hwm_of "$pid")" ""
    kill -TERM "$pid"; wait "$pid" || true
    checked["bridge run"]=$(checked_json "$d/out/out.ndjson")
}

run_parse() {
    local d="$work/parse"
    rm -rf "$d"; mkdir -p "$d"
    # Measured through bash's own times of its children.
    local before after
    before=$(awk -v t="$tck" '{ print ($16 + $17) / t }' /proc/$$/stat)
    ( "$bridge" parse --format le6 --stamp --no-progress "$input" > "$d/out.ndjson" 2>/dev/null )
    after=$(awk -v t="$tck" '{ print ($16 + $17) / t }' /proc/$$/stat)
    record "bridge parse" "$(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')" "" ""
    checked["bridge parse"]=$(checked_json "$d/out.ndjson")
}

run_fluentbit() {
    local name=$1 raw=$2 d="$work/fluentbit"
    rm -rf "$d"; mkdir -p "$d/out"
    sed -e "s|@INPUT@|$input|" -e "s|@OUTDIR@|$d/out|" -e "s|@DB@|$d/tail.db|" -e "s|@PARSERS@|$peers/parsers.conf|" \
        "$peers/fluent-bit.conf" > "$d/fluent-bit.conf"
    if [ "$raw" = 1 ]; then sed -i '/^ *Parser  *le6/d' "$d/fluent-bit.conf"; fi
    "$fluentbit" -c "$d/fluent-bit.conf" >"$d/log" 2>&1 &
    local pid=$!; pids+=("$pid")
    wait_for "$pid" "wc -l < '$d/out/out.ndjson'" "$LINES" || echo "  $name: stopped short of $LINES lines" >&2
    record "$name" "$(cpu_of "$pid")" "$(hwm_of "$pid")" ""
    kill -TERM "$pid"; wait "$pid" || true
    if [ "$raw" = 1 ]; then checked[$name]=$(checked_raw "$d/out/out.ndjson"); else checked[$name]=$(checked_json "$d/out/out.ndjson"); fi
}

run_syslogng() {
    local d="$work/syslogng"
    rm -rf "$d"; mkdir -p "$d"
    sed -e "s|@INPUT@|$input|" -e "s|@OUTPUT@|$d/out.ndjson|" "$peers/syslog-ng.conf" > "$d/syslog-ng.conf"
    "$syslogng" -F --no-caps -f "$d/syslog-ng.conf" -R "$d/persist" -p "$d/pid" -c "$d/ctl" >"$d/log" 2>&1 &
    local pid=$!; pids+=("$pid")
    wait_for "$pid" "wc -l < '$d/out.ndjson'" "$LINES" || echo "  syslog-ng: stopped short of $LINES lines" >&2
    record "syslog-ng csv-parser" "$(cpu_of "$pid")" "$(hwm_of "$pid")" ""
    kill -TERM "$pid"; wait "$pid" || true
    checked["syslog-ng csv-parser"]=$(checked_json "$d/out.ndjson")
}

order=("bridge run" "bridge parse")
[ -n "$fluentbit" ] && order+=("fluent-bit regex" "fluent-bit raw") || skipped["Fluent Bit"]="fluent-bit not found (FLUENT_BIT=path)"
[ -n "$syslogng" ] && order+=("syslog-ng csv-parser") || skipped["syslog-ng"]="syslog-ng not found (SYSLOG_NG=path)"

for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS"
    run_bridge
    run_parse
    if [ -n "$fluentbit" ]; then run_fluentbit "fluent-bit regex" 0; run_fluentbit "fluent-bit raw" 1; fi
    if [ -n "$syslogng" ]; then run_syslogng; fi
done

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "" }'; }

base=$(echo "${cpu["bridge run"]}" | median)
printf '\n| %-22s | %16s | %16s | %14s | %22s |\n' "tool" "lines per CPU-s" "bridge run is" "peak RSS" "records checked"
printf '|%s|%s|%s|%s|%s|\n' "------------------------" "------------------" "------------------" "----------------" "------------------------"
for t in "${order[@]}"; do
    c=$(echo "${cpu[$t]}" | median)
    h=$(echo "${hwm[$t]:-}" | median)
    rate=$(awk -v n="$LINES" -v c="$c" 'BEGIN { if (c > 0) printf "%.0f", n / c; else print "-" }')
    ratio=$(awk -v b="$base" -v c="$c" 'BEGIN { if (b > 0 && c > 0) printf "%.2f×", c / b; else print "-" }')
    rss=$(awk -v k="$h" 'BEGIN { if (k > 0) printf "%.1f MiB", k / 1024; else print "-" }')
    printf '| %-22s | %16s | %16s | %14s | %22s |\n' "$t" "$rate" "$ratio" "$rss" "${checked[$t]} of $LINES"
done
for s in "${!skipped[@]}"; do echo "skipped $s: ${skipped[$s]}"; done
echo "(median of $ROUNDS rounds; 'bridge run is' = its lines per CPU-second / the tool's; parse's peak RSS is not measured)"
