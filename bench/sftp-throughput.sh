#!/usr/bin/env bash
# sluss's SFTP server side by side with OpenSSH sshd (internal-sftp), same client (OpenSSH
# sftp, -c aes128-gcm@openssh.com), same disk, one run:
#   1. one big file up (sluss: a sealed LB payment order, verified and recorded before CLOSE
#      is answered; OpenSSH: `put -f`, so it fsyncs too) and down;
#   2. FILES distinct sealed ~4 KiB payment orders up (`put -f` each) and FILES files down;
#   3. sluss only: CLIENTS concurrent clients each uploading PER files (all must succeed),
#      total time and peak memory; memory per idle connected session.
# Server CPU seconds: sluss from /proc/PID/stat; sshd from /usr/bin/time around `sshd -D`
# (one sshd per phase, so its reparented session children are counted).
#
#   bash bench/sftp-throughput.sh [BIG_MIB] [FILES] [CLIENTS] [PER] [ROUNDS]
#   (defaults: 1024 2000 100 20 3; phases 1 and 2 alternate sluss and OpenSSH ROUNDS times
#   and report medians)
#
# Needs: cargo, sshd, sftp, ssh-keygen, python3, GNU time, ~3×BIG_MIB free in /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
BIG_MIB=${1:-1024}
FILES=${2:-2000}
CLIENTS=${3:-100}
PER=${4:-20}
ROUNDS=${5:-3}
CIPHER=aes128-gcm@openssh.com
cargo build --release --quiet
BIN=$PWD/target/release/sluss
WORK=$(mktemp -d /var/tmp/sluss-sftp-bench.XXXXXX)
SERVE_PID=
cleanup() {
    if [ "${OK:-}" != 1 ]; then echo "== failed; sluss log tail:"; tail -5 "$WORK/sluss.log" 2>/dev/null || true; fi
    [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
    [ -f "$WORK/sshd.pid" ] && kill "$(cat "$WORK/sshd.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
cpu_of() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
rate() { python3 -c "import sys; print(f'{float(sys.argv[1]):.2f}')" "$1"; }

echo "== work dir $WORK"
mkdir -p "$WORK/gw/jobs.d" "$WORK/gw/keys" "$WORK/small" "$WORK/ossh/root" "$WORK/down"
cp jobs.d/*.toml "$WORK/gw/jobs.d/"
echo 1234567890ABCDEF1234567890ABCDEF > "$WORK/gw/keys/demo.seal"
chmod 600 "$WORK/gw/keys/demo.seal"
ssh-keygen -q -N '' -t ed25519 -f "$WORK/gw/keys/ssh_host_ed25519_key"
ssh-keygen -q -N '' -t rsa -b 3072 -f "$WORK/gw/keys/ssh_host_rsa_key"
ssh-keygen -q -N '' -t ed25519 -f "$WORK/client"
cp "$WORK/client.pub" "$WORK/gw/keys/demo.authorized_keys"
cat > "$WORK/gw/sluss.toml" <<EOF
data_dir = "var"
[sftp]
listen = "127.0.0.1:0"
max_sessions = 1000
max_sessions_per_account = 1000
EOF

echo "== generating payment orders (1 × ${BIG_MIB} MiB, $FILES × ~4 KiB; sealed with sluss seal)"
python3 - "$WORK" "$BIG_MIB" "$FILES" <<'PY'
import sys, os
work, big_mib, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sender = b"0009912346"
def order(path, per, seed):
    with open(path, "wb") as f:
        f.write(b"11" + sender + b"261129" + b"LEVERANTORSBETALNINGAR" + b"GENAST" + b" " * 13 + b"SEK" + b" " * 18 + b"\r\n")
        total = 0
        chunk = []
        for i in range(per):
            amount = 100 + (seed * 7919 + i * 104729) % 50000  # totals fit TK29's 12 digits
            total += amount
            chunk.append(b"14" + b"0001234566" + (b"REF%dX%d" % (seed, i)).ljust(25) + b"%012d" % amount
                         + b"GENAST" + b" " * 5 + (b"VERIF %d-%d" % (seed, i)).ljust(20) + b"\r\n")
            if len(chunk) >= 65536:
                f.write(b"".join(chunk)); chunk = []
        f.write(b"".join(chunk))
        f.write(b"29" + sender + b"%08d" % per + b"%012d" % total + b" " * 48 + b"\r\n")
order(os.path.join(work, "big.raw"), big_mib * 1024 * 1024 // 82, 1)
os.makedirs(os.path.join(work, "small.raw"), exist_ok=True)
for k in range(n):
    order(os.path.join(work, "small.raw", "p%05d.txt" % k), 46, 1000 + k)
PY
"$BIN" seal --key-file "$WORK/gw/keys/demo.seal" --date 261129 -o "$WORK/big.txt" "$WORK/big.raw" >/dev/null
rm "$WORK/big.raw"
for f in "$WORK"/small.raw/*.txt; do
    "$BIN" seal --key-file "$WORK/gw/keys/demo.seal" --date 261129 -o "$WORK/small/$(basename "$f")" "$f" >/dev/null 2>&1
done
rm -rf "$WORK/small.raw"
BIG_BYTES=$(stat -c %s "$WORK/big.txt")
echo "   big file: $BIG_BYTES bytes; small files: $(ls "$WORK/small" | wc -l) of ~$(stat -c %s "$WORK/small/p00000.txt") bytes"

start_sluss() {
    rm -rf "$WORK/gw/var"
    SLUSS_LOG=warn "$BIN" serve --config "$WORK/gw" 2>>"$WORK/sluss.log" &
    SERVE_PID=$!
    for _ in $(seq 1 600); do [ -s "$WORK/gw/var/sftp.port" ] && break; sleep 0.05; done
    SLUSS_PORT=$(tr -d '\n' < "$WORK/gw/var/sftp.port")
    echo "[127.0.0.1]:$SLUSS_PORT $(cat "$WORK/gw/keys/ssh_host_ed25519_key.pub")" > "$WORK/known_sluss"
}
stop_sluss() { kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=; }
# Wait until N files reached the bank folder: the background delivery of one phase must not
# run beside the next phase's measurement (it competes for the same two cores and disk).
wait_delivered() {
    for _ in $(seq 1 1200); do
        [ "$(find "$WORK/gw/var/bank-outbox" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l)" -ge "$1" ] && { sync; return; }
        sleep 0.1
    done
    echo "   (warning: only $(ls "$WORK/gw/var/bank-outbox" | wc -l) of $1 files delivered after 120 s)"
}

# OpenSSH: its own config, host key, authorized key; the client's user is the current one.
OSSH_PORT=$(free_port)
ssh-keygen -q -N '' -t ed25519 -f "$WORK/ossh/host_key"
mkdir -p "$WORK/ossh/keys" && cp "$WORK/client.pub" "$WORK/ossh/keys/$(id -un)"
mkdir -p /run/sshd && chmod 755 /run/sshd
cat > "$WORK/ossh/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $OSSH_PORT
HostKey $WORK/ossh/host_key
AuthorizedKeysFile $WORK/ossh/keys/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PidFile $WORK/sshd.pid
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -t -f "$WORK/ossh/sshd_config"
echo "[127.0.0.1]:$OSSH_PORT $(cat "$WORK/ossh/host_key.pub")" > "$WORK/known_ossh"
start_sshd() {
    /usr/bin/time -f "%U %S" -o "$WORK/sshd.time" /usr/sbin/sshd -D -f "$WORK/ossh/sshd_config" -E "$WORK/sshd.log" &
    SSHD_TIME_PID=$!
    for _ in $(seq 1 200); do [ -s "$WORK/sshd.pid" ] && break; sleep 0.05; done
}
stop_sshd() { # sets SSHD_CPU (user + system seconds of sshd and its session processes)
    kill "$(cat "$WORK/sshd.pid")"; wait "$SSHD_TIME_PID" 2>/dev/null || true; rm -f "$WORK/sshd.pid"
    SSHD_CPU=$(tail -1 "$WORK/sshd.time" | awk '{print $1+$2}')
}

client() { # client KNOWN PORT USER BATCH
    sftp -q -c "$CIPHER" -o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$1" \
        -o IdentitiesOnly=yes -i "$WORK/client" -P "$2" -b "$4" "$3@127.0.0.1" >/dev/null
}

# Phases 1 and 2 run ROUNDS times, alternating sluss and OpenSSH, each sluss round on a fresh
# data directory (the same payment files are new to it), and report the median of each side:
# these machines are shared and one round can be off by ±15 %.
# Between rounds, used folders are moved aside, not deleted: on ext4 without a journal (these
# VMs) creating files right after thousands were deleted walks the deleted inodes
# (`recently_deleted`), which would slow whichever server runs next. Deleted at the end.
aside() { mkdir -p "$WORK/trash"; for d in "$@"; do [ -e "$d" ] && mv "$d" "$WORK/trash/$(basename "$d").$RANDOM$RANDOM"; done; return 0; }
# Before every timed upload, the client's source files are read once so that they come from
# the page cache for both servers: the VM's host pages out cold page cache (DAMON), and the
# first server of a phase would otherwise pay for reading the sources from disk.
warm() { cat "$@" > /dev/null; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float,sys.argv[1:])):.2f}')" "$@"; }

# --- phase 1: big file
echo "put -f $WORK/big.txt /upload/big.txt" > "$WORK/b.up.sluss"
echo "put -f $WORK/big.txt $WORK/ossh/root/big.txt" > "$WORK/b.up.ossh"
echo "get /download/big.dat $WORK/down/big.sluss" > "$WORK/b.down.sluss"
echo "get $WORK/ossh/root/big.dat $WORK/down/big.ossh" > "$WORK/b.down.ossh"
# The same transfer under a temporary name: received, written, hashed, not handed over — the
# SFTP layer alone, without the pipeline's verification after the last byte (first round).
echo "put -f $WORK/big.txt /upload/big.txt.part" > "$WORK/b.up.sluss.part"

S_UPS=(); S_UP_CPUS=(); S_DOWNS=(); S_DOWN_CPUS=(); O_UPS=(); O_UP_CPUS=(); O_DOWNS=(); O_DOWN_CPUS=()
for round in $(seq 1 "$ROUNDS"); do
    start_sluss
    warm "$WORK/big.txt"
    c0=$(cpu_of "$SERVE_PID"); t0=$(now)
    client "$WORK/known_sluss" "$SLUSS_PORT" demo "$WORK/b.up.sluss"
    t1=$(now); c1=$(cpu_of "$SERVE_PID")
    S_UPS+=("$(echo "$t1 - $t0" | bc)"); S_UP_CPUS+=("$(echo "$c1 - $c0" | bc)")
    wait_delivered 1
    if [ "$round" = 1 ]; then
        warm "$WORK/big.txt"
        c0=$(cpu_of "$SERVE_PID"); t0=$(now)
        client "$WORK/known_sluss" "$SLUSS_PORT" demo "$WORK/b.up.sluss.part"
        t1=$(now); c1=$(cpu_of "$SERVE_PID")
        S_UPT=$(rate "$(echo "$t1 - $t0" | bc)"); S_UPT_CPU=$(rate "$(echo "$c1 - $c0" | bc)")
    fi
    mkdir -p "$WORK/gw/var/download/demo" && cp "$WORK/big.txt" "$WORK/gw/var/download/demo/big.dat" && sync
    c0=$(cpu_of "$SERVE_PID"); t0=$(now)
    client "$WORK/known_sluss" "$SLUSS_PORT" demo "$WORK/b.down.sluss"
    t1=$(now); c1=$(cpu_of "$SERVE_PID")
    S_DOWNS+=("$(echo "$t1 - $t0" | bc)"); S_DOWN_CPUS+=("$(echo "$c1 - $c0" | bc)")
    cmp "$WORK/big.txt" "$WORK/down/big.sluss"
    stop_sluss
    rm -f "$WORK/down/big.sluss"
    aside "$WORK/gw/var"; sync

    start_sshd
    warm "$WORK/big.txt"
    t0=$(now); client "$WORK/known_ossh" "$OSSH_PORT" "$(id -un)" "$WORK/b.up.ossh"; t1=$(now)
    O_UPS+=("$(echo "$t1 - $t0" | bc)"); stop_sshd; O_UP_CPUS+=("$SSHD_CPU")
    mv "$WORK/ossh/root/big.txt" "$WORK/ossh/root/big.dat"; sync
    start_sshd
    t0=$(now); client "$WORK/known_ossh" "$OSSH_PORT" "$(id -un)" "$WORK/b.down.ossh"; t1=$(now)
    O_DOWNS+=("$(echo "$t1 - $t0" | bc)"); stop_sshd; O_DOWN_CPUS+=("$SSHD_CPU")
    cmp "$WORK/big.txt" "$WORK/down/big.ossh"
    rm -f "$WORK/down/big.ossh" "$WORK/ossh/root/big.dat"; sync
    echo "   round $round, ${BIG_MIB} MiB: up sluss ${S_UPS[-1]} s / OpenSSH ${O_UPS[-1]} s; down sluss ${S_DOWNS[-1]} s / OpenSSH ${O_DOWNS[-1]} s"
done
S_UP=$(median "${S_UPS[@]}"); S_UP_CPU=$(median "${S_UP_CPUS[@]}"); S_DOWN=$(median "${S_DOWNS[@]}"); S_DOWN_CPU=$(median "${S_DOWN_CPUS[@]}")
O_UP=$(median "${O_UPS[@]}"); O_UP_CPU=$(median "${O_UP_CPUS[@]}"); O_DOWN=$(median "${O_DOWNS[@]}"); O_DOWN_CPU=$(median "${O_DOWN_CPUS[@]}")

# --- phase 2: many small files
mkdir -p "$WORK/ossh/root/small" "$WORK/down/s" "$WORK/down/o"
: > "$WORK/s.up.sluss"; : > "$WORK/s.up.ossh"; : > "$WORK/s.down.sluss"; : > "$WORK/s.down.ossh"
for f in "$WORK"/small/*.txt; do
    n=$(basename "$f")
    echo "put -f $f /upload/$n" >> "$WORK/s.up.sluss"
    echo "put -f $f $WORK/ossh/root/small/$n" >> "$WORK/s.up.ossh"
    echo "get /download/$n $WORK/down/s/$n" >> "$WORK/s.down.sluss"
    echo "get $WORK/ossh/root/small/$n $WORK/down/o/$n" >> "$WORK/s.down.ossh"
done
S_SUPS=(); S_SUP_CPUS=(); S_SDOWNS=(); S_SDOWN_CPUS=(); O_SUPS=(); O_SUP_CPUS=(); O_SDOWNS=(); O_SDOWN_CPUS=()
for round in $(seq 1 "$ROUNDS"); do
    start_sluss
    warm "$WORK"/small/*.txt
    c0=$(cpu_of "$SERVE_PID"); t0=$(now)
    client "$WORK/known_sluss" "$SLUSS_PORT" demo "$WORK/s.up.sluss"
    t1=$(now); c1=$(cpu_of "$SERVE_PID")
    S_SUPS+=("$(echo "$FILES / ($t1 - $t0)" | bc -l)"); S_SUP_CPUS+=("$(echo "$c1 - $c0" | bc)")
    wait_delivered "$FILES"
    ACCEPTED=$("$BIN" ledger list --json --config "$WORK/gw" --limit 100000 2>/dev/null | grep -c '"state"' || true)
    mkdir -p "$WORK/gw/var/download/demo" && cp "$WORK"/small/*.txt "$WORK/gw/var/download/demo/"; sync
    c0=$(cpu_of "$SERVE_PID"); t0=$(now)
    client "$WORK/known_sluss" "$SLUSS_PORT" demo "$WORK/s.down.sluss"
    t1=$(now); c1=$(cpu_of "$SERVE_PID")
    S_SDOWNS+=("$(echo "$FILES / ($t1 - $t0)" | bc -l)"); S_SDOWN_CPUS+=("$(echo "$c1 - $c0" | bc)")
    stop_sluss
    aside "$WORK/gw/var" "$WORK/down/s"; mkdir -p "$WORK/down/s"; sync
    start_sshd
    warm "$WORK"/small/*.txt
    t0=$(now); client "$WORK/known_ossh" "$OSSH_PORT" "$(id -un)" "$WORK/s.up.ossh"; t1=$(now)
    O_SUPS+=("$(echo "$FILES / ($t1 - $t0)" | bc -l)"); stop_sshd; O_SUP_CPUS+=("$SSHD_CPU")
    start_sshd
    t0=$(now); client "$WORK/known_ossh" "$OSSH_PORT" "$(id -un)" "$WORK/s.down.ossh"; t1=$(now)
    O_SDOWNS+=("$(echo "$FILES / ($t1 - $t0)" | bc -l)"); stop_sshd; O_SDOWN_CPUS+=("$SSHD_CPU")
    aside "$WORK/ossh/root/small" "$WORK/down/o"; mkdir -p "$WORK/ossh/root/small" "$WORK/down/o"; sync
    echo "   round $round, $FILES files: up sluss $(rate "${S_SUPS[-1]}") / OpenSSH $(rate "${O_SUPS[-1]}") files/s; down sluss $(rate "${S_SDOWNS[-1]}") / OpenSSH $(rate "${O_SDOWNS[-1]}") files/s; ledger records $ACCEPTED"
done
S_SUP=$(median "${S_SUPS[@]}"); S_SUP_CPU=$(median "${S_SUP_CPUS[@]}"); S_SDOWN=$(median "${S_SDOWNS[@]}"); S_SDOWN_CPU=$(median "${S_SDOWN_CPUS[@]}")
O_SUP=$(median "${O_SUPS[@]}"); O_SUP_CPU=$(median "${O_SUP_CPUS[@]}"); O_SDOWN=$(median "${O_SDOWNS[@]}"); O_SDOWN_CPU=$(median "${O_SDOWN_CPUS[@]}")

# --- phase 3: concurrent clients (sluss only), fresh ledger
start_sluss
for c in $(seq 0 $((CLIENTS - 1))); do
    : > "$WORK/c$c.batch"
    for k in $(seq 0 $((PER - 1))); do
        i=$(( (c * PER + k) % FILES ))
        n=$(printf "p%05d.txt" "$i")
        echo "put -f $WORK/small/$n /upload/c$c-$n" >> "$WORK/c$c.batch"
    done
done
t0=$(now); FAILS=0; pids=()
for c in $(seq 0 $((CLIENTS - 1))); do
    client "$WORK/known_sluss" "$SLUSS_PORT" demo "$WORK/c$c.batch" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || FAILS=$((FAILS + 1)); done
t1=$(now)
C_TIME=$(rate "$(echo "$t1 - $t0" | bc)")
PEAK_KIB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVE_PID/status")
# Idle sessions: connected sftp clients waiting on their stdin.
RSS0=$(awk '/VmRSS/ {print $2}' "/proc/$SERVE_PID/status")
IDLE=50; ipids=()
for i in $(seq 1 $IDLE); do
    mkfifo "$WORK/idle$i"
    (sftp -q -c "$CIPHER" -o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$WORK/known_sluss" \
        -o IdentitiesOnly=yes -i "$WORK/client" -P "$SLUSS_PORT" demo@127.0.0.1 < "$WORK/idle$i" >/dev/null 2>&1 &) 
    exec {fd}>"$WORK/idle$i"; ipids+=($fd)
done
sleep 3
RSS1=$(awk '/VmRSS/ {print $2}' "/proc/$SERVE_PID/status")
for fd in "${ipids[@]}"; do exec {fd}>&-; done
stop_sluss
# Within the FILES distinct payment orders, clients reuse files: later copies are duplicates
# and refused by design; "all succeed" is judged on the first FILES uploads only when
# CLIENTS*PER > FILES.

OK=1
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
cat <<EOF

== results: medians of $ROUNDS alternating rounds (seconds; lower is better for times, higher for files/s)
| test | sluss | OpenSSH internal-sftp | ratio |
|---|---|---|---|
| ${BIG_MIB} MiB upload, time (s) | $S_UP | $O_UP | sluss/OpenSSH $(ratio "$S_UP" "$O_UP") |
| ${BIG_MIB} MiB upload, server CPU (s) | $S_UP_CPU | $O_UP_CPU | |
| ${BIG_MIB} MiB upload under a temporary name (received and checked, not handed over), time (s) | $S_UPT | $O_UP | sluss/OpenSSH $(ratio "$S_UPT" "$O_UP") |
| same, server CPU (s) | $S_UPT_CPU | $O_UP_CPU | |
| ${BIG_MIB} MiB download, time (s) | $S_DOWN | $O_DOWN | sluss/OpenSSH $(ratio "$S_DOWN" "$O_DOWN") |
| ${BIG_MIB} MiB download, server CPU (s) | $S_DOWN_CPU | $O_DOWN_CPU | |
| $FILES × 4 KiB upload (files/s) | $S_SUP | $O_SUP | sluss/OpenSSH $(ratio "$S_SUP" "$O_SUP") |
| $FILES × 4 KiB upload, server CPU (s) | $S_SUP_CPU | $O_SUP_CPU | |
| $FILES × 4 KiB download (files/s) | $S_SDOWN | $O_SDOWN | sluss/OpenSSH $(ratio "$S_SDOWN" "$O_SDOWN") |
| $FILES × 4 KiB download, server CPU (s) | $S_SDOWN_CPU | $O_SDOWN_CPU | |

ledger records after the $FILES-file upload: $ACCEPTED
$CLIENTS concurrent clients × $PER files: $C_TIME s, failed clients: $FAILS, sluss peak RSS $((PEAK_KIB / 1024)) MiB
memory per idle connected session: $(( (RSS1 - RSS0) / IDLE )) KiB ($IDLE sessions)
EOF
