//! `wafleetctl`: the operator's command line. Reads `DATABASE_URL` and `WAFLEET_ENCRYPTION_KEY`
//! like the services do; secrets are stored encrypted.
//!
//! A secret flag takes the secret itself, `env:NAME` (read from that variable) or `file:PATH`
//! (read from that file, without its trailing newline), so it need not appear in `ps` or the
//! shell history. `channel add` never falls back to the environment on its own: with
//! `WHATSAPP_APP_SECRET` set for one number, changing another number's bot mode must not give it
//! that number's secrets.

use anyhow::Context;
use clap::{Parser, Subcommand};
use wafleet::config::{Secret, parsed, required};
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
    /// Seal every stored secret again with WAFLEET_ENCRYPTION_KEY, opening it with that key or
    /// one of WAFLEET_ENCRYPTION_KEY_PREVIOUS (a key rotation; see the README).
    RotateSecrets,
    /// Manage channels (business numbers).
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Sign a webhook body like Meta does and POST it (for trying a deployment by hand).
    SendWebhook {
        /// The ingest endpoint, e.g. http://127.0.0.1:8080/webhooks/whatsapp
        #[arg(long)]
        url: String,
        /// The app secret to sign with: the secret, env:NAME or file:PATH; WHATSAPP_APP_SECRET
        /// when not given.
        #[arg(long, env = "WHATSAPP_APP_SECRET", hide_env_values = true)]
        secret: String,
        /// A file holding the JSON body, sent byte for byte.
        file: std::path::PathBuf,
    },
    /// GET a URL and print the body; exit non-zero unless it answers 2xx (health checks in scripts).
    Probe { url: String },
    /// Inspect and replay dead letters.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Inspect what ingest kept aside (unknown or disabled numbers, senders outside the
    /// allowlist) and replay it once the cause is fixed.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Hand a conversation back to the bot.
    Release { conversation_id: i64 },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List quarantined updates (ids, reasons, numbers, kinds; never message text).
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Enqueue quarantined updates that the channels as they are now accept, exactly as ingest
    /// would have (duplicates of what Meta sent again are skipped), and remove them from the
    /// quarantine; those still refused stay. Give entry ids, or --all.
    Replay {
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
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
    /// Set one model of a channel's chain (tried in position order, then the canned reply).
    Model(ModelArgs),
    /// Remove a channel's own models (the process-wide ones apply again).
    ClearModels { phone_number_id: String },
}

#[derive(clap::Args)]
struct ModelArgs {
    #[arg(long)]
    phone_number_id: String,
    /// 0 is tried first.
    #[arg(long, default_value_t = 0)]
    position: i32,
    /// Label for metrics and logs, e.g. anthropic, deepseek.
    #[arg(long)]
    name: String,
    /// anthropic, or openai for any OpenAI-compatible endpoint.
    #[arg(long)]
    kind: String,
    /// e.g. https://api.anthropic.com, https://api.openai.com/v1, https://api.deepseek.com
    #[arg(long)]
    base_url: String,
    #[arg(long)]
    model: String,
    /// The key, env:NAME or file:PATH; WAFLEET_MODEL_API_KEY when not given.
    #[arg(long, env = "WAFLEET_MODEL_API_KEY", hide_env_values = true)]
    api_key: String,
}

