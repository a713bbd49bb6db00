//! The conformance suite of Thorn's SQL: every store and outbox operation,
//! run against one database through one ORM's [`Database`]. The ORM
//! integrations' tests run it on SQLite and PostgreSQL (feature
//! `conformance`); a third-party [`Database`] can run it too.
//!
//! [`run`] wants a database with Thorn's migrations applied and nothing
//! else in its tables. It panics, naming the check, on the first
//! operation that does not behave.

use std::time::Duration;

use uuid::Uuid;

mod outbox;
mod store;
use super::{Database, SqlOutbox, SqlStore};
use crate::outbox::{AttemptRecord, StoredEvent, StoredOptions, now_micros};
use crate::{SenderId, Subscriber, SubscriptionStore};
use outbox::{legacy_snapshots, outbox_operations};
use store::{
    cached_lookups_see_every_change, matching_reads_one_index_range_per_case, subscriptions,
};

const WORKER: &str = "conformance-worker";
const OTHER: &str = "conformance-other";
const LEASE: Duration = Duration::from_secs(60);

fn event(name: &str, sender: Option<SenderId>, extra: Vec<Subscriber>) -> StoredEvent {
    StoredEvent {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        message: serde_json::json!({"event": name, "data": {"n": 1}}),
        sender,
        options: StoredOptions {
            headers: vec![("x-test".into(), "1".into())],
            timeout_ms: 1000,
            retry: crate::RetryPolicy::outbox_default().into(),
            keepalive: true,
            recipients: extra.iter().map(|s| s.uuid).collect(),
            subscribers: extra,
            context: None,
        },
        created_at: now_micros(),
    }
}

fn attempt(delivery: Uuid, subscriber: Uuid, number: u32, status: u16) -> AttemptRecord {
    AttemptRecord {
        delivery_id: delivery,
        subscriber,
        number,
        started_at: now_micros(),
        status: Some(status),
        latency_us: 1500,
        error: (status >= 300).then(|| format!("HTTP {status}")),
        response: Some("ok".into()),
        worker: WORKER.into(),
    }
}

/// Runs every check on `db` (see the module docs).
pub async fn run<D: Database + Clone>(db: D) {
    let store = SqlStore::<D>::new(db.clone());
    let outbox = SqlOutbox::<D>::new(db.clone());
    outbox
        .check_schema("migrate")
        .await
        .expect("check_schema: the migrations are applied");
    subscriptions(&store).await;
    matching_reads_one_index_range_per_case(&db).await;
    cached_lookups_see_every_change(&db).await;
    // The outbox checks start from no subscriptions.
    for (s, _) in store.statuses(false).await.unwrap() {
        let owner = s
            .owner
            .clone()
            .expect("the checks' subscriptions have owners");
        assert!(store.delete(&owner, s.uuid).await.unwrap());
    }
    outbox_operations(db.clone(), &store, &outbox).await;
    legacy_snapshots(db, &outbox).await;
}
