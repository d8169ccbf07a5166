//! Email alerts: short plain-text emails to an application's alert address about its
//! endpoints. `endpoint.disabled` and `endpoint.enabled` go at once; `failing` and
//! `exhausted` messages are summed per endpoint into at most one email per
//! `alerts.digest_ms` (the first one after `alerts.gather_ms`, so a flood of failures
//! makes one email that counts them). Events are noted in memory without waiting on
//! anything; a task of its own sends, retries failed sends with backoff, logs and counts
//! them. Deliveries never wait for email. The outbox keeps one email per endpoint state
//! (the newest) and a bounded share per application.

use crate::clock::Clock;
use crate::config::AlertsConfig;
use crate::dispatch::notices::{self, Notice};
use crate::metrics as m;
use crate::wire::timestamp;
use hookline_core::UnixMs;
use hookline_store::App;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Emails waiting to be sent at most; beyond it the oldest is dropped (and counted).
const OUTBOX_MAX: usize = 10_000;
/// Emails of one application waiting at most; beyond it that application's oldest is
/// dropped, so that one tenant's burst never pushes out another's alerts.
const APP_QUEUED_MAX: usize = 100;
/// The longest wait between two tries of one email.
const RETRY_MAX_MS: i64 = 300_000;

/// One email to send, and when it may be tried next.
#[derive(Clone, Debug, PartialEq)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub body: String,
    tries: u32,
    not_before: UnixMs,
    /// The application it is about.
    app_id: String,
    /// For an email about an endpoint's state (disabled, enabled): the endpoint. A newer
    /// one replaces it while it waits.
    about: Option<String>,
}

/// What one endpoint's failures add up to since its last summary.
#[derive(Debug, Default)]
struct Digest {
    to: String,
    app_id: String,
    app: String,
    endpoint: String,
    url: String,
    failing: u64,
    exhausted: u64,
    /// When the first event not yet summed up came.
    since: Option<UnixMs>,
    /// When the last summary went out.
    sent_at: Option<UnixMs>,
}

#[derive(Default)]
struct State {
    outbox: VecDeque<Email>,
    digests: HashMap<String, Digest>,
}

pub struct Mailer {
    config: AlertsConfig,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    wake: Notify,
}

/// The address alerts about `app` go to: its `alertEmail`, else its metadata's
/// `svix.email` (Svix's place for it).
pub fn address(app: &App) -> Option<&str> {
    app.alert_email.as_deref().or_else(|| app.metadata.get("svix.email").map(String::as_str))
}

