//! The per-channel settings an operator changes by name (`wafleetctl channel set|unset|show`),
//! each a column of `channels`. Workers see a change within seconds (their channel cache).

use sqlx::PgPool;
use wafleet_core::format::split;

/// A setting, by the name operators use (the column's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    SystemPrompt,
    HistoryLimit,
    CannedReply,
    HandoverKeywords,
    HandoverAck,
    MediaNotice,
    SessionTimeoutSecs,
    HumanReleaseAfterSecs,
    SendRatePerSec,
    PairBurst,
    BusinessHours,
    BusinessHoursTz,
    AfterHoursAck,
    ImagesToModel,
    TranscribeAudio,
    DocumentsToModel,
    LocationsToModel,
    ReplyGatherMs,
}

/// What a setting is set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i32),
    Bool(bool),
    Text(String),
    List(Vec<String>),
    /// The column's default: the built-in text for the texts, the built-in list of keywords,
    /// the documented number for the numbers.
    Default,
    /// `human_release_after_secs` only: conversations stay with humans until released.
    Never,
}

impl Setting {
    pub const ALL: [Setting; 18] = [
        Setting::SystemPrompt,
        Setting::HistoryLimit,
        Setting::CannedReply,
        Setting::HandoverKeywords,
        Setting::HandoverAck,
        Setting::MediaNotice,
        Setting::SessionTimeoutSecs,
        Setting::HumanReleaseAfterSecs,
        Setting::SendRatePerSec,
        Setting::PairBurst,
        Setting::BusinessHours,
        Setting::BusinessHoursTz,
        Setting::AfterHoursAck,
        Setting::ImagesToModel,
        Setting::TranscribeAudio,
        Setting::DocumentsToModel,
        Setting::LocationsToModel,
        Setting::ReplyGatherMs,
    ];

