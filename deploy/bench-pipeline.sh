#!/usr/bin/env bash
# Pipeline benchmark: signed webhooks -> release wafleet-ingest -> Redis partition streams ->
# N release wafleet-worker processes (WAFLEET_STAGES=conversation: redaction + Postgres) -> rows.
#
#   deploy/bench-pipeline.sh            (or: just bench-pipeline)
#
# For each worker count it starts ingest and the workers on a fresh database and Redis prefix,
# sends BENCH_MESSAGES webhooks from BENCH_CONVERSATIONS customers with `wafleet-loadgen` at a
# fixed concurrency, and waits until every answered message is a row in `messages`. It reports:
#   msgs/s         rows / (last row's received_at - first send)
#   job p50/p99    the conversation stage's handler time, from the workers' Prometheus histograms
#                  (wafleet_job_duration_seconds{stage="conversation"}, buckets of all workers
#                  summed, quantiles interpolated linearly inside a bucket, as histogram_quantile)
#   e2e p50/p99    ingest -> stored: messages.received_at minus the stream entry's time
#                  (source_entry is `<unix ms>-<seq>`), percentile_cont in SQL
# and checks that nothing was lost or done twice: rows = answers 200 = BENCH_MESSAGES, distinct
# wamids = rows, handler runs = rows (all `done`), streams drained, no dead letters.
#
# Knobs (environment):
#   BENCH_MESSAGES        webhooks per run, one message each          (default 20000)
#   BENCH_CONVERSATIONS   distinct customers = conversations           (default 500)
#   BENCH_CONCURRENCY     loadgen connections in flight                (default 32)
#   BENCH_WORKERS         worker counts to run, in order               (default "1 2")
#   BENCH_DRAIN_TIMEOUT   seconds to wait for the last row             (default 600)
#   BENCH_IDLE_TIMEOUT    seconds to wait for other benchmarks to end  (default 900; 0: don't
#                         wait, for a smoke test whose numbers do not matter)
#   BENCH_CPU_WAIT        then seconds to wait for the CPUs to be idle (default 120)
#   BENCH_NO_BUILD=1      skip `cargo build --release`
#   BENCH_RUST_LOG        RUST_LOG of ingest and workers               (default warn)
#   WAFLEET_PARTITIONS, WAFLEET_DATABASE_POOL_SIZE, WAFLEET_MAX_IN_FLIGHT, ...  passed through
#   WAFLEET_REDIS_PORT / WAFLEET_PG_PORT  which services (see deploy/services.sh)
#
# Exit status 3 when a check fails (lost, duplicated or unfinished messages).
#
# Isolation: a fresh Redis key prefix per run (deleted at exit) and a fresh database
# wafleet_bench_pipeline (dropped at exit) on the services of this checkout; one bench-pipeline
# at a time per checkout (a lock in .wafleet/). Before measuring, it waits until no other
# benchmark (loadgen, bench-ingest, bench-pii) runs on the machine.
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$ROOT"

MESSAGES="${BENCH_MESSAGES:-20000}"
CONVERSATIONS="${BENCH_CONVERSATIONS:-500}"
CONCURRENCY="${BENCH_CONCURRENCY:-32}"
WORKER_COUNTS="${BENCH_WORKERS:-1 2}"
DRAIN_TIMEOUT="${BENCH_DRAIN_TIMEOUT:-600}"
IDLE_TIMEOUT="${BENCH_IDLE_TIMEOUT:-900}"
CPU_WAIT="${BENCH_CPU_WAIT:-120}"
PARTITIONS="${WAFLEET_PARTITIONS:-16}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
BENCH_DB=wafleet_bench_pipeline
export RUST_LOG="${BENCH_RUST_LOG:-warn}"

note() { echo "bench-pipeline: $*" >&2; }
# Helpers shared with the other benchmarks (processes, Redis, Postgres, CPU accounting).
source "$ROOT/deploy/bench-lib.sh"

