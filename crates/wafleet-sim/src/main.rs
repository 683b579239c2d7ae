//! `wafleet-sim`: the Graph API + LLM simulator as a process, for the demo and benchmarks.
//!
//! Every flag also reads an environment variable (`SIM_*`); `--token` may be repeated, and
//! `SIM_TOKENS` takes the same `PNID=TOKEN` pairs separated by commas.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use wafleet_sim::{SimConfig, WebhookTarget};

#[derive(Parser)]
#[command(
    name = "wafleet-sim",
    about = "Local stand-in for Meta's Graph API and the LLM providers"
)]
struct Cli {
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Where to post status webhooks (ingest's /webhooks/whatsapp); none when unset.
    #[arg(long, env = "SIM_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// App secret the status webhooks are signed with (needed with --webhook-url).
    #[arg(long, env = "SIM_APP_SECRET", hide_env_values = true)]
    app_secret: Option<String>,
    /// `PNID=TOKEN`: the access token a business number accepts. None given: any token passes.
    #[arg(
        long = "token",
        env = "SIM_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// Time each LLM answer takes.
    #[arg(long, env = "SIM_LLM_LATENCY_MS", default_value_t = 200)]
    llm_latency_ms: u64,
    /// Time each mark-read (read receipt + typing indicator) takes to be answered.
    #[arg(long, env = "SIM_READ_LATENCY_MS", default_value_t = 0)]
    read_latency_ms: u64,
    /// Throughput per business number (messages/s; Meta: 80). 0: unlimited.
    #[arg(long, env = "SIM_MPS", default_value_t = 80)]
    mps: u32,
    /// Pair-rate burst per recipient (Meta: 45), then one message per --pair-period-ms. 0: off.
    #[arg(long, env = "SIM_PAIR_BURST", default_value_t = 45)]
    pair_burst: u32,
    #[arg(long, env = "SIM_PAIR_PERIOD_MS", default_value_t = 6000)]
    pair_period_ms: u64,
    /// Pause before and between the sent / delivered / read webhooks.
    #[arg(long, env = "SIM_STATUS_DELAY_MS", default_value_t = 50)]
    status_delay_ms: u64,
}

impl Cli {
    fn into_config(self) -> anyhow::Result<(SocketAddr, SimConfig)> {
        let mut tokens = HashMap::new();
        for pair in self.tokens.iter().filter(|p| !p.trim().is_empty()) {
            let Some((pnid, token)) = pair.split_once('=') else {
                bail!("--token / SIM_TOKENS: expected PNID=TOKEN, got an entry without '='");
            };
            tokens.insert(pnid.trim().to_owned(), token.trim().to_owned());
        }
        let webhook = match (self.webhook_url, self.app_secret) {
            (Some(url), Some(app_secret)) => Some(WebhookTarget { url, app_secret }),
            (None, _) => None,
            (Some(_), None) => bail!("--webhook-url needs --app-secret (SIM_APP_SECRET)"),
        };
        let config = SimConfig {
            tokens,
            mps: self.mps,
            pair_burst: self.pair_burst,
            pair_period: Duration::from_millis(self.pair_period_ms.max(1)),
            webhook,
            status_delay: Duration::from_millis(self.status_delay_ms),
            llm_latency: Duration::from_millis(self.llm_latency_ms),
            read_latency: Duration::from_millis(self.read_latency_ms),
            ..SimConfig::default()
        };
        Ok((self.listen, config))
    }
}

/// The same allocator as the product's binaries, which share the machine with it in benchmarks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (listen, config) = Cli::parse().into_config()?;
    // Model calls arrive in bursts (a worker starting with a full queue opens one connection per
    // call): queue up to the kernel's cap instead of tokio's 1024, or the rest wait a second for
    // their SYN retransmission.
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(listen)
        .with_context(|| format!("binding {listen} (SIM_LISTEN)"))?;
    let listener = socket.listen(4096)?;
    wafleet_sim::run(config, listener, shutdown_signal()).await
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
