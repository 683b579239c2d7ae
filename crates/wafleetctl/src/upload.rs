//! Files an agent sends from the operator's disk: `conversation reply ID --image @PATH` (and
//! `--document`, `--audio`, `--video`, `--sticker`), and `conversation upload PNID PATH`, which
//! prints the media id a template's `--header-image`/`--header-document`/`--header-video` takes
//! (those refuse `@PATH` and say so). The
//! file is checked as the API's upload route checks it (a type WhatsApp takes, under Meta's size
//! for its kind: [`wafleet_core::outgoing::upload_kind`]), uploaded to Meta for the
//! conversation's number with the channel's token ([`wafleet::graph::GraphClient::upload_media`],
//! the call the API's `POST /api/v1/channels/{pnid}/media` makes) and sent by the id Meta
//! answers. The bytes are streamed from the disk to Meta, never stored here.
//!
//! `@` marks the path: a media id is letters, digits, `_` and `-`, and a link is `https://…`, so
//! neither can start with it (as `knowledge add … @PATH` reads a file).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// How long one upload may take at least, whatever `WAFLEET_GRAPH_TIMEOUT_MS` (10 s by default,
/// sized for a send) says: a 100 MB document on an office uplink takes minutes.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Extensions whose type WhatsApp names otherwise than `mime_guess` does (Meta's public
/// "Supported media types" page, not our reference): an `.m4a` is `audio/mp4` to Meta
/// (`audio/m4a` to `mime_guess`), and `.amr` is not in its table.
const MEDIA_EXTENSIONS: &[(&str, &str)] = &[("m4a", "audio/mp4"), ("amr", "audio/amr")];

/// A file on this machine, checked, about to be uploaded.
#[derive(Debug)]
pub struct LocalFile {
    path: PathBuf,
    /// The MIME type its name says, one WhatsApp takes.
    mime: String,
    /// What it is sent as: `image`, `document`, `audio`, `video`, `sticker`.
    kind: &'static str,
    /// Meta's bound for its kind.
    max: u64,
    /// Its file name, when the API's upload route would take it as one (else `None`).
    name: Option<String>,
}

/// The path of `given` when it names a local file (`@PATH`).
pub fn local_path(given: &str) -> Option<&str> {
    given.trim().strip_prefix('@')
}

impl LocalFile {
    /// Checks the file `path` to send as `kind` (the flag it was given with; any kind when
    /// `None`): it exists, its type (from its name's extension) is one WhatsApp takes and is sent
    /// as `kind`, and it is within Meta's size for it. Nothing is uploaded yet.
    pub fn inspect(kind: Option<&str>, path: &str) -> anyhow::Result<Self> {
        let path = PathBuf::from(path);
        let shown = path.display();
        let meta = std::fs::metadata(&path).with_context(|| format!("reading {shown}"))?;
        anyhow::ensure!(meta.is_file(), "{shown} is not a file");
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let guesses: Vec<String> = MEDIA_EXTENSIONS
            .iter()
            .filter(|(e, _)| extension.as_deref() == Some(*e))
            .map(|(_, m)| m.to_string())
            .chain(
                mime_guess::from_path(&path)
                    .iter()
                    .map(|m| m.essence_str().to_string()),
            )
            .collect();
        let taken = guesses
            .iter()
            .find_map(|m| wafleet_core::outgoing::upload_kind(m).map(|k| (m.clone(), k)));
        let Some((mime, (as_kind, max))) = taken else {
            let what = match guesses.first() {
                Some(m) => format!("{m} is not a type WhatsApp takes"),
                None => "its type is not known from its name".to_string(),
            };
            anyhow::bail!(
                "{shown}: {what}: give a .jpg or .png image, a .webp sticker, an .aac, .amr, \
                 .mp3, .m4a or .ogg audio file, an .mp4 or .3gp video, or a .pdf, .txt or Office \
                 document"
            );
        };
        anyhow::ensure!(
            kind.is_none_or(|k| k == as_kind),
            "{shown}: {mime} is sent as {}: give it with --{as_kind}",
            a(as_kind)
        );
        let size = meta.len();
        anyhow::ensure!(size > 0, "{shown} is empty: Meta takes no empty file");
        within_bound(&shown, size, max, as_kind)?;
        // As the API's upload route takes `?filename=`: what a document shows the customer.
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::trim)
            .filter(|n| !n.is_empty() && wafleet_core::outgoing::upload_filename_ok(n))
            .map(str::to_string);
        Ok(Self {
            path,
            mime,
            kind: as_kind,
            max,
            name,
        })
    }

    /// The file's name, as a document without `--filename` shows it to the customer.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Uploads the file to Meta for the number `pnid` with its channel's access token, and
    /// answers the media id to send it by. Needs `WAFLEET_ENCRYPTION_KEY` (the token is stored
    /// sealed) and the workers' `WAFLEET_GRAPH_*` settings.
    pub async fn upload(&self, pool: &wafleet::db::PgPool, pnid: &str) -> anyhow::Result<String> {
        let shown = self.path.display();
        anyhow::ensure!(
            wafleet::config::var("WAFLEET_ENCRYPTION_KEY").is_some(),
            "uploading {shown} needs WAFLEET_ENCRYPTION_KEY: the channel's access token is \
             stored sealed"
        );
        let cipher = wafleet::config::cipher_from_env()?;
        let Some(token) = wafleet::store::channels::access_token(pool, &cipher, pnid).await? else {
            // Asked only now: which of the two it is.
            let known = wafleet::store::channels::summaries(pool, &[pnid.to_string()]).await?;
            anyhow::ensure!(!known.is_empty(), "no channel {pnid}");
            anyhow::bail!("channel {pnid} has no access token to upload with");
        };
        let settings = wafleet::stages::process::GraphSettings::from_env()?;
        let graph = wafleet::graph::GraphClient::new(
            &settings.base_url,
            &settings.version,
            settings.timeout.max(UPLOAD_TIMEOUT),
        );
        let file = tokio::fs::File::open(&self.path)
            .await
            .with_context(|| format!("reading {shown}"))?;
        // Checked again as it is opened: a file that grew since is not sent past its bound
        // (Meta would refuse it after the whole upload).
        let size = file
            .metadata()
            .await
            .with_context(|| format!("reading {shown}"))?
            .len();
        within_bound(&shown, size, self.max, self.kind)?;
        graph
            .upload_media(
                token.expose(),
                pnid,
                &self.mime,
                self.name.as_deref().unwrap_or(self.kind),
                reqwest::Body::from(file),
            )
            .await
            .with_context(|| format!("uploading {shown} to Meta"))
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn mime(&self) -> &str {
        &self.mime
    }
}

