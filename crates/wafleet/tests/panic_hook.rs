//! The services' panic hook. A test binary of its own: the hook, the log subscriber and the
//! metrics recorder are all process-wide.

use wafleet::telemetry;

const CUSTOMER: &str = "Soy Ana Pérez, llámame al 3001234567, gracias señor";

#[test]
fn panics_are_logged_and_reported_by_where_they_happened_never_by_the_data_they_quote() {
    let logs = telemetry::CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let metrics = telemetry::metrics_handle();
    telemetry::install_panic_hook();

    // std's string-slicing panic quotes the whole string: cut inside the two bytes of "ñ".
    let text = std::hint::black_box(CUSTOMER.to_string());
    let cut = text.find('ñ').unwrap() + 1;
    let line = line!() + 1;
    let payload = std::panic::catch_unwind(|| text[..cut].len()).unwrap_err();
    let said = telemetry::panic_text(&*payload);
    assert!(
        said.starts_with(&format!("panicked at {}:{line}:", file!()))
            && said.ends_with(" (message withheld: it may quote the data being handled)"),
        "{said}"
    );
    let logged = logs.text();
    assert!(
        logged.contains("panicked") && logged.contains(&format!("{}:{line}", file!())),
        "{logged}"
    );
    for private in ["Ana", "3001234567", "señor"] {
        assert!(!logged.contains(private), "{private} logged: {logged}");
    }

    // A literal of our own code is safe to show.
    let payload = std::panic::catch_unwind(|| panic!("a literal of ours")).unwrap_err();
    assert!(
        telemetry::panic_text(&*payload).ends_with(" (a literal of ours)"),
        "{}",
        telemetry::panic_text(&*payload)
    );

    // A task joined on another thread: tokio's JoinError would print the message.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let err = rt
        .block_on(async {
            let task = tokio::spawn(async move {
                let text = std::hint::black_box(CUSTOMER.to_string());
                panic!("could not handle {text}");
            });
            telemetry::joined(task.await)
        })
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "a task panicked (message withheld: it may quote the data being handled)"
    );
    let logged = logs.text();
    assert!(!logged.contains("Ana"), "{logged}");
    assert_eq!(logged.matches("panicked").count(), 3, "{logged}");
    assert!(
        metrics.render().contains("wafleet_panics_total 3"),
        "{}",
        metrics.render()
    );
}
