//! `hookline verify`: runs an inbound preset against a saved request, to debug a provider
//! setup (wrong secret, re-serialized body, clock skew) without sending anything.

use hookline_core::inbound::{verify, Preset, SourceConfig};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

pub struct Verdict {
    pub valid: bool,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("unknown preset `{0}`: use one of {names}", names = preset_names())]
    Preset(String),
    #[error("header `{0}` is not `Name: value`")]
    Header(String),
    #[error("--config is not valid preset options: {0}")]
    Config(String),
    #[error("cannot read the body: {0}")]
    Body(std::io::Error),
}

/// Every preset's name, as a source's `preset` takes it.
fn preset_names() -> String {
    let names: Vec<String> = Preset::ALL.iter().map(|p| serde_json::to_value(p).expect("a name").to_string()).collect();
    names.join(", ").replace('"', "")
}

pub fn run(
    preset: &str,
    secrets: &[String],
    body: &Path,
    headers: &[String],
    config: Option<&str>,
    now: Option<i64>,
) -> Result<Verdict, UsageError> {
    let preset: Preset = serde_json::from_value(serde_json::Value::String(preset.to_owned()))
        .map_err(|_| UsageError::Preset(preset.to_owned()))?;
    let config: SourceConfig = match config {
        Some(text) => serde_json::from_str(text).map_err(|e| UsageError::Config(e.to_string()))?,
        None => SourceConfig::default(),
    };
    let mut map = HashMap::new();
    for header in headers {
        let (name, value) = header.split_once(':').ok_or_else(|| UsageError::Header(header.clone()))?;
        map.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let bytes = if body == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map_err(UsageError::Body)?;
        bytes
    } else {
        std::fs::read(body).map_err(UsageError::Body)?
    };
    let now = now.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    });
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let lookup = |name: &str| map.get(name).map(String::as_str);
    Ok(match verify(preset, &config, &lookup, &bytes, &secrets, now) {
        Ok(found) => Verdict {
            valid: true,
            message: format!(
                "valid: event id {}, event type {}",
                found.event_id.as_deref().unwrap_or("(none)"),
                found.event_type.as_deref().unwrap_or("(none)")
            ),
        },
        Err(rejection) => Verdict { valid: false, message: format!("invalid: {}: {rejection}", rejection.code()) },
    })
}
