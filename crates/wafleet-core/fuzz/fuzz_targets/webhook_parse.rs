//! Arbitrary bytes into the webhook parser and the signature check: neither may panic, and every
//! update parsed must serialise and derive its keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wafleet_core::signature::{AppSecret, verify};
use wafleet_core::webhook::parse;

fuzz_target!(|data: &[u8]| {
    let secrets = [AppSecret::new(b"fuzz")];
    let _ = verify(data, Some(data), &secrets);
    if let Ok(parsed) = parse(data) {
        for update in &parsed.updates {
            let _ = update.dedup_key();
            let _ = update.conversation_key();
            serde_json::to_vec(update).expect("updates serialise");
        }
    }
});
