//! `wafleetctl`: the operator's command line. Reads `DATABASE_URL` and `WAFLEET_ENCRYPTION_KEY`
//! like the services do; secrets are taken from the environment or flags and stored encrypted.

use clap::{Parser, Subcommand};
use wafleet::config::{Secret, required};
use wafleet::crypto::Cipher;
use wafleet::db;
use wafleet::store::channels::{self, BotMode, ChannelSpec};

#[derive(Parser)]
#[command(name = "wafleetctl", about = "Operate a wafleet deployment")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations.
    Migrate,
    /// Print a fresh random WAFLEET_ENCRYPTION_KEY.
    GenerateKey,
    /// Manage channels (business numbers).
    #[command(subcommand)]
    Channel(ChannelCommand),
}

#[derive(Subcommand)]
enum ChannelCommand {
    /// Add a channel, or change the given fields of an existing one.
    Add(AddArgs),
    /// List channels (secrets are never printed).
    List,
    /// Stop serving a channel: its updates go to quarantine.
    Disable { phone_number_id: String },
    /// Serve a disabled channel again.
    Enable { phone_number_id: String },
}

#[derive(clap::Args)]
struct AddArgs {
    /// Meta's phone_number_id of the business number.
    #[arg(long)]
    phone_number_id: String,
    #[arg(long)]
    waba_id: Option<String>,
    /// The number as customers see it, digits only.
    #[arg(long)]
    display_phone_number: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// App secret that signs the webhooks; repeat it to accept several during a rotation.
    #[arg(
        long = "app-secret",
        env = "WHATSAPP_APP_SECRET",
        hide_env_values = true
    )]
    app_secrets: Vec<String>,
    #[arg(long, env = "WHATSAPP_VERIFY_TOKEN", hide_env_values = true)]
    verify_token: Option<String>,
    #[arg(long, env = "WHATSAPP_ACCESS_TOKEN", hide_env_values = true)]
    access_token: Option<String>,
    /// on, shadow or off.
    #[arg(long)]
    bot_mode: Option<BotMode>,
    /// Serve only these customers (wa_id digits or business-scoped ids); repeatable.
    #[arg(long = "allow")]
    allowlist: Vec<String>,
    /// Remove the allowlist (serve everyone).
    #[arg(long, conflicts_with = "allowlist")]
    clear_allowlist: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::GenerateKey = cli.command {
        println!("{}", Cipher::generate_key_text());
        return Ok(());
    }
    let pool = db::connect(&required("DATABASE_URL")?, 2).await?;
    db::migrate(&pool).await?;
    let cipher = || Cipher::from_key_text(&required("WAFLEET_ENCRYPTION_KEY")?);
    match cli.command {
        Command::Migrate => println!("migrations applied"),
        Command::GenerateKey => unreachable!("handled above"),
        Command::Channel(ChannelCommand::Add(a)) => {
            let spec = ChannelSpec {
                phone_number_id: a.phone_number_id.clone(),
                waba_id: a.waba_id,
                display_phone_number: a.display_phone_number,
                name: a.name,
                app_secrets: (!a.app_secrets.is_empty())
                    .then(|| a.app_secrets.into_iter().map(Secret::new).collect()),
                verify_token: a.verify_token.map(Secret::new),
                access_token: a.access_token.map(Secret::new),
                bot_mode: a.bot_mode,
                phone_allowlist: if a.clear_allowlist {
                    Some(Vec::new())
                } else {
                    (!a.allowlist.is_empty()).then_some(a.allowlist)
                },
            };
            let id = channels::upsert(&pool, &cipher()?, &spec).await?;
            println!("channel {} saved (id {id})", a.phone_number_id);
        }
        Command::Channel(ChannelCommand::List) => {
            let all = channels::list(&pool, &cipher()?).await?;
            println!(
                "{:<20} {:<18} {:<16} {:<8} {:<7} {:>7} {:>6} {:>6} {:>9}",
                "PHONE_NUMBER_ID",
                "WABA",
                "DISPLAY",
                "ENABLED",
                "BOT",
                "SECRETS",
                "VERIFY",
                "TOKEN",
                "ALLOWLIST"
            );
            for c in all {
                println!(
                    "{:<20} {:<18} {:<16} {:<8} {:<7} {:>7} {:>6} {:>6} {:>9}",
                    c.phone_number_id,
                    c.waba_id.as_deref().unwrap_or("-"),
                    c.display_phone_number.as_deref().unwrap_or("-"),
                    c.enabled,
                    c.bot_mode.as_str(),
                    c.app_secrets.len(),
                    yes(c.verify_token.is_some()),
                    yes(c.access_token.is_some()),
                    c.phone_allowlist.len(),
                );
            }
        }
        Command::Channel(ChannelCommand::Disable { phone_number_id }) => {
            set(&pool, &phone_number_id, false).await?;
        }
        Command::Channel(ChannelCommand::Enable { phone_number_id }) => {
            set(&pool, &phone_number_id, true).await?;
        }
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

async fn set(pool: &wafleet::db::PgPool, pnid: &str, enabled: bool) -> anyhow::Result<()> {
    let found = channels::set_enabled(pool, pnid, enabled).await?;
    anyhow::ensure!(found, "no channel with phone_number_id {pnid}");
    println!(
        "channel {pnid} {}",
        if enabled { "enabled" } else { "disabled" }
    );
    Ok(())
}
