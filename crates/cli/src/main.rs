//! The `hookline` binary: parses the command line, builds the configuration, opens the
//! store and runs the server until SIGTERM or SIGINT.

mod settings;
mod verify;

use clap::{Parser, Subcommand};
use hookline_server::clock::SystemClock;
use hookline_server::config::Config;
use hookline_server::AdminToken;
use hookline_store::postgres::{PgOptions, PgStore};
use hookline_store::sqlite::{decode_key, load_or_create_key, SqliteStore};
use hookline_store::{Store, StoreError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc in place of glibc's malloc: an `inbound` profile put about an eighth of the
/// gateway's CPU in malloc and free; with mimalloc, paired runs gave `inbound` 1.20x and 1.05x, `fanout`
/// 1.32x and 1.17x (bench/README, 2026-12-05). Its arenas are committed on demand
/// (`.cargo/config.toml`): committed up front, peak memory was tens of MB higher.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a bad command line (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code for a bad configuration (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// Exit code when the store cannot be opened or the address cannot be bound (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "hookline", version, about = "A webhook gateway for payment events")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and deliver webhooks.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8071].
        #[arg(long)]
        listen: Option<String>,
        /// Data directory of the embedded database [default: ./hookline-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A TOML config file (see `hookline config-template`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Local development: allow http:// and loopback/private endpoints.
        #[arg(long)]
        dev: bool,
        /// Keep everything in PostgreSQL (shared by several nodes) instead of SQLite:
        /// postgres://user@host:5432/db [env: HOOKLINE_DATABASE_URL].
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Create or upgrade the PostgreSQL schema, then exit (`serve` also does it at start).
    Migrate {
        /// postgres://user@host:5432/db [env: HOOKLINE_DATABASE_URL].
        #[arg(long)]
        database_url: Option<String>,
        /// A TOML config file (its `database.url` is used when no flag is given).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the commented default configuration.
    ConfigTemplate,
    /// Check a provider's webhook signature the way an inbound source would, and say why
    /// it fails: `hookline verify --preset stripe --secret whsec_... --body event.json -H 'Stripe-Signature: t=...'`.
    Verify {
        /// An inbound source's preset (stripe, standard-webhooks, github, shopify, adyen, paddle, …;
        /// a wrong one lists them all).
        #[arg(long)]
        preset: String,
        /// A signing secret; repeat for several (a rotation).
        #[arg(long = "secret", required = true)]
        secrets: Vec<String>,
        /// The raw request body, as a file (`-` for standard input).
        #[arg(long)]
        body: PathBuf,
        /// A request header, `Name: value`; repeat as needed.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Preset options as JSON, e.g. '{"toleranceSeconds": 600}'.
        #[arg(long)]
        config: Option<String>,
        /// Check as of this Unix time (default: now), e.g. to test an old capture.
        #[arg(long)]
        now: Option<i64>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::ConfigTemplate => {
            print!("{}", include_str!("../hookline.example.toml"));
            ExitCode::SUCCESS
        }
        Command::Verify { preset, secrets, body, headers, config, now } => {
            match verify::run(&preset, &secrets, &body, &headers, config.as_deref(), now) {
                Ok(verdict) => {
                    println!("{}", verdict.message);
                    if verdict.valid {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("hookline verify: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        Command::Serve { listen, data_dir, config, dev, database_url } => {
            // Every in-flight delivery and every client connection holds a file descriptor;
            // the usual soft limit of 1,024 would refuse the 1,025th. The soft limit goes up
            // to the hard limit (as Go's runtime does), and what nobody configured is sized
            // to fit it.
            let raised = rlimit::increase_nofile_limit(u64::MAX);
            let open_files = raised.as_ref().ok().copied();
            let overrides = settings::Overrides { listen, data_dir, dev, database_url, open_files };
            let env = |name: &str| std::env::var(name).ok();
            match settings::load(config.as_deref(), &env, overrides) {
                Ok(config) => serve(config, raised),
                Err(e) => {
                    eprintln!("hookline: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Migrate { database_url, config } => {
            let overrides = settings::Overrides { database_url, ..Default::default() };
            let env = |name: &str| std::env::var(name).ok();
            match settings::load(config.as_deref(), &env, overrides) {
                Ok(config) => migrate(&config),
                Err(e) => {
                    eprintln!("hookline: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

/// Says, once logging is up, whether the open-file limit holds what was configured. Only
/// values someone set can exceed it: unset ones were sized to fit (`settings::sized_for`).
fn report_file_limit(config: &Config, raised: std::io::Result<u64>) {
    let needed = (config.delivery.max_in_flight + config.server.max_connections) as u64 + settings::FILES_RESERVED;
    match raised {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-file limit is below delivery.max_in_flight + server.max_connections as configured; \
             raise it (ulimit -n, or LimitNOFILE= in a systemd unit) or lower those settings"
        ),
        Ok(limit) => tracing::debug!(
            limit,
            max_connections = config.server.max_connections,
            max_in_flight = config.delivery.max_in_flight,
            "open-file limit"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

fn init_logging(config: &Config) {
    let builder = tracing_subscriber::fmt().with_env_filter(log_filter(&config.log.level)).with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `log.level` as a filter. tokio-postgres logs every statement's parameters at `debug`
/// (payloads, URLs, email addresses), so it stays at `info` unless a directive names it
/// (`tokio_postgres` or a module of it; `tokio_postgres_rustls` is another crate).
fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    let named = level.split(',').any(|directive| {
        let target = directive.split(['=', '[']).next().unwrap_or_default().trim();
        target == "tokio_postgres" || target.starts_with("tokio_postgres::")
    });
    match named {
        true => filter,
        false => filter.add_directive("tokio_postgres=info".parse().expect("a valid directive")),
    }
}

fn serve(config: Config, raised: std::io::Result<u64>) -> ExitCode {
    init_logging(&config);
    report_file_limit(&config, raised);
    // Deliveries run on threads of their own, so the API's threads are free to answer at
    // once however many deliveries are being sent.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (api_threads, delivery_threads) = config.threads(cores);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(api_threads)
        .thread_name("hookline-api")
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let deliveries = (delivery_threads > 0).then(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(delivery_threads)
            .thread_name("hookline-deliver")
            .enable_all()
            .build()
            .expect("delivery runtime starts")
    });
    let delivery_runtime = deliveries.as_ref().map(|r| r.handle().clone());
    let code = runtime.block_on(async move {
        let store = match open_store(&config).await {
            Ok(store) => store,
            Err((code, message)) => {
                eprintln!("hookline: {message}");
                return ExitCode::from(code);
            }
        };
        let address = config.server.listen.parse().expect("validated with the configuration");
        let listener = match hookline_server::serve::bind(address) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("hookline: cannot listen on {}: {e}", config.server.listen);
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        let clock = Arc::new(SystemClock);
        match hookline_server::ensure_admin_token(store.as_ref(), &config, clock.as_ref()).await {
            Ok(AdminToken::Generated(token)) => println!(
                "Admin token (shown once, stored hashed):\n  {token}\nUse it as: Authorization: Bearer {token}"
            ),
            Ok(AdminToken::Configured { retired: 0 }) => println!("Using the admin token from the configuration."),
            Ok(AdminToken::Configured { .. }) => {
                println!("Using the admin token from the configuration; the one generated at first start is revoked.")
            }
            Ok(AdminToken::Stored) => println!("Using the admin token created at first start (stored hashed)."),
            Err(e) => {
                eprintln!("hookline: cannot set up the admin token: {e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        }
        if config.server.dev {
            let warning = "dev mode: plain-http endpoints and every address are allowed (loopback, private, \
                           link-local and a cloud's metadata service at 169.254.169.254 included), and dashboard \
                           cookies are not Secure. Never use it in production.";
            eprintln!("WARNING: {warning}");
            // In the log's own form too when it is JSON: a pipeline reading it may drop the
            // line above.
            if config.log.format == "json" {
                tracing::warn!("{warning}");
            }
        }
        let data = match config.database.url.is_empty() {
            true => config.server.data_dir.display().to_string(),
            false => "PostgreSQL".to_owned(),
        };
        println!("Hookline listening on http://{} (data in {data})", config.server.listen);
        let result = hookline_server::run(
            config,
            store,
            clock,
            listener,
            shutdown_signal(),
            hookline_server::RunOptions { delivery_runtime, ..Default::default() },
        )
        .await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hookline: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // The engine has stopped (its grace is over): whatever is left on its runtime ends now,
    // as it would with one runtime, and sends nothing more after the node retired.
    if let Some(deliveries) = deliveries {
        deliveries.shutdown_background();
    }
    code
}

/// Holds `hookline.lock` in the data directory for as long as this process lives: a second
/// process on one SQLite database (another port, a second container on a shared volume)
/// took over the first's claims as a dead node's while it was sending them, and each then
/// voided the other's registration by turns: duplicates, and ordered lanes sent twice. The
/// kernel lets go of the lock when the process ends, `kill -9` included.
fn hold_data_dir(data_dir: &std::path::Path) -> Result<(), (u8, String)> {
    let unavailable = |e: std::io::Error| (EXIT_UNAVAILABLE, format!("cannot lock {}: {e}", data_dir.display()));
    hookline_store::sqlite::create_data_dir(data_dir).map_err(unavailable)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("hookline.lock"))
        .map_err(unavailable)?;
    match lock.try_lock() {
        Ok(()) => {
            // Kept until the process ends.
            std::mem::forget(lock);
            Ok(())
        }
        Err(std::fs::TryLockError::WouldBlock) => Err((
            EXIT_UNAVAILABLE,
            format!(
                "another Hookline process is using the data directory {}: one process per data directory \
                 (several nodes share a PostgreSQL database, database.url)",
                data_dir.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(unavailable(e)),
    }
}

/// Opens the configured store: PostgreSQL when `database.url` is set, else SQLite in the
/// data directory. Errors carry the exit code.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, (u8, String)> {
    let url = &config.database.url;
    if url.is_empty() {
        hold_data_dir(&config.server.data_dir)?;
    }
    let key = match &config.security.secret_key {
        Some(text) => decode_key(text).map_err(|e| (EXIT_CONFIG, format!("security.secret_key: {e}")))?,
        // Every node must seal with the same key, so a shared database needs it given.
        None if !url.is_empty() => {
            return Err((
                EXIT_CONFIG,
                "security.secret_key (HOOKLINE_SECURITY_SECRET_KEY) is required with database.url: \
                 every node must seal secrets with the same key (make one with `openssl rand -base64 32`)"
                    .into(),
            ))
        }
        // A key that cannot be read or written is the machine's problem; a bad or missing
        // one beside an existing database is the configuration's.
        None => load_or_create_key(&config.server.data_dir).map_err(|e| match e {
            StoreError::Corrupt(_) => (EXIT_CONFIG, e.to_string()),
            _ => (EXIT_UNAVAILABLE, e.to_string()),
        })?,
    };
    let store: Arc<dyn Store> = if url.is_empty() {
        let store = SqliteStore::open(&config.server.data_dir, &key).map_err(|e| {
            (EXIT_UNAVAILABLE, format!("cannot open the data directory {}: {e}", config.server.data_dir.display()))
        })?;
        Arc::new(store)
    } else {
        let options = PgOptions { pool_max: config.database.pool_max, timeout_ms: config.database.timeout_ms };
        let store = PgStore::open(url, &key, options).await.map_err(|e| match e {
            // The URL itself, not the database: the configuration's to mend.
            StoreError::Invalid(_) => (EXIT_CONFIG, e.to_string()),
            _ => (EXIT_UNAVAILABLE, format!("cannot open the PostgreSQL database: {e}")),
        })?;
        Arc::new(store)
    };
    // A key other than the one the database's secrets were sealed with opens none of them:
    // said now, before the node listens, rather than at the first delivery. The operational
    // application exists in every database a node has started on.
    match store.get_app(hookline_store::OPERATIONAL_APP_ID).await {
        Err(StoreError::Corrupt(e)) => Err((
            EXIT_CONFIG,
            format!(
                "the secret key does not open this database's secrets ({e}): start with the key it was \
                 made with (security.secret_key, or secret.key in the data directory)"
            ),
        )),
        _ => Ok(store),
    }
}

fn migrate(config: &Config) -> ExitCode {
    init_logging(config);
    if config.database.url.is_empty() {
        eprintln!("hookline migrate: give --database-url (SQLite migrates itself at start)");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime starts");
    match runtime.block_on(PgStore::migrate(&config.database.url, config.database.timeout_ms)) {
        Ok(version) => {
            println!("The PostgreSQL schema is at version {version}.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hookline migrate: {e}");
            ExitCode::from(if matches!(e, StoreError::Invalid(_)) { EXIT_CONFIG } else { EXIT_UNAVAILABLE })
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled: a signal that came between the first request served and
/// the accept loop's first look at the future would otherwise kill the process outright.
/// The first SIGTERM or SIGINT; a second one during the shutdown that follows ends the
/// process at once (it was ignored, and a shutdown may take several grace periods): as
/// after `kill -9`, what is acknowledged is in the store, and what was in flight stays open
/// there for the next start.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received");
        tokio::spawn(async move {
            let code = tokio::select! {
                _ = interrupt.recv() => 128 + 2,
                _ = term.recv() => 128 + 15,
            };
            eprintln!("hookline: a second signal: stopping now; deliveries in flight stay open for the next start");
            std::process::exit(code);
        });
    }
}

#[cfg(test)]
mod tests {
    /// tokio-postgres stays at `info` (its `debug` logs statements' parameters) unless a
    /// directive names it; another crate whose name begins the same does not.
    #[test]
    fn tokio_postgres_is_kept_at_info_unless_named() {
        let kept = |level: &str| super::log_filter(level).to_string().contains("tokio_postgres=info");
        assert!(kept("debug"));
        assert!(kept("debug,tokio_postgres_rustls=info"));
        assert!(!kept("debug,tokio_postgres=debug"));
        assert!(!kept("info,tokio_postgres::query=trace"));
    }
}
