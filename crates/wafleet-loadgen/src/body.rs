//! Webhook bodies as Meta sends them, each with a unique wamid, signed like Meta signs them.
//!
//! A body is the compact `messages` webhook of one inbound text message (the shape of
//! `tests/fixtures/webhooks/text.json`), about 1 KB, with Spanish text whose non-ASCII characters
//! are escaped as `\uXXXX` (emoji as surrogate pairs), as Meta does. Building one is a few string
//! copies into a reused buffer plus one HMAC over the bytes with a pre-keyed state, so workers
//! can make the next body between requests, outside the timed section, instead of the run
//! holding gigabytes of pre-built bodies.
//!
//! Uniqueness: the wamid is `run nonce × worker × sequence`, so no body of a run (nor of another
//! run, up to the 64-bit nonce) is a redelivery that ingest would deduplicate.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Distinct customers the bodies come from by default: enough to spread over every stream
/// partition, few enough that conversations repeat, as on a real number.
pub const CUSTOMERS: u64 = 5_000;

/// Message texts: what a shop's customers write, escaped the way Meta escapes them.
const TEXTS: &[&str] = &[
    r"Hola, buenos d\u00edas. Quer\u00eda saber si el pedido n\u00famero 48213 ya sali\u00f3 del almac\u00e9n, porque lo necesito antes del mi\u00e9rcoles para la reuni\u00f3n familiar en casa de mi cu\u00f1ado. \u00bfMe pueden confirmar la direcci\u00f3n de entrega? Es la calle Espa\u00f1a 23, 3\u00ba izquierda, y el c\u00f3digo postal es 28013. Muchas gracias por la atenci\u00f3n, quedo pendiente de su respuesta \ud83d\ude4f",
    r"Buenas tardes, compr\u00e9 unas zapatillas talla 42 la semana pasada y me quedan peque\u00f1as. \u00bfC\u00f3mo hago la devoluci\u00f3n o el cambio por una talla m\u00e1s? No encuentro la etiqueta de env\u00edo en el correo electr\u00f3nico que me mandaron. Tambi\u00e9n quer\u00eda preguntar si el reembolso se hace a la misma tarjeta o si tengo que pedirlo aparte. Gracias de antemano, un saludo cordial desde Medell\u00edn \ud83d\ude0a",
    r"Hola! \u00bfTienen disponible el caf\u00e9 molido de Colombia en bolsa de un kilo? La \u00faltima vez que lo ped\u00ed lleg\u00f3 en dos d\u00edas y estaba buen\u00edsimo. Si hay stock me gustar\u00eda pedir tres bolsas y saber cu\u00e1nto sale el env\u00edo a Valpara\u00edso. Tambi\u00e9n, \u00bfaceptan pago con transferencia o s\u00f3lo con tarjeta? Y otra cosa: \u00bfel descuento del 10% para clientes habituales sigue vigente este mes?",
    r"Disculpe la molestia, pero el t\u00e9cnico no vino ayer como estaba acordado y nadie me avis\u00f3. Estuve esperando toda la ma\u00f1ana sin poder salir de casa. Necesito que alguien me llame hoy mismo para reprogramar la visita, preferiblemente despu\u00e9s de las cinco de la tarde. El n\u00famero de incidencia es INC-20931. \u00a1Es la segunda vez que pasa esto y la verdad estoy bastante decepcionado con el servicio!",
];

const NAMES: &[&str] = &[
    r"Mar\u00eda Jos\u00e9 Pe\u00f1a",
    r"Jos\u00e9 \u00c1lvarez",
    r"Luc\u00eda G\u00f3mez",
    r"Andr\u00e9s Mu\u00f1oz",
    r"Sof\u00eda Rodr\u00edguez",
    r"Jes\u00fas Ib\u00e1\u00f1ez",
];

/// Builds and signs the bodies of one run.
#[derive(Clone)]
pub struct BodyFactory {
    phone_number_id: String,
    /// HMAC state after absorbing the app secret: each body only hashes itself.
    keyed: HmacSha256,
    /// Random per run, part of every wamid.
    nonce: u64,
    /// `messages[].timestamp`: Unix seconds when the run started.
    timestamp: String,
    /// Distinct customers (so conversations) the bodies are spread over.
    customers: u64,
}

/// One request's body and its `X-Hub-Signature-256` value.
pub struct Signed {
    pub body: Bytes,
    pub signature: String,
}

