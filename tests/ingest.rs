//! Ingest against a real Redis and Postgres: every fixture, batching, dedup under concurrency,
//! every refusal, quarantine, channel changes, and a Redis outage.

use std::collections::HashMap;
use std::time::Duration;

use wafleet::config::IngestSettings;
use wafleet::store::channels::set_enabled;
use wafleet_core::envelope::Update;
use wafleet_tests::redis_server::RedisServer;
use wafleet_tests::*;

async fn setup() -> (TestConfig, Ingest) {
    let cfg = TestConfig::new().await;
    for number in FIXTURE_NUMBERS {
        cfg.add_channel(number, |_| {}).await;
    }
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    (cfg, ingest)
}

/// `wafleet_ingest_requests_total` of `outcome` on `ingest`.
async fn requests(ingest: &Ingest, outcome: &str) -> f64 {
    ingest
        .metric(&format!(
            r#"wafleet_ingest_requests_total{{outcome="{outcome}"}}"#
        ))
        .await
}

fn inbound_streams(cfg: &TestConfig) -> Vec<String> {
    let keys = cfg.keys();
    (0..keys.partitions()).map(|p| keys.inbound(p)).collect()
}

fn status_streams(cfg: &TestConfig) -> Vec<String> {
    let keys = cfg.keys();
    (0..keys.partitions()).map(|p| keys.status(p)).collect()
}

/// The wamids of every entry on the inbound streams, sorted (each entry must be a message).
async fn inbound_wamids(
    con: &mut redis::aio::MultiplexedConnection,
    cfg: &TestConfig,
) -> Vec<String> {
    let mut wamids: Vec<_> = all_updates(con, &inbound_streams(cfg))
        .await
        .into_iter()
        .map(|(_, u)| match u {
            Update::Message(m) => m.wamid,
            other => panic!("non-message on inbound: {other:?}"),
        })
        .collect();
    wamids.sort();
    wamids
}

fn text_body(pnid: &str, from: &str, wamid: &str, text: &str) -> Vec<u8> {
    text_message(pnid, from, wamid, 1_700_000_000, text)
}

#[tokio::test]
async fn every_fixture_yields_exactly_its_expected_entry() {
    let (cfg, ingest) = setup().await;
    let mut con = cfg.redis().await;
    // (fixture, stream kind, check on the parsed update)
    type Check = fn(&Update) -> bool;
    let cases: &[(&str, &str, Check)] = &[
        ("text.json", "inbound", |u| {
            matches!(u, Update::Message(m)
            if m.message_type == "text" && m.text().as_deref() == Some("Does it come in another color?")
               && m.wa_id.as_deref() == Some("16505551234") && m.timestamp == Some(1749416383)
               && m.profile_name.as_deref() == Some("Sheena Nelson"))
        }),
        ("image.json", "inbound", |u| {
            matches!(u, Update::Message(m)
            if m.message_type == "image" && m.user_id.as_deref() == Some("US.13491208655302741918")
               && m.raw.get().contains("65463453"))
        }),
        ("interactive_button_reply.json", "inbound", |u| {
            matches!(u, Update::Message(m)
            if m.message_type == "interactive" && m.text().as_deref() == Some("Cancel")
               && m.context_id.as_deref() == Some("wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MEM2RUJFNkI0RENGQTVDRjUA"))
        }),
        ("reaction.json", "inbound", |u| {
            matches!(u, Update::Message(m)
            if m.message_type == "reaction" && m.raw.get().contains(r"\ud83d\ude2e"))
        }),
        ("unsupported.json", "inbound", |u| {
            matches!(u, Update::Message(m)
            if m.message_type == "unsupported" && m.raw.get().contains("131051"))
        }),
        ("smb_message_echoes.json", "inbound", |u| {
            matches!(u, Update::Echo(e)
            if e.to == "16505551234" && e.text().as_deref().is_some_and(|t| t.starts_with("Here's the info"))
               && e.timestamp == Some(1739321024))
        }),
        ("status_sent.json", "status", |u| {
            matches!(u, Update::Status(s)
            if s.status == "sent" && s.recipient_id.as_deref() == Some("919096053970"))
        }),
        ("status_failed_131047.json", "status", |u| {
            matches!(u, Update::Status(s)
            if s.status == "failed" && s.error_code == Some(131047))
        }),
    ];
    // Each fixture goes to a deployment of its own (fresh key prefix, same channels): two pywa
    // fixtures share a wamid, which one deployment rightly treats as a redelivery (checked below).
    for (name, kind, check) in cases {
        let own = cfg.with_fresh_prefix();
        let ingest = Ingest::start(own.ingest_settings()).await;
        let res = ingest.post_signed(&fixture(name), APP_SECRET).await;
        assert_eq!(res.status(), 200, "{name}");
        let inbound = all_updates(&mut con, &inbound_streams(&own)).await;
        let status = all_updates(&mut con, &status_streams(&own)).await;
        let want = if *kind == "inbound" { (1, 0) } else { (0, 1) };
        assert_eq!((inbound.len(), status.len()), want, "{name}");
        let entry = inbound.iter().chain(&status).next().unwrap();
        assert!(check(&entry.1), "{name}: entry does not match: {entry:?}");
        let keys = own.keys();
        for s in [keys.events(), keys.quarantine(), keys.ingest_dead()] {
            assert!(read_stream(&mut con, &s).await.is_empty(), "{name}: {s}");
        }
        ingest.stop().await.unwrap();
    }
    // The recorder is process-wide: every deployment above counted into it.
    assert_eq!(
        ingest
            .metric(r#"wafleet_ingest_updates_total{result="enqueued"}"#)
            .await,
        8.0
    );

    // image.json and reaction.json share (phone_number_id, wamid): in one deployment the second
    // is a duplicate delivery.
    assert_eq!(
        ingest
            .post_signed(&fixture("image.json"), APP_SECRET)
            .await
            .status(),
        200
    );
    assert_eq!(
        ingest
            .post_signed(&fixture("reaction.json"), APP_SECRET)
            .await
            .status(),
        200
    );
    assert_eq!(all_updates(&mut con, &inbound_streams(&cfg)).await.len(), 1);
    assert_eq!(requests(&ingest, "duplicate").await, 1.0);
}

/// Meta's largest batch, 1,000 messages in one POST (about 400 KB here, parsed off the serving
/// thread): every message is enqueued once, and its redelivery is all duplicates.
#[tokio::test]
async fn a_batch_of_a_thousand_messages_is_enqueued_whole_and_once() {
    let (cfg, ingest) = setup().await;
    let messages: Vec<_> = (0..1000)
        .map(|i| {
            serde_json::json!({"from": format!("57300{:04}", i % 50), "id": format!("wamid.BIG{i}"),
                "timestamp": "1700000000", "type": "text",
                "text": {"body": format!("{i}: {}", "quisiera saber cuándo llega mi pedido ".repeat(8))}})
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "W1", "changes": [{"field": "messages", "value": {
            "metadata": {"phone_number_id": "106540352242922"}, "messages": messages}}]}]
    }))
    .unwrap();
    assert!(body.len() > 256 * 1024, "{} bytes", body.len());
    assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    assert_eq!(requests(&ingest, "accepted").await, 1.0);
    let mut con = cfg.redis().await;
    let mut wamids = inbound_wamids(&mut con, &cfg).await;
    assert_eq!(wamids.len(), 1000);
    wamids.dedup();
    assert_eq!(wamids.len(), 1000);

    assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    assert_eq!(requests(&ingest, "duplicate").await, 1.0);
    assert_eq!(
        all_updates(&mut con, &inbound_streams(&cfg)).await.len(),
        1000
    );
}

