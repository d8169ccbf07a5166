//! Builds the configuration: defaults, then the config file, then `HOOKLINE_*`
//! environment variables, then command-line flags. Unknown keys and bad values are errors.

use hookline_server::config::Config;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Flags that override everything else.
#[derive(Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<std::path::PathBuf>,
    pub dev: bool,
    pub database_url: Option<String>,
    /// The open-file limit the process has (after raising it): `server.max_connections`
    /// and `delivery.max_in_flight` that nobody set are sized to fit it.
    pub open_files: Option<u64>,
}

/// File descriptors kept back from connections and deliveries: the database, the log, the
/// listener, the resolver.
pub const FILES_RESERVED: u64 = 256;

/// `(server.max_connections, delivery.max_in_flight)` that fit `open_files` descriptors: at
/// most the defaults (10,000 and 20,000), a third of what is left to connections, the
/// rest to deliveries. A value someone set (`connections`, `in_flight`) is kept, and the
/// other gets what it leaves.
pub fn sized_for(open_files: u64, connections: Option<u64>, in_flight: Option<u64>) -> (usize, usize) {
    let budget = open_files.saturating_sub(FILES_RESERVED);
    let connections =
        connections.unwrap_or_else(|| (budget / 3).min(budget.saturating_sub(in_flight.unwrap_or(0))).clamp(1, 10_000));
    let in_flight = in_flight.unwrap_or_else(|| budget.saturating_sub(connections).clamp(1, 20_000));
    (connections as usize, in_flight as usize)
}

/// Environment shortcuts kept from the command-line reference.
const SHORTCUTS: &[(&str, &str, &str)] = &[
    ("HOOKLINE_LISTEN", "server", "listen"),
    ("HOOKLINE_DATA_DIR", "server", "data_dir"),
    ("HOOKLINE_ADMIN_TOKEN", "api", "admin_token"),
];

pub fn load(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: Overrides,
) -> Result<Config, SettingsError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| SettingsError::Read { path: path.display().to_string(), source })?;
            text.parse::<toml::Table>().map_err(|e| SettingsError::Parse {
                path: path.display().to_string(),
                message: describe(&e, &text, true),
            })?
        }
        None => toml::Table::new(),
    };
    for (section, key) in known_keys() {
        let name = format!("HOOKLINE_{}_{}", section.to_uppercase(), key.to_uppercase());
        if let Some(raw) = env(&name) {
            let value = match env_value(&raw) {
                // A token of digits is still a token.
                value if !value.is_str() && TEXT_ONLY.contains(&(section.as_str(), key.as_str())) => {
                    toml::Value::String(raw)
                }
                value => value,
            };
            set(&mut table, &section, &key, value);
        }
    }
    for (name, section, key) in SHORTCUTS {
        if let Some(raw) = env(name) {
            set(&mut table, section, key, toml::Value::String(raw));
        }
    }
    if let Some(listen) = overrides.listen {
        set(&mut table, "server", "listen", toml::Value::String(listen));
    }
    if let Some(dir) = overrides.data_dir {
        set(&mut table, "server", "data_dir", toml::Value::String(dir.display().to_string()));
    }
    if let Some(url) = overrides.database_url {
        set(&mut table, "database", "url", toml::Value::String(url));
    }
    if overrides.dev {
        set(&mut table, "server", "dev", toml::Value::Boolean(true));
    }
    if let Some(open_files) = overrides.open_files {
        let given = |section: &str, key: &str| {
            let value = table.get(section).and_then(|s| s.get(key)).and_then(toml::Value::as_integer);
            value.and_then(|v| u64::try_from(v).ok())
        };
        let (connections, in_flight) =
            sized_for(open_files, given("server", "max_connections"), given("delivery", "max_in_flight"));
        set_default(&mut table, "server", "max_connections", toml::Value::Integer(connections as i64));
        set_default(&mut table, "delivery", "max_in_flight", toml::Value::Integer(in_flight as i64));
    }
    // Deserializing from text, not from the table, makes errors point at the key and value.
    let merged = toml::to_string(&table).map_err(|e| SettingsError::Invalid(e.to_string()))?;
    // Line numbers are left out: they count lines of the merged settings, not of the file.
    let config: Config =
        toml::from_str(&merged).map_err(|e: toml::de::Error| SettingsError::Invalid(describe(&e, &merged, false)))?;
    config.validate().map_err(SettingsError::Invalid)?;
    // Checked here, where the filter is built: an unreadable one was replaced by `info`.
    tracing_subscriber::EnvFilter::try_new(&config.log.level).map_err(|e| {
        SettingsError::Invalid(format!("log.level must be a tracing filter such as `info` or `hookline=debug`: {e}"))
    })?;
    Ok(config)
}