impl BodyFactory {
    /// `phone_number_id` must be digits, as Meta's are (it goes into the JSON unescaped).
    pub fn new(
        phone_number_id: &str,
        secret: &[u8],
        nonce: u64,
        timestamp: u64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !phone_number_id.is_empty() && phone_number_id.bytes().all(|b| b.is_ascii_digit()),
            "--phone-number-id must be digits, got {phone_number_id:?}"
        );
        Ok(Self {
            phone_number_id: phone_number_id.to_owned(),
            keyed: HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
            nonce,
            timestamp: timestamp.to_string(),
            customers: CUSTOMERS,
        })
    }

    /// Spreads the bodies over `n` customers instead of [`CUSTOMERS`] (the pipeline benchmark
    /// wants a known number of conversations).
    pub fn with_customers(mut self, n: u64) -> Self {
        self.customers = n.max(1);
        self
    }

    /// The wamid of request `seq` of `worker`: unique within the run and across runs.
    pub fn wamid(&self, worker: u32, seq: u64) -> String {
        format!(
            "wamid.HBgM{:016X}{worker:04X}{seq:012X}FQIAERgSQUFCQkNDRERFRUZGR0dISAA=",
            self.nonce
        )
    }

    /// The body of request `seq` of `worker`, signed.
    pub fn signed(&self, worker: u32, seq: u64) -> Signed {
        let mixed = (u64::from(worker) << 40) ^ seq;
        // splitmix64's finaliser: every input bit reaches every output bit, so requests of all
        // workers spread evenly over customers and texts.
        let mut h = mixed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
        let customer = 573_000_000_000 + (h >> 20) % self.customers;
        let text = TEXTS[(h >> 8) as usize % TEXTS.len()];
        let name = NAMES[(customer % NAMES.len() as u64) as usize];
        let wamid = self.wamid(worker, seq);

        let mut body = Vec::with_capacity(1200);
        for part in [
            r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":""#,
            &self.phone_number_id,
            r#""},"contacts":[{"profile":{"name":""#,
            name,
            r#""},"wa_id":""#,
            &customer.to_string(),
            r#""}],"messages":[{"from":""#,
            &customer.to_string(),
            r#"","id":""#,
            &wamid,
            r#"","timestamp":""#,
            &self.timestamp,
            r#"","type":"text","text":{"body":""#,
            text,
            r#""}}]},"field":"messages"}]}]}"#,
        ] {
            body.extend_from_slice(part.as_bytes());
        }

        let mut mac = self.keyed.clone();
        mac.update(&body);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        Signed {
            body: Bytes::from(body),
            signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wafleet_core::envelope::Update;
    use wafleet_core::signature::{self, AppSecret};
    use wafleet_core::webhook;

    fn factory() -> BodyFactory {
        BodyFactory::new("106540352242922", b"s3cret", 0xDEAD_BEEF, 1_749_416_383).unwrap()
    }

    #[test]
    fn bodies_are_signed_as_meta_signs_them() {
        let f = factory();
        for seq in 0..50 {
            let s = f.signed(3, seq);
            assert_eq!(s.signature, signature::sign(&s.body, b"s3cret"));
            let secrets = [AppSecret::new(b"s3cret")];
            assert_eq!(
                signature::verify(&s.body, Some(s.signature.as_bytes()), &secrets),
                Ok(0)
            );
        }
    }

    #[test]
    fn bodies_parse_as_one_text_message_of_about_a_kilobyte() {
        let f = factory();
        for seq in 0..50 {
            let s = f.signed(0, seq);
            assert!(
                (900..1300).contains(&s.body.len()),
                "{} bytes",
                s.body.len()
            );
            assert!(s.body.is_ascii(), "non-ASCII is escaped, as Meta does");
            let parsed = webhook::parse(&s.body).expect("parses");
            assert!(parsed.rejected.is_empty());
            let [Update::Message(m)] = parsed.updates.as_slice() else {
                panic!("one message expected: {:?}", parsed.updates);
            };
            assert_eq!(m.origin.phone_number_id, "106540352242922");
            assert_eq!(m.wamid, f.wamid(0, seq));
            assert_eq!(m.message_type, "text");
            let text = m.text().unwrap();
            assert!(text.chars().any(|c| "áéíóúñ¿¡".contains(c)), "{text}");
        }
    }

    #[test]
    fn every_request_of_a_run_has_its_own_wamid() {
        let f = factory();
        let mut seen = std::collections::HashSet::new();
        for worker in 0..64 {
            for seq in 0..500 {
                assert!(seen.insert(f.wamid(worker, seq)));
            }
        }
        let other_run = BodyFactory::new("1", b"s", 1, 0).unwrap();
        assert!(!seen.contains(&other_run.wamid(0, 0)));
    }

    #[test]
    fn bodies_come_from_at_most_the_given_customers() {
        let f = factory().with_customers(7);
        let mut seen = std::collections::HashSet::new();
        for seq in 0..500 {
            let parsed = webhook::parse(&f.signed(1, seq).body).expect("parses");
            let [Update::Message(m)] = parsed.updates.as_slice() else {
                panic!("one message expected");
            };
            seen.insert(m.wa_id.clone().unwrap());
        }
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn a_phone_number_id_that_is_not_digits_is_refused() {
        for bad in ["", "12a", "1\"2"] {
            assert!(BodyFactory::new(bad, b"s", 0, 0).is_err(), "{bad:?}");
        }
    }
}
