//! The workers' channel-settings cache (`ChannelCache`) against a real Postgres: what it reads
//! for a quiet channel whose entry went stale, and that every kind of change is still seen.

use std::time::Duration;

use sqlx::PgPool;
use wafleet::config::Secret;
use wafleet::stages::channel_settings::ChannelCache;
use wafleet::store::channels::{ProviderSpec, clear_providers, set_provider};
use wafleet::store::knowledge;
use wafleet_tests::*;

fn number(i: usize) -> String {
    format!("10999{i:05}")
}

/// Scans of `table` (sequential and index) that the statistics hold, after every other session
/// of the test's database has ended (ended here, if still open): a session flushes its
/// statistics as it exits.
async fn scans(pg: &PgPool, table: &str) -> i64 {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(pg)
    .await
    .unwrap();
    wait_count(
        pg,
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
        0,
        30,
    )
    .await;
    sqlx::query_scalar(
        "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables
          WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(pg)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_quiet_channel_is_not_read_again_while_it_is_unchanged() {
    const CHANNELS: usize = 30;
    let cfg = TestConfig::new().await;
    for i in 0..CHANNELS {
        cfg.add_channel(&number(i), |_| {}).await;
    }
    let stats = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&cfg.database_url)
        .await
        .unwrap();
    // Every read of a channel reads its model chain: count those.
    let before = scans(&stats, "channel_llm_providers").await;
    let pool = PgPool::connect(&cfg.database_url).await.unwrap();
    // Every entry stale at once: each job looks at Postgres, as a quiet tenant's does.
    let cache = ChannelCache::new(pool.clone(), cfg.cipher()).fresh_for(Duration::ZERO);
    for _message in 0..4 {
        for i in 0..CHANNELS {
            let channel = cache.get(&number(i)).await.unwrap().expect("channel");
            assert_eq!(channel.phone_number_id, number(i));
        }
    }
    drop(cache);
    pool.close().await;
    let reads = scans(&stats, "channel_llm_providers").await - before;
    assert_eq!(
        reads, CHANNELS as i64,
        "each channel read once, at its first message, not again while it is unchanged"
    );
}

#[tokio::test]
async fn every_kind_of_change_to_a_channel_is_seen_once_its_entry_is_stale() {
    let cfg = TestConfig::new().await;
    let pg = cfg.pg().await;
    let (a, b) = (number(1), number(2));
    cfg.add_channel(&a, |_| {}).await;
    cfg.add_channel(&b, |_| {}).await;
    let cache = ChannelCache::new(pg.clone(), cfg.cipher()).fresh_for(Duration::ZERO);
    let get = |pnid: &str| {
        let (cache, pnid) = (cache.clone(), pnid.to_string());
        async move { cache.get(&pnid).await.unwrap() }
    };
    let exec = |sql: &'static str| {
        let pg = pg.clone();
        async move {
            sqlx::query(sql).execute(&pg).await.unwrap();
        }
    };
    let new = number(3);
    assert!(get(&new).await.is_none(), "no such channel yet");
    assert!(get(&a).await.unwrap().bot_answers());
    assert!(get(&b).await.unwrap().bot_answers());

    // A channel added after a job for it found none.
    cfg.add_channel(&new, |_| {}).await;
    assert!(get(&new).await.is_some(), "a channel added later");

    // Settings changed by hand, a pause, a disabled channel.
    exec("UPDATE channels SET bot_mode = 'off' WHERE phone_number_id = '1099900001'").await;
    assert!(!get(&a).await.unwrap().bot_answers(), "bot_mode off");
    assert!(
        get(&b).await.unwrap().bot_answers(),
        "the other channel unchanged"
    );
    exec(
        "UPDATE channels SET sends_paused_until = now() + interval '1 hour'
          WHERE phone_number_id = '1099900002'",
    )
    .await;
    assert!(
        get(&b).await.unwrap().sends_paused_until.is_some(),
        "paused"
    );
    exec("UPDATE channels SET sends_paused_until = NULL WHERE phone_number_id = '1099900002'")
        .await;
    assert!(
        get(&b).await.unwrap().sends_paused_until.is_none(),
        "resumed"
    );
    exec("UPDATE channels SET enabled = false WHERE phone_number_id = '1099900002'").await;
    assert!(!get(&b).await.unwrap().enabled, "disabled");

    // Its model chain: added, changed by hand, removed.
    let model = ProviderSpec {
        position: 0,
        name: "shop".into(),
        kind: "openai".into(),
        base_url: "http://127.0.0.1:9/v1".into(),
        model: "shop-1".into(),
        api_key: Secret::new("sk-shop".into()),
    };
    set_provider(&pg, &cfg.cipher(), &a, &model).await.unwrap();
    let channel = get(&a).await.unwrap();
    assert!(channel.own_chain);
    assert_eq!(channel.providers[0].model, "shop-1");
    exec("UPDATE channel_llm_providers SET model = 'shop-2'").await;
    assert_eq!(get(&a).await.unwrap().providers[0].model, "shop-2");
    clear_providers(&pg, &a).await.unwrap();
    assert!(!get(&a).await.unwrap().own_chain, "chain removed");

    // Its knowledge base: the first entry, and the last one removed.
    assert!(!get(&a).await.unwrap().has_knowledge);
    let put = knowledge::put(&pg, &a, "Horario", "De 9 a 18.", "spanish");
    assert!(matches!(put.await.unwrap(), knowledge::Put::Added));
    assert!(get(&a).await.unwrap().has_knowledge, "first entry");
    assert!(knowledge::remove(&pg, &a, "Horario").await.unwrap());
    assert!(!get(&a).await.unwrap().has_knowledge, "last entry removed");
}