impl Mailer {
    /// A mailer for `config`, or `None` when no SMTP server is configured. Errors name a
    /// setting that cannot be used.
    pub fn new(config: &AlertsConfig, clock: Arc<dyn Clock>) -> Result<Option<Arc<Mailer>>, String> {
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
            clock,
            state: Mutex::default(),
            wake: Notify::new(),
        });
        tokio::spawn(mailer.clone().send_loop());
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
                let email = change_email(to, &app_name, endpoint, url, notice);
                let about = notice.data["endpointId"].as_str().map(str::to_owned);
                let email = Email { tries: 0, not_before: now, app_id: app.id.clone(), about, ..email };
                push(&mut state.outbox, email, Queued::Newest);
            }
            notices::ATTEMPT_FAILING | notices::ATTEMPT_EXHAUSTED => {
                let key = notice.data["endpointId"].as_str().unwrap_or("").to_owned();
                let digest = state.digests.entry(key).or_default();
                digest.to = to.to_owned();
                digest.app_id = app.id.clone();
                digest.app = app_name;
                digest.endpoint = endpoint.to_owned();
                digest.url = url.to_owned();
                match notice.event_type {
                    notices::ATTEMPT_FAILING => digest.failing += 1,
                    _ => digest.exhausted += 1,
                }
                digest.since.get_or_insert(now);
            }
            _ => return,
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Moves the summaries that are due into the outbox; returns when the next one is due.
    fn summarize(&self, now: UnixMs) -> Option<UnixMs> {
        let mut state = self.state.lock().expect("mailer lock");
        let State { outbox, digests } = &mut *state;
        let mut next = None::<UnixMs>;
        for digest in digests.values_mut() {
            let Some(since) = digest.since else { continue };
            let due = (since + self.config.gather_ms as i64)
                .max(digest.sent_at.map_or(i64::MIN, |at| at + self.config.digest_ms as i64));
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let email = Email { tries: 0, not_before: now, ..digest_email(digest, since) };
            push(outbox, email, Queued::Newest);
            (digest.failing, digest.exhausted, digest.since, digest.sent_at) = (0, 0, None, Some(now));
        }
        // Forget endpoints that have been quiet for a whole window.
        digests.retain(|_, d| d.since.is_some() || d.sent_at.is_some_and(|at| now < at + self.config.digest_ms as i64));
        next
    }

    async fn send_loop(self: Arc<Self>) {
        loop {
            let now = self.clock.now_ms();
            let mut next = self.summarize(now);
            let ready = {
                let mut state = self.state.lock().expect("mailer lock");
                let (ready, waiting): (VecDeque<Email>, VecDeque<Email>) =
                    state.outbox.drain(..).partition(|e| e.not_before <= now);
                state.outbox = waiting;
                if let Some(soonest) = state.outbox.iter().map(|e| e.not_before).min() {
                    next = Some(next.map_or(soonest, |n| n.min(soonest)));
                }
                ready
            };
            for email in ready {
                self.send(email).await;
                next = Some(next.map_or(now, |n| n.min(now)));
            }
            let notified = self.wake.notified();
            match next {
                Some(at) if at <= self.clock.now_ms() => {}
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = self.clock.sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Sends one email; a failure puts it back with a backoff (1 s, 2 s, … 5 min), unless
    /// the server refused it for good.
    async fn send(&self, mut email: Email) {
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(match email.to.parse() {
                Ok(to) => to,
                Err(e) => {
                    tracing::warn!(error = %e, "an alert address cannot be used; email dropped");
                    metrics::counter!(m::ALERT_EMAILS, "outcome" => "dropped").increment(1);
                    return;
                }
            })
            .subject(email.subject.clone())
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(email.body.clone());
        let sent = match message {
            Ok(message) => {
                self.transport.send(message).await.map(|_| ()).map_err(|e| (refuses_address(&e), e.to_string()))
            }
            Err(e) => Err((true, e.to_string())),
        };
        match sent {
            Ok(()) => {
                metrics::counter!(m::ALERT_EMAILS, "outcome" => "sent").increment(1);
            }
            // The address refused for good (no such mailbox): it would be refused at every
            // try, every 5 minutes, until pushed out of the outbox. A message that cannot be
            // built never can be.
            Err((true, e)) => {
                tracing::warn!(error = %e, "the SMTP server refused an alert email for good; email dropped");
                metrics::counter!(m::ALERT_EMAILS, "outcome" => "dropped").increment(1);
            }
            Err((false, e)) => {
                email.tries += 1;
                let wait = (1_000i64 << (email.tries - 1).min(9)).min(RETRY_MAX_MS);
                tracing::warn!(error = %e, tries = email.tries, retry_in_ms = wait, "could not send an alert email");
                metrics::counter!(m::ALERT_EMAILS, "outcome" => "failed").increment(1);
                email.not_before = self.clock.now_ms() + wait;
                push(&mut self.state.lock().expect("mailer lock").outbox, email, Queued::Older);
            }
        }
    }
}

/// Whether an email put in the outbox is newer than the ones waiting (a new one) or not
/// (a failed one put back).
#[derive(Clone, Copy, PartialEq)]
enum Queued {
    Newest,
    Older,
}

/// An endpoint's URL as an email shows it: without its query string and fragment, where
/// receivers often put a token (emails may travel in plain text), which stand as `?…`.
fn shown_url(url: &str) -> String {
    match url.find(['?', '#']) {
        Some(at) => format!("{}?…", &url[..at]),
        None => url.to_owned(),
    }
}

/// Whether the server refused the address for good: `550` (no such mailbox), `551`
/// (not local), `553` (mailbox name not allowed). Other permanent answers (a `535` refused
/// login, a `554` from a misconfigured relay) are the operator's to fix, and are retried
/// until they are.
fn refuses_address(e: &lettre::transport::smtp::Error) -> bool {
    e.is_permanent() && e.status().map(u16::from).is_some_and(|code| matches!(code, 550 | 551 | 553))
}

/// Puts `email` in the outbox. An email about an endpoint's state takes the place of one
/// waiting about the same endpoint, or gives way to it if that one is newer: its owner
/// needs the latest state, and an endpoint disabled and enabled a hundred times a second
/// (a script, or the dashboard's button) makes one email at a time, not a queue of them.
/// Past [`APP_QUEUED_MAX`] an application's own oldest email goes, past [`OUTBOX_MAX`]
/// the oldest of all.
fn push(outbox: &mut VecDeque<Email>, email: Email, queued: Queued) {
    let dropped = || metrics::counter!(m::ALERT_EMAILS, "outcome" => "dropped").increment(1);
    if let Some(same) =
        email.about.as_ref().and_then(|about| outbox.iter_mut().find(|e| e.about.as_ref() == Some(about)))
    {
        if queued == Queued::Newest {
            *same = email;
        }
        dropped();
        return;
    }
    let mut own = outbox.iter().enumerate().filter(|(_, e)| e.app_id == email.app_id);
    if let Some((oldest, _)) = own.next() {
        if own.count() + 1 >= APP_QUEUED_MAX {
            outbox.remove(oldest);
            dropped();
        }
    }
    if outbox.len() >= OUTBOX_MAX {
        outbox.pop_front();
        dropped();
    }
    outbox.push_back(email);
}

fn change_email(to: &str, app: &str, endpoint: &str, url: &str, notice: &Notice) -> Email {
    let (subject, body) = if notice.event_type == notices::ENDPOINT_DISABLED {
        let how = match notice.data["trigger"].as_str() {
            Some("automatic") => "Hookline disabled it",
            _ => "It was disabled through the API",
        };
        let since = match notice.data["failSince"].as_str() {
            Some(since) => format!(" Its deliveries had been failing since {since}."),
            None => String::new(),
        };
        (
            format!("[Hookline] Endpoint {endpoint} of {app} is disabled"),
            format!(
                "The endpoint {endpoint} ({url}) of {app} is disabled. {how}.{since}\n\n\
                 Messages published for it are kept as skipped deliveries. Once it works again, \
                 enable it and send what it missed: POST /api/v1/app/{{app}}/endpoint/{{endpoint}}/recover.\n"
            ),
        )
    } else {
        (
            format!("[Hookline] Endpoint {endpoint} of {app} is enabled"),
            format!("The endpoint {endpoint} ({url}) of {app} is enabled again; deliveries to it resume.\n"),
        )
    };
    Email { to: to.to_owned(), subject, body, tries: 0, not_before: 0, app_id: String::new(), about: None }
}

fn digest_email(d: &Digest, since: UnixMs) -> Email {
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
    Email {
        to: d.to.clone(),
        subject: format!("[Hookline] Deliveries to endpoint {} of {} are failing", d.endpoint, d.app),
        body: format!(
            "Deliveries to the endpoint {} ({}) of {} are failing. Since {}:\n{}\n\n\
             The attempts log shows each response: GET /api/v1/app/{{app}}/attempt/endpoint/{{endpoint}}.\n\
             This is at most one summary per endpoint per window; the next one counts what happens from now on.\n",
            d.endpoint,
            d.url,
            d.app,
            timestamp(since),
            lines.join("\n")
        ),
        tries: 0,
        not_before: 0,
        app_id: d.app_id.clone(),
        about: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(app: &str, about: Option<&str>, subject: &str) -> Email {
        Email {
            to: "ops@example.com".into(),
            subject: subject.into(),
            body: String::new(),
            tries: 0,
            not_before: 0,
            app_id: app.into(),
            about: about.map(str::to_owned),
        }
    }

    /// A token in an endpoint's query string never reaches an email.
    #[test]
    fn emails_show_urls_without_their_query() {
        assert_eq!(shown_url("https://shop.example/hooks?token=s3cret#x"), "https://shop.example/hooks?…");
        assert_eq!(shown_url("https://shop.example/hooks#s3cret"), "https://shop.example/hooks?…");
        assert_eq!(shown_url("https://shop.example/hooks"), "https://shop.example/hooks");
    }

    /// An endpoint flapping fills no queue: its newest state waits alone. One application's
    /// burst of emails about many endpoints never pushes out another's.
    #[test]
    fn one_tenant_cannot_flood_the_outbox() {
        let mut outbox = VecDeque::new();
        push(&mut outbox, email("app_b", Some("ep_b"), "b disabled"), Queued::Newest);
        for n in 0..1_000 {
            let state = if n % 2 == 0 { "disabled" } else { "enabled" };
            push(&mut outbox, email("app_a", Some("ep_a"), &format!("a {state} {n}")), Queued::Newest);
        }
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox[1].subject, "a enabled 999", "the newest state");
        // A failed send put back gives way to a newer one waiting.
        push(&mut outbox, email("app_a", Some("ep_a"), "a disabled (retried)"), Queued::Older);
        assert_eq!(outbox[1].subject, "a enabled 999");

        for n in 0..OUTBOX_MAX * 2 {
            push(&mut outbox, email("app_a", Some(&format!("ep_{n}")), "a's many"), Queued::Newest);
        }
        let own = outbox.iter().filter(|e| e.app_id == "app_a").count();
        assert_eq!(own, APP_QUEUED_MAX, "one application holds at most its share");
        assert!(outbox.iter().any(|e| e.subject == "b disabled"), "another application's alert is kept");
    }
}
