//! Encryption of secrets at rest (access tokens, app secrets, verify tokens).
//!
//! AES-256-GCM with a random 96-bit nonce per value, and the owner of the value (for example
//! `channel:106540352242922:access_token`) as associated data, so a ciphertext copied into another
//! row or column fails to decrypt instead of silently becoming another channel's token.
//! Stored form: `0x01 || nonce (12) || ciphertext+tag`. Clear text only ever lives in memory.
//!
//! # Rotating the key
//! A [`Cipher`] holds the current key, with which everything is sealed and tagged, and any number
//! of other keys that still open what they sealed (`WAFLEET_ENCRYPTION_KEY_PREVIOUS`): the old
//! key after a rotation, or the next one before it. `wafleetctl rotate-secrets` then seals every
//! stored secret again with the current key ([`crate::store::channels::reseal_all`]). The steps,
//! each a rolling restart that never leaves a process unable to read what another wrote, are in
//! the README (Operations).
//!
//! The same key also tags the outbound ids we put in `biz_opaque_callback_data`
//! ([`CallbackTags`]), so a status echoing callback data that another app on the number, or
//! another wafleet install, set is never taken for one of our messages.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context, bail};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// The process's data-encryption keys: the current one first, then those that only decrypt.
#[derive(Clone)]
pub struct Cipher {
    aeads: Vec<Aes256Gcm>,
    callbacks: CallbackTags,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher([redacted])")
    }
}

/// Parses a key: 32 bytes as base64 (standard or URL-safe, padding optional) or 64 hex digits.
/// Errors name `var`, never the value.
fn parse_key(text: &str, var: &str) -> anyhow::Result<Vec<u8>> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).with_context(|| format!("bad hex in {var}"))?
    } else {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        // Padding is optional: shells and env files lose trailing '=' easily.
        let unpadded = text.trim_end_matches('=');
        // The decoder's own error is left out: it quotes the first character it could not
        // read (by its code and offset), a character of the key.
        STANDARD_NO_PAD
            .decode(unpadded)
            .or_else(|_| URL_SAFE_NO_PAD.decode(unpadded))
            .map_err(|_| anyhow::anyhow!("{var} is neither 64 hex digits nor base64"))?
    };
    if bytes.len() != 32 {
        bail!("{var} must decode to 32 bytes, got {}", bytes.len());
    }
    Ok(bytes)
}

impl Cipher {
    /// Parses `WAFLEET_ENCRYPTION_KEY`: 32 bytes as base64 (standard or URL-safe) or 64 hex digits.
    pub fn from_key_text(text: &str) -> anyhow::Result<Self> {
        let bytes = parse_key(text, "WAFLEET_ENCRYPTION_KEY")?;
        Ok(Self {
            aeads: vec![Aes256Gcm::new_from_slice(&bytes).expect("32-byte key")],
            callbacks: CallbackTags::derive(&bytes),
        })
    }

    /// Adds keys that open (and check the callback tags of) what they sealed, but seal nothing:
    /// `WAFLEET_ENCRYPTION_KEY_PREVIOUS`.
    pub fn with_other_keys<'a>(
        mut self,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> anyhow::Result<Self> {
        for text in texts {
            let bytes = parse_key(text, "WAFLEET_ENCRYPTION_KEY_PREVIOUS")?;
            self.aeads
                .push(Aes256Gcm::new_from_slice(&bytes).expect("32-byte key"));
            self.callbacks.macs.push(CallbackTags::subkey(&bytes));
        }
        Ok(self)
    }

    /// What tags and checks our outbound ids in `biz_opaque_callback_data`.
    pub fn callback_tags(&self) -> &CallbackTags {
        &self.callbacks
    }

