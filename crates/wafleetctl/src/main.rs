//! `wafleetctl`: the operator's command line. Reads `DATABASE_URL` and `WAFLEET_ENCRYPTION_KEY`
//! like the services do; secrets are stored encrypted.
//!
//! A secret flag takes the secret itself, `env:NAME` (read from that variable) or `file:PATH`
//! (read from that file, without its trailing newline), so it need not appear in `ps` or the
//! shell history. `channel add` never falls back to the environment on its own: with
//! `WHATSAPP_APP_SECRET` set for one number, changing another number's bot mode must not give it
//! that number's secrets.

use std::collections::HashMap;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wafleet::config::{Secret, parsed, required};
use wafleet::crypto::Cipher;
use wafleet::db;
use wafleet::store::channels::{self, BotMode, ChannelSpec};
use wafleet::store::settings;

mod check;
mod upload;

// `println!` and `print!` in this file are these. Std's panic once stdout's reader is gone
// (`wafleetctl conversation list | head -1`: "failed printing to stdout: Broken pipe", exit 101,
// perhaps halfway through a command that changes things); here what nobody reads any more is
// dropped, and the command does all it was asked.
macro_rules! println {
    () => {
        $crate::print_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::print_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

macro_rules! print {
    ($($arg:tt)*) => {
        $crate::print_out(format_args!($($arg)*))
    };
}

/// Writes to stdout, and nothing more once its reader is gone. Any other failure panics, as
/// std's `print!` does.
fn print_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    static READER_GONE: AtomicBool = AtomicBool::new(false);
    if READER_GONE.load(Ordering::Relaxed) {
        return;
    }
    match std::io::stdout().lock().write_fmt(args) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            READER_GONE.store(true, Ordering::Relaxed);
        }
        Err(e) => panic!("failed printing to stdout: {e}"),
    }
}

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
    /// What human agents do: list conversations, read one, take it from the bot, write to the
    /// customer, give it back.
    // Boxed: its template and file flags make it several times larger than every other command.
    #[command(subcommand)]
    Conversation(Box<ConversationCommand>),
    /// What each number used over a period: customer messages, replies, tokens by model,
    /// messages sent by the bot and by agents, failures, handovers (for billing the businesses
    /// a platform hosts, or watching model spend).
    Usage {
        /// First day (UTC, YYYY-MM-DD), included; 30 days ago when not given.
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// Last day (UTC, YYYY-MM-DD), included; today when not given.
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
    },
    /// A customer's data (their rights over it).
    #[command(subcommand)]
    Customer(CustomerCommand),
    /// Bearer tokens of the agent API (`wafleet-api`), one per dashboard or team.
    #[command(subcommand)]
    ApiToken(ApiTokenCommand),
    /// A number's knowledge base: entries the model is given when a customer's message matches
    /// them (full-text search), so it answers from the business's facts.
    #[command(subcommand)]
    Knowledge(KnowledgeCommand),
    /// Hand a conversation back to the bot (the same as `conversation release`).
    #[command(hide = true)]
    Release { conversation_id: i64 },
}

#[derive(Subcommand)]
enum KnowledgeCommand {
    /// Add an entry, or replace the one with the same title.
    Add {
        phone_number_id: String,
        /// What it is about (its words weigh most in the search), e.g. "Envíos y entregas".
        title: String,
        /// The text (at most 4,000 characters); `@PATH` reads it from a file, `-` from stdin.
        text: String,
        /// The Postgres text search configuration it is written in: how words are stemmed
        /// (`spanish`, `english`, `portuguese`…; `simple` matches words as written).
        #[arg(long, default_value = wafleet::store::knowledge::DEFAULT_LANGUAGE)]
        language: String,
    },
    /// List a number's entries (titles, language, size).
    List { phone_number_id: String },
    /// Remove an entry.
    Remove {
        phone_number_id: String,
        title: String,
    },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Make a token and print it (only once: Postgres keeps a SHA-256 of it).
    Add {
        /// A name for it (the dashboard or team), unique; logs name tokens by it.
        name: String,
        /// A business number (phone_number_id) the token reaches; repeat for several. Without
        /// any, it reaches every number (a platform's own dashboard).
        #[arg(long = "number")]
        numbers: Vec<String>,
        /// An admin token: every number, and it manages channels (`/api/v1/channels`).
        #[arg(long, conflicts_with = "numbers")]
        admin: bool,
    },
    /// List the tokens: name, numbers, when made and revoked (never the tokens).
    List,
    /// Revoke a token at once.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum CustomerCommand {
    /// Erase what wafleet keeps of a customer of a number, on their request: message texts,
    /// what was written to them, their number, business-scoped id, profile name and wamids, the
    /// kept-aside Redis entries naming them and their parked retries. Ids, states, times and
    /// token counts stay. Cannot be undone.
    Erase {
        /// The business number's phone_number_id.
        phone_number_id: String,
        /// The customer: their phone number with country code, in any notation (+57 301 600 0000),
        /// or their business-scoped user id.
        customer: String,
        /// Confirms the erasure.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum ConversationCommand {
    /// List conversations, most recently active first (ids, owner, numbers, waiting messages).
    List {
        /// Only those a human owns.
        #[arg(long)]
        human: bool,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
    /// Print a conversation's last messages, both sides, as stored (redacted).
    Show {
        conversation_id: i64,
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..))]
        last: i64,
    },
    /// Take a conversation from the bot: it answers none of the customer's later messages, and
    /// a reply it is still writing is not sent.
    Take { conversation_id: i64 },
    /// Send the customer a message as a human agent (the conversation must be with a human and
    /// the customer's last message less than 24 hours old). Sent as written, through the same
    /// rate limits and at-most-once sending as the bot's replies. Or a file (--image, --document,
    /// --audio, --video, --sticker: an https link Meta fetches, an uploaded media id, or @PATH, a
    /// file on this machine, uploaded to Meta with the channel's token first), or the
    /// text with reply buttons (--button, up to 3) or a list to pick from (--list-button and
    /// --row, up to 10 rows): Meta's limits are checked before anything is recorded.
    Reply {
        conversation_id: i64,
        /// The message (with --button or --row, the text above them); `-` reads it from
        /// standard input. Not with a file: its text is --caption.
        text: Option<String>,
        /// Makes the request safe to repeat: the same reference in the same conversation never
        /// sends twice. A fresh one when not given (printed, to retry with).
        #[arg(long)]
        reference: Option<String>,
        /// Who writes (kept with the message).
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        content: ContentArgs,
    },
    /// Send the customer an approved template as a human agent: the one message WhatsApp takes
    /// more than 24 hours after the customer's last message. The conversation must be with a
    /// human.
    Template {
        conversation_id: i64,
        #[command(flatten)]
        template: TemplateArgs,
    },
    /// Give a conversation back to the bot: it answers the customer's next message.
    Release { conversation_id: i64 },
    /// Upload a file on this machine to Meta for a number, and print its media id: to give a
    /// template's header (--header-image, --header-document, --header-video ID) or a reply's
    /// file by id. Checked first as `reply … @PATH` checks it; needs WAFLEET_ENCRYPTION_KEY (the
    /// channel's token is stored sealed). Meta keeps an upload 30 days.
    Upload {
        phone_number_id: String,
        /// The file (`@PATH` taken too); its type from its name's extension.
        path: String,
    },
    /// Send an approved template to a customer by their phone, whether or not they ever wrote:
    /// starts their conversation (an order update, an agent following up). A human takes it,
    /// unless --bot.
    Start {
        phone_number_id: String,
        /// The customer's phone, any notation (+57 301 600-0000).
        to: String,
        #[command(flatten)]
        template: TemplateArgs,
        /// Leave the conversation with the bot (new ones start with it): it answers the reply,
        /// reading the template's name and parameters (redacted) before it.
        #[arg(long)]
        bot: bool,
    },
}

