//! Signing outbound webhooks and verifying signed ones.
//!
//! Schemes: Standard Webhooks (`webhook-signature: v1,<base64>` over `id.timestamp.body`),
//! Stripe-style (`Stripe-Signature: t=<unix>,v1=<hex>` over `timestamp.body`) and a plain
//! hex HMAC of the body in a named header. All comparisons are constant time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::{alphabet, Engine};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of every Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Key sizes we accept: Standard Webhooks asks for 24 to 64 bytes.
pub const SECRET_BYTES_MIN: usize = 24;
pub const SECRET_BYTES_MAX: usize = 64;
/// Bytes of a secret Hookline generates.
pub const SECRET_BYTES_GENERATED: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret must start with `whsec_`")]
    MissingPrefix,
    #[error("secret is not valid base64 after `whsec_`")]
    NotBase64,
    #[error("secret key must be {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes")]
    BadLength,
}

/// Standard base64 whether padded or not.
const B64_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An endpoint signing secret: the string as given (`whsec_…`) and its decoded key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs, not even through Debug.
        f.write_str("Secret(***)")
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = B64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if !(SECRET_BYTES_MIN..=SECRET_BYTES_MAX).contains(&key.len()) {
            return Err(SecretError::BadLength);
        }
        Ok(Secret { text: text.to_owned(), key })
    }

    /// A secret as another sender of Standard Webhooks may give it, read as the reference
    /// libraries read it: `whsec_` before the base64 optional, padding optional, a key of
    /// any length but none. `None` for one no signature could be made with.
    pub fn parse_sent(text: &str) -> Option<Secret> {
        let trimmed = text.trim();
        let encoded = trimmed.strip_prefix(SECRET_PREFIX).unwrap_or(trimmed);
        let key = B64_ANY_PADDING.decode(encoded).ok().filter(|key| !key.is_empty())?;
        Some(Secret { text: text.to_owned(), key })
    }

    /// A secret from fresh random bytes (the caller supplies the randomness).
    pub fn from_key(key: [u8; SECRET_BYTES_GENERATED]) -> Secret {
        Secret { text: format!("{SECRET_PREFIX}{}", B64.encode(key)), key: key.to_vec() }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A header name: an RFC 9110 token, what `http::HeaderName` accepts.
pub const HEADER_NAME_PATTERN: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// Headers Hookline sets on every delivery (or that the HTTP layer frames it with): an
/// endpoint's own headers, and its signature header, cannot be one of them.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "stripe-signature",
];

/// True for a [`RESERVED_HEADERS`] name, in any case.
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS.iter().any(|reserved| reserved.eq_ignore_ascii_case(name))
}

/// A JSON Schema pattern matching exactly the [`RESERVED_HEADERS`] names, in any case.
pub fn reserved_headers_pattern() -> String {
    let any_case = |name: &str| -> String {
        name.chars()
            .map(|c| match c {
                c if c.is_ascii_alphabetic() => format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase()),
                c => c.to_string(),
            })
            .collect()
    };
    let names: Vec<String> = RESERVED_HEADERS.iter().map(|name| any_case(name)).collect();
    format!("^(?:{})$", names.join("|"))
}

fn hmac_header_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A header name (an RFC 9110 token), not one Hookline sets.",
        "type": "string",
        "default": default_hmac_header(),
        "pattern": HEADER_NAME_PATTERN,
        "not": {"pattern": reserved_headers_pattern()},
    })
}

/// How an endpoint wants its deliveries signed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SignatureScheme {
    #[default]
    StandardWebhooks,
    /// `Stripe-Signature: t=<unix>,v1=<hex>`, keyed with the secret string as given,
    /// exactly as Stripe's libraries verify it.
    Stripe,
    /// Hex HMAC-SHA256 of the body, keyed with the secret string as given.
    #[serde(rename = "hmac-sha256-hex")]
    HmacSha256Hex {
        /// A header name (an RFC 9110 token), not one Hookline sets.
        #[serde(default = "default_hmac_header")]
        #[schemars(schema_with = "hmac_header_schema")]
        header: String,
    },
}

fn default_hmac_header() -> String {
    "X-Webhook-Signature".to_owned()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    mac_of(key, parts)
}

/// The MAC `M` of `parts`, keyed with `key`. Every MAC a verification computes is made here.
pub(crate) fn mac_of<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> M {
    #[cfg(test)]
    MACS_COMPUTED.with(|n| n.set(n.get() + 1));
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac
}

#[cfg(test)]
thread_local! {
    /// MACs computed on this thread, for tests that bound a verification's work.
    pub(crate) static MACS_COMPUTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Does the MAC `M` of `parts` under any of `keys` equal any of the `given` signatures?
/// Each key's MAC is computed once, however many signatures a header carries (a header of
/// thousands of empty `v1=` made one HMAC of the whole body each, seconds of a core for one
/// unsigned request); each comparison is constant time.
pub(crate) fn any_key_signed<'k, M: Mac + KeyInit>(
    keys: impl IntoIterator<Item = &'k [u8]>,
    parts: &[&[u8]],
    given: &[impl AsRef<[u8]>],
) -> bool {
    let expected: Vec<_> = keys.into_iter().map(|key| mac_of::<M>(key, parts).finalize().into_bytes()).collect();
    given.iter().any(|given| expected.iter().any(|mac| bool::from(mac.as_slice().ct_eq(given.as_ref()))))
}

