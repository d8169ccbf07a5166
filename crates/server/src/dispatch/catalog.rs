//! An in-memory cache of applications (by id and by uid) and their endpoints, so publishing
//! and dispatching do not read the database for configuration. API writes invalidate it;
//! a generation counter keeps a load that raced an invalidation from caching stale data.
//! Misses for one key at once share one load (see [`Flights`]).

use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};
use hookline_store::{App, Endpoint, Source, Store, StoreResult};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hookline_core::id::{has_prefix, prefix};

/// A resource's uid as a key of the cache, unless it has the form of an id of its kind.
fn uid_alias<'a>(uid: &'a Option<String>, kind: &str) -> Option<&'a str> {
    uid.as_deref().filter(|uid| !has_prefix(uid, kind))
}

/// An application's endpoints as cached: in the store's order (by id), and found by id
/// without a scan (a delivery looks its endpoint up; a fan-out's application may have
/// hundreds).
pub struct AppEndpoints {
    list: Vec<Arc<Endpoint>>,
    by_id: HashMap<String, Arc<Endpoint>>,
}

impl AppEndpoints {
    fn new(list: Vec<Arc<Endpoint>>) -> AppEndpoints {
        let by_id = list.iter().map(|e| (e.id.clone(), e.clone())).collect();
        AppEndpoints { list, by_id }
    }

    /// Whether the endpoint of this id is one of them.
    pub fn has(&self, endpoint_id: &str) -> bool {
        self.by_id.contains_key(endpoint_id)
    }
}

impl std::ops::Deref for AppEndpoints {
    type Target = [Arc<Endpoint>];

    fn deref(&self) -> &[Arc<Endpoint>] {
        &self.list
    }
}

/// One load from the store.
type Loading<T> = BoxFuture<'static, StoreResult<Arc<T>>>;
/// The loads running: for each key, the generation its load started at, and the load.
type Running<T> = HashMap<String, (u64, WeakShared<Loading<T>>)>;

/// The loads running, by key. Without them, every request that misses a key loads it on its
/// own: the first publishes to an application after a start, or every delivery of a
/// fan-out in flight when one of its endpoints changes, would each read and decode all its
/// endpoints. A miss joins a load only if it started no earlier than the miss's generation,
/// so nothing that started before an invalidation answers a miss after it.
///
/// The list holds its loads weakly: a load lives as long as a miss awaits it, as before, so
/// when they are all cancelled the store's read goes too (on PostgreSQL it holds a pooled
/// connection), and a load that panicked is not found again. Dead entries are dropped when
/// a load is added, so the list holds no more than the loads alive then.
struct Flights<T> {
    running: Mutex<Running<T>>,
}

