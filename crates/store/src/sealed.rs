//! Secrets at rest: endpoint, application and source secrets, sources' API keys and the
//! values of endpoints' custom headers (which often carry credentials) are sealed with
//! XChaCha20-Poly1305 before they reach the database, bound to their row's id, so a dump
//! of the database alone does not reveal them. The key lives outside the database.

use crate::{App, DeliveryView, Endpoint, Listed, Source, StoreError, StoreResult};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const PREFIX: &str = "sealed:v1:";
const NONCE_BYTES: usize = 24;
pub const KEY_BYTES: usize = 32;

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; KEY_BYTES]) -> Sealer {
        Sealer { cipher: XChaCha20Poly1305::new(key.into()) }
    }

    /// `sealed:v1:<base64 of nonce and ciphertext>`, bound to `row_id`.
    pub fn seal(&self, row_id: &str, plain: &str) -> String {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain.as_bytes(), aad: row_id.as_bytes() })
            .expect("sealing cannot fail for in-memory input");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", B64.encode(out))
    }

    /// Opens a sealed value; a value that was never sealed is returned as it is.
    pub fn open(&self, row_id: &str, text: &str) -> StoreResult<String> {
        let Some(encoded) = text.strip_prefix(PREFIX) else { return Ok(text.to_owned()) };
        let corrupt = || StoreError::Corrupt("a sealed secret does not open with this key (wrong secret_key?)".into());
        let bytes = B64.decode(encoded).map_err(|_| corrupt())?;
        if bytes.len() < NONCE_BYTES {
            return Err(corrupt());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: row_id.as_bytes() })
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }
}

/// Sealing on the way in and opening on the way out, per record kind; every backend
/// applies these on every write and read.
impl Sealer {
    pub fn seal_app(&self, mut app: App) -> App {
        app.secret = self.seal(&app.id, &app.secret);
        for previous in &mut app.previous_secrets {
            previous.text = self.seal(&app.id, &previous.text);
        }
        app
    }

    /// Whether the stored (sealed) `stored` holds the same secrets as the opened `read`:
    /// sealing draws a nonce each time, so the sealed texts of two writes never match.
    pub fn same_app_secrets(&self, stored: App, read: &App) -> StoreResult<bool> {
        let stored = self.open_app(stored)?;
        Ok(stored.secret == read.secret && stored.previous_secrets == read.previous_secrets)
    }

    pub fn open_app(&self, mut app: App) -> StoreResult<App> {
        app.secret = self.open(&app.id, &app.secret)?;
        for previous in &mut app.previous_secrets {
            previous.text = self.open(&app.id, &previous.text)?;
        }
        Ok(app)
    }

    pub fn seal_endpoint(&self, mut endpoint: Endpoint) -> Endpoint {
        for secret in &mut endpoint.secrets {
            secret.text = self.seal(&endpoint.id, &secret.text);
        }
        for value in endpoint.headers.values_mut() {
            *value = self.seal(&endpoint.id, value);
        }
        endpoint
    }

    pub fn open_endpoint(&self, mut endpoint: Endpoint) -> StoreResult<Endpoint> {
        for secret in &mut endpoint.secrets {
            secret.text = self.open(&endpoint.id, &secret.text)?;
        }
        for value in endpoint.headers.values_mut() {
            *value = self.open(&endpoint.id, value)?;
        }
        Ok(endpoint)
    }

    pub fn seal_source(&self, mut source: Source) -> Source {
        for secret in &mut source.secrets {
            secret.value = self.seal(&source.id, &secret.value);
        }
        source.api_key = source.api_key.map(|key| self.seal(&source.id, &key));
        source
    }

    pub fn open_source(&self, mut source: Source) -> StoreResult<Source> {
        for secret in &mut source.secrets {
            secret.value = self.open(&source.id, &secret.value)?;
        }
        source.api_key = source.api_key.map(|key| self.open(&source.id, &key)).transpose()?;
        Ok(source)
    }

    /// Opens the endpoints shown beside a page of deliveries.
    pub fn open_views(&self, listed: Listed<DeliveryView>) -> StoreResult<Listed<DeliveryView>> {
        self.open_all(listed, |sealer, mut view: DeliveryView| {
            view.endpoint = view.endpoint.map(|e| sealer.open_endpoint(e)).transpose()?;
            Ok(view)
        })
    }

    pub fn open_all<T>(&self, listed: Listed<T>, open: impl Fn(&Self, T) -> StoreResult<T>) -> StoreResult<Listed<T>> {
        let items = listed.items.into_iter().map(|item| open(self, item)).collect::<StoreResult<Vec<_>>>()?;
        Ok(Listed { items, done: listed.done })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_table() {
        let sealer = Sealer::new(&[7; KEY_BYTES]);
        let sealed = sealer.seal("ep_1", "whsec_secret");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("whsec_secret"));
        assert_ne!(sealed, sealer.seal("ep_1", "whsec_secret"), "fresh nonce each time");
        assert_eq!(sealer.open("ep_1", &sealed).unwrap(), "whsec_secret");
        assert!(sealer.open("ep_2", &sealed).is_err(), "bound to its row");
        assert!(Sealer::new(&[8; KEY_BYTES]).open("ep_1", &sealed).is_err(), "another key cannot open it");
        assert_eq!(sealer.open("ep_1", "whsec_plain").unwrap(), "whsec_plain", "unsealed values pass through");
    }
}
