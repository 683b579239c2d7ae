# Shell helpers shared by deploy/bench-pipeline.sh, deploy/bench-e2e.sh and
# deploy/bench-ingest-batches.sh (bench-ingest.sh uses bench_binaries and bench_redis_url): process control,
# Redis and Postgres access, cleanup, worker metrics, and CPU accounting from /proc. Sourced, not
# run; it uses the caller's globals (REDIS_URL, DATABASE_URL, BENCH_DATABASE_URL, PSQL, PIDS,
# PREFIXES, IDLE_TIMEOUT, CPU_WAIT, …) and its `note` function.

die() { note "$*"; exit 1; }

# bench_services NAME: starts (or reuses) this checkout's Redis and Postgres and exports their
# variables; takes .wafleet/NAME.lock (the database name is fixed, so a second run on the same
# services would drop the first one's); finds psql; sets BENCH_DATABASE_URL (database BENCH_DB
# on the same server).
bench_services() {
  deploy/services.sh up
  eval "$(deploy/services.sh env)"
  exec 8>"$ROOT/.wafleet/$1.lock"
  flock -n 8 || die "another $1 is running on this checkout's services"
  # Else the newest server's (sort -V: 9.6 before 15, as ls would not).
  PSQL="$(command -v psql || printf '%s\n' /usr/lib/postgresql/*/bin/psql | sort -V | tail -n1)"
  [[ -x "$PSQL" ]] || die "psql not found"
  local url_noq
  url_noq="${DATABASE_URL%%\?*}"
  BENCH_DATABASE_URL="${url_noq%/*}/$BENCH_DB${DATABASE_URL#"$url_noq"}"
}

# bench_binaries PACKAGE...: builds them in release (unless BENCH_NO_BUILD=1) and checks each
# binary is in $BIN.
bench_binaries() {
  local p args=()
  for p in "$@"; do args+=(-p "$p"); done
  if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    note "building release binaries"
    cargo build --release --quiet "${args[@]}"
  fi
  for p in "$@"; do
    [[ -x "$BIN/$p" ]] || die "$BIN/$p missing (build it, or set CARGO_TARGET_DIR)"
  done
}

rcli() { redis-cli -u "$REDIS_URL" "$@" </dev/null; }

# bench_redis_url: sets APP_REDIS_URL, how the benchmarked processes reach Redis: BENCH_REDIS=unix
# (the socket deploy/services.sh opens beside the port; the default when there is one) or tcp.
# The scripts' own redis-cli calls stay on REDIS_URL.
bench_redis_url() {
  case "${BENCH_REDIS:-}" in
    "") APP_REDIS_URL="${REDIS_UNIX_URL:-$REDIS_URL}" ;;
    unix)
      [[ -n "${REDIS_UNIX_URL:-}" ]] \
        || die "BENCH_REDIS=unix but Redis has no socket (restart it: deploy/services.sh redis-stop && deploy/services.sh redis-start)"
      APP_REDIS_URL="$REDIS_UNIX_URL" ;;
    tcp) APP_REDIS_URL="$REDIS_URL" ;;
    *) die "BENCH_REDIS must be unix or tcp" ;;
  esac
}

psql_admin() { PGOPTIONS='-c client_min_messages=warning' "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$DATABASE_URL" "$@" </dev/null; }

sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$BENCH_DATABASE_URL" -c "$1" </dev/null; }

