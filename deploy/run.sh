#!/usr/bin/env bash
# Runs wafleet end to end on this machine: Redis and Postgres (installed and started by
# deploy/services.sh), migrations, the ingest service, a worker running every stage, and the
# local simulator standing in for Meta's Graph API and the model (a real model answers when
# ANTHROPIC_API_KEY or OPENAI_API_KEY is set). Then it sends signed sample conversations in
# Spanish and English and shows what the simulated customer received and the queues. Stays up
# until Ctrl-C (RUN_ONCE=1 exits after the demo).
#
# Settings come from the environment; anything unset comes from .wafleet/dev.env, which this
# script writes on first run (a fresh encryption key and a development channel).
#
# Ctrl-C (or SIGTERM) stops the processes it started; Redis and Postgres keep running
# (deploy/services.sh down stops them).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@" # `sh deploy/run.sh` too
set -euo pipefail
# The checkout this script is in, wherever it is called from (a symlink to it too).
repo="$(cd -P "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$repo"
die() { echo "run.sh: $*" >&2; exit 1; }

deploy/services.sh up
eval "$(deploy/services.sh env)"

mkdir -p .wafleet
dev_env=.wafleet/dev.env
if [[ ! -f $dev_env ]]; then
    key=$(head -c 32 /dev/urandom | base64)
    cat > "$dev_env" <<ENV
# Written by deploy/run.sh on first run; edit freely. Variables already set in the
# environment win over these.
WAFLEET_ENCRYPTION_KEY=$key
WHATSAPP_PHONE_NUMBER_ID=106540352242922
WHATSAPP_APP_SECRET=dev-app-secret
WHATSAPP_VERIFY_TOKEN=dev-verify-token
WHATSAPP_ACCESS_TOKEN=dev-access-token
WAFLEET_INGEST_ADDR=127.0.0.1:8080
WAFLEET_WORKER_METRICS_ADDR=127.0.0.1:9091
SIM_LISTEN=127.0.0.1:8090
ENV
    chmod 600 "$dev_env"
fi
# NAME=value lines (an optional leading `export`, one pair of quotes around the value).
n=0
while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] \
        || die "$dev_env line $n: expected NAME=value, got: $line"
    name=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
    [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]] && value=${BASH_REMATCH[1]}
    [[ -n ${!name:-} ]] || export "$name=$value"
done < "$dev_env"

# One run per checkout at a time (a second would find every port taken by the first). The lock
# is not handed to the processes started below (8>&-).
exec 8> .wafleet/run.lock
flock -n 8 || die "another deploy/just run of this checkout is running (Ctrl-C it first)"

