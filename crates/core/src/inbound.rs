//! Verifying provider webhooks (Stripe, Standard Webhooks/Svix, GitHub, Shopify, Recharge,
//! generic HMAC) over the exact raw body, and finding each event's id and type.
//! Pure: headers are looked up through a function, time is an argument.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::signature::{any_key_signed, mac_of, verify_standard, verify_stripe, within_tolerance, Secret, VerifyError};

/// Default replay window of presets that sign a timestamp.
pub const TOLERANCE_S_DEFAULT: i64 = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Stripe,
    StandardWebhooks,
    Github,
    Shopify,
    Recharge,
    Hmac,
    Adyen,
    Square,
    Paddle,
    Razorpay,
    Gocardless,
    Braintree,
    Checkout,
    CoinbaseCommerce,
}

impl Preset {
    pub const ALL: [Preset; 14] = [
        Preset::Stripe,
        Preset::StandardWebhooks,
        Preset::Github,
        Preset::Shopify,
        Preset::Recharge,
        Preset::Hmac,
        Preset::Adyen,
        Preset::Square,
        Preset::Paddle,
        Preset::Razorpay,
        Preset::Gocardless,
        Preset::Braintree,
        Preset::Checkout,
        Preset::CoinbaseCommerce,
    ];
}

/// Paddle's SDK refuses a signed timestamp more than 5 s away.
pub const PADDLE_TOLERANCE_S_DEFAULT: i64 = 5;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Sha256,
    Sha512,
}

/// Options of a source's preset. Every field is optional; presets fill in their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConfig {
    /// Replay window in seconds for presets that sign a timestamp (Stripe, Standard Webhooks, hmac with a timestamp header).
    #[serde(default, deserialize_with = "crate::exact::integer_option")]
    #[schemars(range(min = 1, max = 86_400))]
    pub tolerance_seconds: Option<i64>,
    /// Where the event id is: a header name...
    pub event_id_header: Option<String>,
    /// ...or a JSON pointer into the body (`/id`).
    pub event_id_pointer: Option<String>,
    /// ...or keys built from the request, tried in order: the first whose every placeholder
    /// is found is the event id. Placeholders: `{/json/pointer}` (a non-empty string or a
    /// number), `{header:Name}`, and `{body}` (the SHA-256 of the raw body, hex); other
    /// text is kept as written. A key over 256 bytes becomes `sha256:<hex of it>`.
    /// Takes precedence over the header, the pointer and the preset's own event id.
    #[schemars(length(min = 1, max = 8), inner(length(min = 1, max = 512)))]
    pub event_id_templates: Option<Vec<String>>,
    /// Where the event type is: a header name or a JSON pointer.
    pub event_type_header: Option<String>,
    pub event_type_pointer: Option<String>,
    /// hmac: the signature header (default `X-Signature`).
    pub signature_header: Option<String>,
    /// hmac: a prefix before the signature, such as `sha256=`.
    pub signature_prefix: Option<String>,
    /// hmac: `hex` (default) or `base64`.
    pub encoding: Option<Encoding>,
    /// hmac: `sha256` (default) or `sha512`.
    pub algorithm: Option<Algorithm>,
    /// hmac: the header carrying the signed timestamp, if any.
    pub timestamp_header: Option<String>,
    /// hmac: what is signed, with `{timestamp}` and `{body}` (default `{body}`).
    pub template: Option<String>,
    /// square: the notification URL exactly as registered with Square (it is signed).
    #[schemars(length(min = 1, max = 2048))]
    pub notification_url: Option<String>,
    /// braintree: the merchant's public key (the private key is the source's secret).
    #[schemars(length(min = 1, max = 256))]
    pub public_key: Option<String>,
}

/// What verification learned about an accepted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
}

