//! The account stage end to end: signed webhooks of `phone_number_quality_update`,
//! `account_update` and `message_template_status_update` through the real ingest and the real
//! worker (stage `account` only) against real Redis and Postgres; what is recorded on the
//! channels, announced on the dashboard stream and measured, and what is kept as it was.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use wafleet::stages::account::AccountStage;
use wafleet::worker::{Handler, Job, Outcome};
use wafleet_tests::*;

const WABA: &str = "102290129340398";
/// The flagged number's display number: Meta names the number by it, stored here in another
/// notation.
const DISPLAY: &str = "+1 555-078-3881";

struct System {
    cfg: TestConfig,
    pg: sqlx::PgPool,
    ingest: Ingest,
    /// The number Meta's quality updates name, and another number of the same account. Each
    /// test has its own: the metrics of a test process are shared by its tests.
    number: String,
    other: String,
    _worker: Option<Worker>,
}

/// A phone_number_id no other test uses.
fn unique_number() -> String {
    format!(
        "1065{:011}",
        uuid::Uuid::new_v4().as_u128() % 100_000_000_000
    )
}

async fn system() -> System {
    system_with(true).await
}

/// The system, with its worker running or not (updates then wait on the events stream, as they
/// do for a first start).
async fn system_with(worker: bool) -> System {
    let cfg = TestConfig::new().await;
    let (number, other) = (unique_number(), unique_number());
    cfg.add_channel(&number, |c| {
        c.waba_id = Some(WABA.into());
        c.display_phone_number = Some(DISPLAY.into());
    })
    .await;
    cfg.add_channel(&other, |c| {
        c.waba_id = Some(WABA.into());
        c.display_phone_number = Some("15550000002".into());
    })
    .await;
    let pg = cfg.pg().await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let worker = match worker {
        true => Some(Worker::start(cfg.worker_settings(&["account"])).await),
        false => None,
    };
    System {
        cfg,
        pg,
        ingest,
        number,
        other,
        _worker: worker,
    }
}

/// A webhook of one change of `field` for business account `waba`.
fn change(waba: &str, field: &str, value: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": waba, "time": 1_748_454_394, "changes": [{"value": value, "field": field}]}]
    }))
    .unwrap()
}

impl System {
    async fn post(&self, body: &[u8]) {
        let answer = self.ingest.post_signed(body, APP_SECRET).await;
        assert_eq!(answer.status(), 200);
    }

    /// Until the account stage has acknowledged every entry of the events stream (it keeps
    /// them: nothing is left pending or unread by its group).
    async fn processed(&self) {
        let keys = self.cfg.keys();
        let con = self.cfg.redis().await;
        eventually(
            "every event read and acknowledged",
            Duration::from_secs(30),
            || {
                let mut con = con.clone();
                let stream = keys.events();
                async move {
                    let figures =
                        wafleet::worker::sampler::stream_figures(&mut con, &stream, "account")
                            .await
                            .ok()?;
                    (figures.len > 0 && figures.lag == 0 && figures.pending == 0).then_some(())
                }
            },
        )
        .await;
    }

    /// The dashboard stream's events (JSON), oldest first.
    async fn dashboard(&self) -> Vec<Value> {
        let mut con = self.cfg.redis().await;
        read_stream(&mut con, &self.cfg.keys().handover_stream())
            .await
            .into_iter()
            .map(|(_, f)| serde_json::from_slice(&f["event"]).unwrap())
            .collect()
    }

    async fn column(&self, pnid: &str, column: &str) -> Option<String> {
        sqlx::query_scalar(&format!(
            "SELECT {column}::text FROM channels WHERE phone_number_id = $1"
        ))
        .bind(pnid)
        .fetch_one(&self.pg)
        .await
        .unwrap()
    }

    async fn events_kept(&self) -> usize {
        let mut con = self.cfg.redis().await;
        read_stream(&mut con, &self.cfg.keys().events()).await.len()
    }

    async fn dead_letters(&self) -> usize {
        let mut con = self.cfg.redis().await;
        con.xlen(self.cfg.keys().dead("account")).await.unwrap()
    }
}

