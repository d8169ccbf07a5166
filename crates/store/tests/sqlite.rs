//! The SQLite backend against the conformance suite, plus what only SQLite has: files.

use hookline_store::sqlite::SqliteStore;
use hookline_store::{conformance, Store};

#[tokio::test]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let app = conformance::app(1, Some("kept"));
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.create_app(app.clone()).await.unwrap();
        let ep = store.create_endpoint(conformance::endpoint(&app.id, 2)).await.unwrap();
        store.publish(conformance::publish(&app.id, &[&ep.id], None, 3)).await.unwrap();
    }
    let reopened = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(reopened.get_app("kept").await.unwrap(), app);
    assert_eq!(reopened.pending_deliveries().await.unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_writes_share_commits_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SqliteStore::open(dir.path()).unwrap());
    let app = store.create_app(conformance::app(1, None)).await.unwrap();
    let ep = store.create_endpoint(conformance::endpoint(&app.id, 1)).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..200 {
        let (store, app_id, ep_id) = (store.clone(), app.id.clone(), ep.id.clone());
        tasks.push(tokio::spawn(async move {
            store.publish(conformance::publish(&app_id, &[&ep_id], Some(&format!("evt_{n}")), 10 + n)).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.pending_deliveries().await.unwrap().len(), 200);
}
