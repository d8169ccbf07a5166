//! The SQLite backend against the conformance suite, plus what only SQLite has: files.

use hookline_store::sqlite::SqliteStore;
use hookline_store::{conformance, Store, StoreError};

const KEY: [u8; 32] = [3; 32];

#[tokio::test]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), &KEY).unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn stranded_deliveries_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), &KEY).unwrap();
    let raw = rusqlite::Connection::open(dir.path().join("hookline.db")).unwrap();
    raw.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let forget = async |table: &'static str, id: &str| {
        raw.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id]).unwrap();
    };
    conformance::stranded_deliveries_are_closed(&store, forget).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let app = conformance::app(1, Some("kept"));
    {
        let store = SqliteStore::open(dir.path(), &KEY).unwrap();
        store.create_app(app.clone()).await.unwrap();
        let ep = store.create_endpoint(conformance::endpoint(&app.id, 2)).await.unwrap();
        store.publish(conformance::publish(&app.id, &[&ep.id], None, 3)).await.unwrap();
    }
    let reopened = SqliteStore::open(dir.path(), &KEY).unwrap();
    assert_eq!(reopened.get_app("kept").await.unwrap(), app);
    assert_eq!(reopened.count_open_deliveries().await.unwrap(), 1);
}

#[tokio::test]
async fn concurrent_writes_share_commits_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SqliteStore::open(dir.path(), &KEY).unwrap());
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
    assert_eq!(store.count_open_deliveries().await.unwrap(), 200);
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_need_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let app = conformance::app(1, None);
    let mut endpoint = conformance::endpoint(&app.id, 2);
    endpoint.headers.insert("Authorization".into(), "Bearer merchant-credential".into());
    {
        let store = SqliteStore::open(dir.path(), &KEY).unwrap();
        store.create_app(app.clone()).await.unwrap();
        store.create_endpoint(endpoint.clone()).await.unwrap();
        assert_eq!(store.get_endpoint(&app.id, &endpoint.id).await.unwrap(), endpoint);
        let mut rotated = app.clone();
        rotated.secret = "whsec_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into();
        rotated.previous_secrets = vec![hookline_store::StoredSecret { text: app.secret.clone(), expires_at: None }];
        assert!(store.set_app_secrets(rotated, &app).await.unwrap());
    }
    let raw = std::fs::read(dir.path().join("hookline.db")).unwrap();
    let wal = std::fs::read(dir.path().join("hookline.db-wal")).unwrap_or_default();
    let secrets = [endpoint.secrets[0].text.as_bytes(), b"merchant-credential", app.secret.as_bytes(), b"whsec_BBBB"];
    for needle in secrets {
        for bytes in [&raw, &wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "a secret is readable in the database files");
        }
    }
    let wrong = SqliteStore::open(dir.path(), &[4; 32]).unwrap();
    assert!(matches!(wrong.get_endpoint(&app.id, &endpoint.id).await, Err(StoreError::Corrupt(_))));
}

#[test]
fn the_key_file_is_created_once_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let first = hookline_store::sqlite::load_or_create_key(dir.path()).unwrap();
    let again = hookline_store::sqlite::load_or_create_key(dir.path()).unwrap();
    assert_eq!(first, again);
    let mode = std::fs::metadata(dir.path().join("secret.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A data directory Hookline makes is its user's alone (the database is readable by all
    // under the common umask).
    let data = dir.path().join("new").join("data");
    let key = hookline_store::sqlite::load_or_create_key(&data).unwrap();
    SqliteStore::open(&data, &key).unwrap();
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}
