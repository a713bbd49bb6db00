//! Dispatchers decide what sending an event does.
//!
//! - [`InProcessDispatcher`] (the default) delivers from this process, in
//!   the background, through one pooled HTTP client, with a bound on the
//!   deliveries in flight. `send` returns at once with a [`Dispatched`]
//!   handle; nothing blocks the caller's thread or database transaction.
//! - [`DisabledDispatcher`] sends nothing.
//!
//! Applications can plug their own by implementing [`Dispatcher`].

use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::codec::ContentType;
use crate::config::Config;
use crate::deliver::{Delivery, DeliveryOutcome, HttpClient};
use crate::subscriber::{SenderId, Subscriber};
use crate::{Error, Result, Thorn};

/// One event on its way out: the message and how to send it. Built by
/// [`crate::Event::send`] and by model events.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Event name.
    pub event: Arc<str>,
    /// The message, before encoding.
    pub message: Value,
    /// The JSON encoding of `message`, made once.
    pub json: Bytes,
    /// Who sent it (selects owner-scoped subscribers).
    pub sender: Option<SenderId>,
    /// Request timeout.
    pub timeout: std::time::Duration,
    /// Extra HTTP headers.
    pub headers: HeaderMap,
    /// Subscribers added by the event itself.
    pub extra_subscribers: Vec<Subscriber>,
}

impl Outgoing {
    /// The body for a content type (JSON is encoded once and shared).
    pub fn body(&self, content_type: ContentType) -> Bytes {
        match content_type {
            ContentType::Json => self.json.clone(),
            other => Bytes::from(other.encode(&self.message)),
        }
    }
}

/// What `send` does with an event.
pub trait Dispatcher: Send + Sync + 'static {
    /// Starts delivering `outgoing`; returns at once.
    fn dispatch(&self, thorn: &Thorn, outgoing: Outgoing) -> Dispatched;
}

/// A handle on a dispatched event: wait for it to learn what each
/// subscriber answered. Dropping it does not cancel anything.
#[derive(Debug)]
#[must_use = "dropping the handle is fine, but then nobody learns whether delivery worked"]
pub struct Dispatched {
    rx: Option<oneshot::Receiver<Result<Vec<DeliveryOutcome>>>>,
}

impl Dispatched {
    /// A handle that is already finished with no deliveries.
    pub fn none() -> Self {
        Dispatched { rx: None }
    }

    /// Waits for every delivery of the event (async).
    ///
    /// Fails only when the subscribers could not be looked up or the
    /// dispatcher shut down; failed deliveries are in the outcomes.
    pub async fn outcomes(self) -> Result<Vec<DeliveryOutcome>> {
        match self.rx {
            None => Ok(Vec::new()),
            Some(rx) => rx.await.unwrap_or(Err(Error::DispatcherClosed)),
        }
    }

    /// Waits for every delivery of the event, blocking the thread.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime; use [`Dispatched::outcomes`]
    /// there.
    pub fn wait(self) -> Result<Vec<DeliveryOutcome>> {
        match self.rx {
            None => Ok(Vec::new()),
            Some(rx) => rx.blocking_recv().unwrap_or(Err(Error::DispatcherClosed)),
        }
    }
}

/// Sends nothing (`THORN_DISPATCHER=disabled`).
#[derive(Debug, Default, Clone, Copy)]
pub struct DisabledDispatcher;

impl Dispatcher for DisabledDispatcher {
    fn dispatch(&self, _thorn: &Thorn, outgoing: Outgoing) -> Dispatched {
        tracing::debug!(event = %outgoing.event, "dispatcher disabled: event not sent");
        Dispatched::none()
    }
}

/// A tokio runtime on background threads, owned by the dispatcher, so
/// deliveries run the same way whether the caller is synchronous (Diesel)
/// or async (SeaORM, axum), and pooled connections outlive any caller's
/// runtime.
#[derive(Debug)]
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            // Safe to call from any context, async ones included.
            rt.shutdown_background();
        }
    }
}

/// Delivers from this process (the default dispatcher).
#[derive(Debug, Clone)]
pub struct InProcessDispatcher {
    runtime: Arc<BackgroundRuntime>,
    client: HttpClient,
    limit: Arc<Semaphore>,
}

impl InProcessDispatcher {
    /// A dispatcher with its own HTTP client and two background threads.
    pub fn new(config: &Config) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("thorn-dispatch")
            .enable_all()
            .build()
            .map_err(|e| Error::Config {
                key: "dispatcher runtime".into(),
                message: e.to_string(),
            })?;
        Ok(InProcessDispatcher {
            runtime: Arc::new(BackgroundRuntime(Some(runtime))),
            client: HttpClient::new(config)?,
            limit: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
        })
    }

    /// The HTTP client deliveries go through.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }
}

impl Dispatcher for InProcessDispatcher {
    fn dispatch(&self, thorn: &Thorn, outgoing: Outgoing) -> Dispatched {
        let (tx, rx) = oneshot::channel();
        let thorn = thorn.clone();
        let client = self.client.clone();
        let limit = self.limit.clone();
        let handle = self
            .runtime
            .0
            .as_ref()
            .expect("runtime lives until drop")
            .handle();
        handle.spawn(async move {
            let result = deliver_all(&thorn, &client, &limit, outgoing).await;
            let _ = tx.send(result);
        });
        Dispatched { rx: Some(rx) }
    }
}

async fn deliver_all(
    thorn: &Thorn,
    client: &HttpClient,
    limit: &Arc<Semaphore>,
    outgoing: Outgoing,
) -> Result<Vec<DeliveryOutcome>> {
    let mut subscribers = thorn
        .subscribers_for(&outgoing.event, outgoing.sender.as_ref())
        .await?;
    subscribers.extend(
        outgoing
            .extra_subscribers
            .iter()
            .filter(|s| s.accepts_sender(outgoing.sender.as_ref()))
            .cloned(),
    );
    let mut form_body: Option<Bytes> = None;
    let mut tasks = JoinSet::new();
    for subscriber in subscribers {
        let body = match subscriber.content_type {
            ContentType::Json => outgoing.json.clone(),
            other => form_body
                .get_or_insert_with(|| outgoing.body(other))
                .clone(),
        };
        let delivery = Delivery {
            id: Uuid::now_v7(),
            event: outgoing.event.clone(),
            subscriber,
            body,
            headers: outgoing.headers.clone(),
            timeout: outgoing.timeout,
        };
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::DispatcherClosed)?;
        let client = client.clone();
        tasks.spawn(async move {
            let outcome = client.send(&delivery).await;
            drop(permit);
            outcome
        });
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => tracing::error!(error = %e, "webhook delivery task panicked"),
        }
    }
    Ok(outcomes)
}
