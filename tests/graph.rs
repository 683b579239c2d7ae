//! The Graph API client against the simulator: what reaches "Meta", and how every kind of answer
//! (and non-answer) becomes a [`SendResult`].

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::oneshot;
use wafleet::graph::{
    GraphCallError, GraphClient, OutgoingText, Recipient, SendResult, UNPARSED_ERROR_CODE,
};
use wafleet_core::graph_error::{ErrorClass, ThrottleScope};
use wafleet_sim::{Fault, SimConfig, SimState};

const PNID: &str = "106540352242922";
const TOKEN: &str = "token-106";

struct Sim {
    url: String,
    state: SimState,
    _stop: oneshot::Sender<()>,
}

async fn sim() -> Sim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = SimState::new(SimConfig {
        tokens: HashMap::from([(PNID.to_owned(), TOKEN.to_owned())]),
        ..SimConfig::default()
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(wafleet_sim::serve(state.clone(), listener, async move {
        let _ = stopped.await;
    }));
    Sim {
        url,
        state,
        _stop: stop,
    }
}

fn client(url: &str) -> GraphClient {
    GraphClient::new(url, "v23.0", Duration::from_millis(500))
}

fn text(to: Recipient<'static>) -> OutgoingText<'static> {
    OutgoingText {
        phone_number_id: PNID,
        token: TOKEN,
        to,
        body: "Hola, ¿en qué te ayudo?",
        reply_to: None,
        callback_data: None,
        preview_url: false,
        template: None,
        message: None,
    }
}

#[tokio::test]
async fn a_reply_reaches_meta_with_context_callback_data_and_a_plus() {
    let sim = sim().await;
    let m = OutgoingText {
        reply_to: Some("wamid.IN1"),
        callback_data: Some("job-7"),
        preview_url: true,
        ..text(Recipient::Phone("573001234567"))
    };
    let SendResult::Accepted { wamid, wa_id } = client(&sim.url).send_text(&m).await else {
        panic!("accepted");
    };
    assert_eq!(wa_id.as_deref(), Some("573001234567"));
    let sent = sim.state.messages();
    assert_eq!(sent.len(), 1);
    let s = &sent[0];
    assert_eq!(s.wamid, wamid);
    assert_eq!(s.phone_number_id, PNID);
    assert_eq!(s.to.as_deref(), Some("+573001234567"));
    assert_eq!(s.body, "Hola, ¿en qué te ayudo?");
    assert_eq!(s.context_message_id.as_deref(), Some("wamid.IN1"));
    assert_eq!(s.callback_data.as_deref(), Some("job-7"));
    assert!(s.preview_url);
}

#[tokio::test]
async fn meta_names_the_customer_a_rewritten_mobile_reaches() {
    let sim = sim().await;
    let m = text(Recipient::Phone("525512345678"));
    let SendResult::Accepted { wa_id, .. } = client(&sim.url).send_text(&m).await else {
        panic!("accepted");
    };
    assert_eq!(wa_id.as_deref(), Some("5215512345678"));
}

#[tokio::test]
async fn a_business_scoped_user_is_addressed_by_recipient() {
    let sim = sim().await;
    let m = text(Recipient::UserId("US.13491208655302741918"));
    assert!(matches!(
        client(&sim.url).send_text(&m).await,
        SendResult::Accepted { .. }
    ));
    let sent = sim.state.messages();
    assert_eq!(sent[0].to, None);
    assert_eq!(sent[0].recipient, "US.13491208655302741918");
}

#[tokio::test]
async fn graph_errors_are_rejected_with_the_class_of_their_code() {
    let sim = sim().await;
    let graph = client(&sim.url);
    sim.state.add_fault(Fault::code(131056, 1));
    let SendResult::Rejected {
        http_status,
        error,
        class,
    } = graph.send_text(&text(Recipient::Phone("111"))).await
    else {
        panic!("rejected");
    };
    assert_eq!((http_status, error.code), (400, 131056));
    assert!(error.fbtrace_id.is_some());
    assert_eq!(
        class,
        ErrorClass::Throttled {
            scope: ThrottleScope::Recipient
        }
    );

    let wrong_token = OutgoingText {
        token: "expired",
        ..text(Recipient::Phone("111"))
    };
    assert!(matches!(
        graph.send_text(&wrong_token).await,
        SendResult::Rejected {
            http_status: 401,
            class: ErrorClass::Config,
            ..
        }
    ));
}

#[tokio::test]
async fn a_number_meta_does_not_know_is_a_configuration_error() {
    // Meta answers a send from a phone_number_id that does not exist (deleted, mistyped) or
    // that the token may not use with code 100, subcode 33: no message of the channel can go
    // until an operator fixes it, so it is not one message's permanent failure.
    let sim = sim().await;
    let unknown = OutgoingText {
        phone_number_id: "999000111",
        ..text(Recipient::Phone("111"))
    };
    let SendResult::Rejected {
        http_status,
        error,
        class,
    } = client(&sim.url).send_text(&unknown).await
    else {
        panic!("rejected");
    };
    assert_eq!(
        (http_status, error.code, error.subcode),
        (400, 100, Some(33))
    );
    assert_eq!(class, ErrorClass::Config);
    // Code 100 without that subcode stays a bad request: permanent for that message.
    sim.state.add_fault(Fault::code(100, 1));
    assert!(matches!(
        client(&sim.url)
            .send_text(&text(Recipient::Phone("111")))
            .await,
        SendResult::Rejected {
            class: ErrorClass::Permanent,
            ..
        }
    ));
}

#[tokio::test]
async fn an_error_without_a_graph_body_is_classed_by_http_status() {
    let sim = sim().await;
    let graph = client(&sim.url);
    for (status, class) in [(502, ErrorClass::Transient), (404, ErrorClass::Permanent)] {
        sim.state.add_fault(Fault {
            http_status: status,
            raw_body: Some("<html>upstream error</html>".into()),
            ..Fault::code(0, 1)
        });
        let SendResult::Rejected {
            http_status,
            error,
            class: got,
        } = graph.send_text(&text(Recipient::Phone("111"))).await
        else {
            panic!("rejected");
        };
        assert_eq!(
            (http_status, error.code, got),
            (status, UNPARSED_ERROR_CODE, class)
        );
    }
}

#[tokio::test]
async fn an_error_whose_body_breaks_off_is_retried_not_failed() {
    // Meta's answer is a 400 (a throttle, or a permanent error: its code is in the body that
    // never arrived whole).
    let sim = sim().await;
    let graph = client(&sim.url);
    sim.state.add_fault(Fault {
        http_status: 400,
        cut_body: true,
        ..Fault::code(130429, 1)
    });
    let result = graph.send_text(&text(Recipient::Phone("111"))).await;
    let SendResult::Rejected {
        http_status,
        error,
        class,
    } = result
    else {
        panic!("rejected: {result:?}");
    };
    assert_eq!(
        (http_status, error.code, class),
        (400, UNPARSED_ERROR_CODE, ErrorClass::Transient)
    );
    assert!(sim.state.messages().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_refused_connection_is_not_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let result = client(&url).send_text(&text(Recipient::Phone("111"))).await;
    assert!(matches!(result, SendResult::NotSent { .. }), "{result:?}");
}

#[tokio::test]
async fn a_timeout_after_meta_took_the_request_is_ambiguous() {
    let sim = sim().await;
    // Meta accepts and delivers the message, but the answer never comes back.
    sim.state.add_fault(Fault {
        code: None,
        hang: true,
        ..Fault::code(0, 1)
    });
    let result = client(&sim.url)
        .send_text(&text(Recipient::Phone("111")))
        .await;
    assert!(matches!(result, SendResult::Ambiguous { .. }), "{result:?}");
    assert_eq!(
        sim.state.messages().len(),
        1,
        "the customer got it: resending would duplicate"
    );
}

#[tokio::test]
async fn mark_read_and_typing_are_sent_and_failures_say_whether_to_retry() {
    let sim = sim().await;
    let graph = client(&sim.url);
    graph
        .mark_read(PNID, TOKEN, "wamid.IN1", false)
        .await
        .unwrap();
    graph
        .mark_read(PNID, TOKEN, "wamid.IN2", true)
        .await
        .unwrap();
    let reads: Vec<_> = sim
        .state
        .reads()
        .into_iter()
        .map(|r| (r.message_id, r.typing))
        .collect();
    assert_eq!(
        reads,
        [
            ("wamid.IN1".to_owned(), false),
            ("wamid.IN2".to_owned(), true)
        ]
    );

    let error = graph
        .mark_read(PNID, "expired", "wamid.IN3", true)
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        GraphCallError::Rejected {
            class: ErrorClass::Config,
            ..
        }
    ));
    assert!(!error.is_retryable());
    assert!(!error.to_string().contains("expired"), "no token in errors");
}

#[tokio::test]
async fn a_named_or_paused_template_is_read_with_its_format_and_status() {
    let sim = sim().await;
    let graph = client(&sim.url);
    let read = |name: &'static str| {
        let graph = graph.clone();
        async move {
            graph
                .template_text(TOKEN, "102290129340398", name, "es")
                .await
                .unwrap()
                .expect("the account lists it")
        }
    };
    let pickup = read("order_pickup").await;
    assert!(pickup.named);
    assert_eq!(pickup.header.as_deref(), Some("Pedido {{order_id}} listo"));
    assert_eq!(pickup.status.as_deref(), Some("APPROVED"));
    // Meta lists a paused template with its status: it is read, not taken for one Meta lacks.
    sim.state
        .set_template_status("order_delayed", "es", "PAUSED");
    assert_eq!(
        read("order_delayed").await.status.as_deref(),
        Some("PAUSED")
    );
    sim.state
        .set_template_status("order_delayed", "es", "APPROVED");
    assert_eq!(
        read("order_delayed").await.status.as_deref(),
        Some("APPROVED")
    );
}

