//! The loop of `wafleet-loadgen run`.
//!
//! `C` workers, each with its own keep-alive HTTP/1.1 connection (a bare hyper connection: no
//! pool, so what is measured is the server plus one socket hop), send one signed webhook, wait
//! for the whole answer, and send the next. A closed loop never queues work the server has not
//! taken, so latencies are the server's, and throughput is what it sustains at `C` in flight.
//!
//! With a `rate`, request `k` (counted over all workers) leaves no earlier than `k / rate`
//! seconds after the start: a steady arrival rate, as Meta delivers to a number, for measuring
//! latency below capacity. The workers still bound what is in flight; when the server falls
//! behind, requests leave late rather than pile up.
//!
//! Bounds, so a mistaken command line cannot turn into a flood: the target must be a loopback
//! address, the run stops by itself at `warm-up + duration` (each capped), after `max_requests`,
//! and every request has a timeout. Requests that start during the warm-up are sent and counted
//! in the totals but not in the latency histogram nor the throughput.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use crate::body::BodyFactory;

/// Longest measured run and warm-up accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
pub const MAX_WARMUP: Duration = Duration::from_secs(120);
pub const MAX_CONCURRENCY: usize = 1024;
/// Most slices a run is cut into (`--rounds`).
pub const MAX_ROUNDS: u32 = 60;

/// Where requests go: a loopback address only.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub authority: String,
    pub path: String,
}

impl Target {
    /// Parses `http://127.0.0.1:PORT/path` (or `localhost`, `[::1]`); anything not on loopback
    /// is refused.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("--url {url:?}"))?;
        ensure!(
            uri.scheme_str() == Some("http"),
            "--url must be http://, got {url:?}"
        );
        let authority = uri
            .authority()
            .with_context(|| format!("--url {url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            Ipv4Addr::LOCALHOST.into()
        } else {
            host.parse()
                .with_context(|| format!("--url host {host:?} must be a loopback IP"))?
        };
        if !ip.is_loopback() {
            bail!(
                "--url must target loopback (127.0.0.1), got {ip}: this tool only loads a local server"
            );
        }
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            addr: SocketAddr::new(ip, authority.port_u16().unwrap_or(80)),
            authority: authority.as_str().to_owned(),
            path,
        })
    }
}

/// One run's parameters, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests: u64,
    pub timeout: Duration,
    /// Requests per second over all workers; `None` sends as fast as answers come back.
    pub rate: Option<f64>,
}

impl Plan {
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=MAX_CONCURRENCY).contains(&self.concurrency),
            "--concurrency must be 1..={MAX_CONCURRENCY}"
        );
        ensure!(
            !self.duration.is_zero() && self.duration <= MAX_DURATION,
            "--duration must be 1..={} s",
            MAX_DURATION.as_secs()
        );
        ensure!(
            self.warmup <= MAX_WARMUP,
            "--warmup must be at most {} s",
            MAX_WARMUP.as_secs()
        );
        ensure!(self.max_requests > 0, "--max-requests must be positive");
        ensure!(!self.timeout.is_zero(), "--timeout-ms must be positive");
        ensure!(
            self.rate.is_none_or(|r| r.is_finite() && r > 0.0),
            "--rate must be positive"
        );
        Ok(())
    }
}

/// What a run measured.
pub struct Report {
    /// Latencies of the 200 answers to requests started after the warm-up, in microseconds.
    pub latency_us: Histogram<u64>,
    /// 200 answers to requests started after the warm-up.
    pub measured_ok: u64,
    /// Requests started after the warm-up, whatever their outcome.
    pub measured: u64,
    /// Every request sent, warm-up included.
    pub sent: u64,
    /// Every 200 answer, warm-up included: what ingest must have put on its streams.
    pub ok_total: u64,
    /// Failures by kind (`status_503`, `timeout`, `connect`, …), warm-up included.
    pub errors: BTreeMap<String, u64>,
    /// From the end of the warm-up to the last answer.
    pub window: Duration,
    /// CPU time this process used during the run (Linux only), to tell what the load generator
    /// itself costs per request on a machine it shares with the server.
    pub own_cpu: Option<Duration>,
}

