//! `thorn worker` processes on one PostgreSQL database: they share the
//! work without attempting a delivery twice, take over the deliveries of a
//! worker that was killed once its lease expires, and stop on SIGTERM
//! without leaving a delivery claimed. Skipped without
//! `THORN_TEST_DATABASE_URL`.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thorn::diesel::prelude::*;

use diesel::prelude::*;
use thorn::diesel::outbox::{OutboxCounts, thorn_attempts, thorn_deliveries};
use thorn::diesel::store::{SubscriberRow, thorn_subscribers};
use thorn::diesel::{DieselOutbox, migrate};
use thorn::{Config, Subscriber, Thorn, WebhookModel};

use crate::db::{PgSchema, pg_pool};
use crate::receiver::{Receiver, Reply};

diesel::table! {
    orders (id) {
        id -> Integer,
        customer_id -> Integer,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, WebhookModel)]
#[diesel(table_name = orders)]
#[webhook_model(sender_field = customer_id, on_create = "order.created")]
struct Order {
    id: i32,
    customer_id: i32,
}

type PgPool = diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<diesel::PgConnection>>;

/// A schema with Thorn's tables, `orders`, and one subscriber at `url`.
fn setup(url: &str) -> Option<(PgSchema, PgPool, Thorn)> {
    let (schema, pool) = pg_pool()?;
    let mut conn = pool.get().unwrap();
    migrate(&mut *conn).unwrap();
    diesel::sql_query("CREATE TABLE orders (id SERIAL PRIMARY KEY, customer_id INTEGER NOT NULL)")
        .execute(&mut *conn)
        .unwrap();
    diesel::insert_into(thorn_subscribers::table)
        .values(SubscriberRow::from(
            &Subscriber::new("order.*", url).unwrap(),
        ))
        .execute(&mut *conn)
        .unwrap();
    // The application only writes the outbox; the workers deliver.
    let thorn = Thorn::new(Config {
        outbox: true,
        ..Config::default()
    })
    .unwrap();
    Some((schema, pool, thorn))
}

fn create_orders(thorn: &Thorn, pool: &PgPool, n: usize) {
    let mut conn = pool.get().unwrap();
    conn.transaction::<_, diesel::result::Error, _>(|conn| {
        for i in 0..n {
            let _: Order = diesel::insert_into(orders::table)
                .values(orders::customer_id.eq(i as i32))
                .returning(Order::as_returning())
                .with_webhooks(thorn)
                .get_result(conn)?;
        }
        Ok(())
    })
    .unwrap();
}

struct Worker(Child);

impl Worker {
    fn start(schema: &PgSchema, name: &str, lease: &str, env: &[(&str, &str)]) -> Worker {
        Self::start_with(schema, name, lease, env, &[])
    }

