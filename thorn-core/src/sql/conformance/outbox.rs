//! Conformance of the outbox: writes, claims, fan-out, attempts,
//! administration, and deliveries written by earlier versions.
//!
//! Long because its checks run as one sequence, each starting from the
//! tables the one before left.

use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::{LEASE, OTHER, WORKER, attempt, event};
use crate::outbox::{
    AfterAttempt, Among, DeliveryState, FanOut, NewDelivery, OutboxStore, StoredEvent, now_micros,
};
use crate::sql::outbox::write_events;
use crate::sql::{Database, SqlOutbox, SqlStore};
use crate::{SenderId, Subscriber, SubscriberLookup, SubscriptionStore};

/// A delivery the previous version wrote with its subscriber inline (in
/// `recipient`, secret included) is sent from it, and its first claim
/// moves the snapshot to a recipient row.
pub(super) async fn legacy_snapshots<D: Database + Clone>(db: D, outbox: &SqlOutbox<D>) {
    let old = Subscriber::new("legacy.*", "https://legacy.example/hook").unwrap();
    let written = event("legacy.created", None, Vec::new());
    let (delivery, e, o) = (Uuid::now_v7(), written.clone(), old.clone());
    db.run(Box::new(move |conn| {
        Box::pin(async move {
            write_events(conn, std::slice::from_ref(&e), "migrate").await?;
            let now = now_micros();
            crate::sql::execute(
                conn,
                "INSERT INTO thorn_deliveries (id, event_id, subscriber_uuid, recipient, url, \
                 state, attempts, run_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)",
                vec![
                    delivery.to_string().into(),
                    e.id.to_string().into(),
                    o.uuid.to_string().into(),
                    serde_json::to_string(&o).unwrap().into(),
                    o.url.to_string().into(),
                    now.into(),
                ],
            )
            .await
        })
    }))
    .await
    .expect("a delivery as the previous version wrote it");
    let claimed = outbox
        .claim_deliveries(WORKER, true, 10, LEASE, Among::Only(&[old.uuid]))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].subscriber, old, "sent from its snapshot");
    let secret = old.hmac_secret.expose().to_owned();
    let left = db
        .run(Box::new(move |conn| {
            Box::pin(async move {
                let sql = "SELECT (SELECT COUNT(*) FROM thorn_deliveries WHERE recipient IS NOT NULL), \
                     (SELECT COUNT(*) FROM thorn_subscribers WHERE recipient_only AND hmac_secret = $1)";
                let kinds = [crate::sql::Kind::BigInt, crate::sql::Kind::BigInt];
                let rows = crate::sql::query(conn, sql, vec![secret.into()], &kinds).await?;
                Ok((rows[0].int(0)?, rows[0].int(1)?))
            })
        }))
        .await
        .unwrap();
    assert_eq!(left, (0, 1), "the snapshot moved to a recipient row");
    assert_eq!(outbox.release(WORKER, vec![delivery]).await.unwrap(), 1);
}
pub(super) async fn outbox_operations<D: Database + Clone>(
    db: D,
    store: &SqlStore<D>,
    outbox: &SqlOutbox<D>,
) {
    let alice = SenderId::from("alice");
    let stored = Subscriber::new("order.*", "https://stored.example/hook")
        .unwrap()
        .with_owner(alice.clone());
    store.insert(stored.clone()).await.unwrap();
    // A recipient that is no stored subscription (a per-event one here):
    // it gets a row of its own, never matched or listed.
    let recipient = Subscriber::new("order.*", "https://static.example/hook")
        .unwrap()
        .with_owner(alice.clone());

    let events = vec![
        event(
            "order.created",
            Some(alice.clone()),
            vec![recipient.clone()],
        ),
        event("order.paid", Some(alice.clone()), Vec::new()),
    ];
    let written = events.clone();
    db.run(Box::new(move |conn| {
        Box::pin(async move { write_events(conn, &written, "migrate").await })
    }))
    .await
    .expect("write_events");
    let counts = outbox.counts().await.unwrap();
    assert_eq!(
        (counts.new_events, counts.pending),
        (2, 0),
        "counts after writing"
    );

    let claimed = outbox.claim_events(WORKER, 10, LEASE).await.unwrap();
    assert_eq!(
        claimed, events,
        "claim_events: every column round-trips, oldest first"
    );
    assert!(
        outbox
            .claim_events(OTHER, 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "claim_events: claimed events are not claimed twice"
    );

    let plan = |e: &StoredEvent, claimed: bool| FanOut {
        event: e.id,
        deliveries: [stored.clone(), recipient.clone()]
            .into_iter()
            .filter(|s| e.options.subscribers.contains(s) || s.uuid == stored.uuid)
            .map(|subscriber| NewDelivery {
                id: Uuid::now_v7(),
                subscriber,
                claimed,
            })
            .collect(),
    };
    let plans = vec![plan(&events[0], false), plan(&events[1], true)];
    let lost = outbox.fan_out(OTHER, plans.clone(), LEASE).await.unwrap();
    assert!(
        lost.is_empty(),
        "fan_out: a worker without the claim writes nothing"
    );
    let fanned = outbox.fan_out(WORKER, plans.clone(), LEASE).await.unwrap();
    assert_eq!(fanned, vec![events[0].id, events[1].id], "fan_out");
    let counts = outbox.counts().await.unwrap();
    assert_eq!(
        (counts.new_events, counts.pending, counts.claimed),
        (0, 3, 1),
        "{counts:?}"
    );

    // The paid event's delivery was written claimed by WORKER.
    let first = outbox
        .claim_deliveries(OTHER, true, 10, LEASE, Among::AllBut(&[]))
        .await
        .unwrap();
    assert_eq!(
        first.len(),
        2,
        "claim_deliveries: the two unclaimed first attempts"
    );
    let to_stored = first
        .iter()
        .find(|d| d.subscriber.uuid == stored.uuid)
        .unwrap();
    let to_static = first
        .iter()
        .find(|d| d.subscriber.uuid == recipient.uuid)
        .unwrap();
    assert_eq!(to_static.subscriber, recipient, "a recipient from its row");
    let mut bare = events[0].clone();
    bare.options.subscribers.clear();
    assert_eq!(*to_stored.event, bare, "the claimed event, loaded with it");
    // Its secret is stored in its row only, which no lookup returns.
    let secret = recipient.hmac_secret.expose().to_owned();
    let copies = db
        .run(Box::new(move |conn| {
            Box::pin(async move {
                let sql = "SELECT (SELECT COUNT(*) FROM thorn_events WHERE options LIKE $1) \
                     + (SELECT COUNT(*) FROM thorn_deliveries WHERE recipient IS NOT NULL)";
                let rows = crate::sql::query(
                    conn,
                    sql,
                    vec![format!("%{secret}%").into()],
                    &[crate::sql::Kind::BigInt],
                )
                .await?;
                rows[0].int(0)
            })
        }))
        .await
        .unwrap();
    assert_eq!(copies, 0, "no secret outside thorn_subscribers");
    assert!(
        !store
            .subscribers_for("order.created", Some(&alice))
            .await
            .unwrap()
            .iter()
            .chain(&store.list(&alice).await.unwrap())
            .any(|s| s.uuid == recipient.uuid),
        "a recipient row is no subscription"
    );
    assert!(!store.delete(&alice, recipient.uuid).await.unwrap());
    assert_eq!(to_stored.attempts, 0);
    assert_eq!(
        outbox
            .release(OTHER, vec![to_stored.id, to_static.id])
            .await
            .unwrap(),
        2
    );
    assert!(
        outbox
            .claim_deliveries(
                OTHER,
                true,
                10,
                LEASE,
                Among::AllBut(&[stored.uuid, recipient.uuid])
            )
            .await
            .unwrap()
            .is_empty(),
        "claim_deliveries: skipped subscriptions"
    );
    // Named subscriptions: only theirs, each paused one left.
    let only = outbox
        .claim_deliveries(OTHER, true, 10, LEASE, Among::Only(&[recipient.uuid]))
        .await
        .unwrap();
    assert_eq!(
        only.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![to_static.id],
        "claim_deliveries: only the named subscription's"
    );
    assert_eq!(outbox.release(OTHER, vec![to_static.id]).await.unwrap(), 1);
    let pause = |active| store.set_active(&alice, stored.uuid, active, "paused");
    assert!(pause(false).await.unwrap());
    assert!(
        outbox
            .claim_deliveries(OTHER, true, 10, LEASE, Among::Only(&[stored.uuid]))
            .await
            .unwrap()
            .is_empty(),
        "claim_deliveries: a named paused subscription's stay"
    );
    assert!(pause(true).await.unwrap());

    // The subscription changes: the next claim sends with its new secret.
    let mut rekeyed = stored.clone().rotate_secret("rotated");
    rekeyed.touch();
    assert!(store.update(rekeyed).await.unwrap());
    // So does a recipient: written again (a later event, a restarted app)
    // with a new secret.
    let renewed = recipient.clone().rotate_secret("static rotated");
    db.run(Box::new(move |conn| {
        Box::pin(async move { crate::sql::store::write_recipients(conn, &[&renewed]).await })
    }))
    .await
    .unwrap();
    let again = outbox
        .claim_deliveries(WORKER, true, 10, LEASE, Among::AllBut(&[]))
        .await
        .unwrap();
    let to_stored = again
        .iter()
        .find(|d| d.subscriber.uuid == stored.uuid)
        .unwrap()
        .clone();
    let to_static = again
        .iter()
        .find(|d| d.subscriber.uuid == recipient.uuid)
        .unwrap()
        .clone();
    assert_eq!(
        (
            to_stored.subscriber.hmac_secret.expose(),
            to_static.subscriber.hmac_secret.expose()
        ),
        ("rotated", "static rotated"),
        "the subscription and the recipient at send time"
    );
    assert_eq!(
        outbox
            .renew(WORKER, vec![to_stored.id, to_static.id], LEASE)
            .await
            .unwrap(),
        2,
        "renew"
    );
    assert_eq!(
        outbox
            .renew(OTHER, vec![to_stored.id], LEASE)
            .await
            .unwrap(),
        0
    );

    // Attempts: one delivered, one to retry; a record repeated is kept once.
    let retry_at = now_micros() - 1;
    let records = vec![
        (
            attempt(to_stored.id, stored.uuid, 1, 200),
            AfterAttempt::Delivered,
        ),
        (
            attempt(to_static.id, recipient.uuid, 1, 503),
            AfterAttempt::Retry { at: retry_at },
        ),
    ];
    assert_eq!(
        outbox.finish(WORKER, records.clone()).await.unwrap(),
        2,
        "finish"
    );
    assert_eq!(
        outbox.finish(WORKER, records).await.unwrap(),
        0,
        "finish: claims released"
    );
    let (info, attempts) = outbox
        .delivery(to_stored.id)
        .await
        .unwrap()
        .expect("delivery");
    assert_eq!(
        (info.state.as_str(), info.attempts, info.event.as_str()),
        ("delivered", 1, "order.created")
    );
    assert_eq!(attempts.len(), 1, "the attempt recorded once");
    assert_eq!(
        (attempts[0].status, attempts[0].worker.as_str()),
        (Some(200), WORKER)
    );
    assert_eq!(outbox.delivery(Uuid::now_v7()).await.unwrap(), None);

    let retries = outbox
        .claim_deliveries(WORKER, false, 10, LEASE, Among::AllBut(&[]))
        .await
        .unwrap();
    assert_eq!(retries.len(), 1, "claim_deliveries: the due retry");
    assert_eq!((retries[0].id, retries[0].attempts), (to_static.id, 1));
    assert!(
        !outbox.retry_delivery(to_static.id).await.unwrap(),
        "retry: not while claimed"
    );
    outbox
        .finish(
            WORKER,
            vec![(
                attempt(to_static.id, recipient.uuid, 2, 500),
                AfterAttempt::Dead,
            )],
        )
        .await
        .unwrap();

    // The paid event's delivery, claimed at fan-out, for a deleted subscription.
    assert!(store.delete(&alice, stored.uuid).await.unwrap());
    outbox
        .release(WORKER, vec![plans[1].deliveries[0].id])
        .await
        .unwrap();
    assert!(
        outbox
            .claim_deliveries(WORKER, true, 10, LEASE, Among::AllBut(&[]))
            .await
            .unwrap()
            .is_empty(),
        "a deleted subscription's delivery is not sent"
    );
    let counts = outbox.counts().await.unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.delivered,
            counts.dead,
            counts.cancelled
        ),
        (0, 1, 1, 1),
        "{counts:?}"
    );
    let dead = outbox
        .deliveries(Some(DeliveryState::Dead), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "deliveries: by state");
    assert_eq!(dead[0].id, to_static.id.to_string());
    assert_eq!(outbox.deliveries(None, 10).await.unwrap().len(), 3);
    assert_eq!(
        outbox.deliveries(None, 2).await.unwrap().len(),
        2,
        "deliveries: at most max"
    );

    // Recover: the dead one again, same id; then retry; then replay.
    let ids = outbox
        .recover(
            recipient.uuid,
            Utc::now() - chrono::Duration::hours(1),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ids, vec![to_static.id], "recover: same id");
    assert!(
        outbox
            .recover(
                recipient.uuid,
                Utc::now() - chrono::Duration::hours(1),
                None
            )
            .await
            .unwrap()
            .is_empty(),
        "recover: only dead ones"
    );
    assert!(
        outbox.retry_delivery(to_stored.id).await.unwrap(),
        "retry: same id"
    );
    assert!(!outbox.retry_delivery(Uuid::now_v7()).await.unwrap());
    let replayed = outbox
        .replay_event(events[0].id)
        .await
        .unwrap()
        .expect("replay");
    assert_eq!(
        replayed.len(),
        1,
        "replay: its own recipient (the subscription is gone)"
    );
    assert!(!replayed.contains(&to_static.id), "replay: new ids");
    assert_eq!(outbox.replay_event(Uuid::now_v7()).await.unwrap(), None);
    let counts = outbox.counts().await.unwrap();
    assert_eq!(counts.pending, 3, "{counts:?}");

    // Health: a failing stored subscription is disabled after the window.
    let failing = Subscriber::new("order.*", "https://failing.example/hook")
        .unwrap()
        .with_owner(alice.clone());
    store.insert(failing.clone()).await.unwrap();
    let strict = SqlOutbox::<D>::new(db.clone()).disable_failing_after(Some(Duration::ZERO));
    let e = event("order.shipped", Some(alice.clone()), Vec::new());
    let written = vec![e.clone()];
    db.run(Box::new(move |conn| {
        Box::pin(async move { write_events(conn, &written, "migrate").await })
    }))
    .await
    .unwrap();
    strict.claim_events(WORKER, 10, LEASE).await.unwrap();
    let d = NewDelivery {
        id: Uuid::now_v7(),
        subscriber: failing.clone(),
        claimed: true,
    };
    let extra = NewDelivery {
        id: Uuid::now_v7(),
        subscriber: failing.clone(),
        claimed: false,
    };
    strict
        .fan_out(
            WORKER,
            vec![FanOut {
                event: e.id,
                deliveries: vec![d.clone(), extra.clone()],
            }],
            LEASE,
        )
        .await
        .unwrap();
    strict
        .finish(
            WORKER,
            vec![(
                attempt(d.id, failing.uuid, 1, 500),
                AfterAttempt::Retry { at: now_micros() },
            )],
        )
        .await
        .unwrap();
    let disabled = store.statuses(true).await.unwrap();
    assert_eq!(
        disabled.len(),
        1,
        "failing for longer than the window: disabled"
    );
    let (info, _) = outbox.delivery(extra.id).await.unwrap().unwrap();
    assert_eq!(info.state, "dead", "its pending deliveries are dead");

    // Prune: nothing recent; everything finished with a zero age; then an owner.
    let none = outbox.prune_older(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(none, Default::default(), "prune: nothing that recent");
    let pruned = outbox.prune_older(Duration::ZERO).await.unwrap();
    assert!(
        pruned.deliveries >= 2 && pruned.attempts >= 1,
        "prune: {pruned:?}"
    );
    assert_eq!(outbox.counts().await.unwrap().delivered, 0);
    assert!(
        outbox.counts().await.unwrap().pending > 0,
        "prune keeps pending deliveries"
    );
    let owner = outbox.prune_owner(&alice).await.unwrap();
    assert!(owner.events >= 1, "prune_owner: {owner:?}");
    let counts = outbox.counts().await.unwrap();
    assert_eq!(
        (
            counts.new_events,
            counts.pending,
            counts.delivered,
            counts.dead,
            counts.cancelled
        ),
        (0, 0, 0, 0, 0),
        "prune_owner: every event alice sent, and its deliveries: {counts:?}"
    );
}
