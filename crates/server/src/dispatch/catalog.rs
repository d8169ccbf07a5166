//! An in-memory cache of applications (by id and by uid) and their endpoints, so publishing
//! and dispatching do not read the database for configuration. API writes invalidate it;
//! a generation counter keeps a load that raced an invalidation from caching stale data.
//! Misses for one key at once share one load (see [`Flights`]).

use futures_util::future::{BoxFuture, FutureExt, Shared};
use hookline_store::{App, Endpoint, Source, Store, StoreResult};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
}

impl std::ops::Deref for AppEndpoints {
    type Target = [Arc<Endpoint>];

    fn deref(&self) -> &[Arc<Endpoint>] {
        &self.list
    }
}

/// One load from the store, awaited by every miss that joined it.
type Load<T> = Shared<BoxFuture<'static, StoreResult<Arc<T>>>>;

/// The loads running, by key. Without them, every request that misses a key loads it on its
/// own: the first publishes to an application after a start, or the deliveries of a fan-out
/// in flight when one of its endpoints changes (hundreds to thousands at once), would each
/// read and decode all its endpoints. A load is joined only by misses of the same
/// generation, so nothing that started before an invalidation answers a miss after it.
struct Flights<T> {
    running: Mutex<HashMap<String, (u64, Load<T>)>>,
}

impl<T: Send + Sync + 'static> Flights<T> {
    fn new() -> Flights<T> {
        Flights { running: Mutex::default() }
    }

    /// The result of the load of `key` running for `generation`, or of `load()` started now.
    async fn join<F>(&self, key: &str, generation: u64, load: impl FnOnce() -> F) -> StoreResult<Arc<T>>
    where
        F: Future<Output = StoreResult<Arc<T>>> + Send + 'static,
    {
        let flight = {
            let mut running = self.running.lock().expect("catalog flights lock");
            match running.get(key) {
                Some((started, flight)) if *started == generation => flight.clone(),
                _ => {
                    let flight = load().boxed().shared();
                    running.insert(key.to_owned(), (generation, flight.clone()));
                    flight
                }
            }
        };
        let result = flight.clone().await;
        // The first one back takes the load off the list, unless a newer one replaced it. (A
        // load whose every waiter was cancelled stays until the next miss of its key.)
        let mut running = self.running.lock().expect("catalog flights lock");
        if running.get(key).is_some_and(|(_, current)| current.ptr_eq(&flight)) {
            running.remove(key);
        }
        result
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

    /// The application by id or uid.
    pub async fn app(&self, key: &str) -> StoreResult<Arc<App>> {
        let load = |store: Arc<dyn Store>, key: String| async move { store.get_app(&key).await };
        self.by_id_or_uid(&self.apps, &self.app_loads, key, load, |a| (&a.id, a.uid.as_deref())).await
    }

    pub async fn endpoints(&self, app_id: &str) -> StoreResult<Arc<AppEndpoints>> {
        if let Some(list) = self.endpoints.read().expect("catalog lock").get(app_id) {
            return Ok(list.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let (store, key) = (self.store.clone(), app_id.to_owned());
        let load = || async move {
            let loaded = store.app_endpoints(&key).await?;
            Ok(Arc::new(AppEndpoints::new(loaded.into_iter().map(Arc::new).collect())))
        };
        let list = self.endpoint_loads.join(app_id, generation, load).await?;
        let mut endpoints = self.endpoints.write().expect("catalog lock");
        if self.generation.load(Ordering::SeqCst) == generation {
            endpoints.insert(app_id.to_owned(), list.clone());
        }
        Ok(list)
    }

    pub async fn endpoint(&self, app_id: &str, endpoint_id: &str) -> StoreResult<Option<Arc<Endpoint>>> {
        Ok(self.endpoints(app_id).await?.by_id.get(endpoint_id).cloned())
    }

    /// An inbound source by id or uid.
    pub async fn source(&self, key: &str) -> StoreResult<Arc<Source>> {
        let load = |store: Arc<dyn Store>, key: String| async move { store.get_source(&key).await };
        self.by_id_or_uid(&self.sources, &self.source_loads, key, load, |s| (&s.id, s.uid.as_deref())).await
    }

    /// Looks `key` up in `cache`, or loads it (sharing a load running for it) and caches it
    /// under both its id and uid, unless an invalidation happened while it loaded.
    async fn by_id_or_uid<T, F>(
        &self,
        cache: &RwLock<HashMap<String, Arc<T>>>,
        flights: &Flights<T>,
        key: &str,
        load: impl FnOnce(Arc<dyn Store>, String) -> F,
        keys: impl Fn(&T) -> (&str, Option<&str>),
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
            let (id, uid) = keys(&loaded);
            entries.insert(id.to_owned(), loaded.clone());
            if let Some(uid) = uid {
                entries.insert(uid.to_owned(), loaded.clone());
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
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Semaphore;

    /// A load that counts its runs and finishes only when `gate` lets it.
    fn gated(
        runs: &Arc<AtomicUsize>,
        gate: &Arc<Semaphore>,
        value: u32,
    ) -> impl Future<Output = StoreResult<Arc<u32>>> {
        let (runs, gate) = (runs.clone(), gate.clone());
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _permit = gate.acquire().await.expect("gate open");
            Ok(Arc::new(value))
        }
    }

    #[tokio::test]
    async fn misses_of_one_key_share_one_load() {
        let flights = Arc::new(Flights::<u32>::new());
        let (runs, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
        let mut waiters = Vec::new();
        for n in 0..16 {
            let (flights, runs, gate) = (flights.clone(), runs.clone(), gate.clone());
            waiters.push(tokio::spawn(async move { flights.join("app_1", 7, || gated(&runs, &gate, n)).await }));
        }
        // Every waiter has joined before the load may finish.
        while flights.running.lock().unwrap().is_empty() || runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        let mut values = Vec::new();
        for waiter in waiters {
            values.push(*waiter.await.unwrap().unwrap());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one load for 16 misses");
        assert!(values.iter().all(|v| *v == values[0]), "every waiter got the one load's value: {values:?}");
        assert!(flights.running.lock().unwrap().is_empty(), "a finished load is taken off the list");
    }

    #[tokio::test]
    async fn a_miss_after_an_invalidation_does_not_join_an_older_load() {
        let flights = Arc::new(Flights::<u32>::new());
        let (runs, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
        let older = {
            let (flights, runs, gate) = (flights.clone(), runs.clone(), gate.clone());
            tokio::spawn(async move { flights.join("app_1", 1, || gated(&runs, &gate, 1)).await })
        };
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let newer = {
            let (flights, runs, gate) = (flights.clone(), runs.clone(), gate.clone());
            tokio::spawn(async move { flights.join("app_1", 2, || gated(&runs, &gate, 2)).await })
        };
        while runs.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(2);
        assert_eq!(*older.await.unwrap().unwrap(), 1);
        assert_eq!(*newer.await.unwrap().unwrap(), 2, "the newer generation's miss loaded again");
        assert!(flights.running.lock().unwrap().is_empty());
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