#[derive(Subcommand)]
enum DeadCommand {
    /// List a stage's dead letters (ids, reasons, counts; never message text).
    List {
        /// conversation, status, llm, sender
        stage: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put dead letters back on the stream they came from and remove them from the dead-letter
    /// stream. Give entry ids, or --all. A sender job's failed parts are sent again, except those
    /// whose sends Meta never answered (one may have reached the customer) unless
    /// --resend-unanswered.
    Replay {
        stage: String,
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        resend_unanswered: bool,
    },
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
    /// App secret that signs the webhooks; repeat it to accept several during a rotation. The
    /// secret, env:NAME or file:PATH.
    #[arg(long = "app-secret")]
    app_secrets: Vec<String>,
    /// The secret, env:NAME or file:PATH.
    #[arg(long)]
    verify_token: Option<String>,
    /// The secret, env:NAME or file:PATH.
    #[arg(long)]
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

/// A secret flag's value: the secret itself, `env:NAME` or `file:PATH`. Errors name the variable
/// or file, never the value.
fn secret_value(arg: &str) -> anyhow::Result<String> {
    let value = if let Some(name) = arg.strip_prefix("env:") {
        std::env::var(name).with_context(|| format!("{name} is not set (or not UTF-8)"))?
    } else if let Some(path) = arg.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        text.trim_end_matches(['\n', '\r']).to_string()
    } else {
        arg.to_string()
    };
    anyhow::ensure!(!value.is_empty(), "an empty secret was given");
    Ok(value)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::GenerateKey = cli.command {
        println!("{}", Cipher::generate_key_text());
        return Ok(());
    }
    if let Command::SendWebhook { url, secret, file } = &cli.command {
        let body = std::fs::read(file)?;
        let signature = wafleet_core::signature::sign(&body, secret_value(secret)?.as_bytes());
        let res = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await?;
        let status = res.status();
        println!(
            "{} {}",
            status.as_u16(),
            res.text().await.unwrap_or_default()
        );
        // Scripts (deploy/run.sh) must see a refused webhook.
        anyhow::ensure!(status.is_success(), "ingest answered {status}");
        return Ok(());
    }
    if let Command::Probe { url } = &cli.command {
        let res = reqwest::get(url).await?;
        let ok = res.status().is_success();
        print!("{}", res.text().await.unwrap_or_default());
        anyhow::ensure!(ok, "{url} is not healthy");
        return Ok(());
    }
    if let Command::Dead(cmd) = &cli.command {
        return dead_letters(cmd).await;
    }
    if let Command::Quarantine(cmd) = &cli.command {
        return quarantine(cmd).await;
    }
    let pool = db::connect(
        &required("DATABASE_URL")?,
        2,
        parsed("WAFLEET_PG_PLAN_CACHE_MODE", Default::default())?,
    )
    .await?;
    db::migrate(&pool).await?;
    let cipher = wafleet::config::cipher_from_env;
    match cli.command {
        Command::Migrate => println!("migrations applied"),
        Command::RotateSecrets => {
            let done = channels::reseal_all(&pool, &cipher()?).await?;
            println!(
                "{} secret(s) sealed again with WAFLEET_ENCRYPTION_KEY, {} already were",
                done.resealed, done.current
            );
        }
        Command::GenerateKey
        | Command::SendWebhook { .. }
        | Command::Probe { .. }
        | Command::Dead(_)
        | Command::Quarantine(_) => {
            unreachable!("handled above")
        }
        Command::Release { conversation_id } => {
            let changed = wafleet::store::conversations::release(&pool, conversation_id).await?;
            // The conversation stage caches owner and session per conversation key: drop it.
            let (pnid, customer): (String, String) = sqlx_query_key(&pool, conversation_id).await?;
            let (_, keys, mut con) = redis_side().await?;
            let _: () = redis::cmd("DEL")
                .arg(keys.session_cache(&format!("{pnid}:{customer}")))
                .query_async(&mut con)
                .await?;
            if changed {
                // Dashboards learn it the way they learn of handovers.
                let change = wafleet::stages::OwnerChange {
                    kind: "release",
                    reason: "agent",
                    conversation_id,
                    message_id: None,
                    phone_number_id: Some(&pnid),
                };
                wafleet::stages::publish_handover(&mut con, &keys, &change).await?;
            }
            println!(
                "conversation {conversation_id} {}",
                if changed {
                    "given back to the bot"
                } else {
                    "was not with a human"
                }
            );
        }
        Command::Channel(ChannelCommand::Add(a)) => {
            let spec = ChannelSpec {
                phone_number_id: a.phone_number_id.clone(),
                waba_id: a.waba_id,
                display_phone_number: a.display_phone_number,
                name: a.name,
                app_secrets: if a.app_secrets.is_empty() {
                    None
                } else {
                    Some(
                        a.app_secrets
                            .iter()
                            .map(|v| secret_value(v).map(Secret::new))
                            .collect::<anyhow::Result<_>>()?,
                    )
                },
                verify_token: a
                    .verify_token
                    .as_deref()
                    .map(secret_value)
                    .transpose()?
                    .map(Secret::new),
                access_token: a
                    .access_token
                    .as_deref()
                    .map(secret_value)
                    .transpose()?
                    .map(Secret::new),
                bot_mode: a.bot_mode,
                phone_allowlist: if a.clear_allowlist {
                    Some(Vec::new())
                } else {
                    (!a.allowlist.is_empty()).then_some(a.allowlist)
                },
            };
            let id = channels::upsert(&pool, &cipher()?, &spec).await?;
            println!("channel {} saved (id {id})", a.phone_number_id);
            hint_quarantine(&a.phone_number_id).await;
        }
        Command::Channel(ChannelCommand::List) => {
            // One channel whose secrets do not decrypt must not hide the others from the
            // operator looking for it.
            let all = channels::list_readable(&pool, &cipher()?).await?;
            let hidden = channels::count(&pool).await? - all.len() as i64;
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
            if hidden > 0 {
                println!(
                    "{hidden} channel(s) not shown: their app secrets or verify token do not \
                     decrypt with WAFLEET_ENCRYPTION_KEY (or WAFLEET_ENCRYPTION_KEY_PREVIOUS)"
                );
            }
        }
        Command::Channel(ChannelCommand::Model(m)) => {
            let spec = channels::ProviderSpec {
                position: m.position,
                name: m.name,
                kind: m.kind,
                base_url: m.base_url,
                model: m.model,
                api_key: Secret::new(secret_value(&m.api_key)?),
            };
            channels::set_provider(&pool, &cipher()?, &m.phone_number_id, &spec).await?;
            println!(
                "model {} set at position {} of channel {}",
                spec.name, spec.position, m.phone_number_id
            );
        }
        Command::Channel(ChannelCommand::ClearModels { phone_number_id }) => {
            let n = channels::clear_providers(&pool, &phone_number_id).await?;
            println!("removed {n} model(s) of channel {phone_number_id}");
        }
        Command::Channel(ChannelCommand::Disable { phone_number_id }) => {
            set(&pool, &phone_number_id, false).await?;
        }
        Command::Channel(ChannelCommand::Enable { phone_number_id }) => {
            set(&pool, &phone_number_id, true).await?;
            hint_quarantine(&phone_number_id).await;
        }
    }
    Ok(())
}

/// After a channel was added or enabled: says how many of its updates ingest kept aside while
/// it was unknown or disabled, and how to replay them. Best effort: Redis out of reach (or slow)
/// only skips the hint.
async fn hint_quarantine(phone_number_id: &str) {
    let count = async {
        let (_, keys, mut con) = redis_side().await?;
        let kept = wafleet::quarantine::read(&mut con, &keys).await?;
        anyhow::Ok(
            kept.iter()
                .filter(|k| k.text("channel") == phone_number_id)
                .count(),
        )
    };
    if let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_secs(5), count).await
        && n > 0
    {
        println!(
            "{n} update(s) for {phone_number_id} are in quarantine: `wafleetctl quarantine list` \
             shows them, `wafleetctl quarantine replay --all` enqueues those the channels now accept"
        );
    }
}