    fn start_with(
        schema: &PgSchema,
        name: &str,
        lease: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Worker {
        let child = Command::new(env!("CARGO_BIN_EXE_thorn"))
            .args(["worker", "--insecure-allow-any-recipient", "--poll", "0.2"])
            .args(["--concurrency", "16", "--lease", lease, "--name", name])
            .args(args)
            .env("DATABASE_URL", schema.url())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("thorn worker starts");
        Worker(child)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(
    outbox: &DieselOutbox<diesel::PgConnection>,
    done: impl Fn(&OutboxCounts) -> bool,
) -> OutboxCounts {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = outbox.counts().unwrap();
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_workers_deliver_a_thousand_events_once_each() {
    let receiver = Receiver::start();
    let Some((schema, pool, thorn)) = setup(&receiver.url) else {
        return;
    };
    let mut a = Worker::start(&schema, "worker-a", "30", &[]);
    let mut b = Worker::start(&schema, "worker-b", "30", &[]);
    for _ in 0..10 {
        create_orders(&thorn, &pool, 100);
    }
    let got = receiver.expect(1000, Duration::from_secs(60));
    let ids: HashSet<&str> = got.iter().map(|r| r.header("hook-delivery")).collect();
    assert_eq!(
        ids.len(),
        1000,
        "every delivery sent once, each with its own id"
    );
    let outbox = DieselOutbox::new(pool.clone());
    let counts = wait_for(&outbox, |c| c.delivered == 1000);
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    assert_eq!(
        (counts.delivered, counts.pending, counts.dead),
        (1000, 0, 0)
    );

    let mut conn = pool.get().unwrap();
    let attempts: i64 = thorn_attempts::table
        .count()
        .get_result(&mut *conn)
        .unwrap();
    assert_eq!(attempts, 1000, "no delivery attempted twice");
    let workers: Vec<String> = thorn_attempts::table
        .select(thorn_attempts::worker)
        .distinct()
        .load(&mut *conn)
        .unwrap();
    assert_eq!(workers.len(), 2, "both workers took part: {workers:?}");
}

#[test]
fn a_killed_workers_deliveries_are_taken_over_after_its_lease() {
    // The first five requests hang: the deliveries are in flight when the
    // worker is killed.
    let receiver = Receiver::scripted(std::iter::repeat_n(Reply::Hang(Duration::from_secs(30)), 5));
    let Some((schema, pool, thorn)) = setup(&receiver.url) else {
        return;
    };
    let mut doomed = Worker::start(&schema, "doomed", "3", &[("THORN_EVENT_TIMEOUT", "2")]);
    create_orders(&thorn, &pool, 5);
    let first = receiver.expect(5, Duration::from_secs(20));
    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();
    let claimed_at_kill = DieselOutbox::new(pool.clone()).counts().unwrap();
    assert_eq!(claimed_at_kill.pending, 5);

    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut heir = Worker::start_with(
        &schema,
        "heir",
        "30",
        &[],
        &["--metrics-addr", &metrics_addr],
    );
    let second = receiver.expect(5, Duration::from_secs(20));
    let ids = |r: &[crate::receiver::Received]| -> HashSet<String> {
        r.iter()
            .map(|r| r.header("hook-delivery").to_owned())
            .collect()
    };
    assert_eq!(ids(&first), ids(&second), "the same deliveries, same ids");
    let counts = wait_for(&DieselOutbox::new(pool.clone()), |c| c.delivered == 5);
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(
        metrics.contains("thorn_attempts_total{outcome=\"delivered\"} 5"),
        "Prometheus metrics count the deliveries:\n{metrics}"
    );
    assert!(
        metrics.contains("thorn_attempt_duration_seconds"),
        "{metrics}"
    );
    assert!(heir.terminate().success());
    assert_eq!((counts.delivered, counts.pending, counts.dead), (5, 0, 0));
    let mut conn = pool.get().unwrap();
    let heirs: i64 = thorn_attempts::table
        .filter(thorn_attempts::worker.eq("heir"))
        .count()
        .get_result(&mut *conn)
        .unwrap();
    assert_eq!(heirs, 5);
}

#[test]
fn sigterm_finishes_in_flight_work_and_leaves_nothing_claimed() {
    // Each request is held 1 s and then dropped: a failed attempt, retried later.
    let receiver = Receiver::scripted(std::iter::repeat_n(Reply::Hang(Duration::from_secs(1)), 3));
    let Some((schema, pool, thorn)) = setup(&receiver.url) else {
        return;
    };
    let mut worker = Worker::start(
        &schema,
        "graceful",
        "60",
        &[("THORN_EVENT_TIMEOUT", "10"), ("THORN_RETRY_DELAY", "600")],
    );
    create_orders(&thorn, &pool, 3);
    receiver.expect(3, Duration::from_secs(20));
    // The three requests are in flight now.
    assert!(worker.terminate().success(), "exit status 0 after SIGTERM");
    let counts = DieselOutbox::new(pool.clone()).counts().unwrap();
    assert_eq!((counts.pending, counts.claimed), (3, 0), "{counts:?}");
    let mut conn = pool.get().unwrap();
    let locked: i64 = thorn_deliveries::table
        .filter(thorn_deliveries::locked_by.is_not_null())
        .count()
        .get_result(&mut *conn)
        .unwrap();
    assert_eq!(locked, 0, "no delivery left claimed");
    let recorded: Vec<Option<String>> = thorn_attempts::table
        .select(thorn_attempts::error)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(recorded.len(), 3, "the in-flight attempts were recorded");
    assert!(recorded.iter().all(|e| e.is_some()));
}

/// A plain HTTP/1.0 GET on loopback, bounded by timeouts.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// `thorn` on a SQLite file: migrate, a worker delivering what the
/// application wrote, counts, prune, and a clear error for a bad state.
#[test]
fn the_command_works_on_a_sqlite_file() {
    use diesel::r2d2::{ConnectionManager, Pool};
    use thorn::diesel::SqliteBusyTimeout;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sqlite3");
    let url = format!("sqlite://{}", path.display());
    let thorn_cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_thorn"))
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .expect("thorn runs")
    };
    let out = thorn_cmd(&["migrate"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied migrations [1, 2, 3, 4, 5, 6]"));

    let receiver = Receiver::start();
    let pool: Pool<ConnectionManager<diesel::SqliteConnection>> = Pool::builder()
        .max_size(4)
        .connection_customizer(Box::new(SqliteBusyTimeout::default()))
        .build(ConnectionManager::new(path.to_str().unwrap()))
        .unwrap();
    let mut conn = pool.get().unwrap();
    diesel::sql_query(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, customer_id INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .unwrap();
    diesel::insert_into(thorn_subscribers::table)
        .values(SubscriberRow::from(
            &Subscriber::new("order.*", &receiver.url).unwrap(),
        ))
        .execute(&mut *conn)
        .unwrap();
    let thorn = Thorn::new(Config {
        outbox: true,
        ..Config::default()
    })
    .unwrap();
    thorn::diesel::transaction(&thorn, &mut conn, |conn| {
        for i in 0..5 {
            let _: Order = diesel::insert_into(orders::table)
                .values(orders::customer_id.eq(i))
                .returning(Order::as_returning())
                .with_webhooks(&thorn)
                .get_result(conn)?;
        }
        Ok::<_, diesel::result::Error>(())
    })
    .unwrap();

    let mut worker = Worker(
        Command::new(env!("CARGO_BIN_EXE_thorn"))
            // The receiver on 127.0.0.1 is let through by configuration, with
            // every other recipient rule in force.
            .args(["worker", "--poll", "0.1"])
            .env("THORN_ALLOW_RECIPIENTS", receiver_host_port(&receiver.url))
            .env("DATABASE_URL", &url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let got = receiver.expect(5, Duration::from_secs(20));
    assert_eq!(got.len(), 5);
    let outbox = DieselOutbox::new(pool.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while outbox.counts().unwrap().delivered < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(worker.terminate().success());

    let counts = thorn_cmd(&["deliveries", "counts"]);
    assert!(
        String::from_utf8_lossy(&counts.stdout).contains("delivered 5"),
        "{counts:?}"
    );
    // A delivered delivery is not sent again by mistake, nor shown a next run.
    let delivered = outbox.deliveries(None, 1).unwrap().remove(0).id;
    let retry = thorn_cmd(&["deliveries", "retry", &delivered]);
    assert!(!retry.status.success(), "{retry:?}");
    assert!(
        String::from_utf8_lossy(&retry.stderr).contains("--again"),
        "{retry:?}"
    );
    let shown = thorn_cmd(&["deliveries", "show", &delivered]);
    assert!(
        !String::from_utf8_lossy(&shown.stdout).contains("next run"),
        "{shown:?}"
    );
    let none = thorn_cmd(&["deliveries", "list", "--state", "dead"]);
    assert_eq!(
        String::from_utf8_lossy(&none.stdout).trim(),
        "no deliveries"
    );
    let pruned = thorn_cmd(&["prune", "--older-than", "0s"]);
    assert!(
        String::from_utf8_lossy(&pruned.stdout)
            .contains("deleted 5 deliveries, 5 attempts, 5 events"),
        "{pruned:?}"
    );
    let bogus = thorn_cmd(&["deliveries", "list", "--state", "bogus"]);
    assert!(!bogus.status.success());
    assert!(
        String::from_utf8_lossy(&bogus.stderr)
            .contains("none of pending, delivered, dead, cancelled"),
        "{bogus:?}"
    );
}

/// `127.0.0.1:PORT` of a receiver's URL.
fn receiver_host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap();
    rest.split('/').next().unwrap().to_owned()
}
