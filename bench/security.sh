#!/usr/bin/env bash
# Enumeration and password guessing against a live sipis with SIPVicious
# (bench/RESULTS.md "Security: enumeration and guessing").
#
#   svwar -m REGISTER ──▶ sipis phone port   (extensions 1000-1099; 1050 exists)
#   svcrack -u 1050   ──▶ sipis phone port   (100 guesses, the password 60th)
#
# It starts `sipis serve` (1 shard, embedded store, logs in text) on
# loopback, provisions the account sip:1050@sec.test (password at
# position 60 of the generated wordlist) through the admin API, then:
# 1. svwar over 1000-1099 with REGISTER: sipis answers every extension
#    with the same 401, so svwar must report all of them alike (or none),
#    never 1050 alone;
# 2. svcrack on 1050 with the wordlist: how long it runs, whether it finds
#    the password within the bound, guesses/s; then sipis's own counts
#    (`sipis_auth_blocks_total`, `sipis_auth_blocked_refusals_total`,
#    `sipis_phone_auth_failures_total`) and its `auth blocked:` log lines.
#
# Usage (needs `apt-get install sipvicious`; loopback only; every run is
# under `timeout`):
#   bash bench/security.sh
#   SIPIS_BIN=/work/target-sec/debug/sipis bash bench/security.sh
#
# Environment (defaults in brackets):
#   SIPIS_BIN [$CARGO_TARGET_DIR/release/sipis, built if missing]
#   SIP_PORT [26060]  ADMIN_PORT [28180]  BOUND [120] seconds per tool
#   OUT [/tmp/sipis-security-<date>]: logs, config, tool output, summary
set -euo pipefail
cd "$(dirname "$0")/.."

SIP_PORT=${SIP_PORT:-26060}
ADMIN_PORT=${ADMIN_PORT:-28180}
BOUND=${BOUND:-120}
OUT=${OUT:-/tmp/sipis-security-$(date +%Y%m%d-%H%M%S)}
TOKEN=security-bench-admin-token-0123456789abcdef
USER_EXT=1050
PASSWORD=Tr0ub4dor-60
mkdir -p "$OUT"

for t in svwar svcrack curl jq; do
  command -v "$t" >/dev/null || { echo "$t missing: apt-get install sipvicious curl jq" >&2; exit 2; }
done
if [ -z "${SIPIS_BIN:-}" ]; then
  SIPIS_BIN="${CARGO_TARGET_DIR:-target}/release/sipis"
  [ -x "$SIPIS_BIN" ] || cargo build --release --bin sipis
fi
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true

cat >"$OUT/sipis.toml" <<EOF
[server]
bind = "127.0.0.1"
public_host = "127.0.0.1"
sip_port = $SIP_PORT
shards = 1
data_dir = "$OUT/data"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token = "$TOKEN"

[log]
level = "info"
format = "text"

[calls]
phone_realm = "sipis"
EOF

NO_COLOR=1 "$SIPIS_BIN" serve --config "$OUT/sipis.toml" >"$OUT/sipis.log" 2>&1 &
SIPIS_PID=$!
trap 'kill $SIPIS_PID 2>/dev/null; wait $SIPIS_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
  curl -sf "http://127.0.0.1:$ADMIN_PORT/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$ADMIN_PORT/health" >/dev/null || { echo "sipis did not start" >&2; tail "$OUT/sipis.log"; exit 1; }

api() { curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
api -X POST "http://127.0.0.1:$ADMIN_PORT/accounts" \
  -d "{\"aor\":\"sip:$USER_EXT@sec.test\",\"auth_user\":\"$USER_EXT\",\"password\":\"$PASSWORD\"}" \
  >"$OUT/account.json"
echo "account: $(cat "$OUT/account.json")"
sleep 0.5

# 100 guesses, the password 60th.
: >"$OUT/words.txt"
for i in $(seq 1 100); do
  if [ "$i" -eq 60 ]; then echo "$PASSWORD"; else echo "guess-$i-$RANDOM"; fi
done >"$OUT/words.txt"

echo "== svwar -m REGISTER -e 1000-1099 (1050 exists)"
START=$(date +%s.%N)
timeout "$BOUND" svwar -m REGISTER -e 1000-1099 --domain sec.test \
  -p "$SIP_PORT" 127.0.0.1 >"$OUT/svwar.txt" 2>&1 || echo "svwar exit $?" >>"$OUT/svwar.txt"
SVWAR_S=$(echo "$(date +%s.%N) - $START" | bc)
cat "$OUT/svwar.txt"
FOUND=$(grep -cE '^\| *[0-9]+ ' "$OUT/svwar.txt" || true)
FOUND_REAL=$(grep -cE "^\| *$USER_EXT " "$OUT/svwar.txt" || true)

echo "== svwar --force (scan anyway): every extension must look the same"
timeout "$BOUND" svwar --force -m REGISTER -e 1000-1099 --domain sec.test \
  -p "$SIP_PORT" 127.0.0.1 >"$OUT/svwar-force.txt" 2>&1 || echo "svwar exit $?" >>"$OUT/svwar-force.txt"
cat "$OUT/svwar-force.txt"
FORCED=$(grep -cE '^\| *[0-9]+ ' "$OUT/svwar-force.txt" || true)
KINDS=$(grep -E '^\| *[0-9]+ ' "$OUT/svwar-force.txt" | awk -F'|' '{gsub(/ /, "", $3); print $3}' | sort | uniq -c | tr -s ' ' | paste -sd, || true)

echo "== svcrack -u $USER_EXT -d words.txt (password at 60/100)"
START=$(date +%s.%N)
timeout "$BOUND" svcrack -u "$USER_EXT" -d "$OUT/words.txt" --domain sec.test \
  -p "$SIP_PORT" 127.0.0.1 >"$OUT/svcrack.txt" 2>&1 || echo "svcrack exit $?" >>"$OUT/svcrack.txt"
SVCRACK_S=$(echo "$(date +%s.%N) - $START" | bc)
cat "$OUT/svcrack.txt"
CRACKED=$(grep -c "$PASSWORD" "$OUT/svcrack.txt" || true)

METRICS=$(api "http://127.0.0.1:$ADMIN_PORT/metrics")
m() { echo "$METRICS" | awk -v n="$1" '$1 == n || index($1, n"{") == 1 { s += $2 } END { print s + 0 }'; }
FAIL=$(m sipis_phone_auth_failures_total)
{
  echo "svwar: ${SVWAR_S}s over 100 extensions; lines reported: $FOUND (the real one among them: $FOUND_REAL)"
  echo "svwar --force: $FORCED extensions reported, by answer: $KINDS"
  echo "svcrack: ${SVCRACK_S}s; password found: $([ "$CRACKED" -gt 0 ] && echo yes || echo no)"
  echo "sipis: phone digest failures checked $FAIL ($(echo "scale=2; $FAIL / $SVCRACK_S" | bc) guesses/s checked)," \
    "blocks $(m sipis_auth_blocks_total), refusals without a challenge $(m sipis_auth_blocked_refusals_total)," \
    "OPTIONS answered $(m sipis_options_total)"
  echo "auth blocked log lines:"
  grep 'auth blocked' "$OUT/sipis.log" | sed 's/  */ /g' || true
} | tee "$OUT/summary.txt"
