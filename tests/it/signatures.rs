//! Standard Webhooks headers verify with the reference `standardwebhooks`
//! crate, during secret rotation too.

use serde_json::json;
use standardwebhooks::Webhook;
use thorn::signing::standard_webhooks_secret;
use thorn::{Config, Event, Subscriber, Thorn};

use crate::engine::{WAIT, local_config};
use crate::receiver::{Received, Receiver};

fn headers(r: &Received) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (n, v) in &r.headers {
        map.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    map
}

#[test]
fn standard_webhooks_signatures_verify_with_the_reference_crate() {
    let receiver = Receiver::start();
    let thorn = Thorn::new(local_config()).unwrap();
    let subscriber = Subscriber::new("user.created", &receiver.url)
        .unwrap()
        .with_secret("old-secret")
        .rotate_secret("new-secret")
        .with_standard_webhooks(true);
    Event::new("user.created")
        .with_subscriber(subscriber)
        .send(&thorn, &json!({"id": 1}))
        .unwrap()
        .wait()
        .unwrap();
    let got = &receiver.expect(1, WAIT)[0];
    let h = headers(got);
    assert_eq!(got.header("webhook-id"), got.header("hook-delivery"));
    assert_eq!(
        got.header("webhook-signature").split(' ').count(),
        2,
        "one signature per active secret"
    );
    for secret in ["new-secret", "old-secret"] {
        Webhook::new(&standard_webhooks_secret(secret))
            .unwrap()
            .verify(&got.body, &h)
            .unwrap_or_else(|e| panic!("{secret}: {e}"));
    }
    let err = Webhook::new(&standard_webhooks_secret("another"))
        .unwrap()
        .verify(&got.body, &h);
    assert!(
        err.is_err(),
        "a secret that was never active does not verify"
    );
    let mut changed = got.body.clone();
    changed.push(b' ');
    assert!(
        Webhook::new(&standard_webhooks_secret("new-secret"))
            .unwrap()
            .verify(&changed, &h)
            .is_err()
    );
}

#[test]
fn standard_webhooks_can_be_switched_on_globally() {
    let receiver = Receiver::start();
    let thorn = Thorn::new(Config {
        standard_webhooks: true,
        ..local_config()
    })
    .unwrap();
    let subscriber = Subscriber::new("user.created", &receiver.url).unwrap();
    let secret = standard_webhooks_secret(subscriber.hmac_secret.expose());
    Event::new("user.created")
        .with_subscriber(subscriber)
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    let got = &receiver.expect(1, WAIT)[0];
    Webhook::new(&secret)
        .unwrap()
        .verify(&got.body, &headers(got))
        .unwrap();

    // Off by default.
    let receiver = Receiver::start();
    let thorn = Thorn::new(local_config()).unwrap();
    Event::new("user.created")
        .with_subscriber(Subscriber::new("user.created", &receiver.url).unwrap())
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    let got = &receiver.expect(1, WAIT)[0];
    assert!(!got.headers.iter().any(|(n, _)| n == "webhook-signature"));
}

#[test]
fn the_compat_signer_signs_hook_hmac_like_python_thorns_default() {
    let receiver = Receiver::start();
    let thorn = Thorn::new(Config {
        hmac_signer: thorn::signing::Signer::Compat,
        ..local_config()
    })
    .unwrap();
    let subscriber = Subscriber::new("user.created", &receiver.url)
        .unwrap()
        .with_secret("legacy");
    Event::new("user.created")
        .with_subscriber(subscriber)
        .send(&thorn, &json!({"id": 1}))
        .unwrap()
        .wait()
        .unwrap();
    let got = &receiver.expect(1, WAIT)[0];
    assert_eq!(
        got.header("hook-hmac"),
        thorn::signing::compat_sign(thorn::HmacDigest::Sha256, b"legacy", &got.body)
    );
}
