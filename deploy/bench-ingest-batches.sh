#!/usr/bin/env bash
# Ingest with Meta's largest batches beside ordinary webhooks: the release wafleet-ingest (one
# serving thread) on real Redis (AOF everysec) and Postgres takes small webhooks at a steady rate,
# first alone, then while 1,000-message bodies (about 1.9 MB; Meta puts up to 1,000 updates in
# one POST), each with new wamids, are posted back to back on another connection. Prints the small webhooks' latency both ways and
# how many batches went through: what one batch costs the webhooks that arrive behind it.
#
#   deploy/bench-ingest-batches.sh      (or: just bench-ingest-batches)
#
# Knobs (environment):
#   BENCH_RATE          small webhooks per second            (default 2000)
#   BENCH_DURATION      measured seconds of each half         (default 10)
#   BENCH_NO_BUILD=1    skip `cargo build --release`
#   BENCH_RUST_LOG      ingest's RUST_LOG                   (default warn)
#   BENCH_REDIS         unix or tcp (see deploy/bench-ingest.sh)
#   BENCH_KEEP_LOGS / BENCH_KEEP_DB  keep the logs / the database (see deploy/bench-lib.sh)
#   WAFLEET_REDIS_PORT / WAFLEET_PG_PORT  which services (see deploy/services.sh)
#
# Isolation: a fresh Redis key prefix (deleted at exit) and a fresh database
# wafleet_bench_batches (dropped at exit) on the services of this checkout.
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$ROOT"

RATE="${BENCH_RATE:-2000}"
DURATION="${BENCH_DURATION:-10}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
BENCH_DB=wafleet_bench_batches

note() { echo "bench-ingest-batches: $*" >&2; }
source "$ROOT/deploy/bench-lib.sh"
[[ "$RATE" =~ ^[1-9][0-9]*$ ]] || die "BENCH_RATE must be a positive number, got '$RATE'"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "BENCH_DURATION must be a positive number, got '$DURATION'"

bench_binaries wafleet-ingest wafleet-loadgen wafleetctl
LOADGEN="$BIN/wafleet-loadgen"

bench_services bench-ingest-batches
bench_redis_url
PREFIX="bench$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
PREFIXES=("$PREFIX")
SECRET="bench-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
PNID=100000000000001
LOGS="$(mktemp -d /tmp/bench-ingest-batches.XXXXXX)"
PIDS=()
POSTER=""
# Asks the batch loop to stop after the batch it is posting, and waits for it.
stop_poster() {
  [[ -n "$POSTER" ]] || return 0
  touch "$LOGS/stop-batches"
  wait "$POSTER" 2>/dev/null || true
  POSTER=""
}
# cleanup (bench-lib.sh) reads the exit status: it is handed on past stop_poster.
trap 'rc=$?; stop_poster; (exit "$rc"); cleanup' EXIT
trap 'exit 130' INT TERM

psql_admin -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)"
psql_admin -c "CREATE DATABASE $BENCH_DB"
KEY="$("$BIN/wafleetctl" generate-key)"

# batch N: 1,000 text messages from 1,000 customers, each with a 1.7 KB text escaped as Meta
# escapes it, and wamids of its own (so every batch is appended, not answered as a redelivery).
batch() {
  awk -v pnid="$PNID" -v n="$1" 'BEGIN {
    text = ""
    for (i = 0; i < 20; i++) text = text "Hola, quer\\u00eda saber si el pedido n\\u00famero 48213 ya sali\\u00f3 del almac\\u00e9n. "
    printf "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"102290129340398\",\"changes\":[{\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{\"display_phone_number\":\"15550783881\",\"phone_number_id\":\"%s\"},\"contacts\":[{\"profile\":{\"name\":\"Ana\"},\"wa_id\":\"573000000000\"}],\"messages\":[", pnid
    for (i = 0; i < 1000; i++) {
      if (i > 0) printf ","
      printf "{\"from\":\"57300%05d\",\"id\":\"wamid.BATCH%d.%06d\",\"timestamp\":\"1700000000\",\"type\":\"text\",\"text\":{\"body\":\"%s\"}}", i, n, i, text
    }
    printf "]},\"field\":\"messages\"}]}]}"
  }'
}
batch 0 >"$LOGS/batch.json"

PORT="$("$LOADGEN" free-port)"
URL="http://127.0.0.1:$PORT/webhooks/whatsapp"
start ingest "http://127.0.0.1:$PORT/readyz" env \
  DATABASE_URL="$BENCH_DATABASE_URL" WAFLEET_ENCRYPTION_KEY="$KEY" \
  REDIS_URL="$APP_REDIS_URL" WAFLEET_REDIS_PREFIX="$PREFIX" WAFLEET_INGEST_THREADS=1 \
  WAFLEET_INGEST_ADDR="127.0.0.1:$PORT" RUST_LOG="${BENCH_RUST_LOG:-warn}" \
  WHATSAPP_PHONE_NUMBER_ID="$PNID" WHATSAPP_APP_SECRET="$SECRET" \
  WHATSAPP_VERIFY_TOKEN=bench-verify WHATSAPP_ACCESS_TOKEN=bench-token \
  "$BIN/wafleet-ingest"

echo "== small webhooks at $RATE/s, $DURATION s alone, then $DURATION s with 1,000-message" \
  "batches ($(($(wc -c <"$LOGS/batch.json") / 1000)) KB) posted back to back; one serving thread"
small() {
  "$LOADGEN" run --url "$URL" --label "$1" --secret "$SECRET" --phone-number-id "$PNID" \
    --concurrency 32 --rate "$RATE" --duration "$DURATION" --warmup 2 | grep '^RESULT'
}
ALONE="$(small alone)"
# Batches back to back, each with new wamids, until stop_poster; the next one is written while
# nothing is being posted.
(
  n=1
  until [[ -e "$LOGS/stop-batches" ]]; do
    batch "$n" >"$LOGS/batch.json"
    if "$BIN/wafleetctl" send-webhook --url "$URL" --secret "$SECRET" "$LOGS/batch.json" >>"$LOGS/batches.out" 2>&1; then
      echo ok >>"$LOGS/batches.ok"
    else
      echo failed >>"$LOGS/batches.ok"
    fi
    n=$((n + 1))
  done
) 8>&- &
POSTER=$!
BESIDE="$(small beside_batches)"
stop_poster
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
ok="$(grep -c '^ok$' "$LOGS/batches.ok" || true)"
failed="$(grep -c '^failed$' "$LOGS/batches.ok" || true)"
echo
printf '%-16s %9s %9s %9s %9s %7s\n' "" rps p50_ms p99_ms p999_ms errors
for r in "$ALONE" "$BESIDE"; do
  printf '%-16s %9s %9s %9s %9s %7s\n' "$(field "$r" label)" "$(field "$r" rps)" "$(field "$r" p50_ms)" \
    "$(field "$r" p99_ms)" "$(field "$r" p999_ms)" "$(field "$r" errors)"
done
echo "batches posted   $ok answered 2xx, $failed not (during the second half, its 2 s of warm-up included)"
((failed == 0)) || { tail -n 5 "$LOGS/batches.out" >&2; die "a batch was not answered 2xx"; }
