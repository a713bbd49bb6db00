//! Delivery throughput of the in-process dispatcher against the ceiling of
//! a bare HTTP client, both hitting the same minimal receiver on 127.0.0.1.
//!
//! ```text
//! cargo run --release --example bench_delivery
//! ```
//!
//! For 1 event -> 1, 10 and 100 subscribers it prints deliveries per
//! second through Thorn (JSON encoding, HMAC signing, headers, subscriber
//! lookup, bounded concurrency, retries armed) and through a bare reqwest
//! loop posting the same bytes with the same concurrency, and their ratio.
//! The receiver shares the machine's cores with the sender, so the figures
//! are for comparing the two, not absolute capacity.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use thorn::subscriber::MemoryStore;
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, Event, Subscriber, Thorn};
use tokio::sync::Semaphore;

const DELIVERIES: usize = 20_000;

fn start_receiver() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().fallback(|| async { StatusCode::OK });
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}/hook/", rx.recv().unwrap())
}

fn thorn_rate(url: &str, subscribers: usize) -> f64 {
    let store = MemoryStore::new();
    for i in 0..subscribers {
        store.add(Subscriber::new("bench.*", &format!("{url}{i}")).unwrap());
    }
    let config = Config {
        recipient_validators: Validators::new([ensure_protocol(["http"])]),
        ..Config::default()
    };
    let thorn = Thorn::builder(config).store(store).build().unwrap();
    let event = Event::new("bench.event");
    let payload = json!({"id": 12345, "title": "A benchmark article", "state": "PUBLISHED"});
    // Warm the pool.
    event.send(&thorn, &payload).unwrap().wait().unwrap();

    let events = DELIVERIES / subscribers;
    let started = Instant::now();
    let handles: Vec<_> = (0..events)
        .map(|_| event.send(&thorn, &payload).unwrap())
        .collect();
    let mut delivered = 0;
    for h in handles {
        delivered += h.wait().unwrap().iter().filter(|o| o.is_success()).count();
    }
    let elapsed = started.elapsed();
    assert_eq!(delivered, events * subscribers, "every delivery succeeded");
    delivered as f64 / elapsed.as_secs_f64()
}

fn bare_rate(url: &str, concurrency: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let body = bytes::Bytes::from(
            serde_json::to_vec(
                &json!({"id": 12345, "title": "A benchmark article", "state": "PUBLISHED"}),
            )
            .unwrap(),
        );
        let limit = Arc::new(Semaphore::new(concurrency));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..DELIVERIES {
            let permit = limit.clone().acquire_owned().await.unwrap();
            let (client, body, url) = (client.clone(), body.clone(), format!("{url}{}", i % 100));
            tasks.spawn(async move {
                let r = client
                    .post(url)
                    .header("content-type", "application/json")
                    .timeout(Duration::from_secs(3))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let ok = r.status().is_success();
                let _ = r.bytes().await;
                drop(permit);
                ok
            });
        }
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            ok += usize::from(r.unwrap());
        }
        assert_eq!(ok, DELIVERIES);
        ok as f64 / started.elapsed().as_secs_f64()
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = start_receiver();
    let per_host = Config::default().max_per_host;
    const ROUNDS: usize = 5;
    // Interleaved rounds and medians: the machine's noise hits both sides.
    let mut bare = Vec::new();
    let mut thorn: [Vec<f64>; 3] = Default::default();
    for _ in 0..ROUNDS {
        bare.push(bare_rate(&url, per_host));
        for (i, subscribers) in [1, 10, 100].into_iter().enumerate() {
            thorn[i].push(thorn_rate(&url, subscribers));
        }
    }
    let ceiling = median(bare);
    println!("receiver: {url}  deliveries per run: {DELIVERIES}  rounds: {ROUNDS} (medians)");
    println!("bare reqwest, {per_host} in flight:          {ceiling:>9.0} deliveries/s (ceiling)");
    for (i, subscribers) in [1, 10, 100].into_iter().enumerate() {
        let rate = median(thorn[i].clone());
        println!(
            "thorn, 1 event -> {subscribers:>3} subscriber(s): {rate:>9.0} deliveries/s  ratio {:.2}",
            rate / ceiling
        );
    }
}
