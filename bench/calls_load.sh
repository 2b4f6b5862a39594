#!/usr/bin/env bash
# Answered-call load benchmark of sipis (bench/RESULTS.md "Answered-call load").
#
#   sipp (provider, bench/sipp/uac_answered.xml) ──INVITE──▶ sipis shard port
#   sipis ──push JSON (HTTP/1.1)──▶ phones (mediator) ──wake──▶ phone REGISTERs
#   sipis ──INVITE──▶ phone: 180, 200 ◀── relayed to sipp; ACK; BYE after -d
#
# It provisions ACCOUNTS accounts in proxy mode with one APNs device each
# (admin API: CSV import, then PUT /accounts/{id}/devices/iphone), starts
# the phone simulator (which is also the push mediator) and `sipis serve`
# (release build), runs sipp at RATE calls/s for CALLS calls, then reports:
# sipp's successful/failed calls, sipis's CPU time per call (utime+stime
# from /proc), the call-flow quantiles of sipis's /metrics and the
# simulator's own report. Zero failed calls is the bar: the script exits 1
# otherwise.
#
# Usage (as root; loopback only; every wait is bounded):
#   bash bench/calls_load.sh                       # 2000 accounts, 200 calls/s x 60 s, 2 s calls
#   ACCOUNTS=20 RATE=10 CALLS=40 bash bench/calls_load.sh     # smoke run
#   MODE=awake bash bench/calls_load.sh            # phones registered all along: no push
#
# Environment (defaults in brackets):
#   ACCOUNTS [2000]  RATE [200] calls/s  CALLS [12000]  CALL_MS [2000]
#   MODE [push|awake]  WAKE_DELAY [50ms]  SHARDS [2]  DEVICE_WAIT [30s]
#   PUSH_CONNECTIONS [512] (most HTTP/1.1 connections to the mediator)  LOG_LEVEL [warn]
#   SIP_PORT [25060] (shards on SIP_PORT+1..)  ADMIN_PORT [28080]
#   MEDIATOR_PORT [28090]  SIPP_PORT [25990]: below the ephemeral range, as
#   every simulated phone binds an ephemeral port of its own
#   OUT [/tmp/sipis-calls-load-<date>]: logs, configs, sipp files, summary
#   CARGO_TARGET_DIR [target]: where the release binaries are (built if missing)
#   NO_BUILD=1: use the binaries as they are
#   IDLE_S [10]: seconds of idle sipis measured before the run
#   PERF_S: record a perf profile of sipis over the first PERF_S s of the run
#           ($OUT/perf.data; `perf report -i $OUT/perf.data`)
set -euo pipefail

ACCOUNTS=${ACCOUNTS:-2000}
RATE=${RATE:-200}
CALLS=${CALLS:-12000}
CALL_MS=${CALL_MS:-2000}
MODE=${MODE:-push}
WAKE_DELAY=${WAKE_DELAY:-50ms}
SHARDS=${SHARDS:-2}
DEVICE_WAIT=${DEVICE_WAIT:-30s}
PUSH_CONNECTIONS=${PUSH_CONNECTIONS:-512}
LOG_LEVEL=${LOG_LEVEL:-warn}
SIP_PORT=${SIP_PORT:-25060}
ADMIN_PORT=${ADMIN_PORT:-28080}
MEDIATOR_PORT=${MEDIATOR_PORT:-28090}
SIPP_PORT=${SIPP_PORT:-25990}
OUT=${OUT:-/tmp/sipis-calls-load-$(date +%Y%m%d-%H%M%S)}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SIPIS=$TARGET/release/sipis
PHONES=$TARGET/release/phones
SCENARIO=$ROOT/bench/sipp/uac_answered.xml
ADMIN_TOKEN=calls-load-admin-token-0123456789
PUSH_TOKEN=calls-load-push-token-0123456789
HZ=$(getconf CLK_TCK)

die() { echo "calls_load: $*" >&2; exit 2; }
command -v sipp >/dev/null || die "sipp missing: apt-get install sip-tester"
command -v curl >/dev/null || die "curl missing: apt-get install curl"
case $MODE in push|awake) ;; *) die "MODE must be push or awake" ;; esac

if [[ ${NO_BUILD:-} != 1 ]]; then
    echo "building release binaries (sipis, phones) into $TARGET"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -p sipis --bin sipis \
        && CARGO_TARGET_DIR=$TARGET cargo build --release -p sipis-bench --bin phones) \
        || die "build failed"
