#!/usr/bin/env bash
# The TCP/TLS front's figures (issue 11; bench/RESULTS.md "TCP/TLS front
# (issue 11)"), with bench/src/bin/tls_conns.rs as the phones:
#
#   mem: tls_conns hold ─N TLS (then TCP) connections from 127.0.0.10..─▶ sipis
#        each: REGISTER ─▶ 401 ─▶ REGISTER + digest ─▶ 200, then idle;
#        sipis's VmRSS before connecting and with all N registered and idle
#   cpu: tls_conns register ─C TLS connections, closed loop─▶ sipis, then
#        the same ─▶ Kamailio (registrar and proxy over TLS, bench/kamailio/tls.cfg);
#        then tls_conns calls: P phones registered over TLS, a UDP caller at
#        CALL_RATE calls/s: INVITE ─▶ server ─TLS─▶ phone 180, 200 ─▶ caller;
#        ACK, BYE ─▶ phone, 200 ─▶ caller;
#        utime+stime of sipis / of every Kamailio process over each wave
#
# sipis runs fresh for each part (release build, SHARDS shards, embedded
# store, LOG_LEVEL), with ACCOUNTS accounts in proxy mode imported over the
# admin API (CSV: sip:b<i>@front.test, auth user b<i>, password pw-b<i>).
# Both servers present the same self-signed P-256 certificate (openssl).
#
# Usage (as root: locked memory for glommio, descriptors for N; loopback
# only; every wait and load loop is bounded):
#   bash bench/front_load.sh                    # PART=all: mem (tls, tcp) then cpu
#   PART=mem CONNS=10000 bash bench/front_load.sh
#   PART=cpu bash bench/front_load.sh
#   CONNS=200 ACCOUNTS=200 PART=all bash bench/front_load.sh   # smoke run
#
# Environment (defaults in brackets):
#   PART [all|mem|cpu]  CONNS [10000] idle connections  ACCOUNTS [=CONNS]
#   PER_IP [1000] connections per source address (tcp.max_connections_per_ip
#   is set to it)  SHARDS [2]  KAM_WORKERS [2]  LOAD_CONNS [50] connections of
#   the REGISTER load  WAVES [4] (the first binds, the next refresh)
#   WAVE_BOUND [60] s per wave  ROUNDS [2] sipis-then-Kamailio rounds
#   CALL_RATE [300] calls/s  CALL_S [20] s  CALL_PHONES [500]
#   SETTLE [5] s idle before RSS is read  MEM_TRANSPORTS [tls tcp udp]
#   LOG_LEVEL [warn]
#   SIP_PORT [25160] (UDP; shards on the next ports)  TCP_PORT [25170]
#   TLS_PORT [25171]  KAM_PORT [25172] (TLS; UDP on KAM_PORT+1)  ADMIN_PORT [28160]
#   OUT [/tmp/sipis-front-<date>]  CARGO_TARGET_DIR [target]  NO_BUILD=1
#   SIPIS_BIN [$CARGO_TARGET_DIR/release/sipis]: another sipis build
#   PERF=1: perf profile of sipis over the REGISTER load
#           ($OUT/cpu-sipis-<round>/perf-register.data)
set -euo pipefail

PART=${PART:-all}
CONNS=${CONNS:-10000}
ACCOUNTS=${ACCOUNTS:-$CONNS}
PER_IP=${PER_IP:-1000}
SHARDS=${SHARDS:-2}
KAM_WORKERS=${KAM_WORKERS:-2}
LOAD_CONNS=${LOAD_CONNS:-50}
WAVES=${WAVES:-4}
WAVE_BOUND=${WAVE_BOUND:-60}
ROUNDS=${ROUNDS:-2}
SETTLE=${SETTLE:-5}
CALL_RATE=${CALL_RATE:-300}
CALL_S=${CALL_S:-20}
CALL_PHONES=${CALL_PHONES:-500}
LOG_LEVEL=${LOG_LEVEL:-warn}
SIP_PORT=${SIP_PORT:-25160}
TCP_PORT=${TCP_PORT:-25170}
TLS_PORT=${TLS_PORT:-25171}
KAM_PORT=${KAM_PORT:-25172}
ADMIN_PORT=${ADMIN_PORT:-28160}
OUT=${OUT:-/tmp/sipis-front-$(date +%Y%m%d-%H%M%S)}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SIPIS=${SIPIS_BIN:-$TARGET/release/sipis}
CLIENT=$TARGET/release/tls_conns
ADMIN_TOKEN=front-load-admin-token-0123456789
MPATH=${MPATH:-/usr/lib/x86_64-linux-gnu/kamailio/modules}