    /// The setting's name, which is also its column.
    pub fn name(self) -> &'static str {
        match self {
            Setting::SystemPrompt => "system_prompt",
            Setting::HistoryLimit => "history_limit",
            Setting::CannedReply => "canned_reply",
            Setting::HandoverKeywords => "handover_keywords",
            Setting::HandoverAck => "handover_ack",
            Setting::MediaNotice => "media_notice",
            Setting::SessionTimeoutSecs => "session_timeout_secs",
            Setting::HumanReleaseAfterSecs => "human_release_after_secs",
            Setting::SendRatePerSec => "send_rate_per_sec",
            Setting::PairBurst => "pair_burst",
            Setting::BusinessHours => "business_hours",
            Setting::BusinessHoursTz => "business_hours_tz",
            Setting::AfterHoursAck => "after_hours_ack",
            Setting::ImagesToModel => "images_to_model",
            Setting::TranscribeAudio => "transcribe_audio",
            Setting::DocumentsToModel => "documents_to_model",
            Setting::LocationsToModel => "locations_to_model",
            Setting::ReplyGatherMs => "reply_gather_ms",
        }
    }

    pub fn from_name(name: &str) -> Option<Setting> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Parses a value given as text: a positive number for the numbers (`never` too for
    /// `human_release_after_secs`; at most Meta's 1,000 messages/s for `send_rate_per_sec` and
    /// its burst of 45 for `pair_burst`; 0 to 10,000 for `reply_gather_ms`), comma-separated
    /// phrases with a letter or digit each for the keywords, anything for the texts (`''` for
    /// the acknowledgement or the notice means none is sent).
    pub fn parse(self, raw: &str) -> Result<Change, String> {
        self.parse_value(raw).map(|value| Change {
            setting: self,
            value,
        })
    }

    /// Back to the setting's default.
    pub fn reset(self) -> Change {
        Change {
            setting: self,
            value: Value::Default,
        }
    }

    /// The most a number setting takes: what Meta allows.
    fn max(self) -> Option<i32> {
        match self {
            Setting::SendRatePerSec => Some(1000),
            Setting::PairBurst => Some(45),
            _ => None,
        }
    }

    /// The longest `reply_gather_ms` takes: every answer waits that long, and a customer waiting
    /// longer for a first word thinks nobody is there.
    pub const MAX_REPLY_GATHER_MS: i32 = 10_000;

    fn parse_value(self, raw: &str) -> Result<Value, String> {
        match self {
            // What `show` (and the API's GET) prints where no text is set: given back as a value
            // (a console saving every field it read), it would be sent to customers as written.
            Setting::SystemPrompt
            | Setting::CannedReply
            | Setting::HandoverKeywords
            | Setting::HandoverAck
            | Setting::MediaNotice
            | Setting::AfterHoursAck
                if SHOWN_FOR_NO_TEXT.contains(&raw.trim()) =>
            {
                Err(format!(
                    "{} {:?} is how a setting left at its default or sending nothing is shown, \
                     not a value: unset it for the default (null in the API), or give '' to send \
                     nothing where that is allowed",
                    self.name(),
                    raw.trim()
                ))
            }
            Setting::SystemPrompt | Setting::CannedReply if raw.trim().is_empty() => Err(format!(
                "{} cannot be empty: unset it for the built-in one",
                self.name()
            )),
            // Sent to customers as one message: blank (other than '' for none) or longer than
            // WhatsApp takes would fail every time.
            Setting::CannedReply
            | Setting::HandoverAck
            | Setting::MediaNotice
            | Setting::AfterHoursAck
                if !raw.is_empty() && raw.trim().is_empty() =>
            {
                Err(format!("{} is blank: give '' to send none", self.name()))
            }
            Setting::CannedReply
            | Setting::HandoverAck
            | Setting::MediaNotice
            | Setting::AfterHoursAck
                if split::measure(raw) > split::WHATSAPP_MAX_CHARS =>
            {
                // Counted as the splitter counts a reply: Meta may count UTF-16 units.
                Err(format!(
                    "{} is longer than WhatsApp's 4,096 characters (an emoji counts as two)",
                    self.name()
                ))
            }
            Setting::SystemPrompt
            | Setting::CannedReply
            | Setting::HandoverAck
            | Setting::MediaNotice
            | Setting::AfterHoursAck => Ok(Value::Text(raw.to_string())),
            // Stored in its canonical form, which is also how `show` prints it.
            Setting::BusinessHours => raw
                .parse::<wafleet_core::hours::Schedule>()
                .map(|s| Value::Text(s.to_string()))
                .map_err(|e| format!("business_hours: {e}")),
            Setting::BusinessHoursTz => raw
                .trim()
                .parse::<chrono_tz::Tz>()
                .map(|tz| Value::Text(tz.name().to_string()))
                .map_err(|_| {
                    format!(
                        "business_hours_tz takes an IANA time zone (America/Bogota, Europe/Madrid, \
                         UTC…), not {raw:?}"
                    )
                }),
            Setting::HandoverKeywords => {
                let list: Vec<String> = raw
                    .split(',')
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty())
                    .collect();
                if list.is_empty() {
                    return Err("give at least one phrase, comma-separated".into());
                }
                // Matched on letters and digits only: a phrase without any would never match.
                match list
                    .iter()
                    .find(|k| wafleet_core::handover::normalize(k).is_empty())
                {
                    Some(k) => Err(format!(
                        "{k:?} has no letter or digit: keywords are matched on words"
                    )),
                    None => Ok(Value::List(list)),
                }
            }
            Setting::ImagesToModel
            | Setting::TranscribeAudio
            | Setting::DocumentsToModel
            | Setting::LocationsToModel => match raw.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" => Ok(Value::Bool(true)),
                "off" | "false" | "no" => Ok(Value::Bool(false)),
                other => Err(format!("{} is on or off, not {other:?}", self.name())),
            },
            Setting::HumanReleaseAfterSecs if raw.trim() == "never" => Ok(Value::Never),
            Setting::ReplyGatherMs => match raw.trim().parse::<i32>() {
                Ok(n) if (0..=Self::MAX_REPLY_GATHER_MS).contains(&n) => Ok(Value::Int(n)),
                _ => Err(format!(
                    "reply_gather_ms takes milliseconds from 0 (answer at once) to {}, not {raw:?}",
                    Self::MAX_REPLY_GATHER_MS
                )),
            },
            Setting::HistoryLimit
            | Setting::SessionTimeoutSecs
            | Setting::HumanReleaseAfterSecs
            | Setting::SendRatePerSec
            | Setting::PairBurst => match raw.trim().parse::<i32>() {
                Ok(n) if n > self.max().unwrap_or(i32::MAX) => Err(format!(
                    "{} takes at most {} (what Meta allows), not {n}",
                    self.name(),
                    self.max().unwrap_or(i32::MAX)
                )),
                Ok(n) if n > 0 => Ok(Value::Int(n)),
                _ => Err(format!(
                    "{} takes a whole number above 0{}, not {raw:?}",
                    self.name(),
                    if self == Setting::HumanReleaseAfterSecs {
                        " or `never`"
                    } else {
                        ""
                    }
                )),
            },
        }
    }
}