#[tokio::test]
async fn a_batch_yields_one_entry_per_update_on_the_right_streams() {
    let (cfg, ingest) = setup().await;
    let p1 = "106540352242922";
    let p2 = "1122334455667";
    let body = serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "W1", "changes": [
                {"field": "messages", "value": {"metadata": {"phone_number_id": p1},
                    "contacts": [{"wa_id": "573001"}],
                    "messages": [
                        {"from": "573001", "id": "wamid.1", "timestamp": "1", "type": "text", "text": {"body": "uno"}},
                        {"from": "573002", "id": "wamid.2", "timestamp": "2", "type": "location", "location": {"latitude": 4.6, "longitude": -74.1}},
                        {"from": "573003", "id": "wamid.3", "timestamp": "3", "type": "brand_new_type", "brand_new_type": {}}],
                    "statuses": [
                        {"id": "wamid.out1", "status": "sent", "timestamp": "4", "recipient_id": "573001"},
                        {"id": "wamid.out1", "status": "delivered", "timestamp": "5", "recipient_id": "573001"},
                        {"id": "wamid.out2", "status": "read", "timestamp": "6", "recipient_id": "573002"}],
                    "errors": [{"code": 131000, "title": "Something went wrong"}]}},
                {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}]},
            {"id": "W2", "changes": [
                {"field": "messages", "value": {"metadata": {"phone_number_id": p2},
                    "messages": [{"from_user_id": "BR.77", "id": "wamid.4", "timestamp": "7", "type": "text", "text": {"body": "oi"}}]}},
                {"field": "message_template_status_update", "value": {"event": "APPROVED", "message_template_id": 1}}]}
        ]
    }))
    .unwrap();
    assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);

    let mut con = cfg.redis().await;
    let wamids = inbound_wamids(&mut con, &cfg).await;
    assert_eq!(wamids, ["wamid.1", "wamid.2", "wamid.3", "wamid.4"]);
    let inbound = all_updates(&mut con, &inbound_streams(&cfg)).await;
    assert_eq!(all_updates(&mut con, &status_streams(&cfg)).await.len(), 3);
    let events = read_stream(&mut con, &cfg.keys().events()).await;
    let kinds: Vec<_> = events
        .iter()
        .map(|(_, f)| String::from_utf8_lossy(&f["kind"]).into_owned())
        .collect();
    assert_eq!(kinds, ["error", "event", "event"]);
    // Errors and events have no id: their marks (named by content) live minutes, not the days a
    // wamid's does, so a recurrence of the same error is reported again after the window.
    let ttl_of_marks = |pattern: String| {
        let mut con = con.clone();
        async move {
            let marks: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut con)
                .await
                .unwrap();
            let mut ttls = Vec::new();
            for m in marks {
                let ttl: i64 = redis::cmd("TTL")
                    .arg(m)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                ttls.push(ttl);
            }
            ttls
        }
    };
    let prefix = cfg.keys().prefix().to_string();
    let event_ttls = ttl_of_marks(format!("{prefix}:{{events}}:seen:*")).await;
    assert_eq!(event_ttls.len(), 3, "{event_ttls:?}");
    assert!(
        event_ttls.iter().all(
            |t| (1..=wafleet_core::envelope::CONTENT_DEDUP_WINDOW.as_secs() as i64).contains(t)
        ),
        "{event_ttls:?}"
    );
    let message_ttls = ttl_of_marks(format!("{prefix}:{{p*}}:seen:*")).await;
    assert_eq!(message_ttls.len(), 7, "4 messages and 3 statuses");
    assert!(message_ttls.iter().all(|t| *t > 86_400), "{message_ttls:?}");
    // Within the window a redelivery of the POST adds nothing.
    assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    assert_eq!(read_stream(&mut con, &cfg.keys().events()).await.len(), 3);
    // Updates of one conversation share a partition: message wamid.1 and status of wamid.out1
    // (both customer 573001 on p1) sit on the same partition number.
    let partition_of = |stream: &str| stream.split(['{', '}']).nth(1).unwrap().to_string();
    let msg1 = inbound
        .iter()
        .find(|(_, u)| matches!(u, Update::Message(m) if m.wamid == "wamid.1"))
        .unwrap();
    let statuses = all_updates(&mut con, &status_streams(&cfg)).await;
    for (stream, u) in &statuses {
        if let Update::Status(s) = u
            && s.recipient_id.as_deref() == Some("573001")
        {
            assert_eq!(partition_of(stream), partition_of(&msg1.0));
        }
    }
    assert_eq!(
        ingest
            .metric(r#"wafleet_ingest_updates_total{kind="message",result="enqueued"}"#)
            .await,
        4.0
    );
    assert_eq!(
        ingest
            .metric(r#"wafleet_ingest_updates_total{kind="status",result="enqueued"}"#)
            .await,
        3.0
    );
    assert_eq!(
        ingest
            .metric(r#"wafleet_ingest_updates_total{kind="event",result="enqueued"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn the_same_post_sent_fifty_times_concurrently_is_enqueued_once() {
    let (cfg, ingest) = setup().await;
    let body = text_body(
        "106540352242922",
        "573001112233",
        "wamid.CONCURRENT",
        "hola",
    );
    let sends = (0..50).map(|_| ingest.post_signed(&body, APP_SECRET));
    let statuses: Vec<u16> = futures::future::join_all(sends)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let mut con = cfg.redis().await;
    assert_eq!(all_updates(&mut con, &inbound_streams(&cfg)).await.len(), 1);
    assert_eq!(requests(&ingest, "accepted").await, 1.0);
    assert_eq!(requests(&ingest, "duplicate").await, 49.0);
}

#[tokio::test]
async fn a_status_and_a_message_with_the_same_wamid_are_both_enqueued() {
    let (cfg, ingest) = setup().await;
    let pnid = "106540352242922";
    let message = text_body(pnid, "573001", "wamid.SAME", "hola");
    let status = serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "W", "changes": [{"field": "messages", "value": {
            "metadata": {"phone_number_id": pnid},
            "statuses": [{"id": "wamid.SAME", "status": "delivered", "timestamp": "1", "recipient_id": "573001"}]}}]}]
    }))
    .unwrap();
    for body in [&message, &status, &message, &status] {
        assert_eq!(ingest.post_signed(body, APP_SECRET).await.status(), 200);
    }
    let mut con = cfg.redis().await;
    assert_eq!(all_updates(&mut con, &inbound_streams(&cfg)).await.len(), 1);
    assert_eq!(all_updates(&mut con, &status_streams(&cfg)).await.len(), 1);
}

#[tokio::test]
async fn refusals_get_their_answer_and_move_their_counters() {
    let (cfg, ingest) = setup().await;
    let pnid = "106540352242922";
    let body = text_body(pnid, "573001", "wamid.R1", "hola");
    let good = sign(&body, APP_SECRET.as_bytes());

    let wrong = ingest
        .post(&body, Some(&sign(&body, b"not-the-secret")))
        .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.text().await.unwrap(),
        "unauthorized",
        "the body reveals nothing"
    );
    assert_eq!(ingest.post(&body, None).await.status(), 401);
    assert_eq!(
        ingest
            .post(&body, Some(&good[..good.len() - 2]))
            .await
            .status(),
        401
    );
    assert_eq!(ingest.post(b"", None).await.status(), 401);
    assert_eq!(requests(&ingest, "bad_signature").await, 4.0);

    let huge = vec![b' '; wafleet::config::DEFAULT_MAX_BODY_BYTES + 1];
    let res = ingest
        .post(&huge, Some(&sign(&huge, APP_SECRET.as_bytes())))
        .await;
    assert_eq!(res.status(), 413);
    assert_eq!(requests(&ingest, "too_large").await, 1.0);
    // Exactly at the limit is accepted (as malformed: it is all spaces, not JSON).
    let at_limit = vec![b' '; wafleet::config::DEFAULT_MAX_BODY_BYTES];
    assert_eq!(
        ingest.post_signed(&at_limit, APP_SECRET).await.status(),
        200
    );

    let malformed = br#"{"object":"whatsapp_business_account","entry":[{"#;
    assert_eq!(
        ingest.post_signed(malformed, APP_SECRET).await.status(),
        200
    );
    assert_eq!(
        ingest.post_signed(b"", APP_SECRET).await.status(),
        200,
        "signed empty body"
    );
    // Well-formed, but no item in it can be keyed: every one dead-lettered, so malformed too.
    let unkeyable = message_body(
        pnid,
        "573001",
        serde_json::json!({"from": "573001", "type": "text", "text": {"body": "sin id"}}),
    );
    assert_eq!(
        ingest.post_signed(&unkeyable, APP_SECRET).await.status(),
        200
    );
    assert_eq!(requests(&ingest, "malformed").await, 4.0);

    // A client that goes away mid-body: counted as aborted, not as Redis being unavailable.
    {
        use tokio::io::AsyncWriteExt;
        let addr = ingest.url.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!(
                "POST /webhooks/whatsapp HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 100\r\n\
                 x-hub-signature-256: {good}\r\n\r\n{{\"object\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        drop(tcp);
    }
    eventually(
        "the aborted request counted",
        Duration::from_secs(10),
        || async { (requests(&ingest, "aborted").await == 1.0).then_some(()) },
    )
    .await;
    assert_eq!(requests(&ingest, "unavailable").await, 0.0);

    let unknown = text_body("999999999", "573001", "wamid.U1", "hola");
    assert_eq!(ingest.post_signed(&unknown, APP_SECRET).await.status(), 200);
    assert_eq!(requests(&ingest, "unknown_channel").await, 1.0);
    assert_eq!(
        ingest
            .metric(r#"wafleet_ingest_quarantined_total{reason="unknown_channel"}"#)
            .await,
        1.0
    );

    let mut con = cfg.redis().await;
    let keys = cfg.keys();
    let dead = read_stream(&mut con, &keys.ingest_dead()).await;
    assert_eq!(
        dead.len(),
        4,
        "three bodies, and the item that could not be keyed"
    );
    let with_body: Vec<_> = dead
        .iter()
        .filter(|(_, f)| f["body"] == malformed)
        .collect();
    assert_eq!(with_body.len(), 1, "the malformed body is kept whole");
    let reason = String::from_utf8_lossy(&with_body[0].1["reason"]).into_owned();
    assert!(
        reason.contains("truncated JSON") && reason.contains("EOF while parsing"),
        "the dead letter keeps what was wrong and serde's detail: {reason}"
    );
    let quarantine = read_stream(&mut con, &keys.quarantine()).await;
    assert_eq!(quarantine.len(), 1);
    assert_eq!(quarantine[0].1["reason"], b"unknown_channel");
    assert!(
        all_updates(&mut con, &inbound_streams(&cfg))
            .await
            .is_empty(),
        "nothing refused was processed"
    );
}

#[tokio::test]
async fn verification_echoes_the_challenge_only_for_the_right_token() {
    let (_cfg, ingest) = setup().await;
    let get = |q: &'static str| {
        let http = ingest.http.clone();
        let url = format!("{}/webhooks/whatsapp?{q}", ingest.url);
        async move { http.get(url).send().await.unwrap() }
    };
    let ok =
        get("hub.mode=subscribe&hub.verify_token=test-verify-token&hub.challenge=0012%2Bab").await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["content-type"], "text/plain");
    assert_eq!(
        ok.text().await.unwrap(),
        "0012+ab",
        "echoed verbatim, not parsed as a number"
    );
    for q in [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
        "hub.mode=unsubscribe&hub.verify_token=test-verify-token&hub.challenge=1",
        "hub.mode=subscribe&hub.challenge=1",
        "",
    ] {
        assert_eq!(get(q).await.status(), 403, "{q}");
    }
}