fi
[[ -x $SIPIS && -x $PHONES ]] || die "no $SIPIS or $PHONES (unset NO_BUILD)"

read -r EPH_LO EPH_HI < /proc/sys/net/ipv4/ip_local_port_range
for p in $SIP_PORT $SIPP_PORT $ADMIN_PORT $MEDIATOR_PORT; do
    (( p >= EPH_LO && p <= EPH_HI )) && die "port $p is in the ephemeral range $EPH_LO-$EPH_HI (the phones' sockets may take it)"
done
for p in $SIP_PORT $(seq $((SIP_PORT + 1)) $((SIP_PORT + SHARDS))) $SIPP_PORT; do
    ss -Hlun "sport = :$p" | grep -q . && die "UDP port $p is in use (set SIP_PORT/SIPP_PORT)"
done
for p in $ADMIN_PORT $MEDIATOR_PORT; do
    ss -Hltn "sport = :$p" | grep -q . && die "TCP port $p is in use (set ADMIN_PORT/MEDIATOR_PORT)"
done

# Each account must be free again before its next call (SEQUENTIAL tokens).
if (( ACCOUNTS * 1000 < RATE * (CALL_MS + 3000) )); then
    die "ACCOUNTS=$ACCOUNTS too few: an account is called every ACCOUNTS/RATE s, which must exceed the call (CALL_MS) + 3 s"
fi
mkdir -p "$OUT/data"
echo "output in $OUT"
# glommio locks memory for io_uring; sipis raises the limit itself when it
# may (tuning/memlock.md).
ulimit -l unlimited 2>/dev/null || true
ulimit -n 65536 2>/dev/null || true

