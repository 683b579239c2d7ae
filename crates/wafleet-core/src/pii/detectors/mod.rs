//! The detectors, one module per family of personal data. Each exposes a `find` that adds what
//! it recognises to the shared `Found` set, claiming only unclaimed bytes; the
//! order they run in is set by [`Redactor::find`](super::Redactor::find).

pub mod address;
pub mod dob;
pub mod email;
pub mod iban;
pub mod idctx;
pub mod ip;
pub mod numeric;
pub mod url;
