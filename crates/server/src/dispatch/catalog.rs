//! An in-memory cache of applications and their endpoints, so publishing and dispatching
//! do not read the database for configuration. API writes invalidate it.

use hookline_store::{App, Endpoint, Store, StoreResult};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub struct Catalog {
    store: Arc<dyn Store>,
    apps: RwLock<HashMap<String, Arc<App>>>,
    endpoints: RwLock<HashMap<String, Arc<Vec<Arc<Endpoint>>>>>,
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>) -> Catalog {
        Catalog { store, apps: RwLock::default(), endpoints: RwLock::default() }
    }

    /// The application by id (not uid).
    pub async fn app(&self, app_id: &str) -> StoreResult<Arc<App>> {
        if let Some(app) = self.apps.read().expect("catalog lock").get(app_id) {
            return Ok(app.clone());
        }
        let app = Arc::new(self.store.get_app(app_id).await?);
        self.apps.write().expect("catalog lock").insert(app.id.clone(), app.clone());
        Ok(app)
    }

    pub async fn endpoints(&self, app_id: &str) -> StoreResult<Arc<Vec<Arc<Endpoint>>>> {
        if let Some(list) = self.endpoints.read().expect("catalog lock").get(app_id) {
            return Ok(list.clone());
        }
        let loaded: Vec<Arc<Endpoint>> = self.store.app_endpoints(app_id).await?.into_iter().map(Arc::new).collect();
        let list = Arc::new(loaded);
        self.endpoints.write().expect("catalog lock").insert(app_id.to_owned(), list.clone());
        Ok(list)
    }

    pub async fn endpoint(&self, app_id: &str, endpoint_id: &str) -> StoreResult<Option<Arc<Endpoint>>> {
        Ok(self.endpoints(app_id).await?.iter().find(|e| e.id == endpoint_id).cloned())
    }

    /// Forgets everything cached about one application.
    pub fn invalidate(&self, app_id: &str) {
        self.apps.write().expect("catalog lock").remove(app_id);
        self.endpoints.write().expect("catalog lock").remove(app_id);
    }
}