# ---- processes this script started, stopped by pid on exit ----------------
SIPIS_PID= PHONES_PID=
cleanup() {
    for pid in $PHONES_PID $SIPIS_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        alive=0
        for pid in $PHONES_PID $SIPIS_PID; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in $PHONES_PID $SIPIS_PID; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# ---- sipis config (tuning/sipis.toml-like) ---------------------------------
write_config() { # $1 = with the [calls]/[push] sections (1) or not (0)
    cat > "$OUT/sipis.toml" <<EOF
[server]
bind = "127.0.0.1"
public_host = "127.0.0.1"
sip_port = $SIP_PORT
shards = $SHARDS
data_dir = "$OUT/data"

[sip]
t1 = "500ms"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token = "$ADMIN_TOKEN"

[log]
level = "$LOG_LEVEL"
EOF
    if [[ $1 == 1 ]]; then
        cat >> "$OUT/sipis.toml" <<EOF

[calls]
device_wait = "$DEVICE_WAIT"
late_wake_window = "15s"
phone_realm = "sipis"

[push]
mediator_url = "http://127.0.0.1:$MEDIATOR_PORT/push"
token = "$PUSH_TOKEN"
timeout = "3s"
retries = 2
connections = $PUSH_CONNECTIONS
EOF
    fi
}
write_config 1
if ! "$SIPIS" check-config "$OUT/sipis.toml" > "$OUT/check-config.txt" 2>&1; then
    if [[ $MODE == awake ]] && grep -qE 'calls|push' "$OUT/check-config.txt"; then
        echo "note: this sipis knows no [calls]/[push] yet; awake mode runs without them:"
        sed 's/^/    /' "$OUT/check-config.txt"
        write_config 0
        "$SIPIS" check-config "$OUT/sipis.toml" >/dev/null 2>&1 \
            || die "config rejected: $(cat "$OUT/check-config.txt")"
    else
        echo "calls_load: sipis rejects the config (push mode needs [calls] and [push]):" >&2
        sed 's/^/    /' "$OUT/check-config.txt" >&2
        exit 2
    fi
fi

# ---- start sipis -------------------------------------------------------------
"$SIPIS" serve --config "$OUT/sipis.toml" > "$OUT/sipis.log" 2>&1 &
SIPIS_PID=$!
ADMIN="http://127.0.0.1:$ADMIN_PORT"
for i in $(seq 150); do
    curl -sf "$ADMIN/health" >/dev/null 2>&1 && break
    kill -0 $SIPIS_PID 2>/dev/null || { tail -20 "$OUT/sipis.log"; die "sipis exited at start"; }
    [[ $i == 150 ]] && { tail -20 "$OUT/sipis.log"; die "sipis not healthy within 15 s"; }
    sleep 0.1
done
echo "sipis pid $SIPIS_PID healthy ($SHARDS shards, phones on $SIP_PORT)"

# ---- provision ---------------------------------------------------------------------
"$PHONES" provision --admin "127.0.0.1:$ADMIN_PORT" --admin-token "$ADMIN_TOKEN" \
    --accounts "$ACCOUNTS" --sip-port "$SIP_PORT" --shards "$SHARDS" --out "$OUT" \
    2>&1 | tee "$OUT/provision.log"
[[ ${PIPESTATUS[0]} == 0 ]] || die "provisioning failed"

# ---- start the phones / mediator --------------------------------------------------
SETUP_S=$((CALLS / RATE + CALL_MS / 1000 + 90))
"$PHONES" run --phones "$OUT/phones.csv" --sipis "127.0.0.1:$SIP_PORT" \
    --listen "127.0.0.1:$MEDIATOR_PORT" --token "$PUSH_TOKEN" --mode "$MODE" \
    --wake-delay "$WAKE_DELAY" --calls "$CALLS" --duration "$((SETUP_S + 60))s" \
    --report "$OUT/phones.json" > "$OUT/phones.log" 2>&1 &
PHONES_PID=$!
for i in $(seq 1200); do
    grep -q '^READY' "$OUT/phones.log" 2>/dev/null && break
    kill -0 $PHONES_PID 2>/dev/null || { cat "$OUT/phones.log"; die "phones exited at start"; }
    [[ $i == 1200 ]] && die "phones not ready within 120 s"
    sleep 0.1
done
echo "phones pid $PHONES_PID: $(grep '^READY' "$OUT/phones.log")"

# ---- measure ------------------------------------------------------------------------
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# CPU ticks per thread name of a process ("name ticks" lines).
thread_ticks() {
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(tr ' ' '_' < "$t/comm")" "$(sed 's/^.*) //' "$t/stat" | awk '{print $12 + $13}')"
    done 2>/dev/null | awk '{ s[$1] += $2 } END { for (n in s) print n, s[n] }' | sort
}
metrics() { curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN/metrics" || true; }
metrics > "$OUT/metrics-before.txt"
# What sipis costs with its accounts and nothing to do (its shards tick).
IDLE_S=${IDLE_S:-10}
I0=$(ticks $SIPIS_PID); sleep "$IDLE_S"; I1=$(ticks $SIPIS_PID)
IDLE_PCT=$(echo "($I1 - $I0) * 100 / $HZ / $IDLE_S" | bc -l)
thread_ticks $SIPIS_PID > "$OUT/threads-before.txt"
S0=$(ticks $SIPIS_PID); P0=$(ticks $PHONES_PID); T0=$(date +%s.%N)
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
echo "sipp: $CALLS calls at $RATE/s, ${CALL_MS} ms each, mode $MODE, wake delay $WAKE_DELAY (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"

cd "$OUT"
PERF_PID=
if [[ -n ${PERF_S:-} ]]; then # profile sipis for PERF_S seconds of the run (tuning/profiling.md)
    perf record -F 999 --call-graph fp -p "$SIPIS_PID" -o "$OUT/perf.data" -- sleep "$PERF_S" \
        > "$OUT/perf.log" 2>&1 &
    PERF_PID=$!
fi
set +e
sipp 127.0.0.1 -sf "$SCENARIO" -inf "$OUT/calls.csv" \
    -i 127.0.0.1 -p "$SIPP_PORT" -r "$RATE" -m "$CALLS" -d "$CALL_MS" \
    -recv_timeout 40000 -timeout "${SETUP_S}s" -nostdin \
    -trace_stat -fd 5 -trace_err -trace_screen -trace_rtt -rtt_freq 1 \
    > "$OUT/sipp.out" 2>&1 < /dev/null
SIPP_RC=$?
set -e
T1=$(date +%s.%N); S1=$(ticks $SIPIS_PID); P1=$(ticks $PHONES_PID)
[[ -n $PERF_PID ]] && wait "$PERF_PID" || true
thread_ticks $SIPIS_PID > "$OUT/threads-after.txt"
sleep 1.2 # the shards publish their counters every second
metrics > "$OUT/metrics-after.txt"

# The simulator ends by itself once every call ended (--calls); bounded.
for _ in $(seq 300); do kill -0 $PHONES_PID 2>/dev/null || break; sleep 0.1; done
kill -TERM $PHONES_PID 2>/dev/null || true
for _ in $(seq 50); do kill -0 $PHONES_PID 2>/dev/null || break; sleep 0.1; done

# ---- report ----------------------------------------------------------------------------
STAT=$(ls -t "$OUT"/uac_answered_*_.csv 2>/dev/null | head -1)
col() { # last row's value of a column of sipp's -trace_stat file
    awk -F';' -v name="$1" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i; next }
        { v = $c } END { print v + 0 }' "$STAT"
}
OK=0 FAILED=0 RETRANS=0
if [[ -n $STAT ]]; then
    OK=$(col 'SuccessfulCall(C)'); FAILED=$(col 'FailedCall(C)'); RETRANS=$(col 'Retransmissions(C)')
fi
# Quantiles of sipp's response-time durations (-trace_rtt: date_ms;ms;rtd name; whole ms).
RTT=$(ls -t "$OUT"/uac_answered_*_rtt.csv 2>/dev/null | head -1 || true)
rtd() { # $1 = rtd name: "n p50 p90 p99 max" in ms
    [[ -n $RTT ]] || { echo "?"; return; }
    awk -F';' -v n="$1" '$3 == n { print $2 }' "$RTT" | sort -g | awk '
        { v[NR] = $1 } END { if (NR == 0) { print "none"; exit }
        q = "n=" NR; split("0.5 0.9 0.99", p, " ")
        for (i = 1; i <= 3; i++) { k = int(p[i] * NR + 0.999999); if (k < 1) k = 1; q = q sprintf(" p%s=%.2f", p[i] * 100, v[k]) }
        print q sprintf(" max=%.2f ms", v[NR]) }'
}
ERRLOG=$(ls -t "$OUT"/uac_answered_*_errors.log 2>/dev/null | head -1 || true)
WALL=$(echo "$T1 - $T0" | bc -l)
SIPIS_CPU=$(echo "($S1 - $S0) / $HZ" | bc -l)
PHONES_CPU=$(echo "($P1 - $P0) / $HZ" | bc -l)
PER_CALL=$(echo "if ($OK > 0) ($S1 - $S0) / $HZ * 1000000 / $OK else 0" | bc -l)
# The same less what sipis spends idle over as long a time.
PER_CALL_NET=$(echo "if ($OK > 0) (($S1 - $S0) / $HZ - $IDLE_PCT / 100 * $WALL) * 1000000 / $OK else 0" | bc -l)
THREADS=$(join -a 2 "$OUT/threads-before.txt" "$OUT/threads-after.txt" | awk -v hz="$HZ" '
    { d = (NF == 3 ? $3 - $2 : $2) / hz; if (d > 0) printf "%s %.2f s, ", $1, d }' | sed 's/, $//')

{
echo "==== answered-call load: $CALLS calls at $RATE/s, ${CALL_MS} ms calls, $ACCOUNTS accounts, mode $MODE, wake $WAKE_DELAY"
echo "sipp: successful $OK, failed $FAILED, retransmissions $RETRANS (exit $SIPP_RC)"
echo "sipp setup (INVITE→200): $(rtd setup); BYE→200: $(rtd bye)"
printf 'wall %.1f s; sipis CPU %.2f s = %.0f%% of a core = %.1f us/call (%.1f us/call less its idle %.1f%% of a core); phones CPU %.2f s\n' \
    "$WALL" "$SIPIS_CPU" "$(echo "$SIPIS_CPU * 100 / $WALL" | bc -l)" "$PER_CALL" "$PER_CALL_NET" "$IDLE_PCT" "$PHONES_CPU"
echo "sipis CPU by thread: $THREADS"
echo "load average before: $LOAD0 (1 min), after: $(cut -d' ' -f1 /proc/loadavg)"
echo "-- sipis /metrics (after) --"
grep -E '^sipis_(calls|pushes|call_)' "$OUT/metrics-after.txt" | grep -v '^#' || echo "(no call metrics)"
echo "-- phones --"
sed -n '/^phones:/,$p' "$OUT/phones.log"
if [[ $FAILED != 0 && -n $ERRLOG ]]; then
    echo "-- sipp errors (first 20 lines of $ERRLOG) --"
    head -20 "$ERRLOG"
fi
if grep -qE 'WARN|ERROR' "$OUT/sipis.log"; then
    echo "-- sipis warnings/errors (first 20) --"
    grep -E 'WARN|ERROR' "$OUT/sipis.log" | head -20
fi
} | tee "$OUT/summary.txt"

[[ $FAILED == 0 && $OK == "$CALLS" ]] || { echo "calls_load: FAILED ($FAILED failed, $OK of $CALLS successful)"; exit 1; }
echo "calls_load: all $CALLS calls answered"
