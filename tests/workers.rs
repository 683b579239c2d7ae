//! The conversation and status stages on the worker runtime, in process, against a real Redis
//! and Postgres, fed through the real ingest.

use std::time::Duration;

use sqlx::PgPool;
use wafleet_tests::*;

const PNID: &str = "106540352242922";
const T0: i64 = 1_760_000_000;

struct Env {
    ingest: Ingest,
    worker: Worker,
    pg: PgPool,
    /// Last: fields drop in order, and this one deletes the database and keys the others use.
    cfg: TestConfig,
}

async fn env_with(tweak: impl FnOnce(&mut wafleet::store::channels::ChannelSpec)) -> Env {
    let cfg = TestConfig::new().await;
    cfg.add_channel(PNID, tweak).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let worker = Worker::start(cfg.worker_settings(&["conversation", "status"])).await;
    let pg = cfg.pg().await;
    Env {
        cfg,
        ingest,
        worker,
        pg,
    }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

impl Env {
    /// A human agent takes the customer's conversation.
    async fn hand_to_human(&self, customer: &str) {
        sqlx::query("UPDATE conversations SET owner = 'human' WHERE customer_key = $1")
            .bind(customer)
            .execute(&self.pg)
            .await
            .unwrap();
    }

    /// One customer message answered by `n` parts in `sending` (numbered from 0, with wamids
    /// `<prefix><part_no>` when given), as the sender leaves them while Meta answers; their ids.
    async fn parts_of_one_reply(&self, n: i32, wamid_prefix: Option<&str>) -> Vec<i64> {
        self.send("57300", "wamid.in", T0, "hola").await;
        self.stored(1).await;
        self.wait_followups().await;
        sqlx::query_scalar(
            "INSERT INTO outbound_messages (conversation_id, channel_id, reply_to, part_no, kind,
                                            body, state, wamid)
             SELECT conversation_id, channel_id, m.id, n, 'reply', 'x', 'sending', $2 || n
               FROM messages m, generate_series(0, $1 - 1) n ORDER BY n RETURNING id",
        )
        .bind(n)
        .bind(wamid_prefix)
        .fetch_all(&self.pg)
        .await
        .unwrap()
    }

    /// The states of the outbound parts, by part number.
    async fn part_states(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT state FROM outbound_messages ORDER BY part_no")
            .fetch_all(&self.pg)
            .await
            .unwrap()
    }

    /// What the sender records when Meta accepts a part.
    async fn record_accepted(&self, outbound_id: i64, wamid: &str) {
        let mut con = self.pg.acquire().await.unwrap();
        wafleet::store::conversations::record_accepted_many(
            &mut con,
            &[wafleet::store::conversations::Accepted::new(
                outbound_id,
                wamid,
            )],
        )
        .await
        .unwrap();
    }

    async fn send(&self, from: &str, wamid: &str, ts: i64, text: &str) {
        let res = self
            .ingest
            .post_signed(&text_message(PNID, from, wamid, ts, text), APP_SECRET)
            .await;
        assert_eq!(res.status(), 200);
    }

    async fn post(&self, body: &[u8]) {
        assert_eq!(
            self.ingest.post_signed(body, APP_SECRET).await.status(),
            200
        );
    }

    /// Waits until `n` messages are stored.
    async fn stored(&self, n: i64) {
        let pg = self.pg.clone();
        eventually(
            &format!("{n} stored messages"),
            Duration::from_secs(20),
            || {
                let pg = pg.clone();
                async move {
                    let (c,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
                        .fetch_one(&pg)
                        .await
                        .ok()?;
                    (c >= n).then_some(())
                }
            },
        )
        .await;
    }

    async fn message(&self, wamid: &str) -> (String, Option<String>, Vec<String>, String, i32) {
        sqlx::query_as("SELECT message_type, text_redacted, pii_types, action, session_no FROM messages WHERE wamid = $1")
            .bind(wamid)
            .fetch_one(&self.pg)
            .await
            .unwrap()
    }

    async fn stream_len(&self, stream: &str) -> usize {
        let mut con = self.cfg.redis().await;
        read_stream(&mut con, stream).await.len()
    }

    async fn replies(&self) -> usize {
        let keys = self.cfg.keys();
        let mut n = 0;
        for p in 0..keys.partitions() {
            n += self.stream_len(&keys.replies(p)).await;
        }
        n
    }

    async fn outbox(&self) -> usize {
        let keys = self.cfg.keys();
        let mut n = 0;
        for p in 0..keys.partitions() {
            n += self.stream_len(&keys.outbox(p)).await;
        }
        n
    }

    async fn wait_followups(&self) {
        self.cfg.wait_inbound_drained(20).await;
    }

    /// Until a statement of this test's database waits for a lock of the kind named
    /// (`pg_stat_activity.wait_event`, e.g. `advisory`), or any lock when `None`.
    async fn waiting_on_a_lock(&self, what: &str, wait_event: Option<&str>) {
        let pg = &self.pg;
        eventually(what, Duration::from_secs(20), || async move {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND ($1::text IS NULL OR wait_event = $1)",
            )
            .bind(wait_event)
            .fetch_one(pg)
            .await
            .ok()?;
            (n > 0).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn an_inbound_message_is_stored_redacted_on_its_conversation_before_any_reply_job() {
    let e = env().await;
    e.send(
        "573001112233",
        "wamid.PII",
        T0,
        "Mi tarjeta es 4111 1111 1111 1111 y mi correo ana.perez@gmail.com, pedido #100234567",
    )
    .await;
    e.stored(1).await;
    e.wait_followups().await;
    let (kind, text, pii, action, session) = e.message("wamid.PII").await;
    let text = text.unwrap();
    assert_eq!(kind, "text");
    assert!(
        text.contains("[CARD]") && text.contains("[EMAIL]"),
        "{text}"
    );
    assert!(!text.contains("4111") && !text.contains("gmail"), "{text}");
    assert!(
        text.contains("#100234567"),
        "order numbers are not PII: {text}"
    );
    assert_eq!(pii, ["CARD", "EMAIL"]);
    assert_eq!((action.as_str(), session), ("reply", 1));
    let (wa_id, last): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT wa_id, last_customer_message_at FROM conversations")
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(wa_id.as_deref(), Some("573001112233"));
    assert_eq!(
        last.unwrap().timestamp(),
        T0,
        "the window is measured from the message's own timestamp"
    );
    assert_eq!(e.replies().await, 1);
    // The message is removed from the inbound stream once done.
    let keys = e.cfg.keys();
    let conv = format!("{PNID}:573001112233");
    assert_eq!(
        e.stream_len(&keys.inbound(keys.partition_of(&conv))).await,
        0
    );
    e.worker.stop().await.unwrap();
}

#[tokio::test]
async fn any_message_the_customer_sends_opens_the_window_but_a_reaction_does_not() {
    let e = env().await;
    let window = || async {
        let (last,): (Option<chrono::DateTime<chrono::Utc>>,) =
            sqlx::query_as("SELECT last_customer_message_at FROM conversations")
                .fetch_one(&e.pg)
                .await
                .unwrap();
        last.map(|t| t.timestamp())
    };
    let reaction = serde_json::json!({"from": "573002", "id": "wamid.R", "timestamp": T0.to_string(),
        "type": "reaction", "reaction": {"message_id": "wamid.ours", "emoji": "👍"}});
    e.post(&message_body(PNID, "573002", reaction)).await;
    e.stored(1).await;
    e.wait_followups().await;
    assert_eq!(
        window().await,
        None,
        "Meta does not say a reaction opens it"
    );
    // A poll: a type the Cloud API does not support, but a message the customer sent.
    let poll = serde_json::json!({"from": "573002", "id": "wamid.U", "timestamp": (T0 + 5).to_string(),
        "type": "unsupported", "unsupported": {"type": "poll_creation"},
        "errors": [{"code": 131051, "title": "Message type unknown"}]});
    e.post(&message_body(PNID, "573002", poll)).await;
    e.stored(2).await;
    e.wait_followups().await;
    assert_eq!(window().await, Some(T0 + 5));
    // An edit of an earlier message, as Meta may send it (the shape of the unsupported fixture):
    // not the customer saying something new.
    let edit = serde_json::json!({"from": "573002", "id": "wamid.E", "timestamp": (T0 + 9).to_string(),
        "type": "unsupported", "unsupported": {"type": "edit"},
        "errors": [{"code": 131051, "title": "Message type unknown"}]});
    e.post(&message_body(PNID, "573002", edit)).await;
    e.stored(3).await;
    e.wait_followups().await;
    assert_eq!(window().await, Some(T0 + 5), "an edit does not extend it");
    assert_eq!(e.message("wamid.E").await.3, "none", "nor gets an answer");
    e.worker.stop().await.unwrap();
}

/// A customer's number change as Meta sends it (reference A.4): from the old number, the new one
/// in `system.wa_id`.
fn number_change(old: &str, new: &str, wamid: &str, ts: i64) -> Vec<u8> {
    let change = serde_json::json!({"from": old, "id": wamid, "timestamp": ts.to_string(),
        "type": "system", "system": {"body": format!("User Cliente changed from {old} to {new}"),
        "type": "user_changed_number", "wa_id": new}});
    message_body(PNID, old, change)
}

impl Env {
    /// The first customer writes from `from`, and an agent takes their conversation: its id.
    async fn agent_takes_first_customer(&self, from: &str, wamid: &str) -> i64 {
        self.send(from, wamid, T0, "hola, necesito ayuda con mi pedido")
            .await;
        self.stored(1).await;
        self.wait_followups().await;
        let (id,): (i64,) = sqlx::query_as("SELECT id FROM conversations")
            .fetch_one(&self.pg)
            .await
            .unwrap();
        let mut tx = self.pg.begin().await.unwrap();
        assert!(
            wafleet::store::conversations::hand_over(&mut tx, id, "agent", None, None)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        id
    }

    /// A customer writes from `old` (`wamid.<tag>1`), then, before Meta's number change is
    /// processed, from `new` (`wamid.<tag>2`): two conversations, both answered.
    async fn writes_from_both_numbers(&self, old: &str, new: &str, tag: &str) {
        self.send(old, &format!("wamid.{tag}1"), T0, "hola").await;
        self.stored(1).await;
        self.send(
            new,
            &format!("wamid.{tag}2"),
            T0 + 10,
            "¿me atiende alguien?",
        )
        .await;
        self.stored(2).await;
        self.wait_followups().await;
    }

    /// Writes a first reply part (not sent) answering the message `wamid`; returns its id.
    async fn unsent_part(&self, wamid: &str) -> i64 {
        let (part,): (i64,) = sqlx::query_as(
            "INSERT INTO outbound_messages (conversation_id, channel_id, reply_to, session_no, kind,
                                            part_no, body)
             SELECT conversation_id, channel_id, id, session_no, 'reply', 1, 'x' FROM messages
              WHERE wamid = $1 RETURNING id",
        )
        .bind(wamid)
        .fetch_one(&self.pg)
        .await
        .unwrap();
        part
    }

    /// [`Self::writes_from_both_numbers`], then the older number's conversation, the newer
    /// number's conversation and its message.
    async fn writes_from_both_numbers_ids(
        &self,
        old: &str,
        new: &str,
        tag: &str,
    ) -> (i64, i64, i64) {
        self.writes_from_both_numbers(old, new, tag).await;
        sqlx::query_as(
            "SELECT (SELECT conversation_id FROM messages WHERE wamid = $1),
                    conversation_id, id FROM messages WHERE wamid = $2",
        )
        .bind(format!("wamid.{tag}1"))
        .bind(format!("wamid.{tag}2"))
        .fetch_one(&self.pg)
        .await
        .unwrap()
    }

    /// Every conversation: id, key, wa_id and owner, by id.
    async fn conversations(&self) -> Vec<(i64, String, Option<String>, String)> {
        sqlx::query_as("SELECT id, customer_key, wa_id, owner FROM conversations ORDER BY id")
            .fetch_all(&self.pg)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_customer_who_changes_number_keeps_their_conversation_and_whoever_answers_it() {
    let e = env().await;
    let id = e.agent_takes_first_customer("573020", "wamid.N1").await;
    e.post(&number_change("573020", "573029", "wamid.N2", T0 + 5))
        .await;
    e.stored(2).await;
    // The change is followed after its message is stored: done once the job is.
    e.wait_followups().await;
    e.send(
        "573029",
        "wamid.N3",
        T0 + 10,
        "sigo aquí, desde mi número nuevo",
    )
    .await;
    e.stored(3).await;
    e.wait_followups().await;
    let conversations: Vec<(i64, String, Option<String>, String)> =
        sqlx::query_as("SELECT id, customer_key, wa_id, owner FROM conversations")
            .fetch_all(&e.pg)
            .await
            .unwrap();
    assert_eq!(
        conversations,
        vec![(id, "573029".into(), Some("573029".into()), "human".into())],
        "one conversation, under the new number, still the agent's"
    );
    assert_eq!(
        e.message("wamid.N3").await.3,
        "none",
        "the bot does not answer a customer a human has, whatever number they write from"
    );
    let mut con = e.cfg.redis().await;
    let cached: bool = redis::AsyncCommands::exists(
        &mut con,
        e.cfg.keys().session_cache(&format!("{PNID}:573020")),
    )
    .await
    .unwrap();
    assert!(
        !cached,
        "the old number no longer leads to the conversation"
    );
    e.worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_customer_who_writes_from_the_new_number_first_stays_with_their_agent() {
    use wafleet::store::replies::{self, NewReply, ReplyRecord};
    let e = env().await;
    let id = e.agent_takes_first_customer("573040", "wamid.M1").await;
    // The new number's message is processed first (another partition): a conversation of its
    // own, which the bot answers.
    e.send(
        "573049",
        "wamid.M2",
        T0 + 10,
        "sigo aquí, desde mi número nuevo",
    )
    .await;
    e.stored(2).await;
    e.wait_followups().await;
    assert_eq!(e.message("wamid.M2").await.3, "reply");
    // A part of the bot's answer written, not sent yet.
    let part = e.unsent_part("wamid.M2").await;
    // The model starts on it too: its context names the new number's conversation.
    let (m2,): (i64,) = sqlx::query_as("SELECT id FROM messages WHERE wamid = 'wamid.M2'")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    let mut con = e.pg.acquire().await.unwrap();
    let (ctx, _) = replies::reply_contexts(&mut con, &[(m2, 20)])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    // Then the change, sent before that message by Meta's clock.
    e.post(&number_change("573040", "573049", "wamid.M3", T0 + 5))
        .await;
    e.stored(3).await;
    e.wait_followups().await;
    // The model's answer is recorded after the merge.
    let answer = ReplyRecord::new(
        &ctx,
        &NewReply {
            outcome: "produced",
            failures: serde_json::json!([]),
            ..NewReply::default()
        },
        vec![("reply".into(), "y".into())],
        "pending",
    );
    assert_eq!(
        replies::record_replies(&mut con, &[answer]).await.unwrap(),
        vec![true],
        "the answer of a merged conversation's message is recorded"
    );
    let (late,): (i64,) = sqlx::query_as(
        "SELECT id FROM outbound_messages WHERE reply_to = $1 AND body = 'y' AND conversation_id = $2",
    )
    .bind(m2)
    .bind(id)
    .fetch_one(&e.pg)
    .await
    .unwrap();
    assert_eq!(
        e.conversations().await,
        vec![(id, "573049".into(), Some("573049".into()), "human".into())],
        "one conversation, the older one, under the new number, still the agent's"
    );
    let (elsewhere,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM messages WHERE conversation_id <> $1")
            .bind(id)
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(elsewhere, 0, "the customer's whole history in it");
    assert_eq!(
        replies::claim_many(&mut con, &[part, late]).await.unwrap(),
        vec![replies::Claim::Suppressed; 2],
        "the bot's answers for the new number are not sent to a customer a human has"
    );
    drop(con);
    e.send("573049", "wamid.M4", T0 + 20, "¿hola?").await;
    e.stored(4).await;
    e.wait_followups().await;
    assert_eq!(e.message("wamid.M4").await.3, "none");
    // A redelivered change finds everything done.
    e.cfg.forget_dedup_marks().await;
    e.post(&number_change("573040", "573049", "wamid.M3", T0 + 5))
        .await;
    e.wait_followups().await;
    assert_eq!(e.conversations().await.len(), 1);
    e.worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_asking_for_a_human_after_a_merge_hands_over_the_merged_conversation() {
    let e = env().await;
    e.writes_from_both_numbers("573070", "573079", "H").await;
    // The model read the new number's conversation with its message, then the change merged it.
    let (newer, message): (i64, i64) =
        sqlx::query_as("SELECT conversation_id, id FROM messages WHERE wamid = 'wamid.H2'")
            .fetch_one(&e.pg)
            .await
            .unwrap();
    e.post(&number_change("573070", "573079", "wamid.H3", T0 + 5))
        .await;
    e.stored(3).await;
    e.wait_followups().await;
    let conversations = e.conversations().await;
    assert_eq!(conversations.len(), 1);
    assert_ne!(conversations[0].0, newer);
    let mut tx = e.pg.begin().await.unwrap();
    assert!(
        wafleet::store::conversations::hand_over(&mut tx, newer, "model", None, Some(message))
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    assert_eq!(
        e.conversations().await[0].3,
        "human",
        "the customer's conversation is handed over"
    );
    let (events,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM handover_events WHERE conversation_id = $1 AND message_id = $2",
    )
    .bind(conversations[0].0)
    .bind(message)
    .fetch_one(&e.pg)
    .await
    .unwrap();
    assert_eq!(events, 1);
    e.worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_merge_reaches_the_dashboard_stream_once_even_when_redis_refused_it_first() {
    use redis::AsyncCommands;
    let e = env().await;
    let (older, newer, message) = e
        .writes_from_both_numbers_ids("573080", "573089", "J")
        .await;
    let stream = e.cfg.keys().handover_stream();
    let mut con = e.cfg.redis().await;
    // Redis refuses the event (here: the stream key is not a stream).
    let _: () = con.set(&stream, "not a stream").await.unwrap();
    e.post(&number_change("573080", "573089", "wamid.J3", T0 + 5))
        .await;
    wait_count(&e.pg, "SELECT count(*) FROM conversations", 1, 20).await;
    let _: () = con.del(&stream).await.unwrap();
    let merged = |events: &[(String, std::collections::HashMap<String, Vec<u8>>)]| -> Vec<serde_json::Value> {
        events
            .iter()
            .map(|(_, f)| serde_json::from_slice::<serde_json::Value>(&f["event"]).unwrap())
            .filter(|ev| ev["kind"] == "merged")
            .collect()
    };
    let got = eventually(
        "the merge on the dashboard stream",
        Duration::from_secs(20),
        || async {
            let mut con = e.cfg.redis().await;
            let got = merged(&read_stream(&mut con, &stream).await);
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    assert_eq!(got[0]["conversation_id"], older);
    assert_eq!(got[0]["merged_id"], newer);
    assert_eq!(got[0]["phone_number_id"], PNID);
    assert!(
        !got[0].to_string().contains("57308"),
        "no phone number in the event"
    );
    // A sweep, and a redelivered change, announce nothing again.
    wafleet::agents::release_idle(&e.pg, &mut con, &e.cfg.keys())
        .await
        .unwrap();
    e.cfg.forget_dedup_marks().await;
    e.post(&number_change("573080", "573089", "wamid.J3", T0 + 5))
        .await;
    e.wait_followups().await;
    assert_eq!(merged(&read_stream(&mut con, &stream).await).len(), 1);
    // The model, which read the newer conversation, asks for a human: the event names the
    // conversation that exists.
    let shared =
        wafleet::shared_redis::SharedRedis::new(&e.cfg.redis_url, Duration::from_secs(2)).unwrap();
    assert!(
        wafleet::stages::hand_over_and_publish(
            &e.pg,
            &shared,
            &e.cfg.keys(),
            newer,
            "model",
            Some(message),
            Some(PNID),
        )
        .await
        .unwrap()
    );
    let handovers: Vec<serde_json::Value> = read_stream(&mut con, &stream)
        .await
        .iter()
        .map(|(_, f)| serde_json::from_slice::<serde_json::Value>(&f["event"]).unwrap())
        .filter(|ev| ev["kind"] == "handover")
        .collect();
    assert_eq!(handovers.len(), 1);
    assert_eq!(handovers[0]["conversation_id"], older);
    e.worker.stop().await.unwrap();
}

#[tokio::test]
async fn redeliveries_after_a_number_change_leave_no_conversation_under_the_old_number() {
    let e = env().await;
    e.send("573050", "wamid.C1", T0, "hola").await;
    e.stored(1).await;
    e.post(&number_change("573050", "573059", "wamid.C2", T0 + 5))
        .await;
    e.stored(2).await;
    e.wait_followups().await;
    let followed = e.conversations().await;
    assert_eq!(followed.len(), 1);
    assert_eq!(followed[0].1, "573059");
    // The change again: it finds its message where it is.
    e.cfg.forget_dedup_marks().await;
    e.post(&number_change("573050", "573059", "wamid.C2", T0 + 5))
        .await;
    e.wait_followups().await;
    assert_eq!(e.conversations().await, followed);
    // A message sent from the old number before the change, again.
    e.cfg.forget_dedup_marks().await;
    e.send("573050", "wamid.C1", T0, "hola").await;
    e.wait_followups().await;
    assert_eq!(e.conversations().await, followed);
    e.worker.stop().await.unwrap();
}

/// Makes Redis refuse the dashboard stream's events (its key holds a string, not a stream), or
/// take them again.
async fn refuse_dashboard_events(cfg: &TestConfig, refuse: bool) {
    use redis::AsyncCommands;
    let mut con = cfg.redis().await;
    let stream = cfg.keys().handover_stream();
    let _: () = if refuse {
        con.set(stream, "not a stream").await.unwrap()
    } else {
        con.del(stream).await.unwrap()
    };
}

/// The dashboard stream's events of `kind`, oldest first.
async fn dashboard_events(cfg: &TestConfig, kind: &str) -> Vec<serde_json::Value> {
    let mut con = cfg.redis().await;
    read_stream(&mut con, &cfg.keys().handover_stream())
        .await
        .iter()
        .map(|(_, f)| serde_json::from_slice::<serde_json::Value>(&f["event"]).unwrap())
        .filter(|ev| ev["kind"] == kind)
        .collect()
}

#[tokio::test]
async fn a_customer_who_takes_over_a_former_holders_number_never_lands_in_their_conversation() {
    use redis::AsyncCommands;
    let e = env().await;
    // Someone who had the number before (their message predates the change), with an agent, and
    // recent: the stage's cached session of the number still leads to their conversation.
    e.send("573069", "wamid.F1", T0 - 60, "hola, soy el dueño anterior")
        .await;
    e.stored(1).await;
    e.hand_to_human("573069").await;
    e.send("573060", "wamid.F2", T0, "hola").await;
    e.stored(2).await;
    e.wait_followups().await;
    let ids = e.conversations().await;
    let (former, customer) = (ids[0].0, ids[1].0);
    // A reply to the former holder not sent yet: it must not reach the number's new holder.
    let pending = e.unsent_part("wamid.F1").await;
    e.post(&number_change("573060", "573069", "wamid.F3", T0 + 5))
        .await;
    e.stored(3).await;
    e.wait_followups().await;
    e.send(
        "573069",
        "wamid.F4",
        T0 + 10,
        "sigo aquí, desde mi número nuevo",
    )
    .await;
    e.stored(4).await;
    e.wait_followups().await;
    let (landed,): (i64,) =
        sqlx::query_as("SELECT conversation_id FROM messages WHERE wamid = 'wamid.F4'")
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(
        landed, customer,
        "the customer's message from the new number is in their own conversation"
    );
    assert_eq!(
        e.message("wamid.F4").await.3,
        "reply",
        "the bot, which has the customer, answers: the former holder's agent does not see it"
    );
    let conversations = e.conversations().await;
    assert_eq!(
        conversations[1],
        (
            customer,
            "573069".into(),
            Some("573069".into()),
            "bot".into()
        ),
        "the customer's conversation has the new number"
    );
    assert_eq!(
        conversations[0],
        (former, format!("moved:{former}"), None, "human".into()),
        "the former holder's conversation is set aside, without the number"
    );
    let (kept,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM messages WHERE conversation_id = $1")
            .bind(former)
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(kept, 1, "the former holder's history stays readable");
    let waits = wafleet::store::agents::human_waits(&e.pg).await.unwrap();
    assert_eq!(
        waits[0].conversations, 0,
        "no customer waits for a human there: nobody can write to it"
    );
    let (state, reason): (String, Option<String>) =
        sqlx::query_as("SELECT state, fail_reason FROM outbound_messages WHERE id = $1")
            .bind(pending)
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), reason.as_deref()),
        (
            "failed",
            Some("the customer's number now belongs to someone else")
        )
    );
    // Dashboards are told, with ids only.
    let moved = dashboard_events(&e.cfg, "number_moved").await;
    let mut con = e.cfg.redis().await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["conversation_id"], former);
    assert_eq!(moved[0]["reason"], "number_change");
    assert!(!moved[0].to_string().contains("57306"), "{}", moved[0]);
    let cached: Option<String> = con
        .get(e.cfg.keys().session_cache(&format!("{PNID}:573069")))
        .await
        .unwrap();
    assert!(
        cached.is_none_or(|c| {
            serde_json::from_str::<serde_json::Value>(&c).unwrap()["conversation_id"] != former
        }),
        "the number's cached session no longer leads to the former holder"
    );
    // A redelivered change finds the work done.
    e.cfg.forget_dedup_marks().await;
    e.post(&number_change("573060", "573069", "wamid.F3", T0 + 5))
        .await;
    e.wait_followups().await;
    assert_eq!(e.conversations().await, conversations);
    // Erasing the number finds the former holder's conversation too: the number names both.
    let erased = wafleet::erasure::erase_customer(&e.pg, &mut con, &e.cfg.keys(), PNID, "573069")
        .await
        .unwrap()
        .expect("the number is known");
    assert_eq!(erased.rows.conversations, vec![former, customer]);
    e.worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_former_holders_conversation_set_aside_is_announced_once_even_when_redis_refused_it() {
    let e = env().await;
    e.send("573119", "wamid.S1", T0 - 60, "hola, soy el dueño anterior")
        .await;
    e.send("573110", "wamid.S2", T0, "hola").await;
    e.stored(2).await;
    e.wait_followups().await;
    let former: i64 =
        sqlx::query_scalar("SELECT conversation_id FROM messages WHERE wamid = 'wamid.S1'")
            .fetch_one(&e.pg)
            .await
            .unwrap();
    refuse_dashboard_events(&e.cfg, true).await;
    e.post(&number_change("573110", "573119", "wamid.S3", T0 + 5))
        .await;
    wait_count(
        &e.pg,
        "SELECT count(*) FROM conversations WHERE customer_key LIKE 'moved:%'",
        1,
        20,
    )
    .await;
    // Stopped, the stage cannot put it there once the stream is back: only the sweep can.
    e.worker.stop().await.unwrap();
    refuse_dashboard_events(&e.cfg, false).await;
    let mut con = e.cfg.redis().await;
    // The workers' sweep announces it; a second sweep does not again.
    for _ in 0..2 {
        wafleet::agents::release_idle(&e.pg, &mut con, &e.cfg.keys())
            .await
            .unwrap();
    }
    let got = dashboard_events(&e.cfg, "number_moved").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["conversation_id"], former);
}

/// A counter or gauge line of the workers' metrics, as it stands now.
fn worker_metric(name_and_labels: &str) -> f64 {
    metric_value(
        &wafleet::telemetry::metrics_handle().render(),
        name_and_labels,
    )
}

#[tokio::test]
async fn a_change_to_a_former_holders_number_counts_once_as_moved_and_a_plain_one_does_not() {
    const MOVED: &str = r#"wafleet_identity_changes_total{result="moved"}"#;
    const FOLLOWED: &str = r#"wafleet_identity_changes_total{result="followed"}"#;
    const REDELIVERED: &str = "wafleet_conversation_redeliveries_total";
    // Read (and the recorder installed) before the worker counts anything.
    let (moved, followed) = (worker_metric(MOVED), worker_metric(FOLLOWED));
    let redelivered = worker_metric(REDELIVERED);
    let e = env().await;
    // Two customers write, and before them someone else from the number the second moves to.
    e.send("573089", "wamid.P1", T0 - 60, "hola, soy el dueño anterior")
        .await;
    e.send("573070", "wamid.P2", T0, "hola").await;
    e.send("573080", "wamid.P3", T0, "hola").await;
    e.stored(3).await;
    e.wait_followups().await;
    // The first to a new number nobody wrote from.
    e.post(&number_change("573070", "573071", "wamid.P4", T0 + 5))
        .await;
    e.stored(4).await;
    e.wait_followups().await;
    assert_eq!(worker_metric(FOLLOWED) - followed, 1.0);
    assert_eq!(worker_metric(MOVED) - moved, 0.0);
    // The second to the former holder's number: their conversation is set aside.
    e.post(&number_change("573080", "573089", "wamid.P5", T0 + 5))
        .await;
    e.stored(5).await;
    e.wait_followups().await;
    let set_aside = "SELECT count(*) FROM conversations WHERE customer_key LIKE 'moved:%'";
    wait_count(&e.pg, set_aside, 1, 20).await;
    assert_eq!(worker_metric(MOVED) - moved, 1.0);
    assert_eq!(worker_metric(FOLLOWED) - followed, 1.0);
    // The same change delivered again finds nobody left to set aside.
    e.cfg.forget_dedup_marks().await;
    e.post(&number_change("573080", "573089", "wamid.P5", T0 + 5))
        .await;
    e.wait_followups().await;
    assert_eq!(worker_metric(REDELIVERED) - redelivered, 1.0);
    assert_eq!(worker_metric(MOVED) - moved, 1.0);
    e.worker.stop().await.unwrap();
}

/// When a customer's number change is sent: between their message from the old number (`T0`)
/// and the one from the new number (`T0 + 10`).
fn change_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(T0 + 5, 0).unwrap()
}

/// Follows the customer of `conversation` to the number `new` (a change sent at [`change_time`])
/// in the background, and returns once Postgres shows it waiting for a lock the test holds.
async fn follow_until_it_waits(
    pg: &PgPool,
    conversation: i64,
    new: &'static str,
) -> tokio::task::JoinHandle<sqlx::Result<Option<wafleet::store::conversations::Followed>>> {
    let following = {
        let pg = pg.clone();
        tokio::spawn(async move {
            wafleet::store::conversations::follow_identity_change(
                &pg,
                conversation,
                Some(new),
                None,
                Some(change_time()),
            )
            .await
        })
    };
    wait_for_a_lock_wait(pg).await;
    following
}

#[tokio::test]
async fn a_merge_waits_for_a_reply_being_recorded_instead_of_deadlocking_with_it() {
    let e = env().await;
    let (older, newer, message) = e
        .writes_from_both_numbers_ids("573090", "573099", "K")
        .await;
    // A reply being recorded (replies::record_replies): it shares its message, then its rows'
    // foreign keys share the conversation.
    let mut reply = e.pg.begin().await.unwrap();
    sqlx::query("SELECT id FROM messages WHERE id = $1 FOR SHARE")
        .bind(message)
        .fetch_all(&mut *reply)
        .await
        .unwrap();
    let merging = follow_until_it_waits(&e.pg, older, "573099").await;
    sqlx::query("SELECT id FROM conversations WHERE id = $1 FOR KEY SHARE")
        .bind(newer)
        .fetch_all(&mut *reply)
        .await
        .expect("the reply gets its conversation: the merge waits for it without holding it");
    reply.commit().await.unwrap();
    let followed = merging.await.unwrap().unwrap().unwrap();
    assert_eq!(followed.merged_keys, ["573099"]);
}

#[tokio::test]
async fn a_change_followed_while_the_new_numbers_first_message_is_stored_merges_it() {
    let e = env().await;
    e.send("573100", "wamid.Q1", T0, "hola").await;
    e.stored(1).await;
    e.wait_followups().await;
    let (customer, channel): (i64, i64) =
        sqlx::query_as("SELECT id, channel_id FROM conversations")
            .fetch_one(&e.pg)
            .await
            .unwrap();
    // The customer's first message from the new number, being stored: its conversation is not
    // committed yet when the change looks for one.
    let mut storing = e.pg.begin().await.unwrap();
    sqlx::query(
        "WITH c AS (
             INSERT INTO conversations (channel_id, customer_key, wa_id, session_started_at,
                                        last_customer_message_at, last_activity_at)
             VALUES ($1, '573109', '573109', to_timestamp($2), to_timestamp($2), to_timestamp($2))
             RETURNING id
         )
         INSERT INTO messages (conversation_id, channel_id, session_no, wamid, message_type,
                               sent_at, owner_at_arrival, action)
         SELECT id, $1, 1, 'wamid.Q2', 'text', to_timestamp($2), 'bot', 'reply' FROM c",
    )
    .bind(channel)
    .bind((T0 + 10) as f64)
    .execute(&mut *storing)
    .await
    .unwrap();
    let following = follow_until_it_waits(&e.pg, customer, "573109").await;
    storing.commit().await.unwrap();
    let followed = following
        .await
        .unwrap()
        .expect("the change is followed, not refused as a duplicate key")
        .unwrap();
    assert_eq!(followed.merged_keys, ["573109"]);
    let conversations = e.conversations().await;
    assert_eq!(
        conversations,
        [(
            customer,
            "573109".into(),
            Some("573109".into()),
            "bot".into()
        )]
    );
}

/// Whether `e` is Postgres breaking a deadlock.
fn is_deadlock(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40P01")
}

#[tokio::test]
async fn merges_run_alongside_replies_and_handovers_never_deadlock() {
    use wafleet::store::{conversations, replies};
    let e = env().await;
    let channel: i64 = sqlx::query_scalar("SELECT id FROM channels")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    for round in 0..40 {
        let (old, new) = (format!("5741{round:02}0"), format!("5741{round:02}9"));
        // The customer's conversation under the old number, and the one their messages from the
        // new number made before the change was processed, with messages the model answers.
        let ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO conversations (channel_id, customer_key, wa_id, session_started_at,
                                        last_customer_message_at, last_activity_at)
             SELECT $1, k, k, t, t, t
               FROM unnest(ARRAY[$2, $3], ARRAY[to_timestamp($4), to_timestamp($4 + 10)]) AS x(k, t)
             RETURNING id",
        )
        .bind(channel)
        .bind(&old)
        .bind(&new)
        .bind(T0 as f64)
        .fetch_all(&e.pg)
        .await
        .unwrap();
        let messages: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO messages (conversation_id, channel_id, session_no, wamid, message_type,
                                   text_redacted, sent_at, owner_at_arrival, action)
             SELECT CASE WHEN n = 0 THEN $1 ELSE $2 END, $3, 1, 'wamid.R' || $4 || '.' || n,
                    'text', 'hola', to_timestamp($5 + CASE WHEN n = 0 THEN 0 ELSE 10 END),
                    'bot', 'reply'
               FROM generate_series(0, 30) n ORDER BY n RETURNING id",
        )
        .bind(ids[0])
        .bind(ids[1])
        .bind(channel)
        .bind(round)
        .bind(T0 as f64)
        .fetch_all(&e.pg)
        .await
        .unwrap();
        let records: Vec<replies::ReplyRecord> = messages[1..]
            .iter()
            .map(|m| replies::ReplyRecord {
                message_id: *m,
                channel_id: channel,
                outcome: "produced".into(),
                provider: None,
                model: None,
                input_tokens: None,
                output_tokens: None,
                canned: false,
                failures: serde_json::json!([]),
                parts: vec![("reply".into(), "a".into()), ("reply".into(), "b".into())],
                state: "pending".into(),
            })
            .collect();
        let mut con = e.pg.acquire().await.unwrap();
        let handed = messages[messages.len() / 2];
        let (recorded, handover, merge) = tokio::join!(
            replies::record_replies(&mut con, &records),
            async {
                let mut tx = e.pg.begin().await?;
                conversations::hand_over(&mut tx, ids[1], "model", None, Some(handed)).await?;
                tx.commit().await
            },
            conversations::follow_identity_change(
                &e.pg,
                ids[0],
                Some(&new),
                None,
                Some(change_time())
            ),
        );
        for (what, err) in [
            ("the replies", recorded.err()),
            ("the handover", handover.err()),
            ("the merge", merge.err()),
        ] {
            if let Some(err) = err {
                assert!(
                    !is_deadlock(&err),
                    "round {round}: {what} deadlocked: {err}"
                );
                panic!("round {round}: {what} failed: {err}");
            }
        }
    }
}

#[tokio::test]
async fn a_redelivered_message_is_stored_once_and_its_reply_job_queued_again() {
    let e = env().await;
    e.send("573001", "wamid.ONCE", T0, "hola").await;
    e.stored(1).await;
    e.wait_followups().await;
    // A redelivery after ingest's dedup mark expired reaches the stage again.
    e.cfg.forget_dedup_marks().await;
    e.send("573001", "wamid.ONCE", T0, "hola").await;
    e.send("573001", "wamid.NEXT", T0 + 5, "¿siguen ahí?").await;
    e.stored(2).await;
    e.wait_followups().await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages WHERE wamid = 'wamid.ONCE'")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // The first attempt may have stopped before queueing its reply job, so a redelivery queues
    // it again; the LLM stage answers a message once (see replies.rs).
    assert_eq!(e.replies().await, 3);
}

#[tokio::test]
async fn handover_keywords_in_three_languages_hand_the_conversation_to_a_human() {
    let e = env().await;
    let cases = [
        (
            "57300",
            "wamid.es",
            "QUIERO HABLAR CON UN ÁSESOR, por favor",
        ),
        ("15550", "wamid.en", "Can I talk to a human?"),
        ("55119", "wamid.pt", "Quero falar com um atendente"),
        ("57301", "wamid.neg1", "Necesito asesoramiento sobre tallas"),
        (
            "15551",
            "wamid.neg2",
            "That was an inhuman wait, but thanks",
        ),
    ];
    for (from, wamid, text) in cases {
        e.send(from, wamid, T0, text).await;
    }
    e.stored(5).await;
    e.wait_followups().await;
    for (_, wamid, _) in &cases[..3] {
        assert_eq!(e.message(wamid).await.3, "handover", "{wamid}");
    }
    for (_, wamid, _) in &cases[3..] {
        assert_eq!(
            e.message(wamid).await.3,
            "reply",
            "{wamid}: no trigger on words that merely contain a keyword"
        );
    }
    let owners: Vec<(String, String)> =
        sqlx::query_as("SELECT customer_key, owner FROM conversations ORDER BY customer_key")
            .fetch_all(&e.pg)
            .await
            .unwrap();
    assert_eq!(
        owners.iter().filter(|(_, o)| o == "human").count(),
        3,
        "{owners:?}"
    );
    let (events,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM handover_events WHERE kind = 'handover' AND reason = 'keyword'",
    )
    .fetch_one(&e.pg)
    .await
    .unwrap();
    assert_eq!(events, 3);
    let acks: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, state FROM outbound_messages ORDER BY id")
            .fetch_all(&e.pg)
            .await
            .unwrap();
    assert_eq!(
        acks,
        vec![("handover_ack".to_string(), "pending".to_string()); 3]
    );
    assert_eq!(
        e.outbox().await,
        3,
        "one acknowledgement queued per handover"
    );
    assert_eq!(
        e.stream_len(&e.cfg.keys().handover_stream()).await,
        3,
        "dashboard events"
    );
    assert_eq!(
        e.replies().await,
        2,
        "only the two negatives get reply jobs"
    );

    // A handed-over conversation gets no further bot work.
    e.send("57300", "wamid.es2", T0 + 60, "¿hola? sigo esperando")
        .await;
    e.stored(6).await;
    e.wait_followups().await;
    assert_eq!(e.message("wamid.es2").await.3, "none");
    assert_eq!(e.replies().await, 2);
    assert_eq!(e.outbox().await, 3);
}

#[tokio::test]
async fn an_idle_conversation_starts_a_new_session_and_bot_modes_are_honoured() {
    let e = env_with(|s| s.bot_mode = Some(wafleet::store::channels::BotMode::Shadow)).await;
    e.send("57300", "wamid.s1", T0, "hola").await;
    e.send("57300", "wamid.s2", T0 + 3600, "sigo aquí").await;
    e.send(
        "57300",
        "wamid.s3",
        T0 + 3600 + 25 * 3600,
        "volví al otro día",
    )
    .await;
    e.stored(3).await;
    e.wait_followups().await;
    assert_eq!(e.message("wamid.s1").await.4, 1);
    assert_eq!(e.message("wamid.s2").await.4, 1);
    assert_eq!(
        e.message("wamid.s3").await.4,
        2,
        "idle > 24 h starts session 2"
    );
    // The session cache served s2's lookup, was found stale for s3 (a new session) and now
    // holds session 2.
    let render = wafleet::telemetry::metrics_handle().render();
    assert!(metric_value(&render, r#"wafleet_session_cache_total{result="hit"}"#) >= 1.0);
    let mut con = e.cfg.redis().await;
    let key = e.cfg.keys().session_cache(&format!("{PNID}:57300"));
    let cached: String = redis::AsyncCommands::get(&mut con, key).await.unwrap();
    let cached: serde_json::Value = serde_json::from_str(&cached).unwrap();
    assert_eq!(cached["session_no"], 2);
    // Shadow mode still produces reply jobs (the LLM stage stores, never sends).
    assert_eq!(e.replies().await, 3);
    // A shadow handover acknowledgement is stored, never queued for sending.
    e.send("57300", "wamid.s4", T0 + 30 * 3600, "talk to a human")
        .await;
    e.stored(4).await;
    e.wait_followups().await;
    let states: Vec<(String,)> = sqlx::query_as("SELECT state FROM outbound_messages")
        .fetch_all(&e.pg)
        .await
        .unwrap();
    assert_eq!(states, vec![("shadow".to_string(),)]);
    assert_eq!(e.outbox().await, 0);

    // Bot off: stored, nothing produced.
    sqlx::query("UPDATE channels SET bot_mode = 'off'")
        .execute(&e.pg)
        .await
        .unwrap();
    // Workers see the change within seconds; until then messages still get reply jobs.
    let mut n = 0;
    let replies_before_off = eventually(
        "the worker to see bot mode off",
        Duration::from_secs(20),
        || {
            n += 1;
            let e = &e;
            async move {
                let wamid = format!("wamid.off{n}");
                let replies = e.replies().await;
                e.send(&format!("5799{n}"), &wamid, T0, "hola").await;
                e.stored(4 + n).await;
                e.wait_followups().await;
                (e.message(&wamid).await.3 == "none").then_some(replies)
            }
        },
    )
    .await;
    assert_eq!(
        e.replies().await,
        replies_before_off,
        "bot off: stored, no reply job"
    );
}

#[tokio::test]
async fn media_is_stored_with_metadata_and_reactions_never_trigger_anything() {
    let e = env_with(|_| {}).await;
    sqlx::query(
        "UPDATE channels SET media_notice = 'Recibimos tu archivo; por ahora solo leemos texto.'",
    )
    .execute(&e.pg)
    .await
    .unwrap();
    e.post(&message_body(
        PNID,
        "57300",
        serde_json::json!({"from": "57300", "id": "wamid.img", "timestamp": T0.to_string(),
        "type": "image", "image": {"id": "m1", "mime_type": "image/jpeg", "sha256": "abc"}}),
    ))
    .await;
    e.post(&message_body(PNID, "57300", serde_json::json!({"from": "57300", "id": "wamid.loc", "timestamp": (T0 + 1).to_string(),
        "type": "location", "location": {"latitude": 4.6, "longitude": -74.08, "address": "Calle 45 # 12-34, Bogotá"}}))).await;
    e.post(&message_body(PNID, "57300", serde_json::json!({"from": "57300", "id": "wamid.cap", "timestamp": (T0 + 2).to_string(),
        "type": "image", "image": {"id": "m2", "mime_type": "image/png", "caption": "¿tienen este modelo?"}}))).await;
    e.post(&message_body(
        PNID,
        "57300",
        serde_json::json!({"from": "57300", "id": "wamid.rea", "timestamp": (T0 + 3).to_string(),
        "type": "reaction", "reaction": {"message_id": "wamid.x", "emoji": "👍"}}),
    ))
    .await;
    e.post(&message_body(
        PNID,
        "57300",
        serde_json::json!({"from": "57300", "id": "wamid.new", "timestamp": (T0 + 4).to_string(),
        "type": "poll_vote", "poll_vote": {"x": 1}}),
    ))
    .await;
    e.stored(5).await;
    e.wait_followups().await;
    assert_eq!(e.message("wamid.img").await.3, "notice");
    assert_eq!(e.message("wamid.loc").await.3, "notice");
    assert_eq!(
        e.message("wamid.cap").await.3,
        "reply",
        "a caption is text to answer"
    );
    assert_eq!(e.message("wamid.rea").await.3, "none");
    assert_eq!(
        e.message("wamid.new").await.3,
        "notice",
        "unknown types are stored, answered with the notice"
    );
    let (meta,): (serde_json::Value,) =
        sqlx::query_as("SELECT metadata FROM messages WHERE wamid = 'wamid.loc'")
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(meta["latitude"], 4.6);
    assert!(
        meta["address"].as_str().unwrap().contains("[ADDRESS]"),
        "{meta}"
    );
    let (meta,): (serde_json::Value,) =
        sqlx::query_as("SELECT metadata FROM messages WHERE wamid = 'wamid.img'")
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(meta["mime_type"], "image/jpeg");
    assert_eq!(e.outbox().await, 3);
    assert_eq!(e.replies().await, 1);
}

/// A cart sent from the catalog is what the customer wants: the model (and the agents'
/// transcript) reads its items, quantity, product and price, with the note when there is one.
/// Before, an order without a note was stored and answered by nobody, and one with a note was
/// answered from the note alone, the model not knowing what was ordered.
#[tokio::test]
async fn a_catalog_order_is_answered_knowing_its_items() {
    let e = env().await;
    e.post(&message_body(
        PNID,
        "57300",
        serde_json::json!({"from": "57300", "id": "wamid.ord1", "timestamp": T0.to_string(),
        "type": "order", "order": {"catalog_id": "194836987003835", "product_items": [
            {"product_retailer_id": "aceite-lavanda-30ml", "quantity": 2, "item_price": 45000, "currency": "COP"},
            {"product_retailer_id": "jabon-avena", "quantity": "1", "item_price": "18000.5", "currency": "COP"}]}}),
    ))
    .await;
    e.post(&message_body(
        PNID,
        "57301",
        serde_json::json!({"from": "57301", "id": "wamid.ord2", "timestamp": T0.to_string(),
        "type": "order", "order": {"catalog_id": "194836987003835", "text": "¿Llega el sábado?",
            "product_items": [{"product_retailer_id": "vela-soja", "quantity": 1}]}}),
    ))
    .await;
    e.stored(2).await;
    e.wait_followups().await;
    let (_, text, _, action, _) = e.message("wamid.ord1").await;
    assert_eq!(
        (text.as_deref(), action.as_str()),
        (
            Some(
                "[order] 2 × aceite-lavanda-30ml, 45000 COP each; 1 × jabon-avena, 18000.5 COP each"
            ),
            "reply"
        )
    );
    let (_, text, _, action, _) = e.message("wamid.ord2").await;
    assert_eq!(
        (text.as_deref(), action.as_str()),
        (Some("[order] 1 × vela-soja\n¿Llega el sábado?"), "reply")
    );
    assert_eq!(e.replies().await, 2);
}

#[tokio::test]
async fn statuses_only_move_forward_and_early_ones_wait_for_their_message() {
    let e = env().await;
    e.send("57300", "wamid.in", T0, "hola").await;
    e.stored(1).await;
    e.wait_followups().await;
    // The sender stage will record outbound messages; here the store does it directly.
    let (conv, msg): (i64, i64) = sqlx::query_as("SELECT conversation_id, id FROM messages")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    let insert = |part: i32| {
        let pg = e.pg.clone();
        async move {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO outbound_messages (conversation_id, channel_id, reply_to, part_no, kind, body, state)
                 SELECT $1, channel_id, $2, $3, 'reply', 'x', 'sending' FROM conversations WHERE id = $1 RETURNING id",
            )
            .bind(conv)
            .bind(msg)
            .bind(part)
            .fetch_one(&pg)
            .await
            .unwrap();
            id
        }
    };
    let a = insert(0).await;
    e.record_accepted(a, "wamid.outA").await;
    let delivery = |wamid: &'static str| {
        let pg = e.pg.clone();
        async move {
            sqlx::query_as::<_, (Option<String>, Option<i32>, String)>(
                "SELECT delivery, error_code, state FROM outbound_messages WHERE wamid = $1",
            )
            .bind(wamid)
            .fetch_optional(&pg)
            .await
            .unwrap()
        }
    };
    let st = |id: &str, status: &str, ts: i64| serde_json::json!({"id": id, "status": status, "timestamp": ts.to_string(), "recipient_id": "57300"});
    e.post(&status_body(
        PNID,
        serde_json::json!([st("wamid.outA", "read", T0 + 3)]),
    ))
    .await;
    e.post(&status_body(
        PNID,
        serde_json::json!([
            st("wamid.outA", "delivered", T0 + 2),
            st("wamid.outA", "sent", T0 + 1)
        ]),
    ))
    .await;
    eventually("read applied", Duration::from_secs(20), || async {
        (delivery("wamid.outA").await?.0.as_deref() == Some("read")).then_some(())
    })
    .await;
    // Let the two older statuses be processed too, then check nothing regressed.
    let pg = e.pg.clone();
    eventually("statuses processed", Duration::from_secs(20), || {
        let cfg = &e.cfg;
        async move {
            let keys = cfg.keys();
            let mut con = cfg.redis().await;
            let mut left = 0;
            for p in 0..keys.partitions() {
                left += read_stream(&mut con, &keys.status(p)).await.len();
            }
            (left == 0).then_some(())
        }
    })
    .await;
    let _ = pg;
    assert_eq!(
        delivery("wamid.outA").await.unwrap().0.as_deref(),
        Some("read")
    );

    // A failed status arriving before its message is recorded is kept, then applied.
    e.post(&status_body(PNID, serde_json::json!([{"id": "wamid.outB", "status": "failed", "timestamp": (T0 + 9).to_string(),
        "recipient_id": "57300", "errors": [{"code": 131047, "title": "Re-engagement message"}]}]))).await;
    eventually("early status kept", Duration::from_secs(20), || {
        let pg = e.pg.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM early_statuses")
                .fetch_one(&pg)
                .await
                .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    let b = insert(1).await;
    e.record_accepted(b, "wamid.outB").await;
    let (d, code, state) = delivery("wamid.outB").await.unwrap();
    assert_eq!(
        (d.as_deref(), code, state.as_str()),
        (Some("failed"), Some(131047), "failed")
    );
    // Failed is final.
    e.post(&status_body(
        PNID,
        serde_json::json!([st("wamid.outB", "delivered", T0 + 10)]),
    ))
    .await;

    // A 131047 failure on a known message hands the conversation to a human.
    let c = insert(2).await;
    e.record_accepted(c, "wamid.outC").await;
    e.post(&status_body(PNID, serde_json::json!([{"id": "wamid.outC", "status": "failed", "timestamp": (T0 + 11).to_string(),
        "recipient_id": "57300", "errors": [{"code": 131047, "title": "Re-engagement message"}]}]))).await;
    eventually("re-engagement handover", Duration::from_secs(20), || {
        let pg = e.pg.clone();
        async move {
            let (o,): (String,) = sqlx::query_as("SELECT owner FROM conversations")
                .fetch_one(&pg)
                .await
                .ok()?;
            (o == "human").then_some(())
        }
    })
    .await;
    let (d, _, _) = delivery("wamid.outB").await.unwrap();
    assert_eq!(d.as_deref(), Some("failed"));
}

#[tokio::test]
async fn postgres_away_for_a_while_makes_jobs_wait_and_all_complete_after() {
    let mut cfg = TestConfig::new().await;
    cfg.add_channel(PNID, |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let direct_url = cfg.database_url.clone();
    let (base, db) = direct_url.rsplit_once('/').unwrap();
    let host = base.rsplit_once('@').unwrap().1;
    let proxy = proxy::Proxy::start(host.to_string()).await;
    cfg.database_url = format!(
        "{}@127.0.0.1:{}/{db}",
        base.rsplit_once('@').unwrap().0,
        proxy.port
    );
    let worker = Worker::start(cfg.worker_settings(&["conversation"])).await;
    let pg = PgPool::connect(&direct_url).await.unwrap();

    for i in 0..5 {
        let body = text_message(PNID, "57300", &format!("wamid.pre{i}"), T0 + i, "antes");
        assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    }
    wait_count(&pg, "SELECT count(*) FROM messages", 5, 20).await;

    proxy.cut();
    for i in 0..20 {
        let body = text_message(
            PNID,
            &format!("5730{}", i % 4),
            &format!("wamid.out{i}"),
            T0 + 100 + i,
            "durante",
        );
        assert_eq!(
            ingest.post_signed(&body, APP_SECRET).await.status(),
            200,
            "ingest does not need Postgres"
        );
    }
    // The worker keeps the jobs while Postgres is away: still pending, not dead-lettered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut con = cfg.redis().await;
    assert!(
        read_stream(&mut con, &cfg.keys().dead("conversation"))
            .await
            .is_empty()
    );
    assert_eq!(count(&pg, "SELECT count(*) FROM messages").await, 5);

    proxy.restore();
    wait_count(&pg, "SELECT count(*) FROM messages", 25, 30).await;
    assert!(
        read_stream(&mut con, &cfg.keys().dead("conversation"))
            .await
            .is_empty()
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_ambiguous_send_is_reconciled_by_the_callback_id_its_status_echoes() {
    let e = env().await;
    e.send("57300", "wamid.in", T0, "hola").await;
    e.stored(1).await;
    e.wait_followups().await;
    // A part whose second send timed out: `sending`, no wamid known. Its first send failed
    // (a `failed` status reopened it, which keeps that message's digest among its other sends).
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO outbound_messages (conversation_id, channel_id, reply_to, part_no, kind, body, state, attempts,
                                        other_wamids)
         SELECT conversation_id, channel_id, id, 0, 'reply', 'x', 'sending', 2,
                ARRAY[erased_wamid('wamid.first_send')] FROM messages RETURNING id",
    )
    .fetch_one(&e.pg)
    .await
    .unwrap();
    let row = || {
        let pg = e.pg.clone();
        async move {
            sqlx::query_as::<_, (Option<String>, String, Option<String>)>(
                "SELECT wamid, state, delivery FROM outbound_messages WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pg)
            .await
            .unwrap()
        }
    };
    let status = |s: &str, ts: i64, callback: Option<String>| {
        let mut v = serde_json::json!({"id": "wamid.outD", "status": s, "timestamp": ts.to_string(), "recipient_id": "57300"});
        if let Some(c) = callback {
            v["biz_opaque_callback_data"] = c.into();
        }
        status_body(PNID, serde_json::json!([v]))
    };
    // Callback data another app on the number set (a bare number, or another install's tag)
    // is not ours: that status must not take our part for its message.
    let foreign = |s: &str, wamid: &str, callback: String| {
        let v = serde_json::json!({"id": wamid, "status": s, "timestamp": (T0 + 1).to_string(),
            "recipient_id": "57300", "biz_opaque_callback_data": callback});
        status_body(PNID, serde_json::json!([v]))
    };
    let other_install =
        wafleet::crypto::Cipher::from_key_text(&wafleet::crypto::Cipher::generate_key_text())
            .unwrap();
    e.post(&foreign("sent", "wamid.foreign1", id.to_string()))
        .await;
    e.post(&foreign(
        "sent",
        "wamid.foreign2",
        other_install.callback_tags().encode(id, 2),
    ))
    .await;
    // Ours, but a late status of the part's first send (which failed): not the second send's,
    // and known for that send's (not kept for later).
    e.post(&foreign(
        "sent",
        "wamid.first_send",
        e.cfg.cipher().callback_tags().encode(id, 1),
    ))
    .await;
    eventually(
        "foreign statuses kept aside",
        Duration::from_secs(20),
        || async {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM early_statuses")
                .fetch_one(&e.pg)
                .await
                .unwrap();
            (n == 2).then_some(())
        },
    )
    .await;
    e.cfg.wait_statuses_drained(20).await;
    assert_eq!(row().await, (None, "sending".to_string(), None));
    sqlx::query("DELETE FROM early_statuses")
        .execute(&e.pg)
        .await
        .unwrap();

    let ours = e.cfg.cipher().callback_tags().encode(id, 2);
    e.post(&status("sent", T0 + 1, Some(ours))).await;
    let reconciled = eventually("reconciled", Duration::from_secs(20), || async {
        let r = row().await;
        (r.2.is_some()).then_some(r)
    })
    .await;
    assert_eq!(
        reconciled,
        (
            Some("wamid.outD".to_string()),
            "accepted".to_string(),
            Some("sent".to_string())
        )
    );
    // Later statuses find it by wamid; a failure is final, even against a late acceptance.
    e.post(&status("failed", T0 + 2, None)).await;
    eventually("failed", Duration::from_secs(20), || async {
        (row().await.1 == "failed").then_some(())
    })
    .await;
    e.record_accepted(id, "wamid.outD").await;
    assert_eq!(
        row().await,
        (
            Some("wamid.outD".to_string()),
            "failed".to_string(),
            Some("failed".to_string())
        )
    );
    let (early,): (i64,) = sqlx::query_as("SELECT count(*) FROM early_statuses")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    assert_eq!(
        early, 0,
        "nothing was kept for later: the message was known"
    );
}

#[tokio::test]
async fn an_earlier_sends_late_status_is_the_parts_and_the_resend_in_flight_is_a_second_copy() {
    use wafleet::store::conversations::{
        Acceptance, Accepted, StatusApplied, apply_statuses, record_accepted_many,
    };
    let e = env().await;
    let id = e.parts_of_one_reply(1, None).await[0];
    // The first send went unanswered; the second, its resend, is in flight.
    sqlx::query("UPDATE outbound_messages SET attempts = 2 WHERE id = $1")
        .bind(id)
        .execute(&e.pg)
        .await
        .unwrap();
    let send = |n| {
        Some(wafleet::crypto::Callback {
            outbound_id: id,
            send_try: Some(n),
        })
    };
    let row = || async {
        sqlx::query_as::<_, (String, Option<String>, Vec<String>)>(
            "SELECT state, wamid, other_wamids FROM outbound_messages WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&e.pg)
        .await
        .unwrap()
    };
    let mut con = e.pg.acquire().await.unwrap();
    // The first send's status comes: that send is the part's.
    let applied = apply_statuses(&mut con, &[delivered("wamid.S1", send(1))])
        .await
        .unwrap();
    assert_eq!(
        applied,
        [StatusApplied::OtherSend {
            by_agent: false,
            adopted: true,
            duplicate: false
        }]
    );
    assert_eq!(
        row().await,
        ("accepted".into(), Some("wamid.S1".into()), vec![])
    );
    // Then Meta answers the resend: a second copy, recorded beside the first, not over it.
    let mut second = Accepted::new(id, "wamid.S2");
    second.send_no = Some(2);
    let recorded = record_accepted_many(&mut con, &[second.clone()])
        .await
        .unwrap();
    assert_eq!(recorded, [Acceptance::SecondCopy]);
    let digest: String = sqlx::query_scalar("SELECT erased_wamid('wamid.S2')")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    assert_eq!(
        row().await,
        (
            "accepted".into(),
            Some("wamid.S1".into()),
            vec![digest.clone()]
        )
    );
    // Recorded again (a job run again): nothing changes.
    let again = record_accepted_many(&mut con, &[second]).await.unwrap();
    assert_eq!(again, [Acceptance::Recorded]);
    // The resend's statuses are known, counted as another send's, never parked; a `failed`
    // one fails nothing (the customer has the first copy).
    let mut failed = delivered("wamid.S2", send(2));
    failed.status = "failed".into();
    failed.rank = 4;
    failed.error_code = Some(131026);
    let applied = apply_statuses(&mut con, &[delivered("wamid.S2", send(2)), failed])
        .await
        .unwrap();
    let known = StatusApplied::OtherSend {
        by_agent: false,
        adopted: false,
        duplicate: false,
    };
    assert_eq!(applied, [known.clone(), known]);
    assert_eq!(
        row().await,
        ("accepted".into(), Some("wamid.S1".into()), vec![digest])
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM early_statuses")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    assert_eq!(kept, 0);
}

#[tokio::test]
async fn a_late_status_of_any_unanswered_send_of_a_part_given_up_shows_it_went_out() {
    use wafleet::store::conversations::{StatusApplied, apply_statuses};
    let e = env().await;
    let id = e.parts_of_one_reply(1, None).await[0];
    // Three sends went unanswered, and the sender gave the part up.
    sqlx::query(
        "UPDATE outbound_messages SET attempts = 3, wamid = NULL, state = 'failed',
                fail_reason = 'gave up: Meta answered none of 3 sends and no status came for them'
          WHERE id = $1",
    )
    .bind(id)
    .execute(&e.pg)
    .await
    .unwrap();
    // The first one's status comes: Meta took it.
    let first = delivered(
        "wamid.G1",
        Some(wafleet::crypto::Callback {
            outbound_id: id,
            send_try: Some(1),
        }),
    );
    let mut con = e.pg.acquire().await.unwrap();
    let applied = apply_statuses(&mut con, &[first]).await.unwrap();
    assert_eq!(
        applied,
        [StatusApplied::OtherSend {
            by_agent: false,
            adopted: true,
            duplicate: false
        }]
    );
    let row: (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT state, wamid, delivery FROM outbound_messages WHERE id = $1")
            .bind(id)
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(
        row,
        (
            "accepted".into(),
            Some("wamid.G1".into()),
            Some("delivered".into())
        )
    );
}

#[tokio::test]
async fn a_late_status_of_a_failed_send_does_not_take_the_part_reopened_for_a_resend() {
    use wafleet::store::conversations::{Status, StatusApplied, apply_statuses};
    let e = env().await;
    let id = e.parts_of_one_reply(1, None).await[0];
    // The first send was accepted, then failed with a code worth another try; the sender
    // reopened the part and waits for the pair budget before claiming it again.
    sqlx::query(
        "UPDATE outbound_messages SET state = 'failed', attempts = 1, wamid = 'wamid.F1',
                delivery = 'failed', delivery_rank = 4, error_code = 131000 WHERE id = $1",
    )
    .bind(id)
    .execute(&e.pg)
    .await
    .unwrap();
    wafleet::store::replies::reopen_failed(&e.pg, id, false)
        .await
        .unwrap();
    // Meta's `sent` of the failed message comes late, with that send's callback.
    let late = Status {
        wamid: "wamid.F1".into(),
        status: "sent".into(),
        rank: 1,
        at: None,
        error_code: None,
        error_title: None,
        callback: Some(wafleet::crypto::Callback {
            outbound_id: id,
            send_try: Some(1),
        }),
        recipient: None,
        phone_number_id: None,
    };
    let mut con = e.pg.acquire().await.unwrap();
    let applied = apply_statuses(&mut con, std::slice::from_ref(&late))
        .await
        .unwrap();
    // Known for the failed message it is (the reopen kept its digest), not parked.
    let known = StatusApplied::OtherSend {
        by_agent: false,
        adopted: false,
        duplicate: false,
    };
    assert_eq!(applied, std::slice::from_ref(&known));
    let row: (String, Option<String>) =
        sqlx::query_as("SELECT state, wamid FROM outbound_messages WHERE id = $1")
            .bind(id)
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(
        row,
        ("pending".to_string(), None),
        "the resend still goes out"
    );

    // Once the resend is claimed (try 2), a status of try 2 reconciles it as before.
    let claimed = wafleet::store::replies::claim_many(&mut con, &[id])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // The failed message's `sent` again, an earlier send's now: still not the part's, whose
    // resend is in flight (a send Meta took that we never heard of would be).
    let applied = apply_statuses(&mut con, std::slice::from_ref(&late))
        .await
        .unwrap();
    assert_eq!(applied, [known]);
    let resend = Status {
        wamid: "wamid.F2".into(),
        callback: Some(wafleet::crypto::Callback {
            outbound_id: id,
            send_try: Some(2),
        }),
        ..late
    };
    let applied = apply_statuses(&mut con, &[resend]).await.unwrap();
    assert!(
        matches!(applied[0], StatusApplied::Advanced { .. }),
        "{applied:?}"
    );
    let row: (String, Option<String>, Option<i32>) =
        sqlx::query_as("SELECT state, wamid, error_code FROM outbound_messages WHERE id = $1")
            .bind(id)
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(
        row,
        ("accepted".to_string(), Some("wamid.F2".to_string()), None)
    );
}

#[tokio::test]
async fn a_send_reconciled_by_its_status_answers_the_customers_message() {
    // Soak: Meta took sends whose answers were lost (ambiguous); the status stage recorded each
    // from its status's callback, but the customer's message stayed unanswered, so
    // wafleet_oldest_unanswered_seconds (alert WafleetCustomersUnanswered past 300 s) grew from
    // the first of them for good: 87 such messages in 110,000.
    use wafleet::store::conversations::{StatusApplied, apply_statuses};
    let e = env().await;
    let id = e.parts_of_one_reply(1, None).await[0];
    let status = delivered(
        "wamid.AMBIGUOUS",
        Some(wafleet::crypto::Callback {
            outbound_id: id,
            send_try: None,
        }),
    );
    let mut con = e.pg.acquire().await.unwrap();
    let applied = apply_statuses(&mut con, &[status]).await.unwrap();
    assert!(
        matches!(applied[0], StatusApplied::Advanced { .. }),
        "{applied:?}"
    );
    let row: (String, bool) = sqlx::query_as(
        "SELECT o.state, m.answered_at IS NOT NULL
           FROM outbound_messages o JOIN messages m ON m.id = o.reply_to WHERE o.id = $1",
    )
    .bind(id)
    .fetch_one(&e.pg)
    .await
    .unwrap();
    assert_eq!(row, ("accepted".to_string(), true));
}

#[tokio::test]
async fn messages_left_unanswered_by_a_reconciled_send_are_answered_by_the_migration() {
    let e = env().await;
    let id = e.parts_of_one_reply(1, None).await[0];
    // What a reconciled send left before: the part accepted, its message not answered.
    sqlx::query("UPDATE outbound_messages SET state = 'accepted', wamid = 'wamid.R' WHERE id = $1")
        .bind(id)
        .execute(&e.pg)
        .await
        .unwrap();
    let unanswered = "SELECT count(*) FROM messages WHERE action = 'reply' AND answered_at IS NULL";
    assert_eq!(count(&e.pg, unanswered).await, 1);
    sqlx::raw_sql(include_str!("../migrations/0030_answered_reconciled.sql"))
        .execute(&e.pg)
        .await
        .unwrap();
    assert_eq!(count(&e.pg, unanswered).await, 0);
    // A reply still on its way leaves its message waiting.
    sqlx::query("UPDATE messages SET answered_at = NULL")
        .execute(&e.pg)
        .await
        .unwrap();
    sqlx::query("UPDATE outbound_messages SET state = 'sending', wamid = NULL")
        .execute(&e.pg)
        .await
        .unwrap();
    sqlx::raw_sql(include_str!("../migrations/0030_answered_reconciled.sql"))
        .execute(&e.pg)
        .await
        .unwrap();
    assert_eq!(count(&e.pg, unanswered).await, 1);
}

#[tokio::test]
async fn a_re_engagement_failure_recorded_by_a_run_that_stopped_still_hands_over_on_redelivery() {
    use wafleet::store::conversations::{Status, apply_statuses};
    let e = env().await;
    let id = e.parts_of_one_reply(1, Some("wamid.RE")).await[0];
    e.record_accepted(id, "wamid.RE0").await;
    let failed = |at: i64| {
        status_body(
            PNID,
            serde_json::json!([{"id": "wamid.RE0", "status": "failed", "timestamp": at.to_string(),
                "recipient_id": "57300",
                "errors": [{"code": 131047, "title": "Re-engagement message"}]}]),
        )
    };
    // A run applied Meta's 131047 failure and stopped before handing the conversation over.
    let mut con = e.pg.acquire().await.unwrap();
    apply_statuses(
        &mut con,
        &[Status {
            wamid: "wamid.RE0".into(),
            status: "failed".into(),
            rank: 4,
            at: None,
            error_code: Some(131047),
            error_title: Some("Re-engagement message".into()),
            callback: None,
            recipient: None,
            phone_number_id: None,
        }],
    )
    .await
    .unwrap();
    // Its redelivery finds the status applied already, and makes the handover.
    e.post(&failed(T0 + 5)).await;
    let owner = || async {
        sqlx::query_scalar::<_, String>("SELECT owner FROM conversations")
            .fetch_one(&e.pg)
            .await
            .unwrap()
    };
    eventually("the handover", Duration::from_secs(20), || async {
        (owner().await == "human").then_some(())
    })
    .await;
    let handovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM handover_events WHERE reason = 're_engagement'")
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!(handovers, 1);
}

#[tokio::test]
async fn a_re_engagement_handover_whose_event_redis_refused_reaches_dashboards_on_the_retry() {
    use redis::AsyncCommands;
    let e = env().await;
    let id = e.parts_of_one_reply(1, Some("wamid.RV")).await[0];
    e.record_accepted(id, "wamid.RV0").await;
    let stream = e.cfg.keys().handover_stream();
    let mut con = e.cfg.redis().await;
    // Redis refuses the event (here: the stream key is not a stream).
    let _: () = con.set(&stream, "not a stream").await.unwrap();
    e.post(&status_body(
        PNID,
        serde_json::json!([{"id": "wamid.RV0", "status": "failed", "timestamp": T0.to_string(),
            "recipient_id": "57300",
            "errors": [{"code": 131047, "title": "Re-engagement message"}]}]),
    ))
    .await;
    wait_count(
        &e.pg,
        "SELECT count(*) FROM conversations WHERE owner = 'human'",
        1,
        20,
    )
    .await;
    // The job failed to publish and waits for Redis; it comes back once Redis takes events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = con.del(&stream).await.unwrap();
    eventually(
        "the handover on the dashboard stream",
        Duration::from_secs(20),
        || async {
            let mut con = e.cfg.redis().await;
            let events = read_stream(&mut con, &stream).await;
            events
                .iter()
                .any(|(_, f)| {
                    let ev: serde_json::Value = serde_json::from_slice(&f["event"]).unwrap();
                    ev["kind"] == "handover" && ev["reason"] == "re_engagement"
                })
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        count(
            &e.pg,
            "SELECT count(*) FROM handover_events WHERE reason = 're_engagement'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn statuses_applied_together_each_get_their_own_result() {
    use wafleet::store::conversations::{Status, StatusApplied, apply_statuses};
    let e = env().await;
    e.send("57300", "wamid.in", T0, "hola").await;
    e.stored(1).await;
    e.wait_followups().await;
    // Parts: A accepted (no status yet), B already read, C an ambiguous send (no wamid).
    let part = |n: i32, wamid: Option<&'static str>, rank: i16| {
        let pg = e.pg.clone();
        async move {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO outbound_messages (conversation_id, channel_id, reply_to, part_no, kind,
                                                body, state, wamid, delivery_rank)
                 SELECT conversation_id, channel_id, id, $1, 'reply', 'x',
                        CASE WHEN $2::text IS NULL THEN 'sending' ELSE 'accepted' END, $2, $3
                   FROM messages RETURNING id",
            )
            .bind(n)
            .bind(wamid)
            .bind(rank)
            .fetch_one(&pg)
            .await
            .unwrap();
            id
        }
    };
    part(0, Some("wamid.A"), 0).await;
    part(1, Some("wamid.B"), 3).await;
    let c = part(2, None, 0).await;
    let st = |wamid: &str, status: &str, rank: i16, outbound_id: Option<i64>| Status {
        wamid: wamid.into(),
        status: status.into(),
        rank,
        at: None,
        error_code: None,
        error_title: None,
        callback: outbound_id.map(|outbound_id| wafleet::crypto::Callback {
            outbound_id,
            send_try: None,
        }),
        recipient: Some("57300".into()),
        phone_number_id: None,
    };
    let applied = apply_statuses(
        &mut e.pg.acquire().await.unwrap(),
        &[
            st("wamid.A", "delivered", 2, None),
            st("wamid.B", "sent", 1, None),
            st("wamid.C", "sent", 1, Some(c)),
            st("wamid.X", "sent", 1, None),
            // The same message again in one call: applied after the first, not over it.
            st("wamid.A", "read", 3, None),
        ],
    )
    .await
    .unwrap();
    let (conversation_id,): (i64,) = sqlx::query_as("SELECT id FROM conversations")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    let (reply_to,): (i64,) = sqlx::query_as("SELECT id FROM messages")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    let advanced = StatusApplied::Advanced {
        conversation_id,
        reply_to: Some(reply_to),
        by_agent: false,
    };
    assert_eq!(
        applied,
        vec![
            advanced.clone(),
            StatusApplied::Stale,
            advanced.clone(),
            StatusApplied::Kept,
            advanced
        ]
    );
    let rows: Vec<(Option<String>, String, Option<String>)> =
        sqlx::query_as("SELECT wamid, state, delivery FROM outbound_messages ORDER BY part_no")
            .fetch_all(&e.pg)
            .await
            .unwrap();
    let row = |w: &str, s: &str, d: Option<&str>| {
        (Some(w.to_string()), s.to_string(), d.map(String::from))
    };
    assert_eq!(
        rows,
        vec![
            row("wamid.A", "accepted", Some("read")),
            row("wamid.B", "accepted", None),
            row("wamid.C", "accepted", Some("sent")),
        ]
    );
    let (early,): (String,) = sqlx::query_as("SELECT wamid FROM early_statuses")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    assert_eq!(early, "wamid.X");
}

#[tokio::test]
async fn claims_made_together_each_get_their_own_answer() {
    use wafleet::store::replies::{Claim, claim_many};
    let e = env().await;
    e.send("57300", "wamid.bot", T0, "hola").await;
    e.send("57301", "wamid.human", T0, "hola").await;
    e.stored(2).await;
    e.wait_followups().await;
    e.hand_to_human("57301").await;
    // Handed over because of that message: its acknowledgement may still go out.
    sqlx::query(
        "INSERT INTO handover_events (conversation_id, kind, reason, message_id)
         SELECT conversation_id, 'handover', 'keyword', id FROM messages WHERE wamid = 'wamid.human'",
    )
    .execute(&e.pg)
    .await
    .unwrap();
    let part = |wamid: &'static str, kind: &'static str, state: &'static str| {
        let pg = e.pg.clone();
        async move {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO outbound_messages (conversation_id, channel_id, reply_to, part_no, kind, body, state)
                 SELECT conversation_id, channel_id, id, 0, $2, 'x', $3 FROM messages WHERE wamid = $1
                 RETURNING id",
            )
            .bind(wamid)
            .bind(kind)
            .bind(state)
            .fetch_one(&pg)
            .await
            .unwrap();
            id
        }
    };
    let go = part("wamid.bot", "reply", "pending").await;
    let done = part("wamid.bot", "notice", "accepted").await;
    let human = part("wamid.human", "reply", "pending").await;
    let ack = part("wamid.human", "handover_ack", "pending").await;
    let claims = claim_many(
        &mut e.pg.acquire().await.unwrap(),
        &[go, done, human, ack, go],
    )
    .await
    .unwrap();
    assert_eq!(
        claims,
        vec![
            Claim::Go { send_no: 1 },
            Claim::NotPending("accepted".into()),
            Claim::Suppressed,
            Claim::Go { send_no: 1 },
            Claim::NotPending("sending".into()),
        ]
    );
    let states: Vec<(String, i32)> =
        sqlx::query_as("SELECT state, attempts FROM outbound_messages ORDER BY id")
            .fetch_all(&e.pg)
            .await
            .unwrap();
    assert_eq!(
        states,
        vec![
            ("sending".to_string(), 1),
            ("accepted".to_string(), 0),
            ("suppressed".to_string(), 0),
            ("sending".to_string(), 1),
        ]
    );
}

#[tokio::test]
async fn messages_stored_together_each_get_their_own_result() {
    use wafleet::store::conversations::{
        Customer, KnownMessage, NewMessage, Touch, store_known_many,
    };
    let e = env().await;
    for (from, wamid) in [
        ("57300", "wamid.a1"),
        ("57301", "wamid.b1"),
        ("57302", "wamid.c1"),
    ] {
        e.send(from, wamid, T0, "hola").await;
    }
    e.stored(3).await;
    e.wait_followups().await;
    e.hand_to_human("57301").await;
    let session = |customer: &'static str| {
        let pg = e.pg.clone();
        async move {
            let row: (i64, i32) =
                sqlx::query_as("SELECT id, session_no FROM conversations WHERE customer_key = $1")
                    .bind(customer)
                    .fetch_one(&pg)
                    .await
                    .unwrap();
            row
        }
    };
    let (a, a_session) = session("57300").await;
    let (b, b_session) = session("57301").await;
    let (c, c_session) = session("57302").await;
    let at = chrono::DateTime::from_timestamp(T0 + 60, 0).unwrap();
    let item = |conversation: i64, session_no: i32, wamid: &str, pii: &[&str]| {
        let touch = Touch {
            customer: Customer {
                key: String::new(),
                wa_id: None,
                user_id: None,
                profile_name: Some("Ana".into()),
            },
            at,
            session_timeout_secs: 3600,
            customer_message: true,
        };
        let message = NewMessage {
            wamid: wamid.into(),
            message_type: "text".into(),
            text_redacted: Some("otra pregunta [EMAIL]".into()),
            pii_types: pii.iter().map(|p| p.to_string()).collect(),
            metadata: serde_json::json!({"n": wamid}),
            context_wamid: None,
            sent_at: Some(at),
            source_entry: "1-0".into(),
            action: "reply",
        };
        KnownMessage {
            conversation_id: conversation,
            session_no,
            touch,
            message,
        }
    };
    let results = store_known_many(
        &mut e.pg.acquire().await.unwrap(),
        &[
            item(a, a_session, "wamid.a2", &["EMAIL"]),
            // A human owns B: stored, but nothing for the bot to do.
            item(b, b_session, "wamid.b2", &[]),
            // A stale cache entry (another session since): nothing written.
            item(c, c_session + 1, "wamid.c2", &[]),
            // A redelivery: the conversation, but no newly stored message.
            item(c, c_session, "wamid.c1", &[]),
            // A second message of A in the same call: stored after the first.
            item(a, a_session, "wamid.a3", &["EMAIL", "PHONE"]),
        ],
    )
    .await
    .unwrap();
    let summary: Vec<Option<(i64, Option<String>)>> = results
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|(conv, stored)| (conv.id, stored.as_ref().map(|s| s.action.clone())))
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            Some((a, Some("reply".into()))),
            Some((b, Some("none".into()))),
            None,
            Some((c, None)),
            Some((a, Some("reply".into()))),
        ]
    );
    let stored: Vec<(String, i64, String, Vec<String>, serde_json::Value)> = sqlx::query_as(
        "SELECT wamid, conversation_id, owner_at_arrival, pii_types, metadata FROM messages
          WHERE wamid IN ('wamid.a2', 'wamid.a3', 'wamid.b2', 'wamid.c2') ORDER BY id",
    )
    .fetch_all(&e.pg)
    .await
    .unwrap();
    let row = |w: &str, conv: i64, owner: &str, pii: &[&str]| {
        let pii = pii.iter().map(|p| p.to_string()).collect();
        (
            w.to_string(),
            conv,
            owner.to_string(),
            pii,
            serde_json::json!({"n": w}),
        )
    };
    assert_eq!(
        stored,
        vec![
            row("wamid.a2", a, "bot", &["EMAIL"]),
            row("wamid.b2", b, "human", &[]),
            row("wamid.a3", a, "bot", &["EMAIL", "PHONE"]),
        ]
    );
    let (activity, profile): (chrono::DateTime<chrono::Utc>, Option<String>) =
        sqlx::query_as("SELECT last_activity_at, profile_name FROM conversations WHERE id = $1")
            .bind(a)
            .fetch_one(&e.pg)
            .await
            .unwrap();
    assert_eq!((activity, profile.as_deref()), (at, Some("Ana")));
}

#[tokio::test]
async fn replies_recorded_together_each_get_their_own_answer() {
    use wafleet::store::replies::{ReplyRecord, record_replies};
    let e = env().await;
    e.send("57300", "wamid.one", T0, "hola").await;
    e.send("57301", "wamid.two", T0, "hola").await;
    e.stored(2).await;
    e.wait_followups().await;
    let ids: Vec<(i64, i32, i64, i64)> = sqlx::query_as(
        "SELECT id, session_no, conversation_id, channel_id FROM messages ORDER BY wamid",
    )
    .fetch_all(&e.pg)
    .await
    .unwrap();
    // The part's session is the message's own, read where it is recorded.
    let record =
        |(message_id, _, _, channel_id): (i64, i32, i64, i64), parts: &[&str]| ReplyRecord {
            message_id,
            channel_id,
            outcome: "produced".into(),
            provider: Some("standin".into()),
            model: Some("m".into()),
            input_tokens: Some(10),
            output_tokens: Some(5),
            canned: false,
            failures: serde_json::json!([]),
            parts: parts
                .iter()
                .map(|p| ("reply".to_string(), p.to_string()))
                .collect(),
            state: "pending".into(),
        };
    let first = record_replies(
        &mut e.pg.acquire().await.unwrap(),
        &[record(ids[0], &["uno"])],
    )
    .await
    .unwrap();
    assert_eq!(first, vec![true]);
    // The first message already has its reply; the second gets one of two parts; the second
    // message again in the same call is answered after the first.
    let fresh = record_replies(
        &mut e.pg.acquire().await.unwrap(),
        &[
            record(ids[0], &["otra vez"]),
            record(ids[1], &["parte 1", "parte 2"]),
            record(ids[1], &["de nuevo"]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(fresh, vec![false, true, false]);
    // Each part belongs to the session of the message it answers (the history reads by session).
    let parts: Vec<(i64, Option<i32>, i32, String)> = sqlx::query_as(
        "SELECT reply_to, session_no, part_no, body FROM outbound_messages
          ORDER BY reply_to, part_no",
    )
    .fetch_all(&e.pg)
    .await
    .unwrap();
    let mut expected = vec![
        (ids[0].0, Some(ids[0].1), 0, "uno".to_string()),
        (ids[1].0, Some(ids[1].1), 0, "parte 1".to_string()),
        (ids[1].0, Some(ids[1].1), 1, "parte 2".to_string()),
    ];
    expected.sort();
    assert_eq!(parts, expected);
    let (tokens,): (i64,) = sqlx::query_as("SELECT sum(input_tokens + output_tokens) FROM replies")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    assert_eq!(tokens, 30, "usage stored per reply");
}

#[tokio::test]
async fn statuses_for_wamids_never_recorded_expire_after_their_ttl() {
    let cfg = TestConfig::new().await;
    let pg = cfg.pg().await;
    // Two statuses of a message another app sent two hours ago, one of ten minutes ago.
    sqlx::query(
        "INSERT INTO early_statuses (wamid, status, rank, received_at) VALUES
             ('wamid.old', 'sent', 1, now() - interval '2 hours'),
             ('wamid.old', 'delivered', 2, now() - interval '2 hours'),
             ('wamid.recent', 'sent', 1, now() - interval '10 minutes')",
    )
    .execute(&pg)
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let sweeper = tokio::spawn(wafleet::stages::status::expire_early_statuses(
        pg.clone(),
        Duration::from_secs(3600),
        stop.clone(),
    ));
    let left = eventually("old statuses expired", Duration::from_secs(20), || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT wamid, status FROM early_statuses ORDER BY wamid, status")
                .fetch_all(&pg)
                .await
                .unwrap();
        (rows.len() < 3).then_some(rows)
    })
    .await;
    assert_eq!(left, vec![("wamid.recent".to_string(), "sent".to_string())]);
    stop.cancel();
    sweeper.await.unwrap();
}

#[tokio::test]
async fn every_connection_plans_with_the_configured_plan_cache_mode() {
    use wafleet::db::{PlanCacheMode, connect};
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let mode = |pool: PgPool| async move {
        let shown: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        shown
    };
    let generic = connect(&url, 1, PlanCacheMode::default()).await.unwrap();
    assert_eq!(mode(generic).await, "force_generic_plan");
    let custom = connect(&url, 1, PlanCacheMode::Custom).await.unwrap();
    assert_eq!(mode(custom).await, "force_custom_plan");
    // `server` sends nothing: the server's own setting (Postgres's default here) stays.
    let server = connect(&url, 1, PlanCacheMode::Server).await.unwrap();
    assert_eq!(mode(server).await, "auto");
    // The setting wins over an `options` of the URL, and the URL's other options still apply.
    let sep = if url.contains('?') { '&' } else { '?' };
    let with_options =
        format!("{url}{sep}options=-c%20plan_cache_mode%3Dauto%20-c%20application_name%3Dwf-test");
    let pool = connect(&with_options, 1, PlanCacheMode::default())
        .await
        .unwrap();
    let app: String = sqlx::query_scalar("SHOW application_name")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(app, "wf-test");
    assert_eq!(mode(pool).await, "force_generic_plan");
}

#[tokio::test]
async fn acceptances_and_statuses_of_the_same_parts_never_deadlock() {
    use wafleet::store::conversations::{Accepted, Status, apply_statuses, record_accepted_many};
    let e = env().await;
    // Forty parts of one reply, as the sender records them and Meta's statuses find them.
    let ids = e.parts_of_one_reply(40, Some("wamid.P")).await;
    let accepted: Vec<Accepted> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| Accepted::new(*id, format!("wamid.P{n}")))
        .collect();
    // The statuses in the opposite order: each statement would lock the rows the other wants
    // next unless both take their locks in one order.
    let statuses: Vec<Status> = accepted
        .iter()
        .rev()
        .map(|a| Status {
            wamid: a.wamid.clone(),
            status: "sent".into(),
            rank: 1,
            at: None,
            error_code: None,
            error_title: None,
            callback: None,
            recipient: None,
            phone_number_id: None,
        })
        .collect();
    for round in 0..60 {
        sqlx::query("UPDATE outbound_messages SET delivery_rank = 0, delivery = NULL")
            .execute(&e.pg)
            .await
            .unwrap();
        let (mut a, mut b) = (e.pg.acquire().await.unwrap(), e.pg.acquire().await.unwrap());
        let (acc, st) = tokio::join!(
            record_accepted_many(&mut a, &accepted),
            apply_statuses(&mut b, &statuses)
        );
        acc.unwrap_or_else(|err| panic!("round {round}: acceptances failed: {err}"));
        st.unwrap_or_else(|err| panic!("round {round}: statuses failed: {err}"));
    }
}

#[tokio::test]
async fn an_acceptance_recorded_after_its_failed_status_says_so() {
    use wafleet::store::conversations::{Acceptance, Accepted, record_accepted_many};
    let e = env().await;
    let ids = e.parts_of_one_reply(3, None).await;
    // Meta's statuses came first: a failure with a code, one without, and a mere `sent`.
    sqlx::query(
        "INSERT INTO early_statuses (wamid, status, rank, error_code, error_title) VALUES
            ('wamid.0', 'failed', 4, 131000, 'Something went wrong'),
            ('wamid.1', 'failed', 4, NULL, NULL),
            ('wamid.2', 'sent', 1, NULL, NULL)",
    )
    .execute(&e.pg)
    .await
    .unwrap();
    let accepted: Vec<Accepted> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| Accepted::new(*id, format!("wamid.{n}")))
        .collect();
    let results = record_accepted_many(&mut e.pg.acquire().await.unwrap(), &accepted)
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            Acceptance::FailedFirst { code: Some(131000) },
            Acceptance::FailedFirst { code: None },
            Acceptance::Recorded,
        ]
    );
    let states = e.part_states().await;
    assert_eq!(states, ["failed", "failed", "accepted"]);
}

#[tokio::test]
async fn the_models_history_leaves_out_messages_a_human_answered_while_the_bot_had_them() {
    let e = env().await;
    // Three messages while the bot has the conversation.
    e.send("57300", "wamid.H1", T0, "quiero un reembolso").await;
    e.send("57300", "wamid.H2", T0 + 1, "pedido 1234").await;
    e.send("57300", "wamid.H3", T0 + 2, "hola de nuevo").await;
    e.send("57300", "wamid.H4", T0 + 3, "sigo esperando").await;
    e.stored(4).await;
    e.wait_followups().await;
    let ids: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, conversation_id FROM messages ORDER BY wamid")
            .fetch_all(&e.pg)
            .await
            .unwrap();
    // H1's reply was suppressed at the send (a human took over); H2's job found the human
    // owner; H3 was answered by the bot.
    sqlx::query(
        "INSERT INTO replies (message_id, conversation_id, outcome) VALUES
            ($1, $4, 'produced'), ($2, $4, 'suppressed'), ($3, $4, 'produced')",
    )
    .bind(ids[0].0)
    .bind(ids[1].0)
    .bind(ids[2].0)
    .bind(ids[0].1)
    .execute(&e.pg)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbound_messages (conversation_id, channel_id, session_no, reply_to, kind,
                                        body, state)
         SELECT conversation_id, channel_id, session_no, m.id, 'reply', b.body, b.state
           FROM messages m JOIN (VALUES ($1::int8, 'un momento', 'suppressed'),
                                        ($2::int8, '¡hola!', 'accepted')) b(id, body, state)
             ON b.id = m.id",
    )
    .bind(ids[0].0)
    .bind(ids[2].0)
    .execute(&e.pg)
    .await
    .unwrap();
    let mut con = e.pg.acquire().await.unwrap();
    let found = wafleet::store::replies::reply_contexts(&mut con, &[(ids[3].0, 20)])
        .await
        .unwrap();
    let (_, turns) = found[0].clone().expect("the message answered");
    assert_eq!(
        turns,
        [
            (true, "hola de nuevo".to_string()),
            (false, "¡hola!".to_string()),
            (true, "sigo esperando".to_string()),
        ]
    );
}

#[tokio::test]
async fn a_status_of_an_erased_customers_message_is_known_and_not_kept() {
    use wafleet::store::conversations::{Status, StatusApplied, apply_statuses, delivery_rank};
    let e = env().await;
    let id = e.parts_of_one_reply(1, Some("wamid.E")).await[0];
    // What erasure leaves of the part's wamid: its digest.
    sqlx::query("UPDATE outbound_messages SET wamid = erased_wamid(wamid) WHERE id = $1")
        .bind(id)
        .execute(&e.pg)
        .await
        .unwrap();
    let status = Status {
        wamid: "wamid.E0".into(),
        status: "delivered".into(),
        rank: delivery_rank("delivered").unwrap(),
        at: None,
        error_code: None,
        error_title: None,
        callback: None,
        recipient: None,
        phone_number_id: None,
    };
    let mut con = e.pg.acquire().await.unwrap();
    let applied = apply_statuses(&mut con, &[status]).await.unwrap();
    assert_eq!(
        applied,
        [StatusApplied::Stale],
        "counted as known, not kept"
    );
    let (early,): (i64,) = sqlx::query_as("SELECT count(*) FROM early_statuses")
        .fetch_one(&e.pg)
        .await
        .unwrap();
    assert_eq!(early, 0);
}

#[tokio::test]
async fn a_late_acceptance_of_an_earlier_send_is_not_recorded_over_the_send_in_flight() {
    use wafleet::store::conversations::{Accepted, record_accepted_many};
    let e = env().await;
    // Send 2 of the part is in flight (the first failed and the part was sent again).
    let id = e.parts_of_one_reply(1, None).await[0];
    sqlx::query("UPDATE outbound_messages SET attempts = 2 WHERE id = $1")
        .bind(id)
        .execute(&e.pg)
        .await
        .unwrap();
    let accepted = |send_no: i32, wamid: &str| Accepted {
        send_no: Some(send_no),
        ..Accepted::new(id, wamid)
    };
    let state = || async {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT state, wamid FROM outbound_messages WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&e.pg)
        .await
        .unwrap()
    };
    let mut con = e.pg.acquire().await.unwrap();
    // Meta's acceptance of the first send, recorded late: not the send the part holds.
    record_accepted_many(&mut con, &[accepted(1, "wamid.FIRST")])
        .await
        .unwrap();
    assert_eq!(state().await, ("sending".into(), None));
    record_accepted_many(&mut con, &[accepted(2, "wamid.SECOND")])
        .await
        .unwrap();
    assert_eq!(
        state().await,
        ("accepted".into(), Some("wamid.SECOND".into()))
    );
}

#[tokio::test]
async fn an_acceptance_re_keys_the_conversation_by_the_wa_id_meta_named_unless_it_is_taken() {
    use wafleet::store::conversations::{Accepted, record_accepted_many};
    let e = env().await;
    let ids = e.parts_of_one_reply(2, None).await;
    // Another customer of the number already has a conversation under 573009.
    sqlx::query(
        "INSERT INTO conversations (channel_id, customer_key, wa_id, session_started_at,
                                    last_activity_at)
         SELECT channel_id, '573009', '573009', now(), now() FROM conversations",
    )
    .execute(&e.pg)
    .await
    .unwrap();
    let key = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT customer_key FROM conversations c JOIN outbound_messages o
                 ON o.conversation_id = c.id WHERE o.id = $1",
        )
        .bind(ids[0])
        .fetch_one(&e.pg)
        .await
        .unwrap()
    };
    let accepted = |n: usize, wa_id: &str| Accepted {
        adopt_wa_id: Some(wa_id.into()),
        ..Accepted::new(ids[n], format!("wamid.K{n}"))
    };
    let mut con = e.pg.acquire().await.unwrap();
    record_accepted_many(&mut con, &[accepted(0, "573009")])
        .await
        .unwrap();
    assert_eq!(key().await, "57300", "573009 is another conversation's");
    record_accepted_many(&mut con, &[accepted(1, "5730001")])
        .await
        .unwrap();
    assert_eq!(key().await, "5730001");
    let states = e.part_states().await;
    assert_eq!(states, ["accepted", "accepted"]);
}

#[tokio::test]
async fn a_row_postgres_refuses_fails_alone_not_the_batch_it_came_in() {
    use wafleet::batch::Batcher;
    let cfg = TestConfig::new().await;
    let pg = cfg.pg().await;
    sqlx::query("CREATE TABLE batch_probe (v text NOT NULL)")
        .execute(&pg)
        .await
        .unwrap();
    let batcher: Batcher<String, ()> =
        Batcher::start("probe", 16, pg.clone(), |conn, items: &[String]| {
            Box::pin(async move {
                sqlx::query("INSERT INTO batch_probe SELECT unnest($1::text[])")
                    .bind(items)
                    .execute(&mut *conn)
                    .await?;
                Ok(vec![(); items.len()])
            })
        });
    // Queued together, so they share one statement; Postgres refuses a NUL in text.
    let items = ["a", "b", "bad\0", "c", "d"];
    let results = futures::future::join_all(items.iter().map(|v| batcher.run(v.to_string()))).await;
    let failed: Vec<&str> = items
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_err())
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(failed, ["bad\0"]);
    let stored: Vec<String> = sqlx::query_scalar("SELECT v FROM batch_probe ORDER BY v")
        .fetch_all(&pg)
        .await
        .unwrap();
    assert_eq!(stored, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn a_message_with_nul_characters_is_stored_without_them() {
    let e = env().await;
    e.send("573001112234", "wamid.NUL", T0, "hola\u{0} mundo\u{0}")
        .await;
    e.stored(1).await;
    e.wait_followups().await;
    let (_, text, _, action, _) = e.message("wamid.NUL").await;
    assert_eq!(text.as_deref(), Some("hola mundo"));
    assert_eq!(action, "reply");
}

#[tokio::test]
async fn a_message_queued_before_its_channel_was_disabled_is_stored_not_answered() {
    use wafleet::streams::{Append, Enqueuer};
    let e = env().await;
    // Disabled after ingest accepted the message: it is already on the stream.
    sqlx::query("UPDATE channels SET enabled = FALSE")
        .execute(&e.pg)
        .await
        .unwrap();
    let body = text_message(PNID, "57301", "wamid.DIS", T0, "¿tienen envíos?");
    let parsed = wafleet_core::webhook::parse(&body).unwrap();
    let keys = e.cfg.keys();
    let appends: Vec<Append> = parsed
        .updates
        .iter()
        .map(|u| Append::update(&keys, u, T0 * 1000))
        .collect();
    let mut con = e.cfg.redis().await;
    Enqueuer::new(Duration::from_secs(60))
        .append_all(&mut con, &appends)
        .await
        .unwrap();
    e.stored(1).await;
    e.wait_followups().await;
    let (_, text, _, action, _) = e.message("wamid.DIS").await;
    assert_eq!(text.as_deref(), Some("¿tienen envíos?"));
    assert_eq!(action, "none", "no reply job for a disabled channel");
    let mut replies = 0;
    for p in 0..keys.partitions() {
        replies += e.stream_len(&keys.replies(p)).await;
    }
    assert_eq!(replies, 0);
}

#[tokio::test]
async fn what_was_kept_aside_is_removed_after_the_retention_period() {
    let cfg = TestConfig::new().await;
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    let streams = [
        keys.events(),
        keys.quarantine(),
        keys.ingest_dead(),
        keys.dead("conversation"),
        keys.dead("sender"),
    ];
    // An entry from 20 days ago and one from now on each; the ids carry their Unix ms.
    let old = chrono::Utc::now().timestamp_millis() - 20 * 86_400_000;
    for s in &streams {
        let _: String = redis::cmd("XADD")
            .arg(s)
            .arg(format!("{old}-0"))
            .arg("text")
            .arg("mi tarjeta es 4111 1111 1111 1111")
            .query_async(&mut con)
            .await
            .unwrap();
        let _: String = redis::cmd("XADD")
            .arg(s)
            .arg("*")
            .arg("text")
            .arg("hola")
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let mut settings = cfg.worker_settings(&["conversation"]);
    settings.retention = Some(Duration::from_secs(14 * 86_400));
    let _worker = Worker::start(settings).await;
    for s in &streams {
        let kept = eventually(&format!("{s} trimmed"), Duration::from_secs(20), || {
            let mut con = con.clone();
            async move {
                let entries = read_stream(&mut con, s).await;
                (entries.len() == 1).then_some(entries)
            }
        })
        .await;
        assert_eq!(kept[0].1["text"], b"hola", "{s}: the recent entry stays");
    }
}

/// A text message as Meta sends it in the BSUID era: `from_user_id` and `contacts[].user_id`
/// always, the phone (`from`, `wa_id`) only when Meta shows it.
fn bsuid_message(phone: Option<&str>, user_id: &str, wamid: &str, ts: i64) -> Vec<u8> {
    let mut contact = serde_json::json!({"profile": {"name": "Cliente"}, "user_id": user_id});
    let mut message = serde_json::json!({
        "from_user_id": user_id, "id": wamid, "timestamp": ts.to_string(), "type": "text",
        "text": {"body": "hola"}
    });
    if let Some(phone) = phone {
        contact["wa_id"] = phone.into();
        message["from"] = phone.into();
    }
    serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": PNID},
            "contacts": [contact], "messages": [message]}}]}]
    }))
    .unwrap()
}

