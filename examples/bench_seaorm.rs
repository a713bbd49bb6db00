//! What an event costs a SeaORM write: transactions of 100
//! `ActiveModel::insert`s of an entity whose behaviour sends one
//! `on_create` event, against the same inserts of an entity with SeaORM's
//! default behaviour (same table).
//!
//! ```text
//! cargo run --release --features seaorm --example bench_seaorm          # SQLite
//! DATABASE_URL=postgres://postgres@127.0.0.1/test \
//!     cargo run --release --features seaorm --example bench_seaorm      # and PostgreSQL
//! ```
//!
//! Every Thorn mode runs its inserts in `thorn::seaorm::begin` / `commit`.
//! Modes as in `bench_diesel`: `disabled` (the event is prepared, held and
//! dropped after COMMIT), `on commit` (held in memory, handed to the
//! in-process dispatcher after COMMIT; one subscriber on a receiver in this
//! process) and `outbox` (the transaction's events written as one
//! multi-row insert before COMMIT; no relay). After each mode's
//! transaction, untimed, its deliveries are drained, so background work of
//! one mode never slows another's.
//! Medians of interleaved rounds; each round ends with the plain inserts
//! again, whose ratio to the first shows how much the machine's noise
//! alone moves the figures.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, Set, TransactionTrait,
};
use thorn::subscriber::MemoryStore;
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, DispatcherKind, Subscriber, Thorn};

/// The entity with Thorn's hooks.
mod hooked {
    use sea_orm::entity::prelude::*;

    /// A row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, thorn::WebhookModel)]
    #[sea_orm(table_name = "bench_rows")]
    #[webhook_model(sender_field = owner_id, payload = Self::payload, on_create = "row.created")]
    pub(crate) struct Model {
        /// Key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Title.
        pub title: String,
        /// Owner.
        pub owner_id: i32,
    }

    impl Model {
        fn payload(&self) -> serde_json::Value {
            serde_json::json!({ "id": self.id, "title": self.title })
        }
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    thorn::seaorm::behavior!(ActiveModel);
}

/// The same table, SeaORM's default behaviour.
mod plain {
    use sea_orm::entity::prelude::*;

    /// A row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bench_rows")]
    pub(crate) struct Model {
        /// Key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Title.
        pub title: String,
        /// Owner.
        pub owner_id: i32,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

const ROWS: usize = 100;
const ROUNDS: usize = 100;

async fn receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { StatusCode::OK });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook/")
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

async fn plain_round(db: &DatabaseConnection) -> Duration {
    let started = Instant::now();
    let txn = db.begin().await.unwrap();
    for i in 0..ROWS {
        plain::ActiveModel {
            title: Set(format!("row {i}")),
            owner_id: Set(1),
            ..Default::default()
        }
        .insert(&txn)
        .await
        .unwrap();
    }
    txn.commit().await.unwrap();
    started.elapsed()
}

async fn hooked_round(db: &DatabaseConnection, thorn: &Thorn) -> Duration {
    thorn::seaorm::scope(thorn.clone(), async {
        let started = Instant::now();
        // A transaction Thorn manages: events leave after COMMIT.
        let txn = thorn::seaorm::begin(db).await.unwrap();
        for i in 0..ROWS {
            hooked::ActiveModel {
                title: Set(format!("row {i}")),
                owner_id: Set(1),
                ..Default::default()
            }
            .insert(&*txn)
            .await
            .unwrap();
        }
        txn.commit().await.unwrap();
        started.elapsed()
    })
    .await
}

async fn bench(db: &DatabaseConnection, label: &str) {
    let url = receiver().await;
    let modes = [
        ("disabled", thorn(DispatcherKind::Disabled, &url)),
        ("on commit", thorn(DispatcherKind::InProcess, &url)),
        ("outbox", outbox_thorn(&url)),
    ];
    let mut plain = Vec::new();
    let mut again = Vec::new();
    let mut with: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    for round in 0..ROUNDS + 3 {
        let t = plain_round(db).await;
        if round >= 3 {
            plain.push(t);
        }
        for (m, (_, thorn)) in modes.iter().enumerate() {
            let t = hooked_round(db, thorn).await;
            if round >= 3 {
                with[m].push(t);
            }
            // Untimed: this mode's deliveries finish before the next mode
            // runs, so none competes with another's round.
            let _ = thorn.drain_async(Duration::from_secs(30)).await;
        }
        let t = plain_round(db).await;
        if round >= 3 {
            again.push(t);
        }
    }
    let base = median(plain);
    println!(
        "{label}: plain SeaORM {:.2} ms per transaction of {ROWS} inserts",
        base.as_secs_f64() * 1e3
    );
    let control = median(again);
    println!(
        "{label}: plain again {:.2} ms  ratio {:.2}  (the same plain inserts, last in each round: the noise floor)",
        control.as_secs_f64() * 1e3,
        control.as_secs_f64() / base.as_secs_f64()
    );
    for (_, thorn) in &modes {
        let _ = thorn.drain_async(Duration::from_secs(30)).await;
    }
    for ((mode, _), times) in modes.iter().zip(with) {
        let t = median(times);
        println!(
            "{label}: thorn {mode:10} {:.2} ms  ratio {:.2}",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() / base.as_secs_f64()
        );
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Database::connect(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.sqlite3").display()
    ))
    .await
    .unwrap();
    sqlite
        .execute_unprepared(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE bench_rows (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, owner_id INTEGER NOT NULL);",
        )
        .await
        .unwrap();
    thorn::seaorm::migrate(&sqlite).await.unwrap();
    bench(&sqlite, "SQLite (file, WAL)").await;

    if let Ok(url) = std::env::var("DATABASE_URL") {
        let schema = format!("thorn_bench_seaorm_{}", std::process::id());
        let admin = Database::connect(&url)
            .await
            .expect("DATABASE_URL connects");
        admin
            .execute_unprepared(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let pg = Database::connect(format!("{url}{sep}options=-csearch_path%3D{schema}"))
            .await
            .unwrap();
        pg.execute_unprepared(
            "CREATE TABLE bench_rows (id SERIAL PRIMARY KEY, title TEXT NOT NULL, owner_id INTEGER NOT NULL)",
        )
        .await
        .unwrap();
        thorn::seaorm::migrate(&pg).await.unwrap();
        bench(&pg, "PostgreSQL").await;
        pg.close().await.unwrap();
        admin
            .execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    }
}
