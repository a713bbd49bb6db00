//! SeaORM entities for Thorn's tables, to read them (an admin page of
//! deliveries, a report of failing subscribers) with the queries you
//! already write. Thorn itself writes these tables through [`crate::SeaOrmStore`]
//! and [`crate::SeaOrmOutbox`]; change them through those (or `thorn`'s
//! CLI), not through these entities.
//!
//! Times in the outbox tables are microseconds since the Unix epoch;
//! the subscribers' `created_at` / `updated_at` are RFC 3339 text.
//!
//! ```no_run
//! use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
//! use thorn_seaorm::entity::{attempt, delivery};
//!
//! # async fn run(db: sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
//! // Dead deliveries with every attempt made.
//! let dead = delivery::Entity::find()
//!     .filter(delivery::Column::State.eq("dead"))
//!     .find_with_related(attempt::Entity)
//!     .all(&db)
//!     .await?;
//! for (d, attempts) in dead {
//!     println!("{} to {}: {} attempts", d.id, d.url, attempts.len());
//! }
//! # Ok(())
//! # }
//! ```

/// `thorn_subscribers`: stored subscriptions.
pub mod subscriber {
    use sea_orm::entity::prelude::*;

    /// One subscription.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "thorn_subscribers")]
    pub struct Model {
        /// Subscription id (uuid text); sent as `Hook-Subscription`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub uuid: String,
        /// Event pattern.
        pub event: String,
        /// Recipient URL.
        pub url: String,
        /// Owner's user id as JSON text (`7`, `"alice"`), or `None`.
        pub owner: Option<String>,
        /// HMAC secret.
        pub hmac_secret: String,
        /// `sha1`, `sha256` or `sha512`.
        pub hmac_digest: String,
        /// Body content type.
        pub content_type: String,
        /// Earlier secrets still accepted, as a JSON array.
        pub previous_secrets: String,
        /// Standard Webhooks headers on or off; `None` follows the configuration.
        pub standard_webhooks: Option<bool>,
        /// Creation time, RFC 3339.
        pub created_at: String,
        /// Last change, RFC 3339.
        pub updated_at: String,
        /// Since when deliveries have been failing (µs), or `None`.
        pub failing_since: Option<i64>,
        /// When it was disabled (µs), or `None` while active.
        pub disabled_at: Option<i64>,
        /// Why it was disabled.
        pub disabled_reason: Option<String>,
        /// A recipient's row (a static or per-event subscriber the outbox
        /// delivers to), not a subscription.
        pub recipient_only: bool,
    }

    /// No relations (deliveries keep the subscriber's uuid as text).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `thorn_events`: model events written in the application's
/// transactions, fanned out once to deliveries.
pub mod event {
    use sea_orm::entity::prelude::*;

    /// One event.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "thorn_events")]
    pub struct Model {
        /// Event id (UUIDv7 text: ordered by creation).
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Event name (`article.created`).
        pub name: String,
        /// The message, JSON text (`{"event", "ref", "sender", "data"}`).
        pub message: String,
        /// The sender as JSON text, or `None`.
        pub sender: Option<String>,
        /// Sending options, JSON text.
        pub options: String,
        /// When it was written (µs).
        pub created_at: i64,
        /// When its deliveries were created (µs), or `None` while new.
        pub fanned_out_at: Option<i64>,
        /// Lease of the worker fanning it out (µs).
        pub locked_until: Option<i64>,
        /// That worker.
        pub locked_by: Option<String>,
    }

    /// An event has a delivery per subscriber.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        /// Its deliveries.
        #[sea_orm(has_many = "super::delivery::Entity")]
        Deliveries,
    }

    impl Related<super::delivery::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Deliveries.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// `thorn_deliveries`: one event to one subscriber, with one delivery id
/// (`Hook-Delivery`) for all its attempts.
pub mod delivery {
    use sea_orm::entity::prelude::*;

    /// One delivery.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "thorn_deliveries")]
    pub struct Model {
        /// Delivery id (UUIDv7 text), sent as `Hook-Delivery`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The event delivered.
        pub event_id: String,
        /// The subscription's uuid.
        pub subscriber_uuid: String,
        /// A recipient without a row in `thorn_subscribers` (static or
        /// per-event) as JSON text at fan-out; `None` for stored
        /// subscriptions, which are read at send time.
        pub recipient: Option<String>,
        /// The recipient URL at fan-out.
        pub url: String,
        /// `pending`, `delivered`, `dead` or `cancelled`.
        pub state: String,
        /// Attempts started so far.
        pub attempts: i32,
        /// When the next attempt is due (µs).
        pub run_at: i64,
        /// Lease of the worker sending it (µs).
        pub locked_until: Option<i64>,
        /// That worker.
        pub locked_by: Option<String>,
        /// Status of the last answer.
        pub last_status: Option<i32>,
        /// Error of the last attempt.
        pub last_error: Option<String>,
        /// Creation time (µs).
        pub created_at: i64,
        /// Last change (µs).
        pub updated_at: i64,
    }

    /// A delivery belongs to an event and has attempts.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        /// The event delivered.
        #[sea_orm(
            belongs_to = "super::event::Entity",
            from = "Column::EventId",
            to = "super::event::Column::Id"
        )]
        Event,
        /// Every attempt made.
        #[sea_orm(has_many = "super::attempt::Entity")]
        Attempts,
    }

    impl Related<super::event::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Event.def()
        }
    }

    impl Related<super::attempt::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Attempts.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// `thorn_attempts`: every attempt of every delivery.
pub mod attempt {
    use sea_orm::entity::prelude::*;

    /// One attempt.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "thorn_attempts")]
    pub struct Model {
        /// The delivery.
        #[sea_orm(primary_key, auto_increment = false)]
        pub delivery_id: String,
        /// Attempt number, from 1.
        #[sea_orm(primary_key, auto_increment = false)]
        pub attempt: i32,
        /// When it started (µs).
        pub started_at: i64,
        /// HTTP status, or `None` when no answer came.
        pub status: Option<i32>,
        /// How long it took (µs).
        pub latency_us: i64,
        /// What went wrong.
        pub error: Option<String>,
        /// The first bytes of the answer's body.
        pub response: Option<String>,
        /// The worker that made it.
        pub worker: String,
    }

    /// An attempt belongs to a delivery.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        /// Its delivery.
        #[sea_orm(
            belongs_to = "super::delivery::Entity",
            from = "Column::DeliveryId",
            to = "super::delivery::Column::Id"
        )]
        Delivery,
    }

    impl Related<super::delivery::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Delivery.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}