#[tokio::test]
async fn a_customer_is_one_conversation_whether_meta_names_them_by_phone_or_by_bsuid() {
    let e = env().await;
    // Ana writes with a username (no phone), then from a chat where Meta shows her phone, then
    // with the username again; Luis first with his phone, then with his username only.
    let sends = [
        (None, "CO.ana", "wamid.a1"),
        (Some("573001"), "CO.ana", "wamid.a2"),
        (None, "CO.ana", "wamid.a3"),
        (Some("573002"), "CO.luis", "wamid.l1"),
        (None, "CO.luis", "wamid.l2"),
    ];
    for (n, (phone, user, wamid)) in sends.into_iter().enumerate() {
        e.post(&bsuid_message(phone, user, wamid, T0 + n as i64))
            .await;
        // One at a time: each message must find the conversation the one before it made.
        e.stored(n as i64 + 1).await;
    }
    type Row = (String, Option<String>, Option<String>, Vec<String>);
    let conversations: Vec<Row> = sqlx::query_as(
        "SELECT c.customer_key, c.wa_id, c.user_id, array_agg(m.wamid ORDER BY m.id)
               FROM conversations c JOIN messages m ON m.conversation_id = c.id
              GROUP BY c.id ORDER BY c.id",
    )
    .fetch_all(&e.pg)
    .await
    .unwrap();
    let conv = |key: &str, phone: &str, user: &str, wamids: &[&str]| {
        (
            key.to_string(),
            Some(phone.to_string()),
            Some(user.to_string()),
            wamids.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        conversations,
        vec![
            conv(
                "CO.ana",
                "573001",
                "CO.ana",
                &["wamid.a1", "wamid.a2", "wamid.a3"]
            ),
            conv("573002", "573002", "CO.luis", &["wamid.l1", "wamid.l2"]),
        ]
    );
}

#[tokio::test]
async fn a_message_by_bsuid_alone_during_an_erasure_does_not_bring_back_the_erased_phone() {
    let e = env().await;
    e.post(&bsuid_message(Some("573003"), "CO.eva", "wamid.e1", T0))
        .await;
    e.stored(1).await;
    // An erasure holds Eva's conversation: renamed, without phone or BSUID, not committed yet.
    let mut erasing = e.pg.begin().await.unwrap();
    sqlx::query(
        "UPDATE conversations SET customer_key = 'erased:' || id, wa_id = NULL, user_id = NULL",
    )
    .execute(&mut *erasing)
    .await
    .unwrap();
    // She writes with her username meanwhile: storing it waits on the erasure's lock.
    e.post(&bsuid_message(None, "CO.eva", "wamid.e2", T0 + 1))
        .await;
    e.waiting_on_a_lock("the message's store waiting on the erasure", None)
        .await;
    erasing.commit().await.unwrap();
    e.stored(2).await;
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT c.customer_key, c.wa_id, c.user_id
           FROM conversations c JOIN messages m ON m.conversation_id = c.id
          WHERE m.wamid = 'wamid.e2'",
    )
    .fetch_all(&e.pg)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![("CO.eva".to_string(), None, Some("CO.eva".to_string()))],
        "a new conversation keyed by what the message carries"
    );
}

