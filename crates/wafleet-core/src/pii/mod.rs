//! PII redaction (in progress).
