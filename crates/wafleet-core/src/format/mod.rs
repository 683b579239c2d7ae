//! Markdown → WhatsApp formatting and chunking (in progress).
