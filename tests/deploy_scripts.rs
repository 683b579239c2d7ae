//! `deploy/services.sh`, the script every recipe starts the services with, run from a copy in a
//! checkout path holding a space, a quote and a `$` (as a user's clone may): what it prints for
//! `eval`, what it says when nothing runs, and how it refuses a port another program holds. It
//! never starts a server here, and never touches the checkout's own services or ports. And
//! `deploy/run.sh`, as far as it goes before building, with a stand-in for `services.sh`: which
//! processes an earlier run left behind it stops.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, IntoConnectionInfo};

/// A throwaway checkout holding only `deploy/services.sh`, deleted on drop.
struct Checkout(PathBuf);

impl Checkout {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "wafleet deploy 'it's' $HOME-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(root.join("deploy")).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/services.sh");
        std::fs::copy(&script, root.join("deploy/services.sh")).unwrap();
        Self(root)
    }

    /// `deploy/services.sh ARGS` with the given ports, from another working directory.
    fn services(&self, redis_port: u16, pg_port: u16, args: &[&str]) -> Output {
        Command::new(self.0.join("deploy/services.sh"))
            .args(args)
            .current_dir("/")
            .env("WAFLEET_REDIS_PORT", redis_port.to_string())
            .env("WAFLEET_PG_PORT", pg_port.to_string())
            .output()
            .unwrap()
    }
}

impl Checkout {
    /// Adds `deploy/run.sh`, with a `services.sh` that starts nothing and prints no variables.
    fn with_run_script(self) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/run.sh");
        std::fs::copy(&script, self.0.join("deploy/run.sh")).unwrap();
        std::fs::write(
            self.0.join("deploy/services.sh"),
            "#!/usr/bin/env bash\nexit 0\n",
        )
        .unwrap();
        std::fs::create_dir_all(self.0.join(".wafleet")).unwrap();
        self
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn env_lines_evaluate_to_the_urls_whatever_the_checkout_path_holds() {
    let checkout = Checkout::new();
    // REDIS_UNIX_URL is printed only when the socket exists: stand one in for Redis's.
    let socket = checkout.0.join(".wafleet/redis/redis.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let _listener = UnixListener::bind(&socket).unwrap();

    let script = checkout.0.join("deploy/services.sh");
    let out = Command::new("bash")
        .args([
            "-euc",
            r#"eval "$("$0" env)"; printf '%s\n' "$REDIS_URL" "$REDIS_UNIX_URL" "$DATABASE_URL""#,
        ])
        .arg(&script)
        .env("WAFLEET_REDIS_PORT", "6311")
        .env("WAFLEET_PG_PORT", "5411")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], "redis://127.0.0.1:6311");
    assert_eq!(
        lines[2],
        "postgres://wafleet:wafleet@127.0.0.1:5411/wafleet"
    );
    // The socket URL names the socket, as the Redis client reads it.
    let info = lines[1].into_connection_info().unwrap();
    assert_eq!(info.addr, ConnectionAddr::Unix(socket));
}

#[test]
fn status_and_down_of_a_checkout_never_set_up_say_stopped() {
    let checkout = Checkout::new();
    let status = checkout.services(6312, 5412, &["status"]);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status.stderr));
    let stdout = text(&status.stdout);
    assert!(stdout.contains("redis:    stopped  (port 6312"), "{stdout}");
    assert!(
        stdout.contains("postgres: stopped  (not initialised yet, port 5412)"),
        "{stdout}"
    );

    let down = checkout.services(6312, 5412, &["down"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    let stderr = text(&down.stderr);
    assert!(stderr.contains("redis not running"), "{stderr}");
    assert!(stderr.contains("postgres not running"), "{stderr}");
}

#[test]
fn a_port_held_by_a_program_that_never_answers_is_refused_naming_the_variable() {
    // The script installs missing servers with apt; the suite runs after `deploy/services.sh up`.
    for bin in ["redis-server", "redis-cli"] {
        let found = Command::new("bash")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{bin} not installed: run the suite through deploy/just test"
        );
    }
    // Accepts connections (the kernel completes them) and never answers.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let checkout = Checkout::new();
    let started = Instant::now();
    let out = checkout.services(port, port ^ 1, &["redis-start"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "127.0.0.1:{port} is already in use by another program"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("set WAFLEET_REDIS_PORT to a free port"),
        "{stderr}"
    );
    assert!(!checkout.0.join(".wafleet/redis/redis.pid").exists());
}

/// A `sleep` started in `dir`, reaped by a thread of its own as soon as it ends (a zombie would
/// still answer `kill -0`), its exit status sent on the receiver.
fn sleeper_in(dir: &Path) -> (u32, mpsc::Receiver<ExitStatus>) {
    let mut child = Command::new("sleep")
        .arg("300")
        .current_dir(dir)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait().unwrap());
    });
    (pid, rx)
}

#[test]
fn a_run_stops_what_its_own_earlier_run_left_behind_never_another_checkouts() {
    // The checkout's own left-over (its earlier run was killed with SIGKILL) and the running
    // demo of the checkout it was copied from, listed in the copied `.wafleet/run.pids`: both run
    // the same binary (a shared CARGO_TARGET_DIR, or the copy's pids file naming the original's
    // binaries), but only one was started from this checkout.
    let original = Checkout::new();
    let copy = Checkout::new().with_run_script();
    let (ours, ours_ended) = sleeper_in(&copy.0);
    let (theirs, theirs_ended) = sleeper_in(&original.0);
    let exe = std::fs::read_link(format!("/proc/{ours}/exe")).unwrap();
    std::fs::write(
        copy.0.join(".wafleet/run.pids"),
        format!("{ours} {}\n{theirs} {}\n", exe.display(), exe.display()),
    )
    .unwrap();

    // It goes no further than the build (no Cargo.toml here) or a port the machine holds.
    let out = Command::new(copy.0.join("deploy/run.sh"))
        .current_dir("/")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");

    let ended = ours_ended
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("the checkout's own left-over still runs: {stderr}"));
    assert_eq!(ended.signal(), Some(15), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "stopping sleep (pid {ours}), left running by an earlier run"
        )),
        "{stderr}"
    );
    let survived = theirs_ended.try_recv().is_err();
    let _ = Command::new("kill")
        .arg(theirs.to_string())
        .stderr(Stdio::null())
        .status();
    assert!(
        survived,
        "the original checkout's process was stopped: {stderr}"
    );
    assert!(!stderr.contains(&format!("(pid {theirs})")), "{stderr}");
}
