#!/usr/bin/env bash
# Ingest benchmark: the release wafleet-ingest against real Redis (AOF everysec) and Postgres,
# and the same load against `wafleet-loadgen ceiling` (signature + parse, no I/O), loaded by
# turns in the same run, and a summary.
#
#   deploy/bench-ingest.sh            (or: just bench-ingest)
#
# Knobs (environment):
#   BENCH_CONCURRENCY   connections in flight             (default 32)
#   BENCH_DURATION      measured seconds per server        (default 15)
#   BENCH_WARMUP        warm-up seconds before measuring   (default 5)
#   BENCH_ROUNDS        slices each server's measured seconds are cut into, loaded by turns
#                       (ingest, ceiling, ingest, ...; default 3): the host's speed drifts over a
#                       minute on a shared VM, and by turns it slows both alike. Each later slice
#                       has 1 s of warm-up (new connections); before each, the script waits for
#                       any AOF rewrite in progress to finish (one Redis starts on its own timer
#                       can still begin during a slice). 1: the whole ingest run, then the whole
#                       ceiling run.
#   BENCH_NO_BUILD=1    skip `cargo build --release`
#   BENCH_RUST_LOG      ingest's RUST_LOG                   (default warn)
#   BENCH_REDIS         how ingest reaches Redis: unix (the socket deploy/services.sh opens beside
#                       the port; default when there is one) or tcp
#   BENCH_PRELOAD_MARKS dedup marks written (and rewritten into the AOF base) before the run, to
#                       see a Redis that holds days of them, as production does (default 0)
#   BENCH_APPS          Meta apps the ingest serves, each with its own secret (default 1): the
#                       others' channels are added before the benchmarked one, so a POST on the
#                       shared path is hashed with every other secret first (as a bad signature
#                       always is)
#   BENCH_PATH          shared (POST /webhooks/whatsapp, default) or app (the benchmarked
#                       channel's app path, /webhooks/whatsapp/{app_id}, checked once)
#   WAFLEET_PARTITIONS, WAFLEET_REDIS_POOL_SIZE, ...  passed through to ingest as usual
#   WAFLEET_REDIS_PORT / WAFLEET_PG_PORT  which services (see deploy/services.sh)
#
# Targets: ingest rps >= 0.5 x ceiling rps, ingest p99 <= 10 ms, zero errors, and every 200 is
# exactly one stream entry. Exit status 3 when one is missed.
#
# Isolation: a fresh Redis key prefix (bench<random>, deleted at exit) and a fresh database
# wafleet_bench (dropped at exit) on the services of this checkout; nothing else is touched.
# One run at a time per set of services (the database name is fixed; a lock enforces it).
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$ROOT"

CONCURRENCY="${BENCH_CONCURRENCY:-32}"
DURATION="${BENCH_DURATION:-15}"
WARMUP="${BENCH_WARMUP:-5}"
ROUNDS="${BENCH_ROUNDS:-3}"
PARTITIONS="${WAFLEET_PARTITIONS:-16}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
BENCH_DB=wafleet_bench

note() { echo "bench-ingest: $*" >&2; }
# Services, psql, rcli and bench_redis_url; this script's own cleanup and CPU helpers below
# replace the library's.
source "$ROOT/deploy/bench-lib.sh"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive number, got '$ROUNDS'"
((DURATION % ROUNDS == 0)) || die "BENCH_DURATION ($DURATION) must be a multiple of BENCH_ROUNDS ($ROUNDS)"

bench_binaries wafleet-ingest wafleet-loadgen wafleetctl
LOADGEN="$BIN/wafleet-loadgen"

bench_services bench-ingest
bench_redis_url
[[ "$(rcli config get appendonly | tail -n1)" == yes ]] || die "Redis at $REDIS_URL runs without AOF"
fsync="$(rcli config get appendfsync | tail -n1)"
[[ "$fsync" == everysec ]] || die "Redis at $REDIS_URL has appendfsync=$fsync, the benchmark wants everysec"

PREFIX="bench$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
SECRET="bench-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
PNID=100000000000001
LOGS="$(mktemp -d /tmp/bench-ingest.XXXXXX)"
SERVER_PID=""