/// Erases the customer of part `id` (57300, [`Env::parts_of_one_reply`]) with the erasure's first
/// transaction held open right after it erased the part, and runs `racing` meanwhile: a statement
/// that took its snapshot while the part still had its text, and waits for the erasure's lock on
/// it. Answers how many parts the erasure reported, and the part's wamid and delivery once both
/// are done.
async fn erase_while_a_statement_waits_on_the_part(
    e: &Env,
    id: i64,
    racing: impl Future<Output = ()> + Send + 'static,
) -> (u64, Option<String>, Option<String>) {
    // A trigger holds the erasure there, waiting for an advisory lock this test holds.
    let mut gate = e.pg.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(7)")
        .execute(&mut *gate)
        .await
        .unwrap();
    for ddl in [
        "CREATE FUNCTION hold_erasure() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN PERFORM pg_advisory_xact_lock(7); RETURN NEW; END $$",
        "CREATE TRIGGER hold_erasure AFTER UPDATE ON outbound_messages FOR EACH ROW
            WHEN (OLD.body <> '' AND NEW.body = '') EXECUTE FUNCTION hold_erasure()",
    ] {
        sqlx::query(ddl).execute(&e.pg).await.unwrap();
    }
    let (pg, mut redis, keys) = (e.pg.clone(), e.cfg.redis().await, e.cfg.keys());
    let erasure = tokio::spawn(async move {
        wafleet::erasure::erase_customer(&pg, &mut redis, &keys, PNID, "57300").await
    });
    e.waiting_on_a_lock("the erasure held open", Some("advisory"))
        .await;
    let racing = tokio::spawn(racing);
    e.waiting_on_a_lock(
        "the statement waiting on the erased part",
        Some("transactionid"),
    )
    .await;
    sqlx::query("SELECT pg_advisory_unlock(7)")
        .execute(&mut *gate)
        .await
        .unwrap();
    let erased = erasure.await.unwrap().unwrap().unwrap();
    racing.await.unwrap();
    let (wamid, delivery) =
        sqlx::query_as("SELECT wamid, delivery FROM outbound_messages WHERE id = $1")
            .bind(id)
            .fetch_one(&e.pg)
            .await
            .unwrap();
    (erased.rows.outbound, wamid, delivery)
}