impl<T: Send + Sync + 'static> Flights<T> {
    fn new() -> Flights<T> {
        Flights { running: Mutex::default() }
    }

    /// The result of a load of `key` started at `generation` or later, or of `load()`.
    async fn join<F>(&self, key: &str, generation: u64, load: impl FnOnce() -> F) -> StoreResult<Arc<T>>
    where
        F: Future<Output = StoreResult<Arc<T>>> + Send + 'static,
    {
        let flight: Shared<Loading<T>> = {
            let mut running = self.lock();
            let alive = running.get(key).and_then(|(started, weak)| Some((*started, weak.upgrade()?)));
            match alive {
                Some((started, flight)) if started >= generation => flight,
                _ => {
                    let flight = load().boxed().shared();
                    running.retain(|_, (_, weak)| weak.upgrade().is_some());
                    if let Some(weak) = flight.downgrade() {
                        running.insert(key.to_owned(), (generation, weak));
                    }
                    flight
                }
            }
        };
        // Awaited through a clone: a `Shared` that has finished no longer compares equal.
        let result = flight.clone().await;
        // The first one back takes the load off the list, unless a newer one replaced it.
        let mut running = self.lock();
        let ours = running.get(key).and_then(|(_, weak)| weak.upgrade()).is_some_and(|current| current.ptr_eq(&flight));
        if ours {
            running.remove(key);
        }
        result
    }

    /// The list, even after a panic while it was held: it only ever holds whole entries.
    fn lock(&self) -> std::sync::MutexGuard<'_, Running<T>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub struct Catalog {
    store: Arc<dyn Store>,
    /// Keyed by id and, where set, by uid too.
    apps: RwLock<HashMap<String, Arc<App>>>,
    endpoints: RwLock<HashMap<String, Arc<AppEndpoints>>>,
    /// Inbound sources, keyed by id and, where set, by uid.
    sources: RwLock<HashMap<String, Arc<Source>>>,
    generation: AtomicU64,
    app_loads: Flights<App>,
    endpoint_loads: Flights<AppEndpoints>,
    source_loads: Flights<Source>,
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>) -> Catalog {
        Catalog {
            store,
            apps: RwLock::default(),
            endpoints: RwLock::default(),
            sources: RwLock::default(),
            generation: AtomicU64::new(0),
            app_loads: Flights::new(),
            endpoint_loads: Flights::new(),
            source_loads: Flights::new(),
        }
    }

    /// The application by id or uid. A uid in an id's form (kept from before uids were
    /// refused that form) is no alias: cached under it, the application answered for the
    /// one whose id it is, whose deliveries went out with its secret and its policies.
    pub async fn app(&self, key: &str) -> StoreResult<Arc<App>> {
        let load = |store: Arc<dyn Store>, key: String| async move { store.get_app(&key).await };
        self.cached(&self.apps, &self.app_loads, key, load, |a| [Some(a.id.as_str()), uid_alias(&a.uid, prefix::APP)])
            .await
    }

    pub async fn endpoints(&self, app_id: &str) -> StoreResult<Arc<AppEndpoints>> {
        let load = |store: Arc<dyn Store>, app_id: String| async move {
            let loaded = store.app_endpoints(&app_id).await?;
            Ok(AppEndpoints::new(loaded.into_iter().map(Arc::new).collect()))
        };
        self.cached(&self.endpoints, &self.endpoint_loads, app_id, load, |_| [None, None]).await
    }

    pub async fn endpoint(&self, app_id: &str, endpoint_id: &str) -> StoreResult<Option<Arc<Endpoint>>> {
        Ok(self.endpoints(app_id).await?.by_id.get(endpoint_id).cloned())
    }

    /// An inbound source by id or uid (a uid in an id's form no alias, as an application's).
    pub async fn source(&self, key: &str) -> StoreResult<Arc<Source>> {
        let load = |store: Arc<dyn Store>, key: String| async move { store.get_source(&key).await };
        self.cached(&self.sources, &self.source_loads, key, load, |s| {
            [Some(s.id.as_str()), uid_alias(&s.uid, prefix::SOURCE)]
        })
        .await
    }

    /// Looks `key` up in `cache`, or loads it (sharing a load running for it) and caches it
    /// under `key` and the other keys `aliases` names (an app's id and uid), unless an
    /// invalidation happened while it loaded.
    async fn cached<T, F>(
        &self,
        cache: &RwLock<HashMap<String, Arc<T>>>,
        flights: &Flights<T>,
        key: &str,
        load: impl FnOnce(Arc<dyn Store>, String) -> F,
        aliases: impl Fn(&T) -> [Option<&str>; 2],
    ) -> StoreResult<Arc<T>>
    where
        T: Send + Sync + 'static,
        F: Future<Output = StoreResult<T>> + Send + 'static,
    {
        if let Some(found) = cache.read().expect("catalog lock").get(key) {
            return Ok(found.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let (store, owned) = (self.store.clone(), key.to_owned());
        let loaded = flights.join(key, generation, || load(store, owned).map(|r| r.map(Arc::new))).await?;
        let mut entries = cache.write().expect("catalog lock");
        if self.generation.load(Ordering::SeqCst) == generation {
            for alias in std::iter::once(key).chain(aliases(&loaded).into_iter().flatten()) {
                entries.insert(alias.to_owned(), loaded.clone());
            }
        }
        Ok(loaded)
    }

    /// Forgets everything cached (a missed notification, or the TTL backstop).
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.apps.write().expect("catalog lock").clear();
        self.endpoints.write().expect("catalog lock").clear();
        self.sources.write().expect("catalog lock").clear();
    }

    /// Forgets every cached source (sources change rarely; this keeps uid keys simple).
    pub fn invalidate_sources(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.sources.write().expect("catalog lock").clear();
    }

    /// Forgets everything cached about one application (by its id).
    pub fn invalidate(&self, app_id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut apps = self.apps.write().expect("catalog lock");
        if let Some(app) = apps.remove(app_id) {
            if let Some(uid) = &app.uid {
                apps.remove(uid);
            }
        }
        drop(apps);
        self.endpoints.write().expect("catalog lock").remove(app_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookline_store::StoreError;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// A load that counts its runs, finishes only when `gate` lets it, and says when it was
    /// dropped.
    struct Gated {
        runs: Arc<AtomicUsize>,
        gate: Arc<Semaphore>,
        dropped: Arc<AtomicBool>,
    }

    impl Gated {
        fn new() -> Gated {
            Gated { runs: Arc::default(), gate: Arc::new(Semaphore::new(0)), dropped: Arc::default() }
        }

        fn load(&self, value: u32) -> impl Future<Output = StoreResult<Arc<u32>>> {
            struct OnDrop(Arc<AtomicBool>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let (runs, gate, dropped) = (self.runs.clone(), self.gate.clone(), OnDrop(self.dropped.clone()));
            async move {
                let _dropped = dropped;
                runs.fetch_add(1, Ordering::SeqCst);
                // Each load takes one permit for good, so letting one finish lets no other.
                gate.acquire().await.expect("gate open").forget();
                Ok(Arc::new(value))
            }
        }

        fn runs(&self) -> usize {
            self.runs.load(Ordering::SeqCst)
        }
    }

    /// Waits (a bounded while) until `done`: a broken mechanism fails the test, not hangs it.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while !done() {
                tokio::task::yield_now().await;
            }
        });
        waited.await.unwrap_or_else(|_| panic!("{what} did not happen"));
    }

    fn spawn_join(
        flights: &Arc<Flights<u32>>,
        gated: &Gated,
        generation: u64,
        value: u32,
    ) -> tokio::task::JoinHandle<StoreResult<Arc<u32>>> {
        let (flights, load) = (flights.clone(), gated.load(value));
        tokio::spawn(async move { flights.join("app_1", generation, || load).await })
    }

    #[tokio::test]
    async fn misses_of_one_key_share_one_load() {
        let (flights, gated) = (Arc::new(Flights::<u32>::new()), Gated::new());
        let waiters: Vec<_> = (0..16).map(|n| spawn_join(&flights, &gated, 7, n)).collect();
        // Every spawned waiter reaches its await within a turn of this single-threaded
        // runtime; a few turns more, and only then may the load finish.
        until("the load starting", || gated.runs() > 0).await;
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        gated.gate.add_permits(1);
        let mut values = Vec::new();
        for waiter in waiters {
            values.push(*waiter.await.unwrap().unwrap());
        }
        assert_eq!(gated.runs(), 1, "one load for 16 misses");
        assert!(values.iter().all(|v| *v == values[0]), "every waiter got the one load's value: {values:?}");
        assert!(flights.lock().is_empty(), "a finished load is taken off the list");
    }

    #[tokio::test]
    async fn a_miss_after_an_invalidation_does_not_join_an_older_load() {
        let (flights, gated) = (Arc::new(Flights::<u32>::new()), Gated::new());
        let older = spawn_join(&flights, &gated, 1, 1);
        until("the older load starting", || gated.runs() == 1).await;
        let newer = spawn_join(&flights, &gated, 2, 2);
        until("the newer load starting", || gated.runs() == 2).await;
        // A miss from before the invalidation may join the newer load: it is fresher.
        let late = spawn_join(&flights, &gated, 1, 3);
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gated.runs(), 2, "the late miss joined the newer load");
        gated.gate.add_permits(1);
        assert_eq!(*older.await.unwrap().unwrap(), 1);
        assert_eq!(flights.lock().get("app_1").map(|(started, _)| *started), Some(2), "the newer load stays listed");
        gated.gate.add_permits(1);
        assert_eq!(*newer.await.unwrap().unwrap(), 2, "the newer generation's miss loaded again");
        assert_eq!(*late.await.unwrap().unwrap(), 2);
        assert!(flights.lock().is_empty());
    }

    #[tokio::test]
    async fn a_load_whose_misses_are_all_cancelled_is_dropped() {
        let (flights, gated) = (Arc::new(Flights::<u32>::new()), Gated::new());
        let cancelled = spawn_join(&flights, &gated, 0, 1);
        until("the load starting", || gated.runs() == 1).await;
        cancelled.abort();
        until("the load being dropped", || gated.dropped.load(Ordering::SeqCst)).await;
        let again = spawn_join(&flights, &gated, 0, 2);
        until("a new load starting", || gated.runs() == 2).await;
        gated.gate.add_permits(1);
        assert_eq!(*again.await.unwrap().unwrap(), 2, "the next miss did not join the dropped load");
        assert!(flights.lock().is_empty());
    }

    /// An application whose uid is another's id (kept from before uids were refused that
    /// form) is not cached under it: the other's deliveries went out with its secret.
    #[tokio::test]
    async fn a_uid_in_the_form_of_an_id_is_no_alias() {
        use hookline_store::conformance;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(hookline_store::sqlite::SqliteStore::open(dir.path(), &[9; 32]).unwrap());
        let first = store.create_app(conformance::app(1, None)).await.unwrap();
        let shadow = store.create_app(conformance::app(2, Some(&first.id))).await.unwrap();
        let catalog = Catalog::new(store);
        assert_eq!(catalog.app(&shadow.id).await.unwrap().id, shadow.id);
        assert_eq!(catalog.app(&first.id).await.unwrap().id, first.id);
    }

    /// The catalog over a real store: misses at once get the one list a shared load made
    /// (separate loads would each have made their own), and a miss after an invalidation a
    /// new one.
    #[tokio::test]
    async fn the_catalog_shares_a_load_and_loads_again_after_an_invalidation() {
        use hookline_store::conformance;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(hookline_store::sqlite::SqliteStore::open(dir.path(), &[9; 32]).unwrap());
        let app = store.create_app(conformance::app(1, None)).await.unwrap();
        for _ in 0..3 {
            store.create_endpoint(conformance::endpoint(&app.id, 1)).await.unwrap();
        }
        let catalog = Arc::new(Catalog::new(store));
        let misses: Vec<_> = (0..16)
            .map(|_| {
                let (catalog, app_id) = (catalog.clone(), app.id.clone());
                tokio::spawn(async move { catalog.endpoints(&app_id).await.unwrap() })
            })
            .collect();
        let mut lists = Vec::new();
        for miss in misses {
            lists.push(miss.await.unwrap());
        }
        assert_eq!(lists[0].len(), 3);
        assert!(lists.iter().all(|list| Arc::ptr_eq(list, &lists[0])), "16 misses at once, one list");
        catalog.invalidate(&app.id);
        let fresh = catalog.endpoints(&app.id).await.unwrap();
        assert!(!Arc::ptr_eq(&fresh, &lists[0]), "loaded again after the invalidation");
        assert_eq!(fresh.len(), 3);
    }

    #[tokio::test]
    async fn a_failed_load_is_not_kept() {
        let flights = Flights::<u32>::new();
        let failed = flights.join("app_1", 0, || async { Err(StoreError::Unavailable("disk".into())) }).await;
        assert_eq!(failed, Err(StoreError::Unavailable("disk".into())));
        let loaded = flights.join("app_1", 0, || async { Ok(Arc::new(5)) }).await;
        assert_eq!(loaded, Ok(Arc::new(5)), "the next miss loads again");
    }
}
