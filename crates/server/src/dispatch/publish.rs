//! Where a message goes and how it is committed: one delivery per endpoint that takes it,
//! the message and all its deliveries in one synced commit, then the due ones handed to
//! this node's scheduler. Publishing, inbound ingest and operational events all end here.

use super::Engine;
use hookline_core::delivery::DeliveryState;
use hookline_core::id::prefix;
use hookline_core::routing::endpoint_accepts;
use hookline_core::UnixMs;
use hookline_store::{
    DeferredLane, Delivery, Endpoint, IdempotentResponse, Message, Publish, PublishOutcome, StoreResult,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

impl Engine {
    /// One delivery for each endpoint that takes the message: pending at `due_at` to an
    /// enabled endpoint; skipped to a disabled one, kept so that a recover sends it later.
    /// A delivery in an ordering lane (the message's key, or a FIFO endpoint) waits, its
    /// `due_at` kept as the earliest it may go: the store makes each lane's head due once
    /// the delivery before it is done, and not before that time.
    pub fn route(&self, endpoints: &[Arc<Endpoint>], message: &Message, due_at: UnixMs) -> Vec<Delivery> {
        let now = self.clock.now_ms();
        endpoints.iter().filter(|e| takes(e, message)).map(|e| self.delivery_to(e, message, due_at, now)).collect()
    }

    /// The delivery of `message` to `endpoint`: pending at `due_at`, skipped if the endpoint
    /// is disabled, waiting (not before `due_at`) if it goes in an ordering lane. An ordered
    /// one waits even to a disabled endpoint: skipped now, it would leave a hole in its lane
    /// (the lane's open delivery sent after a re-enable, then the next; this one only by a
    /// recover, after both). It is skipped when its turn comes, if the endpoint still is.
    pub fn delivery_to(&self, endpoint: &Endpoint, message: &Message, due_at: UnixMs, now: UnixMs) -> Delivery {
        let delivery =
            Delivery::pending(crate::new_id(prefix::DELIVERY, now), message, Some(endpoint.id.clone()), due_at, now);
        let delivery = Delivery { order_key: endpoint.lane_for(message), ..delivery };
        match (endpoint.disabled, &delivery.order_key) {
            // Its time kept only if later than now (a `deliverAt`): it reads as its
            // `nextAttempt`, which a publish time would misstate.
            (_, Some(_)) => {
                let next_at = delivery.next_at.filter(|at| *at > now);
                Delivery { state: DeliveryState::Waiting, next_at, ..delivery }
            }
            (true, None) => Delivery { state: DeliveryState::Skipped, next_at: None, ..delivery },
            (false, None) => delivery,
        }
    }

    /// Commits a message with its deliveries (and its idempotent answer or inbound dedupe
    /// key) in one synced transaction, then hands the open deliveries to the scheduler.
    /// Deliveries due soon are claimed by this node in the same commit and sent from
    /// memory; later ones wait in the store for whichever node claims them when due. Those
    /// to an endpoint whose lane here is behind (`lanes_behind`) are deferred in the store,
    /// for the lane to take back as it has room.
    ///
    /// When the commit claims, the commit and the hand-off finish even if the caller stops
    /// waiting (a client gone, a broker connection lost): they could otherwise leave
    /// deliveries claimed by this live node and never handed to it (`Finished`).
    pub async fn commit(
        self: &Arc<Self>,
        message: &Arc<Message>,
        deliveries: Vec<Delivery>,
        idempotency: Option<IdempotentResponse>,
        dedupe: Option<(String, String)>,
    ) -> StoreResult<PublishOutcome> {
        // Only deliveries sent from here count: a waiting one is made due by the store.
        let due_at = deliveries.iter().filter(|d| d.state == DeliveryState::Pending).filter_map(|d| d.next_at).min();
        let claim = due_at.filter(|at| self.holds_at(*at)).map(|_| self.token());
        let unclaimed = if claim.is_some() { self.lanes_behind(&deliveries) } else { Vec::new() };
        let publish =
            Publish { message: message.clone(), deliveries: deliveries.clone(), idempotency, dedupe, claim, unclaimed };
        let claims: Vec<Option<i64>> = publish.deliveries.iter().map(|d| publish.claim_of(d)).collect();
        // The lanes the store defers this publish's deliveries to (an ordered or skipped one
        // stays as it is: noting its lane costs the claimer one empty look).
        let deferred: Vec<DeferredLane> = publish
            .unclaimed
            .iter()
            .map(|endpoint_id| DeferredLane { app_id: message.app_id.clone(), endpoint_id: endpoint_id.clone() })
            .collect();
        let claimed = publish.claim.is_some();
        let work = self.clone().publish_and_hand_over(publish, message.clone(), deliveries, claims, deferred);
        if !claimed {
            return work.await;
        }
        run_to_end(work, &self.detached).await
    }

    /// Commits `publish`, then hands its claimed deliveries to this node's scheduler and
    /// notes the lanes the store deferred.
    async fn publish_and_hand_over(
        self: Arc<Self>,
        publish: Publish,
        message: Arc<Message>,
        deliveries: Vec<Delivery>,
        claims: Vec<Option<i64>>,
        deferred: Vec<DeferredLane>,
    ) -> StoreResult<PublishOutcome> {
        let outcome = self.store.publish(publish).await?;
        if !matches!(outcome, PublishOutcome::Created) {
            return Ok(outcome);
        }
        if !deferred.is_empty() {
            self.deferred.note(deferred);
        }
        // Ordered deliveries are not claimed at commit: the store made each lane's head due
        // (if the lane had no open delivery), and whichever node claims next sends it.
        let mut ordered = false;
        for (delivery, claim) in deliveries.into_iter().zip(claims).filter(|(d, _)| !d.state.is_final()) {
            match (&delivery.order_key, claim) {
                (Some(_), _) => ordered = true,
                (None, Some(claim)) => self.enqueue(delivery, Some(message.clone()), claim),
                (None, None) => {}
            }
        }
        if ordered {
            self.wake();
        }
        Ok(outcome)
    }
}

/// Runs `work` to its end even if the caller stops waiting (see [`Finished`]), counted in
/// `detached` once it runs on its own.
pub fn run_to_end<F: Future + Send + 'static>(work: F, detached: &Arc<Detached>) -> Finished<F>
where
    F::Output: Send,
{
    Finished(Some(Box::pin(work)), detached.clone())
}

/// Work that finishes even if its caller stops waiting: dropped before it is done, what is
/// left of it runs as a task of its own. A task only then: spawning every commit as a task
/// (the first version) cost `e2e` at 64 connections about 4% of its deliveries/s.
pub struct Finished<F: Future + Send + 'static>(Option<Pin<Box<F>>>, Arc<Detached>)
where
    F::Output: Send;

/// Work running on after its caller went away ([`Finished`]), counted so that shutdown
/// waits for it: dropped with the runtime, a write whose client left lost what follows its
/// commit (its idempotent answer kept, its deliveries handed over, a change's notices).
#[derive(Default)]
pub struct Detached {
    running: AtomicUsize,
    none_left: tokio::sync::Notify,
}

/// One detached task, counted until it ends, a panic included.
struct Running(Arc<Detached>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

impl Detached {
    /// Waits until no detached work is running, for at most `within`.
    pub async fn wait(&self, within: Duration) {
        let none_left = async {
            loop {
                let notified = self.none_left.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(within, none_left).await;
    }
}

impl<F: Future + Send + 'static> Future for Finished<F>
where
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let work = self.0.as_mut().expect("not polled after it finished");
        let done = ready!(work.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(done)
    }
}

impl<F: Future + Send + 'static> Drop for Finished<F>
where
    F::Output: Send,
{
    fn drop(&mut self) {
        if let Some(work) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    self.1.running.fetch_add(1, Ordering::SeqCst);
                    let running = Running(self.1.clone());
                    drop(runtime.spawn(async move {
                        work.await;
                        drop(running);
                    }));
                }
                Err(_) => tracing::error!("a commit was dropped outside a runtime; its deliveries wait for a restart"),
            }
        }
    }
}

/// Whether an endpoint takes a message: its event types and channels, if it names any.
pub fn takes(endpoint: &Endpoint, message: &Message) -> bool {
    let (types, channels) = (endpoint.event_types.as_deref(), endpoint.channels.as_deref());
    endpoint_accepts(types, channels, &message.event_type, message.channels.as_deref())
}

/// A delivery's ordering lane, `(endpoint_id, key)`.
pub fn lane(d: &Delivery) -> Option<(String, String)> {
    Some((d.endpoint_id.clone()?, d.order_key.clone()?))
}
