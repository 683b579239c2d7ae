//! The worker runtime with probe handlers, in process, on a real Redis: delayed retries keep a
//! conversation's order without blocking others, panics end on the dead-letter stream, the
//! in-flight bound holds, a lost consumer group is re-created, bad settings are refused.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use wafleet::worker::{self, Handler, Job, Outcome, Source, Stage, StageRuntime};
use wafleet_tests::*;

const STAGE: Stage = Stage {
    name: "probe",
    source: Source::Inbound,
};

/// Records what it sees; behaviour per entry comes from its fields:
/// `retry=N` asks for a 300 ms delay on the first N attempts, `panic=1` panics,
/// `sleep_ms` holds the job that long, `unavailable=1` answers that a dependency is down.
#[derive(Default)]
struct Probe {
    done: Mutex<Vec<(String, String, u32)>>,
    unavailable: AtomicUsize,
    running: Mutex<HashSet<String>>,
    overlaps: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// While set, a job with `needs_dependency` finds its dependency down.
    down: std::sync::atomic::AtomicBool,
}

struct ProbeHandler(Arc<Probe>);

impl Handler for ProbeHandler {
    async fn handle(&self, job: &Job) -> Outcome {
        let this = &self.0;
        if !this.running.lock().unwrap().insert(job.conv.clone()) {
            this.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let now = this.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        this.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let ms: u64 = job
            .field("sleep_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        this.in_flight.fetch_sub(1, Ordering::SeqCst);
        this.running.lock().unwrap().remove(&job.conv);
        match job.field("panic") {
            Some("data") => {
                let text = job.field("text").unwrap_or_default();
                panic!("probe quoting {text}");
            }
            Some(_) => panic!("probe told to panic"),
            None => {}
        }
        if job.field("unavailable").is_some()
            || (job.field("needs_dependency").is_some() && this.down.load(Ordering::SeqCst))
        {
            this.unavailable.fetch_add(1, Ordering::SeqCst);
            return Outcome::Unavailable {
                reason: "probe's dependency is down".into(),
            };
        }
        let retries: u32 = job.field("retry").and_then(|v| v.parse().ok()).unwrap_or(0);
        if job.attempt < retries {
            return Outcome::Retry {
                after: Duration::from_millis(300),
                reason: "probe asked for later".into(),
            };
        }
        let name = job.field("name").unwrap_or("?").to_string();
        this.done
            .lock()
            .unwrap()
            .push((job.conv.clone(), name, job.attempt));
        Outcome::Done
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(
    cfg: &TestConfig,
    probe: Arc<Probe>,
    tweak: impl FnOnce(&mut worker::WorkerSettings),
) -> Running {
    let mut settings = cfg.worker_runtime();
    tweak(&mut settings);
    let stop = CancellationToken::new();
    let rt = StageRuntime {
        stage: STAGE,
        keys: cfg.keys(),
        redis: wafleet::shared_redis::blocking_pool(&cfg.redis_url, 32).unwrap(),
        shared: wafleet::shared_redis::SharedRedis::new(&cfg.redis_url, Duration::from_secs(2))
            .unwrap(),
        handler: Arc::new(ProbeHandler(probe)),
        settings,
        shutdown: stop.clone(),
    };
    Running {
        stop,
        task: tokio::spawn(worker::run_stage(rt)),
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn add(cfg: &TestConfig, conv: &str, fields: &[(&str, &str)]) {
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    let mut all = vec![("conv", conv)];
    all.extend_from_slice(fields);
    let _: String = con
        .xadd(keys.inbound(keys.partition_of(conv)), "*", &all)
        .await
        .unwrap();
}

async fn wait_done(probe: &Probe, n: usize) {
    eventually(
        &format!("{n} jobs done"),
        Duration::from_secs(20),
        || async { (probe.done.lock().unwrap().len() >= n).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_delayed_retry_keeps_its_conversation_in_order_without_blocking_others() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe.clone(), |_| {});
    add(&cfg, "A", &[("name", "a1"), ("retry", "2")]).await;
    add(&cfg, "A", &[("name", "a2")]).await;
    add(&cfg, "B", &[("name", "b1")]).await;
    add(&cfg, "A", &[("name", "a3")]).await;
    add(&cfg, "B", &[("name", "b2")]).await;
    wait_done(&probe, 5).await;
    let done = probe.done.lock().unwrap().clone();
    let names: Vec<&str> = done.iter().map(|(_, n, _)| n.as_str()).collect();
    let of = |conv: &str| {
        done.iter()
            .filter(|(c, ..)| c == conv)
            .map(|(_, n, _)| n.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("A"),
        ["a1", "a2", "a3"],
        "a2 and a3 waited behind the retried a1"
    );
    assert_eq!(of("B"), ["b1", "b2"]);
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(
        pos("b2") < pos("a1"),
        "B was not blocked by A's delay: {names:?}"
    );
    assert_eq!(
        done.iter().find(|(_, n, _)| n == "a1").unwrap().2,
        2,
        "a1 succeeded on its third attempt"
    );
    // Nothing left behind: stream, held lists and delayed set are empty.
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    let len: usize = con.xlen(keys.inbound(0)).await.unwrap();
    let delayed: usize = con.zcard(keys.delayed("probe", 0)).await.unwrap();
    let held: bool = con.exists(keys.held("probe", 0, "A")).await.unwrap();
    assert_eq!((len, delayed, held), (0, 0, false));
    running.stop().await;
}

#[tokio::test]
async fn a_job_given_up_on_at_shutdown_keeps_the_later_jobs_of_its_conversation_behind_it() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    // a1 finds its dependency down until the worker stops; a2 would succeed.
    add(&cfg, "A", &[("name", "a1"), ("unavailable", "1")]).await;
    add(&cfg, "A", &[("name", "a2")]).await;
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe.clone(), |_| {});
    eventually("a1 to be tried", Duration::from_secs(20), || async {
        (probe.unavailable.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    running.stop().await;
    assert!(
        probe.done.lock().unwrap().is_empty(),
        "a2 ran before a1, which is still pending: {:?}",
        probe.done.lock().unwrap()
    );
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    let len: usize = con.xlen(keys.inbound(0)).await.unwrap();
    assert_eq!(len, 2, "both left for the next owner");
}

#[tokio::test]
async fn a_job_waiting_out_an_outage_is_not_dead_lettered_by_partition_moves() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let probe = Arc::new(Probe::default());
    probe.down.store(true, Ordering::SeqCst);
    add(&cfg, "A", &[("name", "a1"), ("needs_dependency", "1")]).await;
    // The partition changes hands more often than max_deliveries (3 in tests) while the
    // dependency is down; every owner finds it down and gives the job up on release.
    let rounds = cfg.worker_runtime().max_deliveries as usize + 2;
    for round in 1..=rounds {
        let running = start(&cfg, probe.clone(), |_| {});
        eventually("the job to be tried", Duration::from_secs(20), || async {
            (probe.unavailable.load(Ordering::SeqCst) >= round).then_some(())
        })
        .await;
        running.stop().await;
    }
    probe.down.store(false, Ordering::SeqCst);
    let running = start(&cfg, probe.clone(), |_| {});
    wait_done(&probe, 1).await;
    running.stop().await;
    let mut con = cfg.redis().await;
    let dead: usize = con.xlen(cfg.keys().dead("probe")).await.unwrap();
    assert_eq!(dead, 0, "it never failed: it waited");
}

#[tokio::test]
async fn a_job_whose_handler_panics_ends_on_the_dead_letter_stream_with_the_reason() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe.clone(), |_| {});
    add(&cfg, "P", &[("name", "bad"), ("panic", "1")]).await;
    add(&cfg, "P", &[("name", "after")]).await;
    wait_done(&probe, 1).await;
    let mut con = cfg.redis().await;
    let dead = read_stream(&mut con, &cfg.keys().dead("probe")).await;
    assert_eq!(dead.len(), 1);
    let reason = String::from_utf8_lossy(&dead[0].1["reason"]).into_owned();
    assert!(
        reason.contains("handler panicked (probe told to panic)")
            && reason.contains("gave up after 3 attempts"),
        "{reason}"
    );
    assert_eq!(dead[0].1["name"], b"bad");
    // A formatted panic message may quote what the job carried: the reason leaves it out.
    add(
        &cfg,
        "Q",
        &[
            ("name", "leaky"),
            ("panic", "data"),
            ("text", "Soy Ana, 4111 1111 1111 1111"),
        ],
    )
    .await;
    add(&cfg, "Q", &[("name", "after leaky")]).await;
    wait_done(&probe, 2).await;
    let dead = read_stream(&mut con, &cfg.keys().dead("probe")).await;
    assert_eq!(dead.len(), 2);
    let reason = String::from_utf8_lossy(&dead[1].1["reason"]).into_owned();
    assert!(
        reason.contains("handler panicked (message withheld") && !reason.contains("Ana"),
        "{reason}"
    );
    assert_eq!(
        probe.done.lock().unwrap()[0].1,
        "after",
        "the conversation goes on after its poison job"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_job_whose_dead_letter_redis_refuses_is_left_pending_not_lost() {
    // A worker whose Redis user may read the dead-letter streams but not write them: every
    // other step works, so only the dead letter's write fails, until the worker stops.
    let mut cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let prefix = cfg.keys().prefix().to_string();
    let user = format!("nodead-{}", uuid::Uuid::new_v4().simple());
    let mut admin = cfg.redis().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">pw")
        .arg(format!("~{prefix}:{{p*"))
        .arg(format!("~{prefix}:{{workers}}*"))
        .arg(format!("%R~{prefix}:{{dead}}*"))
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .unwrap();
    let full_url = cfg.redis_url.clone();
    cfg.redis_url = full_url.replacen("://", &format!("://{user}:pw@"), 1);
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe, |s| s.max_attempts = 1);
    add(&cfg, "D", &[("name", "doomed"), ("panic", "1")]).await;
    let dead = cfg.keys().dead("probe");
    eventually(
        "the dead letter's write refused",
        Duration::from_secs(20),
        || async {
            let log: Vec<Vec<redis::Value>> = redis::cmd("ACL")
                .arg("LOG")
                .query_async(&mut cfg.redis().await)
                .await
                .unwrap();
            let refused = log.iter().any(|entry| {
                format!("{entry:?}").contains(&user) && format!("{entry:?}").contains(&dead)
            });
            refused.then_some(())
        },
    )
    .await;
    running.stop().await;
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    cfg.redis_url = full_url;
    let mut con = cfg.redis().await;
    assert!(read_stream(&mut con, &dead).await.is_empty());
    let keys = cfg.keys();
    let pending: redis::streams::StreamPendingReply =
        con.xpending(keys.inbound(0), STAGE.name).await.unwrap();
    assert_eq!(
        pending.count(),
        1,
        "neither dead-lettered nor acknowledged: the next owner gives up on it again"
    );
}

#[tokio::test]
async fn jobs_in_flight_stay_within_the_bound_and_a_conversation_never_runs_twice_at_once() {
    let cfg = TestConfig {
        partitions: 4,
        ..TestConfig::new().await
    };
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe.clone(), |s| s.max_in_flight = 5);
    for i in 0..60 {
        add(
            &cfg,
            &format!("c{}", i % 12),
            &[("name", &format!("{i}")), ("sleep_ms", "20")],
        )
        .await;
    }
    wait_done(&probe, 60).await;
    assert!(probe.max_in_flight.load(Ordering::SeqCst) <= 5);
    assert!(
        probe.max_in_flight.load(Ordering::SeqCst) >= 2,
        "conversations do run in parallel"
    );
    assert_eq!(probe.overlaps.load(Ordering::SeqCst), 0);
    let mut per: HashMap<String, Vec<usize>> = HashMap::new();
    for (c, n, _) in probe.done.lock().unwrap().iter() {
        per.entry(c.clone()).or_default().push(n.parse().unwrap());
    }
    for (c, seq) in per {
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, sorted, "{c} out of order");
    }
    running.stop().await;
}

#[tokio::test]
async fn a_flood_past_the_held_bound_leaves_places_to_the_other_partitions() {
    // Four jobs at once, sixteen held: a customer's eighteen slow jobs, more than the process
    // holds, then three other customers' on the other partition.
    let cfg = TestConfig {
        partitions: 2,
        ..TestConfig::new().await
    };
    let keys = cfg.keys();
    let flood = "flood";
    let other: Vec<String> = (0..)
        .map(|i| format!("quiet{i}"))
        .filter(|c| keys.partition_of(c) != keys.partition_of(flood))
        .take(3)
        .collect();
    let probe = Arc::new(Probe::default());
    for i in 0..18 {
        add(
            &cfg,
            flood,
            &[("name", &format!("{i}")), ("sleep_ms", "400")],
        )
        .await;
    }
    let running = start(&cfg, probe.clone(), |s| s.max_in_flight = 4);
    eventually("the flood running", Duration::from_secs(10), || async {
        probe.running.lock().unwrap().contains(flood).then_some(())
    })
    .await;
    for c in &other {
        add(&cfg, c, &[("name", "q"), ("sleep_ms", "300")]).await;
    }
    eventually(
        "the quiet customers' jobs",
        Duration::from_secs(20),
        || async {
            let done = probe.done.lock().unwrap();
            (done.iter().filter(|(c, _, _)| c != flood).count() == 3).then_some(())
        },
    )
    .await;
    // The flood holds at most thirteen places (its running job and its lane's cap of twelve), so
    // the other three customers are read together and run beside it. Before, it held every place but the other partition's
    // reader's one, and they ran one after another on it.
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 4);
    wait_done(&probe, 21).await;
    assert_eq!(probe.overlaps.load(Ordering::SeqCst), 0);
    let order: Vec<usize> = probe
        .done
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, _, _)| c == flood)
        .map(|(_, n, _)| n.parse().unwrap())
        .collect();
    assert_eq!(order, (0..18).collect::<Vec<_>>());
    running.stop().await;
}

#[tokio::test]
async fn a_conversation_flooding_the_stage_does_not_hold_back_the_others() {
    // One partition, two jobs at once (eight held): a customer's seven slow jobs, then another
    // customer's.
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let probe = Arc::new(Probe::default());
    for i in 0..7 {
        add(
            &cfg,
            "flood",
            &[("name", &format!("{i}")), ("sleep_ms", "300")],
        )
        .await;
    }
    add(&cfg, "quiet", &[("name", "q")]).await;
    let running = start(&cfg, probe.clone(), |s| s.max_in_flight = 2);
    let flood_done_before_quiet = eventually(
        "the quiet customer's job",
        Duration::from_secs(20),
        || async {
            let done = probe.done.lock().unwrap();
            done.iter()
                .position(|(c, _, _)| c == "quiet")
                .map(|at| done[..at].len())
        },
    )
    .await;
    // Before, the flood's waiting jobs held both places: the quiet job was read only after five
    // of them had run, one at a time.
    assert!(
        flood_done_before_quiet <= 2,
        "{flood_done_before_quiet} of the flood's jobs ran before the quiet customer's"
    );
    wait_done(&probe, 8).await;
    assert!(probe.max_in_flight.load(Ordering::SeqCst) <= 2);
    assert_eq!(probe.overlaps.load(Ordering::SeqCst), 0);
    running.stop().await;
}

#[tokio::test]
async fn delayed_retries_run_within_the_in_flight_bound_too() {
    let cfg = TestConfig {
        partitions: 2,
        ..TestConfig::new().await
    };
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe.clone(), |s| s.max_in_flight = 3);
    // Thirty conversations each park their job once; the retries all fall due together.
    for i in 0..30 {
        add(
            &cfg,
            &format!("r{i}"),
            &[("name", "x"), ("retry", "1"), ("sleep_ms", "40")],
        )
        .await;
    }
    wait_done(&probe, 30).await;
    assert!(
        probe.done.lock().unwrap().iter().all(|(_, _, a)| *a == 1),
        "every job ran from its delayed retry"
    );
    let peak = probe.max_in_flight.load(Ordering::SeqCst);
    assert!(peak <= 3, "{peak} jobs ran at once, the bound is 3");
    running.stop().await;
}