/// Meta's `delivered` for `wamid`, found by `callback` when given.
fn delivered(
    wamid: &str,
    callback: Option<wafleet::crypto::Callback>,
) -> wafleet::store::conversations::Status {
    wafleet::store::conversations::Status {
        wamid: wamid.into(),
        status: "delivered".into(),
        rank: wafleet::store::conversations::delivery_rank("delivered").unwrap(),
        at: None,
        error_code: None,
        error_title: None,
        callback,
        recipient: None,
        phone_number_id: None,
    }
}

/// Whether `wamid` is what an erasure leaves of Meta's: its digest.
fn is_erased(wamid: &Option<String>) -> bool {
    wamid.as_deref().is_some_and(|w| w.starts_with("erased:"))
}

#[tokio::test]
async fn a_status_applied_while_its_customer_is_erased_leaves_the_wamid_erased_and_counted_once() {
    let e = env().await;
    let id = e.parts_of_one_reply(1, None).await[0];
    e.record_accepted(id, "wamid.HBgMNTczMDA").await;
    // Meta's `delivered` comes in meanwhile, found by the wamid the part had before.
    let pg = e.pg.clone();
    let (outbound, wamid, delivery) =
        erase_while_a_statement_waits_on_the_part(&e, id, async move {
            let mut con = pg.acquire().await.unwrap();
            let status = delivered("wamid.HBgMNTczMDA", None);
            wafleet::store::conversations::apply_statuses(&mut con, &[status])
                .await
                .unwrap();
        })
        .await;
    assert_eq!(
        (outbound, is_erased(&wamid), delivery.as_deref()),
        (1, true, Some("delivered")),
        "the part is counted once and keeps only the digest of Meta's wamid ({wamid:?}); the \
         status is still applied"
    );
}

