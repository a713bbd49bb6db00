//! [`Config`]: every setting, from code or from `THORN_*` variables.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use url::Url;

use crate::retry::RetryPolicy;
use crate::signing::Signer;
use crate::subscriber::StaticSubscribers;
use crate::validate::{Allowed, Validators};
use crate::{Error, Result};

/// Which dispatcher `send` uses (`THORN_DISPATCHER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DispatcherKind {
    /// Deliver from this process, in the background, with one pooled client.
    #[default]
    InProcess,
    /// Send nothing (development).
    Disabled,
}

/// Everything configurable, with the manual's defaults.
///
/// Settings, with the defaults of Thorn's manual.
///
/// Build a [`Config`] in code (`Config { event_timeout: ..., ..Config::default() }`)
/// or read it from `THORN_*` environment variables with [`Config::from_env`]:
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `THORN_EVENT_TIMEOUT` | seconds per HTTP request | `3.0` |
/// | `THORN_RETRY` | retry failed deliveries | `true` |
/// | `THORN_RETRY_MAX` | retries before giving up | `10` |
/// | `THORN_RETRY_DELAY` | seconds between retries | `60` |
/// | `THORN_OUTBOX_RETRY_SCHEDULE` | waits between retries through the outbox, ±20% | `5s,5m,30m,2h,5h,10h,10h` |
/// | `THORN_SUBSCRIBERS` | static subscribers, JSON (see [`StaticSubscribers::from_json`]) | none |
/// | `THORN_DISPATCHER` | `default` (in-process) or `disabled` | `default` |
/// | `THORN_OUTBOX` | write model events to the outbox table instead of holding them in memory until COMMIT | `false` |
/// | `THORN_HMAC_SIGNER` | `sign` or `compat_sign` | `sign` |
/// | `THORN_EVENT_CHOICES` | allowed event patterns for subscriptions, JSON list or comma-separated | any |
/// | `THORN_SIGNAL_HONORS_TRANSACTION` | model events follow the database transaction | `true` |
/// | `THORN_BASE_URL` | base joined to model `reverse` paths for the `ref` field | none |
/// | `THORN_MAX_CONCURRENCY` | in-process deliveries in flight at once | `64` |
/// | `THORN_MAX_PER_HOST` | of those, to one scheme/host/port | `16` |
/// | `THORN_MAX_QUEUED` | in-process events waiting to start; beyond, new ones are refused (`Error::QueueFull`) | `100000` |
/// | `THORN_STANDARD_WEBHOOKS` | also send Standard Webhooks signature headers | `false` |
/// | `THORN_ALLOW_RECIPIENTS` | recipients let past the port and internal-address rules, comma-separated `host:port` or CIDR (`127.0.0.1:8787,10.1.0.0/16`); the scheme and other rules still apply | none |
///
/// The recipient validators themselves are set in code
/// ([`Config::recipient_validators`]); `THORN_ALLOW_RECIPIENTS` adds
/// exceptions to them ([`Validators::allowing`]).
///
/// ```
/// use std::time::Duration;
/// use thorn_core::Config;
///
/// let env = [("THORN_EVENT_TIMEOUT", "1.5"), ("THORN_DISPATCHER", "disabled")];
/// let config = Config::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap();
/// assert_eq!(config.event_timeout, Duration::from_millis(1500));
/// assert!(Config::from_lookup(|k| (k == "THORN_RETRY_MAX").then(|| "ten".into())).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Timeout of one HTTP request (`THORN_EVENT_TIMEOUT`, 3 s).
    pub event_timeout: Duration,
    /// Retries: `THORN_RETRY` (on), `THORN_RETRY_MAX` (10),
    /// `THORN_RETRY_DELAY` (60 s), fixed delay unless set otherwise.
    pub retry: RetryPolicy,
    /// Retries through the outbox, where a delivery can wait for days:
    /// [`RetryPolicy::outbox_default`] (7 retries over about a day),
    /// `THORN_OUTBOX_RETRY_SCHEDULE` (`5s,5m,30m,2h,5h,10h,10h`, ±20%).
    /// An event's own policy wins.
    pub outbox_retry: RetryPolicy,
    /// Static and callback subscribers (`THORN_SUBSCRIBERS`).
    pub subscribers: StaticSubscribers,
    /// The dispatcher (`THORN_DISPATCHER`).
    pub dispatcher: DispatcherKind,
    /// Where model events that honour the transaction wait for COMMIT
    /// (`THORN_OUTBOX`, off): `false` holds them in memory and hands them
    /// to the dispatcher after COMMIT; `true` writes them to the outbox
    /// table in the caller's transaction, for a relay or `thorn worker` to
    /// deliver. See [`crate::integration`].
    pub outbox: bool,
    /// The `Hook-HMAC` signer (`THORN_HMAC_SIGNER`).
    pub hmac_signer: Signer,
    /// Event patterns subscriptions may use (`THORN_EVENT_CHOICES`); `None`
    /// allows any.
    pub event_choices: Option<Vec<String>>,
    /// Rules every recipient URL must pass, checked on the addresses it
    /// resolves to at delivery (what Python Thorn's
    /// `THORN_RECIPIENT_VALIDATORS` setting held; set in code here, with
    /// exceptions from `THORN_ALLOW_RECIPIENTS`). The default
    /// refuses internal addresses, 127.0.0.1 included; a local test allows
    /// plain http to anywhere with
    /// `Validators::new([validate::ensure_protocol(["http"])])`.
    pub recipient_validators: Validators,
    /// Recipients let past the port and internal-address rules of
    /// `recipient_validators`, whatever they are set to
    /// (`THORN_ALLOW_RECIPIENTS`, none): see [`Config::validators`]. They
    /// apply to the subscription URLs the REST API accepts too, so any of
    /// its users may point a subscription at a listed receiver.
    pub allowed_recipients: Vec<Allowed>,
    /// Model events leave only after their database transaction commits
    /// (`THORN_SIGNAL_HONORS_TRANSACTION`, on); an event's own
    /// `honors_transaction` overrides it. Off, model events are sent as
    /// they are raised, committed or not. See [`crate::integration`].
    pub signal_honors_transaction: bool,
    /// Base URL joined to model `reverse` paths (`THORN_BASE_URL`).
    pub base_url: Option<Url>,
    /// In-process deliveries in flight at once (`THORN_MAX_CONCURRENCY`, 64).
    pub max_concurrency: usize,
    /// In-process deliveries in flight to one scheme/host/port at once.
    pub max_per_host: usize,
    /// In-process events waiting to start at most (`THORN_MAX_QUEUED`,
    /// 100,000): beyond it a new event is refused with
    /// [`Error::QueueFull`], logged and returned
    /// to whoever waits for it. The outbox has no such limit.
    pub max_queued: usize,
    /// Also send Standard Webhooks headers (`webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`) to every subscriber
    /// (`THORN_STANDARD_WEBHOOKS`); subscribers can opt in one by one.
    pub standard_webhooks: bool,
    /// Fixed DNS answers, like curl's `--resolve`: `host -> addresses`.
    /// The addresses are still checked by the recipient validators.
    pub resolve_overrides: HashMap<String, Vec<IpAddr>>,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            event_timeout: Duration::from_secs(3),
            retry: RetryPolicy::default(),
            outbox_retry: RetryPolicy::outbox_default(),
            subscribers: StaticSubscribers::default(),
            dispatcher: DispatcherKind::default(),
            outbox: false,
            hmac_signer: Signer::default(),
            event_choices: None,
            recipient_validators: Validators::default(),
            allowed_recipients: Vec::new(),
            signal_honors_transaction: true,
            base_url: None,
            max_concurrency: 64,
            max_per_host: 16,
            max_queued: 100_000,
            standard_webhooks: false,
            resolve_overrides: HashMap::new(),
            user_agent: default_user_agent(),
        }
    }
}

