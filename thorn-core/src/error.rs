//! The one error type of `thorn-core`.

use std::time::Duration;

use crate::codec::ContentType;

/// Everything that can go wrong between "an event is sent" and "the receiver
/// answered".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event's payload could not be turned into a message body: a
    /// `Serialize` implementation failed, a map had non-string keys, or the
    /// codec cannot represent the value.
    #[error("cannot encode the payload of event `{event}` as {content_type}: {source}")]
    Encode {
        /// Name of the event whose payload failed.
        event: String,
        /// The content type that was being produced.
        content_type: ContentType,
        /// What the encoder reported.
        #[source]
        source: serde_json::Error,
    },

    /// A recipient URL was refused by a recipient validator. Never retried.
    #[error(transparent)]
    Security(#[from] SecurityError),

    /// A subscriber URL could not be parsed.
    #[error("invalid subscriber URL `{url}`: {source}")]
    InvalidUrl {
        /// The text that was given.
        url: String,
        /// What the URL parser reported.
        #[source]
        source: url::ParseError,
    },

    /// A configuration value (from code or a `THORN_*` variable) is invalid.
    #[error("invalid configuration for {key}: {message}")]
    Config {
        /// The setting, e.g. `THORN_EVENT_TIMEOUT`.
        key: String,
        /// What is wrong with it.
        message: String,
    },

    /// Thorn's tables (subscriptions or outbox) could not be read or
    /// written: what the database or its driver reported.
    #[error("database: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A buffer was disabled while it still held events; flush it first.
    #[error("cannot disable the event buffer: {pending} event(s) are still held (flush first)")]
    BufferNotEmpty {
        /// Events still held.
        pending: usize,
    },

    /// A model event that follows the database transaction was raised
    /// inside a transaction (or savepoint) Thorn does not manage, so Thorn
    /// could not know whether it commits. Returned before the write runs.
    #[error(
        "{model}: event `{event}` is sent after its transaction commits, but the write runs inside a \
         database transaction Thorn does not manage, so Thorn cannot know whether it commits. Run the \
         transaction (and any savepoint in it) through Thorn: `thorn::diesel::transaction` with \
         Diesel, `thorn::seaorm::transaction` or `thorn::seaorm::begin` with SeaORM. Or turn on the \
         outbox (`Config::outbox`, THORN_OUTBOX=true), or declare the event with \
         `honors_transaction = false` to send it at once"
    )]
    UnmanagedTransaction {
        /// The model.
        model: &'static str,
        /// The event.
        event: String,
    },

    /// A model event that is written to the outbox, or that propagates its
    /// errors, was raised by a write on a bare connection, where the row
    /// commits before Thorn can write or check the event. Returned before
    /// the write runs.
    #[error(
        "{model}: event `{event}` is written to the outbox or propagates its errors, but the write \
         runs on a bare connection, where the row commits on its own before Thorn can write or check \
         the event: run the write inside `thorn::seaorm::transaction` (or `thorn::seaorm::begin`)"
    )]
    Autocommit {
        /// The model.
        model: &'static str,
        /// The event.
        event: String,
    },

    /// A managed transaction was asked to commit after a write inside it
    /// returned an error once its statement had run: committing would keep
    /// that row without its events.
    #[error(
        "the transaction cannot commit: a write inside it failed after its statement ran ({reason}), \
         and committing would keep that row without its webhook events; roll the transaction back"
    )]
    TransactionFailed {
        /// The error the write returned.
        reason: String,
    },

    /// Thorn's outbox table does not exist in the database written to: the
    /// migrations have not run.
    #[error(
        "the outbox table thorn_events does not exist in this database: run Thorn's migrations \
         first ({migrate}, or `thorn migrate`): {source}"
    )]
    OutboxMissing {
        /// The call that creates the tables, e.g. `thorn::diesel::migrate(conn)`.
        migrate: &'static str,
        /// What the database reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Thorn's tables are missing or older than this version of Thorn
    /// needs: found when a relay or worker starts.
    #[error(
        "Thorn's tables are {}, this version needs migration {needed}: run Thorn's \
         migrations first ({migrate}, or `thorn migrate`)",
        match found { Some(v) => format!("at migration {v}"), None => "missing".to_owned() }
    )]
    SchemaOutdated {
        /// The newest migration applied, `None` without Thorn's tables.
        found: Option<i64>,
        /// The newest migration this version knows.
        needed: i64,
        /// The call that applies them, e.g. `thorn::diesel::migrate(conn)`.
        migrate: &'static str,
    },

    /// The dispatcher was shut down before the delivery finished.
    #[error("the dispatcher shut down before the delivery finished")]
    DispatcherClosed,

    /// A header of an event cannot be sent (not a valid HTTP header
    /// value) or stored in the outbox (not UTF-8 text).
    #[error("header `{name}` of event `{event}`: {reason}")]
    Header {
        /// The event.
        event: String,
        /// The header.
        name: String,
        /// What is wrong with its value.
        reason: &'static str,
    },

    /// A background part of Thorn — the dispatcher's or a relay's threads,
    /// the HTTP client — could not start.
    #[error("cannot start {what}: {source}")]
    Start {
        /// What was starting, e.g. `the dispatcher runtime`.
        what: &'static str,
        /// What the system reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The in-process dispatcher already holds its limit of events waiting
    /// to start (`THORN_MAX_QUEUED`): this one is refused, not queued.
    /// Receivers slower than the events come is what fills it; the outbox
    /// (`THORN_OUTBOX=true`) keeps any backlog in the database instead.
    #[error(
        "event `{event}` not sent: {limit} events already wait in the dispatcher's queue \
         (THORN_MAX_QUEUED); receivers are slower than events arrive"
    )]
    QueueFull {
        /// The event refused.
        event: String,
        /// The queue's limit.
        limit: usize,
    },

    /// A bulk update of a model whose change events have `now_` filters:
    /// those compare each row with its old version, which a bulk statement
    /// does not load. Refused before the statement runs.
    #[error(
        "{model} has change events with now_ filters, which compare each row with its old version: {fix}"
    )]
    BulkTransitions {
        /// The model.
        model: &'static str,
        /// What to call instead.
        fix: &'static str,
    },

    /// A many-to-many helper was given a relation the model's
    /// `#[webhook_model(...)]` does not declare (or a change that is not a
    /// many-to-many one). Refused before the statement runs.
    #[error("{model} declares no many-to-many relation `{relation}` (declared: {})", if declared.is_empty() { "none".to_owned() } else { declared.join(", ") })]
    UnknownRelation {
        /// The model.
        model: &'static str,
        /// The relation asked for (or the change, when it is not a
        /// many-to-many one).
        relation: String,
        /// The relations the model declares.
        declared: Vec<&'static str>,
    },

    /// The REST API was built from a Thorn that has no subscription store.
    #[error(
        "the Thorn has no subscription store for the API to serve: build it with ThornBuilder::subscriptions(store)"
    )]
    NoSubscriptionStore,

    /// A background relay stopped by panicking (a bug: please report it).
    #[error("{what} panicked")]
    Panicked {
        /// What panicked, e.g. `the relay thread`.
        what: &'static str,
    },
}

