//! `buffer_events()` scopes: held until the outermost scope ends or a flush.

use std::time::Duration;

use serde_json::json;
use thorn::buffer::{self, BufferOptions};
use thorn::{Error, Event, Thorn};

use crate::engine::{WAIT, local_config, thorn_for};
use crate::receiver::Receiver;

const QUIET: Duration = Duration::from_millis(250);

fn setup() -> (Receiver, Thorn, Event) {
    let receiver = Receiver::start();
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    (receiver, thorn, Event::new("user.created"))
}

fn send(thorn: &Thorn, event: &Event, n: i32) -> thorn::SendHandle {
    event.send(thorn, &json!({ "n": n })).unwrap()
}

fn numbers(got: &[crate::receiver::Received]) -> Vec<i64> {
    let mut n: Vec<i64> = got
        .iter()
        .map(|r| r.json()["n"].as_i64().unwrap())
        .collect();
    n.sort_unstable();
    n
}

#[test]
fn nested_scopes_send_when_the_outermost_ends() {
    let (receiver, thorn, event) = setup();
    let outer = buffer::buffer_events();
    let _a = send(&thorn, &event, 1);
    {
        let _inner = buffer::buffer_events();
        let _b = send(&thorn, &event, 2);
    }
    receiver.expect_none(QUIET);
    let c = send(&thorn, &event, 3);
    assert_eq!(outer.len(), 3);
    drop(outer);
    assert_eq!(numbers(&receiver.expect(3, WAIT)), [1, 2, 3]);
    // The handle of a buffered event resolves once it was really sent.
    assert!(c.wait().unwrap()[0].is_success());
    // Outside any scope, events go at once.
    send(&thorn, &event, 4).wait().unwrap();
    receiver.expect(1, WAIT);
}

#[test]
fn flush_sends_everything_from_all_scopes() {
    let (receiver, thorn, event) = setup();
    let outer = buffer::buffer_events();
    let _ = send(&thorn, &event, 1);
    let inner = buffer::buffer_events();
    let _ = send(&thorn, &event, 2);
    assert_eq!(inner.flush(), 2);
    assert_eq!(numbers(&receiver.expect(2, WAIT)), [1, 2]);
    let _ = send(&thorn, &event, 3);
    drop(inner);
    receiver.expect_none(QUIET);
    drop(outer);
    assert_eq!(numbers(&receiver.expect(1, WAIT)), [3]);
}

#[test]
fn maybe_flush_by_count_and_by_time() {
    let (receiver, thorn, event) = setup();
    let by_count = buffer::buffer_events_with(BufferOptions {
        flush_freq: Some(3),
        flush_timeout: None,
    });
    let _ = send(&thorn, &event, 1);
    let _ = send(&thorn, &event, 2);
    assert!(!by_count.maybe_flush());
    receiver.expect_none(QUIET);
    let _ = send(&thorn, &event, 3);
    assert!(buffer::maybe_flush(), "third event reaches flush_freq");
    receiver.expect(3, WAIT);
    drop(by_count);

    let by_time = buffer::buffer_events_with(BufferOptions {
        flush_freq: None,
        flush_timeout: Some(Duration::from_millis(100)),
    });
    let _ = send(&thorn, &event, 4);
    assert!(!by_time.maybe_flush());
    std::thread::sleep(Duration::from_millis(150));
    assert!(by_time.maybe_flush());
    receiver.expect(1, WAIT);
}

#[test]
fn disabling_a_non_empty_buffer_is_an_error_and_loses_nothing() {
    let (receiver, thorn, event) = setup();
    let mut guard = buffer::buffer_events();
    let _ = send(&thorn, &event, 1);
    match guard.disable() {
        Err(Error::BufferNotEmpty { pending: 1 }) => {}
        other => panic!("expected BufferNotEmpty, got {other:?}"),
    }
    // Still buffering.
    let _ = send(&thorn, &event, 2);
    receiver.expect_none(QUIET);
    guard.flush();
    receiver.expect(2, WAIT);
    guard.disable().unwrap();
    // Disabled: events go at once; dropping the guard later sends nothing more.
    send(&thorn, &event, 3).wait().unwrap();
    receiver.expect(1, WAIT);
    drop(guard);
    receiver.expect_none(QUIET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_scopes_follow_the_task() {
    let receiver = Receiver::start();
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    let event = Event::new("user.created");
    let (t, e) = (thorn.clone(), event.clone());
    let (first, second, receiver) = buffer::buffered(BufferOptions::default(), async move {
        let first = send(&t, &e, 1);
        // Hop threads: the buffer belongs to the task, not the thread.
        tokio::task::yield_now().await;
        let second = buffer::buffered(BufferOptions::default(), async { send(&t, &e, 2) }).await;
        // Nothing leaves while the outer scope is open.
        let receiver = tokio::task::spawn_blocking(move || {
            receiver.expect_none(QUIET);
            receiver
        })
        .await
        .unwrap();
        (first, second, receiver)
    })
    .await;
    // ... then both do.
    let receiver = tokio::task::spawn_blocking(move || {
        let got = receiver.expect(2, WAIT);
        assert_eq!(numbers(&got), [1, 2]);
        receiver
    })
    .await
    .unwrap();
    assert!(first.outcomes().await.unwrap()[0].is_success());
    assert!(second.outcomes().await.unwrap()[0].is_success());
    // ... and a task without a scope is not buffered.
    send(&thorn, &event, 3).outcomes().await.unwrap();
    tokio::task::spawn_blocking(move || receiver.expect(1, WAIT))
        .await
        .unwrap();
}