/// A file, reply buttons or a list, as `conversation reply` takes them.
#[derive(clap::Args)]
struct ContentArgs {
    /// An image (JPEG, PNG; Meta takes up to 5 MB): an https link, a media id, or @PATH, a file
    /// on this machine (@./photo.jpg), uploaded first with the channel's token (needs
    /// WAFLEET_ENCRYPTION_KEY; its type from its name).
    #[arg(long, value_name = "URL|ID|@PATH", group = "file", conflicts_with_all = ["buttons", "rows"])]
    image: Option<String>,
    /// A document (a PDF invoice, a catalogue; up to 100 MB): an https link, a media id or
    /// @PATH (the file's name is the document's unless --filename).
    #[arg(long, value_name = "URL|ID|@PATH", group = "file")]
    document: Option<String>,
    /// A voice note or audio file (up to 16 MB): an https link, a media id or @PATH.
    #[arg(long, value_name = "URL|ID|@PATH", group = "file")]
    audio: Option<String>,
    /// A video (MP4, 3GPP; up to 16 MB): an https link, a media id or @PATH.
    #[arg(long, value_name = "URL|ID|@PATH", group = "file")]
    video: Option<String>,
    /// A sticker (WebP, up to 500 KB): an https link, a media id or @PATH.
    #[arg(long, value_name = "URL|ID|@PATH", group = "file")]
    sticker: Option<String>,
    /// The file's caption (not for audio or a sticker).
    #[arg(long, requires = "file")]
    caption: Option<String>,
    /// The document's name as the customer sees it (factura.pdf).
    #[arg(long, requires = "document")]
    filename: Option<String>,
    /// A reply button under the text: ID:TITLE (the title at most 20 characters); up to 3.
    #[arg(long = "button", value_name = "ID:TITLE", value_parser = id_title, conflicts_with_all = ["file", "rows"])]
    buttons: Vec<(String, String)>,
    /// A row of a list to pick from under the text: ID:TITLE or ID:TITLE:DESCRIPTION; up to 10.
    #[arg(long = "row", value_name = "ID:TITLE[:DESCRIPTION]", value_parser = row, requires = "list_button", conflicts_with = "file")]
    rows: Vec<wafleet_core::outgoing::Row>,
    /// The label of the button that opens the list (at most 20 characters).
    #[arg(long, value_name = "LABEL", requires = "rows")]
    list_button: Option<String>,
    /// A header above the text of buttons or a list (at most 60 characters).
    #[arg(long)]
    header: Option<String>,
    /// A footer under the text of buttons or a list (at most 60 characters).
    #[arg(long)]
    footer: Option<String>,
}

impl ContentArgs {
    /// The file, if one was given.
    fn media(&self) -> Option<wafleet_core::outgoing::Media> {
        let (kind, target) = [
            ("image", &self.image),
            ("document", &self.document),
            ("audio", &self.audio),
            ("video", &self.video),
            ("sticker", &self.sticker),
        ]
        .into_iter()
        .find_map(|(kind, target)| target.as_ref().map(|t| (kind, t.trim())))?;
        let link = target.contains("://");
        Some(wafleet_core::outgoing::Media {
            kind: kind.into(),
            link: link.then(|| target.to_string()),
            id: (!link).then(|| target.to_string()),
            caption: self.caption.clone(),
            filename: self.filename.clone(),
        })
    }
}

/// `ID:TITLE` of a reply button.
fn id_title(arg: &str) -> Result<(String, String), String> {
    let (id, title) = arg
        .split_once(':')
        .ok_or("give ID:TITLE (confirmar:Sí, confirmar)")?;
    Ok((id.to_string(), title.to_string()))
}

/// `ID:TITLE[:DESCRIPTION]` of a list's row.
fn row(arg: &str) -> Result<wafleet_core::outgoing::Row, String> {
    let (id, rest) = arg
        .split_once(':')
        .ok_or("give ID:TITLE or ID:TITLE:DESCRIPTION (casa:A domicilio:Mañana antes de las 12)")?;
    let (title, description) = match rest.split_once(':') {
        Some((title, description)) => (title, Some(description.to_string())),
        None => (rest, None),
    };
    Ok(wafleet_core::outgoing::Row {
        id: id.to_string(),
        title: title.to_string(),
        description,
    })
}

/// An approved template, as `conversation template` and `conversation start` take it.
#[derive(clap::Args)]
struct TemplateArgs {
    /// The template's name as approved in the business account.
    name: String,
    /// Its language code, e.g. es, en_US.
    #[arg(long)]
    language: String,
    /// The body's parameters ({{1}}, {{2}}…), in order; repeatable.
    #[arg(long = "param")]
    params: Vec<String>,
    /// The body's parameters by name, for a template created with named parameters
    /// ({{order_id}}): NAME=VALUE; repeatable, in any order. Not with --param.
    #[arg(long = "named", value_name = "NAME=VALUE", value_parser = name_value,
          conflicts_with = "params")]
    named: Vec<(String, String)>,
    /// The header's image, for a template whose header is one: an https link Meta fetches, or
    /// the id of media uploaded to Meta (`conversation upload` prints one for a file on this
    /// machine).
    #[arg(long, value_name = "URL|ID", group = "header", value_parser = header_media)]
    header_image: Option<String>,
    /// The header's document (an order's invoice): an https link or a media id.
    #[arg(long, value_name = "URL|ID", group = "header", value_parser = header_media)]
    header_document: Option<String>,
    /// The header's video: an https link or a media id.
    #[arg(long, value_name = "URL|ID", group = "header", value_parser = header_media)]
    header_video: Option<String>,
    /// The document's name as the customer sees it (invoice.pdf), with --header-document.
    #[arg(long, requires = "header_document")]
    filename: Option<String>,
    /// The parameter of a text header ({{1}} in "Pedido {{1}}").
    #[arg(long, value_name = "VALUE", group = "header")]
    header_text: Option<String>,
    /// The named parameter of a text header: NAME=VALUE ({{order_id}} in "Pedido
    /// {{order_id}}").
    #[arg(long, value_name = "NAME=VALUE", value_parser = name_value, group = "header")]
    header_named: Option<(String, String)>,
    /// A URL button's suffix ({{1}} at the end of its address): INDEX:VALUE, INDEX the button's
    /// position in the template from 0; repeatable.
    #[arg(long = "url-button", value_name = "INDEX:VALUE", value_parser = index_value)]
    url_buttons: Vec<(u8, String)>,
    /// A quick reply's payload (what comes back when the customer taps it): INDEX:PAYLOAD;
    /// repeatable.
    #[arg(long = "quick-reply", value_name = "INDEX:PAYLOAD", value_parser = index_value)]
    quick_replies: Vec<(u8, String)>,
    /// A copy-code button's code: INDEX:CODE.
    #[arg(long = "copy-code", value_name = "INDEX:CODE", value_parser = index_value)]
    copy_codes: Vec<(u8, String)>,
    /// As for `reply`.
    #[arg(long)]
    reference: Option<String>,
    #[arg(long)]
    agent: Option<String>,
}