/// Why one delivery attempt failed: what [`DeliveryOutcome::result`]
/// holds and delivery callbacks see. Failures before any attempt (a
/// payload that cannot be encoded, a full queue) are [`Error`]s.
///
/// [`DeliveryOutcome::result`]: crate::DeliveryOutcome::result
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// A recipient validator refused the URL or an address it resolved
    /// to; not retried.
    #[error(transparent)]
    Blocked(#[from] SecurityError),

    /// The HTTP request could not be completed (connection refused or reset,
    /// TLS failure, ...). The message names the cause at the bottom of the
    /// client's error (`Connection refused (os error 111)`).
    #[error("request to {url} failed: {}", causes(source))]
    Request {
        /// The recipient.
        url: String,
        /// What the HTTP client reported.
        #[source]
        source: reqwest::Error,
    },

    /// The recipient did not answer within the event's timeout.
    #[error("request to {url} timed out after {after:?}")]
    Timeout {
        /// The recipient.
        url: String,
        /// The timeout that expired.
        after: Duration,
    },

    /// The recipient answered with a status outside 2xx.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The recipient.
        url: String,
        /// The HTTP status code.
        status: u16,
    },

    /// The dispatcher shut down before the delivery's next attempt.
    #[error("the dispatcher shut down before the delivery finished")]
    Stopped,

    /// A header of the event cannot be sent as an HTTP header value.
    #[error("header `{name}` of event `{event}`: {reason}")]
    Header {
        /// The event.
        event: String,
        /// The header.
        name: String,
        /// What is wrong with its value.
        reason: &'static str,
    },
}

