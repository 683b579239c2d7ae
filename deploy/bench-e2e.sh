#!/usr/bin/env bash
# End-to-end benchmark: signed webhooks -> release wafleet-ingest -> Redis -> wafleet-worker stages
# (conversation -> llm -> sender, plus status) -> the Graph API, all against `wafleet-sim` standing
# in for Meta and the LLM providers.
#
#   deploy/bench-e2e.sh            (or: just bench-e2e)
#
# Part 1, throughput with instant mocks (sim --llm-latency-ms 0, no Meta rate limits, the channel's
# send_rate_per_sec / pair_burst raised): for each count in BENCH_WORKERS, that many worker
# processes each running every stage. BENCH_MESSAGES webhooks from BENCH_CONVERSATIONS customers
# go through ingest with `wafleet-loadgen`; the sim posts sent/delivered/read status webhooks back
# to ingest, as Meta would. Reported:
#   msgs/s       messages / (last send received by the sim - first webhook sent)
#   e2e p50/p99  per message: the sim's received_at of its reply minus the time ingest enqueued
#                the webhook (messages.source_entry is the stream entry id `<unix ms>-<seq>`);
#                reply and message are matched by the reply's context (the customer's wamid)
#   job p50/p99  each stage's handler time, from the workers' Prometheus histograms
#   cpu s        per component, from /proc/PID/stat (postgres: the whole cluster; redis: INFO cpu)
# Part 1b, latency below capacity: one worker, for each rate in BENCH_LATENCY_RATE, webhooks at
# that steady rate per second (`wafleet-loadgen --rate`) for BENCH_LATENCY_SECONDS, the same
# figures. At capacity (part 1) every message waits behind the burst sent before it, so its e2e
# figures measure the queue; at a steady rate below capacity they measure the pipeline, and the
# rates in between show up to which load one worker keeps the p99 target.
# Part 2, in-flight capacity with a slow model (sim --llm-latency-ms BENCH_LLM_LATENCY_MS): one
# worker runs only the llm stage (WAFLEET_LLM_MAX_IN_FLIGHT=BENCH_LLM_IN_FLIGHT), another the
# rest. BENCH_INFLIGHT_MESSAGES webhooks from (nearly) as many customers are sent at once.
# Reported: the peak number of LLM calls open at the same time (every call takes exactly the
# sim's latency, so calls open at t = calls received in (t - latency, t]), the llm worker's peak
# RSS (VmHWM, and VmRSS sampled every 100 ms).
#
# Correctness (both parts): every webhook answered 200, every inbound message has exactly one
# reply sent (sends per context_message_id all 1), no send without its message.
#
# Knobs (environment):
#   BENCH_MESSAGES            part 1 webhooks per run                       (default 5000)
#   BENCH_CONVERSATIONS       part 1 distinct customers                     (default 1000)
#   BENCH_CONCURRENCY         loadgen connections in flight                 (default 32)
#   BENCH_WORKERS             part 1 worker counts, in order ("" skips it)  (default "1 2")
#   BENCH_INFLIGHT_MESSAGES   part 2 webhooks (0 skips it)                  (default 1200)
#   BENCH_LLM_LATENCY_MS      part 2 model latency                          (default 1000)
#   BENCH_LLM_IN_FLIGHT       part 2 WAFLEET_LLM_MAX_IN_FLIGHT              (default 1200: just above the
#                             1,000 the target asks for; 2000 shows how memory grows past it)
#   BENCH_LATENCY_RATE        part 1b steady webhooks/s, 1 worker, one run  (default "100 400 800")
#                             per rate, in order
#   BENCH_LATENCY_SECONDS     part 1b seconds of load per rate             (default 10)
#   BENCH_LATENCY_MESSAGES    part 1b webhooks per rate instead (0 skips part 1b)
#   BENCH_STATUS_WEBHOOKS=0   the sim posts no status webhooks
#   BENCH_DRAIN_TIMEOUT       seconds to wait for the last reply            (default 300)
#   BENCH_IDLE_TIMEOUT, BENCH_CPU_WAIT, BENCH_NO_BUILD, BENCH_RUST_LOG   as in bench-pipeline.sh
#   WAFLEET_PARTITIONS, WAFLEET_REDIS_PORT / WAFLEET_PG_PORT, ...          passed through
#
# Targets: >= 3,000 msg/s (part 1, 1 worker) and e2e p99 <= 50 ms (parts 1 and 1b); >= 1,000 in flight at
# <= 100 MB peak RSS (part 2). A missed target prints MISSED and still exits 0; a failed
# correctness check exits 3.
#
# Isolation: as bench-pipeline.sh — fresh Redis prefix and database wafleet_bench_e2e per run,
# both removed at exit; a lock per checkout; waits for other benchmarks before measuring.
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$ROOT"

