//! One delivery: one signed HTTP POST of one event to one subscriber.
//!
//! Every delivery carries Thorn's headers:
//!
//! | header | value |
//! |---|---|
//! | `Hook-Event` | the event name |
//! | `Hook-Delivery` | the delivery's unique id (UUIDv7) |
//! | `Hook-HMAC` | signature of the exact body with the subscriber's secret |
//! | `Hook-Subscription` | the subscriber's uuid |
//! | `User-Agent` | `Mozilla/5.0 (compatible; thorn/<version>; reqwest/0.13)` |
//! | `Content-Type` | the subscriber's content type |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;
use uuid::Uuid;

use crate::config::Config;
use crate::error::SecurityError;
use crate::signing::Signer;
use crate::subscriber::Subscriber;
use crate::validate::Validators;
use crate::{Error, Result};

/// Header names Thorn sends.
pub mod headers {
    /// Name of the event.
    pub const HOOK_EVENT: &str = "hook-event";
    /// Unique id of the delivery, the same for every attempt.
    pub const HOOK_DELIVERY: &str = "hook-delivery";
    /// Signature of the body.
    pub const HOOK_HMAC: &str = "hook-hmac";
    /// The subscriber's uuid.
    pub const HOOK_SUBSCRIPTION: &str = "hook-subscription";
}

/// One event for one subscriber, ready to POST.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Unique id, sent as `Hook-Delivery`.
    pub id: Uuid,
    /// Event name, sent as `Hook-Event`.
    pub event: Arc<str>,
    /// The recipient.
    pub subscriber: Subscriber,
    /// The encoded body, in the subscriber's content type.
    pub body: Bytes,
    /// Extra headers from the event (a model's `headers` callback).
    pub headers: HeaderMap,
    /// Request timeout.
    pub timeout: Duration,
}

/// What happened to one delivery.
#[derive(Debug)]
pub struct DeliveryOutcome {
    /// The delivery's id (`Hook-Delivery`).
    pub delivery_id: Uuid,
    /// The event name.
    pub event: Arc<str>,
    /// The subscriber's uuid.
    pub subscriber: Uuid,
    /// Where it was sent.
    pub url: Url,
    /// The response status (2xx) or what went wrong.
    pub result: Result<u16>,
    /// Time from the start of the request to the end of the response.
    pub elapsed: Duration,
}

impl DeliveryOutcome {
    /// True when the receiver answered 2xx.
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }
}

/// The pooled HTTP client every delivery of one [`crate::Thorn`] goes through.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    validators: Validators,
    signer: Signer,
}

/// How much of a response body is read so the connection can be reused.
const DRAIN_LIMIT: usize = 64 * 1024;

impl HttpClient {
    /// A client for `config`: its user agent and recipient validators, no
    /// proxy from the environment, no redirects, TLS certificates verified.
    pub fn new(config: &Config) -> Result<Self> {
        // Our TLS provider unless the application installed its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true);
        if config.recipient_validators.checks_addresses() {
            builder = builder.dns_resolver(Arc::new(GuardedResolver {
                validators: config.recipient_validators.clone(),
            }));
        }
        let client = builder.build().map_err(|e| Error::Config {
            key: "http client".into(),
            message: e.to_string(),
        })?;
        Ok(HttpClient {
            client,
            validators: config.recipient_validators.clone(),
            signer: config.hmac_signer,
        })
    }

    /// The headers of a delivery, signature included.
    pub fn headers_for(&self, delivery: &Delivery) -> Result<HeaderMap> {
        let s = &delivery.subscriber;
        let mut h = HeaderMap::with_capacity(6 + delivery.headers.len());
        let value = |name: &str, v: &str| {
            HeaderValue::from_str(v).map_err(|_| Error::Config {
                key: name.to_owned(),
                message: format!("`{v}` cannot be sent as an HTTP header value"),
            })
        };
        for (name, v) in &delivery.headers {
            h.insert(name.clone(), v.clone());
        }
        h.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static(s.content_type.as_str()),
        );
        h.insert(
            HeaderName::from_static(headers::HOOK_EVENT),
            value("Hook-Event", &delivery.event)?,
        );
        h.insert(
            HeaderName::from_static(headers::HOOK_DELIVERY),
            value("Hook-Delivery", &delivery.id.to_string())?,
        );
        let signature = self
            .signer
            .sign(s.hmac_digest, s.hmac_secret.as_bytes(), &delivery.body);
        h.insert(
            HeaderName::from_static(headers::HOOK_HMAC),
            value("Hook-HMAC", &signature)?,
        );
        h.insert(
            HeaderName::from_static(headers::HOOK_SUBSCRIPTION),
            value("Hook-Subscription", &s.uuid.to_string())?,
        );
        Ok(h)
    }

    /// Performs one attempt of `delivery`.
    pub async fn send(&self, delivery: &Delivery) -> DeliveryOutcome {
        let started = Instant::now();
        let result = self.attempt(delivery).await;
        let outcome = DeliveryOutcome {
            delivery_id: delivery.id,
            event: delivery.event.clone(),
            subscriber: delivery.subscriber.uuid,
            url: delivery.subscriber.url.clone(),
            result,
            elapsed: started.elapsed(),
        };
        match &outcome.result {
            Ok(status) => tracing::debug!(
                event = %outcome.event, delivery = %outcome.delivery_id, url = %outcome.url,
                status, elapsed_ms = outcome.elapsed.as_millis() as u64, "webhook delivered"
            ),
            Err(error) => tracing::warn!(
                event = %outcome.event, delivery = %outcome.delivery_id, url = %outcome.url,
                %error, "webhook delivery failed"
            ),
        }
        outcome
    }

    async fn attempt(&self, delivery: &Delivery) -> Result<u16> {
        let url = &delivery.subscriber.url;
        self.validators.check_url(url)?;
        let headers = self.headers_for(delivery)?;
        let request = self
            .client
            .post(url.clone())
            .headers(headers)
            .timeout(delivery.timeout)
            .body(delivery.body.clone());
        let mut response = request
            .send()
            .await
            .map_err(|e| transport_error(url, delivery.timeout, e))?;
        let status = response.status().as_u16();
        // Read (a bounded part of) the body so the connection goes back to
        // the pool.
        let mut read = 0;
        while read < DRAIN_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(Error::Status {
                url: url.to_string(),
                status,
            })
        }
    }
}

fn transport_error(url: &Url, timeout: Duration, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        return Error::Timeout {
            url: url.to_string(),
            after: timeout,
        };
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(blocked) = err.downcast_ref::<SecurityError>() {
            return Error::Security(SecurityError {
                url: url.to_string(),
                rule: blocked.rule.clone(),
            });
        }
        source = err.source();
    }
    Error::Http {
        url: url.to_string(),
        source: e,
    }
}

/// The client's resolver: every address a name resolves to is checked, at
/// connect time, so DNS rebinding cannot reach an internal address.
struct GuardedResolver {
    validators: Validators,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let validators = self.validators.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                validators.check_addr(&host, *addr)?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}