/// Why a request was refused; the codes are stable (API errors, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the signature header is missing")]
    MissingSignature,
    #[error("the signature header is malformed")]
    MalformedSignature,
    #[error("the signature does not match any active secret")]
    BadSignature,
    #[error("the timestamp is outside the replay window")]
    StaleTimestamp,
    #[error(
        "the source lacks an option its preset needs (square: config.notificationUrl; braintree: config.publicKey; \
         standard-webhooks: a base64 secret; adyen: a hex HMAC key)"
    )]
    Misconfigured,
}

impl Rejection {
    pub fn code(self) -> &'static str {
        match self {
            Rejection::MissingSignature => "missing_signature",
            Rejection::MalformedSignature => "malformed_signature",
            Rejection::BadSignature => "bad_signature",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::Misconfigured => "source_misconfigured",
        }
    }
}

impl From<VerifyError> for Rejection {
    fn from(e: VerifyError) -> Rejection {
        match e {
            VerifyError::MissingHeader => Rejection::MissingSignature,
            VerifyError::MalformedHeader => Rejection::MalformedSignature,
            VerifyError::StaleTimestamp => Rejection::StaleTimestamp,
            VerifyError::NoMatch => Rejection::BadSignature,
        }
    }
}

type Headers<'a> = &'a dyn Fn(&str) -> Option<&'a str>;