/// `INDEX:VALUE` of a template button (`0:1042`).
fn index_value(arg: &str) -> Result<(u8, String), String> {
    let (index, value) = arg
        .split_once(':')
        .ok_or("give INDEX:VALUE, INDEX the button's position from 0 (0:1042)")?;
    let index = index
        .trim()
        .parse::<u8>()
        .map_err(|_| format!("{index:?} is not a button's position (0 to 9)"))?;
    Ok((index, value.to_string()))
}

/// A template header's file: an https link or a media id. A file on this machine (`@PATH`, as a
/// reply takes it) is refused with the way to send it: a template is checked against Meta's and
/// recorded by its reference before anything is sent, so its header names media Meta has already.
fn header_media(arg: &str) -> Result<String, String> {
    if arg.starts_with('@') {
        return Err(
            "a template's header takes an https link or a media id, not a file on this \
                    machine: upload it with `wafleetctl conversation upload PNID PATH` and give \
                    the media id it prints"
                .into(),
        );
    }
    Ok(arg.to_string())
}

/// `NAME=VALUE` of a named template parameter (`order_id=1042`).
fn name_value(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or("give NAME=VALUE, NAME the parameter's name in the template (order_id=1042)")?;
    let name = name.trim();
    if name.is_empty() {
        return Err("the parameter's name is empty: give NAME=VALUE".into());
    }
    Ok((name.to_string(), value.to_string()))
}

impl TemplateArgs {
    /// The body's parameters the flags give: in order (--param) or by name (--named).
    fn body_params(&self) -> wafleet_core::format::template::Params {
        use wafleet_core::format::template::Params;
        if self.named.is_empty() {
            Params::Positional(self.params.clone())
        } else {
            Params::Named(self.named.iter().cloned().collect())
        }
    }

    /// The header and buttons the flags give.
    fn components(
        &self,
    ) -> (
        Option<wafleet_core::format::template::Header>,
        Vec<wafleet_core::format::template::Button>,
    ) {
        use wafleet_core::format::template::{Button, Header, Media, Params};
        // A link is an https address; anything else is a media id.
        let media = |given: &str| {
            let (link, id) = if given.contains("://") {
                (Some(given.to_string()), None)
            } else {
                (None, Some(given.to_string()))
            };
            Media {
                link,
                id,
                filename: self.filename.clone(),
            }
        };
        let header = match (
            &self.header_image,
            &self.header_document,
            &self.header_video,
            &self.header_text,
        ) {
            (Some(i), _, _, _) => Some(Header::Image(media(i))),
            (_, Some(d), _, _) => Some(Header::Document(media(d))),
            (_, _, Some(v), _) => Some(Header::Video(media(v))),
            (_, _, _, Some(t)) => Some(Header::Text {
                parameters: vec![t.clone()].into(),
            }),
            _ => self.header_named.clone().map(|(name, value)| Header::Text {
                parameters: Params::Named([(name, value)].into()),
            }),
        };
        let buttons = self
            .url_buttons
            .iter()
            .map(|(index, parameter)| Button::Url {
                index: *index,
                parameter: parameter.clone(),
            })
            .chain(
                self.quick_replies
                    .iter()
                    .map(|(index, payload)| Button::QuickReply {
                        index: *index,
                        payload: payload.clone(),
                    }),
            )
            .chain(
                self.copy_codes
                    .iter()
                    .map(|(index, code)| Button::CopyCode {
                        index: *index,
                        coupon_code: code.clone(),
                    }),
            )
            .collect();
        (header, buttons)
    }
}

/// The approved template `t` names on channel `pnid`, as Meta lists it, to check the send
/// against before it is recorded ([`wafleet::agents::template_definition`], with the workers'
/// `WAFLEET_GRAPH_*` settings); `None` without `WAFLEET_ENCRYPTION_KEY` (the token cannot be
/// opened) and whenever the API would not check it either.
async fn template_definition(
    pool: &db::PgPool,
    pnid: &str,
    t: &TemplateArgs,
) -> anyhow::Result<Option<wafleet_core::format::template::TemplateText>> {
    let cipher = wafleet::config::var("WAFLEET_ENCRYPTION_KEY")
        .map(|_| wafleet::config::cipher_from_env())
        .transpose()?;
    let settings = wafleet::stages::process::GraphSettings::from_env()?;
    let graph =
        wafleet::graph::GraphClient::new(&settings.base_url, &settings.version, settings.timeout);
    let wordings = wafleet::stages::wording::Wordings::default();
    Ok(wafleet::agents::template_definition(
        pool,
        &wordings,
        &graph,
        cipher.as_ref(),
        pnid,
        t.name.trim(),
        t.language.trim(),
    )
    .await?)
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List quarantined updates (ids, reasons, numbers, kinds; never message text).
    List {
        #[arg(
            long,
            default_value_t = 50,
            value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
        )]
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
    /// Lift the pause of a channel's sends now, once what paused them (an expired token, a
    /// locked account, a missing permission) is fixed: held replies go out within 30 s. A
    /// channel that is not paused is said so (exit 0).
    Resume { phone_number_id: String },
    /// Clear the account restrictions recorded for a channel from Meta's account_update webhook,
    /// once Meta lifted them before the expiration it gave: `channel show`, the API's
    /// meta_status and the wafleet_channel_account_restricted gauge (within 15 s) follow. The
    /// rest of what Meta said is kept; its next restriction is recorded as before. Logged with
    /// the operator's login.
    ClearRestriction { phone_number_id: String },
    /// Set one model of a channel's chain (tried in position order, then the canned reply).
    Model(ModelArgs),
    /// Remove a channel's own models (the process-wide ones apply again).
    ClearModels { phone_number_id: String },
    /// Change one setting: system_prompt, history_limit, canned_reply, handover_keywords
    /// (comma-separated), handover_ack ('' sends none), media_notice ('' sends none),
    /// session_timeout_secs, human_release_after_secs (or `never`), send_rate_per_sec, pair_burst,
    /// business_hours, business_hours_tz, after_hours_ack, images_to_model, transcribe_audio,
    /// documents_to_model, locations_to_model (on/off), reply_gather_ms (0 to 10000). Workers
    /// see it within seconds.
    Set {
        phone_number_id: String,
        setting: String,
        /// The value; `@PATH` reads it from a file, `-` from standard input.
        value: String,
    },
    /// Put one setting back to its default (the built-in text or keywords, the documented
    /// number).
    Unset {
        phone_number_id: String,
        setting: String,
    },
    /// Print a channel's settings (no secrets).
    Show { phone_number_id: String },
    /// Ask Meta about the number with the channel's stored access token (GET
    /// /{version}/{phone_number_id}): its display number, verified name and quality rating
    /// beside what is stored, or what is wrong (a bad token, a number Meta does not know, a
    /// missing permission, Meta out of reach), exiting 1; with --waba-id stored, also whether
    /// the app is subscribed to the account's webhooks (GET /{version}/{waba_id}/subscribed_apps),
    /// exiting 1 when it is not.
    Check { phone_number_id: String },
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
        #[arg(
            long,
            default_value_t = 50,
            value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
        )]
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
    /// Meta's App ID of the app that signs the number's webhooks: the number is then also
    /// served on /webhooks/whatsapp/APP_ID, which checks only that app's secrets.
    #[arg(long)]
    app_id: Option<String>,
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
    /// Serve only these customers (phone numbers in any notation, stored as their digits, or
    /// business-scoped ids); repeatable.
    #[arg(long = "allow")]
    allowlist: Vec<String>,
    /// Remove the allowlist (serve everyone).
    #[arg(long, conflicts_with = "allowlist")]
    clear_allowlist: bool,
    /// After storing, run `channel check`: exit 1 if Meta does not take the token for the
    /// number (the channel stays stored).
    #[arg(long)]
    check: bool,
}

