#!/usr/bin/env bash
# Runs wafleet end to end on this machine: Redis and Postgres (installed and started by
# deploy/services.sh), migrations, the ingest service and a worker, then sends two signed
# sample webhooks and shows what the system did with them. Stays up until Ctrl-C
# (RUN_ONCE=1 exits after the demo).
#
# Settings come from the environment; anything unset comes from .wafleet/dev.env, which this
# script writes on first run (a fresh encryption key and a development channel).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

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
ENV
    chmod 600 "$dev_env"
fi
while IFS= read -r line; do
    [[ -z $line || $line == \#* ]] && continue
    name=${line%%=*}
    [[ -z ${!name:-} ]] && export "$line"
done < "$dev_env"

echo "building release binaries…" >&2
cargo build --release -q -p wafleet-ingest -p wafleet-worker -p wafleetctl
bin=target/release
$bin/wafleetctl migrate

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

$bin/wafleet-ingest > .wafleet/ingest.log 2>&1 &
pids+=($!)
$bin/wafleet-worker > .wafleet/worker.log 2>&1 &
pids+=($!)

ingest="http://$WAFLEET_INGEST_ADDR"
metrics="http://$WAFLEET_WORKER_METRICS_ADDR"
for _ in $(seq 1 100); do
    if $bin/wafleetctl probe "$ingest/readyz" >/dev/null 2>&1 && $bin/wafleetctl probe "$metrics/readyz" >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
$bin/wafleetctl probe "$ingest/readyz" >/dev/null || { echo "ingest did not become ready; see .wafleet/ingest.log" >&2; exit 1; }

echo
echo "wafleet is running:"
echo "  webhook   $ingest/webhooks/whatsapp   (verify token: $WHATSAPP_VERIFY_TOKEN)"
echo "  metrics   $ingest/metrics  and  $metrics/metrics"
echo "  logs      .wafleet/ingest.log  .wafleet/worker.log"
echo

run_id=$(date +%s%N)
now=$(date +%s)
for sample in deploy/samples/*.json; do
    body=$(mktemp)
    sed -e "s/__PNID__/$WHATSAPP_PHONE_NUMBER_ID/g" -e "s/__RUN__/$run_id/g" -e "s/__NOW__/$now/g" "$sample" > "$body"
    printf 'POST %-28s → ' "$(basename "$sample")"
    $bin/wafleetctl send-webhook --url "$ingest/webhooks/whatsapp" "$body"
    rm -f "$body"
done

echo
echo "waiting for the worker to store them…"
for _ in $(seq 1 100); do
    n=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM messages WHERE wamid LIKE 'wamid.demo-%-$run_id'")
    [[ $n == 2 ]] && break
    sleep 0.1
done
psql "$DATABASE_URL" -P pager=off -c "
  SELECT m.wamid, m.action, c.owner, m.pii_types, m.text_redacted
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
   WHERE m.wamid LIKE 'wamid.demo-%-$run_id' ORDER BY m.id"
echo "queues (ingest /metrics):"
$bin/wafleetctl probe "$ingest/metrics" | grep -E '^wafleet_(ingest_requests_total|stream_length)' | grep -v ' 0$' || true

if [[ ${RUN_ONCE:-0} == 1 ]]; then
    exit 0
fi
echo
echo "running; Ctrl-C to stop"
wait
