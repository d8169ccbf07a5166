//! Email alerts: short plain-text emails to an application's alert address about its
//! endpoints. `endpoint.disabled` and `endpoint.enabled` go at once; `failing` and
//! `exhausted` messages are summed per endpoint into at most one email per
//! `alerts.digest_ms` (the first one after `alerts.gather_ms`, so a flood of failures
//! makes one email that counts them). Events are noted in memory without waiting on
//! anything; a task of its own puts each email in the store's outbox (durable, shared by
//! every node: a restart or a node's death loses none, and one node sends each), sends
//! what is due, retries failed sends with backoff, logs and counts them. Deliveries never
//! wait for email. The outbox keeps one email per endpoint state (the newest) and a
//! bounded share per application. Failure counts go from memory to the store's digests
//! (one per endpoint, shared by every node) from a task of their own at most every
//! `FLUSH_MS` and at shutdown, so that the nodes' counts add up to one summary per window
//! and a crash loses at most that moment's.

use crate::clock::Clock;
use crate::config::AlertsConfig;
use crate::dispatch::notices::{self, Notice};
use crate::metrics as m;
use crate::wire::timestamp;
use hookline_core::UnixMs;
use hookline_store::{AlertDigest, AlertEmail, App, DigestRules, Store, StoreError};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Emails waiting to be sent at most; beyond it the oldest is dropped (and counted).
const OUTBOX_MAX: usize = 10_000;
/// Emails of one application waiting at most; beyond it that application's oldest is
/// dropped, so that one tenant's burst never pushes out another's alerts.
const APP_QUEUED_MAX: usize = 100;
/// Emails noted but not yet in the store (it is down) at most: the oldest go first.
const PENDING_MAX: usize = 1_000;
/// The longest wait between two tries of one email.
const RETRY_MAX_MS: i64 = 300_000;
/// How often the outbox and the digests are looked at for work another node queued or left.
const POLL_MS: i64 = 5_000;
/// Failure counts go to the store at most this often: a flood of failures costs a write
/// each time, not one per failure.
const FLUSH_MS: i64 = 250;
/// An SMTP exchange is a few steps (greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA), and
/// may take this many `alerts.timeout_ms` in all.
const EXCHANGE_STEPS: u64 = 5;
/// The soonest the next look at the digests comes after one that left a digest due (more
/// than one look takes, or another node is taking it).
const DUE_AGAIN_MS: i64 = 100;

#[derive(Default)]
struct State {
    /// Emails noted, on their way to the store's outbox.
    pending: VecDeque<AlertEmail>,
    /// Failure counts noted since the last flush to the store, by endpoint id.
    counts: HashMap<String, AlertDigest>,
}

pub struct Mailer {
    config: AlertsConfig,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    wake: Notify,
    /// Rung by an email noted, and by the first failure counted since the last flush.
    counted: Notify,
    /// Held by the one `store_pending` running.
    storing: tokio::sync::Mutex<()>,
}

/// The address alerts about `app` go to: its `alertEmail`, else its metadata's
/// `svix.email` (Svix's place for it).
pub fn address(app: &App) -> Option<&str> {
    app.alert_email.as_deref().or_else(|| app.metadata.get("svix.email").map(String::as_str))
}

