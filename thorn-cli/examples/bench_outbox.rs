//! Outbox benchmark on PostgreSQL: commit → receipt latency through the
//! in-process relay and through one `thorn worker` process, delivery
//! throughput with one and two worker processes, and one worker's
//! throughput to a fast destination while another answers in 2 s.
//!
//! ```text
//! cargo build --release -p thorn-cli               # builds target/release/thorn
//! cargo run --release -p thorn-cli --example bench_outbox
//! ```
//!
//! The database is `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); the benchmark works in a
//! schema of its own and drops it afterwards. The receiver runs in this
//! process on 127.0.0.1; PostgreSQL, the workers and the receiver share the
//! machine's cores.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thorn::diesel::prelude::*;

use axum::body::Bytes;
use axum::http::StatusCode;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use thorn::RelayOptions;
use thorn::diesel::store::{SubscriberRow, thorn_subscribers};
use thorn::diesel::{DieselOutbox, Relay, migrate};
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, Subscriber, Thorn, WebhookModel};

diesel::table! {
    /// Rows whose inserts raise one event each.
    bench_items (id) {
        /// Primary key.
        id -> Integer,
        /// The event's sender.
        owner_id -> Integer,
    }
}

#[derive(Debug, Queryable, Selectable, WebhookModel)]
#[diesel(table_name = bench_items)]
#[webhook_model(sender_field = owner_id, payload = Self::payload, on_create = "item.created")]
struct Item {
    id: i32,
    owner_id: i32,
}

impl Item {
    fn payload(&self) -> serde_json::Value {
        serde_json::json!({ "id": self.id })
    }
}

const LATENCY_EVENTS: usize = 300;
const THROUGHPUT_EVENTS: usize = 5_000;

#[derive(Default)]
struct Receipts {
    at: Mutex<HashMap<i64, Instant>>,
    count: AtomicUsize,
}

fn start_receiver(receipts: Arc<Receipts>) -> String {
    start_receiver_after(receipts, Duration::ZERO)
}

/// A receiver answering 200 `pause` after each request.
fn start_receiver_after(receipts: Arc<Receipts>, pause: Duration) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().fallback(move |body: Bytes| {
                let receipts = receipts.clone();
                async move {
                    let now = Instant::now();
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                        if let Some(id) = v["data"]["id"].as_i64() {
                            receipts.at.lock().unwrap().insert(id, now);
                        }
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    receipts.count.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                }
            });
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}/hook/", rx.recv().unwrap())
}

#[derive(Debug)]
struct SearchPath(String);

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for SearchPath {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!("SET search_path TO {}", self.0))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

type PgPool = Pool<ConnectionManager<PgConnection>>;

struct Bench {
    base_url: String,
    schema: String,
    pool: PgPool,
    thorn: Thorn,
    receipts: Arc<Receipts>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Ok(mut c) = PgConnection::establish(&self.base_url) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

impl Bench {
    fn new() -> Bench {
        let base_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("thorn_bench_{}", std::process::id());
        PgConnection::establish(&base_url)
            .expect("DATABASE_URL connects")
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .unwrap();
        let pool = Pool::builder()
            .max_size(8)
            .connection_customizer(Box::new(SearchPath(schema.clone())))
            .build(ConnectionManager::new(base_url.clone()))
            .unwrap();
        let receipts = Arc::new(Receipts::default());
        let url = start_receiver(receipts.clone());
        let mut conn = pool.get().unwrap();
        migrate(&mut *conn).unwrap();
        conn.batch_execute(
            "CREATE TABLE bench_items (id SERIAL PRIMARY KEY, owner_id INTEGER NOT NULL)",
        )
        .unwrap();
        diesel::insert_into(thorn_subscribers::table)
            .values(SubscriberRow::from(
                &Subscriber::new("item.*", &url).unwrap(),
            ))
            .execute(&mut *conn)
            .unwrap();
        let store = Arc::new(thorn::diesel::DieselStore::new(pool.clone()));
        let thorn = Thorn::builder(Config {
            outbox: true,
            recipient_validators: Validators::new([ensure_protocol(["http"])]),
            ..Config::default()
        })
        .shared_store(store)
        .build()
        .unwrap();
        Bench {
            base_url,
            schema,
            pool,
            thorn,
            receipts,
        }
    }