# CPU seconds (user + system) a process has used so far.
proc_cpu() { sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($12 + $13) / hz }'; }
# CPU seconds Redis has used, AOF rewrite children included; redis_rewrite_cpu: the children only.
redis_cpu() { rcli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys)(_children)?:/ { t += $2 } END { printf "%.3f", t }'; }
redis_rewrite_cpu() { rcli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys)_children:/ { t += $2 } END { printf "%.3f", t }'; }
redis_persistence() { rcli info persistence | tr -d '\r' | sed -n "s/^$1://p"; }
# Waits until no AOF rewrite is in progress, for at most 60 s; an unanswered Redis or a rewrite
# still running then fails. A file, so the load generator runs the same wait before each slice
# (see BENCH_ROUNDS); REDIS_URL is exported for it.
cat >"$LOGS/rewrite-done.sh" <<'EOF'
i=0
until redis-cli -u "$REDIS_URL" info persistence </dev/null | tr -d '\r' | grep -qx 'aof_rewrite_in_progress:0'; do
  i=$((i + 1))
  [ "$i" -lt 300 ] || { echo "bench-ingest: Redis still rewriting its AOF (or not answering) after 60 s" >&2; exit 1; }
  sleep 0.2
done
EOF
export REDIS_URL
rewrite_done() { sh "$LOGS/rewrite-done.sh"; }