/// Keys whose value is text only: an environment value for them is never read as TOML.
const TEXT_ONLY: &[(&str, &str)] = &[
    ("api", "admin_token"),
    ("api", "public_url"),
    ("security", "secret_key"),
    ("cluster", "node_name"),
    ("metrics", "token"),
    ("alerts", "smtp_url"),
    ("database", "url"),
];

/// Keys whose values an error never repeats: tokens, keys and URLs (which may hold a
/// password). Errors go to stderr, and so to the journal.
const SECRET_KEYS: &[&str] =
    &["admin_token", "secret_key", "token", "smtp_url", "url", "api_key", "broker_credentials"];

/// Sections (and the sections below them) all of whose values may be secrets: broker
/// credentials (`"host:port" = "user:password"`), and the queue consumers' settings, whose
/// URLs hold passwords (an environment value that is not TOML, taken as one string, carries
/// them under the consumer's key).
const SECRET_SECTIONS: &[&str] = &["delivery.broker_credentials", "ingest"];

fn secret_section(section: &str) -> bool {
    SECRET_SECTIONS.iter().any(|s| section == *s || section.strip_prefix(s).is_some_and(|rest| rest.starts_with('.')))
}

/// A TOML error in `text` as one line: where (the line, for a syntax error in the user's
/// own file) and which `section.key`, then the reason. The offending line itself is never
/// quoted, since it may hold a secret under any name (a misspelt key, a password in a
/// URL), and a value the reason quotes (serde's "invalid type: integer `…`") is hidden for
/// a secret's key; a syntax error's reason names only the tokens expected.
fn describe(error: &toml::de::Error, text: &str, syntax: bool) -> String {
    let reason = error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    let Some(at) = error.span().map(|span| span.start.min(text.len())) else {
        return reason;
    };
    let before = &text[..at];
    let number = before.matches('\n').count() + 1;
    let line = text.lines().nth(number - 1).unwrap_or_default();
    let section = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = line.split_once('=').map(|(key, _)| key.trim().trim_matches('"').to_owned()).filter(|k| !k.is_empty());
    let secret =
        key.as_deref().is_some_and(|k| SECRET_KEYS.contains(&k)) || section.as_deref().is_some_and(secret_section);
    let reason = if secret && !syntax { without_quoted(&reason) } else { reason };
    let place = match (section, key) {
        (Some(section), Some(key)) if !secret_section(&section) => format!("{section}.{key}"),
        (Some(section), _) => section,
        (None, Some(key)) => key,
        (None, None) => String::new(),
    };
    let mut out = String::new();
    if syntax {
        out.push_str(&format!("line {number}: "));
    }
    if !place.is_empty() {
        out.push_str(&format!("{place}: "));
    }
    out + &reason
}

/// `text` with every piece in backticks or double quotes (how serde quotes a value) hidden;
/// a double-quoted piece is Rust's debug form of a string, whose `\"` does not close it.
fn without_quoted(text: &str) -> String {
    let mut out = String::new();
    let mut open: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        match open {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => open = None,
            Some(_) => {}
            None if c == '`' || c == '"' => {
                open = Some(c);
                out.push_str("(hidden)");
            }
            None => out.push(c),
        }
    }
    out
}