/// A secret flag's value: the secret itself, `env:NAME` or `file:PATH`. Errors name the variable
/// or file, never the value.
fn secret_value(arg: &str) -> anyhow::Result<String> {
    let value = if let Some(name) = arg.strip_prefix("env:") {
        anyhow::ensure!(
            !name.is_empty(),
            "env: needs the name of a variable (env:NAME)"
        );
        std::env::var(name).with_context(|| format!("{name} is not set (or not UTF-8)"))?
    } else if let Some(path) = arg.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        without_trailing_newline(text)
    } else {
        arg.to_string()
    };
    anyhow::ensure!(!value.is_empty(), "an empty secret was given");
    Ok(value)
}

#[tokio::main]
async fn main() -> Result<(), wafleet::telemetry::Exit> {
    Ok(run().await?)
}

/// Logs to standard error, for the commands that leave an audit line (an operator's change of
/// what Meta said): standard output stays the command's answer.
fn audit_log() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::GenerateKey = cli.command {
        println!("{}", Cipher::generate_key_text());
        return Ok(());
    }
    if let Command::SendWebhook { url, secret, file } = &cli.command {
        let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
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
    let pool = pg_from_env().await?;
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
            conversation(&pool, ConversationCommand::Release { conversation_id }).await?;
        }
        Command::Conversation(cmd) => {
            if let Err(e) = conversation(&pool, *cmd).await {
                return Err(pointing_to_survivor(&pool, e).await);
            }
        }
        Command::Usage { from, to } => usage(&pool, from, to).await?,
        Command::ApiToken(cmd) => api_token(&pool, cmd).await?,
        Command::Knowledge(cmd) => knowledge(&pool, cmd).await?,
        Command::Customer(CustomerCommand::Erase {
            phone_number_id,
            customer,
            yes,
        }) => {
            anyhow::ensure!(yes, "erasing cannot be undone: add --yes to confirm");
            let (keys, mut con) = redis_side().await?;
            let erased = wafleet::erasure::erase_customer(
                &pool,
                &mut con,
                &keys,
                &phone_number_id,
                &customer,
            )
            .await?;
            let Some(erased) = erased else {
                // A number no channel has may still hold a customer in quarantine (erased
                // above); when it held nothing, the number is more likely mistyped.
                anyhow::ensure!(
                    channel_exists(&pool, &phone_number_id).await?,
                    "no channel {phone_number_id}, and nothing kept aside names that customer"
                );
                anyhow::bail!("number {phone_number_id} has no such customer");
            };
            let ids: Vec<String> = erased
                .rows
                .conversations
                .iter()
                .map(i64::to_string)
                .collect();
            println!(
                "erased: {} conversation(s) ({}), {} message(s), {} outbound part(s), {} \
                 kept-aside Redis entr(y/ies), {} parked job(s)",
                ids.len(),
                ids.join(","),
                erased.rows.messages,
                erased.rows.outbound,
                erased.stream_entries_removed(),
                erased.parked_jobs
            );
        }
        Command::Channel(ChannelCommand::Add(a)) => {
            let spec = ChannelSpec {
                phone_number_id: a.phone_number_id.clone(),
                waba_id: a.waba_id,
                app_id: a.app_id,
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
                enabled: None,
            };
            let saved = channels::upsert(&pool, &cipher()?, &spec).await?;
            println!(
                "channel {} {} (id {})",
                a.phone_number_id,
                if saved.created { "added" } else { "saved" },
                saved.id
            );
            if let Some((pause, lifted)) = &saved.pause {
                println!("{}", pause_after_save(&a.phone_number_id, pause, *lifted));
            }
            hint_quarantine(&a.phone_number_id).await;
            if a.check {
                let pnid = &a.phone_number_id;
                let report = check::check(&pool, &cipher()?, pnid)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:#}; the channel was stored all the same"))?;
                for line in report {
                    println!("{line}");
                }
            }
        }
        Command::Channel(ChannelCommand::Check { phone_number_id }) => {
            for line in check::check(&pool, &cipher()?, &phone_number_id).await? {
                println!("{line}");
            }
        }
        Command::Channel(ChannelCommand::List) => {
            // Every channel, from what is stored; decrypting only tells which secrets open, so
            // one channel whose secrets do not decrypt is named, not hidden.
            let all = channels::summaries(&pool, &[]).await?;
            let opened: HashMap<String, bool> = channels::list_readable(&pool, &cipher()?)
                .await?
                .into_iter()
                .map(|c| (c.phone_number_id, c.access_token.is_some()))
                .collect();
            for line in channel_table(&all, &opened) {
                println!("{line}");
            }
        }
        Command::Channel(ChannelCommand::Resume { phone_number_id }) => {
            match channels::resume(&pool, &phone_number_id).await? {
                channels::Resumed::NoChannel => anyhow::bail!("no channel {phone_number_id}"),
                channels::Resumed::NotPaused => {
                    println!("channel {phone_number_id} is not paused: nothing to resume")
                }
                channels::Resumed::Lifted(pause) => println!(
                    "channel {phone_number_id} resumed: its sends were paused {}; held replies \
                     go out within 30 s (if Meta refuses them again, the channel pauses again)",
                    pause.describe()
                ),
            }
        }
        Command::Channel(ChannelCommand::ClearRestriction { phone_number_id }) => {
            use wafleet::store::account_state;
            let cleared = account_state::clear_restrictions(&pool, &phone_number_id)
                .await
                .context("clearing the channel's recorded restrictions")?
                .ok_or_else(|| anyhow::anyhow!("no channel {phone_number_id}"))?;
            if cleared.is_empty() {
                println!(
                    "channel {phone_number_id} has no account restriction recorded: nothing to \
                     clear"
                );
            } else {
                audit_log();
                let operator = std::env::var("SUDO_USER")
                    .or_else(|_| std::env::var("USER"))
                    .unwrap_or_else(|_| "unknown".into());
                account_state::restrictions_cleared(
                    &phone_number_id,
                    &cleared,
                    &format!("wafleetctl ({operator})"),
                );
                let types = account_state::restriction_types(&cleared);
                println!(
                    "channel {phone_number_id}: cleared {}; the workers' \
                     wafleet_channel_account_restricted follows within 15 s (Meta's next \
                     account_update records a restriction again if it still holds)",
                    types.join(", ")
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
            let n = channels::clear_providers(&pool, &phone_number_id)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!("no channel with phone_number_id {phone_number_id}")
                })?;
            println!("removed {n} model(s) of channel {phone_number_id}");
        }
        Command::Channel(ChannelCommand::Disable { phone_number_id }) => {
            set(&pool, &phone_number_id, false).await?;
        }
        Command::Channel(ChannelCommand::Enable { phone_number_id }) => {
            set(&pool, &phone_number_id, true).await?;
            hint_quarantine(&phone_number_id).await;
        }
        Command::Channel(ChannelCommand::Set {
            phone_number_id,
            setting,
            value,
        }) => {
            let raw = value_or_file(value)?;
            let setting = setting_named(&setting)?;
            let change = setting.parse(&raw).map_err(anyhow::Error::msg)?;
            change_setting(&pool, &phone_number_id, &change).await?;
        }
        Command::Channel(ChannelCommand::Unset {
            phone_number_id,
            setting,
        }) => {
            let setting = setting_named(&setting)?;
            change_setting(&pool, &phone_number_id, &setting.reset()).await?;
        }
        Command::Channel(ChannelCommand::Show { phone_number_id }) => {
            let shown = settings::show(&pool, &phone_number_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no channel {phone_number_id}"))?;
            for (name, value) in shown {
                println!("{name}: {value}");
            }
            // What Meta last said of the number and its business account (the account stage).
            if let Some(state) =
                wafleet::store::account_state::state_of(&pool, &phone_number_id).await?
            {
                for (name, value) in state.describe(chrono::Utc::now()) {
                    println!("{name}: {value}");
                }
            }
        }
    }
    Ok(())
}