die() { echo "front_load: $*" >&2; exit 2; }
for t in curl openssl; do command -v $t >/dev/null || die "$t missing: apt-get install $t"; done
case $PART in all|mem|cpu) ;; *) die "PART must be all, mem or cpu" ;; esac
if [[ $PART != mem ]]; then
    command -v kamailio >/dev/null || die "kamailio missing: apt-get install kamailio kamailio-tls-modules"
    [[ -f $MPATH/tls.so ]] || die "no $MPATH/tls.so: apt-get install kamailio-tls-modules (or set MPATH)"
fi
if [[ ${NO_BUILD:-} != 1 ]]; then
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -p sipis --bin sipis \
        && CARGO_TARGET_DIR=$TARGET cargo build --release -p sipis-bench --bin tls_conns) \
        || die "build failed"
fi
[[ -x $SIPIS && -x $CLIENT ]] || die "no $SIPIS or $CLIENT (unset NO_BUILD)"
for p in $TCP_PORT $TLS_PORT $KAM_PORT $ADMIN_PORT; do
    ss -Hltn "sport = :$p" | grep -q . && die "TCP port $p is in use"
done
mkdir -p "$OUT"
echo "output in $OUT"
ulimit -l unlimited 2>/dev/null || true
# Each side (sipis, the client) holds CONNS sockets: its own descriptors.
ulimit -n $((CONNS + 1024)) 2>/dev/null || die "cannot raise ulimit -n to $((CONNS + 1024)) (hard limit $(ulimit -Hn); run as root)"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$OUT/sip.key" -out "$OUT/sip.crt" -days 7 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 2>/dev/null

