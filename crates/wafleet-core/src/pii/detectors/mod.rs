//! The detectors, one module per family of personal data. Each exposes a `find` that adds what
//! it recognises to the shared `Found` set, claiming only unclaimed bytes; the
//! order they run in is set by [`Redactor::find`](super::Redactor::find).

pub mod address;
pub mod dob;
pub mod email;
pub mod iban;
pub mod idctx;
pub mod ip;
pub mod mx;
pub mod numeric;
pub mod passport;
pub mod secret;
pub mod url;

/// Runs `finders` in order over `t` like the redactor does, for the detectors' own tests.
#[cfg(test)]
pub(crate) fn detect<'t>(
    t: &'t str,
    finders: &[fn(&super::Ctx<'_>, &mut super::Found)],
) -> Vec<(&'t str, super::PiiType)> {
    let mut kws = Vec::new();
    super::keywords::Keywords::new().find(t, &mut kws);
    let ctx = super::Ctx {
        text: t,
        b: t.as_bytes(),
        kws: &kws,
    };
    let mut found = super::Found::default();
    for finder in finders {
        finder(&ctx, &mut found);
    }
    found
        .spans
        .iter()
        .map(|s| (&t[s.start..s.end], s.kind))
        .collect()
}

/// The texts of what [`detect`] finds with one finder, for the detectors' own tests.
#[cfg(test)]
pub(crate) fn detect_texts(t: &str, finder: fn(&super::Ctx<'_>, &mut super::Found)) -> Vec<&str> {
    detect(t, &[finder]).into_iter().map(|(s, _)| s).collect()
}