async fn api_token(pool: &wafleet::db::PgPool, cmd: ApiTokenCommand) -> anyhow::Result<()> {
    use wafleet::store::api_tokens;
    match cmd {
        ApiTokenCommand::Add {
            name,
            numbers,
            admin,
        } => {
            // Stored trimmed, and named so in what is printed and by `revoke`.
            let name = name.trim();
            anyhow::ensure!(!name.is_empty(), "give the token a name");
            let unknown = api_tokens::unknown_numbers(pool, &numbers).await?;
            anyhow::ensure!(
                unknown.is_empty(),
                "no channel has the number(s) {}",
                unknown.join(", ")
            );
            let grant = if admin {
                api_tokens::Grant::Admin
            } else {
                api_tokens::Grant::Agents(numbers.clone())
            };
            let token = api_tokens::add(pool, name, &grant)
                .await?
                .ok_or_else(|| anyhow::anyhow!("a token named {name:?} exists already"))?;
            eprintln!(
                "token {name:?} for {}; shown only now, keep it in the dashboard's secrets:",
                if admin {
                    "managing channels, every number".to_string()
                } else if numbers.is_empty() {
                    "every number".to_string()
                } else {
                    numbers.join(", ")
                }
            );
            println!("{token}");
        }
        ApiTokenCommand::List => {
            println!("name\tnumbers\tcreated\trevoked");
            for t in api_tokens::list(pool).await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    t.name,
                    if t.admin {
                        "all (admin)".to_string()
                    } else if t.phone_number_ids.is_empty() {
                        "all".to_string()
                    } else {
                        t.phone_number_ids.join(",")
                    },
                    t.created_at.format("%Y-%m-%d %H:%M"),
                    t.revoked_at.map_or_else(
                        || "-".to_string(),
                        |t| t.format("%Y-%m-%d %H:%M").to_string()
                    )
                );
            }
        }
        ApiTokenCommand::Revoke { name } => {
            let name = name.trim();
            anyhow::ensure!(
                api_tokens::revoke(pool, name).await?,
                "no live token named {name:?}"
            );
            println!("token {name:?} revoked; the API refuses it from now on");
        }
    }
    Ok(())
}

/// A value as given: `-` reads it from stdin, `@PATH` from a file (either without the trailing
/// newline editors add), anything else is the value itself.
fn value_or_file(value: String) -> anyhow::Result<String> {
    Ok(if value == "-" {
        without_trailing_newline(
            std::io::read_to_string(std::io::stdin()).context("reading the value")?,
        )
    } else if let Some(path) = value.strip_prefix('@') {
        without_trailing_newline(
            std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        )
    } else {
        value
    })
}

async fn knowledge(pool: &wafleet::db::PgPool, cmd: KnowledgeCommand) -> anyhow::Result<()> {
    use wafleet::store::knowledge::{self, Put};
    match cmd {
        KnowledgeCommand::Add {
            phone_number_id,
            title,
            text,
            language,
        } => {
            let body = value_or_file(text)?;
            let title = title.trim();
            knowledge::check(title, &body).map_err(anyhow::Error::msg)?;
            match knowledge::put(pool, &phone_number_id, title, &body, &language).await? {
                Put::Added => println!("entry {title:?} added to {phone_number_id}"),
                Put::Replaced => println!("entry {title:?} of {phone_number_id} replaced"),
                Put::NoChannel => anyhow::bail!("no channel {phone_number_id}"),
                Put::UnknownLanguage => anyhow::bail!(
                    "Postgres has no text search configuration {language:?} (spanish, english, \
                     portuguese, simple…: SELECT cfgname FROM pg_ts_config)"
                ),
            }
        }
        KnowledgeCommand::List { phone_number_id } => {
            ensure_channel(pool, &phone_number_id).await?;
            println!("title\tlanguage\tcharacters\tupdated");
            for e in knowledge::list(pool, &phone_number_id).await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    e.title,
                    e.language,
                    e.chars,
                    e.updated_at.format("%Y-%m-%d %H:%M")
                );
            }
        }
        KnowledgeCommand::Remove {
            phone_number_id,
            title,
        } => {
            ensure_channel(pool, &phone_number_id).await?;
            // Trimmed as `add` stores it.
            let title = title.trim();
            anyhow::ensure!(
                knowledge::remove(pool, &phone_number_id, title).await?,
                "{phone_number_id} has no entry {title:?}"
            );
            println!("entry {title:?} removed from {phone_number_id}");
        }
    }
    Ok(())
}

/// Fails naming `phone_number_id` when no channel has it: a command reading a number's data
/// would otherwise answer a mistyped number as one that has none (an empty list, exit 0).
async fn ensure_channel(pool: &wafleet::db::PgPool, phone_number_id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        channel_exists(pool, phone_number_id).await?,
        "no channel {phone_number_id}"
    );
    Ok(())
}

async fn channel_exists(pool: &wafleet::db::PgPool, phone_number_id: &str) -> anyhow::Result<bool> {
    let asked = [phone_number_id.to_string()];
    Ok(!channels::summaries(pool, &asked).await?.is_empty())
}

/// A value read from a file or stdin, without the trailing newline editors add.
fn without_trailing_newline(mut s: String) -> String {
    s.truncate(s.trim_end_matches(['\n', '\r']).len());
    s
}

fn setting_named(name: &str) -> anyhow::Result<settings::Setting> {
    settings::Setting::from_name(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown setting {name:?}: one of {}",
            settings::Setting::ALL.map(|s| s.name()).join(", ")
        )
    })
}

async fn change_setting(
    pool: &wafleet::db::PgPool,
    phone_number_id: &str,
    change: &settings::Change,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings::set(pool, phone_number_id, change).await?,
        "no channel {phone_number_id}"
    );
    println!(
        "{} of {phone_number_id} {}; workers use it within seconds",
        change.setting().name(),
        if *change.value() == settings::Value::Default {
            "back to its default"
        } else {
            "changed"
        }
    );
    Ok(())
}

/// After a channel was added or enabled: says how many of its updates ingest kept aside while
/// it was unknown or disabled, and how to replay them, among the latest
/// [`wafleet::quarantine::HINT_SCAN`] entries (saying so when there are more: reading a large
/// quarantine whole took every add a second). Best effort: Redis out of reach (or slow) only
/// skips the hint.
async fn hint_quarantine(phone_number_id: &str) {
    let recent = async {
        let (keys, mut con) = redis_side().await?;
        anyhow::Ok(
            wafleet::quarantine::recent_for(
                &mut con,
                &keys,
                phone_number_id,
                wafleet::quarantine::HINT_SCAN,
            )
            .await?,
        )
    };
    let Ok(Ok(r)) = tokio::time::timeout(std::time::Duration::from_secs(5), recent).await else {
        return;
    };
    let how = "`wafleetctl quarantine list` shows them, `wafleetctl quarantine replay --all` \
               enqueues those the channels now accept";
    let among = format!(
        "among the latest {} of the {} in quarantine (older ones not searched)",
        r.looked_at, r.total
    );
    match (r.matching, r.bounded()) {
        (0, false) => {}
        (0, true) => println!("no update for {phone_number_id} {among}: {how}"),
        (n, false) => println!("{n} update(s) for {phone_number_id} are in quarantine: {how}"),
        (n, true) => println!("{n} update(s) for {phone_number_id} {among}: {how}"),
    }
}