/// The media id an earlier run with `reference` uploaded `kind` as and recorded in the
/// conversation (its payload `{"type": kind, kind: {"id": …}}`), to send again by instead of
/// uploading the file a second time; `None` when none did.
pub async fn recorded_id(
    pool: &wafleet::db::PgPool,
    conversation_id: i64,
    reference: &str,
    kind: &str,
) -> anyhow::Result<Option<String>> {
    let payload =
        wafleet::store::agents::recorded_payload(pool, conversation_id, reference).await?;
    Ok(payload
        .filter(|p| p["type"] == kind)
        .and_then(|p| p[kind]["id"].as_str().map(str::to_string)))
}

/// A file of `size` bytes is within WhatsApp's bound `max` for `kind`.
fn within_bound(
    shown: &impl std::fmt::Display,
    size: u64,
    max: u64,
    kind: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        size <= max,
        "{shown} has {size} bytes; WhatsApp takes at most {max} for {}",
        a(kind)
    );
    Ok(())
}

/// `kind` with its article: "an image", "a document", "an audio file".
fn a(kind: &str) -> String {
    match kind {
        "image" => "an image".into(),
        "audio" => "an audio file".into(),
        k => format!("a {k}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file named `name` holding a few bytes, in a directory of its own, removed after.
    fn inspected(kind: &str, name: &str) -> anyhow::Result<LocalFile> {
        let dir = std::env::temp_dir().join(format!("wafleetctl-upload-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, b"some bytes").unwrap();
        let file = LocalFile::inspect(Some(kind), path.to_str().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        file
    }

    #[test]
    fn a_files_type_comes_from_its_name_as_whatsapp_names_it() {
        for (kind, name, mime) in [
            ("image", "photo.jpg", "image/jpeg"),
            ("image", "PHOTO.JPEG", "image/jpeg"),
            ("image", "plano.png", "image/png"),
            ("sticker", "hola.webp", "image/webp"),
            ("document", "factura 4412.pdf", "application/pdf"),
            ("document", "notas.txt", "text/plain"),
            (
                "document",
                "pedido.xlsx",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ),
            ("audio", "nota.ogg", "audio/ogg"),
            ("audio", "nota.opus", "audio/ogg"),
            ("audio", "cancion.mp3", "audio/mpeg"),
            ("audio", "grabacion.m4a", "audio/mp4"),
            ("audio", "llamada.amr", "audio/amr"),
            ("video", "demo.mp4", "video/mp4"),
            ("video", "demo.3gp", "video/3gpp"),
        ] {
            let file = inspected(kind, name).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!((file.kind, file.mime.as_str()), (kind, mime), "{name}");
            assert_eq!(file.name(), Some(name));
        }
    }

    #[test]
    fn a_file_whatsapp_does_not_take_or_sends_as_another_kind_is_refused_naming_why() {
        for (kind, name, says) in [
            (
                "image",
                "anim.gif",
                "image/gif is not a type WhatsApp takes",
            ),
            ("image", "README", "its type is not known from its name"),
            (
                "image",
                "hola.webp",
                "is sent as a sticker: give it with --sticker",
            ),
            (
                "document",
                "photo.jpg",
                "is sent as an image: give it with --image",
            ),
            (
                "video",
                "clip.mov",
                "video/quicktime is not a type WhatsApp takes",
            ),
        ] {
            let e = inspected(kind, name).unwrap_err().to_string();
            assert!(e.contains(says), "{name}: {e}");
        }
    }

    #[test]
    fn only_an_at_sign_names_a_local_file() {
        assert_eq!(local_path("@./photo.jpg"), Some("./photo.jpg"));
        assert_eq!(local_path(" @/tmp/f.pdf"), Some("/tmp/f.pdf"));
        assert_eq!(local_path("1234567890"), None);
        assert_eq!(local_path("https://cdn.example.com/a.jpg"), None);
    }
}