#[tokio::test]
async fn a_consumer_group_lost_with_a_redis_restart_is_recreated() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe.clone(), |_| {});
    add(&cfg, "G", &[("name", "before")]).await;
    wait_done(&probe, 1).await;
    // What a restart without persistence looks like to the worker: the stream and group are gone.
    let mut con = cfg.redis().await;
    let _: () = con.del(cfg.keys().inbound(0)).await.unwrap();
    add(&cfg, "G", &[("name", "after")]).await;
    wait_done(&probe, 2).await;
    running.stop().await;
}

#[tokio::test]
async fn a_lease_shorter_than_the_job_deadline_is_refused() {
    let cfg = TestConfig::new().await;
    let mut s = cfg.worker_runtime();
    s.lease_ttl = s.job_deadline;
    let err = s.validate().unwrap_err().to_string();
    assert!(
        err.contains("WAFLEET_LEASE_TTL_MS") && err.contains("must exceed"),
        "{err}"
    );
    let running = start(&cfg, Arc::new(Probe::default()), |s| {
        s.lease_ttl = s.job_deadline / 2
    });
    assert!(
        running.task.await.unwrap().is_err(),
        "run_stage refuses to start"
    );
}

#[tokio::test]
async fn queue_lag_counts_unread_entries_when_redis_cannot_tell() {
    use wafleet::worker::sampler::stream_figures;
    let cfg = TestConfig::new().await;
    let mut con = cfg.redis().await;
    let stream = format!("{}:lagprobe", cfg.keys().prefix());
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..4 {
        let id: String = con.xadd(&stream, "*", &[("n", n)]).await.unwrap();
        ids.push(id);
    }
    // The group reads two; the second is done and deleted while the first is still running,
    // as a worker does: Redis no longer knows the lag.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::pipe()
        .cmd("XACK")
        .arg(&stream)
        .arg("g")
        .arg(&ids[1])
        .ignore()
        .cmd("XDEL")
        .arg(&stream)
        .arg(&ids[1])
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    let figures = stream_figures(&mut con, &stream, "g").await.unwrap();
    assert_eq!(
        (figures.len, figures.pending, figures.lag),
        (3, 1, 2),
        "{figures:?}"
    );
    assert_eq!(figures.oldest.as_deref(), Some(ids[0].as_str()));
    let _: () = con.del(&stream).await.unwrap();
}

