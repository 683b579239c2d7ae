//! Rough timing of the handover matcher, without criterion: how long `find` takes on messages
//! without a phrase (nearly all of them), with one, and with a negated one, and the matcher's
//! heap. For before/after comparisons on one machine, not a benchmark to keep figures from:
//!
//! ```text
//! cargo run --release -p wafleet-core --example handover_timing
//! ```

use std::hint::black_box;
use std::time::Instant;

use wafleet_core::handover::HandoverMatcher;

fn main() {
    let matcher = HandoverMatcher::default();
    let custom = HandoverMatcher::new(&["asesor", "humano", "human", "atendente"]);
    let long = "Hola, buenas tardes. Quería preguntar por el pedido que hice la semana pasada, \
                el número 48213, porque todavía no me llega y en la página dice que ya salió. \
                ¿Me pueden decir cuándo llega a Medellín? Gracias. "
        .repeat(5);
    let groups: [(&str, &HandoverMatcher, Vec<&str>); 5] = [
        (
            "no phrase, short",
            &matcher,
            vec![
                "¿Cuál es el horario de atención?",
                "What are your opening hours?",
                "Qual o prazo de entrega para São Paulo?",
                "no me llega el código, ayuda",
            ],
        ),
        ("no phrase, 1 KB", &matcher, vec![long.as_str()]),
        (
            "phrase",
            &matcher,
            vec![
                "Quiero hablar con un humano por favor",
                "Can I talk to a human?",
                "no funciona el pago. hablar con un asesor",
            ],
        ),
        (
            "negated phrase",
            &matcher,
            vec![
                "no quiero hablar con un humano, solo el precio",
                "I don't want to talk to a human",
                "não preciso falar com um atendente",
            ],
        ),
        (
            "negated, custom",
            &custom,
            vec!["no necesito un asesor, ¿cuánto cuesta?"],
        ),
    ];
    const ROUNDS: usize = 200_000;
    for (name, matcher, texts) in &groups {
        let start = Instant::now();
        let mut found = 0usize;
        for _ in 0..ROUNDS {
            for text in texts {
                found += usize::from(black_box(matcher).find(black_box(text)).is_some());
            }
        }
        let per = start.elapsed().as_nanos() as f64 / (ROUNDS * texts.len()) as f64;
        println!(
            "{name:<18} {per:>8.0} ns/message  ({} of {} found)",
            found / ROUNDS,
            texts.len()
        );
    }
    println!(
        "memory: default {} B, custom {} B",
        matcher.memory_usage(),
        custom.memory_usage()
    );
}
