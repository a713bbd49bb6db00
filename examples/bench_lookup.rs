//! Subscriber lookup at scale: the mean time of `Thorn::subscribers_for`
//! per event with 10 matching subscriptions among 1,000, 10,000 and
//! 100,000, the rest `*` and `article.*` subscriptions of other owners —
//! in memory, and in `thorn_subscribers` through Diesel on SQLite (and
//! PostgreSQL with `DATABASE_URL`), each without and with the cache
//! (`DieselStore::cached`).
//!
//! ```text
//! cargo run --release --example bench_lookup
//! DATABASE_URL=postgres://postgres@127.0.0.1/test \
//!     cargo run --release --features postgres --example bench_lookup
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use thorn::diesel::DieselStore;
use thorn::diesel::sql::SqlConnection;
use thorn::diesel::store::{SubscriberRow, thorn_subscribers};
use thorn::subscriber::{MemoryStore, SubscriberLookup};
use thorn::{Config, SenderId, Subscriber, Thorn};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const LOOKUPS: usize = 2_000;

/// The subscriptions: 10 matching `article.created` from sender 7 (owned
/// by it or by nobody, over the four candidate patterns), the rest `*` and
/// `article.*` owned by others.
fn subscriptions(total: usize) -> Vec<Subscriber> {
    let url = "https://hooks.example.com/in";
    let matching = [
        "*",
        "article.created",
        "article.*",
        "*.created",
        "article.created",
    ];
    let mut all: Vec<Subscriber> = (0..10)
        .map(|i| {
            let s = Subscriber::new(matching[i % matching.len()], url).unwrap();
            if i % 2 == 0 {
                s.with_owner(SenderId::from(7))
            } else {
                s
            }
        })
        .collect();
    all.extend((10..total).map(|i| {
        Subscriber::new(if i % 2 == 0 { "*" } else { "article.*" }, url)
            .unwrap()
            .with_owner(SenderId::from(1_000 + i as i64))
    }));
    all
}

/// Mean time of one lookup over `LOOKUPS`, checking each finds the 10.
fn mean_lookup(thorn: &Thorn, runtime: &tokio::runtime::Runtime) -> Duration {
    let sender = SenderId::from(7);
    runtime.block_on(async {
        for _ in 0..50 {
            thorn
                .subscribers_for("article.created", Some(&sender))
                .await
                .unwrap();
        }
        let started = Instant::now();
        for _ in 0..LOOKUPS {
            let found = thorn
                .subscribers_for("article.created", Some(&sender))
                .await
                .unwrap();
            assert_eq!(found.len(), 10);
        }
        started.elapsed() / LOOKUPS as u32
    })
}

fn report(store: &str, figures: &[Duration]) {
    let cells: Vec<String> = figures
        .iter()
        .map(|d| format!("{:>9.1} µs", d.as_secs_f64() * 1e6))
        .collect();
    let ratio = figures[2].as_secs_f64() / figures[0].as_secs_f64();
    println!("{store:<32} {}   100k/1k {ratio:.2}x", cells.join(" "));
}

fn in_database<C: SqlConnection>(
    pool: Pool<ConnectionManager<C>>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    insert: impl Fn(&mut C, &[SubscriberRow]),
) {
    let (mut plain, mut cached) = (Vec::new(), Vec::new());
    let mut written = 0;
    let all = subscriptions(*SIZES.last().unwrap());
    for size in SIZES {
        let rows: Vec<SubscriberRow> = all[written..size].iter().map(SubscriberRow::from).collect();
        let mut conn = pool.get().unwrap();
        for chunk in rows.chunks(500) {
            insert(&mut conn, chunk);
        }
        written = size;
        let thorn = Thorn::builder(Config::default())
            .store(DieselStore::new(pool.clone()))
            .build()
            .unwrap();
        plain.push(mean_lookup(&thorn, runtime));
        let store = runtime.block_on(async {
            let store = DieselStore::new(pool.clone()).cached();
            for _ in 0..1000 {
                if store.in_sync() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(store.in_sync(), "the cache's listener did not report in");
            store
        });
        let thorn = Thorn::builder(Config::default())
            .store(store)
            .build()
            .unwrap();
        cached.push(mean_lookup(&thorn, runtime));
    }
    report(name, &plain);
    report(&format!("{name}, cached"), &cached);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("mean lookup, 10 matching of                    1,000        10,000       100,000");
    let all = subscriptions(*SIZES.last().unwrap());
    let figures: Vec<Duration> = SIZES
        .iter()
        .map(|&size| {
            let store = Arc::new(MemoryStore::new());
            for s in &all[..size] {
                store.add(s.clone());
            }
            let thorn = Thorn::builder(Config::default())
                .shared_store(store as Arc<dyn SubscriberLookup>)
                .build()
                .unwrap();
            mean_lookup(&thorn, &runtime)
        })
        .collect();
    report("MemoryStore", &figures);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lookup.sqlite3");
    let pool = Pool::builder()
        .max_size(4)
        .test_on_check_out(false)
        .connection_customizer(Box::new(thorn::diesel::SqliteBusyTimeout::default()))
        .build(ConnectionManager::<SqliteConnection>::new(
            path.to_str().unwrap(),
        ))
        .unwrap();
    thorn::diesel::migrate(&mut *pool.get().unwrap()).unwrap();
    in_database(
        pool,
        &runtime,
        "DieselStore, SQLite",
        |c: &mut SqliteConnection, rows| {
            diesel::insert_into(thorn_subscribers::table)
                .values(rows)
                .execute(c)
                .unwrap();
        },
    );

    #[cfg(feature = "postgres")]
    if let Ok(url) = std::env::var("DATABASE_URL") {
        use diesel::connection::SimpleConnection;
        let schema = format!("thorn_bench_lookup_{}", std::process::id());
        PgConnection::establish(&url)
            .unwrap()
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .unwrap();
        #[derive(Debug)]
        struct SearchPath(String);
        impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for SearchPath {
            fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
                conn.batch_execute(&format!("SET search_path TO {}", self.0))
                    .map_err(diesel::r2d2::Error::QueryError)
            }
        }
        let pool = Pool::builder()
            .max_size(4)
            .test_on_check_out(false)
            .connection_customizer(Box::new(SearchPath(schema.clone())))
            .build(ConnectionManager::<PgConnection>::new(&url))
            .unwrap();
        thorn::diesel::migrate(&mut *pool.get().unwrap()).unwrap();
        in_database(
            pool,
            &runtime,
            "DieselStore, PostgreSQL",
            |c: &mut PgConnection, rows| {
                diesel::insert_into(thorn_subscribers::table)
                    .values(rows)
                    .execute(c)
                    .unwrap();
            },
        );
        PgConnection::establish(&url)
            .unwrap()
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .unwrap();
    }
}