/// `Mozilla/5.0 (compatible; thorn/<version>; reqwest/0.13)`, the shape of
/// Python Thorn's user agent.
pub(crate) fn default_user_agent() -> String {
    format!(
        "Mozilla/5.0 (compatible; thorn/{}; reqwest/0.13)",
        env!("CARGO_PKG_VERSION")
    )
}

fn invalid(key: &str, message: impl Into<String>) -> Error {
    Error::Config {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn parse_seconds(key: &str, v: &str) -> Result<Duration> {
    let secs: f64 = v
        .trim()
        .parse()
        .map_err(|_| invalid(key, format!("`{v}` is not a number of seconds")))?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        invalid(
            key,
            format!("`{v}` is not a non-negative number of seconds"),
        )
    })
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(key, format!("`{v}` is not a boolean (true/false)"))),
    }
}

fn parse_int<T: std::str::FromStr>(key: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| invalid(key, format!("`{v}` is not a whole number")))
}

impl Config {
    /// The recipient validators deliveries and the REST API enforce:
    /// [`Config::recipient_validators`] with the exceptions of
    /// [`Config::allowed_recipients`].
    pub fn validators(&self) -> Validators {
        if self.allowed_recipients.is_empty() {
            return self.recipient_validators.clone();
        }
        self.recipient_validators
            .allowing(self.allowed_recipients.iter().cloned())
    }