impl Report {
    /// Adds what another worker, or a later slice of the same target's load (`--rounds`), saw:
    /// its answers, its measured window and its CPU time (unknown if either's is).
    pub fn absorb(&mut self, slice: Report) {
        self.latency_us.add(&slice.latency_us).expect("same bounds");
        self.measured_ok += slice.measured_ok;
        self.measured += slice.measured;
        self.sent += slice.sent;
        self.ok_total += slice.ok_total;
        for (kind, n) in slice.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.window += slice.window;
        self.own_cpu = match (self.own_cpu, slice.own_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }

    pub fn rps(&self) -> f64 {
        self.measured_ok as f64 / self.window.as_secs_f64().max(1e-9)
    }
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// State every worker reads.
struct Shared {
    factory: BodyFactory,
    plan: Plan,
    start: Instant,
    measure_from: Instant,
    stop_at: Instant,
    /// Requests (and connection attempts) claimed so far, against `max_requests`.
    claimed: AtomicU64,
}

struct WorkerReport {
    latency_us: Histogram<u64>,
    measured_ok: u64,
    measured: u64,
    sent: u64,
    ok_total: u64,
    errors: BTreeMap<String, u64>,
    last_answer: Instant,
}

fn error(errors: &mut BTreeMap<String, u64>, kind: &str) {
    *errors.entry(kind.to_owned()).or_default() += 1;
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

/// Runs the plan to its end and merges what the workers saw.
pub async fn run(plan: Plan, factory: BodyFactory) -> anyhow::Result<Report> {
    plan.check()?;
    let cpu_before = own_cpu_time();
    let start = Instant::now();
    let shared = Arc::new(Shared {
        factory,
        start,
        measure_from: start + plan.warmup,
        stop_at: start + plan.warmup + plan.duration,
        claimed: AtomicU64::new(0),
        plan,
    });
    let workers: Vec<_> = (0..shared.plan.concurrency)
        .map(|id| tokio::spawn(worker(id as u32, shared.clone())))
        .collect();

    let mut report = Report {
        latency_us: histogram(),
        measured_ok: 0,
        measured: 0,
        sent: 0,
        ok_total: 0,
        errors: BTreeMap::new(),
        window: Duration::ZERO,
        own_cpu: None,
    };
    let mut last_answer = shared.measure_from;
    for w in workers {
        let w = w.await.context("a load worker panicked")?;
        last_answer = last_answer.max(w.last_answer);
        report.absorb(Report {
            latency_us: w.latency_us,
            measured_ok: w.measured_ok,
            measured: w.measured,
            sent: w.sent,
            ok_total: w.ok_total,
            errors: w.errors,
            window: Duration::ZERO,
            own_cpu: None,
        });
    }
    report.window = last_answer - shared.measure_from;
    report.own_cpu = own_cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    Ok(report)
}

async fn worker(id: u32, shared: Arc<Shared>) -> WorkerReport {
    let mut r = WorkerReport {
        latency_us: histogram(),
        measured_ok: 0,
        measured: 0,
        sent: 0,
        ok_total: 0,
        errors: BTreeMap::new(),
        last_answer: Instant::now(),
    };
    let plan = &shared.plan;
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    let mut seq = 0u64;
    loop {
        let k = shared.claimed.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= shared.stop_at || k >= plan.max_requests {
            break;
        }
        if let Some(rate) = plan.rate {
            let due = shared.start + Duration::from_secs_f64(k as f64 / rate);
            if due >= shared.stop_at {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let sender = match conn.as_mut() {
            Some(sender) => sender,
            None => match tokio::time::timeout(plan.timeout, connect(plan.target.addr)).await {
                Ok(Ok(sender)) => conn.insert(sender),
                Ok(Err(_)) | Err(_) => {
                    error(&mut r.errors, "connect");
                    // Back off so a dead server is not hammered with SYNs.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };

        // Built before the clock starts: only the exchange is timed.
        let signed = shared.factory.signed(id, seq);
        seq += 1;
        let request = Request::post(plan.target.path.as_str())
            .header(HOST, plan.target.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "facebookexternalua")
            .header("x-hub-signature-256", signed.signature)
            .body(Full::new(signed.body))
            .expect("a request from valid parts");

        let started = Instant::now();
        let outcome = tokio::time::timeout(plan.timeout, exchange(sender, request)).await;
        let answered = Instant::now();
        r.sent += 1;
        r.last_answer = answered;
        let measured = started >= shared.measure_from;
        r.measured += u64::from(measured);
        match outcome {
            Ok(Ok(StatusCode::OK)) => {
                r.ok_total += 1;
                if measured {
                    r.measured_ok += 1;
                    let us = (answered - started).as_micros().max(1) as u64;
                    r.latency_us.saturating_record(us);
                }
            }
            Ok(Ok(status)) => error(&mut r.errors, &format!("status_{}", status.as_u16())),
            Ok(Err(e)) => {
                error(&mut r.errors, transport_kind(&e));
                conn = None;
            }
            Err(_) => {
                error(&mut r.errors, "timeout");
                conn = None;
            }
        }
    }
    r
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the socket; ends when the sender is dropped or the server closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request and its whole answer, so the connection is free for the next.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<StatusCode, hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (clock ticks of
/// 1/100 s, the fixed `USER_HZ` of Linux's /proc interfaces).
fn own_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name, which may itself hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11); // field 14 (utime) is the 12th after `)`
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn transport_kind(e: &hyper::Error) -> &'static str {
    if e.is_incomplete_message() {
        "incomplete_answer"
    } else if e.is_closed() || e.is_canceled() {
        "connection_closed"
    } else if e.is_parse() {
        "bad_answer"
    } else {
        "transport"
    }
}

/// The human-readable block and the machine-readable `RESULT` line.
/// `slices`: how many slices the run was cut into and the warm-up of each after the first
/// (`--rounds`), or `None` for one run.
pub fn render(
    label: &str,
    plan: &Plan,
    slices: Option<(u32, Duration)>,
    report: &Report,
) -> String {
    let errors = if report.errors.is_empty() {
        "0".to_owned()
    } else {
        let kinds: Vec<String> = report
            .errors
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        format!("{} ({})", report.error_count(), kinds.join(" "))
    };
    let h = &report.latency_us;
    format!(
        "== {label}: {c} connections, {d} s measured{slices} after {w} s warm-up, http://{a}{p}\n\
         requests    {measured} measured ({ok} answered 200); {sent} sent in all, {ok_total} answered 200\n\
         throughput  {rps:.1} req/s\n\
         latency     p50 {p50:.3} ms   p99 {p99:.3} ms   p99.9 {p999:.3} ms   max {max:.3} ms\n\
         errors      {errors}\n\
         RESULT label={label} rps={rps:.1} p50_ms={p50:.3} p99_ms={p99:.3} p999_ms={p999:.3} errors={n_err} requests={measured} sent={sent} ok_total={ok_total} client_cpu_us={client_cpu:.1}\n",
        c = plan.concurrency,
        d = plan.duration.as_secs_f64() * f64::from(slices.map_or(1, |(n, _)| n)),
        slices = slices.map_or(String::new(), |(n, w)| format!(
            " in {n} slices (each later one after {} s of its own warm-up)",
            w.as_secs_f64()
        )),
        w = plan.warmup.as_secs_f64(),
        a = plan.target.addr,
        p = plan.target.path,
        measured = report.measured,
        ok = report.measured_ok,
        sent = report.sent,
        ok_total = report.ok_total,
        rps = report.rps(),
        p50 = report.quantile_ms(0.5),
        p99 = report.quantile_ms(0.99),
        p999 = report.quantile_ms(0.999),
        max = h.max() as f64 / 1000.0,
        n_err = report.error_count(),
        // Per request sent, warm-up included (the CPU time covers the whole run); -1 if unknown.
        client_cpu = report.own_cpu.map_or(-1.0, |cpu| {
            cpu.as_secs_f64() * 1e6 / report.sent.max(1) as f64
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080/webhooks/whatsapp",
            "http://localhost:9/x",
            "http://[::1]:8080/",
            "http://127.0.0.2:1",
        ] {
            let t = Target::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(t.addr.ip().is_loopback());
        }
        for bad in [
            "http://10.0.0.1:8080/",
            "http://example.com/",
            "https://127.0.0.1/",
            "http://0.0.0.0:80/",
            "127.0.0.1:80",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
        let t = Target::parse("http://127.0.0.1:8080/webhooks/whatsapp").unwrap();
        assert_eq!(t.path, "/webhooks/whatsapp");
        assert_eq!(t.authority, "127.0.0.1:8080");
    }

    #[test]
    fn slices_of_one_target_add_up_to_its_report() {
        let slice = |latency_us: u64, ok: u64, secs: u64, errors: &[(&str, u64)]| {
            let mut h = histogram();
            h.record_n(latency_us, ok).unwrap();
            Report {
                latency_us: h,
                measured_ok: ok,
                measured: ok + errors.iter().map(|(_, n)| n).sum::<u64>(),
                sent: ok * 2,
                ok_total: ok * 2,
                errors: errors.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                window: Duration::from_secs(secs),
                own_cpu: Some(Duration::from_millis(100 * secs)),
            }
        };
        // A fast slice and a slow one: 3,000 answers in 5 s, then 1,000 in 5 s.
        let mut report = slice(500, 3_000, 5, &[("timeout", 1)]);
        report.absorb(slice(4_000, 1_000, 5, &[("timeout", 2), ("status_503", 1)]));
        assert_eq!(
            (
                report.measured_ok,
                report.measured,
                report.sent,
                report.ok_total
            ),
            (4_000, 4_004, 8_000, 8_000)
        );
        assert_eq!(report.window, Duration::from_secs(10));
        assert!((report.rps() - 400.0).abs() < 1e-9, "{}", report.rps());
        assert_eq!(report.errors["timeout"], 3);
        assert_eq!(report.error_count(), 4);
        assert_eq!(report.own_cpu, Some(Duration::from_secs(1)));
        // Percentiles over every answer: three quarters fast, the slow quarter in the tail.
        assert!((report.quantile_ms(0.5) - 0.5).abs() < 0.01);
        assert!((report.quantile_ms(0.99) - 4.0).abs() < 0.01);
        let mut unknown = slice(500, 1, 1, &[]);
        unknown.own_cpu = None;
        report.absorb(unknown);
        assert_eq!(
            report.own_cpu, None,
            "a slice without its CPU time leaves the total unknown"
        );
    }

    #[test]
    fn plans_are_bounded() {
        let plan = Plan {
            target: Target::parse("http://127.0.0.1:1/").unwrap(),
            concurrency: 32,
            warmup: Duration::from_secs(5),
            duration: Duration::from_secs(15),
            max_requests: 1000,
            timeout: Duration::from_secs(10),
            rate: None,
        };
        assert!(plan.check().is_ok());
        let bad = [
            Plan {
                concurrency: 0,
                ..plan.clone()
            },
            Plan {
                concurrency: MAX_CONCURRENCY + 1,
                ..plan.clone()
            },
            Plan {
                duration: Duration::ZERO,
                ..plan.clone()
            },
            Plan {
                duration: MAX_DURATION + Duration::from_secs(1),
                ..plan.clone()
            },
            Plan {
                warmup: MAX_WARMUP + Duration::from_secs(1),
                ..plan.clone()
            },
            Plan {
                max_requests: 0,
                ..plan.clone()
            },
            Plan {
                rate: Some(0.0),
                ..plan.clone()
            },
        ];
        for p in bad {
            assert!(p.check().is_err(), "{p:?}");
        }
    }
}