#[tokio::test]
async fn queue_gauges_say_when_they_were_sampled_and_a_failed_sample_is_counted() {
    use wafleet::worker::sampler;
    wafleet::telemetry::metrics_handle();
    let cfg = TestConfig::new().await;
    let render = || wafleet::telemetry::metrics_handle().render();
    let sampled_at = r#"wafleet_queue_sampled_at_seconds{stage="gaugeprobe"}"#;
    let errors = r#"wafleet_queue_sample_errors_total{stage="gaugeprobe"}"#;
    let stage = Stage {
        name: "gaugeprobe",
        source: Source::Inbound,
    };
    let sample_with = |url: String| {
        let keys = cfg.keys();
        async move {
            let pool = wafleet::shared_redis::blocking_pool(&url, 1).unwrap();
            let stop = CancellationToken::new();
            let task = tokio::spawn(sampler::run(
                pool,
                keys,
                vec![stage],
                Duration::from_millis(50),
                stop.clone(),
            ));
            (stop, task)
        }
    };

    // Nothing listens there: the sample fails, visibly, and no time is claimed for it.
    let (stop, task) = sample_with("redis://127.0.0.1:9".into()).await;
    eventually(
        "a failed sample counted",
        Duration::from_secs(20),
        || async { (metric_value(&render(), errors) >= 1.0).then_some(()) },
    )
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(metric_value(&render(), sampled_at), 0.0);

    let before = chrono::Utc::now().timestamp() as f64;
    let (stop, task) = sample_with(cfg.redis_url.clone()).await;
    eventually("a sample's time", Duration::from_secs(20), || async {
        (metric_value(&render(), sampled_at) >= before).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();
}

/// A conversation parked with `jobs` (name, unfinished held runs) in its held list, due now.
async fn park(cfg: &TestConfig, conv: &str, jobs: &[(&str, u64)]) {
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    for (n, (name, runs)) in jobs.iter().enumerate() {
        let job = Job {
            id: format!("{}-0", n + 1),
            partition: 0,
            conv: conv.into(),
            fields: [("conv", conv), ("name", name), ("needs_dependency", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            attempt: 0,
            deliveries: 1,
            unfinished_held_runs: *runs,
        };
        let _: () = con
            .rpush(
                keys.held("probe", 0, conv),
                serde_json::to_string(&job).unwrap(),
            )
            .await
            .unwrap();
    }
    let _: () = con.zadd(keys.delayed("probe", 0), conv, 0).await.unwrap();
}

async fn held_head_runs(cfg: &TestConfig, conv: &str) -> u64 {
    let mut con = cfg.redis().await;
    let head: String = con
        .lindex(cfg.keys().held("probe", 0, conv), 0)
        .await
        .unwrap();
    serde_json::from_str::<Job>(&head)
        .unwrap()
        .unfinished_held_runs
}

#[tokio::test]
async fn a_held_job_counts_its_run_until_it_ends_and_one_that_keeps_killing_workers_is_dead_lettered()
 {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let limit = cfg.worker_runtime().max_deliveries;
    // A run counts while it goes on (a process that dies under it leaves it counted), and a
    // run given up on gracefully gives it back.
    park(&cfg, "A", &[("a1", 0)]).await;
    let probe = Arc::new(Probe::default());
    probe.down.store(true, Ordering::SeqCst);
    let running = start(&cfg, probe.clone(), |_| {});
    eventually("a1 to be tried", Duration::from_secs(20), || async {
        (probe.unavailable.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    assert_eq!(held_head_runs(&cfg, "A").await, 1);
    running.stop().await;
    assert_eq!(held_head_runs(&cfg, "A").await, 0);

    // Runs of b1 died under `limit` workers in turn: it is not run again, and b2 goes on.
    probe.down.store(false, Ordering::SeqCst);
    park(&cfg, "B", &[("b1", limit), ("b2", 0)]).await;
    let running = start(&cfg, probe.clone(), |_| {});
    wait_done(&probe, 2).await;
    running.stop().await;
    let mut names: Vec<String> = probe
        .done
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n, _)| n.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["a1", "b2"]);
    let mut con = cfg.redis().await;
    let dead = read_stream(&mut con, &cfg.keys().dead("probe")).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1["name"], b"b1");
}

#[tokio::test]
async fn entries_a_lost_read_delivered_are_claimed_again_not_left_pending() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    // The worker's blocking reads go through a proxy the test can cut; the rest goes direct.
    let (proxy, probe, running) = reading_through_a_proxy(&cfg, "L").await;

    // The read waiting at Redis takes the next entry, and its answer never arrives.
    proxy.black_hole();
    add(&cfg, "L", &[("name", "lost")]).await;
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    let consumer: String = con.get(keys.lease(STAGE.name, 0)).await.unwrap();
    let stream = keys.inbound(0);
    let pending = |con: &mut redis::aio::MultiplexedConnection| {
        let (stream, consumer) = (stream.clone(), consumer.clone());
        let mut con = con.clone();
        async move {
            let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(STAGE.name)
                .arg("-")
                .arg("+")
                .arg(10)
                .arg(&consumer)
                .query_async(&mut con)
                .await
                .unwrap();
            reply.ids.len()
        }
    };
    if pending(&mut con).await == 0 {
        // No read was waiting at Redis when the path died: deliver it to the worker's consumer
        // as that read would have.
        read_one_as(&mut con, &stream, &consumer).await;
    }
    assert_eq!(
        pending(&mut con).await,
        1,
        "delivered, never seen by the worker"
    );
    // The connection fails; reads work again afterwards.
    proxy.cut();
    proxy.restore();
    wait_done(&probe, 2).await;
    let names: Vec<String> = probe
        .done
        .lock()
        .unwrap()
        .iter()
        .map(|(_, name, _)| name.clone())
        .collect();
    assert_eq!(names, ["before", "lost"]);
    running.stop().await;
}

/// A worker whose blocking stream reads go through a proxy; everything else goes direct. It has
/// done a first job of `conv` ("before"), so it reads.
async fn reading_through_a_proxy(
    cfg: &TestConfig,
    conv: &str,
) -> (wafleet_tests::proxy::Proxy, Arc<Probe>, Running) {
    let proxy = wafleet_tests::proxy::Proxy::in_front_of_redis(&cfg.redis_url).await;
    let probe = Arc::new(Probe::default());
    let stop = CancellationToken::new();
    let rt = StageRuntime {
        stage: STAGE,
        keys: cfg.keys(),
        redis: wafleet::shared_redis::blocking_pool(&proxy.redis_url(), 4).unwrap(),
        shared: wafleet::shared_redis::SharedRedis::new(&cfg.redis_url, Duration::from_secs(2))
            .unwrap(),
        handler: Arc::new(ProbeHandler(probe.clone())),
        settings: cfg.worker_runtime(),
        shutdown: stop.clone(),
    };
    let running = Running {
        stop,
        task: tokio::spawn(worker::run_stage(rt)),
    };
    add(cfg, conv, &[("name", "before")]).await;
    wait_done(&probe, 1).await;
    (proxy, probe, running)
}

/// Delivers the next new entry of `stream` to the probe group's `consumer`, as its read would.
async fn read_one_as(con: &mut redis::aio::MultiplexedConnection, stream: &str, consumer: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(STAGE.name)
        .arg(consumer)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(con)
        .await
        .unwrap();
}

/// The probe group on partition 0's inbound stream (of a one-partition `cfg`; made if missing),
/// with a consumer `name` that has read nothing; the stream's key and a connection.
async fn group_with_consumer(
    cfg: &TestConfig,
    name: &str,
) -> (String, redis::aio::MultiplexedConnection) {
    let stream = cfg.keys().inbound(0);
    let mut con = cfg.redis().await;
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(STAGE.name)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await;
    if let Err(e) = created {
        assert_eq!(e.code(), Some("BUSYGROUP"), "{e}");
    }
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg(STAGE.name)
        .arg(name)
        .query_async(&mut con)
        .await
        .unwrap();
    (stream, con)
}

#[tokio::test]
async fn consumers_of_processes_long_gone_are_deleted_when_a_partition_is_taken_over() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    // A process that started once, read nothing and is gone.
    let (stream, con) = group_with_consumer(&cfg, "gone-1").await;
    let consumers = |con: &redis::aio::MultiplexedConnection| {
        let (mut con, stream) = (con.clone(), stream.clone());
        async move {
            let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(STAGE.name)
                .query_async(&mut con)
                .await
                .unwrap();
            reply.consumers
        }
    };
    // Idle for longer than a lease, as a process gone that long is.
    eventually(
        "the consumer idle past a lease",
        Duration::from_secs(10),
        || async {
            consumers(&con)
                .await
                .iter()
                .any(|c| c.name == "gone-1" && c.idle > 1_500)
                .then_some(())
        },
    )
    .await;
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe.clone(), |s| {
        s.job_deadline = Duration::from_millis(1_000);
        s.lease_ttl = Duration::from_millis(1_500);
    });
    add(&cfg, "C", &[("name", "after")]).await;
    wait_done(&probe, 1).await;
    let names: Vec<String> = consumers(&con).await.into_iter().map(|c| c.name).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_ne!(names[0], "gone-1");
    running.stop().await;
}

/// The names of the probe group's consumers on `stream`.
async fn consumer_names(con: &redis::aio::MultiplexedConnection, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(STAGE.name)
        .query_async(&mut con.clone())
        .await
        .unwrap();
    reply.consumers.into_iter().map(|c| c.name).collect()
}

#[tokio::test]
async fn a_worker_stopped_cleanly_leaves_no_consumer_behind() {
    // Soak: every restart (a deploy, SIGTERM) left each partition's consumer of the stopped
    // process in its group for good, 16 per stream family and restart: the next owner takes the
    // partition at once, while that consumer has been idle for less than a lease.
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let stream = cfg.keys().inbound(0);
    let con = cfg.redis().await;
    let long_lease = |s: &mut worker::WorkerSettings| s.lease_ttl = Duration::from_secs(30);
    let probe = Arc::new(Probe::default());
    let first = start(&cfg, probe.clone(), long_lease);
    add(&cfg, "C", &[("name", "first")]).await;
    wait_done(&probe, 1).await;
    first.stop().await;
    assert_eq!(consumer_names(&con, &stream).await, Vec::<String>::new());
    let second = start(&cfg, probe.clone(), long_lease);
    add(&cfg, "C", &[("name", "second")]).await;
    wait_done(&probe, 2).await;
    assert_eq!(consumer_names(&con, &stream).await.len(), 1);
    second.stop().await;
    assert_eq!(consumer_names(&con, &stream).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_restarted_worker_id_deletes_its_earlier_incarnations_consumer() {
    // A worker with an id killed without a word and started again takes its partitions back at
    // once, while the dead incarnation's consumer has been idle for less than a lease: it stayed.
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    // Another process's consumer, maybe alive, is no business of ours; the dead incarnation
    // had read an entry it never finished.
    let (stream, mut con) = group_with_consumer(&cfg, "other-w@alive").await;
    add(&cfg, "C", &[("name", "left")]).await;
    read_one_as(&mut con, &stream, "probe-w@dead").await;
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe.clone(), |s| {
        s.lease_ttl = Duration::from_secs(30);
        s.worker_id = Some("probe-w".into());
    });
    add(&cfg, "C", &[("name", "after")]).await;
    wait_done(&probe, 2).await;
    let names = consumer_names(&con, &stream).await;
    assert!(!names.iter().any(|n| n == "probe-w@dead"), "{names:?}");
    assert!(names.iter().any(|n| n == "other-w@alive"), "{names:?}");
    assert_eq!(names.len(), 2, "{names:?}");
    running.stop().await;
}

#[tokio::test]
async fn a_consumer_left_on_a_partition_that_keeps_its_owner_is_deleted_all_the_same() {
    // Soak: a worker that gave partitions back (a release before this one deleted its
    // consumers, or a process killed without an id whose partitions were taken just before its
    // consumer had been idle for a lease) left consumers on partitions whose owner never changed
    // again, and only a takeover deleted any.
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let stream = cfg.keys().inbound(0);
    let probe = Arc::new(Probe::default());
    let running = start(&cfg, probe.clone(), |s| {
        s.job_deadline = Duration::from_millis(1_000);
        s.lease_ttl = Duration::from_millis(1_500);
    });
    add(&cfg, "C", &[("name", "owned")]).await;
    wait_done(&probe, 1).await;
    let (_, con) = group_with_consumer(&cfg, "left-behind").await;
    eventually(
        "the consumer left behind deleted",
        Duration::from_secs(20),
        || async {
            let names = consumer_names(&con, &stream).await;
            (names.len() == 1 && names[0] != "left-behind").then_some(())
        },
    )
    .await;
    running.stop().await;
}

/// Records when each call of its handler began: the job's dependency is always down.
#[derive(Default)]
struct Clock(Mutex<Vec<std::time::Instant>>);

struct ClockHandler(Arc<Clock>);

impl Handler for ClockHandler {
    async fn handle(&self, _job: &Job) -> Outcome {
        self.0.0.lock().unwrap().push(std::time::Instant::now());
        Outcome::Unavailable {
            reason: "clock's dependency is down".into(),
        }
    }
}

#[tokio::test]
async fn a_worker_cut_off_from_redis_stops_its_jobs_before_its_lease_can_pass_to_another() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    // Each lease round waits up to a third of the lease for Redis, and rounds come a second
    // apart: with a 3.9-s lease the checks fall 2.3 s and 4.6 s after the last renewal.
    let settings = worker::WorkerSettings {
        lease_ttl: Duration::from_millis(3_900),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(20),
        ..cfg.worker_runtime()
    };
    let process = |url: &str, clock: &Arc<Clock>| {
        let stop = CancellationToken::new();
        let rt = StageRuntime {
            stage: STAGE,
            keys: cfg.keys(),
            redis: wafleet::shared_redis::blocking_pool(url, 4).unwrap(),
            shared: wafleet::shared_redis::SharedRedis::new(url, Duration::from_secs(2)).unwrap(),
            handler: Arc::new(ClockHandler(clock.clone())),
            settings: settings.clone(),
            shutdown: stop.clone(),
        };
        (stop, tokio::spawn(worker::run_stage(rt)))
    };
    // The first process reaches Redis through a proxy the test black-holes.
    let proxy = wafleet_tests::proxy::Proxy::in_front_of_redis(&cfg.redis_url).await;
    let (first, second) = (Arc::new(Clock::default()), Arc::new(Clock::default()));
    let (stop_first, first_task) = process(&proxy.redis_url(), &first);
    add(&cfg, "H", &[("name", "held on")]).await;
    eventually(
        "the first process to run the job",
        Duration::from_secs(20),
        || async { (!first.0.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
    let (stop_second, second_task) = process(&cfg.redis_url, &second);
    proxy.black_hole();
    let taken_over = eventually(
        "the second process to take the job over",
        Duration::from_secs(20),
        || async { second.0.lock().unwrap().first().copied() },
    )
    .await;
    // The second process goes on (and so would the first, were it still running).
    eventually(
        "the second process to retry",
        Duration::from_secs(20),
        || async { (second.0.lock().unwrap().len() >= 10).then_some(()) },
    )
    .await;
    proxy.cut();
    stop_first.cancel();
    first_task.await.unwrap().unwrap();
    let last_of_first = *first.0.lock().unwrap().last().unwrap();
    assert!(
        last_of_first < taken_over,
        "the first process still ran the job {:?} after the second took it over",
        last_of_first - taken_over
    );
    stop_second.cancel();
    second_task.await.unwrap().unwrap();
}

/// The fields of a dead letter of a probe job named `name` (conversation "R") that gave up on
/// `source`.
fn dead_probe_job(source: &str, name: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> =
        vec![("conv".into(), "R".into()), ("name".into(), name.into())];
    fields.extend(
        wafleet::dead_letters::GaveUp {
            reason: "probe gave up",
            stage: STAGE.name,
            source_stream: source,
            source_id: "1-0",
            deliveries: 1,
            attempts: 3,
            dead_at_ms: 1,
        }
        .fields(),
    );
    fields
}

#[tokio::test]
async fn a_dead_letter_replayed_twice_is_put_back_once() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let keys = cfg.keys();
    let mut con = cfg.redis().await;
    let source = keys.inbound(0);
    let fields = dead_probe_job(&source, "replayed");
    let _: String = con.xadd(keys.dead(STAGE.name), "*", &fields).await.unwrap();
    let pg = cfg.pg().await;
    // Two operators replaying at once, or a replay run again after one that was interrupted
    // between its two steps: both hold the dead letter as they read it.
    let letters = wafleet::dead_letters::read(&mut con, &keys, STAGE.name)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    for _ in 0..2 {
        wafleet::dead_letters::replay(
            &mut con,
            &pg,
            &keys,
            STAGE.name,
            &letters[0],
            false,
            Some(wafleet::worker::retention::DEFAULT_RETENTION),
        )
        .await
        .unwrap();
    }
    let back = read_stream(&mut con, &source).await;
    assert_eq!(back.len(), 1, "put back once: {back:?}");
    assert_eq!(back[0].1["name"], b"replayed");
    assert!(!back[0].1.contains_key("reason"));
    let dead: usize = con.xlen(keys.dead(STAGE.name)).await.unwrap();
    assert_eq!(dead, 0);
}

#[tokio::test]
async fn a_stream_read_whose_connection_goes_silent_is_given_up_on() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    // The worker's blocking reads go through a proxy the test black-holes (a failover that moved
    // Redis's address and left the old connections hanging); the rest goes direct.
    let (proxy, probe, running) = reading_through_a_proxy(&cfg, "S").await;
    // Nothing comes back on the connection the read waits on, and no error says so either.
    proxy.black_hole();
    add(&cfg, "S", &[("name", "after")]).await;
    wait_done(&probe, 2).await;
    running.stop().await;
}

/// Moves every expiry under the test's prefix `by` closer, as if that much time had passed:
/// what would have expired by then is deleted.
async fn fast_forward_expiries(cfg: &TestConfig, by: Duration) {
    let mut con = cfg.redis().await;
    let keys: Vec<String> = con
        .keys(format!("{}:*", cfg.keys().prefix()))
        .await
        .unwrap();
    for key in keys {
        let left: i64 = con.pttl(&key).await.unwrap();
        if left < 0 {
            continue;
        }
        let left = left - by.as_millis() as i64;
        if left <= 0 {
            let _: () = con.del(&key).await.unwrap();
        } else {
            let _: () = con.pexpire(&key, left).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_replay_cut_off_before_its_delete_is_not_doubled_while_the_dead_letter_is_kept() {
    let cfg = TestConfig {
        partitions: 1,
        ..TestConfig::new().await
    };
    let keys = cfg.keys();
    let prefix = keys.prefix().to_string();
    let pg = cfg.pg().await;
    let mut con = cfg.redis().await;
    // An operator's replay whose delete never reaches Redis (cut off between its two steps):
    // here a Redis user that may do everything but XDEL.
    let user = format!("noxdel-{}", uuid::Uuid::new_v4().simple());
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">pw")
        .arg(format!("~{prefix}:*"))
        .arg("&*")
        .arg("+@all")
        .arg("-xdel")
        .query_async(&mut con)
        .await
        .unwrap();
    let cut_off = redis::Client::open(cfg.redis_url.replacen("://", &format!("://{user}:pw@"), 1))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    // Dead letters kept 30 days, then kept until deleted by hand: the operator replays again
    // after more than 14 days, while the dead letter is still there.
    for (round, retention, age, later) in [
        (0, Some(30 * day), day, 15 * day),
        (1, None, 100 * day, 400 * day),
    ] {
        let source = keys.inbound(0);
        let _: () = con.del(&source).await.unwrap();
        let fields = dead_probe_job(&source, &format!("replayed {round}"));
        let written = chrono::Utc::now().timestamp_millis() - age.as_millis() as i64;
        let dead = keys.dead(STAGE.name);
        let _: () = con.del(&dead).await.unwrap();
        let _: String = con
            .xadd(&dead, format!("{written}-0"), &fields)
            .await
            .unwrap();
        let letters = wafleet::dead_letters::read(&mut con, &keys, STAGE.name)
            .await
            .unwrap();
        let replay = |mut c: redis::aio::MultiplexedConnection| {
            let (pg, keys, letter) = (&pg, &keys, &letters[0]);
            async move {
                wafleet::dead_letters::replay(
                    &mut c, pg, keys, STAGE.name, letter, false, retention,
                )
                .await
            }
        };
        assert!(replay(cut_off.clone()).await.is_err(), "the delete refused");
        assert_eq!(read_stream(&mut con, &source).await.len(), 1);
        fast_forward_expiries(&cfg, later).await;
        replay(con.clone()).await.unwrap();
        let back = read_stream(&mut con, &source).await;
        assert_eq!(back.len(), 1, "round {round}: put back twice: {back:?}");
        assert_eq!(con.xlen::<_, usize>(&dead).await.unwrap(), 0);
        // Once the dead letter is gone, its mark does not stay for good.
        fast_forward_expiries(&cfg, 2 * day).await;
        let marks: Vec<String> = con.keys(format!("{prefix}:*:seen:*")).await.unwrap();
        assert!(marks.is_empty(), "round {round}: marks left: {marks:?}");
    }
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut con)
        .await
        .unwrap();
}
