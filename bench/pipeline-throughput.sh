#!/usr/bin/env bash
# Ingest → delivered throughput of sluss, side by side with the minimum durable work a plain
# program must do per file (copy + fsync file + fsync directory, once into a spool and once
# into the destination), on the same disk, in one run.
#
#   bash bench/pipeline-throughput.sh [FILES] [KIB]      (defaults: 1000 files of 100 KiB)
#
# Prints files/s for both, the ratio (aim: sluss ≥ 0.5× the baseline), and sluss's p50/p99
# latency per file from "received" to "delivered" (from the ledger's own history times).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-1000}
KIB=${2:-100}
cargo build --release --quiet
BIN=$PWD/target/release/sluss
WORK=$(mktemp -d /var/tmp/sluss-bench.XXXXXX)
trap 'kill $SERVE_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
SERVE_PID=

echo "== preparing $FILES sealed LB payment orders of ~${KIB} KiB in $WORK"
mkdir -p "$WORK/gw/jobs.d" "$WORK/gw/keys" "$WORK/in"
cp sluss.toml "$WORK/gw/"
cp jobs.d/*.toml "$WORK/gw/jobs.d/"
echo 1234567890ABCDEF1234567890ABCDEF > "$WORK/gw/keys/demo.seal"
chmod 600 "$WORK/gw/keys/demo.seal"
python3 - "$WORK/in" "$FILES" "$KIB" <<'PY'
import sys, os
out, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sender = "0009912346"
per = max(1, (kib * 1024) // 82 - 3)
for f in range(n):
    lines = [b"11" + sender.encode() + b"261129" + "LEVERANTÖRSBETALNINGAR".encode("latin-1")
             + b"GENAST" + b" " * 13 + b"SEK" + b" " * 18]
    total = 0
    for i in range(per):
        amount = 100 + (f * 7919 + i * 104729) % 9999900
        total += amount
        ref = f"REF{f}X{i}".ljust(25).encode()
        lines.append(b"14" + b"0001234566" + ref + b"%012d" % amount + b"GENAST" + b" " * 5
                     + f"VERIF {f}-{i}".ljust(20).encode())
    lines.append(b"29" + sender.encode() + b"%08d" % per + b"%012d" % total + b" " * 48)
    assert all(len(l) == 80 for l in lines)
    with open(os.path.join(out, f"raw{f:05d}.txt"), "wb") as fh:
        fh.write(b"\r\n".join(lines) + b"\r\n")
PY
for f in "$WORK"/in/raw*.txt; do
    "$BIN" seal --key-file "$WORK/gw/keys/demo.seal" --date 261129 -o "${f/raw/pay}" "$f" 2>/dev/null
    rm "$f"
done
sync

echo "== baseline: plain durable copy twice per file (python, os.fsync)"
BASE=$(python3 - "$WORK/in" "$WORK/base" <<'PY'
import os, sys, time
src, work = sys.argv[1], sys.argv[2]
spool, dest = os.path.join(work, "spool"), os.path.join(work, "dest")
os.makedirs(spool); os.makedirs(dest)
def durable_copy(path, d):
    with open(path, "rb") as fh: data = fh.read()
    tmp = os.path.join(d, "." + os.path.basename(path) + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data); fh.flush(); os.fsync(fh.fileno())
    final = os.path.join(d, os.path.basename(path))
    os.rename(tmp, final)
    dfd = os.open(d, os.O_RDONLY); os.fsync(dfd); os.close(dfd)
    return final
files = sorted(os.path.join(src, f) for f in os.listdir(src))
t = time.monotonic()
for f in files:
    s = durable_copy(f, spool)
    durable_copy(s, dest)
el = time.monotonic() - t
print(f"{len(files)/el:.1f}")
PY
)
echo "baseline: $BASE files/s"

echo "== sluss: serve + ingest, until all are in the bank folder"
cd "$WORK/gw"
SLUSS_LOG=warn "$BIN" serve --config . 2>"$WORK/serve.log" &
SERVE_PID=$!
sleep 1
T0=$(date +%s.%N)
SLUSS_LOG=warn "$BIN" ingest --config . --partner demo "$WORK"/in/pay*.txt > "$WORK/ingest.out"
while [ "$(find var/bank-outbox -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l)" -lt "$FILES" ]; do
    sleep 0.05
done
T1=$(date +%s.%N)
SLUSS=$(python3 -c "print(f'{$FILES/($T1-$T0):.1f}')")
echo "sluss:    $SLUSS files/s (ingest → delivered, $FILES files)"
python3 -c "print(f'ratio sluss/baseline: {$SLUSS/$BASE:.2f}  (aim >= 0.5)')"
sqlite3 var/ledger.sqlite "
  SELECT h.file_id, (julianday(h.at) - julianday(f.received_at)) * 86400000.0
  FROM history h JOIN files f ON f.id = h.file_id
  WHERE h.event = 'delivery.delivered' ORDER BY 2;" > "$WORK/lat.txt"
python3 - "$WORK/lat.txt" <<'PY'
import sys
v = sorted(float(l.split("|")[1]) for l in open(sys.argv[1]) if "|" in l)
if v:
    p = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    print(f"latency received→delivered: p50 {p(0.50):.0f} ms, p99 {p(0.99):.0f} ms (n={len(v)})")
PY