/// Verifies a request for `preset` and finds its event id and type.
/// `secrets` are the source's active secrets as given (`whsec_…` for Stripe and Standard
/// Webhooks, the shared secret for the others).
pub fn verify(
    preset: Preset,
    config: &SourceConfig,
    headers: Headers<'_>,
    body: &[u8],
    secrets: &[&str],
    now_s: i64,
) -> Result<Verified, Rejection> {
    let tolerance = config.tolerance_seconds.unwrap_or(TOLERANCE_S_DEFAULT);
    let need = |name: &str| headers(name).ok_or(Rejection::MissingSignature);
    let json = Json::new(body);
    let (default_id, default_type): (Locator, Locator) = match preset {
        Preset::Stripe => {
            verify_stripe(need("stripe-signature")?, body, secrets, now_s, tolerance)?;
            STRIPE_EVENT
        }
        Preset::StandardWebhooks => {
            let prefix = if headers("webhook-signature").is_some() { "webhook" } else { "svix" };
            let id = need(&format!("{prefix}-id"))?;
            let keys: Vec<Secret> = secrets.iter().filter_map(|s| Secret::parse_sent(s)).collect();
            // No secret a key can be read from: the source's setup, not the request, is wrong.
            if keys.is_empty() {
                return Err(Rejection::Misconfigured);
            }
            let (ts, sig) = (need(&format!("{prefix}-timestamp"))?, need(&format!("{prefix}-signature"))?);
            verify_standard(id, ts, sig, body, &keys, now_s, tolerance)?;
            (Locator::Header(if prefix == "webhook" { "webhook-id" } else { "svix-id" }), Locator::Pointer("/type"))
        }
        Preset::Github => {
            let sig = need("x-hub-signature-256")?.strip_prefix("sha256=").ok_or(Rejection::MalformedSignature)?;
            let given = hex::decode(sig).map_err(|_| Rejection::MalformedSignature)?;
            any_hmac::<Hmac<Sha256>>(secrets, &[body], &[given])?;
            (Locator::BodyHash, Locator::Header("x-github-event"))
        }
        Preset::Shopify => {
            let given = B64.decode(need("x-shopify-hmac-sha256")?.trim()).map_err(|_| Rejection::MalformedSignature)?;
            any_hmac::<Hmac<Sha256>>(secrets, &[body], &[given])?;
            (Locator::BodyHash, Locator::Header("x-shopify-topic"))
        }
        Preset::Recharge => {
            // Recharge signs with a plain SHA-256 of the client secret followed by the body.
            let given =
                hex::decode(need("x-recharge-hmac-sha256")?.trim()).map_err(|_| Rejection::MalformedSignature)?;
            let matched = secrets.iter().any(|s| {
                let digest = Sha256::new().chain_update(s.as_bytes()).chain_update(body).finalize();
                digest.as_slice().ct_eq(&given).into()
            });
            if !matched {
                return Err(Rejection::BadSignature);
            }
            // SHA-256(secret ‖ body) can be extended: from one captured request, anyone who
            // guesses the secret's length can sign the body followed by SHA-256's padding and
            // bytes of their own, each a new event to the dedupe. Recharge sends JSON, which
            // that padding (a 0x80 byte) never is.
            if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
                return Err(Rejection::BadSignature);
            }
            (Locator::BodyHash, Locator::Header("x-recharge-topic"))
        }
        Preset::Hmac => {
            // Unless configured, keyed by what is signed (see `BodyHash`): with no id, one
            // captured request could be sent again as a new event for ever, or within the
            // replay window when a timestamp is signed. With the timestamp in the key, a body
            // sent again later under a new one (a heartbeat) is a new event.
            let signed = verify_generic(config, headers, body, secrets, now_s, tolerance)?;
            (Locator::Found(Some(signed)), Locator::None)
        }
        Preset::Adyen => {
            verify_adyen(body, secrets)?;
            let item = "/notificationItems/0/NotificationRequestItem";
            (Locator::Templates(ADYEN_EVENT_ID), Locator::Found(json.text_at(&format!("{item}/eventCode"))))
        }
        Preset::Square => {
            let given =
                B64.decode(need("x-square-hmacsha256-signature")?.trim()).map_err(|_| Rejection::MalformedSignature)?;
            let url = config.notification_url.as_deref().ok_or(Rejection::Misconfigured)?;
            any_hmac::<Hmac<Sha256>>(secrets, &[url.as_bytes(), body], &[given])?;
            (Locator::Pointer("/event_id"), Locator::Pointer("/type"))
        }
        Preset::Paddle => {
            verify_paddle(need("paddle-signature")?, body, secrets, now_s, config.tolerance_seconds)?;
            (Locator::Pointer("/event_id"), Locator::Pointer("/event_type"))
        }
        Preset::Razorpay => {
            hex_hmac_of_body(need("x-razorpay-signature")?, body, secrets)?;
            (Locator::BodyHash, Locator::Pointer("/event"))
        }
        Preset::Gocardless => {
            hex_hmac_of_body(need("webhook-signature")?, body, secrets)?;
            (Locator::Pointer("/meta/webhook_id"), Locator::None)
        }
        Preset::Braintree => {
            let (payload, kind) = verify_braintree(config.public_key.as_deref(), body, secrets)?;
            // Keyed by what is signed: the form around it may carry other fields or encode
            // the payload otherwise, each a different body for the same event.
            (Locator::Found(Some(sha256_key(&payload))), Locator::Found(kind))
        }
        Preset::Checkout => {
            hex_hmac_of_body(need("cko-signature")?, body, secrets)?;
            (Locator::Pointer("/id"), Locator::Pointer("/type"))
        }
        Preset::CoinbaseCommerce => {
            hex_hmac_of_body(need("x-cc-webhook-signature")?, body, secrets)?;
            (Locator::Pointer("/event/id"), Locator::Pointer("/event/type"))
        }
    };
    Ok(identify(config, (default_id, default_type), headers, &json))
}

/// Where a Stripe event's id and type are: its body's `id` and `type`.
const STRIPE_EVENT: (Locator, Locator) = (Locator::Pointer("/id"), Locator::Pointer("/type"));

/// A Stripe event read from Stripe's events API (no request, no signature): its id and type
/// as a webhook carrying it would have them under `config`, so that reconciliation dedupes
/// against the webhooks by the same key. A setting that reads a header finds nothing here.
pub fn stripe_event_identity(config: &SourceConfig, event: &[u8]) -> Verified {
    identify(config, STRIPE_EVENT, &|_| None, &Json::new(event))
}