impl DeliveryError {
    /// True when the attempt timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, DeliveryError::Timeout { .. })
    }

    /// The status the receiver answered, when it answered outside 2xx.
    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `error`, then each distinct cause under it: `error sending request:
/// client error (Connect): tcp connect error: Connection refused`.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// A recipient URL was blocked by a validator: names the URL and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recipient {url} blocked: {rule}")]
#[non_exhaustive]
pub struct SecurityError {
    /// The URL (its password hidden) that was refused.
    pub url: String,
    /// The rule that refused it.
    pub rule: Blocked,
}

/// Which rule blocked a recipient, and why; its `Display` names the
/// validator (`block_internal_ips: 127.0.0.1 is loopback`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Blocked {
    /// The URL has no host.
    NoHost,
    /// `ensure_protocol`: the scheme is not allowed.
    Protocol {
        /// The URL's scheme.
        scheme: String,
        /// The schemes allowed.
        allowed: Vec<String>,
    },
    /// `ensure_port`: the port is not allowed.
    Port {
        /// The URL's port (`None` when the scheme has no default).
        port: Option<u16>,
        /// The ports allowed.
        allowed: Vec<u16>,
    },
    /// `block_internal_ips`: the address is internal.
    InternalAddress {
        /// The address (or `localhost`).
        address: String,
        /// What kind of internal address: `loopback`, `private`, ...
        kind: &'static str,
        /// The host name it was resolved from, when it was.
        resolved_from: Option<String>,
    },
    /// `block_cidr_network`: the address is in a blocked network.
    Network {
        /// The address.
        address: std::net::IpAddr,
        /// The blocked network.
        network: String,
        /// The host name it was resolved from, when it was.
        resolved_from: Option<String>,
    },
    /// A custom validator refused it.
    Custom {
        /// The validator's name.
        name: String,
        /// Its reason.
        reason: String,
    },
}

impl Blocked {
    /// The same rule, for an address `host` resolved to.
    pub(crate) fn resolved_from(mut self, host: &str) -> Self {
        if let Blocked::InternalAddress { resolved_from, .. }
        | Blocked::Network { resolved_from, .. } = &mut self
        {
            *resolved_from = Some(host.to_owned());
        }
        self
    }
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = |f: &mut std::fmt::Formatter<'_>, host: &Option<String>| match host {
            Some(host) => write!(f, " (resolved from {host})"),
            None => Ok(()),
        };
        match self {
            Blocked::NoHost => f.write_str("the URL has no host"),
            Blocked::Protocol { scheme, allowed } => write!(
                f,
                "ensure_protocol: scheme `{scheme}` is not one of {}",
                allowed.join(", ")
            ),
            Blocked::Port { port, allowed } => {
                let list: Vec<String> = allowed.iter().map(u16::to_string).collect();
                match port {
                    Some(p) => write!(f, "ensure_port: port {p} is not one of {}", list.join(", ")),
                    None => write!(
                        f,
                        "ensure_port: port (none) is not one of {}",
                        list.join(", ")
                    ),
                }
            }
            Blocked::InternalAddress {
                address,
                kind,
                resolved_from,
            } => {
                write!(f, "block_internal_ips: {address} is {kind}")?;
                from(f, resolved_from)
            }
            Blocked::Network {
                address,
                network,
                resolved_from,
            } => {
                write!(f, "block_cidr_network: {address} is in {network}")?;
                from(f, resolved_from)
            }
            Blocked::Custom { name, reason } => write!(f, "{name}: {reason}"),
        }
    }
}

/// Shorthand for `Result<T, thorn_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns any payload into a JSON value, the form every codec starts from.
///
/// This is where encoding fails (a failing `Serialize`, a map whose keys are
/// not strings); the error names the event so it can be found in logs.
pub(crate) fn to_message_value<T: serde::Serialize + ?Sized>(
    event: &str,
    payload: &T,
) -> Result<serde_json::Value> {
    serde_json::to_value(payload).map_err(|source| Error::Encode {
        event: event.to_owned(),
        content_type: ContentType::Json,
        source,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn payload_that_cannot_be_encoded_names_the_event() {
        let mut bad = std::collections::HashMap::new();
        bad.insert((1, 2), "tuple keys are not JSON object keys");
        let err = super::to_message_value("article.created", &bad).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("article.created"), "{text}");
    }
}