    /// Defaults overridden by the `THORN_*` environment variables that are
    /// set. A variable that is set but invalid is an error naming it.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`Config::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = Config::default();
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("THORN_EVENT_TIMEOUT") {
            c.event_timeout = parse_seconds("THORN_EVENT_TIMEOUT", &v)?;
        }
        if let Some(v) = get("THORN_OUTBOX_RETRY_SCHEDULE") {
            let delays = crate::retry::parse_schedule(&v)
                .map_err(|m| invalid("THORN_OUTBOX_RETRY_SCHEDULE", m))?;
            c.outbox_retry = RetryPolicy::scheduled(delays, 0.2);
        }
        if let Some(v) = get("THORN_RETRY") {
            c.retry.enabled = parse_bool("THORN_RETRY", &v)?;
        }
        if let Some(v) = get("THORN_RETRY_MAX") {
            c.retry.max_retries = parse_int("THORN_RETRY_MAX", &v)?;
        }
        if let Some(v) = get("THORN_RETRY_DELAY") {
            c.retry.retry_delay = parse_seconds("THORN_RETRY_DELAY", &v)?;
        }
        if let Some(v) = get("THORN_SUBSCRIBERS") {
            c.subscribers = StaticSubscribers::from_json(&v).map_err(|e| match e {
                Error::Config { message, .. } => invalid("THORN_SUBSCRIBERS", message),
                other => invalid("THORN_SUBSCRIBERS", other.to_string()),
            })?;
        }
        if let Some(v) = get("THORN_DISPATCHER") {
            c.dispatcher = match v.trim() {
                "default" => DispatcherKind::InProcess,
                "disabled" => DispatcherKind::Disabled,
                "outbox" => {
                    return Err(invalid(
                        "THORN_DISPATCHER",
                        "`outbox` is no longer a dispatcher: set THORN_OUTBOX=true \
                         (and THORN_DISPATCHER=default) to write model events to the outbox"
                            .to_owned(),
                    ));
                }
                other => {
                    return Err(invalid(
                        "THORN_DISPATCHER",
                        format!("`{other}` is not one of default, disabled"),
                    ));
                }
            };
        }
        if let Some(v) = get("THORN_OUTBOX") {
            c.outbox = parse_bool("THORN_OUTBOX", &v)?;
        }
        if let Some(v) = get("THORN_HMAC_SIGNER") {
            c.hmac_signer = match v.trim().rsplit(':').next().unwrap_or_default() {
                "sign" => Signer::Hmac,
                "compat_sign" => Signer::Compat,
                _ => {
                    return Err(invalid(
                        "THORN_HMAC_SIGNER",
                        format!("`{v}` is not one of sign, compat_sign"),
                    ));
                }
            };
        }
        if let Some(v) = get("THORN_EVENT_CHOICES") {
            let list = if v.trim_start().starts_with('[') {
                serde_json::from_str::<Vec<String>>(&v)
                    .map_err(|e| invalid("THORN_EVENT_CHOICES", e.to_string()))?
            } else {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            };
            c.event_choices = Some(list);
        }
        if let Some(v) = get("THORN_SIGNAL_HONORS_TRANSACTION") {
            c.signal_honors_transaction = parse_bool("THORN_SIGNAL_HONORS_TRANSACTION", &v)?;
        }
        if let Some(v) = get("THORN_BASE_URL") {
            c.base_url = Some(
                Url::parse(v.trim())
                    .map_err(|e| invalid("THORN_BASE_URL", format!("`{v}`: {e}")))?,
            );
        }
        if let Some(v) = get("THORN_MAX_CONCURRENCY") {
            let n: usize = parse_int("THORN_MAX_CONCURRENCY", &v)?;
            if n == 0 {
                return Err(invalid("THORN_MAX_CONCURRENCY", "must be at least 1"));
            }
            c.max_concurrency = n;
        }
        if let Some(v) = get("THORN_MAX_PER_HOST") {
            let n: usize = parse_int("THORN_MAX_PER_HOST", &v)?;
            if n == 0 {
                return Err(invalid("THORN_MAX_PER_HOST", "must be at least 1"));
            }
            c.max_per_host = n;
        }
        if let Some(v) = get("THORN_MAX_QUEUED") {
            let n: usize = parse_int("THORN_MAX_QUEUED", &v)?;
            if n == 0 {
                return Err(invalid("THORN_MAX_QUEUED", "must be at least 1"));
            }
            c.max_queued = n;
        }
        if let Some(v) = get("THORN_STANDARD_WEBHOOKS") {
            c.standard_webhooks = parse_bool("THORN_STANDARD_WEBHOOKS", &v)?;
        }
        if let Some(v) = get("THORN_ALLOW_RECIPIENTS") {
            let allowed = v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.parse::<Allowed>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| invalid("THORN_ALLOW_RECIPIENTS", e))?;
            c.allowed_recipients = allowed;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config> {
        Config::from_lookup(|k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_are_the_manuals() {
        let c = Config::default();
        assert_eq!(c.event_timeout, Duration::from_secs(3));
        assert!(c.retry.enabled);
        assert_eq!(c.retry.max_retries, 10);
        assert_eq!(c.retry.retry_delay, Duration::from_secs(60));
        assert_eq!(c.dispatcher, DispatcherKind::InProcess);
        assert_eq!(c.hmac_signer, Signer::Hmac);
        assert!(
            c.user_agent
                .contains(concat!("thorn/", env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn every_variable_is_read() {
        let c = from(&[
            ("THORN_EVENT_TIMEOUT", "0.25"),
            ("THORN_RETRY", "false"),
            ("THORN_RETRY_MAX", "3"),
            ("THORN_RETRY_DELAY", "5"),
            ("THORN_SUBSCRIBERS", r#"{"a.b": "https://x.example/"}"#),
            ("THORN_DISPATCHER", "disabled"),
            ("THORN_HMAC_SIGNER", "thorn.utils.hmac:compat_sign"),
            ("THORN_EVENT_CHOICES", "article.*, user.created"),
            ("THORN_SIGNAL_HONORS_TRANSACTION", "0"),
            ("THORN_BASE_URL", "https://example.com/"),
            ("THORN_MAX_CONCURRENCY", "8"),
            ("THORN_MAX_PER_HOST", "2"),
            ("THORN_MAX_QUEUED", "5"),
            ("THORN_STANDARD_WEBHOOKS", "yes"),
            ("THORN_OUTBOX", "true"),
        ])
        .unwrap();
        assert!(c.outbox);
        assert_eq!(c.event_timeout, Duration::from_millis(250));
        assert!(!c.retry.enabled);
        assert_eq!(c.retry.max_retries, 3);
        assert_eq!(c.retry.retry_delay, Duration::from_secs(5));
        assert_eq!(c.subscribers.matching("a.b", None).len(), 1);
        assert_eq!(c.dispatcher, DispatcherKind::Disabled);
        assert_eq!(c.hmac_signer, Signer::Compat);
        assert_eq!(c.event_choices.unwrap(), ["article.*", "user.created"]);
        assert!(!c.signal_honors_transaction);
        assert_eq!(c.base_url.unwrap().as_str(), "https://example.com/");
        assert_eq!(c.max_concurrency, 8);
        assert_eq!(c.max_per_host, 2);
        assert_eq!(c.max_queued, 5);
        assert!(c.standard_webhooks);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (key, value) in [
            ("THORN_EVENT_TIMEOUT", "soon"),
            ("THORN_EVENT_TIMEOUT", "-1"),
            ("THORN_RETRY", "maybe"),
            ("THORN_DISPATCHER", "celery"),
            ("THORN_DISPATCHER", "outbox"),
            ("THORN_OUTBOX", "sometimes"),
            ("THORN_HMAC_SIGNER", "md5"),
            ("THORN_BASE_URL", "not a url"),
            ("THORN_MAX_CONCURRENCY", "0"),
            ("THORN_MAX_PER_HOST", "x"),
            ("THORN_MAX_QUEUED", "0"),
            ("THORN_STANDARD_WEBHOOKS", "2"),
            ("THORN_ALLOW_RECIPIENTS", "127.0.0.1"),
            ("THORN_EVENT_CHOICES", "[1, 2]"),
            ("THORN_SUBSCRIBERS", "{not json"),
            ("THORN_SUBSCRIBERS", r#"{"a.*": "not a url"}"#),
        ] {
            let err = from(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn allowed_recipients_come_from_the_environment() {
        let c = from(&[("THORN_ALLOW_RECIPIENTS", "127.0.0.1:8787, 10.1.0.0/16")]).unwrap();
        let shown: Vec<String> = c.allowed_recipients.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["127.0.0.1:8787", "10.1.0.0/16"]);
        let url = "http://127.0.0.1:8787/".parse().unwrap();
        assert!(c.validators().check_url(&url).is_ok());
        // Validators set in code keep the exceptions of the environment.
        let strict = Config {
            recipient_validators: Validators::default(),
            ..c
        };
        assert!(strict.validators().check_url(&url).is_ok());
        assert!(strict.recipient_validators.check_url(&url).is_err());
        assert!(
            Config::default()
                .recipient_validators
                .check_url(&url)
                .is_err()
        );
    }
}