fn quality(event: &str, limit: &str) -> Value {
    json!({"display_phone_number": "15550783881", "event": event, "current_limit": limit})
}

#[tokio::test]
async fn a_flagged_number_is_recorded_on_its_channel_measured_and_announced() {
    let s = system().await;
    let (number, other) = (s.number.as_str(), s.other.as_str());
    s.post(&change(
        WABA,
        "phone_number_quality_update",
        quality("FLAGGED", "TIER_10K"),
    ))
    .await;
    s.processed().await;
    assert_eq!(
        s.column(number, "quality_event").await.as_deref(),
        Some("FLAGGED")
    );
    assert_eq!(
        s.column(number, "messaging_limit").await.as_deref(),
        Some("TIER_10K")
    );
    // The account's other number is not the one Meta named.
    assert_eq!(s.column(other, "quality_event").await, None);
    let events = s.dashboard().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["kind"], "number_quality");
    assert_eq!(events[0]["reason"], "flagged");
    assert_eq!(events[0]["phone_number_id"], number);
    assert_eq!(events[0]["messaging_limit"], "TIER_10K");
    let flagged = format!("wafleet_channel_quality_flagged{{channel=\"{number}\"}}");
    assert_eq!(s.ingest.metric(&flagged).await, 1.0);
    assert_eq!(
        s.ingest
            .metric(&format!(
                "wafleet_channel_messaging_limit{{channel=\"{number}\"}}"
            ))
            .await,
        10_000.0
    );
    assert_eq!(
        s.ingest
            .metric(&format!(
                "wafleet_number_quality_events_total{{channel=\"{number}\",event=\"FLAGGED\"}}"
            ))
            .await,
        1.0
    );
    // The entry stays on the events stream for inspection (the retention trims it).
    assert_eq!(s.events_kept().await, 1);

    // Unflagged, a tier down, then shown as such.
    s.post(&change(
        WABA,
        "phone_number_quality_update",
        quality("DOWNGRADE", "TIER_1K"),
    ))
    .await;
    s.processed().await;
    let state = wafleet::store::account_state::state_of(&s.pg, number)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            state.quality_event.as_deref(),
            state.messaging_limit.as_deref()
        ),
        (Some("DOWNGRADE"), Some("TIER_1K"))
    );
    assert!(!state.flagged());
    assert_eq!(s.ingest.metric(&flagged).await, 0.0);
}

#[tokio::test]
async fn an_account_update_is_recorded_on_every_channel_of_the_account_and_pauses_nothing() {
    let s = system().await;
    let (number, other) = (s.number.as_str(), s.other.as_str());
    s.post(&change(
        WABA,
        "account_update",
        json!({"event": "DISABLED_UPDATE",
               "ban_info": {"waba_ban_state": "DISABLE", "waba_ban_date": "April 17, 2025"}}),
    ))
    .await;
    s.processed().await;
    for pnid in [number, other] {
        assert_eq!(
            s.column(pnid, "account_ban_state").await.as_deref(),
            Some("DISABLE")
        );
        assert_eq!(
            s.ingest
                .metric(&format!(
                    "wafleet_channel_account_disabled{{channel=\"{pnid}\"}}"
                ))
                .await,
            1.0
        );
        // The sender's pause is Meta's answer to a send, not this webhook's.
        assert_eq!(s.column(pnid, "sends_paused_until").await, None);
    }
    // A restriction later: recorded, the ban state kept from before.
    s.post(&change(
        WABA,
        "account_update",
        json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [
            {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
             "expiration": "2099-04-19T13:59:20+0000"}]}),
    ))
    .await;
    s.processed().await;
    let state = wafleet::store::account_state::state_of(&s.pg, other)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.account_event.as_deref(), Some("ACCOUNT_RESTRICTION"));
    assert_eq!(state.account_ban_state.as_deref(), Some("DISABLE"));
    assert_eq!(state.restrictions().len(), 1);
    assert_eq!(
        s.ingest
            .metric(&format!(
                "wafleet_channel_account_restricted{{channel=\"{other}\"}}"
            ))
            .await,
        1.0
    );
    let kinds: Vec<(String, String)> = s
        .dashboard()
        .await
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_string(),
                e["phone_number_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("disabled_update".to_string(), number.to_string()),
            ("disabled_update".to_string(), other.to_string()),
            ("account_restriction".to_string(), number.to_string()),
            ("account_restriction".to_string(), other.to_string()),
        ]
    );
}