/// Posts a fresh message (a new wamid each time) until `applied` says ingest has taken a channel
/// change into account, which it does within its refresh interval.
async fn post_until<F, Fut>(
    ingest: &Ingest,
    what: &str,
    pnid: &str,
    from: &str,
    tag: &str,
    mut applied: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        let body = text_body(pnid, from, &format!("wamid.{tag}{n}"), "hola");
        ingest.post_signed(&body, APP_SECRET).await;
        if applied().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether anything sits in quarantine for `reason`.
async fn quarantined_for(cfg: &TestConfig, reason: &str) -> bool {
    let q = read_stream(&mut cfg.redis().await, &cfg.keys().quarantine()).await;
    q.iter().any(|(_, f)| f["reason"] == reason.as_bytes())
}

#[tokio::test]
async fn channel_changes_are_seen_within_seconds_and_disabled_or_unlisted_senders_are_quarantined()
{
    let (cfg, ingest) = setup().await;
    let mut con = cfg.redis().await;
    let new_number = "555000111";
    // Unknown at first: quarantined.
    assert_eq!(
        ingest
            .post_signed(
                &text_body(new_number, "57300", "wamid.N0", "hola"),
                APP_SECRET
            )
            .await
            .status(),
        200
    );
    cfg.add_channel(new_number, |_| {}).await;
    post_until(
        &ingest,
        "ingest to see the new channel",
        new_number,
        "57300",
        "N",
        || async {
            !all_updates(&mut cfg.redis().await, &inbound_streams(&cfg))
                .await
                .is_empty()
        },
    )
    .await;

    // Disabled: quarantined again.
    set_enabled(&cfg.pg().await, new_number, false)
        .await
        .unwrap();
    let quarantined_before = read_stream(&mut con, &cfg.keys().quarantine()).await.len();
    post_until(
        &ingest,
        "ingest to see the channel disabled",
        new_number,
        "57300",
        "D",
        || quarantined_for(&cfg, "channel_disabled"),
    )
    .await;
    assert!(read_stream(&mut con, &cfg.keys().quarantine()).await.len() > quarantined_before);

    // Allowlist: only the listed customer is served.
    let listed = "106540352242922";
    cfg.add_channel(listed, |s| s.phone_allowlist = Some(vec!["57311".into()]))
        .await;
    post_until(
        &ingest,
        "ingest to apply the allowlist",
        listed,
        "57399",
        "A",
        || quarantined_for(&cfg, "sender_not_allowed"),
    )
    .await;
    let before = all_updates(&mut con, &inbound_streams(&cfg)).await.len();
    ingest
        .post_signed(
            &text_body(listed, "57311", "wamid.LISTED", "hola"),
            APP_SECRET,
        )
        .await;
    assert_eq!(
        all_updates(&mut con, &inbound_streams(&cfg)).await.len(),
        before + 1
    );

    // Two edits at once: the one stamped first commits after a poll saw the other, so its
    // time is older than the newest the poll knows, and the row count does not move. Simulated
    // by stamping the change with an old time; it is seen all the same.
    let pg = cfg.pg().await;
    for statement in [
        "ALTER TABLE channels DISABLE TRIGGER channels_touch",
        "UPDATE channels SET enabled = TRUE, updated_at = updated_at - interval '1 hour'
          WHERE phone_number_id = '555000111'",
        "ALTER TABLE channels ENABLE TRIGGER channels_touch",
    ] {
        sqlx::query(statement).execute(&pg).await.unwrap();
    }
    let before = all_updates(&mut con, &inbound_streams(&cfg)).await.len();
    post_until(
        &ingest,
        "ingest to see the channel enabled again",
        new_number,
        "57300",
        "E",
        || async {
            all_updates(&mut cfg.redis().await, &inbound_streams(&cfg))
                .await
                .len()
                > before
        },
    )
    .await;
}

/// An ingest with no channel that cuts off a request after `request_timeout`.
async fn ingest_cutting_off_after(request_timeout: Duration) -> (TestConfig, Ingest) {
    let cfg = TestConfig::new().await;
    let ingest = Ingest::start(IngestSettings {
        request_timeout,
        ..cfg.ingest_settings()
    })
    .await;
    (cfg, ingest)
}

/// Opens a connection to ingest and writes a POST to `path` whose request line and host are
/// followed by `rest` (headers, the blank line, any body).
async fn send_raw(
    ingest: &Ingest,
    path: &str,
    rest: &str,
) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let addr = ingest.url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\n{rest}").as_bytes())
        .await?;
    Ok(tcp)
}

