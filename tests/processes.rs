//! Worker processes as processes: kill -9 mid-job, poison entries, ordering across several
//! processes with rebalancing, and SIGTERM.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use wafleet_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_test-worker");
const PNID: &str = "106540352242922";
const T0: i64 = 1_760_000_000;

/// A conversation-stage worker `a` (with `env`) whose second job, `wamid.mid`, is stopped inside
/// its transaction by a lock on `messages` (the returned transaction), its entry pending.
async fn a_worker_mid_job(
    cfg: &TestConfig,
    ingest: &Ingest,
    pg: &sqlx::PgPool,
    env: &[(&str, &str)],
) -> (ChildWorker, sqlx::Transaction<'static, sqlx::Postgres>) {
    let a = ChildWorker::spawn(BIN, cfg, "real", env);
    assert_eq!(
        ingest
            .post_signed(
                &text_message(PNID, "57300", "wamid.warm", T0, "hola"),
                APP_SECRET
            )
            .await
            .status(),
        200
    );
    wait_count(pg, "SELECT count(*) FROM messages", 1, 30).await;

    // Hold inserts on `messages`, so the next job stops inside its transaction.
    let mut lock = pg.begin().await.unwrap();
    sqlx::query("LOCK TABLE messages IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    assert_eq!(
        ingest
            .post_signed(
                &text_message(PNID, "57300", "wamid.mid", T0 + 1, "¿hay envío?"),
                APP_SECRET
            )
            .await
            .status(),
        200
    );
    let stream = mid_job_stream(cfg);
    let con = cfg.redis().await;
    eventually("the job to be in flight", Duration::from_secs(20), || {
        let mut con = con.clone();
        let stream = stream.clone();
        async move {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("conversation")
                .query_async(&mut con)
                .await
                .ok()?;
            match pending {
                redis::Value::Array(v) if matches!(v.first(), Some(redis::Value::Int(1))) => {
                    Some(())
                }
                _ => None,
            }
        }
    })
    .await;
    (a, lock)
}

fn mid_job_stream(cfg: &TestConfig) -> String {
    let keys = cfg.keys();
    keys.inbound(keys.partition_of(&format!("{PNID}:57300")))
}