MESSAGES="${BENCH_MESSAGES:-5000}"
CONVERSATIONS="${BENCH_CONVERSATIONS:-1000}"
CONCURRENCY="${BENCH_CONCURRENCY:-32}"
WORKER_COUNTS="${BENCH_WORKERS-1 2}"
INFLIGHT_MESSAGES="${BENCH_INFLIGHT_MESSAGES:-1200}"
LLM_LATENCY_MS="${BENCH_LLM_LATENCY_MS:-1000}"
LLM_IN_FLIGHT="${BENCH_LLM_IN_FLIGHT:-1200}"
LATENCY_RATES="${BENCH_LATENCY_RATE-100 400 800}"
LATENCY_SECONDS="${BENCH_LATENCY_SECONDS:-10}"
LATENCY_MESSAGES="${BENCH_LATENCY_MESSAGES:-}"
DRAIN_TIMEOUT="${BENCH_DRAIN_TIMEOUT:-300}"
IDLE_TIMEOUT="${BENCH_IDLE_TIMEOUT:-900}"
CPU_WAIT="${BENCH_CPU_WAIT:-120}"
PARTITIONS="${WAFLEET_PARTITIONS:-16}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
BENCH_DB=wafleet_bench_e2e
export RUST_LOG="${BENCH_RUST_LOG:-warn}"

# Targets.
T_RATE=3000 T_P99_MS=50 T_IN_FLIGHT=1000 T_RSS_MB=100

note() { echo "bench-e2e: $*" >&2; }
# Helpers shared with the other benchmarks (processes, Redis, Postgres, CPU accounting).
source "$ROOT/deploy/bench-lib.sh"

[[ "$IDLE_TIMEOUT" =~ ^[0-9]+$ ]] || die "BENCH_IDLE_TIMEOUT must be a number, got '$IDLE_TIMEOUT'"
[[ "$CPU_WAIT" =~ ^[0-9]+$ ]] || die "BENCH_CPU_WAIT must be a number, got '$CPU_WAIT'"
[[ "$INFLIGHT_MESSAGES" =~ ^[0-9]+$ ]] || die "BENCH_INFLIGHT_MESSAGES must be a number, got '$INFLIGHT_MESSAGES'"
[[ "$LATENCY_MESSAGES" =~ ^[0-9]*$ ]] || die "BENCH_LATENCY_MESSAGES must be a number, got '$LATENCY_MESSAGES'"
for v in MESSAGES CONVERSATIONS CONCURRENCY DRAIN_TIMEOUT PARTITIONS LLM_LATENCY_MS LLM_IN_FLIGHT LATENCY_SECONDS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive number, got '${!v}'"
done
for n in $WORKER_COUNTS; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "BENCH_WORKERS: '$n' is not a count"; done
for r in $LATENCY_RATES; do [[ "$r" =~ ^[1-9][0-9]*$ ]] || die "BENCH_LATENCY_RATE: '$r' is not a rate"; done

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
  note "building release binaries"
  cargo build --release --quiet -p wafleet-ingest -p wafleet-worker -p wafleetctl -p wafleet-loadgen -p wafleet-sim
fi
for b in wafleet-ingest wafleet-worker wafleetctl wafleet-loadgen wafleet-sim; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b missing (build it, or set CARGO_TARGET_DIR)"
done
LOADGEN="$BIN/wafleet-loadgen"
command -v jq >/dev/null || die "jq not found"

bench_services bench-e2e
bench_redis_url