#[tokio::test]
async fn a_rejected_template_is_announced_to_every_number_of_its_account_and_counted() {
    let s = system().await;
    let (number, other) = (s.number.as_str(), s.other.as_str());
    s.post(&change(
        WABA,
        "message_template_status_update",
        json!({"event": "REJECTED", "message_template_id": 1_689_556_908_129_835_u64,
               "message_template_name": "abandoned_cart", "message_template_language": "en",
               "reason": "INVALID_FORMAT", "message_template_category": "MARKETING",
               "rejection_info": {"reason": "Meta's prose, never passed on"}}),
    ))
    .await;
    s.processed().await;
    let events = s.dashboard().await;
    assert_eq!(events.len(), 2, "{events:?}");
    for (event, pnid) in events.iter().zip([number, other]) {
        assert_eq!(event["kind"], "template_status");
        assert_eq!(event["reason"], "rejected");
        assert_eq!(event["phone_number_id"], pnid);
        assert_eq!(event["template_name"], "abandoned_cart");
        assert_eq!(event["template_id"], "1689556908129835");
        assert_eq!(event["meta_reason"], "INVALID_FORMAT");
        assert!(!event.to_string().contains("prose"), "{event}");
    }
    assert!(
        s.ingest
            .metric("wafleet_template_status_events_total{event=\"REJECTED\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn unknown_events_and_shapes_are_kept_and_never_fail_the_stage() {
    let s = system().await;
    let number = s.number.as_str();
    for body in [
        change(WABA, "security", json!({"event": "PIN_CHANGED"})),
        change(
            WABA,
            "phone_number_quality_update",
            quality("SOMETHING_NEW", "TIER_9Z"),
        ),
        change(WABA, "phone_number_quality_update", json!([1, 2])),
        change(WABA, "account_update", json!({"event": {"nested": true}})),
        change(
            WABA,
            "message_template_status_update",
            json!({"event": "BRAND_NEW"}),
        ),
    ] {
        s.post(&body).await;
    }
    s.processed().await;
    assert_eq!(s.events_kept().await, 5);
    assert_eq!(s.dead_letters().await, 0);
    // An event Meta adds is recorded as Meta wrote it (and counted as `other`).
    assert_eq!(
        s.column(number, "quality_event").await.as_deref(),
        Some("SOMETHING_NEW")
    );
    assert_eq!(
        s.ingest
            .metric(&format!(
                "wafleet_number_quality_events_total{{channel=\"{number}\",event=\"other\"}}"
            ))
            .await,
        1.0
    );
    // A later flag is still taken: the stage went on.
    s.post(&change(
        WABA,
        "phone_number_quality_update",
        quality("FLAGGED", "TIER_1K"),
    ))
    .await;
    s.processed().await;
    assert_eq!(
        s.column(number, "quality_event").await.as_deref(),
        Some("FLAGGED")
    );
}

impl System {
    /// The stage as a worker runs it, to drive one job at a time.
    fn stage(&self) -> AccountStage {
        AccountStage {
            pg: self.pg.clone(),
            redis: wafleet::shared_redis::SharedRedis::new(
                &self.cfg.redis_url,
                wafleet::shared_redis::CONNECT_TIMEOUT,
            )
            .unwrap(),
            keys: self.cfg.keys(),
            wordings: Default::default(),
            announce_max_age: wafleet::stages::account::DEFAULT_ANNOUNCE_MAX_AGE,
        }
    }
}

/// The job the stage would run for the events stream's entry `id`.
async fn job_of(s: &System, index: usize) -> Job {
    let mut con = s.cfg.redis().await;
    let (id, fields) = read_stream(&mut con, &s.cfg.keys().events())
        .await
        .swap_remove(index);
    Job {
        conv: String::from_utf8(fields["conv"].clone()).unwrap(),
        fields: fields
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect(),
        id,
        partition: 0,
        attempt: 0,
        deliveries: 1,
        unfinished_held_runs: 0,
    }
}

#[tokio::test]
async fn the_same_update_twice_is_recorded_and_announced_once_and_an_older_one_changes_nothing() {
    let s = system().await;
    let number = s.number.as_str();
    let flagged = change(
        WABA,
        "phone_number_quality_update",
        quality("FLAGGED", "TIER_10K"),
    );
    s.post(&flagged).await;
    // Meta's redelivery: ingest's mark answers it without a second entry.
    s.post(&flagged).await;
    s.post(&change(
        WABA,
        "phone_number_quality_update",
        quality("UNFLAGGED", "TIER_10K"),
    ))
    .await;
    s.processed().await;
    assert_eq!(s.events_kept().await, 2);
    assert_eq!(
        s.column(number, "quality_event").await.as_deref(),
        Some("UNFLAGGED")
    );
    assert_eq!(s.dashboard().await.len(), 2);

    // A job run again (a crash after its work, a takeover), and the older update run after the
    // newer one: nothing recorded again, nothing announced again.
    let stage = s.stage();
    let (first, second) = (job_of(&s, 0).await, job_of(&s, 1).await);
    assert_eq!(first.conv, format!("waba:{WABA}"));
    for job in [&second, &first, &second] {
        assert_eq!(stage.handle(job).await, Outcome::Done);
    }
    assert_eq!(
        s.column(number, "quality_event").await.as_deref(),
        Some("UNFLAGGED")
    );
    assert_eq!(
        s.column(number, "quality_entry").await.as_deref(),
        Some(second.id.as_str())
    );
    assert_eq!(s.dashboard().await.len(), 2);
    assert_eq!(
        s.ingest
            .metric(&format!(
                "wafleet_number_quality_events_total{{channel=\"{number}\",event=\"FLAGGED\"}}"
            ))
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_update_for_an_account_no_channel_names_is_kept_and_changes_nothing() {
    let s = system().await;
    let (number, other) = (s.number.as_str(), s.other.as_str());
    for field_value in [
        ("phone_number_quality_update", quality("FLAGGED", "TIER_1K")),
        (
            "account_update",
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "DISABLE"}}),
        ),
        (
            "message_template_status_update",
            json!({"event": "PAUSED", "message_template_name": "promo", "message_template_language": "es"}),
        ),
    ] {
        s.post(&change("999000111222333", field_value.0, field_value.1))
            .await;
    }
    s.processed().await;
    // Kept on the events stream as ingest always did (it has no app to check the account's
    // signature against), acknowledged, and nothing recorded, announced or dead-lettered.
    assert_eq!(s.events_kept().await, 3);
    assert_eq!(s.dead_letters().await, 0);
    assert!(s.dashboard().await.is_empty());
    for pnid in [number, other] {
        assert_eq!(s.column(pnid, "quality_event").await, None);
        assert_eq!(s.column(pnid, "account_event").await, None);
    }
    assert!(
        s.ingest
            .metric("wafleet_meta_changes_total{result=\"unknown_account\"}")
            .await
            >= 3.0
    );
    // A number the account has but no channel stores as its display number: kept, not
    // recorded on another number.
    s.post(&change(
        WABA,
        "phone_number_quality_update",
        json!({"display_phone_number": "15559999999", "event": "FLAGGED"}),
    ))
    .await;
    s.processed().await;
    for pnid in [number, other] {
        assert_eq!(s.column(pnid, "quality_event").await, None);
    }
}

#[tokio::test]
async fn an_update_older_than_the_announce_age_is_recorded_but_neither_announced_nor_counted() {
    // A first start: what Meta said hours ago waits on the events stream.
    let s = system_with(false).await;
    let number = s.number.as_str();
    s.post(&change(
        WABA,
        "phone_number_quality_update",
        quality("DOWNGRADE", "TIER_1K"),
    ))
    .await;
    s.post(&change(
        WABA,
        "account_update",
        json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [
            {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
             "expiration": "2099-04-19T13:59:20+0000"}]}),
    ))
    .await;
    s.post(&change(
        WABA,
        "message_template_status_update",
        json!({"event": "PAUSED", "message_template_name": "promo", "message_template_language": "es"}),
    ))
    .await;
    let stage = s.stage();
    let old = chrono::Utc::now() - wafleet::stages::account::DEFAULT_ANNOUNCE_MAX_AGE * 2;
    let old = old.timestamp_millis().to_string();
    for index in 0..3 {
        let mut job = job_of(&s, index).await;
        job.fields.insert("received_at".into(), old.clone());
        assert_eq!(stage.handle(&job).await, Outcome::Done);
    }
    // Recorded: channel show, the API and the gauges are right…
    assert_eq!(
        s.column(number, "quality_event").await.as_deref(),
        Some("DOWNGRADE")
    );
    assert_eq!(
        s.column(number, "messaging_limit").await.as_deref(),
        Some("TIER_1K")
    );
    assert_eq!(
        s.ingest
            .metric(&format!(
                "wafleet_channel_account_restricted{{channel=\"{number}\"}}"
            ))
            .await,
        1.0
    );
    // …but nothing on the dashboard stream, and none of the counters the alerts watch moved.
    assert!(s.dashboard().await.is_empty(), "{:?}", s.dashboard().await);
    for counter in [
        format!("wafleet_number_quality_events_total{{channel=\"{number}\"}}"),
        format!("wafleet_account_events_total{{channel=\"{number}\"}}"),
        "wafleet_template_status_events_total{event=\"PAUSED\"}".to_string(),
    ] {
        assert_eq!(s.ingest.metric(&counter).await, 0.0, "{counter}");
    }
    assert!(
        s.ingest
            .metric(
                "wafleet_meta_changes_total{field=\"phone_number_quality_update\",result=\"late\"}"
            )
            .await
            >= 1.0
    );

    // What Meta says now is announced and counted as before.
    s.post(&change(
        WABA,
        "phone_number_quality_update",
        quality("FLAGGED", "TIER_1K"),
    ))
    .await;
    assert_eq!(stage.handle(&job_of(&s, 3).await).await, Outcome::Done);
    let events = s.dashboard().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "flagged");
    assert_eq!(
        s.ingest
            .metric(&format!(
                "wafleet_number_quality_events_total{{channel=\"{number}\",event=\"FLAGGED\"}}"
            ))
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_restriction_an_operator_clears_leaves_the_gauge_and_metas_next_one_is_recorded() {
    let s = system().await;
    let number = s.number.as_str();
    let restricted = format!("wafleet_channel_account_restricted{{channel=\"{number}\"}}");
    let restriction = |expiration: &str| {
        change(
            WABA,
            "account_update",
            json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [
                {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
                 "expiration": expiration}]}),
        )
    };
    s.post(&restriction("2099-04-19T13:59:20+0000")).await;
    s.processed().await;
    assert_eq!(s.ingest.metric(&restricted).await, 1.0);

    let cleared = wafleet::store::account_state::clear_restrictions(&s.pg, number)
        .await
        .unwrap()
        .expect("the channel");
    assert_eq!(cleared.len(), 1);
    assert_eq!(
        cleared[0].restriction_type,
        "RESTRICTED_BIZ_INITIATED_MESSAGING"
    );
    assert_eq!(s.column(number, "account_restrictions").await, None);
    // The rest of what Meta said is kept; the account's other number keeps its own record.
    assert_eq!(
        s.column(number, "account_event").await.as_deref(),
        Some("ACCOUNT_RESTRICTION")
    );
    assert!(s.column(&s.other, "account_restrictions").await.is_some());
    // The gauge follows at the stage's next sample.
    let ingest = &s.ingest;
    eventually(
        "the restricted gauge cleared",
        Duration::from_secs(40),
        || {
            let restricted = restricted.clone();
            async move { (ingest.metric(&restricted).await == 0.0).then_some(()) }
        },
    )
    .await;
    // The same update run again (a takeover) records nothing again.
    assert_eq!(s.stage().handle(&job_of(&s, 0).await).await, Outcome::Done);
    assert_eq!(s.column(number, "account_restrictions").await, None);
    // A second clear finds nothing; a number no channel has is said so.
    assert_eq!(
        wafleet::store::account_state::clear_restrictions(&s.pg, number)
            .await
            .unwrap(),
        Some(vec![])
    );
    assert_eq!(
        wafleet::store::account_state::clear_restrictions(&s.pg, "1065000000000000")
            .await
            .unwrap(),
        None
    );

    // Meta's next restriction is recorded and shown as before.
    s.post(&restriction("2099-05-01T00:00:00+0000")).await;
    s.processed().await;
    assert_eq!(s.ingest.metric(&restricted).await, 1.0);
}