/// An error naming the entry ids asked for that `stream` did not hold.
fn all_found(ids: &[String], found: &[String], stream: &str) -> anyhow::Result<()> {
    let missing: Vec<_> = ids.iter().filter(|id| !found.contains(id)).collect();
    anyhow::ensure!(missing.is_empty(), "no entry {missing:?} in {stream}");
    Ok(())
}

/// `channel list`: a row per stored channel (`all`), given which channels' app secrets and verify
/// token decrypt (`opened`, by phone_number_id, with whether the access token does too). A token
/// stored but not decrypting shows `bad`; a channel whose app secrets or verify token do not
/// decrypt is marked, and a last line names those channels.
fn channel_table(all: &[channels::Summary], opened: &HashMap<String, bool>) -> Vec<String> {
    let row = |cells: [&str; 12]| {
        format!(
            "{:<20} {:<18} {:<18} {:<16} {:<8} {:<7} {:>7} {:>6} {:>6} {:>9}  {:<20}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9],
            cells[10],
            cells[11]
        )
        .trim_end()
        .to_string()
    };
    let mut lines = vec![row([
        "PHONE_NUMBER_ID",
        "WABA",
        "APP",
        "DISPLAY",
        "ENABLED",
        "BOT",
        "SECRETS",
        "VERIFY",
        "TOKEN",
        "ALLOWLIST",
        "PAUSED",
        "",
    ])];
    let mut unreadable = Vec::new();
    let mut paused = Vec::new();
    for c in all {
        let token_opens = opened.get(&c.phone_number_id);
        let token = match (c.access_token, token_opens) {
            (false, _) => "no",
            (true, Some(false)) => "bad",
            (true, _) => "yes",
        };
        if token_opens.is_none() {
            unreadable.push(c.phone_number_id.as_str());
        }
        if let Some(pause) = &c.sends_paused.0 {
            paused.push(format!(
                "channel {}: sends paused {}; {}",
                c.phone_number_id,
                pause.describe(),
                pause_remedy(&c.phone_number_id, pause)
            ));
        }
        let until = c
            .sends_paused
            .0
            .as_ref()
            .map(|p| p.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        lines.push(row([
            &c.phone_number_id,
            c.waba_id.as_deref().unwrap_or("-"),
            c.app_id.as_deref().unwrap_or("-"),
            c.display_phone_number.as_deref().unwrap_or("-"),
            &c.enabled.to_string(),
            &c.bot_mode,
            &c.app_secrets.to_string(),
            yes(c.verify_token),
            token,
            &c.phone_allowlist.len().to_string(),
            until.as_deref().unwrap_or("-"),
            if token_opens.is_none() {
                "does not decrypt"
            } else {
                ""
            },
        ]));
    }
    lines.extend(paused);
    if !unreadable.is_empty() {
        lines.push(format!(
            "not served: the app secrets or verify token of {} do not decrypt with \
             WAFLEET_ENCRYPTION_KEY (or WAFLEET_ENCRYPTION_KEY_PREVIOUS)",
            unreadable.join(", ")
        ));
    }
    lines
}

/// What lifts a pause: a new access token when one fixes it, else the operator's fix at Meta
/// and `channel resume`.
fn pause_remedy(pnid: &str, pause: &channels::Pause) -> String {
    if pause.new_token_lifts {
        format!(
            "a new access token lifts it (wafleetctl channel add --phone-number-id {pnid} \
             --access-token …), or, once fixed, wafleetctl channel resume {pnid}"
        )
    } else {
        format!(
            "a new access token does not fix this: fix it at Meta, then wafleetctl channel \
             resume {pnid}"
        )
    }
}

/// After `channel add` of a channel whose sends were paused: whether the save lifted the pause.
fn pause_after_save(pnid: &str, pause: &channels::Pause, lifted: bool) -> String {
    if lifted {
        format!(
            "the new access token lifts the pause of its sends ({}): held replies go out \
             within 30 s",
            pause.describe()
        )
    } else {
        format!(
            "its sends stay paused {}; {}",
            pause.describe(),
            pause_remedy(pnid, pause)
        )
    }
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

/// A conversation that is not there may have been merged into another (a customer's number
/// change): the error then names the conversation to use instead.
async fn pointing_to_survivor(pool: &wafleet::db::PgPool, e: anyhow::Error) -> anyhow::Error {
    let Some(&wafleet::agents::AgentError::NoConversation(id)) = e.downcast_ref() else {
        return e;
    };
    match wafleet::store::conversations::merged_into(pool, id).await {
        Ok(Some(into)) => anyhow::anyhow!(
            "conversation {id} was merged into conversation {into} (the customer changed \
             number): use {into}"
        ),
        _ => e,
    }
}

async fn conversation(pool: &wafleet::db::PgPool, cmd: ConversationCommand) -> anyhow::Result<()> {
    use wafleet::agents;
    use wafleet::store::agents as store;
    let age = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_string(),
            |t| {
                let secs = (chrono::Utc::now() - t).num_seconds().max(0);
                match secs {
                    s if s < 120 => format!("{s}s"),
                    s if s < 7_200 => format!("{}m", s / 60),
                    s if s < 172_800 => format!("{}h", s / 3_600),
                    s => format!("{}d", s / 86_400),
                }
            },
        )
    };
    match cmd {
        ConversationCommand::List { human, limit } => {
            let list = store::conversations(pool, human, &[], limit).await?;
            println!("id\towner\tnumber\tcustomer\tname\twaiting\tlast message\thuman since");
            for c in &list {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    c.id,
                    c.owner,
                    c.phone_number_id,
                    c.customer_key,
                    c.profile_name.as_deref().unwrap_or("-"),
                    c.waiting,
                    age(c.last_customer_message_at),
                    if c.owner == "human" {
                        age(c.handed_over_at)
                    } else {
                        "-".to_string()
                    },
                );
            }
        }
        ConversationCommand::Show {
            conversation_id,
            last,
        } => {
            let lines = store::transcript(pool, conversation_id, last)
                .await?
                .ok_or(agents::AgentError::NoConversation(conversation_id))?;
            for l in lines {
                let who = match (&l.side[..], &l.agent) {
                    ("agent", Some(name)) => format!("agent {name}"),
                    _ => l.side.clone(),
                };
                // A failed part says why: our reading and Meta's code, never Meta's words.
                let state = match (&l.state, l.failure, l.error_code) {
                    (Some(s), Some(why), Some(code)) => format!("{s}: {why}, {code}"),
                    (Some(s), Some(why), None) => format!("{s}: {why}"),
                    (s, _, _) => s.clone().unwrap_or_default(),
                };
                let state = match (state.is_empty(), &l.delivery) {
                    (false, Some(d)) => format!(" [{state}, {d}]"),
                    (false, None) => format!(" [{state}]"),
                    _ => String::new(),
                };
                let text = match (l.kind.as_str(), l.text) {
                    (_, Some(t)) => t,
                    (kind, None) => format!("({kind})"),
                };
                println!("{}  {who}{state}: {text}", l.at.format("%Y-%m-%d %H:%M:%S"));
            }
        }
        ConversationCommand::Take { conversation_id }
        | ConversationCommand::Release { conversation_id } => {
            let take = matches!(cmd, ConversationCommand::Take { .. });
            let (keys, mut con) = redis_side().await?;
            let (changed, done, already) = if take {
                let changed = agents::take(pool, &mut con, &keys, conversation_id).await?;
                (changed, "taken from the bot", "was already with a human")
            } else {
                let changed = agents::release(pool, &mut con, &keys, conversation_id).await?;
                (changed, "given back to the bot", "was not with a human")
            };
            println!(
                "conversation {conversation_id} {}",
                if changed { done } else { already }
            );
        }
        ConversationCommand::Reply {
            conversation_id,
            text,
            reference,
            agent,
            content,
        } => {
            use wafleet_core::outgoing::{Button, Content, List, Section};
            let text = match text {
                Some(t) if t == "-" => {
                    Some(std::io::read_to_string(std::io::stdin()).context("reading the message")?)
                }
                other => other,
            };
            let mut media = content.media();
            // A file on this machine (`@PATH`): checked now, before a reference is printed;
            // uploaded once the message is otherwise ready, and sent by the id Meta answers.
            let local = match media.as_mut() {
                Some(m) => match m.id.as_deref().and_then(upload::local_path) {
                    Some(path) => {
                        let file = upload::LocalFile::inspect(Some(&m.kind), path)?;
                        if m.kind == "document" && m.filename.is_none() {
                            m.filename = file.name().map(str::to_string);
                        }
                        // Stands for the id Meta will answer in the check of the message.
                        m.id = Some("0".into());
                        Some(file)
                    }
                    None => None,
                },
                None => None,
            };
            let buttons: Vec<Button> = content
                .buttons
                .iter()
                .map(|(id, title)| Button {
                    id: id.clone(),
                    title: title.clone(),
                })
                .collect();
            let list = content.list_button.as_ref().map(|label| List {
                button: label.clone(),
                sections: vec![Section {
                    title: None,
                    rows: content.rows.clone(),
                }],
            });
            let body = text.as_deref().unwrap_or_default();
            let (header, footer) = (content.header.as_deref(), content.footer.as_deref());
            let rich = match (&media, &list) {
                (Some(m), _) => {
                    if text.is_some() {
                        anyhow::bail!("a file's text is its --caption");
                    }
                    Some(Content::Media(m))
                }
                (None, Some(list)) => Some(Content::List {
                    body,
                    list,
                    header,
                    footer,
                }),
                (None, None) if !buttons.is_empty() => Some(Content::Buttons {
                    body,
                    buttons: &buttons,
                    header,
                    footer,
                }),
                (None, None) => None,
            };
            if rich.is_none() && (header.is_some() || footer.is_some()) {
                anyhow::bail!("--header and --footer go with --button or --row");
            }
            if let Some(c) = &rich {
                // Before a reference is printed: nothing is recorded for a refused message.
                c.check().map_err(agents::AgentError::from)?;
            }
            let Some(text) = text.as_deref().or(rich.as_ref().map(|_| "")) else {
                anyhow::bail!("give the message's text, a file, --button or --row");
            };
            let reference = announce_reference(reference);
            let (keys, mut con) = redis_side().await?;
            let uploaded;
            let rich = match (rich, local) {
                (Some(Content::Media(m)), Some(file)) => {
                    let mut m = m.clone();
                    m.id = Some(send_local_file(pool, conversation_id, &reference, &file).await?);
                    uploaded = m;
                    Some(Content::Media(&uploaded))
                }
                (rich, _) => rich,
            };
            let queued = match rich {
                Some(content) => {
                    agents::reply_content(
                        pool,
                        &mut con,
                        &keys,
                        &agents::ContentReply {
                            conversation_id,
                            content,
                            reference: &reference,
                            agent: agent.as_deref(),
                        },
                    )
                    .await?
                }
                None => {
                    agents::reply(
                        pool,
                        &mut con,
                        &keys,
                        &agents::Reply {
                            conversation_id,
                            text,
                            reference: &reference,
                            agent: agent.as_deref(),
                        },
                    )
                    .await?
                }
            };
            print_queued(&queued, &reference);
        }
        ConversationCommand::Upload {
            phone_number_id,
            path,
        } => {
            let path = upload::local_path(&path).unwrap_or(&path);
            let file = upload::LocalFile::inspect(None, path)?;
            let id = file.upload(pool, &phone_number_id).await?;
            println!(
                "media id {id} ({}, {}): send it by this id within 30 days",
                file.kind(),
                file.mime()
            );
        }
        ConversationCommand::Template {
            conversation_id,
            template: t,
        } => {
            let (header, buttons) = t.components();
            let body_params = t.body_params();
            let definition = match wafleet::store::conversations::phone_number_id(
                pool,
                conversation_id,
            )
            .await?
            {
                Some(pnid) => template_definition(pool, &pnid, &t).await?,
                None => None,
            };
            let reference = announce_reference(t.reference);
            let (keys, mut con) = redis_side().await?;
            let queued = agents::template(
                pool,
                &mut con,
                &keys,
                &agents::Template {
                    conversation_id,
                    name: &t.name,
                    language: &t.language,
                    body_params: &body_params,
                    header: header.as_ref(),
                    buttons: &buttons,
                    definition: definition.as_ref(),
                    reference: &reference,
                    agent: t.agent.as_deref(),
                },
            )
            .await?;
            print_queued(&queued, &reference);
        }
        ConversationCommand::Start {
            phone_number_id,
            to,
            template: t,
            bot,
        } => {
            let (header, buttons) = t.components();
            let body_params = t.body_params();
            let definition = template_definition(pool, &phone_number_id, &t).await?;
            let reference = announce_reference(t.reference);
            let (keys, mut con) = redis_side().await?;
            let (id, queued) = agents::outreach(
                pool,
                &mut con,
                &keys,
                &agents::Outreach {
                    phone_number_id: &phone_number_id,
                    to: &to,
                    name: &t.name,
                    language: &t.language,
                    body_params: &body_params,
                    header: header.as_ref(),
                    buttons: &buttons,
                    definition: definition.as_ref(),
                    reference: &reference,
                    agent: t.agent.as_deref(),
                    answerer: if bot {
                        agents::Answerer::Bot
                    } else {
                        agents::Answerer::Human
                    },
                },
            )
            .await?;
            println!("conversation {id}");
            print_queued(&queued, &reference);
        }
    }
    Ok(())
}