SECRET="bench-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
TOKEN="bench-token-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
PNID=100000000000003
LOGS="$(mktemp -d /tmp/bench-e2e.XXXXXX)"
PIDS=() PREFIXES=() FAILED=0 SAMPLER=""

trap cleanup EXIT
trap 'exit 130' INT TERM

KEY="$("$BIN/wafleetctl" generate-key)"
echo "== setup: redis $APP_REDIS_URL, postgres ${DATABASE_URL##*@}, database $BENCH_DB," \
  "$PARTITIONS partitions, $(nproc) cores, $CONCURRENCY connections; synchronous_commit" \
  "$(psql_admin -c 'SHOW synchronous_commit'), redis appendfsync $(rcli config get appendfsync | tail -n1)"

# fresh_system TAG LLM_LATENCY_MS: a fresh database and prefix, ingest with the quick-start
# channel (rate limits raised so the benchmark measures wafleet, not Meta's caps) and the sim.
# Sets PREFIX, INGEST_PID, INGEST_URL, SIM, SIM_PID, ENV_COMMON.
fresh_system() {
  local tag="$1" latency="$2" port
  PREFIX="benche2e$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  PREFIXES+=("$PREFIX")
  psql_admin -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)"
  psql_admin -c "CREATE DATABASE $BENCH_DB"
  ENV_COMMON=(env DATABASE_URL="$BENCH_DATABASE_URL" REDIS_URL="$APP_REDIS_URL"
    WAFLEET_ENCRYPTION_KEY="$KEY" WAFLEET_REDIS_PREFIX="$PREFIX" WAFLEET_PARTITIONS="$PARTITIONS")
  port="$("$LOADGEN" free-port)"
  INGEST_URL="http://127.0.0.1:$port/webhooks/whatsapp"
  start "ingest-$tag" "http://127.0.0.1:$port/readyz" "${ENV_COMMON[@]}" \
    WAFLEET_INGEST_ADDR="127.0.0.1:$port" \
    WHATSAPP_PHONE_NUMBER_ID="$PNID" WHATSAPP_APP_SECRET="$SECRET" \
    WHATSAPP_VERIFY_TOKEN=bench-verify WHATSAPP_ACCESS_TOKEN="$TOKEN" \
    "$BIN/wafleet-ingest"
  INGEST_PID="${PIDS[-1]}"
  # Before any worker starts, so no worker caches the default 80/s.
  sql "UPDATE channels SET send_rate_per_sec = 100000, pair_burst = 1000"
  port="$("$LOADGEN" free-port)"
  SIM="127.0.0.1:$port"
  local webhook=(--webhook-url "$INGEST_URL" --app-secret "$SECRET")
  [[ "${BENCH_STATUS_WEBHOOKS:-1}" != 0 ]] || webhook=()
  start "sim-$tag" "http://$SIM/healthz" env RUST_LOG=warn "$BIN/wafleet-sim" --listen "$SIM" \
    "${webhook[@]}" --token "$PNID=$TOKEN" --llm-latency-ms "$latency" --mps 0 --pair-burst 1000000
  SIM_PID="${PIDS[-1]}"
}

# start_worker TAG STAGES [VAR=VALUE...]: one worker; appends to WORKER_PIDS and ADDRS.
start_worker() {
  local tag="$1" stages="$2" port
  shift 2
  port="$("$LOADGEN" free-port)"
  start "worker-$tag" "http://127.0.0.1:$port/readyz" "${ENV_COMMON[@]}" \
    WAFLEET_STAGES="$stages" WAFLEET_WORKER_METRICS_ADDR="127.0.0.1:$port" \
    WAFLEET_GRAPH_BASE_URL="http://$SIM" WAFLEET_LLM_STANDIN_URL="http://$SIM/v1" "$@" \
    "$BIN/wafleet-worker"
  WORKER_PIDS+=("${PIDS[-1]}")
  ADDRS+=("127.0.0.1:$port")
}

