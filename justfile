# wafleet task runner. No `just` installed? Use `deploy/just RECIPE` instead:
# it installs just into .tools/ on first use.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

services := "deploy/services.sh"

# list recipes
default:
    @{{just_executable()}} --justfile {{quote(justfile())}} --list

# start Redis (127.0.0.1:6390) + PostgreSQL (127.0.0.1:5440); data in .wafleet/
services:
    {{services}} up

# stop Redis + PostgreSQL (data kept)
services-down:
    {{services}} down

# show whether Redis / PostgreSQL are running
services-status:
    {{services}} status

# start services, then run the whole test suite (extra args go to the test runner)
test *args:
    #!/usr/bin/env bash
    set -euo pipefail
    {{services}} up
    eval "$({{services}} env)"
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast "$@"
    else
        cargo test --workspace --no-fail-fast "$@"
    fi

# check formatting
fmt:
    cargo fmt --all -- --check

# clippy, warnings are errors
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# run the whole system: services, migrations, ingest, a worker, the agent API and the simulator; sends the sample conversations
run:
    deploy/run.sh

# redact JSON lines {"text": …} from stdin (release build)
redact:
    cargo run --release -q -p wafleet-redact

# PII redaction quality and speed on the labelled corpus
bench-pii:
    cargo run --release -q -p wafleet-redact --bin bench-pii

# fuzz the webhook parser (SECS seconds; installs cargo-fuzz into .tools on first use)
fuzz SECS="60":
    #!/usr/bin/env bash
    set -euo pipefail
    fuzz=$(command -v cargo-fuzz || true)
    if [[ -z $fuzz ]]; then
        [[ -x .tools/bin/cargo-fuzz ]] || cargo install cargo-fuzz --locked --root .tools
        fuzz=.tools/bin/cargo-fuzz
    fi
    cd crates/wafleet-core/fuzz
    RUSTC_BOOTSTRAP=1 "$fuzz" run webhook_parse --fuzz-dir . -- -max_total_time={{SECS}}

# ingest throughput and latency vs a no-I/O ceiling, loaded by turns (BENCH_CONCURRENCY, BENCH_DURATION, BENCH_WARMUP, BENCH_ROUNDS)
bench-ingest:
    deploy/bench-ingest.sh

# small webhooks' latency beside Meta's 1,000-message batches, one serving thread (BENCH_RATE, BENCH_DURATION)
bench-ingest-batches:
    deploy/bench-ingest-batches.sh

# ingest -> Redis -> conversation workers -> Postgres, 1 then 2 workers (BENCH_MESSAGES, BENCH_CONVERSATIONS, BENCH_CONCURRENCY, BENCH_WORKERS)
bench-pipeline:
    deploy/bench-pipeline.sh

# webhook -> every worker stage -> Graph API against wafleet-sim: msgs/s, e2e p50/p99, LLM in-flight capacity and RSS (BENCH_MESSAGES, BENCH_CONVERSATIONS, BENCH_WORKERS, BENCH_INFLIGHT_MESSAGES, BENCH_LLM_LATENCY_MS)
bench-e2e:
    deploy/bench-e2e.sh