/// The media id to send the local `file` by in `conversation_id`: the one an earlier run with
/// `reference` uploaded and recorded (a repeated request neither uploads nor sends again), else
/// the file uploaded now for the conversation's number. An upload whose run then fails before
/// the message is recorded is made again by the repeat (Meta keeps the unused one 30 days).
async fn send_local_file(
    pool: &db::PgPool,
    conversation_id: i64,
    reference: &str,
    file: &upload::LocalFile,
) -> anyhow::Result<String> {
    if let Some(id) = upload::recorded_id(pool, conversation_id, reference, file.kind()).await? {
        println!(
            "uploaded before with this reference as {}: media id {id}",
            file.kind()
        );
        return Ok(id);
    }
    // Refused now (the bot has the conversation, its window closed…): said before the file is
    // uploaded for nothing. Recording the message checks again.
    let pnid = wafleet::agents::check_writable(pool, conversation_id, "agent").await?;
    let id = file.upload(pool, &pnid).await?;
    println!("uploaded as {}: media id {id}", file.kind());
    Ok(id)
}

/// The reference of an agent's request, a fresh one when not given, printed before anything can
/// fail: a request that fails after recording the message must be repeated with it, or the
/// message waits unsent (or goes twice).
fn announce_reference(reference: Option<String>) -> String {
    let reference = reference.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    eprintln!("reference {reference} (repeat with --reference {reference} if this fails)");
    reference
}

