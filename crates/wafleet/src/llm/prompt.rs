//! The system prompt: the built-in one, or the channel's own. A channel's own prompt that does
//! not mention [`super::HANDOVER_MARKER`] gets the built-in handover rules appended, since
//! [`super::reply_with_fallback`] relies on the marker: a shop that writes its prompt must not
//! lose the model's handover without noticing.

/// A multilingual customer-support prompt for WhatsApp.
///
/// It tells the model to answer in the customer's language, briefly, never to ask for card numbers
/// or identity documents, and to write exactly [`super::HANDOVER_MARKER`] (optionally followed by a
/// short message for the customer) when a person must take over. The marker is stripped before the
/// customer sees the text and sets [`super::Reply::wants_human`].
pub fn default_system_prompt() -> String {
    format!("{PROMPT}{HANDOVER_RULES}")
}

/// The prompt for a channel: its own (`custom`), with the handover rules appended when it does
/// not mention the marker itself, or the default.
pub fn system_prompt(custom: Option<&str>) -> String {
    match custom {
        Some(own) if own.contains(super::HANDOVER_MARKER) => own.to_string(),
        Some(own) => format!("{}\n\n{HANDOVER_RULES}", own.trim_end()),
        None => default_system_prompt(),
    }
}

/// The system prompt with the business's knowledge-base entries that match the customer's
/// message (title, body), best first: the facts the built-in prompt tells the model to stick to.
pub fn with_knowledge(system: String, entries: &[(String, String)]) -> String {
    if entries.is_empty() {
        return system;
    }
    let mut out = system;
    out.push_str(
        "\n\nReference information from the business (use it when it answers the customer's \
         question; it is the only source of facts about the business beyond these instructions):\n",
    );
    for (title, body) in entries {
        out.push_str(&format!("\n### {}\n{}\n", title.trim(), body.trim()));
    }
    out
}

/// The system prompt with what the business wrote to the customer before the customer's first
/// turn in the history (a template that started the conversation, or replies older than the
/// history's start): models take the messages only from a customer's turn on (Anthropic refuses
/// an assistant turn first), so these are told here instead of being lost.
pub fn with_opening(system: String, opening: &[String]) -> String {
    if opening.is_empty() {
        return system;
    }
    let mut out = system;
    out.push_str(
        "\n\nBefore the customer's messages below, the business wrote to them (the customer may be \
         answering this):\n",
    );
    for text in opening {
        out.push_str(&format!("\n> {}\n", text.trim().replace('\n', "\n> ")));
    }
    out
}

// Kept in English: models follow English instructions best and still answer in the customer's
// language when told to.
const PROMPT: &str = "\
You are the customer support assistant of this business, chatting with customers on WhatsApp.

Language and tone:
- Always answer in the language of the customer's last message (for example Spanish, Portuguese or English). If it is unclear, use the language of the conversation so far.
- Be brief: this is a chat on a phone. Usually one to three short sentences; use a short list only when it really helps. No long introductions or sign-offs.
- Be friendly, polite and concrete. Use plain text; **bold** sparingly is fine, no headings or tables.

Facts and safety:
- Only state facts you were given in this conversation or in these instructions. If you do not know something (prices, stock, order status, policies), say so and offer to connect the customer with a person instead of guessing.
- Never ask for, repeat or store card numbers, CVV codes, bank passwords, PINs, one-time codes, or identity document numbers (ID, passport, tax ID). If the customer sends such data, tell them not to share it in this chat.
- Do not make promises about refunds, discounts or deadlines that you were not told you can make.

";

// The marker literal must equal `HANDOVER_MARKER` (a test checks it).
const HANDOVER_RULES: &str = "\
Handing over to a person:
- When the customer asks for a human, is upset or complaining, needs something you cannot do (payments, refunds, account changes, legal or medical matters), or you cannot help after one attempt, reply with exactly [[HANDOVER]] followed, optionally, by one short sentence for the customer in their language, for example: [[HANDOVER]] I'm passing you to a colleague who will reply shortly.
- Write [[HANDOVER]] exactly like that, in English and in capitals, whatever the customer's language. Never use it otherwise, and never explain it.";

#[cfg(test)]
mod tests {
    use super::super::HANDOVER_MARKER;
    use super::*;

    #[test]
    fn the_default_prompt_teaches_the_real_handover_marker() {
        let prompt = default_system_prompt();
        assert!(prompt.contains(HANDOVER_MARKER));
        for topic in ["language", "brief", "card numbers", "identity document"] {
            assert!(prompt.contains(topic), "{topic}");
        }
    }

    #[test]
    fn a_channels_own_prompt_keeps_the_handover_rules() {
        let own = "Eres el asistente de la Tienda Sol. Responde en español.";
        let prompt = system_prompt(Some(own));
        assert!(prompt.starts_with(own));
        assert!(prompt.contains(HANDOVER_MARKER));
        assert!(
            !prompt.contains("card numbers"),
            "only the handover rules are added"
        );
        // A prompt that has its own handover instruction is used as written.
        let with_marker = format!("Si piden una persona, escribe {HANDOVER_MARKER}.");
        assert_eq!(system_prompt(Some(&with_marker)), with_marker);
        assert_eq!(system_prompt(None), default_system_prompt());
    }

    #[test]
    fn what_the_business_wrote_first_is_quoted_after_the_prompt() {
        assert_eq!(with_opening("P".into(), &[]), "P");
        let prompt = with_opening(
            "P".into(),
            &[
                "[template: order_shipped] #1042".into(),
                "línea 1\nlínea 2".into(),
            ],
        );
        assert!(prompt.starts_with("P\n\nBefore the customer's messages below"));
        assert!(prompt.ends_with("\n> [template: order_shipped] #1042\n\n> línea 1\n> línea 2\n"));
    }
}
