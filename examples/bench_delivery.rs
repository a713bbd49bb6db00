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
//! loop posting the same bytes with the same concurrency, their ratio, and
//! the CPU time the sending process spent per delivery. The receiver runs
//! in a child process (this example with `--receiver`), so the CPU figure
//! is the sender's alone; it still shares the machine's cores, so the
//! rates are for comparing the two, not absolute capacity.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use thorn::subscriber::MemoryStore;
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, Event, Subscriber, Thorn};
use tokio::sync::Semaphore;

const DELIVERIES: usize = 20_000;

/// Serves `200 OK` to everything on 127.0.0.1, printing the address.
fn serve() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        // Counts what it answers, and says how many at `GET /count`.
        static RECEIVED: AtomicUsize = AtomicUsize::new(0);
        let app = axum::Router::new()
            .route(
                "/count",
                axum::routing::get(|| async { RECEIVED.load(Ordering::Relaxed).to_string() }),
            )
            .fallback(|| async {
                RECEIVED.fetch_add(1, Ordering::Relaxed);
                StatusCode::OK
            });
        axum::serve(listener, app).await.unwrap();
    });
}

/// Starts the receiver process; its URL.
fn start_receiver() -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--receiver")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, format!("http://{}/hook/", line.trim()))
}

/// CPU time (user + system, every thread's) this process has used, from
/// `/proc/self/stat` in clock ticks (10 ms: about 1% of a run).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    const TICKS_PER_SECOND: u64 = 100;
    Duration::from_millis((fields[0] + fields[1]) * 1000 / TICKS_PER_SECOND)
}

/// A run's deliveries per second and CPU µs per delivery.
#[derive(Clone, Copy)]
struct Figure {
    rate: f64,
    cpu_us: f64,
}

impl Figure {
    fn of(deliveries: usize, elapsed: Duration, cpu: Duration) -> Self {
        Figure {
            rate: deliveries as f64 / elapsed.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / deliveries as f64,
        }
    }
}

fn thorn_rate(url: &str, subscribers: usize, deliveries: usize, waited: bool) -> Figure {
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

    let events = deliveries / subscribers;
    let before = received(url);
    let cpu = cpu_time();
    let started = Instant::now();
    let delivered = if waited {
        let handles: Vec<_> = (0..events)
            .map(|_| event.send(&thorn, &payload).unwrap())
            .collect();
        let mut delivered = 0;
        for h in handles {
            delivered += h.wait().unwrap().iter().filter(|o| o.is_success()).count();
        }
        delivered
    } else {
        // As an application sends: nobody waits for the outcome; all are
        // drained at the end.
        for _ in 0..events {
            drop(event.send(&thorn, &payload).unwrap());
        }
        assert!(thorn.drain(Duration::from_secs(60)).is_complete());
        events * subscribers
    };
    let (elapsed, cpu) = (started.elapsed(), cpu_time() - cpu);
    assert_eq!(delivered, events * subscribers, "every delivery succeeded");
    assert_eq!(received(url) - before, delivered, "the receiver got each");
    Figure::of(delivered, elapsed, cpu)
}

/// How many requests the receiver has answered.
fn received(url: &str) -> usize {
    let count = url.replace("/hook/", "/count");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let text = client.get(count).send().await.unwrap().text().await;
            text.unwrap().parse().unwrap()
        })
}

fn bare_rate(url: &str, concurrency: usize, deliveries: usize) -> Figure {
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
        let cpu = cpu_time();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..deliveries {
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
        let (elapsed, cpu) = (started.elapsed(), cpu_time() - cpu);
        assert_eq!(ok, deliveries);
        Figure::of(ok, elapsed, cpu)
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--receiver") {
        return serve();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (mut receiver, url) = start_receiver();
    // `--only N [DELIVERIES]`: Thorn's side alone with N subscribers, and
    // `--bare [DELIVERIES]` the bare client's, for a profiler (`valgrind
    // --tool=callgrind` counts their instructions).
    let args: Vec<String> = std::env::args().collect();
    let only = args.iter().position(|a| a == "--only");
    let bare_only = args.iter().position(|a| a == "--bare");
    if let Some(at) = only.map(|at| at + 1).or(bare_only) {
        let deliveries = args.get(at + 1).map_or(DELIVERIES, |d| d.parse().unwrap());
        for _ in 0..if deliveries == DELIVERIES { 5 } else { 1 } {
            let f = match only {
                Some(_) => thorn_rate(
                    &url,
                    args[at].parse().expect("--only N"),
                    deliveries,
                    !args.iter().any(|a| a == "--no-wait"),
                ),
                None => bare_rate(&url, Config::default().max_per_host, deliveries),
            };
            println!(
                "{:>9.0} deliveries/s  {:>5.1} µs CPU each",
                f.rate, f.cpu_us
            );
        }
        let _ = receiver.kill();
        return;
    }
    let per_host = Config::default().max_per_host;
    const ROUNDS: usize = 5;
    // Interleaved rounds and medians: the machine's noise hits both sides.
    let mut bare = Vec::new();
    let mut thorn: [Vec<Figure>; 3] = Default::default();
    let mut unwaited: [Vec<Figure>; 3] = Default::default();
    for _ in 0..ROUNDS {
        bare.push(bare_rate(&url, per_host, DELIVERIES));
        for (i, subscribers) in [1, 10, 100].into_iter().enumerate() {
            thorn[i].push(thorn_rate(&url, subscribers, DELIVERIES, true));
            unwaited[i].push(thorn_rate(&url, subscribers, DELIVERIES, false));
        }
    }
    let _ = receiver.kill();
    let rate = |f: &[Figure]| median(f.iter().map(|f| f.rate).collect());
    let cpu = |f: &[Figure]| median(f.iter().map(|f| f.cpu_us).collect());
    let (ceiling, ceiling_cpu) = (rate(&bare), cpu(&bare));
    println!(
        "receiver: {url} (own process)  deliveries per run: {DELIVERIES}  rounds: {ROUNDS} (medians)"
    );
    println!(
        "bare reqwest, {per_host} in flight:          {ceiling:>9.0} deliveries/s (ceiling)  {ceiling_cpu:>5.1} µs CPU each"
    );
    for (figures, how) in [
        (&thorn, "each handle waited"),
        (&unwaited, "none waited, drained"),
    ] {
        println!("thorn, {how}:");
        for (i, subscribers) in [1, 10, 100].into_iter().enumerate() {
            let (r, c) = (rate(&figures[i]), cpu(&figures[i]));
            println!(
                "  1 event -> {subscribers:>3} subscriber(s): {r:>9.0} deliveries/s  ratio {:.2}  {c:>5.1} µs CPU each ({:.2}x bare)",
                r / ceiling,
                c / ceiling_cpu
            );
        }
    }
}
