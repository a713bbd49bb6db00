//! The pooled HTTP client every delivery goes through: signing, the
//! recipient checks at connect time, and reading just enough of a response.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::{Attempt, Delivery, DeliveryOutcome, RESPONSE_HEAD, headers};
use crate::config::Config;
use crate::error::{DeliveryError, SecurityError};
use crate::retry::{AttemptVerdict, classify_status, parse_retry_after};
use crate::signing::{Signer, standard_webhooks_signature};
use crate::subscriber::{SafeUrl, Secret};
use crate::validate::Validators;
use crate::{Error, Result};

/// The pooled HTTP client deliveries go through.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
    validators: Validators,
    signer: Signer,
}

/// How much of a response body is read so the connection can be reused.
const DRAIN_LIMIT: usize = 64 * 1024;

impl HttpClient {
    /// A client for `config` that enforces `validators`: no proxy from the
    /// environment, no redirects, TLS certificates verified, and every
    /// resolved address checked at connect time.
    pub(crate) fn new(config: &Config, validators: Validators) -> Result<Self> {
        // Our TLS provider unless the application installed its own. ring
        // keeps the build free of a C toolchain; rustls 0.23.48 deprecates
        // it for lacking post-quantum key exchange, so an application that
        // wants that installs aws-lc-rs's provider before building a Thorn.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true);
        if validators.checks_addresses() || !config.resolve_overrides.is_empty() {
            builder = builder.dns_resolver(Arc::new(GuardedResolver {
                validators: validators.clone(),
                overrides: config.resolve_overrides.clone(),
            }));
        }
        let client = builder.build().map_err(|e| Error::Start {
            what: "the HTTP client",
            source: Box::new(e),
        })?;
        Ok(HttpClient {
            client,
            validators,
            signer: config.hmac_signer,
        })
    }

    /// The recipient validators this client enforces.
    pub(crate) fn validators(&self) -> &Validators {
        &self.validators
    }