async fn usage(
    pool: &wafleet::db::PgPool,
    from: Option<chrono::NaiveDate>,
    to: Option<chrono::NaiveDate>,
) -> anyhow::Result<()> {
    use wafleet::store::usage;
    let today = chrono::Utc::now().date_naive();
    let to = to.unwrap_or(today);
    let from = from.unwrap_or(to - chrono::Days::new(29));
    anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
    let start = from.and_time(chrono::NaiveTime::MIN).and_utc();
    let end = (to + chrono::Days::new(1))
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    println!("usage from {from} to {to} (UTC, both days included)");
    println!(
        "number\tcustomer messages\tconversations\tmodel replies\tcanned\tinput tokens\t\
         output tokens\tsent by bot\tsent by agents\tfailed\thandovers"
    );
    for u in usage::by_channel(pool, start, end).await? {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            u.phone_number_id,
            u.customer_messages,
            u.conversations,
            u.model_replies,
            u.canned_replies,
            u.input_tokens,
            u.output_tokens,
            u.sent_by_bot,
            u.sent_by_agents,
            u.failed,
            u.handovers
        );
    }
    let models = usage::by_model(pool, start, end).await?;
    if !models.is_empty() {
        println!();
        println!("number\tprovider\tmodel\treplies\tinput tokens\toutput tokens");
        for m in models {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                m.phone_number_id, m.provider, m.model, m.replies, m.input_tokens, m.output_tokens
            );
        }
    }
    Ok(())
}

fn print_queued(queued: &wafleet::agents::Queued, reference: &str) {
    println!(
        "{} in {} part(s) (outbound {}; {}); reference {reference}",
        match (queued.fresh, queued.queued) {
            (true, _) => "queued",
            (false, true) => "recorded before with this reference; its send queued again",
            (false, false) => "recorded and settled before with this reference; nothing sent",
        },
        queued.part_ids.len(),
        queued
            .part_ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        queued.states.join(","),
    );
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
    let (keys, mut con) = redis_side().await?;
    match cmd {
        DeadCommand::List { stage, limit } => {
            list_stream(&mut con, &keys.dead(stage), *limit, |letter| {
                format!(
                    "{}  source={} {}  deliveries={} attempts={}  reason={}",
                    letter.id(),
                    letter.text("source_stream"),
                    letter.text("source_id"),
                    letter.text("deliveries"),
                    letter.text("attempts"),
                    letter.text("reason")
                )
            })
            .await?;
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
            // The workers' retention: a replay's mark lasts as long as they keep dead letters.
            let retention = wafleet::worker::retention::from_env()?;
            let pg = pg_from_env().await?;
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
                        retention,
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
    let (keys, mut con) = redis_side().await?;
    match cmd {
        QuarantineCommand::List { limit } => {
            list_stream(&mut con, &keys.quarantine(), *limit, |kept| {
                format!(
                    "{}  reason={}  channel={}  kind={}  received_at={}",
                    kept.id(),
                    kept.text("reason"),
                    kept.text("channel"),
                    kept.text("kind"),
                    kept.text("received_at")
                )
            })
            .await?;
        }
        QuarantineCommand::Replay { ids, all } => {
            anyhow::ensure!(
                *all || !ids.is_empty(),
                "give entry ids to replay, or --all"
            );
            let pg = pg_from_env().await?;
            let cipher = wafleet::config::cipher_from_env()?;
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

/// Prints the first `limit` entries of `stream`, a line each, then on stderr how many it left
/// out: a list cut at `--limit` must not pass for the whole stream (an operator replaying the
/// ids shown would leave the rest).
async fn list_stream(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    limit: usize,
    line: impl Fn(&wafleet::streams::StoredEntry) -> String,
) -> anyhow::Result<()> {
    let shown = wafleet::streams::read_first(con, stream, limit).await?;
    for entry in &shown {
        println!("{}", line(entry));
    }
    let total: usize = redis::cmd("XLEN").arg(stream).query_async(con).await?;
    if total > shown.len() {
        eprintln!(
            "{} of {total} entries shown (--limit {total} shows them all)",
            shown.len()
        );
    }
    Ok(())
}

/// A small pool on `DATABASE_URL`.
async fn pg_from_env() -> anyhow::Result<wafleet::db::PgPool> {
    db::connect(
        &required("DATABASE_URL")?,
        2,
        parsed("WAFLEET_PG_PLAN_CACHE_MODE", Default::default())?,
    )
    .await
}

/// The key layout and a Redis connection, for the commands that work on streams (they need no
/// encryption key).
async fn redis_side() -> anyhow::Result<(wafleet::streams::Keys, redis::aio::MultiplexedConnection)>
{
    let layout = wafleet::config::RedisLayout::from_env()?;
    let keys = wafleet::streams::Keys::new(layout.redis_prefix.clone(), layout.partitions);
    // The errors name the variable, never the URL (it may hold a password).
    let mut con = redis::Client::open(layout.redis_url.expose().as_str())
        .context("parsing REDIS_URL")?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis (REDIS_URL)")?;
    // A replay on another count than the workers' would enqueue where no worker reads.
    wafleet::partition_count::check(&mut con, keys.prefix(), keys.partitions()).await?;
    Ok((keys, con))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn channel_list_names_the_channels_whose_secrets_do_not_decrypt_and_a_bad_token() {
        let summary = |pnid: &str, token: bool| channels::Summary {
            phone_number_id: pnid.into(),
            waba_id: Some("W1".into()),
            app_id: None,
            display_phone_number: None,
            name: "shop".into(),
            enabled: true,
            bot_mode: "on".into(),
            app_secrets: 1,
            verify_token: true,
            access_token: token,
            phone_allowlist: Vec::new(),
            updated_at: chrono::Utc::now(),
            sends_paused: Default::default(),
        };
        let all = [
            summary("111", true),
            summary("222", true),
            summary("333", false),
            summary("444", true),
        ];
        // 111 fine; 222's token does not decrypt; 333 has none; 444's app secrets do not.
        let opened = HashMap::from([
            ("111".to_string(), true),
            ("222".to_string(), false),
            ("333".to_string(), false),
        ]);
        let lines = channel_table(&all, &opened);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        let token = |line: &str| line.split_whitespace().nth(8).map(str::to_string);
        assert_eq!(token(&lines[1]).as_deref(), Some("yes"));
        assert_eq!(token(&lines[2]).as_deref(), Some("bad"));
        assert_eq!(token(&lines[3]).as_deref(), Some("no"));
        assert!(lines[4].ends_with("does not decrypt"), "{}", lines[4]);
        assert!(!lines[1].ends_with("does not decrypt"));
        assert!(
            lines[5].starts_with("not served: the app secrets or verify token of 444 do not"),
            "{}",
            lines[5]
        );
    }

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