stop_all() {
  local pid i
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for ((i = 0; i < 250; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}

cleanup() {
  local rc=$? p
  stop_all
  if [[ -n "${REDIS_URL:-}" ]]; then
    for p in "${PREFIXES[@]}"; do
      rcli --scan --pattern "$p:*" | xargs -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
    done
  fi
  [[ -n "${BENCH_KEEP_DB:-}" ]] || psql_admin -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" 2>/dev/null || true
  if ((rc == 0)) && [[ -z "${BENCH_KEEP_LOGS:-}" ]]; then rm -rf "$LOGS"; else note "logs kept in $LOGS"; fi
  exit "$rc"
}

# start NAME READY_URL CMD...: runs CMD in the background and waits for READY_URL to answer 200.
start() {
  local name="$1" url="$2"
  shift 2
  "$@" >"$LOGS/$name.log" 2>&1 8>&- &
  PIDS+=($!)
  if ! "$LOADGEN" wait --url "$url" --timeout-secs 60 2>>"$LOGS/$name.log"; then
    tail -n 20 "$LOGS/$name.log" >&2
    die "$name did not become ready at $url"
  fi
}

metrics() { curl -fsS --max-time 5 "http://$1/metrics"; }

# The conversation stage's owned partitions of one worker.
owned() { metrics "$1" | awk '/^wafleet_worker_partitions_owned\{stage="conversation"\}/ { print $2 }'; }

# Waits until the workers share the partitions evenly (a new process takes its share within a
# few lease rounds, i.e. up to ~45 s with the default 45 s lease TTL).
wait_balanced() {
  local deadline=$((SECONDS + 120)) a sum ok share=$(((PARTITIONS + $# - 1) / $#))
  while :; do
    sum=0 ok=1
    for a in "$@"; do
      local o; o="$(owned "$a" || true)"; o="${o:-0}"
      sum=$((sum + ${o%.*}))
      ((${o%.*} <= share)) || ok=0
    done
    ((sum == PARTITIONS && ok)) && return 0
    ((SECONDS < deadline)) || die "workers did not share the $PARTITIONS partitions within 120 s (own $sum)"
    sleep 1
  done
}

# quantiles Q... < merged "le count" lines: Prometheus histogram_quantile, in ms.
quantiles() {
  sort -g | awk -v qs="$*" '
    { le[NR] = $1; c[NR] = $2 }
    END {
      total = c[NR]; n = split(qs, q, " "); out = ""
      for (i = 1; i <= n; i++) {
        if (total == 0) { out = out " -"; continue }
        rank = q[i] * total; prev_le = 0; prev_c = 0; v = ""
        for (j = 1; j <= NR; j++) {
          if (c[j] >= rank) {
            if (le[j] == "+Inf") { v = prev_le } else if (c[j] == prev_c) { v = le[j] }
            else { v = prev_le + (le[j] - prev_le) * (rank - prev_c) / (c[j] - prev_c) }
            break
          }
          if (le[j] != "+Inf") prev_le = le[j]; prev_c = c[j]
        }
        out = out sprintf(" %.2f", v * 1000)
      }
      print substr(out, 2)
    }'
}

# CPU accounting, to see where the time goes. snapshot PID... prints "pid ticks" (user + system);
# cpu_delta START END sums what the pids of END used since START (a pid new in END from zero).
snapshot() { local p; for p in "$@"; do echo "$p $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)"; done; }

cpu_delta() { awk 'NR == FNR { s[$1] = $2; next } { t += $2 - (($1 in s) ? s[$1] : 0) } END { print t + 0 }' "$1" "$2"; }

# Every process of the Postgres cluster: the postmaster (parent of our backends) and its children.
pg_cluster() {
  local b pm
  b="$(pgrep -f "postgres: [^ ]+ $BENCH_DB " | head -n1 || true)"
  [[ -n "$b" ]] || return 0
  pm="$(ps -o ppid= -p "$b" | tr -d ' ')"
  echo "$pm"
  pgrep -P "$pm" || true
}

redis_cpu() { rcli info cpu | awk -F: '/^used_cpu_(sys|user):/ { t += $2 } END { printf "%.2f", t }'; }

# Busy and total jiffies of the whole machine (every process, other agents' included).
machine() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

# CPU seconds of this script's finished children (the loadgen, once it has exited). `times` runs
# in this shell, not in a $(...) subshell, whose children's counters start at zero.
children_cpu() {
  times >"$LOGS/times"
  tail -n1 "$LOGS/times" | awk '{ for (i = 1; i <= 2; i++) { split($i, t, "m"); s += t[1] * 60 + t[2] } } END { printf "%.2f", s }'
}

secs() { awk -v t="$1" -v k="$TICKS" 'BEGIN { printf "%.1f", t / k }'; }

# wait_for_quiet PATTERN: another benchmark on this 2-core box (processes matching PATTERN)
# would halve our numbers (and theirs): wait for it, up to IDLE_TIMEOUT seconds. Compiles of other
# checkouts are not waited out for ever: up to CPU_WAIT seconds for the machine to be mostly
# idle, then the run goes ahead and its "anything else" CPU shows them.
wait_for_quiet() {
  local waited=0 others busy m0
  ((IDLE_TIMEOUT > 0)) || return 0
  while others="$(pgrep -af "$1" || true)"; [[ -n "$others" ]]; do
    ((waited == 0)) && note "waiting for other benchmarks to finish: $(cut -c1-100 <<<"$others" | tr '\n' ';')"
    ((waited < IDLE_TIMEOUT)) || die "other benchmarks still running after ${IDLE_TIMEOUT}s"
    sleep 5
    waited=$((waited + 5))
  done
  ((waited == 0)) || note "no other benchmark after ${waited}s"
  waited=0
  while :; do
    m0="$(machine)"
    sleep 2
    busy="$(awk -v a="$m0" -v b="$(machine)" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]) }')"
    ((busy <= 25)) && break
    ((waited == 0)) && note "machine ${busy}% busy (other work); waiting up to ${CPU_WAIT}s for it to calm down"
    waited=$((waited + 2))
    if ((waited >= CPU_WAIT)); then note "machine still ${busy}% busy; measuring anyway"; break; fi
  done
}

# job_buckets STAGE ADDR...: buckets of wafleet_job_duration_seconds{stage}, summed over the workers.
job_buckets() {
  local stage="$1" a
  shift
  for a in "$@"; do metrics "$a"; done | awk -v st="stage=\"$stage\"" '
    /^wafleet_job_duration_seconds_bucket\{/ && index($0, st) {
      match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      sum[le] += $2
    }
    END { for (le in sum) print le, sum[le] }'
}

TICKS="$(getconf CLK_TCK)"

# ms_to_s A B: seconds from Unix ms A to Unix ms B.
ms_to_s() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1000 }'; }