# send N CUSTOMERS LABEL [RATE]: the loadgen run (at RATE webhooks/s if given, else as fast as
# ingest answers); sets T0 (ms), T_SENT, OK_TOTAL, ERRORS, LOADGEN_S.
send() {
  local out rate=()
  [[ -z "${4:-}" ]] || rate=(--rate "$4")
  children_cpu >"$LOGS/loadgen0"
  T0="$(date +%s%3N)"
  out="$("$LOADGEN" run --label "$3" --url "$INGEST_URL" --secret "$SECRET" \
    --phone-number-id "$PNID" --customers "$2" --concurrency "$CONCURRENCY" \
    --warmup 0 --duration 600 --max-requests "$1" "${rate[@]}")"
  T_SENT="$(date +%s%3N)"
  children_cpu >"$LOGS/loadgen1"
  LOADGEN_S="$(awk -v a="$(<"$LOGS/loadgen0")" -v b="$(<"$LOGS/loadgen1")" 'BEGIN { printf "%.1f", b - a }')"
  OK_TOTAL="$(sed -n 's/^RESULT .* ok_total=\([0-9]*\).*/\1/p' <<<"$out")"
  ERRORS="$(sed -n 's/^RESULT .* errors=\([0-9]*\).*/\1/p' <<<"$out")"
}

# wait_replies N: until N outbound messages are accepted by the sim (or the drain timeout).
wait_replies() {
  local deadline=$((SECONDS + DRAIN_TIMEOUT)) n
  while n="$(sql "SELECT count(*) FROM outbound_messages WHERE state = 'accepted'")"; ((n < $1)); do
    ((SECONDS < deadline)) || { note "only $n of $1 replies accepted after ${DRAIN_TIMEOUT}s"; return 0; }
    # Each poll is a psql process and a Postgres backend, counted in the machine's CPU; the
    # figures come from the sim's timestamps, so polling once a second loses no precision.
    sleep 1
  done
}

# check_replies N: loads the sim's sends into sim_sends and checks one reply per message. Sets
# FACTS to "sends messages replied doubled orphans last_ms e2e_p50 e2e_p99 conversations" and
# CHECK (and FAILED on a failure).
check_replies() {
  sleep 1 # a late duplicate would show up now
  curl -fsS --max-time 60 "http://$SIM/_sim/messages" |
    jq -r '.[] | [(.context_message_id // ""), (.callback_data // ""), .received_at] | @csv' >"$LOGS/sends.csv"
  sql "CREATE TABLE sim_sends (context TEXT, callback TEXT, received_at BIGINT)"
  "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$BENCH_DATABASE_URL" \
    -c "\\copy sim_sends FROM '$LOGS/sends.csv' WITH (FORMAT csv)" </dev/null
  FACTS="$(sql "WITH per AS (SELECT context, count(*) AS n, max(received_at) AS at FROM sim_sends GROUP BY context),
                     j AS (SELECT m.id, per.n, per.at - split_part(m.source_entry, '-', 1)::bigint AS d
                             FROM messages m LEFT JOIN per ON per.context = m.wamid)
                SELECT (SELECT count(*) FROM sim_sends), (SELECT count(*) FROM messages),
                       count(*) FILTER (WHERE n >= 1), count(*) FILTER (WHERE n > 1),
                       (SELECT count(*) FROM per WHERE context NOT IN (SELECT wamid FROM messages)),
                       (SELECT max(received_at) FROM sim_sends),
                       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::numeric, 1),
                       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 1),
                       (SELECT count(*) FROM conversations)
                  FROM j" | tr '|' ' ')"
  local sends msgs replied doubled orphans
  read -r sends msgs replied doubled orphans _ <<<"$FACTS"
  CHECK=ok
  ((OK_TOTAL == $1 && ERRORS == 0 && msgs == $1 && replied == msgs && doubled == 0 && orphans == 0 && sends == msgs)) ||
    { CHECK=FAILED; FAILED=1; }
}