/// Meta's text message fixture (display number `15550783881`), for business number `pnid`, as
/// message `n`.
fn text_for(pnid: &str, n: usize) -> Vec<u8> {
    String::from_utf8(fixture("text.json"))
        .unwrap()
        .replace("106540352242922", pnid)
        .replace("wamid.HBgL", &format!("wamid.{n}.{pnid}."))
        .into_bytes()
}

#[tokio::test]
async fn a_channels_display_number_is_learnt_once_from_its_messages_so_its_quality_updates_match() {
    let cfg = TestConfig::new().await;
    // A number added without its display number, and one stored in another notation.
    let (bare, formatted) = (unique_number(), unique_number());
    cfg.add_channel(&bare, |c| c.waba_id = Some(WABA.into()))
        .await;
    cfg.add_channel(&formatted, |c| {
        c.waba_id = Some("102290129340399".into());
        c.display_phone_number = Some(DISPLAY.into());
    })
    .await;
    let s = System {
        pg: cfg.pg().await,
        ingest: Ingest::start(cfg.ingest_settings()).await,
        _worker: Some(Worker::start(cfg.worker_settings(&["account"])).await),
        number: bare.clone(),
        other: formatted.clone(),
        cfg,
    };
    let learnt = "wafleet_display_numbers_learned_total";
    s.post(&text_for(&formatted, 0)).await;
    s.post(&text_for(&bare, 0)).await;
    eventually(
        "the display number recorded",
        Duration::from_secs(10),
        || async { s.column(&bare, "display_phone_number").await },
    )
    .await;
    assert_eq!(
        s.column(&bare, "display_phone_number").await.as_deref(),
        Some("15550783881")
    );
    // The same digits in the operator's notation are kept as written.
    assert_eq!(
        s.column(&formatted, "display_phone_number")
            .await
            .as_deref(),
        Some(DISPLAY)
    );
    // Cheap: more messages write nothing more, nor do webhooks that disagree on the number
    // (a simulator's beside real traffic): within the minute after a write, the channel's number
    // is not written again, whatever the value, so the fleet's registries do not reload per message.
    for n in 1..6 {
        s.post(&text_for(&bare, n)).await;
        s.post(&text_for(&formatted, n)).await;
        let other = String::from_utf8(text_for(&bare, 100 + n))
            .unwrap()
            .replace("15550783881", "15550000000");
        s.post(other.as_bytes()).await;
    }

    // Meta's quality update names the number by its display number: matched and recorded.
    s.post(&change(
        WABA,
        "phone_number_quality_update",
        quality("FLAGGED", "TIER_1K"),
    ))
    .await;
    s.processed().await;
    assert_eq!(
        s.column(&bare, "quality_event").await.as_deref(),
        Some("FLAGGED")
    );
    assert_eq!(s.ingest.metric(learnt).await, 1.0);
    assert_eq!(
        s.ingest
            .metric(&format!("{learnt}{{result=\"recorded\"}}"))
            .await,
        1.0
    );
}