impl Mailer {
    /// A mailer for `config`, or `None` when no SMTP server is configured. Errors name a
    /// setting that cannot be used.
    pub fn new(
        config: &AlertsConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<Arc<Mailer>>, String> {
        let Some(url) = &config.smtp_url else { return Ok(None) };
        let from: Mailbox = config.from.parse().map_err(|e| format!("alerts.from: {e}"))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|_| "alerts.smtp_url must be smtp://host[:port] or smtps://[user:pass@]host[:port]".to_owned())?
            .timeout(Some(std::time::Duration::from_millis(config.timeout_ms)))
            .build();
        let mailer = Arc::new(Mailer {
            config: config.clone(),
            from,
            transport,
            store,
            clock,
            state: Mutex::default(),
            wake: Notify::new(),
            counted: Notify::new(),
            storing: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(mailer.clone().send_loop());
        tokio::spawn(mailer.clone().flush_loop());
        Ok(Some(mailer))
    }

    /// Notes an event about an endpoint of `app` (at once: no IO).
    pub fn observe(&self, app: &App, url: &str, notice: &Notice) {
        let Some(to) = address(app) else { return };
        let url = &shown_url(url);
        let now = self.clock.now_ms();
        let endpoint = notice.data["endpointUid"].as_str().or(notice.data["endpointId"].as_str()).unwrap_or("");
        let app_name = format!("{} ({})", app.name, app.uid.as_deref().unwrap_or(&app.id));
        let mut state = self.state.lock().expect("mailer lock");
        match notice.event_type {
            notices::ENDPOINT_DISABLED | notices::ENDPOINT_ENABLED => {
                let (subject, body) = change_email(&app_name, endpoint, url, notice);
                let about = notice.data["endpointId"].as_str().map(str::to_owned);
                pend(&mut state.pending, new_email(&app.id, about, to, subject, body, now));
            }
            notices::ATTEMPT_FAILING | notices::ATTEMPT_EXHAUSTED => {
                let first = state.counts.is_empty();
                let endpoint_id = notice.data["endpointId"].as_str().unwrap_or("").to_owned();
                let counts = state.counts.entry(endpoint_id.clone()).or_insert_with(|| AlertDigest {
                    endpoint_id,
                    since: Some(now),
                    ..AlertDigest::default()
                });
                counts.to = to.to_owned();
                counts.app_id = app.id.clone();
                counts.app = app_name;
                counts.endpoint = endpoint.to_owned();
                counts.url = url.to_owned();
                match notice.event_type {
                    notices::ATTEMPT_FAILING => counts.failing += 1,
                    _ => counts.exhausted += 1,
                }
                drop(state);
                // Later counts go with the flush the first one starts.
                if first {
                    self.counted.notify_one();
                }
                return;
            }
            _ => return,
        }
        drop(state);
        self.counted.notify_one();
        self.wake.notify_one();
    }

    /// Flushes the counts noted to the store at most every `FLUSH_MS`, from a task of its
    /// own: the send loop may spend a minute on one slow SMTP exchange.
    async fn flush_loop(self: Arc<Self>) {
        loop {
            self.counted.notified().await;
            // Noted emails too: the send loop moves them only between SMTP exchanges, and
            // one in memory meanwhile was lost with a crash.
            loop {
                let stored = self.store_pending().await;
                if self.flush_counts().await && stored {
                    break;
                }
                self.clock.sleep_until(self.clock.now_ms() + 1_000).await;
            }
            // The send loop learns when the digests it counted into are due.
            self.wake.notify_one();
            self.clock.sleep_until(self.clock.now_ms() + FLUSH_MS).await;
        }
    }

    /// At shutdown: the emails noted and the counts not yet in the store go there (the flush
    /// task, which moves them otherwise, may be waiting out its pause: an endpoint disabled
    /// during the shutdown grace was never told).
    pub async fn flush(&self) {
        self.store_pending().await;
        self.flush_counts().await;
    }

    /// Adds the counts noted to the store's digests; if the store cannot take them, they
    /// wait here, added to what comes meanwhile, and this returns false.
    pub async fn flush_counts(&self) -> bool {
        let counts: Vec<AlertDigest> =
            std::mem::take(&mut self.state.lock().expect("mailer lock").counts).into_values().collect();
        if counts.is_empty() {
            return true;
        }
        match self.store.count_alert_failures(counts.clone()).await {
            Ok(()) => true,
            Err(e @ (StoreError::Corrupt(_) | StoreError::Invalid(_))) => {
                tracing::error!(error = %e, "failure counts for alert summaries cannot be stored; counts dropped");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not store failure counts for alert summaries; trying again");
                let mut state = self.state.lock().expect("mailer lock");
                for old in counts {
                    match state.counts.entry(old.endpoint_id.clone()) {
                        Entry::Vacant(vacant) => {
                            vacant.insert(old);
                        }
                        // Noted since: the names are newer, the first failure is the old one.
                        Entry::Occupied(mut noted) => {
                            let noted = noted.get_mut();
                            (noted.failing, noted.exhausted) =
                                (noted.failing + old.failing, noted.exhausted + old.exhausted);
                            noted.since = old.since;
                        }
                    }
                }
                false
            }
        }
    }

    /// The summaries due at `now` go to the outbox; returns when the next one is due.
    async fn summarize(&self, now: UnixMs) -> Option<UnixMs> {
        let to_email = move |d: &AlertDigest| {
            let (subject, body) = digest_email(d);
            new_email(&d.app_id, None, &d.to, subject, body, now)
        };
        let rules = DigestRules {
            now,
            gather_ms: self.config.gather_ms,
            digest_ms: self.config.digest_ms,
            app_max: APP_QUEUED_MAX,
            all_max: OUTBOX_MAX,
            render: Arc::new(to_email),
        };
        match self.store.take_alert_digests(rules).await {
            Ok(taken) => {
                dropped(taken.pushed_out);
                taken.next_due.map(|at| at.max(now + DUE_AGAIN_MS))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not look for alert summaries due; trying again");
                Some(now + 1_000)
            }
        }
    }

    async fn send_loop(self: Arc<Self>) {
        // The soonest retry of an email this node failed to send: the wait ends then.
        let mut retry_at = None::<UnixMs>;
        loop {
            let now = self.clock.now_ms();
            retry_at = retry_at.filter(|at| *at > now);
            let next = [self.summarize(now).await, retry_at].into_iter().flatten().min();
            // Noted emails go to the outbox first; the store down, they wait here.
            let stored = self.store_pending().await;
            // One email at a time, held for as long as its own send may take (an SMTP
            // exchange is a few steps, each within the timeout): held for a batch, the last
            // of a slow batch came due again, and another node sent it too.
            let hold_ms = self.config.timeout_ms * (EXCHANGE_STEPS + 1) + 60_000;
            match self.store.take_alert_emails(now, hold_ms, 1).await.map(|mut due| due.pop()) {
                Ok(Some(email)) => {
                    if let Some(at) = self.send(email).await {
                        retry_at = Some(retry_at.map_or(at, |soonest| soonest.min(at)));
                    }
                    continue; // More may be due.
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not read the alert outbox; trying again"),
            }
            let poll = self.clock.now_ms() + if stored { POLL_MS } else { 1_000 };
            let at = next.map_or(poll, |n| n.min(poll));
            let notified = self.wake.notified();
            if at > self.clock.now_ms() {
                tokio::select! {
                    _ = notified => {}
                    _ = self.clock.sleep_until(at) => {}
                }
            }
        }
    }

    /// Puts the noted emails in the store's outbox; false if the store could not take them
    /// all (they wait in memory for the next turn).
    async fn store_pending(&self) -> bool {
        // One at a time (the send loop, the flush task, a shutdown): two both queued the
        // first noted email, and a late second queue of an older state email replaced a newer
        // one, or put back one already taken.
        let _one = self.storing.lock().await;
        loop {
            let Some(email) = self.state.lock().expect("mailer lock").pending.front().cloned() else { return true };
            let id = email.id.clone();
            match self.store.queue_alert_email(email, APP_QUEUED_MAX, OUTBOX_MAX).await {
                Ok(pushed_out) => dropped(pushed_out),
                // The database refuses it for good (it is corrupt, say): kept, it would
                // stop every email after it.
                Err(e @ (StoreError::Corrupt(_) | StoreError::Invalid(_))) => {
                    tracing::error!(error = %e, "an alert email cannot be stored; email dropped");
                    dropped(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not put an alert email in the outbox; trying again");
                    return false;
                }
            }
            // Only if still first: while the store was written, a full `pending` may have
            // pushed it out (and counted it).
            let mut state = self.state.lock().expect("mailer lock");
            if state.pending.front().is_some_and(|first| first.id == id) {
                state.pending.pop_front();
            }
        }
    }

    /// Whether a state email says the opposite of the endpoint's state now. A newer email
    /// replaces an older one while it waits, but a notice can be noted late (its commit
    /// retried while the store was down, or on another node): a "disabled" queued after the
    /// "enabled" that followed it was the owner's last word about an enabled endpoint.
    async fn superseded(&self, email: &AlertEmail) -> bool {
        let (Some(endpoint_id), Some(told_disabled)) = (&email.about, told_disabled(&email.subject)) else {
            return false;
        };
        match self.store.get_endpoint(&email.app_id, endpoint_id).await {
            Ok(endpoint) => endpoint.disabled != told_disabled,
            // Deleted since, or the store unreadable: sent as it is.
            Err(_) => false,
        }
    }

    /// Sends one email; a failure puts it back with a backoff (1 s, 2 s, … 5 min), unless
    /// the server refused it for good. Returns when it is to be tried again.
    async fn send(&self, email: AlertEmail) -> Option<UnixMs> {
        if self.superseded(&email).await {
            tracing::info!(email = %email.id, "an endpoint's state email no longer says its state; dropped");
            // Out of the outbox, as a sent one: left there, it was taken again after every
            // hold, and kept one of its application's places.
            match self.store.alert_email_tried(&email.id, None).await {
                Ok(()) => dropped(1),
                Err(e) => tracing::warn!(error = %e, "could not drop an alert email; it is looked at again later"),
            }
            return None;
        }
        let built = email.to.parse().map_err(|e: lettre::address::AddressError| e.to_string()).and_then(|to| {
            lettre::Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(email.subject.clone())
                .header(lettre::message::header::ContentType::TEXT_PLAIN)
                .body(email.body.clone())
                .map_err(|e| e.to_string())
        });
        // The whole exchange within its bound: lettre's timeout covers the connect only, and
        // a server that took the connection and never answered held every email after this
        // one for ever (on every node in turn, as each took it once its hold ran out).
        let exchange = std::time::Duration::from_millis(self.config.timeout_ms * EXCHANGE_STEPS);
        let sent = match built {
            Ok(message) => match tokio::time::timeout(exchange, self.transport.send(message)).await {
                Ok(sent) => sent.map(|_| ()).map_err(|e| (refuses_address(&e), e.to_string())),
                Err(_) => Err((false, format!("the SMTP exchange took longer than {} ms", exchange.as_millis()))),
            },
            Err(e) => Err((true, e)),
        };
        let retry = match sent {
            Ok(()) => {
                metrics::counter!(m::ALERT_EMAILS, "outcome" => "sent").increment(1);
                None
            }
            // The address refused for good (no such mailbox): it would be refused at every
            // try, every 5 minutes, until pushed out of the outbox. A message that cannot be
            // built (an address that is not one) never can be.
            Err((true, e)) => {
                tracing::warn!(error = %e, "the SMTP server refused an alert email for good; email dropped");
                dropped(1);
                None
            }
            Err((false, e)) => {
                let tries = email.tries + 1;
                let wait = (1_000i64 << (tries - 1).min(9)).min(RETRY_MAX_MS);
                tracing::warn!(error = %e, tries, retry_in_ms = wait, "could not send an alert email");
                Some((tries, self.clock.now_ms() + wait))
            }
        };
        // Not written (the store down): its hold ends, and it is tried again then.
        if let Err(e) = self.store.alert_email_tried(&email.id, retry).await {
            tracing::warn!(error = %e, "could not note an alert email's try; it is tried again later");
        }
        // Counted once the try is noted (a test waits on the count to know it is).
        if retry.is_some() {
            metrics::counter!(m::ALERT_EMAILS, "outcome" => "failed").increment(1);
        }
        retry.map(|(_, at)| at)
    }
}

/// An email to queue now.
fn new_email(app_id: &str, about: Option<String>, to: &str, subject: String, body: String, now: UnixMs) -> AlertEmail {
    AlertEmail {
        id: crate::new_id("eml", now),
        app_id: app_id.to_owned(),
        about,
        to: to.to_owned(),
        subject,
        body,
        tries: 0,
        not_before: now,
    }
}

/// How a state email's subject ends (`change_email`), and so which state it tells of.
const DISABLED_ENDING: &str = " is disabled";
const ENABLED_ENDING: &str = " is enabled";

/// The state a state email tells of: disabled or enabled.
fn told_disabled(subject: &str) -> Option<bool> {
    if subject.ends_with(DISABLED_ENDING) {
        Some(true)
    } else if subject.ends_with(ENABLED_ENDING) {
        Some(false)
    } else {
        None
    }
}

/// Notes an email for the outbox; with the store down long, the oldest noted go (counted).
fn pend(pending: &mut VecDeque<AlertEmail>, email: AlertEmail) {
    if pending.len() >= PENDING_MAX {
        pending.pop_front();
        dropped(1);
    }
    pending.push_back(email);
}

/// Counts `n` emails dropped (see `metrics::ALERT_EMAILS`).
fn dropped(n: u64) {
    if n > 0 {
        metrics::counter!(m::ALERT_EMAILS, "outcome" => "dropped").increment(n);
    }
}

/// An endpoint's URL as an email shows it: its scheme, host and port, the rest as `/…`.
/// Receivers put tokens in the query and in the path too (Slack's and Discord's webhook
/// URLs end with theirs), and emails may travel in plain text, so a URL's credentials are
/// never shown either.
///
/// A queue's URL (`redis://`, `amqp://`, `nats://`) has no web origin: its scheme, host and
/// port are shown alike (it showed as `null/…`), never its credentials.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed)
            if parsed.path() == "/"
                && parsed.query().is_none()
                && parsed.fragment().is_none()
                && parsed.username().is_empty()
                && parsed.password().is_none() =>
        {
            url.to_owned()
        }
        Ok(parsed) if parsed.origin().is_tuple() => format!("{}/…", parsed.origin().ascii_serialization()),
        Ok(parsed) => match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", parsed.scheme()),
            (Some(host), None) => format!("{}://{host}/…", parsed.scheme()),
            (None, _) => "…".to_owned(),
        },
        Err(_) => "…".to_owned(),
    }
}

/// Whether the server refused the address for good: a permanent answer whose enhanced
/// status (RFC 3463) names a bad destination (`5.1.1` no such mailbox, `5.1.2` no such
/// system, `5.1.3` a malformed address, `5.1.6` moved, `5.1.10` no mail taken there).
/// Every other permanent answer is the operator's to fix, and is retried until it is: the
/// same `550` or `553` also says `5.7.1` relaying denied or sender not owned (a relay that
/// wants a login, an `alerts.from` it does not take), and those emails were dropped for
/// good at their first try; so is a bare `550`, as often a policy as a missing mailbox.
fn refuses_address(e: &lettre::transport::smtp::Error) -> bool {
    let said = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default();
    e.is_permanent() && bad_destination(&said)
}

/// Whether an SMTP answer's text begins with an enhanced status of a bad destination.
fn bad_destination(said: &str) -> bool {
    let status = said.split_whitespace().next().unwrap_or_default();
    matches!(status, "5.1.1" | "5.1.2" | "5.1.3" | "5.1.6" | "5.1.10")
}

/// The subject and body of an email about an endpoint's state.
fn change_email(app: &str, endpoint: &str, url: &str, notice: &Notice) -> (String, String) {
    if notice.event_type == notices::ENDPOINT_DISABLED {
        let how = match notice.data["trigger"].as_str() {
            Some("automatic") => "Hookline disabled it",
            _ => "It was disabled through the API",
        };
        let since = match notice.data["failSince"].as_str() {
            Some(since) => format!(" Its deliveries had been failing since {since}."),
            None => String::new(),
        };
        (
            format!("[Hookline] Endpoint {endpoint} of {app}{DISABLED_ENDING}"),
            format!(
                "The endpoint {endpoint} ({url}) of {app} is disabled. {how}.{since}\n\n\
                 Messages published for it are kept as skipped deliveries. Once it works again, \
                 enable it and send what it missed: POST /api/v1/app/{{app}}/endpoint/{{endpoint}}/recover.\n"
            ),
        )
    } else {
        (
            format!("[Hookline] Endpoint {endpoint} of {app}{ENABLED_ENDING}"),
            format!("The endpoint {endpoint} ({url}) of {app} is enabled again; deliveries to it resume.\n"),
        )
    }
}

/// The subject and body of an endpoint's failure summary.
fn digest_email(d: &AlertDigest) -> (String, String) {
    let plural = |n: u64| if n == 1 { "message" } else { "messages" };
    let mut lines = Vec::new();
    if d.failing > 0 {
        lines.push(format!("- {} {} failed 4 attempts in a row and are being retried", d.failing, plural(d.failing)));
    }
    if d.exhausted > 0 {
        lines.push(format!(
            "- {} {} ran out of retries and will not be sent again unless resent",
            d.exhausted,
            plural(d.exhausted)
        ));
    }
    (
        format!("[Hookline] Deliveries to endpoint {} of {} are failing", d.endpoint, d.app),
        format!(
            "Deliveries to the endpoint {} ({}) of {} are failing. Since {}:\n{}\n\n\
             The attempts log shows each response: GET /api/v1/app/{{app}}/attempt/endpoint/{{endpoint}}.\n\
             This is at most one summary per endpoint per window; the next one counts what happens from now on.\n",
            d.endpoint,
            d.url,
            d.app,
            timestamp(d.since.unwrap_or_default()),
            lines.join("\n")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token in an endpoint's URL, in its query or its path, never reaches an email.
    #[test]
    fn emails_show_urls_without_their_path_or_query() {
        assert_eq!(shown_url("https://shop.example/hooks?token=s3cret#x"), "https://shop.example/…");
        assert_eq!(shown_url("https://shop.example:8443/hooks#s3cret"), "https://shop.example:8443/…");
        assert_eq!(shown_url("https://hooks.slack.com/services/T0/B0/s3cret"), "https://hooks.slack.com/…");
        assert_eq!(shown_url("https://shop.example/"), "https://shop.example/");
        assert_eq!(shown_url("https://shop.example"), "https://shop.example");
        assert_eq!(shown_url("https://shop.example?s3cret"), "https://shop.example/…");
        assert_eq!(shown_url("not a url s3cret"), "…");
        // A queue shows its broker, not `null/…`, and never its credentials.
        assert_eq!(shown_url("redis://:s3cret@cache.internal:6379/stream"), "redis://cache.internal:6379/…");
        assert_eq!(shown_url("amqp://guest:s3cret@mq/%2f"), "amqp://mq/…");
        assert_eq!(shown_url("nats://js.internal:4222/payments.out"), "nats://js.internal:4222/…");
        assert_eq!(shown_url("https://user:s3cret@shop.example/"), "https://shop.example/…");
    }

    /// Only an enhanced status naming a bad destination drops an alert email; relaying
    /// denied, a sender the relay does not take, or a bare `550` are retried.
    #[test]
    fn only_a_bad_destination_is_refused_for_good() {
        for said in ["5.1.1 No such user here", "5.1.10 Null MX", "5.1.2 Bad destination system"] {
            assert!(bad_destination(said), "{said}");
        }
        for said in ["5.7.1 Relaying denied", "5.7.1 Sender address rejected: not owned by user", "No such user", ""] {
            assert!(!bad_destination(said), "{said}");
        }
    }
}