/// `v1,<base64>` for one secret, Standard Webhooks style.
pub fn standard_signature(secret: &Secret, msg_id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let ts = timestamp_s.to_string();
    let mac = hmac(&secret.key, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

fn stripe_hex(secret_text: &str, timestamp_s: i64, body: &[u8]) -> String {
    let ts = timestamp_s.to_string();
    hex::encode(hmac(secret_text.as_bytes(), &[ts.as_bytes(), b".", body]).finalize().into_bytes())
}

/// `t=<unix>,v1=<hex>[,v1=<hex>…]`, one `v1` per secret, keyed with the secret text.
pub fn stripe_header(secret_texts: &[&str], timestamp_s: i64, body: &[u8]) -> String {
    let mut value = format!("t={timestamp_s}");
    for text in secret_texts {
        value.push_str(",v1=");
        value.push_str(&stripe_hex(text, timestamp_s, body));
    }
    value
}

/// The headers that sign one delivery. `secrets` are the endpoint's active secrets,
/// newest first; during a rotation every active secret signs (where the scheme allows).
/// `webhook-id` and `webhook-timestamp` are always sent so receivers can dedupe.
pub fn sign_headers(
    scheme: &SignatureScheme,
    msg_id: &str,
    timestamp_s: i64,
    body: &[u8],
    secrets: &[Secret],
) -> Vec<(String, String)> {
    let mut headers =
        vec![("webhook-id".to_owned(), msg_id.to_owned()), ("webhook-timestamp".to_owned(), timestamp_s.to_string())];
    match scheme {
        SignatureScheme::StandardWebhooks => {
            let all: Vec<String> = secrets.iter().map(|s| standard_signature(s, msg_id, timestamp_s, body)).collect();
            headers.push(("webhook-signature".to_owned(), all.join(" ")));
        }
        SignatureScheme::Stripe => {
            let texts: Vec<&str> = secrets.iter().map(Secret::as_str).collect();
            headers.push(("Stripe-Signature".to_owned(), stripe_header(&texts, timestamp_s, body)));
        }
        SignatureScheme::HmacSha256Hex { header } => {
            // A bare hex value has no room for a second signature, so the newest secret signs.
            if let Some(s) = secrets.first() {
                let mac = hmac(s.as_str().as_bytes(), &[body]).finalize().into_bytes();
                headers.push((header.clone(), hex::encode(mac)));
            }
        }
    }
    headers
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("a required signature header is missing")]
    MissingHeader,
    #[error("the signature header is malformed")]
    MalformedHeader,
    #[error("the timestamp is outside the tolerance window")]
    StaleTimestamp,
    #[error("no signature matches any active secret")]
    NoMatch,
}

/// Whether a timestamp is within `tolerance_s` of now, either way. Any `i64` a header
/// carries is compared without overflow.
pub fn within_tolerance(timestamp_s: i64, now_s: i64, tolerance_s: i64) -> bool {
    now_s.abs_diff(timestamp_s) <= tolerance_s.max(0) as u64
}

fn check_window(timestamp_s: i64, now_s: i64, tolerance_s: i64) -> Result<(), VerifyError> {
    match within_tolerance(timestamp_s, now_s, tolerance_s) {
        true => Ok(()),
        false => Err(VerifyError::StaleTimestamp),
    }
}

/// Verifies a Standard Webhooks signature header (space-separated `v1,<base64>` list).
pub fn verify_standard(
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    secrets: &[Secret],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| VerifyError::MalformedHeader)?;
    check_window(ts, now_s, tolerance_s)?;
    let ts = ts.to_string();
    let given: Vec<Vec<u8>> = signature_header
        .split_whitespace()
        .filter_map(|candidate| match candidate.split_once(',') {
            Some(("v1", encoded)) => B64.decode(encoded).ok(),
            _ => None,
        })
        .collect();
    let keys = secrets.iter().map(|secret| secret.key.as_slice());
    match any_key_signed::<HmacSha256>(keys, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body], &given) {
        true => Ok(()),
        false => Err(VerifyError::NoMatch),
    }
}

/// Verifies a `Stripe-Signature` header: any `v1` may match; other schemes are ignored.
/// Keys are the secret strings exactly as given.
pub fn verify_stripe(
    signature_header: &str,
    body: &[u8],
    secrets: &[&str],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in signature_header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<i64>().map_err(|_| VerifyError::MalformedHeader)?),
            Some(("v1", sig)) => signatures.push(sig),
            _ => {}
        }
    }
    let ts = timestamp.ok_or(VerifyError::MalformedHeader)?;
    if signatures.is_empty() {
        return Err(VerifyError::NoMatch);
    }
    // Stripe's libraries refuse only timestamps older than the tolerance, not future ones.
    if now_s.saturating_sub(ts) > tolerance_s {
        return Err(VerifyError::StaleTimestamp);
    }
    let ts_text = ts.to_string();
    let given: Vec<Vec<u8>> = signatures.into_iter().filter_map(|sig| hex::decode(sig).ok()).collect();
    let keys = secrets.iter().map(|secret| secret.as_bytes());
    match any_key_signed::<HmacSha256>(keys, &[ts_text.as_bytes(), b".", body], &given) {
        true => Ok(()),
        false => Err(VerifyError::NoMatch),
    }
}

#[cfg(test)]
mod tests;