/// The event id and type: the source's settings, else the preset's `defaults`.
fn identify(config: &SourceConfig, defaults: (Locator, Locator), headers: Headers<'_>, json: &Json<'_>) -> Verified {
    let (default_id, default_type) = defaults;
    let id = match &config.event_id_templates {
        Some(templates) => from_templates(templates, headers, json),
        None => {
            locate(config.event_id_header.as_deref(), config.event_id_pointer.as_deref(), default_id, headers, json)
                .and_then(bounded_key)
        }
    };
    let kind =
        locate(config.event_type_header.as_deref(), config.event_type_pointer.as_deref(), default_type, headers, json)
            .filter(|kind| kind.len() <= KEY_BYTES_MAX);
    Verified { event_id: id, event_type: kind }
}

/// Verifies a generic `hmac` request; answers the SHA-256 key of what was signed.
fn verify_generic(
    config: &SourceConfig,
    headers: Headers<'_>,
    body: &[u8],
    secrets: &[&str],
    now_s: i64,
    tolerance: i64,
) -> Result<String, Rejection> {
    // A timestamp checked but not signed is no defence against replays (a captured request
    // passes again with a fresh timestamp), and one signed but not read signs nothing: the
    // two go together, as Square's and Braintree's needed options are checked here too.
    let signs_timestamp = config.template.as_deref().is_some_and(|t| t.contains("{timestamp}"));
    if config.timestamp_header.is_some() != signs_timestamp {
        return Err(Rejection::Misconfigured);
    }
    let header = config.signature_header.as_deref().unwrap_or("x-signature").to_ascii_lowercase();
    let raw = headers(&header).ok_or(Rejection::MissingSignature)?.trim();
    let sig = match &config.signature_prefix {
        Some(prefix) => raw.strip_prefix(prefix.as_str()).ok_or(Rejection::MalformedSignature)?,
        None => raw,
    };
    let given = match config.encoding.unwrap_or_default() {
        Encoding::Hex => hex::decode(sig).map_err(|_| Rejection::MalformedSignature)?,
        Encoding::Base64 => B64.decode(sig).map_err(|_| Rejection::MalformedSignature)?,
    };
    let timestamp = match &config.timestamp_header {
        Some(name) => {
            let text = headers(&name.to_ascii_lowercase()).ok_or(Rejection::MissingSignature)?.trim();
            let ts: i64 = text.parse().map_err(|_| Rejection::MalformedSignature)?;
            if !within_tolerance(ts, now_s, tolerance) {
                return Err(Rejection::StaleTimestamp);
            }
            text.to_owned()
        }
        None => String::new(),
    };
    let template = config.template.as_deref().unwrap_or("{body}");
    let (before, after) = template.split_once("{body}").unwrap_or((template, ""));
    let (before, after) = (before.replace("{timestamp}", &timestamp), after.replace("{timestamp}", &timestamp));
    let parts: [&[u8]; 3] = [before.as_bytes(), body, after.as_bytes()];
    match config.algorithm.unwrap_or_default() {
        Algorithm::Sha256 => any_hmac::<Hmac<Sha256>>(secrets, &parts, &[given])?,
        Algorithm::Sha512 => any_hmac::<Hmac<Sha512>>(secrets, &parts, &[given])?,
    }
    let signed = parts.iter().fold(Sha256::new(), |digest, part| digest.chain_update(part)).finalize();
    Ok(format!("sha256:{}", hex::encode(signed)))
}

/// Does any secret's HMAC of `parts` equal one of `given` (`any_key_signed`)?
fn any_hmac<M: Mac + KeyInit>(secrets: &[&str], parts: &[&[u8]], given: &[impl AsRef<[u8]>]) -> Result<(), Rejection> {
    match any_key_signed::<M>(secrets.iter().map(|secret| secret.as_bytes()), parts, given) {
        true => Ok(()),
        false => Err(Rejection::BadSignature),
    }
}

