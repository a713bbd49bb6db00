//! Thorn's tables: the SQL shared by the ORM integrations.
//!
//! Each integration runs [`MIGRATIONS`] in order, each once and inside a
//! transaction, recording the versions it applied in
//! `thorn_schema_migrations` (see [`MIGRATIONS_TABLE`]). The SQL runs on
//! SQLite and PostgreSQL alike; the third element of a step is for
//! PostgreSQL only. Times in the outbox tables are microseconds since the
//! Unix epoch; uuids and the subscribers' timestamps are text.

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::{Error, Result, SenderId, Subscriber};

/// The table recording which migrations ran.
pub const MIGRATIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS thorn_schema_migrations (version BIGINT PRIMARY KEY NOT NULL)";

/// Versioned SQL steps; each runs once, in order, inside a transaction:
/// `(version, SQL for both databases, SQL for PostgreSQL only)`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
    1,
    "CREATE TABLE IF NOT EXISTS thorn_subscribers (
        uuid TEXT PRIMARY KEY NOT NULL,
        event TEXT NOT NULL,
        url TEXT NOT NULL,
        owner TEXT NULL,
        hmac_secret TEXT NOT NULL,
        hmac_digest TEXT NOT NULL,
        content_type TEXT NOT NULL,
        previous_secrets TEXT NOT NULL DEFAULT '[]',
        standard_webhooks BOOLEAN NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS thorn_subscribers_event ON thorn_subscribers (event);
    CREATE INDEX IF NOT EXISTS thorn_subscribers_owner ON thorn_subscribers (owner, created_at);",
    "",
    ),
    (
        2,
        // The outbox. Times are microseconds since the Unix epoch.
        "ALTER TABLE thorn_subscribers ADD COLUMN failing_since BIGINT NULL;
    ALTER TABLE thorn_subscribers ADD COLUMN disabled_at BIGINT NULL;
    ALTER TABLE thorn_subscribers ADD COLUMN disabled_reason TEXT NULL;
    CREATE TABLE IF NOT EXISTS thorn_events (
        id TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL,
        message TEXT NOT NULL,
        sender TEXT NULL,
        options TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        fanned_out_at BIGINT NULL,
        locked_until BIGINT NULL,
        locked_by TEXT NULL
    );
    CREATE INDEX IF NOT EXISTS thorn_events_new ON thorn_events (created_at) WHERE fanned_out_at IS NULL;
    CREATE TABLE IF NOT EXISTS thorn_deliveries (
        id TEXT PRIMARY KEY NOT NULL,
        event_id TEXT NOT NULL REFERENCES thorn_events (id) ON DELETE CASCADE,
        subscriber_uuid TEXT NOT NULL,
        subscriber TEXT NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        run_at BIGINT NOT NULL,
        locked_until BIGINT NULL,
        locked_by TEXT NULL,
        last_status INTEGER NULL,
        last_error TEXT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS thorn_deliveries_due ON thorn_deliveries (run_at) WHERE state = 'pending';
    CREATE INDEX IF NOT EXISTS thorn_deliveries_event ON thorn_deliveries (event_id);
    CREATE INDEX IF NOT EXISTS thorn_deliveries_subscriber ON thorn_deliveries (subscriber_uuid, state);
    CREATE TABLE IF NOT EXISTS thorn_attempts (
        delivery_id TEXT NOT NULL REFERENCES thorn_deliveries (id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        started_at BIGINT NOT NULL,
        status INTEGER NULL,
        latency_us BIGINT NOT NULL,
        error TEXT NULL,
        response TEXT NULL,
        worker TEXT NOT NULL,
        PRIMARY KEY (delivery_id, attempt)
    );",
        // Listeners wake when an outbox write commits (one notification
        // per transaction: PostgreSQL folds identical ones).
        "CREATE OR REPLACE FUNCTION thorn_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('thorn_outbox', ''); RETURN NULL; END $$;
    DROP TRIGGER IF EXISTS thorn_events_notify ON thorn_events;
    CREATE TRIGGER thorn_events_notify AFTER INSERT ON thorn_events
        FOR EACH STATEMENT EXECUTE FUNCTION thorn_outbox_notify();",
    ),
    (
        3,
        // Deliveries follow their subscription: a stored subscription is
        // read at send time (by `subscriber_uuid`), so its secret lives in
        // `thorn_subscribers` only. `recipient` keeps the snapshot of a
        // recipient without a row (static subscribers, per-event ones).
        "ALTER TABLE thorn_deliveries ADD COLUMN recipient TEXT NULL;
    UPDATE thorn_deliveries SET recipient = subscriber
        WHERE subscriber_uuid NOT IN (SELECT uuid FROM thorn_subscribers);
    ALTER TABLE thorn_deliveries DROP COLUMN subscriber;",
        "",
    ),
    (
        4,
        // Claims of named subscriptions walk each one's due deliveries in
        // order, whatever another's backlog. Recipients without a
        // subscription (static and per-event subscribers) get a row of
        // their own, so their secrets live here only: never matched,
        // listed or changed as subscriptions.
        "CREATE INDEX IF NOT EXISTS thorn_deliveries_due_by_subscriber
        ON thorn_deliveries (subscriber_uuid, run_at) WHERE state = 'pending';
    ALTER TABLE thorn_subscribers ADD COLUMN recipient_only BOOLEAN NOT NULL DEFAULT FALSE;
    CREATE INDEX IF NOT EXISTS thorn_subscribers_owner_event ON thorn_subscribers (owner, event);
    DROP INDEX IF EXISTS thorn_subscribers_event;",
        "",
    ),
    (
        5,
        "",
        // Caches of subscriptions (`SqlStore::cached`) hear of every change
        // that can alter a lookup, from any process: not of recipient rows,
        // nor of `failing_since` alone (each failed delivery's). The
        // payload names the table's schema: channels are database-wide.
        "CREATE OR REPLACE FUNCTION thorn_subscribers_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' AND NEW.recipient_only THEN RETURN NULL; END IF;
        IF TG_OP = 'DELETE' AND OLD.recipient_only THEN RETURN NULL; END IF;
        IF TG_OP = 'UPDATE' AND OLD.recipient_only AND NEW.recipient_only THEN RETURN NULL; END IF;
        IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - 'failing_since') = (to_jsonb(NEW) - 'failing_since')
            THEN RETURN NULL; END IF;
        PERFORM pg_notify('thorn_subscribers', TG_TABLE_SCHEMA);
        RETURN NULL;
    END $$;
    DROP TRIGGER IF EXISTS thorn_subscribers_notify ON thorn_subscribers;
    CREATE TRIGGER thorn_subscribers_notify AFTER INSERT OR UPDATE OR DELETE ON thorn_subscribers
        FOR EACH ROW EXECUTE FUNCTION thorn_subscribers_notify();",
    ),
    (
        6,
        // A subscription's delivery log, newest first, a page at a time
        // (delivery ids are UUIDv7: ordered by creation). It replaces the
        // `(subscriber_uuid, state)` index, whose pending lookups the
        // partial index of migration 4 serves: every delivery written
        // keeps as many indexes up to date as before.
        "CREATE INDEX IF NOT EXISTS thorn_deliveries_log ON thorn_deliveries (subscriber_uuid, id);
    DROP INDEX IF EXISTS thorn_deliveries_subscriber;",
        "",
    ),
];

