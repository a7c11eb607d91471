#!/usr/bin/env bash
# Seal verification throughput and memory, measured against `openssl dgst -sha256` on the
# same file: the seal is HMAC-SHA256 over (almost) every byte, so SHA-256 over the file is
# the floor. Targets (docs/seal.md): verify time <= 1.3 x openssl, peak RSS <= 64 MiB on a
# 1 GiB file.
#
# Usage: bench/seal-throughput.sh [WORKDIR]   (default: a temp dir, removed at the end)
# Needs: cargo, openssl, /usr/bin/time (GNU), awk, ~1.3 GiB free disk.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE_MIB=${SIZE_MIB:-256}
RSS_SIZE_MIB=${RSS_SIZE_MIB:-1024}
RUNS=3

WORK=${1:-$(mktemp -d)}
if [[ $# -eq 0 ]]; then trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK"

echo "building release binary..."
cargo build --release --quiet
SLUSS="$ROOT/target/release/sluss"

KEY="$WORK/bench.key"
rm -f "$KEY"
"$SLUSS" keygen seal -o "$KEY" >/dev/null

# 80-character LB-like payment records (TK14), CRLF, varying reference and amount.
make_body() { # $1 = MiB, $2 = output file
    local lines=$(( $1 * 1024 * 1024 / 82 ))
    awk -v n="$lines" 'BEGIN {
        for (i = 0; i < n; i++)
            printf "14%010d%-25s%012d%-6s%-5s%-20s\r\n", 9912346, "OCR" i, i % 100000000, "GENAST", "", "INV" i
    }' > "$2"
}

seal_file() { # $1 = MiB, $2 = sealed output
    local body="$WORK/body-$1.txt"
    make_body "$1" "$body"
    rm -f "$2"
    "$SLUSS" seal --key-file "$KEY" --date 260101 -o "$2" "$body" 2>/dev/null
    rm -f "$body"
}

# Best wall-clock seconds of $RUNS runs of a command (output discarded).
best_of() {
    local best="" t0 t1 t
    for _ in $(seq "$RUNS"); do
        t0=$(date +%s.%N)
        "$@" >/dev/null 2>&1 || true
        t1=$(date +%s.%N)
        t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
        if [[ -z $best ]] || awk -v t="$t" -v b="$best" 'BEGIN { exit !(t < b) }'; then best=$t; fi
    done
    echo "$best"
}

FILE="$WORK/sealed-$SIZE_MIB.txt"
echo "making a ${SIZE_MIB} MiB sealed file..."
seal_file "$SIZE_MIB" "$FILE"
"$SLUSS" verify --key-file "$KEY" "$FILE" # must be valid; also warms the page cache
cat "$FILE" >/dev/null

T_SLUSS=$(best_of "$SLUSS" verify --key-file "$KEY" "$FILE")
T_SSL=$(best_of openssl dgst -sha256 "$FILE")
RATIO=$(awk -v a="$T_SLUSS" -v b="$T_SSL" 'BEGIN { printf "%.2f", a / b }')
MBS=$(awk -v t="$T_SLUSS" -v m="$SIZE_MIB" 'BEGIN { printf "%.0f", m / t }')
echo "file:                 $(stat -c %s "$FILE") bytes"
echo "sluss verify:         ${T_SLUSS} s  (${MBS} MiB/s, best of $RUNS)"
echo "openssl dgst -sha256: ${T_SSL} s  (best of $RUNS)"
echo "ratio:                ${RATIO}  (target <= 1.3)"
rm -f "$FILE"

BIG="$WORK/sealed-$RSS_SIZE_MIB.txt"
echo "making a ${RSS_SIZE_MIB} MiB sealed file..."
seal_file "$RSS_SIZE_MIB" "$BIG"
RSS_KB=$(/usr/bin/time -v "$SLUSS" verify --key-file "$KEY" "$BIG" 2>&1 >/dev/null |
    awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }')
echo "peak RSS, verify ${RSS_SIZE_MIB} MiB: $(( RSS_KB / 1024 )) MiB (${RSS_KB} KiB; target <= 64 MiB)"
rm -f "$BIG"

awk -v r="$RATIO" -v k="$RSS_KB" 'BEGIN { exit !(r <= 1.3 && k <= 64 * 1024) }' &&
    echo "PASS" || { echo "FAIL: above target"; exit 1; }
