//! Recipients that must be refused, checked end to end: nothing reaches the
//! receiver, the error names the URL and the rule, and nothing is retried.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use thorn::validate::{Validators, block_internal_ips};
use thorn::{Config, Event, Subscriber, Thorn};

use crate::engine::{WAIT, local_config};
use crate::receiver::{Receiver, Reply};

fn send_to(url: &str, config: Config) -> thorn::DeliveryOutcome {
    let thorn = Thorn::new(config).unwrap();
    let mut outcomes = Event::new("user.created")
        .with_subscriber(Subscriber::new("user.created", url).unwrap())
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(outcomes.len(), 1);
    outcomes.pop().unwrap()
}

/// Only the address rule, so the receiver's port and scheme are allowed and
/// the internal-address check alone decides.
fn ip_rule_only() -> Config {
    Config {
        recipient_validators: Validators::new([block_internal_ips()]),
        resolve_overrides: HashMap::from([(
            "rebind.test".to_owned(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()],
        )]),
        ..local_config()
    }
}

#[test]
fn internal_recipients_are_blocked_in_every_spelling() {
    let receiver = Receiver::start();
    let port = receiver.port;
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://localhost:{port}/"),
        // A name whose DNS answer is internal: refused at connect time.
        format!("http://rebind.test:{port}/"),
    ] {
        let outcome = send_to(&url, ip_rule_only());
        match &outcome.result {
            Err(thorn::DeliveryError::Blocked(blocked)) => {
                assert!(
                    matches!(blocked.rule, thorn::Blocked::InternalAddress { .. }),
                    "{url}: {blocked}"
                );
                assert!(outcome.url.as_str().contains(&port.to_string()), "{url}");
            }
            other => panic!("{url} should be blocked, got {other:?}"),
        }
        assert_eq!(
            outcome.attempts, 1,
            "{url}: a blocked recipient is never retried"
        );
    }
    receiver.expect_none(Duration::from_millis(300));
}

#[test]
fn the_same_recipients_pass_without_the_rule() {
    // Control for the test above: the override really resolves to the
    // receiver, so the block came from the validator.
    let receiver = Receiver::start();
    let config = Config {
        recipient_validators: Validators::none(),
        ..ip_rule_only()
    };
    let outcome = send_to(&format!("http://rebind.test:{}/", receiver.port), config);
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        receiver.expect(1, WAIT)[0].header("host"),
        format!("rebind.test:{}", receiver.port)
    );
}

#[test]
fn redirects_are_not_followed() {
    let internal = Receiver::start();
    let redirector = Receiver::scripted([Reply::StatusWith(
        302,
        vec![(
            "location",
            format!("http://127.0.0.1:{}/admin", internal.port),
        )],
    )]);
    let outcome = send_to(&redirector.url, local_config());
    assert!(
        matches!(
            outcome.result,
            Err(thorn::DeliveryError::Status { status: 302, .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(outcome.attempts, 1);
    redirector.expect(1, WAIT);
    internal.expect_none(Duration::from_millis(300));
}

#[test]
fn per_event_validators_override_the_configured_ones() {
    let receiver = Receiver::start();
    let thorn = Thorn::new(local_config()).unwrap();
    let strict = Event::new("user.created")
        .with_validators(Validators::default())
        .with_subscriber(Subscriber::new("user.created", &receiver.url).unwrap());
    let outcomes = strict.send(&thorn, &json!({})).unwrap().wait().unwrap();
    assert!(
        matches!(outcomes[0].result, Err(thorn::DeliveryError::Blocked(_))),
        "{:?}",
        outcomes[0]
    );
    receiver.expect_none(Duration::from_millis(200));

    let relaxed = Event::new("user.created")
        .with_subscriber(Subscriber::new("user.created", &receiver.url).unwrap());
    let outcomes = relaxed.send(&thorn, &json!({})).unwrap().wait().unwrap();
    assert!(outcomes[0].is_success());
    receiver.expect(1, WAIT);
}