#[tokio::test]
async fn an_ambiguous_send_reconciled_while_its_customer_is_erased_keeps_only_the_wamids_digest() {
    let e = env().await;
    // Sent, and Meta's answer never came: the status finds the part by our callback.
    let id = e.parts_of_one_reply(1, None).await[0];
    let pg = e.pg.clone();
    let (outbound, wamid, delivery) =
        erase_while_a_statement_waits_on_the_part(&e, id, async move {
            let mut con = pg.acquire().await.unwrap();
            let callback = wafleet::crypto::Callback {
                outbound_id: id,
                send_try: None,
            };
            let status = delivered("wamid.HBgMNTczMDA", Some(callback));
            wafleet::store::conversations::apply_statuses(&mut con, &[status])
                .await
                .unwrap();
        })
        .await;
    assert_eq!(
        (outbound, is_erased(&wamid), delivery.as_deref()),
        (1, true, Some("delivered")),
        "counted once, and Meta's wamid is not back on the erased part: {wamid:?}"
    );
}

#[tokio::test]
async fn an_acceptance_recorded_while_its_customer_is_erased_keeps_only_the_wamids_digest() {
    let e = env().await;
    let id = e.parts_of_one_reply(1, None).await[0];
    let pg = e.pg.clone();
    let (outbound, wamid, _) = erase_while_a_statement_waits_on_the_part(&e, id, async move {
        let mut con = pg.acquire().await.unwrap();
        let accepted = wafleet::store::conversations::Accepted::new(id, "wamid.HBgMNTczMDA");
        wafleet::store::conversations::record_accepted_many(&mut con, &[accepted])
            .await
            .unwrap();
    })
    .await;
    assert_eq!(
        (outbound, is_erased(&wamid)),
        (1, true),
        "counted once, and Meta's wamid is not back on the erased part: {wamid:?}"
    );
}

