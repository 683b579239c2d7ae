//! Markdown → WhatsApp formatting, splitting replies into parts WhatsApp accepts, and a
//! template's wording with its parameters ([`template`]).
//!
//! Owns the text transformations between the LLM's answer and the Graph API's `text.body`; it does
//! not send anything, and it does not decide *how many* parts are acceptable (the sender weighs
//! that against the pair rate limit, 1 message per 6 s per recipient).
//!
//! # Markdown mapping ([`markdown_to_whatsapp`])
//! | Markdown | WhatsApp |
//! |---|---|
//! | `**bold**`, `__bold__` | `*bold*` |
//! | `*italic*`, `_italic_` | `_italic_` |
//! | `~~strike~~` | `~strike~` |
//! | `` `code` `` | `` `code` `` (WhatsApp's inline code); ```` ```co`de``` ```` (monospace) when the code holds a backtick |
//! | fenced or indented code | ```` ``` ```` on its own line, the code verbatim, ```` ``` ````; inside a quote, ```` > ```line``` ```` per line |
//! | `# Header` (any level) | `*Header*` |
//! | `[label](url)` | `label (url)`; just `url` when the label is the URL; a `mailto:` or `tel:` URL without its scheme |
//! | `<https://…>`, bare URLs | kept as they are |
//! | `![alt](url)` | `alt (url)`; just `alt` as a link's label (`[![alt](img)](url)` → `alt (url)`) |
//! | `- item` / `* item` / `+ item` | `- item`, nested levels indented by two spaces |
//! | `1. item` | `1. item`, numbering kept |
//! | `> quote` | `> quote` |
//! | `---` | `———` between blank lines |
//! | tables | one line per row, cells joined by ` \| `, header cells bold; cells beyond the header's count kept |
//! | HTML | tags removed, text kept, `<br>` as a line break |
//!
//! Paragraphs are separated by exactly one blank line and no line ends in whitespace (this applies
//! inside code blocks too). Emphasis is only emitted where WhatsApp renders it: a style already
//! active is not re-opened inside itself (`**a **b** c**` → `*a b c*`), styles are closed and
//! reopened at line breaks, and a span touching a letter (`2*3*4`, `foo**bar**`) keeps its original
//! Markdown delimiters so the text still reads as written. Literal `*` and `_` that were never
//! emphasis stay as they are; WhatsApp has no escape, so an escaped `\*word\*` may render bold.
//! Code is the one place where a marker is defused: WhatsApp's monospace ends at the first three
//! backticks, so a zero-width space keeps any three of the code's own apart.
//!
//! # Splitting ([`split_message`])
//! See [`split`] for the preference order of cut points. Limits hold both in `char`s and in UTF-16
//! code units, since Meta does not say which of the two its 4096 for `text.body` counts.

mod markdown;
pub mod split;
pub mod template;

pub use markdown::markdown_to_whatsapp;
pub use split::{WHATSAPP_MAX_CHARS, split_message};