/// The channel `thorn_subscribers`' trigger (migration 5, PostgreSQL)
/// notifies of every change that can alter a lookup.
pub const SUBSCRIBERS_CHANNEL: &str = "thorn_subscribers";

/// The newest migration this version of Thorn knows.
pub const LATEST: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// A subscription as `thorn_subscribers` stores it, one field per column
/// the stores write: text uuid and URL, the owner as its JSON text (`7`,
/// `"alice"`, see [`owner_key`]), earlier secrets as a JSON array,
/// RFC 3339 timestamps with microseconds, `disabled_at` in microseconds.
/// Both ORM integrations encode and decode through it, so each reads the
/// rows the other wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberRecord {
    /// `uuid`.
    pub uuid: String,
    /// `event`: the pattern.
    pub event: String,
    /// `url`.
    pub url: String,
    /// `owner`.
    pub owner: Option<String>,
    /// `hmac_secret`.
    pub hmac_secret: String,
    /// `hmac_digest`.
    pub hmac_digest: String,
    /// `content_type`.
    pub content_type: String,
    /// `previous_secrets`.
    pub previous_secrets: String,
    /// `standard_webhooks`.
    pub standard_webhooks: Option<bool>,
    /// `created_at`.
    pub created_at: String,
    /// `updated_at`.
    pub updated_at: String,
    /// `disabled_at`.
    pub disabled_at: Option<i64>,
    /// `disabled_reason`.
    pub disabled_reason: Option<String>,
}