#[tokio::test]
async fn an_early_status_from_another_numbers_webhook_is_not_applied_to_this_numbers_acceptance() {
    use wafleet::store::conversations::{
        Acceptance, Accepted, Status, StatusApplied, apply_statuses, record_accepted_many,
    };
    let e = env().await;
    let other = "106540352242999";
    e.cfg.add_channel(other, |_| {}).await;
    let ids = e.parts_of_one_reply(2, None).await;
    // Both statuses come before the sender records Meta's acceptance: one in the other number's
    // webhook (that tenant's own app signs it), one in this number's.
    let failed = |wamid: &str, number: &str| Status {
        wamid: wamid.into(),
        status: "failed".into(),
        rank: 4,
        at: None,
        error_code: Some(131047),
        error_title: None,
        callback: None,
        recipient: None,
        phone_number_id: Some(number.into()),
    };
    let mut con = e.pg.acquire().await.unwrap();
    let kept = apply_statuses(
        &mut con,
        &[failed("wamid.early0", other), failed("wamid.early1", PNID)],
    )
    .await
    .unwrap();
    assert_eq!(kept, [StatusApplied::Kept, StatusApplied::Kept]);
    let accepted = [
        Accepted::new(ids[0], "wamid.early0"),
        Accepted::new(ids[1], "wamid.early1"),
    ];
    let results = record_accepted_many(&mut con, &accepted).await.unwrap();
    assert_eq!(
        results,
        [
            Acceptance::Recorded,
            Acceptance::FailedFirst { code: Some(131047) }
        ]
    );
    let states = e.part_states().await;
    assert_eq!(states, ["accepted", "failed"]);
}