    /// A fresh random key in the text form `from_key_text` reads.
    pub fn generate_key_text() -> String {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    /// Seals `plain` with the current key, bound to `owner`.
    pub fn encrypt(&self, owner: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self.aeads[0]
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: owner.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed for `owner` with any of the keys, the current one first.
    pub fn decrypt(&self, owner: &str, stored: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.open(owner, stored).map(|(plain, _)| plain)
    }

    /// [`Cipher::decrypt`], and whether it took another key than the current one.
    fn open(&self, owner: &str, stored: &[u8]) -> anyhow::Result<(Vec<u8>, bool)> {
        if stored.len() < 1 + NONCE_LEN + 16 || stored[0] != VERSION {
            bail!("stored secret for {owner} has an unknown format");
        }
        let (nonce, sealed) = stored[1..].split_at(NONCE_LEN);
        self.aeads
            .iter()
            .enumerate()
            .find_map(|(i, aead)| {
                let payload = Payload {
                    msg: sealed,
                    aad: owner.as_bytes(),
                };
                aead.decrypt(Nonce::from_slice(nonce), payload)
                    .ok()
                    .map(|plain| (plain, i > 0))
            })
            .with_context(|| {
                format!("secret for {owner} does not decrypt with WAFLEET_ENCRYPTION_KEY (nor WAFLEET_ENCRYPTION_KEY_PREVIOUS)")
            })
    }

    /// The value sealed again with the current key, if another key sealed it (`None`: already
    /// current). An error when no key opens it.
    pub fn reseal(&self, owner: &str, stored: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let (plain, old) = self.open(owner, stored)?;
        Ok(old.then(|| self.encrypt(owner, &plain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_are_bound_to_their_owner() {
        let c = Cipher::from_key_text(&Cipher::generate_key_text()).unwrap();
        let sealed = c.encrypt("channel:1:access_token", b"EAAG-token");
        assert!(
            !sealed.windows(4).any(|w| w == b"EAAG"),
            "clear text must not appear"
        );
        assert_eq!(
            c.decrypt("channel:1:access_token", &sealed).unwrap(),
            b"EAAG-token"
        );
        assert!(c.decrypt("channel:2:access_token", &sealed).is_err());
        let other = Cipher::from_key_text(&Cipher::generate_key_text()).unwrap();
        assert!(other.decrypt("channel:1:access_token", &sealed).is_err());
    }

    #[test]
    fn after_a_rotation_the_old_key_still_opens_and_checks_but_never_seals() {
        let (old_text, new_text) = (Cipher::generate_key_text(), Cipher::generate_key_text());
        let old = Cipher::from_key_text(&old_text).unwrap();
        let sealed_before = old.encrypt("channel:1:access_token", b"EAAG-token");
        let tagged_before = old.callback_tags().encode(42, 1);

        let rotated = Cipher::from_key_text(&new_text)
            .unwrap()
            .with_other_keys([old_text.as_str()])
            .unwrap();
        assert_eq!(
            rotated
                .decrypt("channel:1:access_token", &sealed_before)
                .unwrap(),
            b"EAAG-token"
        );
        assert!(rotated.callback_tags().decode(&tagged_before).is_some());
        // What it seals and tags, the new key alone opens and checks.
        let new_only = Cipher::from_key_text(&new_text).unwrap();
        let resealed = rotated
            .reseal("channel:1:access_token", &sealed_before)
            .unwrap()
            .expect("sealed by the old key");
        assert_eq!(
            new_only
                .decrypt("channel:1:access_token", &resealed)
                .unwrap(),
            b"EAAG-token"
        );
        assert!(old.decrypt("channel:1:access_token", &resealed).is_err());
        assert_eq!(
            rotated.reseal("channel:1:access_token", &resealed).unwrap(),
            None
        );
        let tagged_after = rotated.callback_tags().encode(42, 2);
        assert!(new_only.callback_tags().decode(&tagged_after).is_some());
        assert!(old.callback_tags().decode(&tagged_after).is_none());
        // Neither key: an error naming both variables, never the value.
        let stranger = Cipher::from_key_text(&Cipher::generate_key_text()).unwrap();
        let e = stranger
            .decrypt("channel:1:access_token", &sealed_before)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WAFLEET_ENCRYPTION_KEY_PREVIOUS") && !e.contains("EAAG"),
            "{e}"
        );
        assert!(
            Cipher::from_key_text(&new_text)
                .unwrap()
                .with_other_keys(["short"])
                .unwrap_err()
                .to_string()
                .contains("WAFLEET_ENCRYPTION_KEY_PREVIOUS")
        );
    }

    #[test]
    fn keys_are_read_as_hex_or_base64_and_must_be_32_bytes() {
        assert!(Cipher::from_key_text(&"ab".repeat(32)).is_ok());
        assert!(Cipher::from_key_text("c2hvcnQ=").is_err());
        let key = Cipher::generate_key_text();
        assert!(key.ends_with('='));
        assert!(
            Cipher::from_key_text(key.trim_end_matches('=')).is_ok(),
            "padding is optional"
        );
        assert!(Cipher::from_key_text("not a key at all!").is_err());
    }

    #[test]
    fn a_key_that_does_not_parse_is_named_without_any_of_it() {
        // A '+' that only URL-safe base64 refuses, then a '!' that neither reads.
        let key = "Q+WdEfm3XQ4lD5ksV0Bq9FQ1Ja8pbNkHxWz3YvCj7r!=";
        let e = Cipher::from_key_text(key).err().unwrap();
        assert_eq!(
            format!("{e:#}"),
            "WAFLEET_ENCRYPTION_KEY is neither 64 hex digits nor base64"
        );
        let e = Cipher::from_key_text(&Cipher::generate_key_text())
            .unwrap()
            .with_other_keys(["hunter2-my-password"])
            .err()
            .unwrap();
        assert_eq!(
            format!("{e:#}"),
            "WAFLEET_ENCRYPTION_KEY_PREVIOUS is neither 64 hex digits nor base64"
        );
    }
}

/// Our outbound ids as `biz_opaque_callback_data`: `wf2.<id>.<try>.<tag>`, `try` being which send
/// of the part this is (its `attempts` once claimed) and the tag 72 bits of HMAC-SHA256 of
/// `<id>.<try>` under a key derived from `WAFLEET_ENCRYPTION_KEY`. Meta echoes the value in every
/// status of the message, and the status stage reconciles an ambiguous send by it.
/// - The tag: a bare number, which another app on the same number may well use, would mark one of
///   our unsent parts accepted with someone else's wamid, and that reply would never go out.
/// - The try: a part sent again (its first send failed, or went unanswered) must not take a late
///   status of the earlier send for its own; that would record the failed message's wamid as the
///   resend's, or fail the resend in flight.
///
/// `wf1.<id>.<tag>` (before the try was written) still reads back, with no try.
#[derive(Clone)]
pub struct CallbackTags {
    /// The current key's first (it tags), then the other keys' (they only check).
    macs: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for CallbackTags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackTags([redacted])")
    }
}

/// What our callback data says: which outbound part, and which send of it (`None` in data
/// written before sends were numbered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callback {
    pub outbound_id: i64,
    pub send_try: Option<i32>,
}

const CALLBACK_TAG_LEN: usize = 9;

impl CallbackTags {
    fn derive(key: &[u8]) -> Self {
        Self {
            macs: vec![Self::subkey(key)],
        }
    }

    fn subkey(key: &[u8]) -> Hmac<Sha256> {
        let mut kdf =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        kdf.update(b"wafleet biz_opaque_callback_data v1");
        let subkey = kdf.finalize().into_bytes();
        <Hmac<Sha256> as Mac>::new_from_slice(&subkey).expect("HMAC takes keys of any length")
    }

    fn tag_with(mac: &Hmac<Sha256>, signed: &str) -> Hmac<Sha256> {
        let mut mac = mac.clone();
        mac.update(signed.as_bytes());
        mac
    }

    /// The callback data of send `send_try` of outbound message `id`.
    pub fn encode(&self, id: i64, send_try: i32) -> String {
        let signed = format!("{id}.{send_try}");
        let tag = Self::tag_with(&self.macs[0], &signed)
            .finalize()
            .into_bytes();
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..CALLBACK_TAG_LEN]);
        format!("wf2.{signed}.{tag}")
    }

    /// What callback data we wrote says; `None` for anything else (checked in constant time).
    pub fn decode(&self, data: &str) -> Option<Callback> {
        let (head, tag) = data.rsplit_once('.')?;
        let (signed, outbound_id, send_try) = if let Some(signed) = head.strip_prefix("wf2.") {
            let (id, send_try) = signed.split_once('.')?;
            (signed, id, Some(canonical::<i32>(send_try)?))
        } else {
            let id = head.strip_prefix("wf1.")?;
            (id, id, None)
        };
        let outbound_id = canonical::<i64>(outbound_id)?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()
            .filter(|t| t.len() == CALLBACK_TAG_LEN)?;
        // Any key's tag (data written before a rotation stays ours); each checked in constant
        // time.
        self.macs
            .iter()
            .any(|mac| {
                Self::tag_with(mac, signed)
                    .verify_truncated_left(&tag)
                    .is_ok()
            })
            .then_some(())?;
        Some(Callback {
            outbound_id,
            send_try,
        })
    }
}

/// A number in the only form we ever tag (no sign, no leading zeros).
fn canonical<T: std::str::FromStr + ToString>(text: &str) -> Option<T> {
    let n: T = text.parse().ok()?;
    (n.to_string() == text).then_some(n)
}

#[cfg(test)]
mod callback_tests {
    use super::*;

