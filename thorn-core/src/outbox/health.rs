//! The health of stored subscriptions as the outbox keeps it.

use crate::outbox::{AfterAttempt, AttemptRecord, humanize};
use std::time::Duration;

/// What a batch of finished attempts says about the stored subscriptions'
/// health, as the outbox stores keep it (`failing_since`, disabling after
/// a window): the subscriptions that succeeded and those that failed, each
/// uuid once. Static subscribers have no row; a `410 Gone` is handled by
/// `mark_gone`, not here.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Health {
    /// Delivered at least once: failing no more.
    pub recovered: Vec<String>,
    /// Failed (will retry, or dead): failing since now if not already.
    pub failing: Vec<String>,
}

impl Health {
    /// Sorts the attempts' subscribers by outcome.
    pub(crate) fn of(attempts: &[(AttemptRecord, AfterAttempt)]) -> Self {
        let mut health = Health::default();
        for (a, next) in attempts {
            match next {
                AfterAttempt::Delivered => health.recovered.push(a.subscriber.to_string()),
                AfterAttempt::Retry { .. } | AfterAttempt::Dead => {
                    health.failing.push(a.subscriber.to_string())
                }
                AfterAttempt::Gone => {}
            }
        }
        for list in [&mut health.recovered, &mut health.failing] {
            list.sort_unstable();
            list.dedup();
        }
        health
    }

    /// The reason stored for a subscription disabled after `window` of
    /// failures.
    pub(crate) fn disabled_reason(window: Duration) -> String {
        format!("deliveries failed for longer than {}", humanize(window))
    }

    /// Logs that a subscription was disabled after `window` of failures.
    pub(crate) fn log_disabled(uuid: &str, url: &str, window: Duration) {
        let url = url::Url::parse(url)
            .map(|u| crate::subscriber::SafeUrl(&u).to_string())
            .unwrap_or_default();
        tracing::warn!(subscriber = %uuid, %url, window = %humanize(window),
            "subscriber disabled: its deliveries have failed for longer than the window");
    }
}