#[tokio::test]
async fn a_templates_wording_is_read_from_the_business_account() {
    let sim = sim().await;
    let graph = client(&sim.url);
    let found = graph
        .template_text(TOKEN, "102290129340398", "order_shipped", "es")
        .await
        .unwrap()
        .expect("the account has it");
    assert_eq!(found.header.as_deref(), Some("Pedido en camino"));
    assert!(
        found
            .body
            .unwrap()
            .contains("Tu pedido {{1}} ya va en camino")
    );
    assert_eq!(found.footer.as_deref(), Some("Tienda Sol"));
    // Another language of it, a name Meta matches only in part, a name it does not have.
    let english = graph
        .template_text(TOKEN, "102290129340398", "order_shipped", "en_us")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(english.footer, None);
    // A document header and buttons, a URL one ending in a parameter.
    let invoice = graph
        .template_text(TOKEN, "102290129340398", "order_invoice", "es")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(invoice.header_format.as_deref(), Some("DOCUMENT"));
    assert_eq!(
        (invoice.header, found.header_format.as_deref()),
        (None, Some("TEXT"))
    );
    let buttons: Vec<(&str, &str, Option<&str>)> = invoice
        .buttons
        .iter()
        .map(|b| (b.kind.as_str(), b.text.as_str(), b.url.as_deref()))
        .collect();
    assert_eq!(
        buttons,
        [
            (
                "URL",
                "Seguir pedido",
                Some("https://shop.example/track/{{1}}")
            ),
            ("QUICK_REPLY", "Hablar con alguien", None),
        ]
    );
    assert!(!invoice.named);
    for (name, language) in [("order", "es"), ("order_shipped", "pt_BR"), ("nope", "es")] {
        assert_eq!(
            graph
                .template_text(TOKEN, "102290129340398", name, language)
                .await
                .unwrap(),
            None,
            "{name} {language}"
        );
    }
    // A wrong token is Meta's refusal; an id that would change the path is never sent.
    assert!(matches!(
        graph.template_text("wrong", "102290129340398", "order_shipped", "es").await,
        Err(GraphCallError::Rejected { error, .. }) if error.code == 190
    ));
    assert!(matches!(
        graph
            .template_text(TOKEN, "1/../2", "order_shipped", "es")
            .await,
        Err(GraphCallError::Transport {
            maybe_sent: false,
            ..
        })
    ));
}