# ---- processes this script started, stopped by pid ---------------------------
SIPIS_PID= KAM_PID=
stop() { # $1 = pid
    [[ -n $1 ]] || return 0
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() { stop "$KAM_PID"; stop "$SIPIS_PID"; }
trap cleanup EXIT

start_sipis() { # $1 = name of the run
    local d=$OUT/$1
    mkdir -p "$d"
    cat > "$d/sipis.toml" <<EOF
[server]
bind = "127.0.0.1"
public_host = "127.0.0.1"
sip_port = $SIP_PORT
shards = $SHARDS
data_dir = "$d/data"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token = "$ADMIN_TOKEN"

[log]
level = "$LOG_LEVEL"

[calls]
phone_realm = "sipis"

[tcp]
enabled = true
port = $TCP_PORT
max_connections = $((CONNS + 1000))
max_connections_per_ip = $PER_IP

[tls]
port = $TLS_PORT
cert = "$OUT/sip.crt"
key = "$OUT/sip.key"
EOF
    "$SIPIS" check-config "$d/sipis.toml" > "$d/check-config.txt" 2>&1 \
        || die "config rejected: $(cat "$d/check-config.txt")"
    "$SIPIS" serve --config "$d/sipis.toml" > "$d/sipis.log" 2>&1 &
    SIPIS_PID=$!
    for i in $(seq 150); do
        curl -sf "http://127.0.0.1:$ADMIN_PORT/health" >/dev/null 2>&1 && break
        kill -0 $SIPIS_PID 2>/dev/null || { tail -20 "$d/sipis.log"; die "sipis exited at start"; }
        [[ $i == 150 ]] && { tail -20 "$d/sipis.log"; die "sipis not healthy within 15 s"; }
        sleep 0.1
    done
    # The accounts, as one CSV import (proxy mode: no registrar upstream).
    { echo "aor,auth_user,password,ha1,registrar,outbound_proxy,expires,enabled"
      for i in $(seq 1 "$ACCOUNTS"); do echo "sip:b$i@front.test,b$i,pw-b$i,,,,3600,true"; done
    } > "$d/accounts.csv"
    curl -sf -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: text/csv' \
        --data-binary @"$d/accounts.csv" "http://127.0.0.1:$ADMIN_PORT/accounts/import" \
        > "$d/import.json" || die "CSV import failed"
    echo "sipis pid $SIPIS_PID ($1): import $(cat "$d/import.json")"
    sleep 2 # the accounts reach their shards
}
metrics() { curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$ADMIN_PORT/metrics" || true; }
# Slab caches of TCP sockets (both ends: the client's and sipis's), kB.
slab_kb() {
    awk '$1 == "TCP" || $1 == "sock_inode_cache" || $1 == "filp" || $1 == "TCPv6" \
        { kb += $3 * $4 / 1024 } END { printf "%.0f", kb }' /proc/slabinfo 2>/dev/null || echo "?"
}

start_kamailio() { # $1 = log file; sets KAM_PID and KPIDS (every process)
    # -DD: foreground, workers forked; the tlsf allocator as in "REGISTER
    # rate against Kamailio"; -n workers.
    kamailio -f "$OUT/kamailio-tls.cfg" -DD -E -x tlsf -X tlsf -m 256 -M 32 -n "$KAM_WORKERS" \
        > "$1" 2>&1 &
    KAM_PID=$!
    for i in $(seq 100); do
        ss -Hltn "sport = :$KAM_PORT" | grep -q . && break
        kill -0 $KAM_PID 2>/dev/null || { tail "$1"; die "kamailio exited"; }
        [[ $i == 100 ]] && die "kamailio not listening within 10 s"
        sleep 0.1
    done
    sleep 1
    KPIDS=$( (echo "$KAM_PID"; pgrep -P "$KAM_PID") | paste -sd,)
}
# Every process Kamailio started is still there.
kamailio_alive() {
    local p
    for p in ${KPIDS//,/ }; do kill -0 "$p" 2>/dev/null || return 1; done
}

SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
say "==== front_load: CONNS=$CONNS ACCOUNTS=$ACCOUNTS SHARDS=$SHARDS PER_IP=$PER_IP, sipis $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?), load average $(cut -d' ' -f1-3 /proc/loadavg)"

if [[ $PART == all || $PART == mem ]]; then
    # udp: the same registrations without connections (the engine's share).
    for transport in ${MEM_TRANSPORTS:-tls tcp udp}; do
        start_sipis "mem-$transport"
        case $transport in tls) port=$TLS_PORT ;; tcp) port=$TCP_PORT ;; *) port=$SIP_PORT ;; esac
        SLAB0=$(slab_kb)
        set +e
        "$CLIENT" hold --transport "$transport" --port "$port" --accounts "$CONNS" \
            --per-ip "$PER_IP" --pid "$SIPIS_PID" --settle "$SETTLE" --hold 4 --connect-bound 300 \
            > "$OUT/mem-$transport/hold.txt" 2> "$OUT/mem-$transport/hold.log" &
        HOLD=$!
        # Read the kernel's side while the connections are still open.
        for _ in $(seq 3300); do
            grep -q '^closed by the server' "$OUT/mem-$transport/hold.txt" 2>/dev/null && break
            kill -0 $HOLD 2>/dev/null || break
            sleep 0.1
        done
        SLAB1=$(slab_kb)
        metrics > "$OUT/mem-$transport/metrics.txt"
        wait $HOLD; RC=$?
        set -e
        cat "$OUT/mem-$transport/hold.log"
        tee -a "$SUMMARY" < "$OUT/mem-$transport/hold.txt"
        say "kernel slab (TCP + sock_inode_cache + filp, both ends of every connection): $SLAB0 -> $SLAB1 kB"
        say "sipis_connections_open: $(awk '/^sipis_connections_open/ {print $2}' "$OUT/mem-$transport/metrics.txt")"
        [[ $RC == 0 ]] || say "WARNING: tls_conns hold exited $RC"
        stop "$SIPIS_PID"; SIPIS_PID=
    done
fi