enum Locator {
    Header(&'static str),
    Pointer(&'static str),
    /// The first of these templates that resolves (see `from_templates`).
    Templates(&'static [&'static str]),
    /// Found while verifying.
    Found(Option<String>),
    /// `sha256:<hex>` of the raw body: the default of presets whose signature covers no id
    /// (GitHub's, Shopify's and Razorpay's come in headers nobody signs; Recharge and
    /// Braintree send none; a generic `hmac` source keys by what it signs, its timestamp
    /// included). A header id would let anyone holding one captured request
    /// pass its signed body again as a new event under a fresh id; a provider's own retry
    /// sends the same body, so the hash finds it as the header would.
    BodyHash,
    None,
}

/// Adyen sends no event id: its event code, PSP reference and outcome name one event
/// (a chargeback reuses the payment's PSP reference, so the reference alone does not).
const ADYEN_EVENT_ID: &[&str] = &[
    "{/notificationItems/0/NotificationRequestItem/eventCode}:\
    {/notificationItems/0/NotificationRequestItem/pspReference}:{/notificationItems/0/NotificationRequestItem/success}",
];

/// A request body, parsed as JSON at most once however many pointers are read from it
/// (an event's id and its type are two).
struct Json<'a> {
    body: &'a [u8],
    parsed: std::cell::OnceCell<Option<serde_json::Value>>,
}

impl<'a> Json<'a> {
    fn new(body: &'a [u8]) -> Json<'a> {
        Json { body, parsed: std::cell::OnceCell::new() }
    }

    /// The string (or number, as text) at a JSON pointer; `None` if the body is not JSON.
    fn text_at(&self, pointer: &str) -> Option<String> {
        let parsed = self.parsed.get_or_init(|| serde_json::from_slice(self.body).ok());
        match parsed.as_ref()?.pointer(pointer)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A hex HMAC-SHA256 of the raw body, keyed with the secret as written (Razorpay,
/// GoCardless, Checkout.com, Coinbase Commerce).
/// Their libraries compare lowercase hex text, so uppercase hex does not match.
fn hex_hmac_of_body(header: &str, body: &[u8], secrets: &[&str]) -> Result<(), Rejection> {
    let header = header.trim();
    let given = hex::decode(header).map_err(|_| Rejection::MalformedSignature)?;
    if header.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(Rejection::BadSignature);
    }
    any_hmac::<Hmac<Sha256>>(secrets, &[body], &[given])
}

/// Adyen signs fields of each notification item, not the bytes: HMAC-SHA256 (hex key) of
/// `pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:
/// eventCode:success`, base64, in the item's `additionalData.hmacSignature`. Values are
/// written as Adyen's library writes them (Python's `str`); a missing one is empty. Every
/// item must be signed: the whole body is forwarded, so one unsigned item beside a signed
/// one (replayed, Adyen's items carry no timestamp) would pass unverified.
fn verify_adyen(body: &[u8], secrets: &[&str]) -> Result<(), Rejection> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| Rejection::MissingSignature)?;
    let items = value.get("notificationItems").and_then(|items| items.as_array()).ok_or(Rejection::MissingSignature)?;
    if items.is_empty() {
        return Err(Rejection::MissingSignature);
    }
    let keys: Vec<Vec<u8>> =
        secrets.iter().filter_map(|s| hex::decode(s.trim()).ok()).filter(|key| !key.is_empty()).collect();
    // No secret is a hex key: the source's setup, not the request, is wrong.
    if keys.is_empty() {
        return Err(Rejection::Misconfigured);
    }
    for item in items {
        let item = item.get("NotificationRequestItem").ok_or(Rejection::MissingSignature)?;
        verify_adyen_item(item, &keys)?;
    }
    Ok(())
}

fn verify_adyen_item(item: &serde_json::Value, keys: &[Vec<u8>]) -> Result<(), Rejection> {
    let signature =
        item.pointer("/additionalData/hmacSignature").and_then(|s| s.as_str()).ok_or(Rejection::MissingSignature)?;
    let given = B64.decode(signature.trim()).map_err(|_| Rejection::MalformedSignature)?;
    let text = |v: Option<&serde_json::Value>| match v {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Bool(b)) => if *b { "True" } else { "False" }.to_owned(),
        Some(serde_json::Value::Null) => "None".to_owned(),
        Some(other) => other.to_string(),
    };
    let fields = [
        text(item.get("pspReference")),
        text(item.get("originalReference")),
        text(item.get("merchantAccountCode")),
        text(item.get("merchantReference")),
        text(item.pointer("/amount/value")),
        text(item.pointer("/amount/currency")),
        text(item.get("eventCode")),
        text(item.get("success")),
    ];
    let signed = fields.join(":");
    let matches = |key: &Vec<u8>| mac_of::<Hmac<Sha256>>(key, &[signed.as_bytes()]).verify_slice(&given).is_ok();
    if keys.iter().any(matches) {
        Ok(())
    } else {
        Err(Rejection::BadSignature)
    }
}

/// Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=…]`, hex HMAC-SHA256 of
/// `<ts>:<body>` keyed with the whole secret (`pdl_ntfset_…`) as written.
fn verify_paddle(
    header: &str,
    body: &[u8],
    secrets: &[&str],
    now_s: i64,
    tolerance: Option<i64>,
) -> Result<(), Rejection> {
    let mut ts = None;
    let mut signatures = Vec::new();
    for part in header.split(';') {
        match part.trim().split_once('=') {
            Some(("ts", value)) => ts = Some(value),
            // A value that is not hex matches nothing, as in Paddle's SDK.
            Some(("h1", value)) => signatures.extend(hex::decode(value).ok()),
            _ => return Err(Rejection::MalformedSignature),
        }
    }
    let ts_text = ts.ok_or(Rejection::MalformedSignature)?;
    let ts: i64 = ts_text.parse().map_err(|_| Rejection::MalformedSignature)?;
    if !header.contains("h1=") {
        return Err(Rejection::MalformedSignature);
    }
    if !within_tolerance(ts, now_s, tolerance.unwrap_or(PADDLE_TOLERANCE_S_DEFAULT)) {
        return Err(Rejection::StaleTimestamp);
    }
    let prefix = format!("{ts_text}:");
    any_hmac::<Hmac<Sha256>>(secrets, &[prefix.as_bytes(), body], &signatures)
}

/// Braintree posts a form with `bt_signature` (`public_key|hex` pairs joined by `&`) and
/// `bt_payload` (base64 XML): hex HMAC-SHA1 of the payload (or the payload and a newline),
/// keyed with the SHA-1 of the private key (the source's secret). Returns the payload's
/// XML and its `<kind>`.
fn verify_braintree(
    public_key: Option<&str>,
    body: &[u8],
    secrets: &[&str],
) -> Result<(Vec<u8>, Option<String>), Rejection> {
    let public_key = public_key.ok_or(Rejection::Misconfigured)?;
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    // A field given twice is refused: the raw body is forwarded, and a receiver's form
    // parser may read the copy that was not verified (many take the last).
    let field = |name: &str| {
        let mut found = form.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        match (found.next(), found.next()) {
            (Some(value), None) => Ok(value),
            (None, _) => Err(Rejection::MissingSignature),
            (Some(_), Some(_)) => Err(Rejection::MalformedSignature),
        }
    };
    let (signature, payload) = (field("bt_signature")?, field("bt_payload")?);
    if !payload.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=/\n".contains(&b)) {
        return Err(Rejection::MalformedSignature);
    }
    let given = signature
        .split('&')
        .filter_map(|pair| pair.split_once('|'))
        .find(|(key, _)| *key == public_key)
        .ok_or(Rejection::BadSignature)?
        .1;
    let given = hex::decode(given).map_err(|_| Rejection::MalformedSignature)?;
    let with_newline = format!("{payload}\n");
    let matched = secrets.iter().any(|secret| {
        let key = sha1::Sha1::digest(secret.as_bytes());
        [payload, with_newline.as_str()]
            .iter()
            .any(|signed| mac_of::<Hmac<sha1::Sha1>>(&key, &[signed.as_bytes()]).verify_slice(&given).is_ok())
    });
    if !matched {
        return Err(Rejection::BadSignature);
    }
    let xml = B64.decode(payload.replace('\n', "")).map_err(|_| Rejection::MalformedSignature)?;
    let kind = String::from_utf8_lossy(&xml)
        .split_once("<kind>")
        .and_then(|(_, rest)| rest.split_once("</kind>"))
        .map(|(kind, _)| kind.trim().to_owned());
    Ok((xml, kind))
}

