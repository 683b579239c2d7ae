//! `X-Hub-Signature-256` verification.
//!
//! Meta signs every webhook POST with HMAC-SHA256 keyed by the app secret, over the exact bytes
//! it sends (non-ASCII escaped as `\uXXXX`), and puts `sha256=<lowercase hex>` in the header.
//! We verify over the raw received bytes — never a re-serialisation — in constant time, before
//! anything else looks at the body. Several secrets may be valid at once (old and new during a
//! rotation, or several apps on one endpoint): any one of them is accepted.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of the header value: `sha256=` followed by 64 hex digits.
const HEADER_LEN: usize = 7 + 64;

/// An app secret, pre-keyed so each verification only hashes the body.
///
/// `Debug` never prints the secret.
#[derive(Clone)]
pub struct AppSecret {
    /// HMAC state after absorbing the key: cloning it skips the key schedule on every request.
    keyed: HmacSha256,
}

impl AppSecret {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let keyed = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        Self { keyed }
    }

    /// A stable name for this secret that says nothing about it: the first 64 bits of its MAC
    /// over a fixed label, in hex. Kept with what ingest sets aside, so a later check can tell
    /// which app signed it without storing the secret.
    pub fn fingerprint(&self) -> String {
        let mut mac = self.keyed.clone();
        mac.update(b"wafleet app secret fingerprint v1");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

impl std::fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppSecret([redacted])")
    }
}

/// Why a signature was refused. Callers answer all of them with the same opaque 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header missing")]
    Missing,
    #[error("signature header malformed")]
    Malformed,
    #[error("signature does not match any configured app secret")]
    Mismatch,
}

/// Verifies `header` (the raw `X-Hub-Signature-256` value) over `body` against every secret.
///
/// Returns the index of the secret that matched, so the caller can tell which channels may own
/// the body. Each comparison is constant time (`Mac::verify_slice`).
pub fn verify(
    body: &[u8],
    header: Option<&[u8]>,
    secrets: &[AppSecret],
) -> Result<usize, SignatureError> {
    verify_with(body, header, secrets.iter().enumerate())
}

/// [`verify`] against the secrets at `candidates` only (the secrets of one app): each secret
/// tried costs a pass of HMAC-SHA256 over the body, so a POST that names its app is checked
/// once, however many apps share the endpoint. Returns the matching index into `secrets`; an
/// index out of range is skipped.
pub fn verify_among(
    body: &[u8],
    header: Option<&[u8]>,
    secrets: &[AppSecret],
    candidates: &[usize],
) -> Result<usize, SignatureError> {
    verify_with(
        body,
        header,
        candidates
            .iter()
            .filter_map(|&i| secrets.get(i).map(|s| (i, s))),
    )
}

fn verify_with<'a>(
    body: &[u8],
    header: Option<&[u8]>,
    mut secrets: impl Iterator<Item = (usize, &'a AppSecret)>,
) -> Result<usize, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let expected = parse_header(header)?;
    secrets
        .find(|(_, secret)| {
            let mut mac = secret.keyed.clone();
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        })
        .map(|(i, _)| i)
        .ok_or(SignatureError::Mismatch)
}

fn parse_header(header: &[u8]) -> Result<[u8; 32], SignatureError> {
    let header = header.trim_ascii();
    if header.len() != HEADER_LEN || !header.starts_with(b"sha256=") {
        return Err(SignatureError::Malformed);
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&header[7..], &mut digest).map_err(|_| SignatureError::Malformed)?;
    Ok(digest)
}

/// The header value Meta would send for `body` under `secret` (tests, load generator, simulator).
pub fn sign(body: &[u8], secret: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"object":"whatsapp_business_account","entry":[]}"#;

    #[test]
    fn a_signature_made_with_the_secret_verifies() {
        let header = sign(BODY, b"s3cret");
        let secrets = [AppSecret::new(b"s3cret")];
        assert_eq!(verify(BODY, Some(header.as_bytes()), &secrets), Ok(0));
    }

    #[test]
    fn any_configured_secret_is_accepted_during_rotation() {
        let header = sign(BODY, b"new");
        let secrets = [AppSecret::new(b"old"), AppSecret::new(b"new")];
        assert_eq!(verify(BODY, Some(header.as_bytes()), &secrets), Ok(1));
    }

    #[test]
    fn only_the_candidate_secrets_are_tried() {
        let header = sign(BODY, b"b");
        let secrets = [
            AppSecret::new(b"a"),
            AppSecret::new(b"b"),
            AppSecret::new(b"c"),
        ];
        let header = Some(header.as_bytes());
        assert_eq!(verify_among(BODY, header, &secrets, &[2, 1]), Ok(1));
        assert_eq!(
            verify_among(BODY, header, &secrets, &[0, 2, 7]),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_among(BODY, header, &secrets, &[]),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_among(BODY, None, &secrets, &[1]),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn refusals_name_their_cause() {
        let good = sign(BODY, b"s3cret");
        let secrets = [AppSecret::new(b"s3cret")];
        let cases: &[(Option<&[u8]>, SignatureError)] = &[
            (None, SignatureError::Missing),
            (Some(b""), SignatureError::Malformed),
            (Some(&good.as_bytes()[..40]), SignatureError::Malformed),
            (Some(b"sha1=abc"), SignatureError::Malformed),
            (Some(&[b'x'; HEADER_LEN]), SignatureError::Malformed),
        ];
        for (header, want) in cases {
            assert_eq!(verify(BODY, *header, &secrets), Err(*want), "{header:?}");
        }
        let wrong = sign(BODY, b"other");
        assert_eq!(
            verify(BODY, Some(wrong.as_bytes()), &secrets),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = BODY.to_vec();
        tampered[3] ^= 1;
        assert_eq!(
            verify(&tampered, Some(good.as_bytes()), &secrets),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn uppercase_hex_is_accepted_as_the_same_digest() {
        let header = sign(BODY, b"k")
            .to_uppercase()
            .replace("SHA256=", "sha256=");
        assert_eq!(
            verify(BODY, Some(header.as_bytes()), &[AppSecret::new(b"k")]),
            Ok(0)
        );
    }

    #[test]
    fn debug_never_prints_the_secret() {
        assert_eq!(
            format!("{:?}", AppSecret::new(b"hunter2")),
            "AppSecret([redacted])"
        );
    }
}