# stop_server PID: prints the CPU seconds it used, then stops it.
stop_server() {
  [[ -n "$1" ]] || return 0
  proc_cpu "$1" 2>/dev/null || echo 0
  kill -TERM "$1" 2>/dev/null || true
  local i
  for ((i = 0; i < 250; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
INGEST_PID="" CEILING_PID=""

cleanup() {
  local rc=$?
  # A server still starting (or never ready) is in SERVER_PID only.
  stop_server "$SERVER_PID" >/dev/null
  stop_server "$INGEST_PID" >/dev/null
  stop_server "$CEILING_PID" >/dev/null
  if [[ -n "${REDIS_URL:-}" ]]; then
    rcli --scan --pattern "$PREFIX:*" | xargs -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
  fi
  psql_admin -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" 2>/dev/null || true
  if ((rc == 0 || rc == 3)); then rm -rf "$LOGS"; else note "logs kept in $LOGS"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql_admin -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)"
psql_admin -c "CREATE DATABASE $BENCH_DB"
KEY="$("$BIN/wafleetctl" generate-key)"

# start_server NAME READY_PATH CMD...: runs CMD in the background on a free port ($PORT); its pid
# in SERVER_PID.
start_server() {
  local name="$1" ready="$2"
  shift 2
  "$@" >"$LOGS/$name.log" 2>&1 8>&- &
  SERVER_PID=$!
  if ! "$LOADGEN" wait --url "http://127.0.0.1:$PORT$ready" --timeout-secs 60 2>>"$LOGS/$name.log"; then
    tail -n 20 "$LOGS/$name.log" >&2
    die "$name did not become ready on 127.0.0.1:$PORT"
  fi
}

result() { grep "^RESULT label=$1 " "$LOGS/load.out" | tail -n1; }
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

echo "== setup: redis $APP_REDIS_URL (appendfsync $fsync), database $BENCH_DB, prefix $PREFIX," \
  "$PARTITIONS partitions, $(nproc) cores"

# Marks as ingest names them (P:{pN}:seen:<22 characters>), 100,000 per script call, then one
# AOF rewrite so they sit in the base file like the days of marks of a production Redis.
PRELOAD="${BENCH_PRELOAD_MARKS:-0}"
[[ "$PRELOAD" =~ ^[0-9]+$ ]] || die "BENCH_PRELOAD_MARKS must be a number, got '$PRELOAD'"
if ((PRELOAD > 0)); then
  note "writing $PRELOAD dedup marks under $PREFIX"
  preload_script="for i = tonumber(ARGV[3]), tonumber(ARGV[4]) do
    redis.call('SET', ARGV[1] .. ':{p' .. (i % tonumber(ARGV[2])) .. '}:seen:' ..
      string.sub(redis.sha1hex(ARGV[1] .. i), 1, 22), '1', 'EX', 604800)
  end"
  for ((from = 1; from <= PRELOAD; from += 100000)); do
    to=$((from + 99999 < PRELOAD ? from + 99999 : PRELOAD))
    rcli eval "$preload_script" 0 "$PREFIX" "$PARTITIONS" "$from" "$to" >/dev/null
  done
  rewrite_done
  rcli bgrewriteaof >/dev/null
  sleep 0.2
  rewrite_done
  note "AOF base now $(($(redis_persistence aof_base_size) / 1000000)) MB"
fi

APPS="${BENCH_APPS:-1}"
[[ "$APPS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_APPS must be a positive number, got '$APPS'"
BENCH_APP_ID=7000000000000
case "${BENCH_PATH:-shared}" in
  shared) WEBHOOK_PATH=/webhooks/whatsapp ;;
  app) WEBHOOK_PATH="/webhooks/whatsapp/$BENCH_APP_ID" ;;
  *) die "BENCH_PATH must be shared or app, got '${BENCH_PATH}'" ;;
esac
if ((APPS > 1)); then
  note "adding $((APPS - 1)) other apps' channels"
  for ((n = 1; n < APPS; n++)); do
    env DATABASE_URL="$BENCH_DATABASE_URL" WAFLEET_ENCRYPTION_KEY="$KEY" \
      "$BIN/wafleetctl" channel add --phone-number-id "$((PNID + n))" \
      --app-id "$((BENCH_APP_ID + n))" --app-secret "other-app-secret-$n" >/dev/null
  done
fi
echo "== $APPS app(s), each with its own secret; ingest measured on POST $WEBHOOK_PATH"

PORT="$("$LOADGEN" free-port)"
INGEST_URL="http://127.0.0.1:$PORT$WEBHOOK_PATH"
start_server ingest /readyz env \
  DATABASE_URL="$BENCH_DATABASE_URL" WAFLEET_ENCRYPTION_KEY="$KEY" \
  REDIS_URL="$APP_REDIS_URL" WAFLEET_REDIS_PREFIX="$PREFIX" WAFLEET_PARTITIONS="$PARTITIONS" \
  WAFLEET_INGEST_ADDR="127.0.0.1:$PORT" RUST_LOG="${BENCH_RUST_LOG:-warn}" \
  WHATSAPP_PHONE_NUMBER_ID="$PNID" WHATSAPP_APP_SECRET="$SECRET" WHATSAPP_APP_ID="$BENCH_APP_ID" \
  WHATSAPP_VERIFY_TOKEN=bench-verify WHATSAPP_ACCESS_TOKEN=bench-token \
  "$BIN/wafleet-ingest"
INGEST_PID="$SERVER_PID" SERVER_PID=""
PORT="$("$LOADGEN" free-port)"
CEILING_URL="http://127.0.0.1:$PORT/webhooks/whatsapp"
start_server ceiling /healthz "$LOADGEN" ceiling --listen "127.0.0.1:$PORT" --secret "$SECRET"
CEILING_PID="$SERVER_PID" SERVER_PID=""

echo "== load by turns: $ROUNDS round(s) of ingest then ceiling, $((DURATION / ROUNDS)) s measured" \
  "each ($DURATION s per server), after $WARMUP s of warm-up the first time"
rewrite_done
redis_cpu_before="$(redis_cpu)" rewrite_cpu_before="$(redis_rewrite_cpu)"
rewrites_before="$(redis_persistence aof_rewrites)"
"$LOADGEN" run --label ingest --url "$INGEST_URL" --label ceiling --url "$CEILING_URL" \
  --rounds "$ROUNDS" --before-slice "sh \"$LOGS/rewrite-done.sh\"" \
  --secret "$SECRET" --phone-number-id "$PNID" \
  --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" | tee "$LOGS/load.out"
INGEST="$(result ingest)"
CEILING="$(result ceiling)"
INGEST_CPU="$(stop_server "$INGEST_PID")" INGEST_PID=""
CEILING_CPU="$(stop_server "$CEILING_PID")" CEILING_PID=""
REDIS_CPU="$(awk -v a="$redis_cpu_before" -v b="$(redis_cpu)" 'BEGIN { printf "%.3f", b - a }')"
REWRITE_CPU="$(awk -v a="$rewrite_cpu_before" -v b="$(redis_rewrite_cpu)" 'BEGIN { printf "%.3f", b - a }')"
REWRITES=$(($(redis_persistence aof_rewrites) - rewrites_before))

# Sanity: every 200 is exactly one inbound entry; nothing went to quarantine or dead letters.
stream_total=0
for ((n = 0; n < PARTITIONS; n++)); do
  len="$(rcli xlen "$PREFIX:{p$n}:inbound")"
  stream_total=$((stream_total + len))
done
off_path=$(($(rcli xlen "$PREFIX:{quarantine}:stream") + $(rcli xlen "$PREFIX:{dead}:ingest")))
ok_total="$(field "$INGEST" ok_total)"
echo "== streams: $stream_total inbound entries for $ok_total answers 200; $off_path in quarantine/dead letters"

verdict() { if [[ "$1" == 1 ]]; then echo ok; else echo MISSED; fi; }
i_rps="$(field "$INGEST" rps)" c_rps="$(field "$CEILING" rps)"
i_p99="$(field "$INGEST" p99_ms)"
i_err="$(field "$INGEST" errors)" c_err="$(field "$CEILING" errors)"
ratio="$(awk -v a="$i_rps" -v b="$c_rps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
ratio_ok="$(awk -v r="$ratio" 'BEGIN { print (r >= 0.5) ? 1 : 0 }')"
p99_ok="$(awk -v p="$i_p99" 'BEGIN { print (p <= 10) ? 1 : 0 }')"
err_ok=$(((i_err + c_err) == 0 ? 1 : 0))
streams_ok=$((stream_total == ok_total && off_path == 0 ? 1 : 0))

echo
echo "== summary ($CONCURRENCY connections, ${DURATION}s per server in $ROUNDS slice(s) by turns, after ${WARMUP}s warm-up)"
printf '%-9s %10s %9s %9s %9s %7s\n' "" rps p50_ms p99_ms p999_ms errors
for r in "$INGEST" "$CEILING"; do
  printf '%-9s %10s %9s %9s %9s %7s\n' "$(field "$r" label)" "$(field "$r" rps)" \
    "$(field "$r" p50_ms)" "$(field "$r" p99_ms)" "$(field "$r" p999_ms)" "$(field "$r" errors)"
done
echo "ingest/ceiling rps ratio  $ratio   (target >= 0.5)  $(verdict "$ratio_ok")"
echo "ingest p99                ${i_p99} ms (target <= 10)  $(verdict "$p99_ok")"
echo "errors                    $i_err ingest, $c_err ceiling (target 0)  $(verdict "$err_ok")"
echo "stream entries = 200s     $stream_total = $ok_total, off-path $off_path  $(verdict "$streams_ok")"
# CPU per request over each whole run: on a machine shared with other work (or a loaded CI box)
# rps moves with the neighbours, CPU per request much less. Their ratio is what the rps ratio
# would be if the load were CPU-bound on an otherwise idle machine.
per_req() { awk -v c="$1" -v n="$2" 'BEGIN { printf "%.1f", (n > 0 ? c * 1e6 / n : 0) }'; }
i_sent="$(field "$INGEST" sent)" c_sent="$(field "$CEILING" sent)"
i_us="$(per_req "$INGEST_CPU" "$i_sent")" r_us="$(per_req "$REDIS_CPU" "$i_sent")"
rw_us="$(per_req "$REWRITE_CPU" "$i_sent")"
c_us="$(per_req "$CEILING_CPU" "$c_sent")"
il_us="$(field "$INGEST" client_cpu_us)" cl_us="$(field "$CEILING" client_cpu_us)"
echo "CPU us/request, ingest run   ingest $i_us + redis $r_us + loadgen $il_us" \
  "(redis includes $rw_us of $REWRITES AOF rewrites)"
echo "CPU us/request, ceiling run  ceiling $c_us + loadgen $cl_us"
awk -v i="$i_us" -v r="$r_us" -v il="$il_us" -v c="$c_us" -v cl="$cl_us" 'BEGIN {
  printf "CPU-bound ratio estimate   %.2f   (ceiling run CPU / ingest run CPU; redis counts AOF rewrites and any other client)\n",
    (c + cl) / (i + r + il) }'
if ((ratio_ok && p99_ok && err_ok && streams_ok)); then
  echo "TARGETS HOLD"
else
  echo "TARGETS MISSED"
  exit 3
fi