/// The error for a stored row that does not decode: names the table, the
/// row and the column.
pub fn corrupt(table: &str, id: &str, what: &str, detail: &dyn std::fmt::Display) -> Error {
    Error::Store(format!("{table} row {id}: invalid {what}: {detail}").into())
}

/// The health of a stored subscription, as `thorn subscribers list`
/// shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberStatus {
    /// Since when its deliveries have been failing (µs since the epoch).
    pub failing_since: Option<i64>,
    /// When it was disabled (µs since the epoch); `None` while active.
    pub disabled_at: Option<i64>,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
}

/// An owner as the `owner` column stores it (and as queries match it).
pub fn owner_key(owner: &SenderId) -> String {
    serde_json::to_string(owner).expect("sender ids are JSON")
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl From<&Subscriber> for SubscriberRecord {
    fn from(s: &Subscriber) -> Self {
        SubscriberRecord {
            uuid: s.uuid.to_string(),
            event: s.event.clone(),
            url: s.url.to_string(),
            owner: s.owner.as_ref().map(owner_key),
            hmac_secret: s.hmac_secret.expose().to_owned(),
            hmac_digest: s.hmac_digest.as_str().to_owned(),
            content_type: s.content_type.as_str().to_owned(),
            previous_secrets: serde_json::to_string(&s.previous_secrets).expect("strings are JSON"),
            standard_webhooks: s.standard_webhooks,
            created_at: timestamp(s.created_at),
            updated_at: timestamp(s.updated_at),
            disabled_at: s.disabled_at.map(|t| t.timestamp_micros()),
            disabled_reason: s.disabled_reason.clone(),
        }
    }
}

impl TryFrom<SubscriberRecord> for Subscriber {
    type Error = Error;

    /// Fails with [`Error::Store`] naming the row and the column that does
    /// not decode.
    fn try_from(r: SubscriberRecord) -> Result<Self> {
        let id = r.uuid.clone();
        let corrupt = |what: &str, detail: &dyn std::fmt::Display| {
            corrupt("thorn_subscribers", &id, what, detail)
        };
        let parse_time = |t: &str, what| {
            DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| corrupt(what, &e))
        };
        Ok(Subscriber {
            uuid: Uuid::parse_str(&r.uuid).map_err(|e| corrupt("uuid", &e))?,
            event: r.event,
            url: r.url.parse().map_err(|e| corrupt("url", &e))?,
            owner: r
                .owner
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt("owner", &e))?,
            hmac_secret: r.hmac_secret.into(),
            hmac_digest: r
                .hmac_digest
                .parse()
                .map_err(|e| corrupt("hmac_digest", &e))?,
            content_type: r
                .content_type
                .parse()
                .map_err(|e| corrupt("content_type", &e))?,
            previous_secrets: serde_json::from_str(&r.previous_secrets)
                .map_err(|e| corrupt("previous_secrets", &e))?,
            standard_webhooks: r.standard_webhooks,
            created_at: parse_time(&r.created_at, "created_at")?,
            updated_at: parse_time(&r.updated_at, "updated_at")?,
            disabled_at: r
                .disabled_at
                .map(|us| {
                    DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt("disabled_at", &us))
                })
                .transpose()?,
            disabled_reason: r.disabled_reason,
        })
    }
}