/// [`send_raw`], then the start of ingest's answer, read with the connection open.
async fn first_answer(ingest: &Ingest, path: &str, rest: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut tcp = send_raw(ingest, path, rest).await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("an answer within the timeout")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn a_sender_that_stalls_mid_body_is_cut_off_and_counted() {
    let (_cfg, ingest) = ingest_cutting_off_after(Duration::from_millis(300)).await;
    // The rest of the body never comes; the connection stays open.
    let answer = first_answer(
        &ingest,
        "/webhooks/whatsapp",
        "content-length: 100\r\n\r\n{\"obj",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(requests(&ingest, "timeout").await, 1.0);
}

/// A client that trickles its request's head, a byte at a time, is closed once the head has
/// taken longer than `WAFLEET_INGEST_HEADER_TIMEOUT_MS`, however steadily the bytes come, and is
/// counted; a keep-alive connection left idle is closed quietly, not counted; a request whose
/// head comes in time is served as ever, even when its body is slower than the bound, and on a
/// keep-alive connection the bound starts afresh with each head.
#[tokio::test]
async fn a_head_that_never_completes_is_closed_and_counted_and_an_idle_connection_is_closed() {
    use tokio::io::AsyncWriteExt;

    let cfg = TestConfig::new().await;
    cfg.add_channel("106540352242922", |_| {}).await;
    let ingest = Ingest::start(IngestSettings {
        header_timeout: Duration::from_millis(400),
        ..cfg.ingest_settings()
    })
    .await;
    let addr = ingest.url.trim_start_matches("http://").to_owned();
    // Scraped on a fresh connection each time: a pooled one may have been closed as idle.
    let timeouts = || async {
        scrape_metric(
            &reqwest::Client::new(),
            &ingest.url,
            r#"wafleet_ingest_requests_total{outcome="header_timeout"}"#,
        )
        .await
    };

    // A header byte every 50 ms: bytes keep coming, the head never ends.
    let answer = trickle_a_head_until_closed(&addr, "/webhooks/whatsapp").await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(timeouts().await, 1.0);

    // A request whose head comes at once is answered, and its connection, left idle, closed.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    // And one that never sent anything.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
    assert_eq!(timeouts().await, 1.0, "an idle connection is not a timeout");

    // The bound is on the head alone: a body slower than it is still taken (the request timeout
    // bounds that), and on a keep-alive connection it starts afresh with each head.
    let body = text_body("106540352242922", "573001112233", "wamid.SLOWBODY", "hola");
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /webhooks/whatsapp HTTP/1.1\r\nhost: {addr}\r\nx-hub-signature-256: {}\r\n\
             content-length: {}\r\n\r\n",
            wafleet_core::signature::sign(&body, APP_SECRET.as_bytes()),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.write_all(&body[..body.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    slow.write_all(&body[body.len() / 2..]).await.unwrap();
    let answer = answer_on(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = answer_on(&mut slow).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {n}: {answer}");
    }
    assert_eq!(timeouts().await, 1.0);
}

/// One answer read from a keep-alive connection: up to the end of its body (`ok`), within 10 s.
async fn answer_on(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let read = async {
        while !answer.ends_with(b"ok") {
            let mut buf = [0u8; 512];
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that announces a body over the limit and waits for `100 Continue` before sending it
/// (curl does for large bodies) is told 413 from its headers, not asked for the body; one that
/// sends the body straight away reads the 413 rather than a reset connection.
#[tokio::test]
async fn a_body_announced_over_the_limit_is_refused_before_it_is_read() {
    let (_cfg, ingest) = ingest_cutting_off_after(Duration::from_secs(2)).await;
    let over = wafleet::config::DEFAULT_MAX_BODY_BYTES + 1;
    let signed = format!(
        "content-length: {over}\r\nx-hub-signature-256: sha256={}\r\n",
        "0".repeat(64)
    );
    for (path, rest) in [
        // No body is sent: the answer must come from the headers alone.
        (
            "/webhooks/whatsapp",
            format!("{signed}expect: 100-continue\r\n\r\n"),
        ),
        (
            "/webhooks/whatsapp/1234567890",
            format!("{signed}expect: 100-continue\r\n\r\n"),
        ),
    ] {
        let answer = first_answer(&ingest, path, &rest).await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{path} {}: {answer}",
            &rest[signed.len()..]
        );
    }
    // The body sent straight away, whole: the answer is read to its end, not cut by a reset
    // (closing with the body unread in its buffers, the kernel would reset the connection).
    let whole = async {
        use tokio::io::AsyncReadExt;
        let rest = format!("{signed}connection: close\r\n\r\n{}", " ".repeat(over));
        let mut tcp = send_raw(&ingest, "/webhooks/whatsapp", &rest).await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), whole)
        .await
        .expect("an answer within the timeout")
        .expect("the connection is closed, not reset");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(requests(&ingest, "too_large").await, 3.0);
    assert_eq!(requests(&ingest, "timeout").await, 0.0);
}

/// A Postgres that stops answering (a network path that dies without a reset) is counted and
/// logged as refresh failures while ingest goes on serving its snapshot, and SIGTERM still ends
/// ingest: the refresh waited on the silent connection for ever, so nothing showed, and the
/// shutdown waited on the refresh.
#[tokio::test]
async fn a_postgres_that_stops_answering_is_counted_and_does_not_hold_up_shutdown() {
    let mut cfg = TestConfig::new().await;
    cfg.add_channel("106540352242922", |_| {}).await;
    let (base, db) = cfg.database_url.rsplit_once('/').unwrap();
    let (user, host) = base.rsplit_once('@').unwrap();
    let proxy = proxy::Proxy::start(host.to_string()).await;
    cfg.database_url = format!("{user}@127.0.0.1:{}/{db}", proxy.port);
    let ingest = Ingest::start(cfg.ingest_settings()).await;

    proxy.black_hole();
    eventually(
        "a refresh failure counted",
        Duration::from_secs(30),
        || async {
            (ingest.metric("wafleet_channel_refresh_errors_total").await >= 1.0).then_some(())
        },
    )
    .await;
    let body = text_body("106540352242922", "573001", "wamid.PGHUNG", "hola");
    assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    tokio::time::timeout(Duration::from_secs(30), ingest.stop())
        .await
        .expect("ingest stops while Postgres is silent")
        .unwrap();
}

/// Redis closing ingest's connections (its idle `timeout` does that to the second connection,
/// which idles between batches; so does a restart) costs no 503: the appends go again on a new
/// connection, for a webhook and for a batch alike, and land once.
#[tokio::test]
async fn a_connection_redis_closed_is_replaced_without_a_503() {
    let redis = RedisServer::start().await;
    let mut cfg = TestConfig::new().await;
    cfg.redis_url = redis.url();
    cfg.add_channel("106540352242922", |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let batch = |tag: &str| {
        let messages: Vec<_> = (0..40)
            .map(|i| {
                serde_json::json!({"from": "573001", "id": format!("wamid.{tag}{i}"),
                    "timestamp": "1700000000", "type": "text", "text": {"body": "hola"}})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "W1", "changes": [{"field": "messages", "value": {
                "metadata": {"phone_number_id": "106540352242922"}, "messages": messages}}]}]
        }))
        .unwrap()
    };
    // Both of the serving thread's connections opened: a webhook's and a batch's.
    let one = text_body("106540352242922", "573001", "wamid.ONE", "hola");
    assert_eq!(ingest.post_signed(&one, APP_SECRET).await.status(), 200);
    assert_eq!(
        ingest.post_signed(&batch("A"), APP_SECRET).await.status(),
        200
    );

    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 2, "{killed} connections closed");

    let two = text_body("106540352242922", "573001", "wamid.TWO", "hola");
    assert_eq!(ingest.post_signed(&two, APP_SECRET).await.status(), 200);
    assert_eq!(
        ingest.post_signed(&batch("B"), APP_SECRET).await.status(),
        200
    );
    assert_eq!(requests(&ingest, "unavailable").await, 0.0);
    assert_eq!(
        ingest.metric("wafleet_ingest_redis_reconnects_total").await,
        2.0
    );
    let mut con = cfg.redis().await;
    let wamids = inbound_wamids(&mut con, &cfg).await;
    assert_eq!(wamids.len(), 82, "{wamids:?}");
}

#[tokio::test]
async fn redis_down_answers_503_and_the_redelivery_after_restart_is_enqueued_once() {
    let mut redis = RedisServer::start().await;
    let mut cfg = TestConfig::new().await;
    cfg.redis_url = redis.url();
    cfg.add_channel("106540352242922", |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;

    let first = text_body("106540352242922", "57300", "wamid.BEFORE", "antes");
    assert_eq!(ingest.post_signed(&first, APP_SECRET).await.status(), 200);

    redis.kill();
    let during = text_body("106540352242922", "57300", "wamid.DURING", "durante");
    let started = std::time::Instant::now();
    let res = ingest.post_signed(&during, APP_SECRET).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "503 comes within a bounded time"
    );
    assert_eq!(requests(&ingest, "unavailable").await, 1.0);
    let ready = ingest
        .http
        .get(format!("{}/readyz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    redis.resume().await;
    // Meta redelivers (maybe several times): the update lands exactly once.
    let status = eventually(
        "ingest to reconnect to Redis",
        Duration::from_secs(15),
        || {
            let ingest = &ingest;
            let during = during.clone();
            async move {
                let s = ingest.post_signed(&during, APP_SECRET).await.status();
                (s == 200).then_some(s)
            }
        },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ingest.post_signed(&during, APP_SECRET).await.status(), 200);
    assert_eq!(ingest.post_signed(&first, APP_SECRET).await.status(), 200);

    let mut con = cfg.redis().await;
    let mut wamids: Vec<String> = all_updates(&mut con, &inbound_streams(&cfg))
        .await
        .into_iter()
        .map(|(_, u)| match u {
            Update::Message(m) => m.wamid,
            _ => unreachable!(),
        })
        .collect();
    wamids.sort();
    assert_eq!(wamids, ["wamid.BEFORE", "wamid.DURING"]);
    let ready = ingest
        .http
        .get(format!("{}/readyz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn metrics_report_stream_lengths_and_shutdown_returns() {
    let (cfg, ingest) = setup().await;
    ingest.post_signed(&fixture("text.json"), APP_SECRET).await;
    let keys = cfg.keys();
    let conv = "106540352242922:16505551234";
    let stream = keys.inbound(keys.partition_of(conv));
    let line = format!(r#"wafleet_stream_length{{stream="{stream}"}}"#);
    assert_eq!(ingest.metric(&line).await, 1.0);
    assert!(
        ingest
            .metric("wafleet_ingest_request_duration_seconds_count")
            .await
            >= 1.0
    );
    let lengths: HashMap<String, f64> = HashMap::from([(stream, 1.0)]);
    assert_eq!(lengths.len(), 1);
    tokio::time::timeout(Duration::from_secs(10), ingest.stop())
        .await
        .expect("drains")
        .unwrap();
}

#[tokio::test]
async fn a_failed_append_leaves_no_dedup_mark_so_the_redelivery_gets_through() {
    use wafleet::streams::{Append, Appended, Enqueuer};
    let cfg = TestConfig::new().await;
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    let update = wafleet_core::webhook::parse(&fixture("text.json"))
        .unwrap()
        .updates
        .remove(0);
    let append = Append::update(&keys, &update, 0);
    // Make the stream key unusable: XADD fails with WRONGTYPE inside the script.
    let _: () = redis::AsyncCommands::set(&mut con, &append.stream, "not a stream")
        .await
        .unwrap();
    let enqueuer = Enqueuer::new(Duration::from_secs(60));
    assert!(
        enqueuer
            .append_all(&mut con, std::slice::from_ref(&append))
            .await
            .is_err()
    );
    let marked: bool = redis::AsyncCommands::exists(&mut con, &append.seen)
        .await
        .unwrap();
    assert!(!marked, "no mark without its entry");
    // Once Redis is healthy again, Meta's redelivery is enqueued, exactly once.
    let _: () = redis::AsyncCommands::del(&mut con, &append.stream)
        .await
        .unwrap();
    let first = enqueuer
        .append_all(&mut con, std::slice::from_ref(&append))
        .await
        .unwrap();
    let again = enqueuer
        .append_all(&mut con, std::slice::from_ref(&append))
        .await
        .unwrap();
    assert_eq!((first[0], again[0]), (Appended::Added, Appended::Duplicate));
    assert_eq!(read_stream(&mut con, &append.stream).await.len(), 1);
}

#[tokio::test]
async fn an_update_appended_by_its_values_is_the_entry_its_named_fields_make() {
    use wafleet::streams::{Append, Appended, ENQUEUE_SCRIPT, Enqueuer};
    let cfg = TestConfig::new().await;
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    // A message (its entry has `conv`) and an error (events have none).
    let mut updates = wafleet_core::webhook::parse(&fixture("text.json"))
        .unwrap()
        .updates;
    let error = br#"{"object":"whatsapp_business_account","entry":[{"id":"9","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"100"},"errors":[{"code":131000,"title":"Something went wrong"}]}}]}]}"#;
    updates.extend(wafleet_core::webhook::parse(error).unwrap().updates);
    let ordered = |con: &mut redis::aio::MultiplexedConnection, stream: String| {
        let mut con = con.clone();
        async move {
            let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query_async(&mut con)
                .await
                .unwrap();
            entries
                .into_iter()
                .map(|(_, fields)| fields)
                .collect::<Vec<_>>()
        }
    };
    for update in &updates {
        let append = Append::update(&keys, update, 1_700_000_000_000);
        let appended = Enqueuer::new(Duration::from_secs(60))
            .append_all(&mut con, std::slice::from_ref(&append))
            .await
            .unwrap();
        assert_eq!(appended, [Appended::Added]);
        // The same entry through the general script, its fields named in the call.
        let named = format!("{}:named", append.stream);
        let added: i64 = redis::Script::new(ENQUEUE_SCRIPT)
            .key(format!("{}:named", append.seen))
            .key(&named)
            .arg(60)
            .arg(
                append
                    .fields
                    .iter()
                    .map(|(name, value)| (*name, value.to_vec()))
                    .collect::<Vec<_>>(),
            )
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(added, 1);
        let fast = ordered(&mut con, append.stream.clone()).await;
        let general = ordered(&mut con, named).await;
        assert_eq!(fast.len(), 1, "{:?}", update.kind());
        assert_eq!(fast, general, "{:?}", update.kind());
        let names: Vec<&[u8]> = fast[0].iter().step_by(2).map(Vec::as_slice).collect();
        let want: Vec<&[u8]> = append.fields.iter().map(|(n, _)| n.as_bytes()).collect();
        assert_eq!(names, want);
        // And its mark holds off the redelivery, for the TTL asked.
        let again = Enqueuer::new(Duration::from_secs(60))
            .append_all(&mut con, std::slice::from_ref(&append))
            .await
            .unwrap();
        assert_eq!(again, [Appended::Duplicate]);
        let ttl: i64 = redis::cmd("TTL")
            .arg(&append.seen)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!((1..=60).contains(&ttl), "{ttl}");
    }
}

#[tokio::test]
async fn appends_redone_after_redis_lost_one_script_are_each_reported_as_they_happened() {
    use wafleet::streams::{Append, Appended, ENQUEUE_SCRIPT, Enqueuer};
    // A Redis of its own: its scripts are flushed.
    let redis = RedisServer::start().await;
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = wafleet::streams::Keys::new("w", 4);
    let update = wafleet_core::webhook::parse(&fixture("text.json"))
        .unwrap()
        .updates
        .remove(0);
    // A quarantined update (the general script) and one for processing (the update script).
    let appends = [
        Append::quarantine(&keys, &update, "unknown_channel", "fp", 0),
        Append::update(&keys, &update, 0),
    ];
    let enqueuer = Enqueuer::new(Duration::from_secs(60));
    // With the general script loaded, and with none (Redis restarted).
    for loaded in [true, false] {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut con)
            .await
            .unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
        // Redis has one script and not the other (a replay loaded the general one after a
        // restart, say): the append that ran must not be counted a duplicate when redone.
        if loaded {
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(ENQUEUE_SCRIPT)
                .query_async(&mut con)
                .await
                .unwrap();
        }
        let first = enqueuer.append_all(&mut con, &appends).await.unwrap();
        assert_eq!(
            first,
            [Appended::Added, Appended::Added],
            "loaded: {loaded}"
        );
        let again = enqueuer.append_all(&mut con, &appends).await.unwrap();
        assert_eq!(again, [Appended::Duplicate, Appended::Duplicate]);
        for a in &appends {
            assert_eq!(
                read_stream(&mut con, &a.stream).await.len(),
                1,
                "{}",
                a.stream
            );
        }
    }
}

#[tokio::test]
async fn a_webhook_whose_append_fails_fails_alone_among_concurrent_ones() {
    let (cfg, ingest) = setup().await;
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    // Events cannot be appended (their stream is not a stream); messages can.
    let _: () = redis::AsyncCommands::set(&mut con, keys.events(), "not a stream")
        .await
        .unwrap();
    let event = serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "W1", "changes": [
            {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}]}]
    }))
    .unwrap();
    let posts = (0..200).map(|n| {
        let body = if n % 50 == 7 {
            event.clone()
        } else {
            text_body(
                "106540352242922",
                &format!("5730{n:04}"),
                &format!("wamid.C{n}"),
                "hola",
            )
        };
        let ingest = &ingest;
        async move { ingest.post_signed(&body, APP_SECRET).await.status() }
    });
    let statuses = futures::future::join_all(posts).await;
    for (n, status) in statuses.iter().enumerate() {
        let want = if n % 50 == 7 { 503 } else { 200 };
        assert_eq!(status.as_u16(), want, "webhook {n}");
    }
    assert_eq!(
        all_updates(&mut con, &inbound_streams(&cfg)).await.len(),
        196
    );
    assert_eq!(requests(&ingest, "unavailable").await, 4.0);
    // Once the events stream is usable, Meta's redelivery of the account update gets through.
    let _: () = redis::AsyncCommands::del(&mut con, keys.events())
        .await
        .unwrap();
    assert_eq!(ingest.post_signed(&event, APP_SECRET).await.status(), 200);
    assert_eq!(read_stream(&mut con, &keys.events()).await.len(), 1);
}

#[tokio::test]
async fn a_redis_connection_that_goes_silent_is_replaced() {
    // Ingest reaches Redis through a proxy that can black-hole the live connection (a failover
    // or a lost host: no reset, no answer), while new connections get through.
    let mut cfg = TestConfig::new().await;
    let proxy = wafleet_tests::proxy::Proxy::in_front_of_redis(&cfg.redis_url).await;
    cfg.redis_url = proxy.redis_url();
    cfg.add_channel("106540352242922", |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let body = |n: u32| text_body("106540352242922", "57300", &format!("wamid.S{n}"), "hola");
    assert_eq!(ingest.post_signed(&body(0), APP_SECRET).await.status(), 200);

    proxy.black_hole();
    assert_eq!(
        ingest.post_signed(&body(1), APP_SECRET).await.status(),
        503,
        "no answer within WAFLEET_REDIS_TIMEOUT_MS"
    );
    // The silent connection is given up and a new one opened: webhooks are accepted again.
    let n = std::sync::atomic::AtomicU32::new(1);
    eventually(
        "ingest to accept again",
        Duration::from_secs(40),
        || async {
            let next = body(n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1);
            (ingest.post_signed(&next, APP_SECRET).await.status() == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_channel_whose_secrets_do_not_decrypt_is_left_out_and_the_others_are_served() {
    let cfg = TestConfig::new().await;
    let (good, bad, later) = (FIXTURE_NUMBERS[0], "555000222", "555000333");
    cfg.add_channel(good, |_| {}).await;
    cfg.add_channel(bad, |_| {}).await;
    // Changed by hand: an app secret sealed for another number.
    let foreign = cfg
        .cipher()
        .encrypt("channel:999:app_secret", APP_SECRET.as_bytes());
    sqlx::query("UPDATE channels SET app_secrets = ARRAY[$1] WHERE phone_number_id = $2")
        .bind(&foreign)
        .bind(bad)
        .execute(&cfg.pg().await)
        .await
        .unwrap();
    // Ingest starts all the same, and serves the good channel.
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    for (pnid, wamid) in [(good, "wamid.G1"), (bad, "wamid.B1")] {
        let res = ingest
            .post_signed(&text_body(pnid, "57300", wamid, "hola"), APP_SECRET)
            .await;
        assert_eq!(res.status(), 200, "{pnid}");
    }
    let mut con = cfg.redis().await;
    let wamids = |updates: Vec<(String, Update)>| {
        updates
            .into_iter()
            .filter_map(|(_, u)| match u {
                Update::Message(m) => Some(m.wamid),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        wamids(all_updates(&mut con, &inbound_streams(&cfg)).await),
        ["wamid.G1"]
    );
    assert!(quarantined_for(&cfg, "unknown_channel").await);
    // The bad row does not hold back the other channels' changes.
    cfg.add_channel(later, |_| {}).await;
    eventually(
        "the channel added later served",
        Duration::from_secs(10),
        || {
            let ingest = &ingest;
            let cfg = &cfg;
            let con = con.clone();
            async move {
                let body = text_body(later, "57301", "wamid.L1", "hola");
                ingest.post_signed(&body, APP_SECRET).await;
                let mut con = con;
                wamids(all_updates(&mut con, &inbound_streams(cfg)).await)
                    .contains(&"wamid.L1".to_string())
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn an_accounts_events_signed_by_another_tenants_app_are_quarantined() {
    let cfg = TestConfig::new().await;
    cfg.add_channel(FIXTURE_NUMBERS[0], |c| c.waba_id = Some("W-OURS".into()))
        .await;
    cfg.add_channel("106540352242998", |c| {
        c.waba_id = Some("W-OTHER".into());
        c.app_secrets = Some(vec![wafleet::config::Secret::new("other-app".into())]);
    })
    .await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let event = |waba: &str, n: u32| {
        serde_json::to_vec(&serde_json::json!({"object": "whatsapp_business_account", "entry": [
            {"id": waba, "changes": [
                {"field": "message_template_status_update", "value": {"event": "REJECTED", "n": n}}]}]}))
        .unwrap()
    };
    // Our app writes about the other tenant's account: kept aside, never on the events stream.
    let forged = ingest.post_signed(&event("W-OTHER", 1), APP_SECRET).await;
    assert_eq!(forged.status(), 200);
    // Each account's own app, and an account no channel names: on the events stream.
    for (waba, n, secret) in [
        ("W-OTHER", 2, "other-app"),
        ("W-OURS", 3, APP_SECRET),
        ("W-NOBODY", 4, "other-app"),
    ] {
        let res = ingest.post_signed(&event(waba, n), secret).await;
        assert_eq!(res.status(), 200, "{waba}");
    }

    let mut con = cfg.redis().await;
    let n_of = |fields: &HashMap<String, Vec<u8>>| {
        let update: Update = serde_json::from_slice(&fields["update"]).unwrap();
        match update {
            Update::Event(e) => {
                serde_json::from_str::<serde_json::Value>(e.raw.get()).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            }
            other => panic!("not an event: {other:?}"),
        }
    };
    let events = read_stream(&mut con, &cfg.keys().events()).await;
    assert_eq!(
        events.iter().map(|(_, f)| n_of(f)).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    let kept = read_stream(&mut con, &cfg.keys().quarantine()).await;
    assert_eq!(
        kept.iter()
            .map(|(_, f)| (n_of(f), String::from_utf8_lossy(&f["reason"]).into_owned()))
            .collect::<Vec<_>>(),
        [(1, "signed_by_another_app".to_string())]
    );
}

/// What a person writes from the WhatsApp Business app on a coexistence number goes to the
/// partition of the customer's conversation, in order with their messages, once however often
/// Meta delivers it; an echo that names no customer or has no id stays on the events stream as
/// every `smb_message_echoes` change did before, and one for a number we do not serve is kept
/// aside like its messages.
#[tokio::test]
async fn a_business_app_echo_joins_its_customers_conversation_once_and_other_shapes_stay_events() {
    let (cfg, ingest) = setup().await;
    let pnid = "106540352242922";
    let echo = echo_message(pnid, "573001234567", "wamid.E1", 1_700_000_001, "Hola Ana");
    for _ in 0..2 {
        let res = ingest.post_signed(&echo, APP_SECRET).await;
        assert_eq!(res.status(), 200);
    }
    let text = text_body(pnid, "573001234567", "wamid.M1", "perfecto, gracias");
    assert_eq!(ingest.post_signed(&text, APP_SECRET).await.status(), 200);

    let mut con = cfg.redis().await;
    let keys = cfg.keys();
    let conv = format!("{pnid}:573001234567");
    let stream = keys.inbound(keys.partition_of(&conv));
    let entries = read_stream(&mut con, &stream).await;
    let fields = |i: usize, f: &str| String::from_utf8_lossy(&entries[i].1[f]).into_owned();
    assert_eq!(
        entries.len(),
        2,
        "the echo once, then the customer's message"
    );
    assert_eq!(
        (fields(0, "kind"), fields(0, "conv"), fields(0, "channel")),
        ("echo".to_string(), conv.clone(), pnid.to_string())
    );
    assert_eq!(
        (fields(1, "kind"), fields(1, "conv")),
        ("message".into(), conv)
    );
    let Update::Echo(e) = serde_json::from_slice(&entries[0].1["update"]).unwrap() else {
        panic!("not an echo")
    };
    assert_eq!(
        (e.wamid.as_str(), e.text().as_deref()),
        ("wamid.E1", Some("Hola Ana"))
    );
    assert!(e.raw.get().contains(r#""from":"15550000000""#), "raw kept");
    assert_eq!(requests(&ingest, "duplicate").await, 1.0);

    // No `to`: the change whole on the events stream, as before.
    let no_to = String::from_utf8(echo_message(pnid, "", "wamid.E2", 1, "x"))
        .unwrap()
        .replace(r#""to":"","#, "");
    assert_eq!(
        ingest
            .post_signed(no_to.as_bytes(), APP_SECRET)
            .await
            .status(),
        200
    );
    let events = read_stream(&mut con, &keys.events()).await;
    assert_eq!(events.len(), 1);
    let Update::Event(event) = serde_json::from_slice(&events[0].1["update"]).unwrap() else {
        panic!("not an event")
    };
    assert_eq!(event.field, "smb_message_echoes");
    assert!(event.raw.get().contains("wamid.E2"));
    assert_eq!(all_updates(&mut con, &inbound_streams(&cfg)).await.len(), 2);

    // A number no channel serves: kept aside, as its customers' messages are.
    let stranger = echo_message("999000111", "573001234567", "wamid.E3", 1, "Hola");
    assert_eq!(
        ingest.post_signed(&stranger, APP_SECRET).await.status(),
        200
    );
    let kept = read_stream(&mut con, &keys.quarantine()).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (
            String::from_utf8_lossy(&kept[0].1["kind"]),
            String::from_utf8_lossy(&kept[0].1["reason"])
        ),
        ("echo".into(), "unknown_channel".into())
    );
    assert!(read_stream(&mut con, &keys.ingest_dead()).await.is_empty());
}

#[tokio::test]
async fn quarantined_updates_are_replayed_once_their_channel_exists_and_never_twice() {
    use wafleet::quarantine::{self, Replayed};
    let (cfg, ingest) = setup().await;
    let late = "106540352242999";
    // Another tenant's app: its secret signs a message for one of our numbers.
    cfg.add_channel("106540352242998", |c| {
        c.app_secrets = Some(vec![wafleet::config::Secret::new("other-app".into())])
    })
    .await;
    let forged = text_body(FIXTURE_NUMBERS[0], "573009", "wamid.QF", "hola");
    // Two messages for a number nobody added yet.
    for body in [
        text_body(late, "573001", "wamid.Q1", "hola"),
        text_body(late, "573002", "wamid.Q2", "hola"),
    ] {
        assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    }
    let con = cfg.redis().await;
    let keys = cfg.keys();
    let enqueuer = wafleet::streams::Enqueuer::new(Duration::from_secs(3600));
    eventually(
        "the forged message quarantined",
        Duration::from_secs(10),
        || {
            let ingest = &ingest;
            let forged = &forged;
            let cfg = &cfg;
            async move {
                ingest.post_signed(forged, "other-app").await;
                quarantined_for(cfg, "signed_by_another_app")
                    .await
                    .then_some(())
            }
        },
    )
    .await;
    // And one the other tenant's app wrote for the number nobody added yet.
    let q3 = text_body(late, "573003", "wamid.Q3", "hola");
    assert_eq!(ingest.post_signed(&q3, "other-app").await.status(), 200);
    let registry = || async {
        wafleet::channels::load(&cfg.pg().await, &cfg.cipher())
            .await
            .unwrap()
    };
    let replay_all = |registry: wafleet::channels::Registry| {
        let keys = keys.clone();
        let enqueuer = enqueuer.clone();
        let mut con = con.clone();
        async move {
            let mut done = Vec::new();
            for kept in quarantine::read(&mut con, &keys).await.unwrap() {
                let r = quarantine::replay(&mut con, &keys, &enqueuer, &registry, &kept)
                    .await
                    .unwrap();
                done.push((kept.text("reason"), r));
            }
            done
        }
    };

    // Nothing changed yet: everything is still refused and stays.
    let first = replay_all(registry().await).await;
    assert_eq!(first.len(), 4, "{first:?}");
    assert!(
        first.iter().all(|(_, r)| matches!(r, Replayed::Refused(_))),
        "{first:?}"
    );

    // The operator adds the number; Meta happens to deliver Q2 again, which now goes through.
    cfg.add_channel(late, |_| {}).await;
    let inbound_wamids = |con: redis::aio::MultiplexedConnection| {
        let streams = inbound_streams(&cfg);
        async move {
            let mut con = con;
            all_updates(&mut con, &streams)
                .await
                .into_iter()
                .filter_map(|(_, u)| match u {
                    Update::Message(m) => Some(m.wamid),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
    };
    eventually(
        "Q2 delivered again and enqueued",
        Duration::from_secs(10),
        || {
            let body = text_body(late, "573002", "wamid.Q2", "hola");
            let ingest = &ingest;
            let wamids = inbound_wamids(con.clone());
            async move {
                ingest.post_signed(&body, APP_SECRET).await;
                wamids.await.contains(&"wamid.Q2".to_string()).then_some(())
            }
        },
    )
    .await;

    let second = replay_all(registry().await).await;
    let mut outcomes: Vec<_> = second.into_iter().map(|(_, r)| r).collect();
    outcomes.sort_by_key(|r| format!("{r:?}"));
    // Q3 was kept as `unknown_channel`, but the number, now added, is not the other app's.
    assert_eq!(
        outcomes,
        vec![
            Replayed::Duplicate,
            Replayed::Enqueued,
            Replayed::Refused("signed_by_another_app"),
            Replayed::Refused("signed_by_another_app"),
        ]
    );
    let mut wamids = inbound_wamids(con.clone()).await;
    wamids.sort();
    assert_eq!(
        wamids,
        vec!["wamid.Q1", "wamid.Q2"],
        "each once, the forged one not at all"
    );
    let left = quarantine::read(&mut con.clone(), &keys).await.unwrap();
    assert_eq!(
        left.iter().map(|k| k.text("reason")).collect::<Vec<_>>(),
        vec!["signed_by_another_app", "unknown_channel"],
        "what was replayed or found enqueued left the quarantine"
    );

    // A third replay changes nothing.
    let third = replay_all(registry().await).await;
    assert_eq!(
        third,
        vec![
            (
                "signed_by_another_app".to_string(),
                Replayed::Refused("signed_by_another_app")
            ),
            (
                "unknown_channel".to_string(),
                Replayed::Refused("signed_by_another_app")
            )
        ]
    );
    assert_eq!(inbound_wamids(con.clone()).await.len(), 2);

    // The app was the number's own after all (an operator who rotated the app secret on one
    // number and not yet on this one): once the number lists it, its message goes through. The
    // other number still does not list it.
    cfg.add_channel(FIXTURE_NUMBERS[0], |c| {
        c.app_secrets = Some(vec![
            wafleet::config::Secret::new(APP_SECRET.into()),
            wafleet::config::Secret::new("other-app".into()),
        ])
    })
    .await;
    let fourth = replay_all(registry().await).await;
    assert_eq!(
        fourth,
        vec![
            ("signed_by_another_app".to_string(), Replayed::Enqueued),
            (
                "unknown_channel".to_string(),
                Replayed::Refused("signed_by_another_app")
            )
        ]
    );
    let mut wamids = inbound_wamids(con.clone()).await;
    wamids.sort();
    assert_eq!(wamids, vec!["wamid.Q1", "wamid.Q2", "wamid.QF"]);
}

#[tokio::test]
async fn streams_kept_for_inspection_are_read_a_page_at_a_time_and_whole() {
    let cfg = TestConfig::new().await;
    let mut con = cfg.redis().await;
    let stream = cfg.keys().quarantine();
    for n in 0..450 {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("n")
            .arg(n)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let n_of = |e: &wafleet::streams::StoredEntry| e.text("n").parse::<u32>().unwrap();
    let whole = wafleet::streams::read_whole(&mut con, &stream)
        .await
        .unwrap();
    assert_eq!(
        whole.iter().map(n_of).collect::<Vec<_>>(),
        (0..450).collect::<Vec<_>>()
    );
    let first = wafleet::streams::read_after(&mut con, &stream, None, 5)
        .await
        .unwrap();
    assert_eq!(first.iter().map(n_of).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    let next = wafleet::streams::read_after(&mut con, &stream, Some(first[4].id()), 2)
        .await
        .unwrap();
    assert_eq!(next.iter().map(n_of).collect::<Vec<_>>(), [5, 6]);
}

#[tokio::test]
async fn rotating_the_encryption_key_reseals_every_secret_at_once_or_not_at_all() {
    use wafleet::crypto::Cipher;
    use wafleet::store::channels::{self, Resealed};
    let cfg = TestConfig::new().await;
    let pg = cfg.pg().await;
    let (first, second) = (FIXTURE_NUMBERS[0], "555000444");
    cfg.add_channel(first, |_| {}).await;
    cfg.add_channel(second, |_| {}).await;
    let model = channels::ProviderSpec {
        position: 0,
        name: "shop-model".into(),
        kind: "openai".into(),
        base_url: "http://127.0.0.1:9/v1".into(),
        model: "m".into(),
        api_key: wafleet::config::Secret::new("sk-shop".into()),
    };
    channels::set_provider(&pg, &cfg.cipher(), first, &model)
        .await
        .unwrap();
    let new_key = Cipher::generate_key_text();
    let rotated = Cipher::from_key_text(&new_key)
        .unwrap()
        .with_other_keys([cfg.key.as_str()])
        .unwrap();
    let new_only = Cipher::from_key_text(&new_key).unwrap();

    // One secret no key opens (changed by hand): nothing is resealed.
    let foreign = Cipher::from_key_text(&Cipher::generate_key_text())
        .unwrap()
        .encrypt(&format!("channel:{second}:access_token"), b"x");
    sqlx::query("UPDATE channels SET access_token = $1 WHERE phone_number_id = $2")
        .bind(&foreign)
        .bind(second)
        .execute(&pg)
        .await
        .unwrap();
    let e = channels::reseal_all(&pg, &rotated).await.unwrap_err();
    assert!(format!("{e:#}").contains(second), "{e:#}");
    assert!(
        channels::get(&pg, &cfg.cipher(), first).await.is_ok(),
        "untouched"
    );
    assert!(channels::get(&pg, &new_only, first).await.is_err());

    // Fixed: every secret (two channels' app secret, verify and access token, one model's key)
    // is sealed with the new key, which alone now opens them; a second run changes nothing.
    sqlx::query("UPDATE channels SET access_token = $1 WHERE phone_number_id = $2")
        .bind(
            cfg.cipher()
                .encrypt(&format!("channel:{second}:access_token"), b"x"),
        )
        .bind(second)
        .execute(&pg)
        .await
        .unwrap();
    let done = channels::reseal_all(&pg, &rotated).await.unwrap();
    assert_eq!(
        done,
        Resealed {
            resealed: 7,
            current: 0
        }
    );
    assert_eq!(channels::list(&pg, &new_only).await.unwrap().len(), 2);
    assert!(channels::list(&pg, &cfg.cipher()).await.is_err());
    let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT api_key FROM channel_llm_providers")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(
        new_only
            .decrypt(&format!("channel:{first}:llm:shop-model"), &stored)
            .unwrap(),
        b"sk-shop"
    );
    assert_eq!(
        channels::reseal_all(&pg, &rotated).await.unwrap(),
        Resealed {
            resealed: 0,
            current: 7
        }
    );

    // Ingest on the new key serves the channels.
    let mut settings = cfg.ingest_settings();
    settings.common.encryption_key = wafleet::config::Secret::new(new_key);
    let ingest = Ingest::start(settings).await;
    let res = ingest
        .post_signed(&text_body(first, "57300", "wamid.ROT", "hola"), APP_SECRET)
        .await;
    assert_eq!(res.status(), 200);
    let mut con = cfg.redis().await;
    assert_eq!(all_updates(&mut con, &inbound_streams(&cfg)).await.len(), 1);
}

#[tokio::test]
async fn a_redis_made_a_replica_under_open_connections_is_left_for_a_new_connection() {
    use wafleet::shared_redis::SharedRedis;
    let redis = RedisServer::start().await;
    let shared = SharedRedis::new(&redis.url(), Duration::from_secs(2)).unwrap();
    let client_id = || async {
        let mut con = shared.get().await.unwrap();
        redis::cmd("CLIENT")
            .arg("ID")
            .query_async::<i64>(&mut con)
            .await
            .unwrap()
    };
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for pipelined in [false, true] {
        let before = client_id().await;
        // A failover that keeps connections open: the server is a replica now (of nothing here).
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg("1")
            .query_async(&mut admin)
            .await
            .unwrap();
        let mut con = shared.get().await.unwrap();
        let refused = if pipelined {
            redis::pipe()
                .cmd("SET")
                .arg("k")
                .arg("v")
                .query_async::<Vec<String>>(&mut con)
                .await
                .unwrap_err()
        } else {
            redis::cmd("SET")
                .arg("k")
                .arg("v")
                .query_async::<()>(&mut con)
                .await
                .unwrap_err()
        };
        assert_eq!(refused.code(), Some("READONLY"), "{refused}");
        let _: () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query_async(&mut admin)
            .await
            .unwrap();
        // The next caller gets a new connection (to whichever server the address now names).
        assert_ne!(client_id().await, before, "pipelined: {pipelined}");
    }
}

#[tokio::test]
async fn an_apps_own_path_checks_only_that_apps_secrets_and_an_unknown_app_is_refused() {
    let cfg = TestConfig::new().await;
    let app = |id: &str, secret: &str, token: &str| {
        let (id, secret, token) = (id.to_string(), secret.to_string(), token.to_string());
        move |s: &mut wafleet::store::channels::ChannelSpec| {
            s.app_id = Some(id);
            s.app_secrets = Some(vec![wafleet::config::Secret::new(secret)]);
            s.verify_token = Some(wafleet::config::Secret::new(token));
        }
    };
    cfg.add_channel("1110001", app("9001", "secret-a", "verify-a"))
        .await;
    cfg.add_channel("2220002", app("9002", "secret-b", "verify-b"))
        .await;
    // Served on the shared path only.
    cfg.add_channel("3330003", |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let post_to = |path: &str, body: &[u8], secret: &str| {
        let req = ingest
            .http
            .post(format!("{}/webhooks/whatsapp{path}", ingest.url))
            .header("x-hub-signature-256", sign(body, secret.as_bytes()))
            .body(body.to_vec());
        async move { req.send().await.unwrap() }
    };
    let mut con = cfg.redis().await;

    // App A's path takes A's signature for A's number.
    let a1 = text_body("1110001", "573001", "wamid.A1", "hola");
    assert_eq!(post_to("/9001", &a1, "secret-a").await.status(), 200);
    assert_eq!(inbound_wamids(&mut con, &cfg).await, ["wamid.A1"]);

    // App B's signature is not checked on A's path (the shared path would find it): 401, and
    // nothing kept.
    let a2 = text_body("1110001", "573001", "wamid.A2", "hola");
    let refused = post_to("/9001", &a2, "secret-b").await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.text().await.unwrap(), "unauthorized");
    // Nor is the shared path's secret of the third number, or any secret on an app no channel
    // names: 404, counted.
    assert_eq!(post_to("/9001", &a2, APP_SECRET).await.status(), 401);
    let unknown = post_to("/9999", &a2, "secret-a").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.text().await.unwrap(), "not found");
    assert_eq!(post_to("/not-an-app", &a2, "secret-a").await.status(), 404);
    assert_eq!(inbound_wamids(&mut con, &cfg).await, ["wamid.A1"]);
    assert!(
        read_stream(&mut con, &cfg.keys().quarantine())
            .await
            .is_empty()
    );
    assert_eq!(requests(&ingest, "bad_signature").await, 2.0);
    assert_eq!(requests(&ingest, "unknown_app").await, 2.0);

    // App B signing, on its own path, an update for app A's number: signed by another app,
    // kept in quarantine as on the shared path.
    assert_eq!(post_to("/9002", &a2, "secret-b").await.status(), 200);
    assert!(quarantined_for(&cfg, "signed_by_another_app").await);
    assert_eq!(inbound_wamids(&mut con, &cfg).await, ["wamid.A1"]);
    // The shared path still serves every app's numbers.
    let b1 = text_body("2220002", "573002", "wamid.B1", "hola");
    let c1 = text_body("3330003", "573003", "wamid.C1", "hola");
    assert_eq!(post_to("", &b1, "secret-b").await.status(), 200);
    assert_eq!(post_to("", &c1, APP_SECRET).await.status(), 200);
    assert_eq!(
        inbound_wamids(&mut con, &cfg).await,
        ["wamid.A1", "wamid.B1", "wamid.C1"]
    );
    assert_eq!(ingest.metric("wafleet_ingest_apps").await, 2.0);
    assert_eq!(ingest.metric("wafleet_ingest_app_secrets").await, 3.0);

    // The handshake on an app's path takes that app's verify token only.
    let handshake = |path: &str, token: &str| {
        let url = format!(
            "{}/webhooks/whatsapp{path}?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=77",
            ingest.url
        );
        let http = ingest.http.clone();
        async move { http.get(url).send().await.unwrap().status() }
    };
    assert_eq!(handshake("/9001", "verify-a").await, 200);
    assert_eq!(handshake("/9001", "verify-b").await, 403);
    assert_eq!(handshake("/9001", VERIFY_TOKEN).await, 403);
    assert_eq!(handshake("/9999", "verify-a").await, 403);
    assert_eq!(handshake("", "verify-b").await, 200);

    // Naming the third number's app opens its path within the refresh interval.
    cfg.add_channel("3330003", |s| s.app_id = Some("9003".into()))
        .await;
    let c2 = text_body("3330003", "573003", "wamid.C2", "hola");
    eventually("app 9003's path to open", Duration::from_secs(10), || {
        let res = post_to("/9003", &c2, APP_SECRET);
        async move { (res.await.status() == 200).then_some(()) }
    })
    .await;
    assert_eq!(
        inbound_wamids(&mut con, &cfg).await,
        ["wamid.A1", "wamid.B1", "wamid.C1", "wamid.C2"]
    );
    assert_eq!(ingest.metric("wafleet_ingest_apps").await, 3.0);
    ingest.stop().await.unwrap();

    // With the shared path closed, a POST there is a 404 (its body never read, however it is
    // signed), and apps' own paths serve as before.
    let closed = Ingest::start(IngestSettings {
        shared_path: false,
        ..cfg.ingest_settings()
    })
    .await;
    let unknown_app = r#"wafleet_ingest_requests_total{outcome="unknown_app"}"#;
    let before = closed.metric(unknown_app).await;
    let c3 = text_body("3330003", "573003", "wamid.C3", "hola");
    let post = |path: &str, body: &[u8]| {
        closed
            .http
            .post(format!("{}/webhooks/whatsapp{path}", closed.url))
            .header("x-hub-signature-256", sign(body, APP_SECRET.as_bytes()))
            .body(body.to_vec())
            .send()
    };
    assert_eq!(post("", &c3).await.unwrap().status(), 404);
    let handshake = format!(
        "{}/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1",
        closed.url
    );
    assert_eq!(
        closed.http.get(handshake).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        inbound_wamids(&mut con, &cfg).await,
        ["wamid.A1", "wamid.B1", "wamid.C1", "wamid.C2"]
    );
    assert_eq!(post("/9003", &c3).await.unwrap().status(), 200);
    assert_eq!(
        inbound_wamids(&mut con, &cfg).await,
        ["wamid.A1", "wamid.B1", "wamid.C1", "wamid.C2", "wamid.C3"]
    );
    assert_eq!(closed.metric(unknown_app).await - before, 2.0);
    // A callback URL with a typo reaches nothing, and says so.
    let typo = closed
        .http
        .post(format!("{}/webhook", closed.url))
        .body(c3.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(typo.status(), 404);
    assert_eq!(requests(&closed, "not_found").await, 1.0);
    closed.stop().await.unwrap();
}

#[tokio::test]
async fn an_apps_numbers_are_found_while_another_tenants_channel_does_not_decrypt() {
    use wafleet::store::channels;
    let cfg = TestConfig::new().await;
    let pg = cfg.pg().await;
    let (ours, sibling, stranger) = ("1110001", "1110002", "2220001");
    cfg.add_channel(ours, |_| {}).await;
    cfg.add_channel(sibling, |_| {}).await;
    cfg.add_channel(stranger, |c| {
        c.app_secrets = Some(vec![wafleet::config::Secret::new("another-app".into())]);
    })
    .await;
    // Another tenant's access token, sealed with another key (its row changed by hand): the
    // processes serve every channel all the same, and so must the app's rate limit.
    let foreign =
        wafleet::crypto::Cipher::from_key_text(&wafleet::crypto::Cipher::generate_key_text())
            .unwrap()
            .encrypt(&format!("channel:{stranger}:access_token"), b"x");
    let id: i64 = sqlx::query_scalar("SELECT id FROM channels WHERE phone_number_id = $1")
        .bind(ours)
        .fetch_one(&pg)
        .await
        .unwrap();
    // Then its app secrets too: left out, as the processes that serve channels leave it out.
    for column in ["access_token = $1", "app_secrets = ARRAY[$1]"] {
        sqlx::query(&format!(
            "UPDATE channels SET {column} WHERE phone_number_id = $2"
        ))
        .bind(&foreign)
        .bind(stranger)
        .execute(&pg)
        .await
        .unwrap();
        let mut numbers = channels::app_numbers(&pg, &cfg.cipher(), id).await.unwrap();
        numbers.sort();
        assert_eq!(numbers, [ours, sibling], "{column}");
    }
}

#[tokio::test]
async fn rotating_again_with_nothing_to_reseal_leaves_every_channel_as_it_was() {
    use wafleet::store::channels::{self, Resealed};
    let cfg = TestConfig::new().await;
    let pg = cfg.pg().await;
    cfg.add_channel(FIXTURE_NUMBERS[0], |_| {}).await;
    let before = channels::fingerprint(&pg).await.unwrap();
    // Every secret already sealed with the current key: a second run of `rotate-secrets`.
    assert_eq!(
        channels::reseal_all(&pg, &cfg.cipher()).await.unwrap(),
        Resealed {
            resealed: 0,
            current: 3
        }
    );
    // No row written: ingest and the workers have nothing to reload, and `updated_at` still
    // says when the channel last changed.
    assert_eq!(channels::fingerprint(&pg).await.unwrap(), before);
}

#[tokio::test]
async fn clearing_the_models_of_a_number_that_is_no_channel_says_so() {
    use wafleet::store::channels;
    let cfg = TestConfig::new().await;
    let pg = cfg.pg().await;
    cfg.add_channel(FIXTURE_NUMBERS[0], |_| {}).await;
    // `wafleetctl channel clear-models` with a mistyped number must fail, not report 0 removed.
    assert_eq!(
        channels::clear_providers(&pg, FIXTURE_NUMBERS[0])
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        channels::clear_providers(&pg, "999000999").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn ingest_on_another_partition_count_than_the_fleets_is_refused_and_the_same_one_starts() {
    let cfg = TestConfig::new().await;
    let first = Ingest::start(cfg.ingest_settings()).await;
    let key = wafleet::partition_count::key(&cfg.prefix);
    let mut con = cfg.redis().await;
    let recorded: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        recorded,
        Some(cfg.partitions.to_string()),
        "the first process records its count"
    );

    let mut other = cfg.ingest_settings();
    other.common.partitions = cfg.partitions + 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Bounded: a process that is not refused serves until its shutdown, which never comes.
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        wafleet::ingest::run(other.clone(), listener, std::future::pending()),
    )
    .await
    .expect("a process on another partition count is refused at start, not served")
    .expect_err("a process on another partition count is refused");
    let msg = format!("{refused:#}");
    assert!(
        msg.contains(&format!("WAFLEET_PARTITIONS is {}", cfg.partitions + 1))
            && msg.contains(&format!("use {}", cfg.partitions)),
        "names both counts: {msg}"
    );

    let same = Ingest::start(cfg.ingest_settings()).await;
    same.stop().await.unwrap();
    first.stop().await.unwrap();

    // Redis lost its data (flushed, or restarted without persistence): nothing is refused, the
    // next process records its count again.
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    let after_loss = Ingest::start(other).await;
    let recorded: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(recorded, Some((cfg.partitions + 1).to_string()));
    after_loss.stop().await.unwrap();
}

/// A forged body of 3 MB posted to the shared path is hashed once per app secret of the fleet
/// (1,100 passes, about 2 s of CPU, with 1,000 tenants' apps): checked on the request's own
/// thread, it held that runtime thread for the whole time, and the webhooks of every other
/// tenant waiting on it with it (release binaries, 1,000 channels: four such bodies took the
/// p99.9 of real webhooks on apps' own paths from 11 ms to 7.3 s, one of them timed out). The
/// test runs ingest on its single-threaded runtime, where a check on the request's thread
/// holds up everything, the test's own client included.
#[tokio::test]
async fn a_forged_body_checked_against_every_apps_secret_does_not_hold_up_other_webhooks() {
    let cfg = TestConfig::new().await;
    // 400 apps' secrets, as a channel's rotation list: the registry keeps each distinct one.
    let secrets: Vec<String> = (0..400).map(|i| format!("tenant-app-secret-{i}")).collect();
    cfg.add_channel("1110001", |s| {
        s.app_id = Some("9001".into());
        s.app_secrets = Some(
            secrets
                .iter()
                .map(|x| wafleet::config::Secret::new(x.clone()))
                .collect(),
        );
    })
    .await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    assert_eq!(ingest.metric("wafleet_ingest_app_secrets").await, 400.0);

    let forged = vec![b'x'; 3_000_000];
    let request = ingest
        .http
        .post(format!("{}/webhooks/whatsapp", ingest.url))
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(forged);
    let forged = tokio::spawn(async move { request.send().await.unwrap().status() });

    // Real webhooks on the app's own path, one after another, while the forged body is checked.
    let mut answered = 0;
    while !forged.is_finished() && answered < 50 {
        let body = text_body("1110001", "573001", &format!("wamid.R{answered}"), "hola");
        let res = ingest
            .http
            .post(format!("{}/webhooks/whatsapp/9001", ingest.url))
            .header("x-hub-signature-256", sign(&body, secrets[0].as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        answered += 1;
    }
    assert_eq!(
        answered, 50,
        "the forged body's check was done after {answered} webhooks: it held up the others"
    );
    assert_eq!(forged.await.unwrap(), 401);
    assert_eq!(requests(&ingest, "bad_signature").await, 1.0);
    assert_eq!(requests(&ingest, "accepted").await, 50.0);
    ingest.stop().await.unwrap();
}

/// `wafleet_ingest_open_connections` of each of ingest's two lanes.
async fn open_connections(ingest: &Ingest) -> [f64; 2] {
    let mut lanes = [0.0; 2];
    for (lane, open) in lanes.iter_mut().enumerate() {
        *open = ingest
            .metric(&format!(
                r#"wafleet_ingest_open_connections{{lane="{lane}"}}"#
            ))
            .await;
    }
    lanes
}

/// Connections are spread over ingest's serving threads (each with its own Redis connection),
/// webhooks are enqueued from every one of them, and on shutdown a request already being
/// received is finished and answered while new connections are refused.
#[tokio::test]
async fn connections_are_spread_over_the_lanes_and_a_request_in_flight_is_finished_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (cfg, ingest) = setup().await;
    let pnid = "106540352242922";
    // Four keep-alive connections (one client each), each posting one webhook.
    let clients: Vec<reqwest::Client> = (0..4).map(|_| reqwest::Client::new()).collect();
    for (n, client) in clients.iter().enumerate() {
        let body = text_body(pnid, "573001112233", &format!("wamid.LANE{n}"), "hola");
        let status = client
            .post(format!("{}/webhooks/whatsapp", ingest.url))
            .header(
                "x-hub-signature-256",
                wafleet_core::signature::sign(&body, APP_SECRET.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "webhook {n}");
    }
    // The four, and the connection that scrapes: three on one lane, two on the other.
    let mut open = open_connections(&ingest).await;
    open.sort_by(f64::total_cmp);
    assert_eq!(open, [2.0, 3.0], "connections per lane");
    let mut con = cfg.redis().await;
    assert_eq!(all_updates(&mut con, &inbound_streams(&cfg)).await.len(), 4);

    // A webhook whose body is still arriving when shutdown starts.
    let body = text_body(pnid, "573001112233", "wamid.DRAINED", "hola");
    let signature = wafleet_core::signature::sign(&body, APP_SECRET.as_bytes());
    let addr = ingest.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /webhooks/whatsapp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         x-hub-signature-256: {signature}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    // Served: its lane counts it (the scraper's connection is counted too).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_connections(&ingest).await.iter().sum::<f64>() < 6.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow connection is never served"
        );
        tokio::task::yield_now().await;
    }
    drop(clients);

    let stopping = tokio::spawn(ingest.stop());
    // The listener closes first: new connections are refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after shutdown"
        );
        tokio::task::yield_now().await;
    }
    // A slow sender: the rest comes well into the drain, which waits for it (grace 5 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.write_all(&body[10..]).await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Answered, then closed by the drain (read_to_string saw the end).
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    stopping.await.unwrap().unwrap();
    let updates = all_updates(&mut con, &inbound_streams(&cfg)).await;
    assert_eq!(updates.len(), 5);
}