/// The job `a_worker_mid_job` stopped is stored once, within `secs`, its entry acknowledged and
/// one reply job made per message.
async fn stored_once_within(cfg: &TestConfig, pg: &sqlx::PgPool, secs: u64) {
    wait_count(
        pg,
        "SELECT count(*) FROM messages WHERE wamid = 'wamid.mid'",
        1,
        secs,
    )
    .await;
    cfg.wait_inbound_drained(secs).await;
    assert_eq!(count(pg, "SELECT count(*) FROM messages").await, 2);
    let mut con = cfg.redis().await;
    let len: usize = con.xlen(mid_job_stream(cfg)).await.unwrap();
    assert_eq!(len, 0, "the reclaimed entry was acknowledged");
    // One reply job per message, not one per attempt.
    let keys = cfg.keys();
    let mut replies = 0;
    for p in 0..keys.partitions() {
        let n: usize = con.xlen(keys.replies(p)).await.unwrap();
        replies += n;
    }
    assert_eq!(replies, 2);
}

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_the_job_to_another_which_stores_it_once() {
    let cfg = TestConfig::new().await;
    cfg.add_channel(PNID, |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let pg = cfg.pg().await;
    let stage = [("WAFLEET_STAGES", "conversation")];
    let (mut a, lock) = a_worker_mid_job(&cfg, &ingest, &pg, &stage).await;
    a.kill();
    let _b = ChildWorker::spawn(BIN, &cfg, "real", &stage);
    lock.rollback().await.unwrap();
    stored_once_within(&cfg, &pg, 40).await;
}

/// A minute-long lease, as in production (the LLM stage's is longer): without a worker id, a
/// worker killed mid-job leaves its partition idle for all of it.
const LONG_LEASE: [(&str, &str); 3] = [
    ("WAFLEET_STAGES", "conversation"),
    ("WAFLEET_LEASE_TTL_MS", "60000"),
    ("WAFLEET_JOB_DEADLINE_MS", "30000"),
];

fn with_id(id: &str) -> Vec<(&str, &str)> {
    let mut env = LONG_LEASE.to_vec();
    env.push(("WAFLEET_WORKER_ID", id));
    env
}

#[tokio::test]
async fn a_worker_killed_mid_job_and_restarted_with_its_id_takes_its_job_back_before_the_lease_ends()
 {
    let cfg = TestConfig::new().await;
    cfg.add_channel(PNID, |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let pg = cfg.pg().await;
    let env = with_id("testhost-1");
    let (mut a, lock) = a_worker_mid_job(&cfg, &ingest, &pg, &env).await;
    a.kill();
    let killed = std::time::Instant::now();
    let _b = ChildWorker::spawn(BIN, &cfg, "real", &env);
    lock.rollback().await.unwrap();
    // Half the lease: the job is taken back, not left until the lease expires.
    stored_once_within(&cfg, &pg, 30).await;
    eprintln!(
        "kill -9 to the message stored by the restarted worker: {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn a_second_live_process_with_a_workers_id_refuses_to_start_and_takes_nothing() {
    let cfg = TestConfig::new().await;
    let env = with_id("testhost-1");
    let mut a = ChildWorker::spawn(BIN, &cfg, "real", &env);
    let keys = cfg.keys();
    let leases = || async {
        let mut con = cfg.redis().await;
        let mut holders = Vec::new();
        for p in 0..keys.partitions() {
            let owner: Option<String> = con.get(keys.lease("conversation", p)).await.ok()?;
            holders.push(owner?);
        }
        Some(holders)
    };
    let before = eventually(
        "the first process to own every partition",
        Duration::from_secs(20),
        leases,
    )
    .await;
    let mut b = ChildWorker::spawn(BIN, &cfg, "real", &env);
    eventually(
        "the second process to refuse to start",
        Duration::from_secs(30),
        || {
            let exited = b.exited();
            async move { exited.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        leases().await,
        Some(before),
        "the first keeps its partitions"
    );
    assert!(!a.exited());
    let mut con = cfg.redis().await;
    let workers: Vec<String> = con
        .zrange(keys.workers("conversation"), 0, -1)
        .await
        .unwrap();
    assert_eq!(workers.len(), 1, "only the first heartbeats: {workers:?}");
}

#[tokio::test]
async fn a_poison_entry_reaches_the_dead_letter_stream_after_the_configured_deliveries() {
    let cfg = TestConfig::new().await;
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    let poison_stream = keys.inbound(0);
    let _: String = con
        .xadd(
            &poison_stream,
            "*",
            &[("conv", "poison-conv"), ("poison", "crash")],
        )
        .await
        .unwrap();
    // The customer's next message, queued behind the poison one in its lane at every crash.
    let behind: String = con
        .xadd(
            &poison_stream,
            "*",
            &[("conv", "poison-conv"), ("n", "behind")],
        )
        .await
        .unwrap();
    let mut child = ChildWorker::spawn(BIN, &cfg, "crash", &[]);
    let mut crashes = 0;
    let dead = keys.dead("probe");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.exited() {
            crashes += 1;
            child = ChildWorker::spawn(BIN, &cfg, "crash", &[]);
        }
        let n: usize = con.xlen(&dead).await.unwrap();
        if n >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "poison entry never dead-lettered ({crashes} crashes)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = read_stream(&mut con, &dead).await;
    let fields = &entries[0].1;
    let reason = String::from_utf8_lossy(&fields["reason"]).into_owned();
    assert!(reason.contains("delivered 4 times (limit 3)"), "{reason}");
    assert_eq!(fields["poison"], b"crash", "the entry is kept whole");
    assert_eq!(crashes, 3, "one crash per allowed delivery");
    // The worker is healthy afterwards: the message that waited behind the poison one (it never
    // ran, so the crashes are not held against it) and a new one are processed.
    let after: String = con
        .xadd(&poison_stream, "*", &[("conv", "fine"), ("n", "1")])
        .await
        .unwrap();
    let done = format!("{}:test:done", cfg.prefix);
    let finished = eventually(
        "the entries after the poison one",
        Duration::from_secs(20),
        || {
            let mut con = con.clone();
            let done = done.clone();
            async move {
                let ids: Vec<String> = con.lrange(&done, 0, -1).await.ok()?;
                (ids.len() == 2).then_some(ids)
            }
        },
    )
    .await;
    assert_eq!(finished, [behind, after]);
    assert_eq!(
        read_stream(&mut con, &dead).await.len(),
        1,
        "only the poison entry is dead-lettered"
    );
    assert!(!child.exited());
}

/// Distinct processes currently owning a lease of the conversation stage.
async fn owners(cfg: &TestConfig) -> usize {
    let mut con = cfg.redis().await;
    let keys = cfg.keys();
    let mut owners = std::collections::HashSet::new();
    for p in 0..keys.partitions() {
        let owner: Option<String> = con.get(keys.lease("conversation", p)).await.unwrap();
        owners.extend(owner);
    }
    owners.len()
}

#[tokio::test]
async fn each_conversation_is_stored_in_order_across_processes_that_come_and_go() {
    let cfg = TestConfig {
        partitions: 8,
        ..TestConfig::new().await
    };
    cfg.add_channel(PNID, |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let pg = cfg.pg().await;
    let spawn = || ChildWorker::spawn(BIN, &cfg, "real", &[("WAFLEET_STAGES", "conversation")]);
    let _a = spawn();
    let _b = spawn();
    const CONVS: usize = 40;
    // Rounds of messages: in each round every conversation sends its next message, all in
    // parallel; a conversation's messages are therefore posted strictly in order.
    let round = |seq: usize| {
        let ingest = &ingest;
        futures::future::join_all((0..CONVS).map(move |conv| async move {
            let body = text_message(
                PNID,
                &format!("5730{conv:04}"),
                &format!("wamid.{conv}.{seq}"),
                T0 + seq as i64,
                &format!("mensaje {seq}"),
            );
            assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
        }))
    };
    let mut seq = 0;
    let mut max_owners = 0;
    let mut c = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Keep messages flowing while the fleet goes from two processes to three, and until the
    // partitions are spread over all three.
    while seq < 8 || max_owners < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "partitions never spread over three processes"
        );
        round(seq).await;
        seq += 1;
        max_owners = max_owners.max(owners(&cfg).await);
        if seq == 4 {
            c = Some(spawn());
        }
        if seq > 4 && max_owners < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let total = (CONVS * seq) as i64;
    eventually("every message stored", Duration::from_secs(90), || {
        let pg = pg.clone();
        async move { (count(&pg, "SELECT count(*) FROM messages").await == total).then_some(()) }
    })
    .await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.customer_key, m.wamid FROM messages m JOIN conversations c ON c.id = m.conversation_id ORDER BY m.id",
    )
    .fetch_all(&pg)
    .await
    .unwrap();
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    for (customer, wamid) in rows {
        let n: usize = wamid.rsplit('.').next().unwrap().parse().unwrap();
        seen.entry(customer).or_default().push(n);
    }
    assert_eq!(seen.len(), CONVS);
    for (customer, seqs) in &seen {
        assert_eq!(
            seqs,
            &(0..seq).collect::<Vec<_>>(),
            "conversation {customer} stored out of order"
        );
    }
    assert!(max_owners >= 3, "the work was spread over three processes");
    drop(c);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_releases_leases_and_exits() {
    let cfg = TestConfig::new().await;
    cfg.add_channel(PNID, |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let pg = cfg.pg().await;
    let mut w = ChildWorker::spawn(BIN, &cfg, "real", &[("WAFLEET_STAGES", "conversation")]);
    for i in 0..20 {
        let body = text_message(PNID, &format!("57{i}"), &format!("wamid.t{i}"), T0, "hola");
        assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    }
    wait_count(&pg, "SELECT count(*) FROM messages", 20, 30).await;
    cfg.wait_inbound_drained(30).await;
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*:lease:conversation", cfg.prefix))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        leases.len() as u32,
        keys.partitions(),
        "one process owns every partition"
    );
    w.terminate();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !w.exited() {
        assert!(
            std::time::Instant::now() < deadline,
            "worker did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*:lease:conversation", cfg.prefix))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(leases.is_empty(), "leases released on exit: {leases:?}");
    let workers: usize = con.zcard(keys.workers("conversation")).await.unwrap();
    assert_eq!(workers, 0);
}

#[tokio::test]
async fn a_process_that_joins_gets_its_share_within_seconds_with_the_default_lease() {
    let cfg = TestConfig::new().await;
    // The production lease (45 s) rather than the tests' short one: rebalancing must not wait
    // for thirds of it.
    let spawn = || {
        ChildWorker::spawn(
            BIN,
            &cfg,
            "real",
            &[
                ("WAFLEET_STAGES", "conversation"),
                ("WAFLEET_LEASE_TTL_MS", "45000"),
            ],
        )
    };
    let _a = spawn();
    let keys = cfg.keys();
    let all_leased = || {
        let cfg = &cfg;
        let keys = &keys;
        async move {
            let mut con = cfg.redis().await;
            for p in 0..keys.partitions() {
                let owner: Option<String> = con.get(keys.lease("conversation", p)).await.ok()?;
                owner?;
            }
            Some(())
        }
    };
    eventually(
        "the first process to own every partition",
        Duration::from_secs(20),
        all_leased,
    )
    .await;
    assert_eq!(owners(&cfg).await, 1);
    let _b = spawn();
    eventually(
        "the second process to own its share",
        Duration::from_secs(10),
        || async { (owners(&cfg).await == 2).then_some(()) },
    )
    .await;
}

/// What a real worker with `name=value` on top of `cfg`'s environment printed to stderr, once
/// it stopped with a failure within 30 s (it fails the test if it kept running or succeeded).
async fn stopped_worker_stderr(cfg: &TestConfig, name: &str, value: &str) -> String {
    let run = tokio::process::Command::new(BIN)
        .envs(cfg.worker_env())
        .env("TEST_WORKER_MODE", "real")
        .env(name, value)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("{name}={value} was taken: the worker kept running"))
        .unwrap();
    assert!(!out.status.success(), "{name}={value}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_setting_of_zero_or_a_bad_log_format_stops_the_worker_naming_the_variable() {
    let cfg = TestConfig::new().await;
    for (name, value) in [
        ("WAFLEET_MAX_IN_FLIGHT", "0"),
        ("WAFLEET_JOB_DEADLINE_MS", "0"),
        ("WAFLEET_SEND_MAX_ATTEMPTS", "0"),
        ("WAFLEET_GRAPH_TIMEOUT_MS", "0"),
        ("WAFLEET_DATABASE_POOL_SIZE", "0"),
        ("WAFLEET_EARLY_STATUS_TTL_SECS", "0"),
        ("WAFLEET_SHUTDOWN_GRACE_SECS", "0"),
        ("WAFLEET_LOG_FORMAT", "yaml"),
        ("RUST_LOG", "wafleet=loud"),
        ("WAFLEET_WORKER_ID", "host@1"),
    ] {
        let stderr = stopped_worker_stderr(&cfg, name, value).await;
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}

#[tokio::test]
async fn a_worker_that_cannot_reach_postgres_names_the_cause_and_the_server_not_the_password() {
    let cfg = TestConfig::new().await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (server, _) = cfg.database_url.rsplit_once('/').unwrap();
    let cases = [
        (
            format!("postgres://wafleet:s3cret-pw@127.0.0.1:{closed_port}/wafleet"),
            "Connection refused",
            format!("127.0.0.1:{closed_port}"),
        ),
        (
            format!("{server}/wafleet_no_such_database"),
            "does not exist",
            "wafleet_no_such_database".to_string(),
        ),
    ];
    for (url, cause, place) in cases {
        let stderr = stopped_worker_stderr(&cfg, "DATABASE_URL", &url).await;
        assert!(stderr.contains(cause), "{url}: {stderr}");
        assert!(stderr.contains(&place), "{url}: {stderr}");
        assert!(!stderr.contains("s3cret-pw"), "{url}: {stderr}");
    }
}

#[tokio::test]
async fn processes_whose_partition_count_changes_under_them_stop_and_exit_with_an_error() {
    let cfg = TestConfig::new().await;
    cfg.add_channel(PNID, |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let worker = tokio::process::Command::new(BIN)
        .envs(cfg.worker_env())
        .env("TEST_WORKER_MODE", "real")
        .env("WAFLEET_PARTITIONS_CHECK_MS", "200")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pg = cfg.pg().await;
    let body = text_message(PNID, "57300", "wamid.P1", T0, "hola");
    assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    wait_count(&pg, "SELECT count(*) FROM messages", 1, 30).await;

    let key = wafleet::partition_count::key(&cfg.prefix);
    let mut con = cfg.redis().await;
    let recorded = |con: redis::aio::MultiplexedConnection| {
        let key = key.clone();
        async move {
            let mut con = con;
            con.get::<_, Option<String>>(&key).await.unwrap()
        }
    };
    // A Redis that lost the key (flushed, restarted without persistence): the running
    // processes record their count again, as a process starting would.
    let _: () = con.del(&key).await.unwrap();
    eventually(
        "the count recorded again",
        Duration::from_secs(10),
        || async {
            (recorded(con.clone()).await == Some(cfg.partitions.to_string())).then_some(())
        },
    )
    .await;

    // Another count is recorded under them (an operator's SET, or a newer process after the
    // key was lost): they stop taking work and exit with an error naming both counts.
    let mismatches = || {
        metric_value(
            &wafleet::telemetry::metrics_handle().render(),
            "wafleet_partition_count_mismatches_total",
        )
    };
    let before = mismatches();
    let other = cfg.partitions + 4;
    let _: () = con.set(&key, other).await.unwrap();
    let url = ingest.url.clone();
    let refused = ingest
        .ended(30)
        .await
        .expect_err("ingest exits with an error");
    let names_both = |text: &str| {
        text.contains(&format!("WAFLEET_PARTITIONS is {}", cfg.partitions))
            && text.contains(&format!("use {other}"))
    };
    let text = format!("{refused:#}");
    assert!(names_both(&text), "{text}");
    assert!(mismatches() > before, "counted");
    assert!(
        reqwest::Client::new()
            .post(format!("{url}/webhooks/whatsapp"))
            .body(body.clone())
            .send()
            .await
            .is_err(),
        "ingest takes no more webhooks"
    );
    let out = tokio::time::timeout(Duration::from_secs(30), worker.wait_with_output())
        .await
        .expect("the worker exits by itself")
        .unwrap();
    assert!(!out.status.success(), "exits non-zero: {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(names_both(&stderr), "{stderr}");
    // The count stays as recorded: the fleet's, not the stopped processes'.
    assert_eq!(recorded(con.clone()).await, Some(other.to_string()));
}