/// An error naming the entry ids asked for that `stream` did not hold.
fn all_found(ids: &[String], found: &[String], stream: &str) -> anyhow::Result<()> {
    let missing: Vec<_> = ids.iter().filter(|id| !found.contains(id)).collect();
    anyhow::ensure!(missing.is_empty(), "no entry {missing:?} in {stream}");
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

async fn sqlx_query_key(
    pool: &wafleet::db::PgPool,
    conversation_id: i64,
) -> anyhow::Result<(String, String)> {
    wafleet::store::conversations::conversation_key(pool, conversation_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no conversation {conversation_id}"))
}

async fn dead_letters(cmd: &DeadCommand) -> anyhow::Result<()> {
    use wafleet::dead_letters;
    let stage = match cmd {
        DeadCommand::List { stage, .. } | DeadCommand::Replay { stage, .. } => stage,
    };
    anyhow::ensure!(
        wafleet::stages::process::ALL_STAGES.contains(&stage.as_str()),
        "unknown stage {stage:?}: one of {}",
        wafleet::stages::process::ALL_STAGES.join(", ")
    );
    let (settings, keys, mut con) = redis_side().await?;
    match cmd {
        DeadCommand::List { stage, limit } => {
            for letter in
                wafleet::streams::read_after(&mut con, &keys.dead(stage), None, *limit).await?
            {
                println!(
                    "{}  source={} {}  deliveries={} attempts={}  reason={}",
                    letter.id(),
                    letter.text("source_stream"),
                    letter.text("source_id"),
                    letter.text("deliveries"),
                    letter.text("attempts"),
                    letter.text("reason")
                );
            }
        }
        DeadCommand::Replay {
            stage,
            ids,
            all,
            resend_unanswered,
        } => {
            anyhow::ensure!(
                *all || !ids.is_empty(),
                "give entry ids to replay, or --all"
            );
            let pg =
                db::connect(settings.database_url.expose(), 2, settings.plan_cache_mode).await?;
            let (mut replayed, mut unanswered) = (0, 0);
            let mut found = Vec::new();
            for letter in dead_letters::read(&mut con, &keys, stage).await? {
                if *all || ids.iter().any(|id| id == letter.id()) {
                    let parts = dead_letters::replay(
                        &mut con,
                        &pg,
                        &keys,
                        stage,
                        &letter,
                        *resend_unanswered,
                    )
                    .await
                    .with_context(|| {
                        format!("replaying {} (after {replayed} replayed)", letter.id())
                    })?;
                    found.push(letter.id().to_string());
                    if parts.unanswered > 0 {
                        unanswered += 1;
                        println!(
                            "{}  kept: {} part(s) whose sends Meta never answered (one may have \
                             reached the customer); --resend-unanswered sends them again",
                            letter.id(),
                            parts.unanswered
                        );
                    } else {
                        replayed += 1;
                    }
                }
            }
            println!(
                "replayed {replayed} dead letter(s) from {}, kept {unanswered}",
                keys.dead(stage)
            );
            all_found(ids, &found, &keys.dead(stage))?;
        }
    }
    Ok(())
}

async fn quarantine(cmd: &QuarantineCommand) -> anyhow::Result<()> {
    use wafleet::quarantine::{self, Replayed};
    let (settings, keys, mut con) = redis_side().await?;
    match cmd {
        QuarantineCommand::List { limit } => {
            for kept in
                wafleet::streams::read_after(&mut con, &keys.quarantine(), None, *limit).await?
            {
                println!(
                    "{}  reason={}  channel={}  kind={}  received_at={}",
                    kept.id(),
                    kept.text("reason"),
                    kept.text("channel"),
                    kept.text("kind"),
                    kept.text("received_at")
                );
            }
        }
        QuarantineCommand::Replay { ids, all } => {
            anyhow::ensure!(
                *all || !ids.is_empty(),
                "give entry ids to replay, or --all"
            );
            let pg =
                db::connect(settings.database_url.expose(), 2, settings.plan_cache_mode).await?;
            let cipher = settings.cipher()?;
            let registry = wafleet::channels::load(&pg, &cipher).await?;
            let enqueuer = wafleet::streams::Enqueuer::new(wafleet::config::dedup_ttl()?);
            let (mut enqueued, mut duplicates, mut left) = (0, 0, 0);
            let mut found = Vec::new();
            for kept in quarantine::read(&mut con, &keys).await? {
                if !*all && !ids.iter().any(|id| id == kept.id()) {
                    continue;
                }
                found.push(kept.id().to_string());
                match quarantine::replay(&mut con, &keys, &enqueuer, &registry, &kept).await? {
                    Replayed::Enqueued => enqueued += 1,
                    Replayed::Duplicate => duplicates += 1,
                    Replayed::Refused(reason) => {
                        left += 1;
                        println!("{}  still refused: {reason}", kept.id());
                    }
                    Replayed::Unreadable(e) => {
                        left += 1;
                        println!("{}  unreadable: {e}", kept.id());
                    }
                }
            }
            println!(
                "enqueued {enqueued}, already enqueued {duplicates}, left in {} {left}",
                keys.quarantine()
            );
            all_found(ids, &found, &keys.quarantine())?;
        }
    }
    Ok(())
}

/// Settings, key layout and a Redis connection, for the commands that work on streams.
async fn redis_side() -> anyhow::Result<(
    wafleet::config::CommonSettings,
    wafleet::streams::Keys,
    redis::aio::MultiplexedConnection,
)> {
    let settings = wafleet::config::CommonSettings::from_env()?;
    let keys = wafleet::streams::Keys::new(settings.redis_prefix.clone(), settings.partitions);
    let con = redis::Client::open(settings.redis_url.expose().as_str())?
        .get_multiplexed_async_connection()
        .await?;
    Ok((settings, keys, con))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn channel_add_takes_no_secret_from_the_environment_on_its_own() {
        let cli = Cli::command();
        let add = cli
            .find_subcommand("channel")
            .and_then(|c| c.find_subcommand("add"))
            .expect("channel add");
        let from_env: Vec<_> = add
            .get_arguments()
            .filter(|a| a.get_env().is_some())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(from_env.is_empty(), "{from_env:?}");
        // A secret flag not given stays unset (the upsert then leaves the stored one alone).
        let parsed = Cli::try_parse_from([
            "wafleetctl",
            "channel",
            "add",
            "--phone-number-id",
            "1",
            "--bot-mode",
            "shadow",
        ])
        .unwrap();
        let Command::Channel(ChannelCommand::Add(a)) = parsed.command else {
            panic!("not channel add")
        };
        assert!(a.app_secrets.is_empty() && a.verify_token.is_none() && a.access_token.is_none());
    }

    #[test]
    fn a_secret_flag_reads_a_variable_or_a_file_and_errors_never_show_the_value() {
        assert_eq!(secret_value("s3cret").unwrap(), "s3cret");
        let path = std::env::temp_dir().join(format!("wafleetctl-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        assert_eq!(
            secret_value(&format!("file:{}", path.display())).unwrap(),
            "from-file"
        );
        std::fs::remove_file(&path).unwrap();
        let missing = secret_value(&format!("file:{}", path.display())).unwrap_err();
        assert!(format!("{missing:#}").contains("reading"), "{missing:#}");
        // PATH is set in any test environment.
        assert_eq!(
            secret_value("env:PATH").unwrap(),
            std::env::var("PATH").unwrap()
        );
        let unset = secret_value("env:WAFLEETCTL_TEST_NEVER_SET").unwrap_err();
        assert_eq!(
            unset.to_string(),
            "WAFLEETCTL_TEST_NEVER_SET is not set (or not UTF-8)"
        );
        assert!(secret_value("").is_err());
    }
}