[[ "$IDLE_TIMEOUT" =~ ^[0-9]+$ ]] || die "BENCH_IDLE_TIMEOUT must be a number, got '$IDLE_TIMEOUT'"
[[ "$CPU_WAIT" =~ ^[0-9]+$ ]] || die "BENCH_CPU_WAIT must be a number, got '$CPU_WAIT'"
for v in MESSAGES CONVERSATIONS CONCURRENCY DRAIN_TIMEOUT PARTITIONS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive number, got '${!v}'"
done
for n in $WORKER_COUNTS; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "BENCH_WORKERS: '$n' is not a count"; done

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
  note "building release binaries"
  cargo build --release --quiet -p wafleet-ingest -p wafleet-worker -p wafleetctl -p wafleet-loadgen
fi
for b in wafleet-ingest wafleet-worker wafleetctl wafleet-loadgen; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b missing (build it, or set CARGO_TARGET_DIR)"
done
LOADGEN="$BIN/wafleet-loadgen"

bench_services bench-pipeline
bench_redis_url

SECRET="bench-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
PNID=100000000000002
LOGS="$(mktemp -d /tmp/bench-pipeline.XXXXXX)"
PIDS=() PREFIXES=() ROWS=() FAILED=0

trap cleanup EXIT
trap 'exit 130' INT TERM

# Sum of a counter over the workers, e.g. counter 'wafleet_jobs_total{' 'outcome="done"'.
counter() {
  local name="$1" match="$2" a
  shift 2
  for a in "$@"; do metrics "$a"; done |
    awk -v n="$name" -v m="$match" 'index($0, n) == 1 && (m == "" || index($0, m)) && /stage="conversation"/ { s += $2 } END { print s + 0 }'
}


KEY="$("$BIN/wafleetctl" generate-key)"
echo "== setup: redis $APP_REDIS_URL, postgres ${DATABASE_URL##*@}, database $BENCH_DB," \
  "$PARTITIONS partitions, $(nproc) cores; $MESSAGES messages from $CONVERSATIONS conversations," \
  "$CONCURRENCY connections; synchronous_commit $(psql_admin -c 'SHOW synchronous_commit')," \
  "redis appendfsync $(rcli config get appendfsync | tail -n1)"