#[tokio::test]
async fn lifting_a_long_pause_gives_the_held_parts_their_retry_age_again() {
    use wafleet::store::channels::{ChannelSpec, Resumed, resume, upsert};
    let e = env().await;
    let ids = e.parts_of_one_reply(1, None).await;
    // Held for two hours by a pause of an expired token (longer than WAFLEET_SEND_MAX_AGE_MS):
    // once the operator fixes it, the part must still have its retries ahead, not be too old to
    // wait for the number's rate limit.
    let held_two_hours = || async {
        sqlx::query(
            "WITH p AS (UPDATE outbound_messages
                           SET state = 'pending', retries_since = now() - interval '2 hours'
                         WHERE id = $1)
             UPDATE channels SET sends_paused_until = now() + interval '1 hour',
                                 sends_paused_code = 190, sends_paused_reason = 'expired'
              WHERE phone_number_id = $2",
        )
        .bind(ids[0])
        .bind(PNID)
        .execute(&e.pg)
        .await
        .unwrap();
    };
    let age_secs = || async {
        let (secs,): (f64,) = sqlx::query_as(
            "SELECT extract(epoch FROM now() - retries_since)::float8
               FROM outbound_messages WHERE id = $1",
        )
        .bind(ids[0])
        .fetch_one(&e.pg)
        .await
        .unwrap();
        secs
    };
    held_two_hours().await;
    assert!(matches!(
        resume(&e.pg, PNID).await.unwrap(),
        Resumed::Lifted(_)
    ));
    assert!(
        age_secs().await < 60.0,
        "after resume: {}",
        age_secs().await
    );

    held_two_hours().await;
    let spec = ChannelSpec {
        phone_number_id: PNID.into(),
        access_token: Some(wafleet::config::Secret::new("EAAG-new-token".into())),
        ..Default::default()
    };
    let saved = upsert(&e.pg, &e.cfg.cipher(), &spec).await.unwrap();
    assert!(
        matches!(saved.pause, Some((_, true))),
        "the new token lifts"
    );
    assert!(
        age_secs().await < 60.0,
        "after a new token: {}",
        age_secs().await
    );
}
