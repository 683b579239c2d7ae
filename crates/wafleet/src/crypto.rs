//! Encryption of secrets at rest (access tokens, app secrets, verify tokens).
//!
//! AES-256-GCM with a random 96-bit nonce per value, and the owner of the value (for example
//! `channel:106540352242922:access_token`) as associated data, so a ciphertext copied into another
//! row or column fails to decrypt instead of silently becoming another channel's token.
//! Stored form: `0x01 || nonce (12) || ciphertext+tag`. The leading version byte leaves room for a
//! key rotation scheme. Clear text only ever lives in memory.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context, bail};
use base64::Engine;
use rand::RngCore;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// The process's data-encryption key.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher([redacted])")
    }
}

impl Cipher {
    /// Parses `WAFLEET_ENCRYPTION_KEY`: 32 bytes as base64 (standard or URL-safe) or 64 hex digits.
    pub fn from_key_text(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).context("bad hex in WAFLEET_ENCRYPTION_KEY")?
        } else {
            use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
            // Padding is optional: shells and env files lose trailing '=' easily.
            let unpadded = text.trim_end_matches('=');
            STANDARD_NO_PAD
                .decode(unpadded)
                .or_else(|_| URL_SAFE_NO_PAD.decode(unpadded))
                .context("WAFLEET_ENCRYPTION_KEY is neither 64 hex digits nor base64")?
        };
        if bytes.len() != 32 {
            bail!(
                "WAFLEET_ENCRYPTION_KEY must decode to 32 bytes, got {}",
                bytes.len()
            );
        }
        Ok(Self {
            aead: Aes256Gcm::new_from_slice(&bytes).expect("32-byte key"),
        })
    }

    /// A fresh random key in the text form `from_key_text` reads.
    pub fn generate_key_text() -> String {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    pub fn encrypt(&self, owner: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .aead
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

    pub fn decrypt(&self, owner: &str, stored: &[u8]) -> anyhow::Result<Vec<u8>> {
        if stored.len() < 1 + NONCE_LEN + 16 || stored[0] != VERSION {
            bail!("stored secret for {owner} has an unknown format");
        }
        let (nonce, sealed) = stored[1..].split_at(NONCE_LEN);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!("secret for {owner} does not decrypt with WAFLEET_ENCRYPTION_KEY")
            })
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
}