cpu_snapshot() {
  snapshot $(pg_cluster) >"$LOGS/pg$1"
  snapshot "$INGEST_PID" >"$LOGS/ingest$1"
  snapshot "$SIM_PID" >"$LOGS/sim$1"
  snapshot "${WORKER_PIDS[@]}" >"$LOGS/workers$1"
  redis_cpu >"$LOGS/redis$1"
  machine >"$LOGS/machine$1"
}
cpu_report() {
  local c redis_s ingest_s workers_s pg_s sim_s busy
  redis_s="$(awk -v a="$(<"$LOGS/redis0")" -v b="$(<"$LOGS/redis1")" 'BEGIN { printf "%.1f", b - a }')"
  for c in ingest workers pg sim; do printf -v "${c}_s" '%s' "$(secs "$(cpu_delta "$LOGS/${c}0" "$LOGS/${c}1")")"; done
  busy="$(awk -v a="$(<"$LOGS/machine0")" -v b="$(<"$LOGS/machine1")" -v k="$TICKS" 'BEGIN {
    split(a, x, " "); split(b, y, " "); printf "%.0f%% (%.1f cpu s)", 100 * (y[1] - x[1]) / (y[2] - x[2]), (y[1] - x[1]) / k }')"
  local xacts
  xacts="$(sql "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")"
  echo "postgres transactions $xacts (per message $(awk -v x="$xacts" -v n="$OK_TOTAL" 'BEGIN { printf "%.1f", x / n }'), status webhooks included)"
  echo "   cpu s: loadgen $LOADGEN_S, ingest $ingest_s, workers $workers_s, sim $sim_s, postgres $pg_s, redis $redis_s; machine busy $busy"
}

stage_jobs() {
  local s out=""
  for s in conversation llm sender status; do
    out+=" $s $(job_buckets "$s" "$@" | quantiles 0.5 0.99 | tr ' ' '/')"
  done
  echo "job p50/p99 ms:${out}"
  # Handler outcomes by stage (retries and defers explain waits that handler time does not).
  local a
  echo "   jobs: $(for a in "$@"; do metrics "$a"; done | awk '/^wafleet_jobs_total\{/ {
      match($0, /stage="[^"]*"/); st = substr($0, RSTART + 7, RLENGTH - 8)
      match($0, /outcome="[^"]*"/); o = substr($0, RSTART + 9, RLENGTH - 10); n[st ":" o] += $2 }
    END { for (k in n) printf "%s=%d ", k, n[k] }')"
}

THROUGHPUT=() INFLIGHT=() RATE1="" P99_1="" LATENCY_ROWS=() STEADY_P99=()

# throughput_run WORKERS [RATE]: MESSAGES webhooks as fast as ingest takes them, or with RATE
# LATENCY_SECONDS of webhooks (LATENCY_MESSAGES if set) at that steady rate (then e2e latency is
# the pipeline's own, not time spent queued behind a burst).
throughput_run() {
  local workers="$1" steady="${2:-}" i n="$MESSAGES"
  [[ -z "$steady" ]] || n="${LATENCY_MESSAGES:-$((steady * LATENCY_SECONDS))}"
  fresh_system "t$workers${steady:+r$steady}" 0
  WORKER_PIDS=() ADDRS=()
  for ((i = 1; i <= workers; i++)); do
    start_worker "t$workers-$i" conversation,status,llm,sender
  done
  wait_balanced "${ADDRS[@]}"
  wait_for_quiet "wafleet-loadgen|bench-pii|bench-ingest|bench-pipeline"
  cpu_snapshot 0
  send "$n" "$CONVERSATIONS" "e2e-workers$workers" "$steady"
  wait_replies "$OK_TOTAL"
  cpu_snapshot 1
  local sends msgs replied doubled orphans t_last p50 p99 convs seconds rate
  check_replies "$n"
  read -r sends msgs replied doubled orphans t_last p50 p99 convs <<<"$FACTS"
  seconds="$(ms_to_s "$T0" "$t_last")"
  rate="$(awk -v n="$msgs" -v s="$seconds" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')"
  echo "-- ${steady:+steady $steady msgs/s, }workers=$workers: $n webhooks sent in $(ms_to_s "$T0" "$T_SENT") s" \
    "($ERRORS errors), last reply at $seconds s"
  echo "   $(cpu_report)"
  echo "   $(stage_jobs "${ADDRS[@]}")"
  echo "   messages $msgs in $convs conversations, replies sent $sends, messages replied $replied," \
    "replied twice $doubled, replies to unknown messages $orphans: $CHECK"
  stop_all
  if [[ -n "$steady" ]]; then
    STEADY_P99+=("$steady $p99")
    LATENCY_ROWS+=("$(printf '%7s %7s %9s %8s %8s %11s %11s  %s' "$steady" "$workers" "$msgs" "$seconds" "$rate" "$p50" "$p99" \
      "$([[ $CHECK == ok ]] && echo "every message replied exactly once" || echo "CHECK FAILED")")")
    return 0
  fi
  [[ -n "$RATE1" ]] || { RATE1="$rate" P99_1="$p99"; }
  THROUGHPUT+=("$(printf '%7s %9s %8s %8s %11s %11s  %s' "$workers" "$msgs" "$seconds" "$rate" "$p50" "$p99" \
    "$([[ $CHECK == ok ]] && echo "every message replied exactly once" || echo "CHECK FAILED")")")
}