/// A checked change of one setting. Made only by [`Setting::parse`] and [`Setting::reset`], so
/// its value always fits its setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    setting: Setting,
    value: Value,
}

impl Change {
    pub fn setting(&self) -> Setting {
        self.setting
    }
    pub fn value(&self) -> &Value {
        &self.value
    }
}

/// Makes one change to a channel's settings; `false` when there is no such channel.
pub async fn set<'e>(
    db: impl sqlx::PgExecutor<'e>,
    phone_number_id: &str,
    change: &Change,
) -> sqlx::Result<bool> {
    let Change { setting, value } = change;
    // The column comes from `Setting::name`, never from the caller's text.
    let column = setting.name();
    let q = match value {
        Value::Default => {
            format!("UPDATE channels SET {column} = DEFAULT WHERE phone_number_id = $1")
        }
        Value::Never => format!("UPDATE channels SET {column} = NULL WHERE phone_number_id = $1"),
        _ => format!("UPDATE channels SET {column} = $2 WHERE phone_number_id = $1"),
    };
    let q = sqlx::query(&q).bind(phone_number_id);
    let q = match value {
        Value::Int(n) => q.bind(*n),
        Value::Bool(b) => q.bind(*b),
        Value::Text(t) => q.bind(t.as_str()),
        Value::List(l) => q.bind(l),
        Value::Default | Value::Never => q,
    };
    Ok(q.execute(db).await?.rows_affected() == 1)
}

/// What [`show`] prints for a text setting that holds no text of the channel's own; refused as a
/// value.
const SHOWN_FOR_NO_TEXT: [&str; 3] = ["(default)", "(none)", "(the handover_ack)"];

