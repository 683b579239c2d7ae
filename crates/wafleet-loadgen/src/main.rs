//! `wafleet-loadgen`: the ingest benchmark's two halves, plus the helpers its script needs.
//!
//! # Layout
//! - [`body`]: realistic signed webhook bodies, one unique wamid per request.
//! - [`load`]: `run`, the closed-loop load generator and its report.
//! - [`ceiling`]: `ceiling`, a server doing ingest's CPU work without Redis or Postgres.
//!
//! `deploy/bench-ingest.sh` (`just bench-ingest`) drives it against the release ingest and the
//! ceiling. It only ever talks to loopback addresses.

/// The same allocator as ingest, so the ceiling runs the same stack (and the client costs both
/// runs the same).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod body;
mod ceiling;
mod load;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
#[command(
    name = "wafleet-loadgen",
    about = "Load ingest with signed WhatsApp webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop load: C keep-alive connections, each sending one webhook at a time.
    Run(RunArgs),
    /// Serve POST /webhooks/whatsapp doing only signature check and parsing (no Redis, no Postgres).
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: SocketAddr,
        #[arg(long, env = "WHATSAPP_APP_SECRET", hide_env_values = true)]
        secret: String,
        /// Tokio worker threads; default: one per core, as ingest.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Print a loopback TCP port that is free right now.
    FreePort,
    /// Wait until GET URL answers 200 (exit 1 after the timeout).
    Wait {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Ingest's webhook URL, e.g. http://127.0.0.1:8080/webhooks/whatsapp (loopback only).
    /// Repeat it (with one `--label` each) to load several servers by turns: see `--rounds`.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// App secret the bodies are signed with.
    #[arg(long, env = "WHATSAPP_APP_SECRET", hide_env_values = true)]
    secret: String,
    /// Business number the messages are sent to (a channel ingest knows).
    #[arg(long)]
    phone_number_id: String,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Name on the report and the RESULT line, one per `--url` (default: `run` for one URL).
    #[arg(long)]
    label: Vec<String>,
    /// Load the URLs by turns: `--duration` is cut into this many slices per URL, run in
    /// rounds (each URL's slice in the order given, then the next round), and each URL's slices
    /// add up to its report. Comparing two servers this way, a host whose speed drifts over a
    /// minute (a shared VM) slows both alike instead of whichever ran second.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Warm-up of each slice after a URL's first (which has `--warmup`): new connections.
    #[arg(long, default_value_t = 1)]
    slice_warmup: u64,
    /// A shell command run before every slice, waited for (the ingest benchmark waits for
    /// Redis to finish an AOF rewrite, so none of it falls on the next server's slice).
    #[arg(long)]
    before_slice: Option<String>,
    /// Hard cap on requests, warm-up included (per slice with `--rounds`).
    #[arg(long, default_value_t = 20_000_000)]
    max_requests: u64,
    /// Per-request timeout, counted as an error.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Distinct customers (conversations) the messages come from.
    #[arg(long, default_value_t = body::CUSTOMERS)]
    customers: u64,
    /// Requests per second over all connections (a steady arrival rate); unset: as fast as
    /// answers come back.
    #[arg(long)]
    rate: Option<f64>,
    /// Threads of the load generator. One keeps it off the server's second core on a small box.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build().context("starting tokio")
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(a) => run(a),
        Command::Ceiling {
            listen,
            secret,
            threads,
        } => runtime(threads)?.block_on(ceiling::serve(listen, secret.as_bytes())),
        Command::FreePort => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", listener.local_addr()?.port());
            Ok(())
        }
        Command::Wait { url, timeout_secs } => {
            let target = load::Target::parse(&url)?;
            runtime(Some(1))?.block_on(wait_ok(target, Duration::from_secs(timeout_secs)))
        }
    }
}

/// `run`: one closed loop per URL, or several by turns (`--rounds`).
fn run(a: RunArgs) -> anyhow::Result<()> {
    let labels = match a.label.as_slice() {
        [] if a.url.len() == 1 => vec!["run".to_owned()],
        labels => labels.to_vec(),
    };
    anyhow::ensure!(
        labels.len() == a.url.len(),
        "give one --label per --url ({} labels for {} URLs)",
        labels.len(),
        a.url.len()
    );
    anyhow::ensure!(
        (1..=load::MAX_ROUNDS).contains(&a.rounds),
        "--rounds must be 1..={}",
        load::MAX_ROUNDS
    );
    let slices = a.rounds as u64;
    anyhow::ensure!(
        a.duration <= load::MAX_DURATION.as_secs(),
        "--duration must be at most {} s in all",
        load::MAX_DURATION.as_secs()
    );
    anyhow::ensure!(
        a.duration.is_multiple_of(slices),
        "--duration ({} s) must be a whole number of seconds per slice ({slices} slices)",
        a.duration
    );
    let plans = a
        .url
        .iter()
        .map(|url| {
            let plan = load::Plan {
                target: load::Target::parse(url)?,
                concurrency: a.concurrency,
                warmup: Duration::from_secs(a.warmup),
                duration: Duration::from_secs(a.duration / slices),
                max_requests: a.max_requests,
                timeout: Duration::from_millis(a.timeout_ms),
                rate: a.rate,
            };
            plan.check()?;
            Ok(plan)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = runtime(Some(a.threads))?;
    let mut reports: Vec<Option<load::Report>> = plans.iter().map(|_| None).collect();
    for round in 0..a.rounds {
        for (plan, report) in plans.iter().zip(&mut reports) {
            if let Some(command) = &a.before_slice {
                let status = std::process::Command::new("sh")
                    .args(["-c", command])
                    .status()
                    .context("running --before-slice")?;
                anyhow::ensure!(status.success(), "--before-slice failed: {status}");
            }
            let mut plan = plan.clone();
            if round > 0 {
                plan.warmup = Duration::from_secs(a.slice_warmup);
            }
            // A fresh nonce per slice: no body of one slice redelivers one of another's.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let factory = body::BodyFactory::new(
                &a.phone_number_id,
                a.secret.as_bytes(),
                rand::random(),
                now.as_secs(),
            )?
            .with_customers(a.customers);
            let slice = runtime.block_on(load::run(plan, factory))?;
            match report {
                Some(report) => report.absorb(slice),
                None => *report = Some(slice),
            }
        }
    }
    let sliced = (a.rounds > 1).then(|| (a.rounds, Duration::from_secs(a.slice_warmup)));
    for ((label, plan), report) in labels.iter().zip(&plans).zip(reports) {
        let report = report.expect("every URL ran at least one slice");
        print!("{}", load::render(label, plan, sliced, &report));
    }
    Ok(())
}

/// Polls GET until a 200, for at most `timeout`.
async fn wait_ok(target: load::Target, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let get = || async {
        let stream = tokio::net::TcpStream::connect(target.addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let request = hyper::Request::get(target.path.as_str())
            .header(hyper::header::HOST, target.authority.as_str())
            .body(Empty::<bytes::Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        response.into_body().collect().await.ok()?;
        Some(status)
    };
    loop {
        let status = tokio::time::timeout(Duration::from_secs(2), get())
            .await
            .ok()
            .flatten();
        if status == Some(StatusCode::OK) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}{} did not answer 200 within {timeout:?} (last: {status:?})",
            target.addr,
            target.path
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