    /// The headers of an attempt, signatures included. `timestamp` is the
    /// Unix time of the attempt (for Standard Webhooks).
    pub(crate) fn headers_for(
        &self,
        delivery: &Delivery,
        timestamp: i64,
    ) -> std::result::Result<HeaderMap, DeliveryError> {
        let s = &delivery.subscriber;
        let mut h = HeaderMap::with_capacity(10 + delivery.headers.len());
        let value = |name: &str, v: &str| {
            HeaderValue::from_str(v).map_err(|_| DeliveryError::Header {
                event: delivery.event.to_string(),
                name: name.to_owned(),
                reason: "the value cannot be sent as an HTTP header value",
            })
        };
        for (name, v) in &delivery.headers {
            h.insert(name.clone(), v.clone());
        }
        h.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static(s.content_type.as_str()),
        );
        let mut id_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id: &str = delivery.id.hyphenated().encode_lower(&mut id_text);
        h.insert(
            HeaderName::from_static(headers::HOOK_EVENT),
            value("Hook-Event", &delivery.event)?,
        );
        h.insert(
            HeaderName::from_static(headers::HOOK_DELIVERY),
            value("Hook-Delivery", id)?,
        );
        let signature = self.signer.sign(
            s.hmac_digest,
            s.hmac_secret.expose().as_bytes(),
            &delivery.body,
        );
        h.insert(
            HeaderName::from_static(headers::HOOK_HMAC),
            value("Hook-HMAC", &signature)?,
        );
        let mut uuid_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        h.insert(
            HeaderName::from_static(headers::HOOK_SUBSCRIPTION),
            value(
                "Hook-Subscription",
                s.uuid.hyphenated().encode_lower(&mut uuid_text),
            )?,
        );
        if delivery.standard_webhooks {
            let secrets = std::iter::once(s.hmac_secret.expose())
                .chain(s.previous_secrets.iter().map(Secret::expose));
            let sig = standard_webhooks_signature(secrets, id, timestamp, &delivery.body);
            h.insert(
                HeaderName::from_static(headers::WEBHOOK_ID),
                value("webhook-id", id)?,
            );
            h.insert(
                HeaderName::from_static(headers::WEBHOOK_TIMESTAMP),
                HeaderValue::from(timestamp),
            );
            h.insert(
                HeaderName::from_static(headers::WEBHOOK_SIGNATURE),
                value("webhook-signature", &sig)?,
            );
        }
        if !delivery.keepalive {
            h.insert(
                reqwest::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        Ok(h)
    }

    /// Performs attempt number `number` (1-based) of `delivery`.
    pub(crate) async fn attempt(&self, delivery: &Delivery, number: u32) -> Attempt {
        let started = Instant::now();
        let mut response_head = Bytes::new();
        let (result, verdict) = match self.post(delivery).await {
            Ok((status, retry_after, head)) => {
                response_head = head;
                let verdict = classify_status(status, retry_after);
                let result = match verdict {
                    AttemptVerdict::Delivered => Ok(status),
                    _ => Err(DeliveryError::Status {
                        url: SafeUrl(&delivery.subscriber.url).to_string(),
                        status,
                    }),
                };
                (result, verdict)
            }
            Err(e @ (DeliveryError::Timeout { .. } | DeliveryError::Request { .. })) => {
                (Err(e), AttemptVerdict::Retry(None))
            }
            Err(e) => (Err(e), AttemptVerdict::Fail),
        };
        let outcome = DeliveryOutcome {
            delivery_id: delivery.id,
            event: delivery.event.clone(),
            subscriber: delivery.subscriber.uuid,
            url: delivery.subscriber.url.clone(),
            attempts: number,
            result,
            elapsed: started.elapsed(),
        };
        match &outcome.result {
            Ok(status) => tracing::debug!(
                event = %outcome.event, delivery = %outcome.delivery_id, url = %SafeUrl(&outcome.url),
                attempt = number, status, elapsed_ms = outcome.elapsed.as_millis() as u64,
                "webhook delivered"
            ),
            Err(error) => tracing::warn!(
                event = %outcome.event, delivery = %outcome.delivery_id, url = %SafeUrl(&outcome.url),
                attempt = number, %error, "webhook attempt failed"
            ),
        }
        Attempt {
            outcome,
            verdict,
            response_head,
        }
    }

    async fn post(
        &self,
        delivery: &Delivery,
    ) -> std::result::Result<(u16, Option<Duration>, Bytes), DeliveryError> {
        let url = &delivery.subscriber.url;
        self.validators.check_url(url)?;
        let now = chrono::Utc::now();
        let headers = self.headers_for(delivery, now.timestamp())?;
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
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now));
        // Read (a bounded part of) the body so the connection goes back to
        // the pool.
        let mut read = 0;
        let mut head = Vec::new();
        while read < DRAIN_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if head.len() < RESPONSE_HEAD {
                        let take = chunk.len().min(RESPONSE_HEAD - head.len());
                        head.extend_from_slice(&chunk[..take]);
                    }
                    read += chunk.len();
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(DeliveryError::Timeout {
                        url: SafeUrl(url).to_string(),
                        after: delivery.timeout,
                    });
                }
                Err(_) => break,
            }
        }
        Ok((status, retry_after, Bytes::from(head)))
    }
}

fn transport_error(url: &Url, timeout: Duration, e: reqwest::Error) -> DeliveryError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(blocked) = err.downcast_ref::<SecurityError>() {
            return DeliveryError::Blocked(SecurityError {
                url: SafeUrl(url).to_string(),
                rule: blocked.rule.clone(),
            });
        }
        source = err.source();
    }
    if e.is_timeout() {
        return DeliveryError::Timeout {
            url: SafeUrl(url).to_string(),
            after: timeout,
        };
    }
    DeliveryError::Request {
        url: SafeUrl(url).to_string(),
        // The URL is said once, without its password.
        source: e.without_url(),
    }
}

/// The client's resolver: every address a name resolves to is checked, at
/// connect time, so DNS rebinding cannot reach an internal address.
struct GuardedResolver {
    validators: Validators,
    overrides: HashMap<String, Vec<IpAddr>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let validators = self.validators.clone();
        let fixed = self.overrides.get(name.as_str()).cloned();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = match fixed {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            for addr in &addrs {
                validators.check_addr(&host, *addr)?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}
