//! What an event costs a Diesel write: transactions of 100 inserts of a
//! model with one `on_create` event, through `thorn::diesel::insert`,
//! against the same inserts through plain Diesel.
//!
//! ```text
//! cargo run --release --example bench_diesel                              # SQLite
//! DATABASE_URL=postgres://postgres@127.0.0.1/test \
//!     cargo run --release --features postgres --example bench_diesel      # and PostgreSQL
//! ```
//!
//! Every Thorn mode runs its inserts in `thorn::diesel::transaction`.
//! Modes: `disabled` (the event is prepared, held and dropped after
//! COMMIT: Thorn's own work), `on commit` (held in memory and handed to
//! the in-process dispatcher after COMMIT; one subscriber on a receiver in
//! this process, deliveries run on background threads while the next
//! transaction runs) and `outbox` (the transaction's events are written as
//! one multi-row insert before COMMIT; no relay runs). After each mode's
//! transaction, untimed, its deliveries are drained, so background work of
//! one mode never slows another's. Each round ends with the plain inserts
//! again, as a control. Medians of interleaved rounds.

// `diesel::table!` generates public items without doc comments.
#![allow(missing_docs)]

use std::time::{Duration, Instant};
use thorn::diesel::prelude::*;

use axum::http::StatusCode;
use diesel::prelude::*;
use thorn::subscriber::MemoryStore;
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, DispatcherKind, Subscriber, Thorn, WebhookModel};

diesel::table! {
    bench_rows (id) {
        id -> Integer,
        title -> Text,
        owner_id -> Integer,
    }
}

#[derive(Debug, Queryable, Selectable, WebhookModel)]
#[diesel(table_name = bench_rows)]
#[webhook_model(sender_field = owner_id, payload = Self::payload, on_create = "row.created")]
struct Row {
    id: i32,
    title: String,
    owner_id: i32,
}

impl Row {
    fn payload(&self) -> serde_json::Value {
        serde_json::json!({ "id": self.id, "title": self.title })
    }
}

const ROWS: usize = 100;
const ROUNDS: usize = 100;

fn receiver() -> String {
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

fn thorn(kind: DispatcherKind, url: &str) -> Thorn {
    build_thorn(kind, false, url)
}

fn outbox_thorn(url: &str) -> Thorn {
    build_thorn(DispatcherKind::InProcess, true, url)
}

fn build_thorn(kind: DispatcherKind, outbox: bool, url: &str) -> Thorn {
    let store = MemoryStore::new();
    store.add(Subscriber::new("row.*", url).unwrap());
    Thorn::builder(Config {
        dispatcher: kind,
        outbox,
        recipient_validators: Validators::new([ensure_protocol(["http"])]),
        ..Config::default()
    })
    .store(store)
    .build()
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

macro_rules! bench_for {
    ($name:ident, $conn:ty) => {
        fn $name(conn: &mut $conn, label: &str) {
            let url = receiver();
            let modes = [
                ("disabled", Some(thorn(DispatcherKind::Disabled, &url))),
                ("on commit", Some(thorn(DispatcherKind::InProcess, &url))),
                ("outbox", Some(outbox_thorn(&url))),
            ];
            let mut plain = Vec::new();
            let mut control = Vec::new();
            let mut with: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
            let plain_tx = |conn: &mut $conn| {
                let started = Instant::now();
                conn.transaction::<_, diesel::result::Error, _>(|conn| {
                    for i in 0..ROWS {
                        let _: Row = diesel::insert_into(bench_rows::table)
                            .values((
                                bench_rows::title.eq(format!("row {i}")),
                                bench_rows::owner_id.eq(1),
                            ))
                            .returning(Row::as_returning())
                            .get_result(conn)?;
                    }
                    Ok(())
                })
                .unwrap();
                started.elapsed()
            };
            for round in 0..ROUNDS + 3 {
                let t = plain_tx(conn);
                if round >= 3 {
                    plain.push(t);
                }
                for (m, (_, thorn)) in modes.iter().enumerate() {
                    let thorn = thorn.as_ref().unwrap();
                    let started = Instant::now();
                    // A transaction Thorn manages: events leave after COMMIT.
                    thorn::diesel::transaction(thorn, conn, |conn| {
                        for i in 0..ROWS {
                            let _: Row = diesel::insert_into(bench_rows::table)
                                .values((
                                    bench_rows::title.eq(format!("row {i}")),
                                    bench_rows::owner_id.eq(1),
                                ))
                                .returning(Row::as_returning())
                                .with_webhooks(thorn)
                                .get_result(conn)?;
                        }
                        Ok::<_, diesel::result::Error>(())
                    })
                    .unwrap();
                    if round >= 3 {
                        with[m].push(started.elapsed());
                    }
                    // Untimed: this mode's deliveries finish before the next
                    // mode runs, so none competes with another's round.
                    let _ = thorn.drain(Duration::from_secs(30));
                }
                // The plain inserts again, last in the round: the noise floor.
                let t = plain_tx(conn);
                if round >= 3 {
                    control.push(t);
                }
            }
            for (_, thorn) in &modes {
                let _ = thorn.as_ref().unwrap().drain(Duration::from_secs(30));
            }
            let base = median(plain);
            println!(
                "{label}: plain Diesel {:.2} ms per transaction of {ROWS} inserts",
                base.as_secs_f64() * 1e3
            );
            let c = median(control);
            println!(
                "{label}: plain again   {:.2} ms  ratio {:.2} (noise floor)",
                c.as_secs_f64() * 1e3,
                c.as_secs_f64() / base.as_secs_f64()
            );
            for ((mode, _), times) in modes.iter().zip(with) {
                let t = median(times);
                println!(
                    "{label}: thorn {mode:10} {:.2} ms  ratio {:.2}",
                    t.as_secs_f64() * 1e3,
                    t.as_secs_f64() / base.as_secs_f64()
                );
            }
        }
    };
}

bench_for!(bench_sqlite, SqliteConnection);
#[cfg(feature = "postgres")]
bench_for!(bench_postgres, PgConnection);

fn main() {
    use diesel::connection::SimpleConnection;
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite =
        SqliteConnection::establish(dir.path().join("bench.sqlite3").to_str().unwrap()).unwrap();
    sqlite
        .batch_execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE bench_rows (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, owner_id INTEGER NOT NULL);",
        )
        .unwrap();
    thorn::diesel::migrate(&mut sqlite).unwrap();
    bench_sqlite(&mut sqlite, "SQLite (file, WAL)");

    #[cfg(feature = "postgres")]
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let schema = format!("thorn_bench_diesel_{}", std::process::id());
        let mut pg = PgConnection::establish(&url).expect("DATABASE_URL connects");
        pg.batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema};
             CREATE TABLE bench_rows (id SERIAL PRIMARY KEY, title TEXT NOT NULL, owner_id INTEGER NOT NULL);"
        ))
        .unwrap();
        thorn::diesel::migrate(&mut pg).unwrap();
        bench_postgres(&mut pg, "PostgreSQL");
        pg.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .unwrap();
    }
}