if [[ $PART == all || $PART == cpu ]]; then
    sed -e "s#@PORT@#$KAM_PORT#; s#@UDP_PORT@#$((KAM_PORT + 1))#; s#@MPATH@#$MPATH#; s#@CERT@#$OUT/sip.crt#; s#@KEY@#$OUT/sip.key#; s#@WORKERS@#$KAM_WORKERS#g" \
        "$ROOT/bench/kamailio/tls.cfg" > "$OUT/kamailio-tls.cfg"
    kamailio -c -f "$OUT/kamailio-tls.cfg" > "$OUT/kamailio-check.txt" 2>&1 \
        || die "kamailio rejects $OUT/kamailio-tls.cfg: $(tail -5 "$OUT/kamailio-check.txt")"
    for round in $(seq 1 "$ROUNDS"); do
        start_sipis "cpu-sipis-$round"
        say "-- round $round: sipis ($SHARDS shards), $LOAD_CONNS TLS connections, $ACCOUNTS accounts"
        PERF_PID=
        if [[ -n ${PERF:-} ]]; then # profile sipis over the REGISTER load
            perf record -F 999 -g -p "$SIPIS_PID" -o "$OUT/cpu-sipis-$round/perf-register.data" \
                > "$OUT/cpu-sipis-$round/perf.log" 2>&1 &
            PERF_PID=$!
            sleep 0.5
        fi
        "$CLIENT" register --transport tls --port "$TLS_PORT" --accounts "$ACCOUNTS" \
            --per-ip "$PER_IP" --pid "$SIPIS_PID" --connections "$LOAD_CONNS" \
            --waves "$WAVES" --wave-bound "$WAVE_BOUND" 2> "$OUT/cpu-sipis-$round/register.log" \
            | tee -a "$SUMMARY" || say "WARNING: sipis register load failed (see $OUT/cpu-sipis-$round/register.log)"
        if [[ -n $PERF_PID ]]; then
            kill -INT "$PERF_PID" 2>/dev/null || true
            wait "$PERF_PID" 2>/dev/null || true
        fi
        "$CLIENT" calls --server sipis --transport tls --port "$TLS_PORT" --udp-port "$SIP_PORT" \
            --shards "$SHARDS" --admin "127.0.0.1:$ADMIN_PORT" --admin-token "$ADMIN_TOKEN" \
            --per-ip "$PER_IP" --accounts "$CALL_PHONES" --connections "$CALL_PHONES" --pid "$SIPIS_PID" \
            --rate "$CALL_RATE" --seconds "$CALL_S" 2> "$OUT/cpu-sipis-$round/calls.log" \
            | tee -a "$SUMMARY" || say "WARNING: sipis calls failed (see $OUT/cpu-sipis-$round/calls.log)"
        stop "$SIPIS_PID"; SIPIS_PID=

        mkdir -p "$OUT/cpu-kamailio-$round"
        start_kamailio "$OUT/cpu-kamailio-$round/kamailio.log"
        say "-- round $round: Kamailio $(kamailio -v | head -1 | awk '{print $3}') ($KAM_WORKERS TLS workers; processes $KPIDS), $LOAD_CONNS TLS connections"
        "$CLIENT" register --transport tls --port "$KAM_PORT" --domain kam.test \
            --accounts "$ACCOUNTS" --per-ip "$PER_IP" --pid "$KPIDS" \
            --connections "$LOAD_CONNS" --waves "$WAVES" --wave-bound "$WAVE_BOUND" \
            2> "$OUT/cpu-kamailio-$round/register.log" \
            | tee -a "$SUMMARY" || say "WARNING: Kamailio register load failed (see $OUT/cpu-kamailio-$round/register.log)"
        if ! kamailio_alive; then
            # Kamailio 5.6.3's tls module with OpenSSL 3 (Debian 12) double-frees
            # now and then (kamailio#3791; the tls_threads_mode setting of later
            # releases, the fix, is not in 5.6).
            say "WARNING: Kamailio crashed: $(grep -m1 -E 'BUG|exited by a signal' "$OUT/cpu-kamailio-$round/kamailio.log"); restarted for the calls"
            stop "$KAM_PID"
            start_kamailio "$OUT/cpu-kamailio-$round/kamailio-2.log"
        fi
        "$CLIENT" calls --server kamailio --transport tls --port "$KAM_PORT" --udp-port "$((KAM_PORT + 1))" \
            --domain kam.test --per-ip "$PER_IP" --accounts "$CALL_PHONES" --connections "$CALL_PHONES" \
            --pid "$KPIDS" --rate "$CALL_RATE" --seconds "$CALL_S" 2> "$OUT/cpu-kamailio-$round/calls.log" \
            | tee -a "$SUMMARY" || say "WARNING: Kamailio calls failed (see $OUT/cpu-kamailio-$round/calls.log)"
        kamailio_alive || say "WARNING: Kamailio crashed during the calls: $(grep -m1 -E 'BUG|exited by a signal' "$OUT"/cpu-kamailio-"$round"/kamailio*.log)"
        stop "$KAM_PID"; KAM_PID=
    done
fi
say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