    #[test]
    fn callback_data_reads_back_only_under_its_own_key() {
        let ours = Cipher::from_key_text(&Cipher::generate_key_text()).unwrap();
        let theirs = Cipher::from_key_text(&Cipher::generate_key_text()).unwrap();
        let tags = ours.callback_tags();
        let data = tags.encode(4217, 2);
        assert!(data.starts_with("wf2.4217.2."), "{data}");
        assert!(
            data.len() <= 512,
            "Meta's limit on biz_opaque_callback_data"
        );
        let ours_2 = Some(Callback {
            outbound_id: 4217,
            send_try: Some(2),
        });
        assert_eq!(tags.decode(&data), ours_2);
        // Another install's tag, a bare id (another app's), a changed id or tag, garbage.
        assert_eq!(theirs.callback_tags().decode(&data), None);
        assert_eq!(tags.decode("4217"), None);
        assert_eq!(tags.decode(&data.replace("4217", "4218")), None);
        assert_eq!(tags.decode(&data.replace("wf2.4217.2", "wf2.4217.3")), None);
        assert_eq!(tags.decode(&data.replace("wf2.4217", "wf2.04217")), None);
        assert_eq!(tags.decode(&data.replace(".2.", ".02.")), None);
        assert_eq!(tags.decode(&data.replace("wf2.4217.2", "wf1.4217")), None);
        let mut bad_tag = data.clone();
        let last = bad_tag.pop().unwrap();
        bad_tag.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(tags.decode(&bad_tag), None);
        assert_eq!(tags.decode("wf1.4217"), None);
        assert_eq!(tags.decode("wf1..x"), None);
        assert_eq!(tags.decode("wf2.4217.x"), None);
        assert_eq!(tags.decode("wf2..."), None);
        assert_eq!(tags.decode("job-42"), None);
        // Data written before sends were numbered reads back without a try.
        let legacy = CallbackTags::tag_with(&tags.macs[0], "4217")
            .finalize()
            .into_bytes();
        let legacy =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&legacy[..CALLBACK_TAG_LEN]);
        assert_eq!(
            tags.decode(&format!("wf1.4217.{legacy}")),
            Some(Callback {
                outbound_id: 4217,
                send_try: None
            })
        );
    }
}