/// Every setting of a channel as text (`(default)` where the built-in applies, `(none)` where
/// nothing is sent, `never` for a human release that never comes); `None` when there is no such
/// channel.
pub async fn show(
    pool: &PgPool,
    phone_number_id: &str,
) -> sqlx::Result<Option<Vec<(&'static str, String)>>> {
    let row: Option<Vec<Option<String>>> = sqlx::query_scalar(
        "SELECT ARRAY[system_prompt, history_limit::text, canned_reply,
                      array_to_string(handover_keywords, ', '), handover_ack, media_notice,
                      session_timeout_secs::text, COALESCE(human_release_after_secs::text, 'never'),
                      send_rate_per_sec::text, pair_burst::text,
                      COALESCE(business_hours, 'always open'), business_hours_tz, after_hours_ack,
                      CASE WHEN images_to_model THEN 'on' ELSE 'off' END,
                      CASE WHEN transcribe_audio THEN 'on' ELSE 'off' END,
                      CASE WHEN documents_to_model THEN 'on' ELSE 'off' END,
                      CASE WHEN locations_to_model THEN 'on' ELSE 'off' END,
                      reply_gather_ms::text]
           FROM channels WHERE phone_number_id = $1",
    )
    .bind(phone_number_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|values| {
        Setting::ALL
            .iter()
            .zip(values)
            .map(|(s, v)| {
                let shown = match (s, v) {
                    // NULL or '' sends no notice; '' sends no acknowledgement.
                    (Setting::MediaNotice, None) => "(none)".to_string(),
                    (Setting::AfterHoursAck, None) => "(the handover_ack)".to_string(),
                    (
                        Setting::MediaNotice | Setting::HandoverAck | Setting::AfterHoursAck,
                        Some(v),
                    ) if v.is_empty() => "(none)".to_string(),
                    (_, Some(v)) => v,
                    (_, None) => "(default)".to_string(),
                };
                (s.name(), shown)
            })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_before_anything_is_written() {
        let n = |s: Setting, raw: &str| s.parse(raw).map(|c| c.value().clone());
        assert_eq!(n(Setting::HistoryLimit, "12"), Ok(Value::Int(12)));
        assert!(n(Setting::HistoryLimit, "0").is_err());
        assert!(n(Setting::PairBurst, "-3").is_err());
        assert!(n(Setting::SendRatePerSec, "lots").is_err());
        assert_eq!(n(Setting::HumanReleaseAfterSecs, "never"), Ok(Value::Never));
        assert_eq!(n(Setting::ImagesToModel, " ON"), Ok(Value::Bool(true)));
        assert_eq!(n(Setting::ImagesToModel, "no"), Ok(Value::Bool(false)));
        assert!(n(Setting::ImagesToModel, "maybe").is_err());
        assert_eq!(n(Setting::TranscribeAudio, "on"), Ok(Value::Bool(true)));
        assert!(n(Setting::TranscribeAudio, "sometimes").is_err());
        assert!(n(Setting::SessionTimeoutSecs, "never").is_err());
        assert_eq!(
            n(Setting::HandoverKeywords, " asesor, hablar con alguien ,,"),
            Ok(Value::List(vec![
                "asesor".into(),
                "hablar con alguien".into()
            ]))
        );
        assert!(n(Setting::HandoverKeywords, " , ").is_err());
        // A phrase of punctuation or emoji only would never match.
        assert!(n(Setting::HandoverKeywords, "asesor, ¿?").is_err());
        assert!(n(Setting::HandoverKeywords, "🙋").is_err());
        // Meta's ceilings.
        assert_eq!(n(Setting::PairBurst, "45"), Ok(Value::Int(45)));
        assert!(n(Setting::PairBurst, "46").is_err());
        assert_eq!(n(Setting::SendRatePerSec, "1000"), Ok(Value::Int(1000)));
        assert!(n(Setting::SendRatePerSec, "1001").is_err());
        assert_eq!(Setting::PairBurst.reset().value(), &Value::Default);
        // Hours are stored in their canonical form; a zone must be one of the IANA database.
        assert_eq!(
            n(Setting::BusinessHours, "Mon-Tue 09:00-18:00"),
            Ok(Value::Text("mon 09:00-18:00; tue 09:00-18:00".into()))
        );
        assert!(n(Setting::BusinessHours, "mon 18:00-09:00").is_err());
        assert_eq!(
            n(Setting::BusinessHoursTz, " America/Bogota "),
            Ok(Value::Text("America/Bogota".into()))
        );
        assert!(n(Setting::BusinessHoursTz, "Bogota").is_err());
        assert!(n(Setting::AfterHoursAck, "  ").is_err());
        assert!(n(Setting::SystemPrompt, "  ").is_err());
        assert_eq!(n(Setting::HandoverAck, ""), Ok(Value::Text(String::new())));
        assert!(n(Setting::HandoverAck, "  ").is_err());
        assert!(n(Setting::MediaNotice, &"x".repeat(4097)).is_err());
        // 4096 chars, but 4097 UTF-16 units, as Meta may count them.
        assert!(n(Setting::CannedReply, &format!("{}👍", "x".repeat(4095))).is_err());
        assert!(n(Setting::CannedReply, &"👍".repeat(2048)).is_ok());
        // 0 turns the wait off; more than 10 s would leave the customer thinking nobody is there.
        assert_eq!(n(Setting::ReplyGatherMs, "0"), Ok(Value::Int(0)));
        assert_eq!(n(Setting::ReplyGatherMs, " 2500 "), Ok(Value::Int(2500)));
        assert!(n(Setting::ReplyGatherMs, "10001").is_err());
        assert!(n(Setting::ReplyGatherMs, "-1").is_err());
        assert!(n(Setting::ReplyGatherMs, "2s").is_err());
        assert_eq!(Setting::from_name("pair_burst"), Some(Setting::PairBurst));
        assert_eq!(Setting::from_name("access_token"), None);
        for s in Setting::ALL {
            assert_eq!(Setting::from_name(s.name()), Some(s));
        }
    }

    #[test]
    fn what_show_prints_for_a_default_or_for_nothing_is_refused_as_a_value() {
        // A console that reads a channel and writes its settings back (GET then PUT), or an
        // operator copying `channel show`, gave these as values: customers got "(default)" as the
        // canned reply and "(none)" as the media notice, and "default" became the only handover
        // keyword.
        let texts = [
            Setting::SystemPrompt,
            Setting::CannedReply,
            Setting::HandoverKeywords,
            Setting::HandoverAck,
            Setting::MediaNotice,
            Setting::AfterHoursAck,
        ];
        for setting in texts {
            for shown in ["(default)", "(none)", " (the handover_ack) "] {
                let refused = setting.parse(shown).unwrap_err();
                assert!(
                    refused.contains("not a value"),
                    "{setting:?} {shown}: {refused}"
                );
            }
        }
        // Such words inside a text are the business's own.
        assert!(
            Setting::CannedReply
                .parse("Sorry (none of us is here)")
                .is_ok()
        );
        assert!(Setting::HandoverKeywords.parse("default, asesor").is_ok());
    }
}