run() {
  local workers="$1" prefix i port addrs=() env_common
  prefix="benchpipe$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  PREFIXES+=("$prefix")
  psql_admin -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)"
  psql_admin -c "CREATE DATABASE $BENCH_DB"
  env_common=(env DATABASE_URL="$BENCH_DATABASE_URL" REDIS_URL="$APP_REDIS_URL"
    WAFLEET_ENCRYPTION_KEY="$KEY" WAFLEET_REDIS_PREFIX="$prefix" WAFLEET_PARTITIONS="$PARTITIONS")

  port="$("$LOADGEN" free-port)"
  local url="http://127.0.0.1:$port/webhooks/whatsapp"
  start "ingest-w$workers" "http://127.0.0.1:$port/readyz" "${env_common[@]}" \
    WAFLEET_INGEST_ADDR="127.0.0.1:$port" \
    WHATSAPP_PHONE_NUMBER_ID="$PNID" WHATSAPP_APP_SECRET="$SECRET" \
    WHATSAPP_VERIFY_TOKEN=bench-verify WHATSAPP_ACCESS_TOKEN=bench-token \
    "$BIN/wafleet-ingest"
  local ingest_pid="${PIDS[-1]}" worker_pids=()
  for ((i = 1; i <= workers; i++)); do
    port="$("$LOADGEN" free-port)"
    addrs+=("127.0.0.1:$port")
    start "worker$i-w$workers" "http://127.0.0.1:$port/readyz" "${env_common[@]}" \
      WAFLEET_STAGES=conversation WAFLEET_WORKER_METRICS_ADDR="127.0.0.1:$port" \
      "$BIN/wafleet-worker"
    worker_pids+=("${PIDS[-1]}")
  done
  wait_balanced "${addrs[@]}"
  wait_for_quiet "wafleet-loadgen|bench-pii|bench-ingest"

  local t0 out redis0 machine0 loadgen_s
  snapshot $(pg_cluster) >"$LOGS/pg0"
  snapshot "$ingest_pid" >"$LOGS/ingest0"
  snapshot "${worker_pids[@]}" >"$LOGS/workers0"
  redis0="$(redis_cpu)" machine0="$(machine)"
  children_cpu >"$LOGS/loadgen0"
  t0="$(date +%s%3N)"
  out="$("$LOADGEN" run --label "workers$workers" --url "$url" --secret "$SECRET" \
    --phone-number-id "$PNID" --customers "$CONVERSATIONS" --concurrency "$CONCURRENCY" \
    --warmup 0 --duration 600 --max-requests "$MESSAGES")"
  local t_sent ok_total errors
  t_sent="$(date +%s%3N)"
  children_cpu >"$LOGS/loadgen1"
  loadgen_s="$(awk -v a="$(<"$LOGS/loadgen0")" -v b="$(<"$LOGS/loadgen1")" 'BEGIN { printf "%.1f", b - a }')"
  ok_total="$(sed -n 's/^RESULT .* ok_total=\([0-9]*\).*/\1/p' <<<"$out")"
  errors="$(sed -n 's/^RESULT .* errors=\([0-9]*\).*/\1/p' <<<"$out")"
  local stored_at_send
  stored_at_send="$(sql "SELECT count(*) FROM messages")"

  local deadline=$((SECONDS + DRAIN_TIMEOUT)) stored=0
  while stored="$(sql "SELECT count(*) FROM messages")"; ((stored < ok_total)); do
    ((SECONDS < deadline)) || { note "workers=$workers: only $stored of $ok_total rows after ${DRAIN_TIMEOUT}s"; break; }
    sleep 0.5
  done
  snapshot $(pg_cluster) >"$LOGS/pg1"
  snapshot "$ingest_pid" >"$LOGS/ingest1"
  snapshot "${worker_pids[@]}" >"$LOGS/workers1"
  local redis_s busy ingest_s workers_s pg_s others_s
  redis_s="$(awk -v a="$redis0" -v b="$(redis_cpu)" 'BEGIN { printf "%.1f", b - a }')"
  ingest_s="$(secs "$(cpu_delta "$LOGS/ingest0" "$LOGS/ingest1")")"
  workers_s="$(secs "$(cpu_delta "$LOGS/workers0" "$LOGS/workers1")")"
  pg_s="$(secs "$(cpu_delta "$LOGS/pg0" "$LOGS/pg1")")"
  read -r busy others_s <<<"$(awk -v a="$machine0" -v b="$(machine)" -v n="$(nproc)" -v k="$TICKS" \
    -v ours="$ingest_s $workers_s $pg_s $redis_s $loadgen_s" 'BEGIN {
      split(a, x, " "); split(b, y, " "); split(ours, o, " ")
      printf "%.0f%% %.1f", 100 * (y[1] - x[1]) / (y[2] - x[2]), (y[1] - x[1]) / k - o[1] - o[2] - o[3] - o[4] - o[5] }')"
  # Anything late (a duplicate) would show up now.
  sleep 1

  local facts rows distinct t_last e2e_p50 e2e_p99
  facts="$(sql "SELECT count(*), count(DISTINCT wamid),
                       (extract(epoch FROM max(received_at)) * 1000)::bigint,
                       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::numeric, 1),
                       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 1)
                  FROM (SELECT wamid, received_at,
                               extract(epoch FROM received_at) * 1000
                                 - split_part(source_entry, '-', 1)::bigint AS d
                          FROM messages) m" | tr '|' ' ')"
  read -r rows distinct t_last e2e_p50 e2e_p99 <<<"$facts"
  local seconds rate job done_jobs other_jobs backlog=0 dead
  seconds="$(ms_to_s "$t0" "$t_last")"
  rate="$(awk -v n="$rows" -v s="$seconds" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')"
  job="$(job_buckets conversation "${addrs[@]}" | quantiles 0.5 0.99)"
  done_jobs="$(counter 'wafleet_jobs_total{' 'outcome="done"' "${addrs[@]}")"
  other_jobs=$(($(counter 'wafleet_jobs_total{' '' "${addrs[@]}") - done_jobs))
  local others_by_outcome="" o
  for o in retry unavailable dead; do
    local k; k="$(counter 'wafleet_jobs_total{' "outcome=\"$o\"" "${addrs[@]}")"
    ((k == 0)) || others_by_outcome+=" $o=$k"
  done
  for ((i = 0; i < PARTITIONS; i++)); do backlog=$((backlog + $(rcli xlen "$prefix:{p$i}:inbound"))); done
  dead="$(rcli xlen "$prefix:{dead}:conversation")"
  stop_all

  local ok=1 verdict
  ((ok_total == MESSAGES && errors == 0)) || ok=0
  ((rows == ok_total && distinct == rows)) || ok=0
  # Retries and "unavailable" (e.g. a Postgres pool timeout) are allowed: they redo a job, and the
  # rows and handler completions show whether that lost or doubled anything.
  ((done_jobs == rows && backlog == 0 && dead == 0)) || ok=0
  verdict="$( ((ok)) && echo ok || echo FAILED)"
  ((ok)) || FAILED=1
  echo "-- workers=$workers: sent $MESSAGES in $(ms_to_s "$t0" "$t_sent") s" \
    "($(sed -n 's/^RESULT .* rps=\([0-9.]*\).*/\1/p' <<<"$out") req/s, $errors errors), $stored_at_send rows stored by then;" \
    "cpu s: loadgen $loadgen_s, ingest $ingest_s, workers $workers_s, postgres $pg_s, redis $redis_s," \
    "anything else $others_s; machine busy $busy of $(nproc) cores"
  echo "   rows $rows, distinct wamids $distinct, answered 200 $ok_total; handler runs: $done_jobs done," \
    "$other_jobs other${others_by_outcome:+ (${others_by_outcome# })}; inbound left $backlog, dead letters $dead: $verdict"
  local cpu_per_msg
  cpu_per_msg="$(awk -v n="$rows" -v c="$ingest_s $workers_s $pg_s $redis_s" 'BEGIN {
    split(c, x, " "); printf "%.2f", (n > 0 ? 1000 * (x[1] + x[2] + x[3] + x[4]) / n : 0) }')"
  ROWS+=("$(printf '%7s %9s %8s %8s %11s %11s %11s %11s %11s  %s' "$workers" "$rows" "$seconds" "$rate" \
    ${job% *} ${job#* } "$e2e_p50" "$e2e_p99" "$cpu_per_msg" \
    "$( ((ok)) && echo "none lost, none duplicated" || echo "CHECK FAILED")")")
}

for n in $WORKER_COUNTS; do run "$n"; done

echo
echo "== pipeline: $MESSAGES messages, $CONVERSATIONS conversations, $CONCURRENCY connections, $PARTITIONS partitions"
printf '%7s %9s %8s %8s %11s %11s %11s %11s %11s  %s\n' workers messages seconds msgs/s \
  job_p50_ms job_p99_ms e2e_p50_ms e2e_p99_ms cpu_ms/msg checks
printf '%s\n' "${ROWS[@]}"
echo "(seconds: first send -> last row stored; job: conversation handler time; e2e: stream entry -> row;"
echo " cpu_ms/msg: CPU of ingest + workers + postgres + redis per message, whatever else ran meanwhile)"
((FAILED == 0)) || exit 3
