//! [`DeliveryLog`] over the outbox tables: each subscription's deliveries,
//! scoped by its uuid in every statement.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::outbox::{
    DeliveryHistory, DeliveryInfo, DeliveryLog, DeliveryPage, Redelivery, StoredEvent, now_micros,
};
use crate::sql::{Database, Kind, atomically, execute, query};
use crate::subscriber::BoxFuture;
use crate::{Result, Subscriber};

use super::SqlOutbox;
use super::deliveries::{delivery_row, insert_deliveries};
use super::events::write_events;
use super::history::{Which, history_of, infos, retry};

/// What a missing outbox table is reported with: the REST API is no
/// migration runner, so it names the step of either ORM.
const MIGRATE: &str = "thorn::diesel::migrate or thorn::seaorm::Migrator";

impl<D: Database> DeliveryLog for SqlOutbox<D> {
    fn deliveries_of(
        &self,
        subscription: Uuid,
        page: DeliveryPage,
    ) -> BoxFuture<'_, Result<Vec<DeliveryInfo>>> {
        let which = Which {
            subscription: Some(subscription),
            state: page.state,
            before: page.before,
            id: None,
        };
        self.run(Box::new(move |conn| {
            Box::pin(async move { infos(conn, which, page.limit).await })
        }))
    }

    fn delivery_of(
        &self,
        subscription: Uuid,
        id: Uuid,
    ) -> BoxFuture<'_, Result<Option<DeliveryHistory>>> {
        let which = Which {
            id: Some(id),
            subscription: Some(subscription),
            ..Which::default()
        };
        self.run(Box::new(move |conn| {
            Box::pin(async move { history_of(conn, which).await })
        }))
    }

    fn redeliver(&self, subscription: Uuid, id: Uuid) -> BoxFuture<'_, Result<Redelivery>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                if retry(conn, id, Some(subscription)).await? {
                    return Ok(Redelivery::Scheduled);
                }
                let (id, subscription) = (id.to_string(), subscription.to_string());
                let exists = query(
                    conn,
                    "SELECT id FROM thorn_deliveries WHERE id = $1 AND subscriber_uuid = $2",
                    vec![id.into(), subscription.into()],
                    &[Kind::Text],
                )
                .await?;
                Ok(if exists.is_empty() {
                    Redelivery::NotFound
                } else {
                    Redelivery::Busy
                })
            })
        }))
    }

    fn recover_since(
        &self,
        subscription: Uuid,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<Uuid>>> {
        self.recover(subscription, since, until)
    }

    fn send_to(
        &self,
        subscription: &Subscriber,
        event: StoredEvent,
    ) -> BoxFuture<'_, Result<Uuid>> {
        let subscription = subscription.clone();
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                atomically!(conn, {
                    let sent = async {
                        write_events(conn, std::slice::from_ref(&event), MIGRATE).await?;
                        let now = now_micros();
                        // Fanned out already: its one delivery is written here.
                        execute(
                            conn,
                            "UPDATE thorn_events SET fanned_out_at = $1 WHERE id = $2",
                            vec![now.into(), event.id.to_string().into()],
                        )
                        .await?;
                        let id = Uuid::now_v7();
                        let row =
                            delivery_row(id, &event.id.to_string(), &subscription, now, None)?;
                        insert_deliveries(conn, Vec::from(row)).await?;
                        Ok(id)
                    };
                    sent.await
                })
            })
        }))
    }
}
