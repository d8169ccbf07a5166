//! An in-memory cache of applications (by id and by uid) and their endpoints, so publishing
//! and dispatching do not read the database for configuration. API writes invalidate it;
//! a generation counter keeps a load that raced an invalidation from caching stale data.

use hookline_store::{App, Endpoint, Source, Store, StoreResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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

pub struct Catalog {
    store: Arc<dyn Store>,
    /// Keyed by id and, where set, by uid too.
    apps: RwLock<HashMap<String, Arc<App>>>,
    endpoints: RwLock<HashMap<String, Arc<AppEndpoints>>>,
    /// Inbound sources, keyed by id and, where set, by uid.
    sources: RwLock<HashMap<String, Arc<Source>>>,
    generation: AtomicU64,
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>) -> Catalog {
        Catalog {
            store,
            apps: RwLock::default(),
            endpoints: RwLock::default(),
            sources: RwLock::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// The application by id or uid.
    pub async fn app(&self, key: &str) -> StoreResult<Arc<App>> {
        self.by_id_or_uid(&self.apps, key, || self.store.get_app(key), |a| (&a.id, a.uid.as_deref())).await
    }

    pub async fn endpoints(&self, app_id: &str) -> StoreResult<Arc<AppEndpoints>> {
        if let Some(list) = self.endpoints.read().expect("catalog lock").get(app_id) {
            return Ok(list.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let loaded: Vec<Arc<Endpoint>> = self.store.app_endpoints(app_id).await?.into_iter().map(Arc::new).collect();
        let list = Arc::new(AppEndpoints::new(loaded));
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
        self.by_id_or_uid(&self.sources, key, || self.store.get_source(key), |s| (&s.id, s.uid.as_deref())).await
    }

    /// Looks `key` up in `cache`, or loads it and caches it under both its id and uid,
    /// unless an invalidation happened while it loaded. `load` runs only on a miss.
    async fn by_id_or_uid<T, F>(
        &self,
        cache: &RwLock<HashMap<String, Arc<T>>>,
        key: &str,
        load: impl FnOnce() -> F,
        keys: impl Fn(&T) -> (&str, Option<&str>),
    ) -> StoreResult<Arc<T>>
    where
        F: std::future::Future<Output = StoreResult<T>>,
    {
        if let Some(found) = cache.read().expect("catalog lock").get(key) {
            return Ok(found.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let loaded = Arc::new(load().await?);
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
