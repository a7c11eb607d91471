#!/usr/bin/env bash
# Pull speed of sluss's SFTP and FTPS clients, side by side with the programs operators
# compare against, in one run, on loopback, from tmpfs (so the disk does not decide):
#
#   1. one 1 GiB file from OpenSSH sshd:   sluss remote get   vs  sftp get       (aim ≥ 0.9)
#   2. 2000 files of 4 KiB from sshd:      sluss remote get -r vs sftp get -r   (aim ≥ 1.0)
#   3. 2000 files of 4 KiB from vsftpd over TLS (require_ssl_reuse=YES, TLS 1.3 by default):
#      sluss remote get -r vs lftp mirror  (lftp stalls ~45 ms per file on TLS 1.3 here)
#
#   sudo bash bench/remote-throughput.sh [RUNS]     (default 3 runs; medians are printed)
#
# Needs root (it creates the local user the servers log in as, and starts sshd and vsftpd on
# free loopback ports, stopping them by PID on exit). Environment: BIG_MIB (1024),
# SMALL_FILES (2000), FTPS_FILES (2000).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BIG_MIB=${BIG_MIB:-1024}
SMALL_FILES=${SMALL_FILES:-2000}
FTPS_FILES=${FTPS_FILES:-2000}
BUSER=slussbench
cargo build --release --quiet
BIN=$PWD/target/release/sluss
WORK=$(mktemp -d /dev/shm/sluss-rbench.XXXXXX)
chmod 755 "$WORK"
SSHD_PID=
FTPD_PID=
cleanup() {
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null || true
    [ -n "$FTPD_PID" ] && kill "$FTPD_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== setting up in $WORK"
id "$BUSER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$BUSER"
PW=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$BUSER:$PW" | chpasswd
mkdir -p /run/sshd && chmod 755 /run/sshd

R=$WORK/remote
mkdir -p "$R/small" "$R/ftps" "$WORK/out"
head -c "$((BIG_MIB * 1024 * 1024))" /dev/urandom > "$R/big.bin"
python3 - "$R/small" "$SMALL_FILES" "$R/ftps" "$FTPS_FILES" <<'PY'
import os, sys
for d, n in ((sys.argv[1], int(sys.argv[2])), (sys.argv[3], int(sys.argv[4]))):
    for i in range(n):
        with open(os.path.join(d, "f%05d.dat" % i), "wb") as f:
            f.write(os.urandom(4096))
PY
chown -R "$BUSER:$BUSER" "$R"

# The gateway: the shipped example plus two banks whose endpoints are the test servers.
G=$WORK/gw
mkdir -p "$G/jobs.d" "$G/keys"
cp sluss.toml "$G/"
cp jobs.d/*.toml "$G/jobs.d/"
echo 1234567890ABCDEF1234567890ABCDEF > "$G/keys/demo.seal"
chmod 600 "$G/keys/demo.seal"
"$BIN" keygen client -o "$G/keys/bench.id_ed25519" --comment bench >/dev/null
printf '%s\n' "$PW" > "$G/keys/bench.ftp-password"
chmod 600 "$G/keys/bench.ftp-password"

# sshd (internal-sftp), foreground so $! is the listener.
S=$WORK/sshd
mkdir -p "$S/auth"
ssh-keygen -q -t ed25519 -N '' -f "$S/host"
cp "$G/keys/bench.id_ed25519.pub" "$S/auth/$BUSER"
SSH_PORT=$(free_port)
cat > "$S/config" <<EOF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $S/host
PidFile $S/pid
AuthorizedKeysFile $S/auth/%u
StrictModes no
UsePAM no
PasswordAuthentication no
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -D -f "$S/config" -E "$S/log" &
SSHD_PID=$!

# vsftpd with a test CA; require_ssl_reuse left at its default (YES).
F=$WORK/ftpd
mkdir -p "$F"
(cd "$F"
 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
     -days 2 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
     -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
 openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
     -subj /CN=127.0.0.1 2>/dev/null
 printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
 openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
     -days 2 -extfile ext.cnf 2>/dev/null)
FTP_PORT=$(free_port)
PASV=$(free_port)
cat > "$F/vsftpd.conf" <<EOF
listen=YES
listen_ipv6=NO
background=NO
listen_address=127.0.0.1
listen_port=$FTP_PORT
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port=$PASV
pasv_max_port=$((PASV + 50))
anonymous_enable=NO
local_enable=YES
write_enable=YES
ssl_enable=YES
force_local_logins_ssl=YES
force_local_data_ssl=YES
rsa_cert_file=$F/server.pem
rsa_private_key_file=$F/server.key
pam_service_name=vsftpd
secure_chroot_dir=/var/run/vsftpd/empty
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
max_per_ip=0
EOF
/usr/sbin/vsftpd "$F/vsftpd.conf" >/dev/null 2>&1 &
FTPD_PID=$!

HOSTKEY=$(cut -d' ' -f1,2 "$S/host.pub")
cat > "$G/jobs.d/sftp-bank.toml" <<EOF
[partner]
id = "sftp-bank"
name = "Bench SFTP bank"
role = "bank"
[delivery]
endpoint = { type = "sftp", host = "127.0.0.1", port = $SSH_PORT, user = "$BUSER", host_key = "$HOSTKEY", key_file = "keys/bench.id_ed25519", dir = "$R" }
EOF
cat > "$G/jobs.d/ftps-bank.toml" <<EOF
[partner]
id = "ftps-bank"
name = "Bench FTPS bank"
role = "bank"
[delivery]
endpoint = { type = "ftps", host = "127.0.0.1", port = $FTP_PORT, user = "$BUSER", password_file = "keys/bench.ftp-password", ca_file = "$F/ca.pem", dir = "$R" }
EOF
sleep 0.5
for b in sftp-bank ftps-bank; do
    "$BIN" remote test "$b" --config "$G" > "$WORK/test.out" || { cat "$WORK/test.out"; exit 1; }
    head -3 "$WORK/test.out"
done

SFTP=(sftp -q -i "$G/keys/bench.id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
      -o LogLevel=ERROR -P "$SSH_PORT" "$BUSER@127.0.0.1")
# One timed run: prints seconds. $1 = output path to clear first.
timed() {
    local out=$1; shift
    rm -rf "$out"
    local t0 t1
    t0=$(now)
    "$@" >/dev/null 2>&1
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}
declare -A T
for run in $(seq "$RUNS"); do
    echo "== run $run"
    T[sftp_big]+="$(timed "$WORK/out/a" "${SFTP[@]}" <<<"get $R/big.bin $WORK/out/a") "
    T[sluss_big]+="$(timed "$WORK/out/b" "$BIN" remote get sftp-bank "$R/big.bin" -o "$WORK/out/b" --config "$G") "
    cmp "$R/big.bin" "$WORK/out/b"
    T[sftp_small]+="$(timed "$WORK/out/c" "${SFTP[@]}" <<<"get -r $R/small $WORK/out/c") "
    [ "$(ls "$WORK/out/c" | wc -l)" = "$SMALL_FILES" ]
    T[sluss_small]+="$(timed "$WORK/out/d" "$BIN" remote get sftp-bank "$R/small" -r -o "$WORK/out/d" --config "$G") "
    [ "$(ls "$WORK/out/d" | wc -l)" = "$SMALL_FILES" ]
    T[sluss_ftps]+="$(timed "$WORK/out/e" "$BIN" remote get ftps-bank "$R/ftps" -r -o "$WORK/out/e" --config "$G") "
    [ "$(ls "$WORK/out/e" | wc -l)" = "$FTPS_FILES" ]
    if [ "$run" = 1 ]; then
        # lftp once: at ~45 ms per file it takes minutes.
        T[lftp_ftps]+="$(timed "$WORK/out/f" lftp -u "$BUSER,$PW" -p "$FTP_PORT" \
            -e "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file $F/ca.pem; set ssl:check-hostname no; mirror $R/ftps $WORK/out/f; quit" 127.0.0.1) "
        [ "$(ls "$WORK/out/f" | wc -l)" = "$FTPS_FILES" ] || echo "lftp fetched $(ls "$WORK/out/f" | wc -l) files"
    fi
done
m() { tr ' ' '\n' <<<"${T[$1]}" | grep . | median; }
BIG=$((BIG_MIB * 1024 * 1024))
printf '\n%-44s %12s %12s %8s\n' "what" "reference" "sluss" "ratio"
awk -v a="$(m sftp_big)" -v b="$(m sluss_big)" -v n="$BIG" 'BEGIN {
    printf "%-44s %9.0f MB/s %7.0f MB/s %8.2f\n", "1 GiB from sshd (sftp get)", n/a/1e6, n/b/1e6, a/b }'
awk -v a="$(m sftp_small)" -v b="$(m sluss_small)" -v n="$SMALL_FILES" 'BEGIN {
    printf "%-44s %7.0f files/s %6.0f files/s %8.2f\n", n " x 4 KiB from sshd (sftp get -r)", n/a, n/b, a/b }'
awk -v a="$(m lftp_ftps)" -v b="$(m sluss_ftps)" -v n="$FTPS_FILES" 'BEGIN {
    printf "%-44s %7.0f files/s %6.0f files/s %8.2f\n", n " x 4 KiB from vsftpd FTPS (lftp mirror)", n/a, n/b, a/b }'
echo "(medians of $RUNS runs; lftp: 1 run; ratio = sluss speed / reference speed)"