    fn worker_url(&self) -> String {
        let sep = if self.base_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}options=-csearch_path%3D{}",
            self.base_url, self.schema
        )
    }

    fn insert(&self, conn: &mut PgConnection) -> Item {
        diesel::insert_into(bench_items::table)
            .values(bench_items::owner_id.eq(1))
            .returning(Item::as_returning())
            .with_webhooks(&self.thorn)
            .get_result(conn)
            .unwrap()
    }

    /// Commits events one at a time and measures commit → receipt.
    fn latency(&self) -> (Duration, Duration) {
        let mut conn = self.pool.get().unwrap();
        let mut samples = Vec::with_capacity(LATENCY_EVENTS);
        for _ in 0..LATENCY_EVENTS {
            let item = conn
                .transaction::<_, diesel::result::Error, _>(|c| Ok(self.insert(c)))
                .unwrap();
            let committed = Instant::now();
            let deadline = committed + Duration::from_secs(10);
            let received = loop {
                if let Some(at) = self.receipts.at.lock().unwrap().get(&i64::from(item.id)) {
                    break *at;
                }
                assert!(Instant::now() < deadline, "event {} not received", item.id);
                std::thread::sleep(Duration::from_micros(200));
            };
            samples.push(received.saturating_duration_since(committed));
            std::thread::sleep(Duration::from_millis(5));
        }
        samples.sort();
        (
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100],
        )
    }

    /// Commits `THROUGHPUT_EVENTS` events, 100 per transaction.
    fn write_backlog(&self, conn: &mut PgConnection) {
        for _ in 0..THROUGHPUT_EVENTS / 100 {
            conn.transaction::<_, diesel::result::Error, _>(|c| {
                for _ in 0..100 {
                    self.insert(c);
                }
                Ok(())
            })
            .unwrap();
        }
    }

    /// Writes `THROUGHPUT_EVENTS` events with no worker running, then
    /// times `workers` processes delivering them all.
    fn throughput(&self, workers: usize) -> f64 {
        let mut conn = self.pool.get().unwrap();
        self.write_backlog(&mut conn);
        let before = self.receipts.count.load(Ordering::SeqCst);
        let started = Instant::now();
        let _workers: Vec<Worker> = (0..workers)
            .map(|i| self.worker(&format!("w{i}")))
            .collect();
        let deadline = started + Duration::from_secs(300);
        while self.receipts.count.load(Ordering::SeqCst) - before < THROUGHPUT_EVENTS {
            assert!(Instant::now() < deadline, "throughput run did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
        let outbox = DieselOutbox::new(self.pool.clone());
        while outbox.counts().unwrap().pending > 0 {
            assert!(Instant::now() < deadline, "deliveries not recorded");
            std::thread::sleep(Duration::from_millis(5));
        }
        THROUGHPUT_EVENTS as f64 / started.elapsed().as_secs_f64()
    }

    /// [`Bench::throughput`] of one worker to the fast receiver while a
    /// second subscription's receiver answers each request in 2 s.
    fn throughput_beside_a_slow_destination(&self) -> (f64, usize) {
        let slow = Arc::new(Receipts::default());
        let url = start_receiver_after(slow.clone(), Duration::from_secs(2));
        let sub = Subscriber::new("item.*", &url).unwrap();
        let mut conn = self.pool.get().unwrap();
        diesel::insert_into(thorn_subscribers::table)
            .values(SubscriberRow::from(&sub))
            .execute(&mut *conn)
            .unwrap();
        self.write_backlog(&mut conn);
        let before = self.receipts.count.load(Ordering::SeqCst);
        let started = Instant::now();
        let worker = self.worker("mixed");
        let deadline = started + Duration::from_secs(300);
        while self.receipts.count.load(Ordering::SeqCst) - before < THROUGHPUT_EVENTS {
            assert!(Instant::now() < deadline, "mixed run did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
        let rate = THROUGHPUT_EVENTS as f64 / started.elapsed().as_secs_f64();
        // The slow subscription goes: its pending deliveries are cancelled.
        diesel::delete(thorn_subscribers::table.find(sub.uuid.to_string()))
            .execute(&mut *conn)
            .unwrap();
        drop(worker);
        (rate, slow.count.load(Ordering::SeqCst))
    }

    fn worker(&self, name: &str) -> Worker {
        let exe = std::env::current_exe().unwrap();
        let bin = exe
            .parent()
            .and_then(|examples| examples.parent())
            .map(|dir| dir.join("thorn"))
            .filter(|p| p.exists())
            .expect("build the worker first: cargo build --release -p thorn-cli");
        Worker(
            Command::new(bin)
                .args([
                    "worker",
                    "--insecure-allow-any-recipient",
                    "--concurrency",
                    "64",
                ])
                .args(["--name", name, "--poll", "0.05"])
                .args(
                    std::env::var("BENCH_WORKER_ARGS")
                        .unwrap_or_default()
                        .split_whitespace(),
                )
                .env("DATABASE_URL", self.worker_url())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let bench = Bench::new();
    let relay =
        Relay::start_with(&bench.thorn, bench.pool.clone(), RelayOptions::default()).unwrap();
    let (p50, p99) = bench.latency();
    relay.stop().unwrap();
    println!(
        "commit -> receipt, in-process relay:  p50 {}  p99 {}  ({LATENCY_EVENTS} events)",
        ms(p50),
        ms(p99)
    );

    {
        let _worker = bench.worker("latency");
        std::thread::sleep(Duration::from_millis(500));
        let (p50, p99) = bench.latency();
        println!(
            "commit -> receipt, one thorn worker:  p50 {}  p99 {}  ({LATENCY_EVENTS} events)",
            ms(p50),
            ms(p99)
        );
    }

    let one = bench.throughput(1);
    println!("throughput, 1 worker process:  {one:.0} deliveries/s ({THROUGHPUT_EVENTS} events)");
    let two = bench.throughput(2);
    println!("throughput, 2 worker processes: {two:.0} deliveries/s ({THROUGHPUT_EVENTS} events)");
    println!("2 workers / 1 worker: {:.2}x", two / one);
    let (mixed, slow) = bench.throughput_beside_a_slow_destination();
    println!(
        "throughput to a fast destination beside one answering in 2 s, 1 worker: \
         {mixed:.0} deliveries/s ({slow} slow ones meanwhile); {:.2} of alone",
        mixed / one
    );
}