SIM_LISTEN=${SIM_LISTEN:-127.0.0.1:8090}
export WAFLEET_API_ADDR=${WAFLEET_API_ADDR:-127.0.0.1:8081}
# Processes an earlier run left behind (run.sh killed with SIGKILL) hold the ports: stop them.
# Only ours: the pid still runs the binary it was started as, from this checkout (its working
# directory). Not a process of the checkout this one was copied from with its .wafleet/: the
# copied list names that one's running demo, whose binaries may be the same files.
if [[ -f .wafleet/run.pids ]]; then
    while read -r pid exe; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        running=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
        [[ ${running% (deleted)} == "$exe" && $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$repo" ]] || continue
        echo "stopping $(basename "$exe") (pid $pid), left running by an earlier run" >&2
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done < .wafleet/run.pids
    rm -f .wafleet/run.pids
fi
# A port some other program holds would leave ours unable to start while the readiness checks
# below reached that program instead (another checkout's run): say which variable to change.
for var in WAFLEET_INGEST_ADDR WAFLEET_WORKER_METRICS_ADDR WAFLEET_API_ADDR SIM_LISTEN; do
    addr=${!var} host=${!var%:*} port=${!var##*:}
    host=${host#[} host=${host%]}
    [[ $host == 0.0.0.0 || $host == :: || -z $host ]] && host=127.0.0.1
    # shellcheck disable=SC2016 # $1 and $2 are the inner shell's
    if timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null; then
        die "$addr ($var) is already in use by another program; set $var to a free address, in the environment or in $dev_env"
    fi
done

echo "building release binaries…" >&2
cargo build --release -q -p wafleet-ingest -p wafleet-worker -p wafleet-api -p wafleetctl -p wafleet-sim
# Where cargo put them (CARGO_TARGET_DIR or a build.target-dir in a cargo config move them).
target=$(cargo metadata --no-deps --format-version 1 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p' || true)
bin=${target:-target}/release
[[ -x $bin/wafleet-ingest ]] || die "built binaries not found in $bin"
"$bin/wafleetctl" migrate

# The processes started below: name, pid, log. They are stopped on every way out (Ctrl-C
# included), gracefully first (WAFLEET_SHUTDOWN_GRACE_SECS is 20 s by default); a second Ctrl-C
# kills them at once.
names=() pids=() logs=() force=0
spawn() { # spawn NAME COMMAND...: runs it in the background, output to .wafleet/NAME.log
    local name=$1
    shift
    "$@" > ".wafleet/$name.log" 2>&1 8>&- &
    names+=("$name") pids+=($!) logs+=(".wafleet/$name.log")
    echo "$! $(readlink -f "$1")" >> .wafleet/run.pids
}
stop_children() {
    local i pid alive
    ((${#pids[@]})) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 250 && !force; i++)); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        ((i == 20)) && echo "waiting for ${names[*]} to finish their work (Ctrl-C again to kill them)" >&2
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
    rm -f .wafleet/run.pids
}
on_signal() {
    trap 'force=1' INT TERM HUP # a second one while stopping: stop waiting
    echo >&2
    echo "stopping (Redis and Postgres keep running; deploy/services.sh down stops them)" >&2
    stop_children
    exit "$1"
}
trap stop_children EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP
# died NAME: what a process that exited early said last.
died() {
    local i
    for i in "${!names[@]}"; do
        if [[ ${names[i]} == "$1" ]]; then
            sed '/^Stack backtrace:/,$d' "${logs[i]}" | tail -n 15 | sed 's/^/    /' >&2
            die "$1 exited early; see ${logs[i]}"
        fi
    done
}

sim="http://$SIM_LISTEN"
rm -f .wafleet/run.pids
spawn ingest "$bin/wafleet-ingest"
# The simulator: Meta's Graph API (sends, read receipts, status webhooks back to ingest) and a
# stand-in model. Point WAFLEET_GRAPH_BASE_URL elsewhere to use the real Graph API.
spawn sim "$bin/wafleet-sim" --listen "$SIM_LISTEN" --webhook-url "http://$WAFLEET_INGEST_ADDR/webhooks/whatsapp" \
    --app-secret "$WHATSAPP_APP_SECRET" --token "$WHATSAPP_PHONE_NUMBER_ID=$WHATSAPP_ACCESS_TOKEN" \
    --llm-latency-ms 300
export WAFLEET_GRAPH_BASE_URL=${WAFLEET_GRAPH_BASE_URL:-$sim}
export WAFLEET_LLM_STANDIN_URL=${WAFLEET_LLM_STANDIN_URL:-$sim/v1}
# The demo's voice notes are the simulator's: its speech to text transcribes them (a real
# transcriber could not read them). Set both to use another.
if [[ -z ${WAFLEET_TRANSCRIBE_BASE_URL:-} ]]; then
    export WAFLEET_TRANSCRIBE_BASE_URL=$sim/v1 WAFLEET_TRANSCRIBE_API_KEY=standin WAFLEET_TRANSCRIBE_MODEL=standin
fi
spawn worker "$bin/wafleet-worker"
# The agent API dashboards call.
spawn api "$bin/wafleet-api"

ingest="http://$WAFLEET_INGEST_ADDR"
metrics="http://$WAFLEET_WORKER_METRICS_ADDR"
ready_urls=("$ingest/readyz" "$sim/healthz" "$metrics/readyz" "http://$WAFLEET_API_ADDR/readyz")
for ((i = 0; i < 300; i++)); do
    for j in "${!names[@]}"; do kill -0 "${pids[j]}" 2>/dev/null || died "${names[j]}"; done
    ready=1
    for url in "${ready_urls[@]}"; do "$bin/wafleetctl" probe "$url" >/dev/null 2>&1 || { ready=0; break; }; done
    ((ready)) && break
    sleep 0.1
done
for j in "${!names[@]}"; do
    "$bin/wafleetctl" probe "${ready_urls[j]}" >/dev/null 2>&1 || die "${names[j]} did not become ready at ${ready_urls[j]}; see ${logs[j]}"
done

echo
echo "wafleet is running:"
echo "  webhook   $ingest/webhooks/whatsapp   (verify token: $WHATSAPP_VERIFY_TOKEN)"
echo "  metrics   $ingest/metrics  and  $metrics/metrics"
echo "  agent API http://$WAFLEET_API_ADDR/api/v1/conversations (tokens: wafleetctl api-token add NAME)"
echo "  Graph API $WAFLEET_GRAPH_BASE_URL (simulator: $sim/_sim/messages lists what customers received)"
echo "  logs      .wafleet/ingest.log  .wafleet/worker.log  .wafleet/api.log  .wafleet/sim.log"
echo "  wafleetctl $bin/wafleetctl, from this directory ($repo) in a shell that first ran:"
# shellcheck disable=SC2016 # printed for the user to run, not expanded here
echo '            eval "$(deploy/services.sh env)"; set -a; . .wafleet/dev.env; set +a'
echo

run_id=$(date +%s%N)
now=$(date +%s)
# Fresh customers each run, so a second run does not find them handed over by the first.
es_customer=57300$(printf '%07d' $((run_id % 10000000)))
en_customer=1650$(printf '%07d' $(((run_id / 7) % 10000000)))
post() {
    local body
    body=$(mktemp)
    sed -e "s/__PNID__/$WHATSAPP_PHONE_NUMBER_ID/g" -e "s/__RUN__/$run_id/g" -e "s/__NOW__/$now/g" \
        -e "s/__ES__/$es_customer/g" -e "s/__EN__/$en_customer/g" \
        -e "s/__NOW2__/$((now + 30))/g" "$1" > "$body"
    printf 'POST %-28s → ' "$(basename "$1")"
    "$bin/wafleetctl" send-webhook --url "$ingest/webhooks/whatsapp" "$body"
    rm -f "$body"
}
wait_for() { # SQL returning a number, wanted value
    for _ in $(seq 1 150); do
        [[ $(psql -X "$DATABASE_URL" -Atc "$1") == "$2" ]] && return 0
        sleep 0.1
    done
    echo "(timed out waiting: $1)" >&2
}
# The demo number gives the model the photos customers send (fetched from the simulator).
"$bin/wafleetctl" channel set "$WHATSAPP_PHONE_NUMBER_ID" images_to_model on >/dev/null
# ... and answers the voice notes they send (transcribed by the simulator).
"$bin/wafleetctl" channel set "$WHATSAPP_PHONE_NUMBER_ID" transcribe_audio on >/dev/null
post deploy/samples/es_text_pii.json
post deploy/samples/en_1_question.json
wait_for "SELECT count(*) FROM outbound_messages o JOIN messages m ON m.id = o.reply_to
           WHERE m.wamid LIKE 'wamid.demo-%-$run_id' AND o.state = 'accepted'" 2
post deploy/samples/es_2_image.json
post deploy/samples/en_2_handover.json
wait_for "SELECT count(*) FROM outbound_messages o JOIN messages m ON m.id = o.reply_to
           WHERE m.wamid LIKE 'wamid.demo-%-$run_id' AND o.state = 'accepted'" 4
post deploy/samples/es_3_voice.json
wait_for "SELECT count(*) FROM outbound_messages o JOIN messages m ON m.id = o.reply_to
           WHERE m.wamid LIKE 'wamid.demo-%-$run_id' AND o.state = 'accepted'" 5

# The English customer asked for a person: an agent answers through the agent API (what a
# dashboard calls) and gives the conversation back to the bot.
conv=$(psql -X "$DATABASE_URL" -Atc "SELECT conversation_id FROM messages WHERE wamid = 'wamid.demo-en2-$run_id'")
token=$("$bin/wafleetctl" api-token add "demo-$run_id" --number "$WHATSAPP_PHONE_NUMBER_ID" 2>/dev/null)
api() { # METHOD PATH [JSON]: the agent API with the demo's token
    API_URL="http://$WAFLEET_API_ADDR" API_TOKEN="$token" API_KEY="demo-$run_id" python3 -c '
import json, os, sys, urllib.request, urllib.error
method, path = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(os.environ["API_URL"] + path, data=body, method=method,
    headers={"Authorization": "Bearer " + os.environ["API_TOKEN"],
             "Content-Type": "application/json", "Idempotency-Key": os.environ["API_KEY"]})
try:
    print("  %s %s -> %s" % (method, path, urllib.request.urlopen(req).read().decode()[:300]))
except urllib.error.HTTPError as e:
    print("  %s %s -> %s %s" % (method, path, e.code, e.read().decode()))
' "$@"
}
echo
echo "a human agent answers the customer who asked for one, through the agent API:"
api GET "/api/v1/conversations?owner=human&limit=1"
api POST "/api/v1/conversations/$conv/messages" '{"text": "Hi, I am Sam from the team. I can help you with your order now.", "agent": "sam"}'
wait_for "SELECT count(*) FROM outbound_messages WHERE conversation_id = $conv AND kind = 'agent' AND state = 'accepted'" 1
echo "the conversation as the agent sees it (wafleetctl conversation show $conv):"
"$bin/wafleetctl" conversation show "$conv" | sed 's/^/  /'
api POST "/api/v1/conversations/$conv/release"
"$bin/wafleetctl" api-token revoke "demo-$run_id" >/dev/null

echo
echo "what was stored (text redacted before any model saw it):"
psql -X "$DATABASE_URL" -P pager=off -c "
  SELECT m.wamid, m.action, c.owner, m.pii_types, m.text_redacted
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
   WHERE m.wamid LIKE 'wamid.demo-%-$run_id' ORDER BY m.id"
echo "what the simulated customers received (Graph API simulator):"
"$bin/wafleetctl" probe "$sim/_sim/messages" | CUSTOMERS="$es_customer $en_customer" python3 -c '
import json, os, sys
# This run'"'"'s customers only (a simulator left running from an earlier run keeps its messages).
customers = os.environ["CUSTOMERS"].split()
for m in json.load(sys.stdin):
    if m["to"].lstrip("+") not in customers:
        continue
    print("  to %-14s quoting %-34.34s %r" % (m["to"], m["context_message_id"] or "-", m["body"][:100]))
' 2>/dev/null || "$bin/wafleetctl" probe "$sim/_sim/messages"
echo "photos the model was given (inline in its requests, never stored):"
"$bin/wafleetctl" probe "$sim/_sim/llm_requests" | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    for m in r["body"]["messages"]:
        if isinstance(m["content"], list):
            parts = [p["type"] for p in m["content"]]
            print("  %s request, customer turn with %s" % (r["provider"], " + ".join(parts)))
' 2>/dev/null || true
echo
echo "delivery as reported back by status webhooks:"
psql -X "$DATABASE_URL" -P pager=off -Atc "
  SELECT '  ' || o.kind || ' part ' || o.part_no || ': ' || o.state || ', ' || coalesce(o.delivery, 'no status yet')
    FROM outbound_messages o JOIN messages m ON m.id = o.reply_to
   WHERE m.wamid LIKE 'wamid.demo-%-$run_id' ORDER BY o.id"
echo
echo "queues (worker /metrics):"
"$bin/wafleetctl" probe "$metrics/metrics" | grep -E '^wafleet_(stage_backlog|jobs_total|handovers_total|replies_total)' || true

if [[ ${RUN_ONCE:-0} == 1 ]]; then
    exit 0
fi
echo
echo "running; Ctrl-C to stop"
# Until Ctrl-C, or until one of them exits on its own (then the others are stopped too).
wait -n "${pids[@]}" || true
for j in "${!names[@]}"; do kill -0 "${pids[j]}" 2>/dev/null || died "${names[j]}"; done