PEAK_IN_FLIGHT="" PEAK_RSS_MB=""
inflight_run() {
  local n="$INFLIGHT_MESSAGES"
  fresh_system inflight "$LLM_LATENCY_MS"
  WORKER_PIDS=() ADDRS=()
  start_worker inflight-rest conversation,status,sender
  wait_balanced "${ADDRS[0]}"
  wait_for_quiet "wafleet-loadgen|bench-pii|bench-ingest|bench-pipeline"
  # The LLM worker starts only once every reply job is queued: fed live, the conversation stage
  # on these 2 shared cores hands it jobs slower than it finishes them, and the peak would measure
  # that feed instead of the LLM worker's capacity.
  send "$n" "$((n * 1000))" e2e-inflight
  local deadline=$((SECONDS + DRAIN_TIMEOUT))
  until (($(metrics "${ADDRS[0]}" | awk '/^wafleet_jobs_total\{/ && /stage="conversation"/ && /outcome="done"/ { s += $2 } END { print s + 0 }') >= OK_TOTAL)); do
    ((SECONDS < deadline)) || die "the conversation stage did not finish $OK_TOTAL jobs in ${DRAIN_TIMEOUT}s"
    sleep 0.25
  done
  start_worker inflight-llm llm WAFLEET_LLM_MAX_IN_FLIGHT="$LLM_IN_FLIGHT"
  local llm_pid="${WORKER_PIDS[-1]}"
  # VmRSS every 100 ms; VmHWM at the end is the kernel's own peak.
  (while :; do awk '/^VmRSS:/ { print $2 }' "/proc/$llm_pid/status" 2>/dev/null || exit 0; sleep 0.1; done) \
    >"$LOGS/rss" 8>&- &
  PIDS+=($!)
  local rss_before
  rss_before="$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$llm_pid/status")"
  cpu_snapshot 0
  wait_replies "$OK_TOTAL"
  cpu_snapshot 1
  local hwm sampled
  hwm="$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$llm_pid/status")"
  sampled="$(sort -n "$LOGS/rss" | tail -n1 | awk '{ printf "%.1f", $1 / 1024 }')"
  # Calls open at once: each lasts the sim's latency, so count arrivals in a sliding window.
  curl -fsS --max-time 60 "http://$SIM/_sim/llm_requests" | jq -r '.[].received_at' | sort -n >"$LOGS/llm_at"
  PEAK_IN_FLIGHT="$(awk -v w="$LLM_LATENCY_MS" '{ t[NR] = $1; while (t[NR] - t[j + 1] >= w) j++; if (NR - j > m) m = NR - j } END { print m + 0 }' j=0 "$LOGS/llm_at")"
  local calls first last
  calls="$(wc -l <"$LOGS/llm_at")"
  first="$(head -n1 "$LOGS/llm_at")" last="$(tail -n1 "$LOGS/llm_at")"
  PEAK_RSS_MB="$hwm"
  local sends msgs replied doubled orphans t_last p50 p99 convs
  check_replies "$n"
  read -r sends msgs replied doubled orphans t_last p50 p99 convs <<<"$FACTS"
  echo "-- in flight, llm latency ${LLM_LATENCY_MS} ms, WAFLEET_LLM_MAX_IN_FLIGHT=$LLM_IN_FLIGHT, llm worker started with all $n reply jobs queued: webhooks sent in" \
    "$(ms_to_s "$T0" "$T_SENT") s ($ERRORS errors), last reply at $(ms_to_s "$T0" "$t_last") s"
  echo "   llm calls $calls over $(ms_to_s "$first" "$last") s, peak open at once $PEAK_IN_FLIGHT;" \
    "llm worker RSS: idle $rss_before MB, peak $hwm MB (VmHWM; sampled VmRSS max $sampled MB)"
  echo "   $(cpu_report)"
  echo "   $(stage_jobs "${ADDRS[@]}")"
  echo "   messages $msgs in $convs conversations, replies sent $sends, messages replied $replied," \
    "replied twice $doubled, replies to unknown messages $orphans; e2e p50/p99 $p50/$p99 ms: $CHECK"
  stop_all
}