/// Every `(section, key)` of the config, read off the defaults (plus optional keys).
fn known_keys() -> Vec<(String, String)> {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
    let mut keys: Vec<(String, String)> = defaults
        .iter()
        .filter_map(|(section, value)| value.as_table().map(|t| (section, t)))
        .flat_map(|(section, t)| t.keys().map(move |k| (section.clone(), k.clone())))
        .collect();
    // Optional keys: the defaults leave them out.
    keys.push(("server".into(), "threads".into()));
    keys.push(("delivery".into(), "threads".into()));
    keys.push(("api".into(), "admin_token".into()));
    keys.push(("api".into(), "public_url".into()));
    keys.push(("security".into(), "secret_key".into()));
    keys.push(("cluster".into(), "node_name".into()));
    keys.push(("metrics".into(), "token".into()));
    keys.push(("alerts".into(), "smtp_url".into()));
    keys
}

/// An environment value is TOML when it parses as such (`15000`, `true`, `["10.0.0.0/8"]`),
/// and a plain string otherwise.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Sets a key that no layer set.
fn set_default(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let given = table.get(section).and_then(|s| s.as_table()).is_some_and(|s| s.contains_key(key));
    if !given {
        set(table, section, key, value);
    }
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table.entry(section.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(section) = entry {
        section.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load_with(file: Option<&str>, vars: &[(&str, &str)], overrides: Overrides) -> Result<Config, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookline.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load(file.map(|_| path.as_path()), &|name| vars.get(name).cloned(), overrides)
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = load_with(None, &[], Overrides::default()).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8071");
        assert_eq!(c.server.data_dir, std::path::PathBuf::from("./hookline-data"));
        assert_eq!(c.delivery.request_timeout_ms, 30_000);
    }

    /// The template names every setting (those without a default commented out).
    #[test]
    fn the_example_file_names_every_setting() {
        let example = include_str!("../hookline.example.toml");
        let mut named = std::collections::HashSet::new();
        let mut section = String::new();
        for line in example.lines().map(|l| l.trim_start_matches('#').trim()) {
            if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = header.trim_matches(|c| c == '[' || c == ']').to_owned();
            } else if let Some((key, _)) = line.split_once('=') {
                named.insert((section.clone(), key.trim().to_owned()));
            }
        }
        let ingest = ["redis", "amqp", "nats"].map(|kind| ("ingest".to_owned(), kind.to_owned()));
        let missing: Vec<_> = known_keys().into_iter().filter(|k| !named.contains(k) && !ingest.contains(k)).collect();
        assert!(missing.is_empty(), "not in hookline.example.toml: {missing:?}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let example = include_str!("../hookline.example.toml");
        let from_file = load_with(Some(example), &[], Overrides::default()).unwrap();
        let defaults = Config::default();
        assert_eq!(toml::to_string(&from_file).unwrap(), toml::to_string(&defaults).unwrap());
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let file = "[server]\nlisten = \"127.0.0.1:1\"\n[delivery]\nrequest_timeout_ms = 5000\n";
        let vars = [
            ("HOOKLINE_DELIVERY_REQUEST_TIMEOUT_MS", "15000"),
            ("HOOKLINE_LISTEN", "127.0.0.1:2"),
            ("HOOKLINE_NETWORK_ALLOW", "[\"10.0.0.0/8\"]"),
        ];
        let flags = Overrides { listen: Some("127.0.0.1:3".into()), dev: true, ..Default::default() };
        let c = load_with(Some(file), &vars, flags).unwrap();
        assert_eq!(c.delivery.request_timeout_ms, 15_000);
        assert_eq!(c.server.listen, "127.0.0.1:3");
        assert!(c.server.dev);
        assert_eq!(c.network.allow.len(), 1);
        let token = load_with(None, &[("HOOKLINE_ADMIN_TOKEN", "s3cret")], Overrides::default()).unwrap();
        assert_eq!(token.api.admin_token.as_deref(), Some("s3cret"));
        // A secret file's newline is not part of the token: no request could carry it.
        let vars = [("HOOKLINE_ADMIN_TOKEN", " s3cret\n"), ("HOOKLINE_METRICS_TOKEN", "scrape\r\n")];
        let token = load_with(None, &vars, Overrides::default()).unwrap();
        assert_eq!(
            (token.api.admin_token.as_deref(), token.metrics.token.as_deref()),
            (Some("s3cret"), Some("scrape"))
        );
        // A token of digits is text, not a number the string setting refuses.
        for name in ["HOOKLINE_API_ADMIN_TOKEN", "HOOKLINE_METRICS_TOKEN"] {
            let digits = load_with(None, &[(name, "8675309123")], Overrides::default()).unwrap();
            let set = [digits.api.admin_token.as_deref(), digits.metrics.token.as_deref()];
            assert!(set.contains(&Some("8675309123")), "{name}");
        }
        let policy = load_with(None, &[("HOOKLINE_DELIVERY_RETRY_POLICY", "stripe")], Overrides::default()).unwrap();
        assert_eq!(
            policy.delivery.retry_policy,
            hookline_core::retry::RetryPolicy::Preset(hookline_core::retry::Preset::Stripe)
        );
    }

    /// Every key the README's configuration table lists can be set from the environment,
    /// as the README says; an optional key (no default) was read only if listed by hand.
    #[test]
    fn every_documented_key_has_an_environment_variable() {
        let readme = include_str!("../../../README.md");
        let known = known_keys();
        let documented: Vec<(&str, &str)> = readme
            .lines()
            .filter_map(|line| line.strip_prefix("| `")?.split_once('`'))
            .filter_map(|(key, _)| key.split_once('.'))
            .filter(|(section, _)| known.iter().any(|(s, _)| s == section))
            .collect();
        assert!(documented.len() > 40, "the table was found: {documented:?}");
        for (section, key) in documented {
            assert!(known.iter().any(|(s, k)| s == section && k == key), "{section}.{key}");
        }
        let c = load_with(
            None,
            &[("HOOKLINE_SERVER_THREADS", "3"), ("HOOKLINE_DELIVERY_THREADS", "0")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!((c.server.threads, c.delivery.threads), (Some(3), Some(0)));
    }

    #[test]
    fn unset_connection_and_delivery_caps_fit_the_open_file_limit() {
        // (open files, expected (max_connections, max_in_flight))
        let cases = [
            (1_048_576, (10_000, 20_000)),
            (30_256, (10_000, 20_000)),
            (20_000, (6_581, 13_163)),
            (4_096, (1_280, 2_560)),
            (1_024, (256, 512)),
            (100, (1, 1)),
        ];
        for (open_files, expected) in cases {
            let (connections, in_flight) = sized_for(open_files, None, None);
            assert_eq!((connections, in_flight), expected, "{open_files}");
            assert!(open_files < 258 || (connections + in_flight) as u64 + FILES_RESERVED <= open_files);
            let sized = Overrides { open_files: Some(open_files), ..Default::default() };
            let c = load_with(None, &[], sized).unwrap();
            assert_eq!((c.server.max_connections, c.delivery.max_in_flight), expected);
        }
        // What a person set is kept, whatever the limit: the start-up warning is then theirs.
        let file = "[server]\nmax_connections = 50\n";
        let vars = [("HOOKLINE_DELIVERY_MAX_IN_FLIGHT", "30000")];
        let c = load_with(Some(file), &vars, Overrides { open_files: Some(4_096), ..Default::default() }).unwrap();
        assert_eq!((c.server.max_connections, c.delivery.max_in_flight), (50, 30_000));
        // One set: the other gets what it leaves, so the two still fit.
        let limit = Overrides { open_files: Some(20_000), ..Default::default() };
        let c = load_with(None, &[("HOOKLINE_SERVER_MAX_CONNECTIONS", "10000")], limit).unwrap();
        assert_eq!((c.server.max_connections, c.delivery.max_in_flight), (10_000, 9_744));
        let limit = Overrides { open_files: Some(20_000), ..Default::default() };
        let c = load_with(None, &[("HOOKLINE_DELIVERY_MAX_IN_FLIGHT", "18000")], limit).unwrap();
        assert_eq!((c.server.max_connections, c.delivery.max_in_flight), (1_744, 18_000));
        let defaults = load_with(None, &[], Overrides::default()).unwrap();
        assert_eq!((defaults.server.max_connections, defaults.delivery.max_in_flight), (10_000, 20_000));
    }

    #[test]
    fn bad_config_is_an_error_naming_the_problem() {
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case; 14] = [
            (Some("[server]\nlisten = 5\n"), &[], "invalid type"),
            (Some("[server]\nlisen = \"x\"\n"), &[], "unknown field `lisen`"),
            (Some("not toml ="), &[], "not valid TOML"),
            (None, &[("HOOKLINE_LISTEN", "nowhere")], "server.listen"),
            (None, &[("HOOKLINE_LOG_FORMAT", "xml")], "log.format"),
            (None, &[("HOOKLINE_LOG_LEVEL", "hookline=verbose")], "log.level"),
            (None, &[("HOOKLINE_SERVER_THREADS", "0")], "server.threads"),
            // Values that overflow where they are used, or that a semaphore or a pool
            // refuses with a panic once started.
            (None, &[("HOOKLINE_DASHBOARD_SESSION_TTL_MS", "9223372036854775807")], "dashboard.session_ttl_ms"),
            (None, &[("HOOKLINE_RETENTION_INTERVAL_MS", "9223372036854775807")], "retention.interval_ms"),
            (None, &[("HOOKLINE_SERVER_MAX_CONNECTIONS", "3000000000000000000")], "server.max_connections"),
            (None, &[("HOOKLINE_DATABASE_POOL_MAX", "100000000")], "database.pool_max"),
            // Allocated per request (hyper's header slots), or threads started at once.
            (None, &[("HOOKLINE_SERVER_HEADERS_MAX", "100000000")], "server.headers_max"),
            (None, &[("HOOKLINE_SERVER_THREADS", "100000")], "server.threads"),
            (None, &[("HOOKLINE_DELIVERY_THREADS", "100000")], "delivery.threads"),
        ];
        for (file, vars, expected) in cases {
            let error = load_with(file, vars, Overrides::default()).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }

    /// An error about a secret's setting names the setting, never its value (stderr goes
    /// to the journal).
    #[test]
    fn errors_never_repeat_a_secrets_value() {
        // (file, what the error names)
        let cases = [
            ("[api]\nadmin_token = 8675309123\n", "api.admin_token"),
            ("[metrics]\ntoken = [\"scrape-8675309123\"]\n", "metrics.token"),
            ("[database]\nurl = 42_8675309123\n", "database.url"),
            ("[api]\nadmin_token = \"8675309123\n", "line 2"),
            // A misspelt or unknown key may hold a secret too, and so may a line that does
            // not parse, however it is spaced.
            ("[metrics]\nbearer_token = \"scrape-8675309123\"\n", "unknown field `bearer_token`"),
            ("[database]\npassword = \"8675309123\"\n", "unknown field `password`"),
            ("[api]\nadmin_token=\"8675309123\\q\"\n", "line 2"),
            ("[database]\nurl      = \"postgres://u:p\\ss8675309123@db/h\"\n", "line 2"),
            ("[delivery.broker_credentials]\n\"mq:5672\" = \"u:8675309123\\q\"\n", "line 2"),
            ("[delivery.broker_credentials]\n\"mq:5672\" = 8675309123\n", "delivery.broker_credentials"),
        ];
        for (file, named) in cases {
            let error = load_with(Some(file), &[], Overrides::default()).unwrap_err().to_string();
            assert!(!error.contains("8675309123"), "{error}");
            assert!(error.contains(named), "{error} should name {named:?}");
        }
        // Environment values that are not TOML are taken as one string, which the error
        // quoted whole: credentials and consumer URLs in it.
        let vars = [
            ("HOOKLINE_DELIVERY_BROKER_CREDENTIALS", "{mq:5672 = \"hookline:8675309123\"}", "delivery"),
            ("HOOKLINE_INGEST_REDIS", "[{url = \"redis://:8675309123@h:6379\", stream = x}]", "ingest"),
        ];
        for (name, value, named) in vars {
            let error = load_with(None, &[(name, value)], Overrides::default()).unwrap_err().to_string();
            assert!(!error.contains("8675309123"), "{name}: {error}");
            assert!(error.contains(named), "{error} should name {named:?}");
        }
    }
}