fn locate(
    header: Option<&str>,
    pointer: Option<&str>,
    default: Locator,
    headers: Headers<'_>,
    json: &Json<'_>,
) -> Option<String> {
    let found = match (header, pointer, default) {
        (Some(h), _, _) => headers(&h.to_ascii_lowercase()).map(str::to_owned),
        (None, Some(p), _) => json.text_at(p),
        (None, None, Locator::Header(h)) => headers(h).map(str::to_owned),
        (None, None, Locator::Pointer(p)) => json.text_at(p),
        (None, None, Locator::Templates(templates)) => {
            let templates: Vec<String> = templates.iter().map(|t| (*t).to_owned()).collect();
            from_templates(&templates, headers, json)
        }
        (None, None, Locator::Found(value)) => value,
        (None, None, Locator::BodyHash) => Some(sha256_key(json.body)),
        (None, None, Locator::None) => None,
    };
    found.filter(|s| !s.is_empty())
}

/// The longest event id kept as it is, and the longest event type kept at all.
const KEY_BYTES_MAX: usize = 256;

/// An event id as a dedupe key: a longer one becomes `sha256:<hex of it>` (dropped, every
/// retry of its event would pass as new), an empty one none.
fn bounded_key(key: String) -> Option<String> {
    match key.len() {
        0 => None,
        1..=KEY_BYTES_MAX => Some(key),
        _ => Some(sha256_key(key.as_bytes())),
    }
}

/// `sha256:<hex>` of `bytes`: a body's key, or a key too long to keep as it is.
fn sha256_key(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One part of an event-id template: text kept as written, a JSON pointer into the body,
/// a request header, or the SHA-256 of the whole body.
#[derive(Debug, PartialEq, Eq)]
enum Part<'a> {
    Text(&'a str),
    Pointer(&'a str),
    Header(&'a str),
    BodyHash,
}

/// Splits a template into its parts: `{/json/pointer}`, `{header:Name}` and `{body}` are
/// placeholders; anything else, braces included, is text.
fn parts(template: &str) -> Vec<Part<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else { break };
        let inner = &rest[open + 1..close];
        let placeholder = if inner.starts_with('/') {
            Some(Part::Pointer(inner))
        } else if let Some(name) = inner.strip_prefix("header:").filter(|n| !n.is_empty()) {
            Some(Part::Header(name))
        } else if inner == "body" {
            Some(Part::BodyHash)
        } else {
            None
        };
        match placeholder {
            Some(part) => {
                if open > 0 {
                    out.push(Part::Text(&rest[..open]));
                }
                out.push(part);
                rest = &rest[close + 1..];
            }
            None => {
                out.push(Part::Text(&rest[..=open]));
                rest = &rest[open + 1..];
            }
        }
    }
    if !rest.is_empty() {
        out.push(Part::Text(rest));
    }
    out
}

/// The event id from the first template whose every placeholder is found (a non-empty
/// string or a number); a key longer than 256 bytes becomes `sha256:<hex of it>`.
fn from_templates(templates: &[String], headers: Headers<'_>, json: &Json<'_>) -> Option<String> {
    let pointer = |p: &str| json.text_at(p).filter(|text| !text.is_empty());
    let key = templates.iter().find_map(|template| {
        parts(template).into_iter().try_fold(String::new(), |mut key, part| {
            match part {
                Part::Text(text) => key.push_str(text),
                Part::Pointer(p) => key.push_str(&pointer(p)?),
                Part::Header(name) => key.push_str(headers(&name.to_ascii_lowercase()).filter(|v| !v.is_empty())?),
                Part::BodyHash => key.push_str(&hex::encode(Sha256::digest(json.body))),
            }
            Some(key)
        })
    })?;
    bounded_key(key)
}

#[cfg(test)]
mod tests;