for w in $WORKER_COUNTS; do throughput_run "$w"; done
if [[ "$LATENCY_MESSAGES" != 0 ]]; then for r in $LATENCY_RATES; do throughput_run 1 "$r"; done; fi
((INFLIGHT_MESSAGES == 0)) || inflight_run

verdict() { if [[ -z "$1" ]]; then echo "not run"; elif awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { exit !(op == ">=" ? v >= t : v <= t) }'; then echo held; else echo MISSED; fi; }
echo
if ((${#THROUGHPUT[@]})); then
  echo "== throughput with instant mocks: $MESSAGES messages, $CONVERSATIONS conversations, every stage in each worker"
  printf '%7s %9s %8s %8s %11s %11s  %s\n' workers messages seconds msgs/s e2e_p50_ms e2e_p99_ms checks
  printf '%s\n' "${THROUGHPUT[@]}"
  echo "(seconds: first webhook sent -> last reply received by the sim; e2e: ingest enqueued -> reply received)"
  echo
fi
if ((${#LATENCY_ROWS[@]})); then
  echo "== latency at steady rates with instant mocks: ${LATENCY_MESSAGES:-$LATENCY_SECONDS s of} webhooks per rate, 1 worker"
  printf '%7s %7s %9s %8s %8s %11s %11s  %s\n' rate workers messages seconds msgs/s e2e_p50_ms e2e_p99_ms checks
  printf '%s\n' "${LATENCY_ROWS[@]}"
  echo
fi
echo "== targets"
printf '%-44s %12s  %s\n' target measured verdict
printf '%-44s %12s  %s\n' "throughput >= $T_RATE msg/s (1 worker, instant mocks)" "${RATE1:--}" "$(verdict "$RATE1" "$T_RATE" ">=")"
printf '%-44s %12s  %s\n' "e2e p99 <= $T_P99_MS ms (1 worker, at capacity)" "${P99_1:--}" "$(verdict "$P99_1" "$T_P99_MS" "<=")"
if ((${#STEADY_P99[@]})); then
  for row in "${STEADY_P99[@]}"; do
    read -r r p <<<"$row"
    printf '%-44s %12s  %s\n' "e2e p99 <= $T_P99_MS ms (1 worker, steady $r msgs/s)" "$p" "$(verdict "$p" "$T_P99_MS" "<=")"
  done
else
  printf '%-44s %12s  %s\n' "e2e p99 <= $T_P99_MS ms (1 worker, steady rate)" - "not run"
fi
printf '%-44s %12s  %s\n' "in flight >= $T_IN_FLIGHT (one llm worker, ${LLM_LATENCY_MS} ms model)" "${PEAK_IN_FLIGHT:--}" "$(verdict "$PEAK_IN_FLIGHT" "$T_IN_FLIGHT" ">=")"
printf '%-44s %12s  %s\n' "llm worker peak RSS <= $T_RSS_MB MB at that load" "${PEAK_RSS_MB:--}" "$(verdict "$PEAK_RSS_MB" "$T_RSS_MB" "<=")"
printf '%-44s %12s  %s\n' "every message replied exactly once" "" "$( ((FAILED == 0)) && echo held || echo FAILED)"
((FAILED == 0)) || exit 3
