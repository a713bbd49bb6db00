//! `thorn`: run outbox workers and look after deliveries, on PostgreSQL or
//! SQLite.
//!
//! ```text
//! thorn migrate                        create or upgrade Thorn's tables
//! thorn worker [--concurrency N]       deliver committed events until SIGTERM
//! thorn deliveries counts|list|show|retry|recover
//! thorn events replay <id>
//! thorn prune --older-than 30d | --owner <json>
//! thorn subscribers list|enable
//! ```
//!
//! The database comes from `--database-url` or `DATABASE_URL`
//! (`postgres://...`, or a SQLite file: `sqlite://app.db`, `app.db`);
//! delivery settings from the `THORN_*` variables (timeouts, signer...).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, R2D2Connection};
use diesel::{PgConnection, SqliteConnection};
use thorn::RelayOptions;
use thorn::diesel::sql::SqlConnection;
use thorn::diesel::{DieselOutbox, DieselStore, Migrate, SqliteBusyTimeout};
use thorn::outbox::DeliveryState;
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, RetryPolicy, Thorn};
use thorn_core::integration::sql::{Database as _, waking};
use thorn_core::integration::{CHANNEL, RelayCounters, run_relay};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "thorn",
    version,
    about = "Thorn for Rust: outbox workers and delivery tools"
)]
struct Cli {
    /// `postgres://...`, or a SQLite file (`sqlite://app.db`, `app.db`)
    /// (default: $DATABASE_URL).
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive webhooks on this machine and print each one: headers, body,
    /// and whether its signatures verify with the subscription's secret
    /// (no database needed).
    Listen(tools::ListenArgs),
    /// Print the `Hook-HMAC` (or Standard Webhooks) signature of a body.
    Sign(tools::SignArgs),
    /// Check a body's `Hook-HMAC` (or Standard Webhooks) signature; exits 1
    /// when it does not match.
    Verify(tools::VerifyArgs),
    /// Create or upgrade Thorn's tables (safe to run at every deploy).
    Migrate,
    /// Deliver committed outbox events until SIGTERM or Ctrl-C.
    #[command(after_help = WORKER_ENV)]
    Worker(WorkerArgs),
    /// Inspect and retry deliveries.
    #[command(subcommand)]
    Deliveries(Deliveries),
    /// Work on stored events.
    #[command(subcommand)]
    Events(Events),
    /// Stored subscriptions and their health.
    #[command(subcommand)]
    Subscribers(Subscribers),
    /// Delete old finished deliveries, or one owner's data.
    Prune {
        /// Finished (delivered, dead, cancelled) deliveries last changed
        /// longer ago than this, e.g. `30d` or `12h`, their attempts, and
        /// the events left without deliveries.
        #[arg(long, conflicts_with = "owner", required_unless_present = "owner")]
        older_than: Option<String>,
        /// Every delivery, attempt and event of this owner, as stored:
        /// JSON, e.g. `7` or `'"alice"'`.
        #[arg(long)]
        owner: Option<String>,
    },
}

#[derive(Subcommand)]
enum Subscribers {
    /// Every subscription with its status (active, failing, disabled).
    List {
        /// Only the disabled ones.
        #[arg(long)]
        disabled: bool,
    },
    /// Re-enable a disabled subscription.
    Enable {
        /// Subscription uuid.
        uuid: uuid::Uuid,
    },
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// Deliveries in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds a claim holds before another worker may take it over.
    #[arg(long, default_value_t = 60.0)]
    lease: f64,
    /// Longest wait between polls, in seconds (LISTEN/NOTIFY wakes earlier).
    #[arg(long, default_value_t = 1.0)]
    poll: f64,
    /// Prune finished deliveries older than this (e.g. `30d`) at start and
    /// every 10 minutes (default: keep everything).
    #[arg(long)]
    retention: Option<String>,
    /// Disable a subscription whose deliveries have failed, with no success
    /// in between, for this many seconds (0: never; 259200 is 3 days).
    #[arg(long, default_value_t = 259_200)]
    disable_after: u64,
    /// Retry every delivery this worker sends on this schedule, instead of
    /// the policy each event was written with: waits such as
    /// `5s,5m,30m,2h,5h,10h,10h`, each ±20% (env THORN_RETRY_SCHEDULE).
    #[arg(long)]
    retry_schedule: Option<String>,
    /// Deliveries in flight to one host:port at once (env
    /// THORN_MAX_PER_HOST; default 16).
    #[arg(long)]
    max_per_destination: Option<usize>,
    /// This worker's name in the attempts table (default: host:pid:random).
    #[arg(long)]
    name: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// INSECURE, for development only: allow any http(s) recipient,
    /// internal addresses and any port included, which turns off the SSRF
    /// checks. To reach one internal receiver in production, list it in
    /// THORN_ALLOW_RECIPIENTS (host:port or CIDR) instead: the other checks
    /// stay on.
    #[arg(long)]
    insecure_allow_any_recipient: bool,
}

#[derive(Subcommand)]
enum Deliveries {
    /// Events and deliveries by state.
    Counts,
    /// Recent deliveries.
    List {
        /// Only this state: pending, delivered, dead or cancelled.
        #[arg(long)]
        state: Option<DeliveryState>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One delivery with every attempt.
    Show {
        /// Delivery id.
        id: Uuid,
    },
    /// Make a delivery due now (a dead one gets another attempt), same id.
    Retry {
        /// Delivery id.
        id: Uuid,
        /// Send it even though it was delivered already.
        #[arg(long)]
        again: bool,
    },
    /// Send again one subscription's dead deliveries of a time window,
    /// same ids.
    Recover {
        /// Subscription uuid.
        subscription: Uuid,
        /// Window start: RFC 3339 time, or a duration ago (`24h`, `7d`).
        #[arg(long, default_value = "1d")]
        since: String,
        /// Window end (default: now), same forms.
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
enum Events {
    /// Send an event again to the stored subscriptions matching it now
    /// (prints the new delivery ids).
    Replay {
        /// Event id.
        id: Uuid,
    },
}

mod tools;

/// What `thorn worker --help` says it reads and opens.
const WORKER_ENV: &str = "\
Environment:
  DATABASE_URL                   the database, when --database-url is not given
  THORN_EVENT_TIMEOUT            seconds one request may take (3); the lease must be longer
  THORN_SUBSCRIBERS              static subscribers (JSON): the worker fans out with its own
  THORN_ALLOW_RECIPIENTS         host:port or CIDR let past the port and address checks
  THORN_RETRY_SCHEDULE           retry schedule for every delivery (as --retry-schedule)
  THORN_MAX_PER_HOST             deliveries in flight to one host:port (as --max-per-destination)
  THORN_HMAC_SIGNER              sign or compat_sign
  THORN_STANDARD_WEBHOOKS        also send Standard Webhooks headers
  RUST_LOG is not read: the worker logs at info to stderr.

Connections: a pool of concurrency / 4 + 4 database connections (20 at --concurrency 64),
opened as needed; on PostgreSQL one of them holds LISTEN thorn_outbox.";

type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(tracing::Level::INFO)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thorn: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The database of `--database-url` / `DATABASE_URL`.
enum Database {
    Postgres(String),
    Sqlite(String),
}

fn database(url: Option<String>) -> Result<Database, Failure> {
    let url = url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .ok_or("no database: pass --database-url or set DATABASE_URL")?;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Database::Postgres(url));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(&url);
    if path.contains("://") {
        return Err(format!("`{url}`: not a PostgreSQL URL or a SQLite file").into());
    }
    Ok(Database::Sqlite(path.to_owned()))
}

fn connect<C: R2D2Connection + 'static>(
    url: &str,
    size: u32,
    customize: Option<Box<dyn CustomizeConnection<C, diesel::r2d2::Error>>>,
) -> Result<Pool<ConnectionManager<C>>, Failure> {
    let mut builder = Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        // No `SELECT 1` before every statement: thorn::diesel drops a
        // connection that lost the server from the pool.
        .test_on_check_out(false);
    if let Some(c) = customize {
        builder = builder.connection_customizer(c);
    }
    builder
        .build(ConnectionManager::new(url))
        .map_err(|e| format!("cannot connect to the database: {e}").into())
}

fn run(cli: Cli) -> Result<(), Failure> {
    let Cli {
        database_url,
        command,
    } = cli;
    // The tools that need no database.
    let command = match command {
        Command::Listen(args) => return tools::listen(args),
        Command::Sign(args) => return tools::sign_command(args),
        Command::Verify(args) => return tools::verify_command(args),
        command => command,
    };
    // A worker's statements need a connection per few deliveries in flight.
    let size = match &command {
        Command::Worker(args) => u32::try_from(args.concurrency / 4 + 4).unwrap_or(32),
        _ => 1,
    };
    match database(database_url)? {
        Database::Postgres(url) => run_on::<PgConnection>(connect(&url, size, None)?, command),
        Database::Sqlite(path) => run_on::<SqliteConnection>(
            connect(&path, size, Some(Box::new(SqliteBusyTimeout::default())))?,
            command,
        ),
    }
}

fn parse_duration(what: &str, text: &str) -> Result<Duration, Failure> {
    match thorn::retry::parse_schedule(text)?.as_slice() {
        [one] => Ok(*one),
        _ => Err(format!("{what}: `{text}` is not one duration").into()),
    }
}

/// An RFC 3339 time, or a duration before now.
fn parse_time(what: &str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, Failure> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = parse_duration(what, text)
        .map_err(|_| format!("{what}: `{text}` is neither an RFC 3339 time nor a duration"))?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(ago)?)
}

fn run_on<C>(pool: Pool<ConnectionManager<C>>, command: Command) -> Result<(), Failure>
where
    C: SqlConnection + Migrate,
{
    match command {
        Command::Listen(_) | Command::Sign(_) | Command::Verify(_) => {
            Err("listen, sign and verify need no database".into())
        }
        Command::Migrate => {
            let applied = thorn::diesel::migrate(&mut *pool.get()?)?;
            if applied.is_empty() {
                println!("up to date");
            } else {
                println!("applied migrations {applied:?}");
            }
            Ok(())
        }
        Command::Worker(args) => worker(pool, args),
        Command::Deliveries(d) => deliveries(&DieselOutbox::new(pool), d),
        Command::Subscribers(Subscribers::List { disabled }) => {
            let store = DieselStore::new(pool);
            let all = store.statuses(disabled)?;
            if all.is_empty() {
                println!("no subscriptions");
            }
            for (sub, status) in all {
                let state = match (&status.disabled_at, &status.failing_since) {
                    (Some(at), _) => format!(
                        "disabled {} ({})",
                        time(*at),
                        status.disabled_reason.as_deref().unwrap_or("no reason")
                    ),
                    (None, Some(since)) => format!("failing since {}", time(*since)),
                    (None, None) => "active".into(),
                };
                println!("{}  {:20}  {}  {state}", sub.uuid, sub.event, sub.url);
            }
            Ok(())
        }
        Command::Subscribers(Subscribers::Enable { uuid }) => {
            if DieselStore::new(pool).enable(uuid)? {
                println!("subscription {uuid} enabled");
                Ok(())
            } else {
                Err(format!("no subscription {uuid}").into())
            }
        }
        Command::Events(Events::Replay { id }) => match DieselOutbox::new(pool).replay_event(id)? {
            Some(ids) => {
                println!(
                    "event {id}: {}",
                    count(ids.len(), "new delivery", "new deliveries")
                );
                for id in ids {
                    println!("{id}");
                }
                Ok(())
            }
            None => Err(format!("no event {id}").into()),
        },
        Command::Prune { older_than, owner } => {
            let outbox = DieselOutbox::new(pool);
            let pruned = match (older_than, owner) {
                (Some(age), _) => outbox.prune(parse_duration("--older-than", &age)?)?,
                (None, Some(owner)) => {
                    let owner: thorn::SenderId = serde_json::from_str(&owner)
                        .map_err(|e| format!("--owner: `{owner}` is not a JSON id: {e}"))?;
                    outbox.prune_owner(&owner)?
                }
                (None, None) => return Err("pass --older-than or --owner".into()),
            };
            println!(
                "deleted {} deliveries, {} attempts, {} events",
                pruned.deliveries, pruned.attempts, pruned.events
            );
            Ok(())
        }
    }
}

fn deliveries<C: SqlConnection>(
    outbox: &DieselOutbox<C>,
    command: Deliveries,
) -> Result<(), Failure> {
    match command {
        Deliveries::Counts => {
            let c = outbox.counts()?;
            println!(
                "new events {}  pending {} (claimed {})  delivered {}  dead {}  cancelled {}",
                c.new_events, c.pending, c.claimed, c.delivered, c.dead, c.cancelled
            );
        }
        Deliveries::List { state, limit } => {
            let list = outbox.deliveries(state, limit)?;
            if list.is_empty() {
                println!("no deliveries");
            }
            for d in list {
                println!(
                    "{}  {:9}  {:>2} attempt(s)  {}  {}  {}",
                    d.id,
                    d.state,
                    d.attempts,
                    d.last_status.map_or("-".into(), |s| s.to_string()),
                    d.event,
                    d.url
                );
            }
        }
        Deliveries::Show { id } => {
            let (d, attempts) = outbox.delivery(id)?.ok_or(format!("no delivery {id}"))?;
            println!(
                "delivery {}\nevent    {} ({})\nurl      {}\nstate    {}  attempts {}{}",
                d.id,
                d.event,
                d.event_id,
                d.url,
                d.state,
                d.attempts,
                if d.state == DeliveryState::Pending.as_str() {
                    format!("  next run {}", time(d.run_at))
                } else {
                    String::new()
                }
            );
            if let Some(w) = d.locked_by {
                println!("claimed by {w}");
            }
            for a in attempts {
                println!(
                    "  #{} {}  {}  {:.1} ms  {}  {}",
                    a.attempt,
                    time(a.started_at),
                    a.status.map_or("-".into(), |s| s.to_string()),
                    a.latency_us as f64 / 1000.0,
                    a.worker,
                    a.error.unwrap_or_default()
                );
                if let Some(body) = a.response.filter(|b| !b.is_empty()) {
                    println!("      response: {}", body.escape_debug());
                }
            }
        }
        Deliveries::Retry { id, again } => {
            let (d, _) = outbox.delivery(id)?.ok_or(format!("no delivery {id}"))?;
            if d.state == DeliveryState::Delivered.as_str() && !again {
                return Err(format!(
                    "delivery {id} was delivered already: pass --again to send it once more"
                )
                .into());
            }
            if outbox.retry_delivery(id)? {
                println!("delivery {id} is due now");
            } else {
                return Err(format!("no delivery {id} (or a worker holds it now)").into());
            }
        }
        Deliveries::Recover {
            subscription,
            since,
            until,
        } => {
            let from = parse_time("--since", &since)?;
            let until = until.map(|u| parse_time("--until", &u)).transpose()?;
            let ids = outbox.recover(subscription, from, until)?;
            println!(
                "{} due again",
                count(ids.len(), "dead delivery is", "dead deliveries are")
            );
            for id in ids {
                println!("{id}");
            }
        }
    }
    Ok(())
}

fn time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| micros.to_string())
}

fn worker<C: SqlConnection>(
    pool: Pool<ConnectionManager<C>>,
    args: WorkerArgs,
) -> Result<(), Failure> {
    let mut config = Config::from_env()?;
    config.outbox = true;
    if args.insecure_allow_any_recipient {
        tracing::warn!(
            "--insecure-allow-any-recipient: recipient URLs are NOT checked (SSRF protection off); \
             for one internal receiver use THORN_ALLOW_RECIPIENTS=host:port instead"
        );
        config.recipient_validators = Validators::new([ensure_protocol(["http", "https"])]);
    }
    let outbox = DieselOutbox::new(pool.clone()).disable_failing_after(
        (args.disable_after > 0).then(|| Duration::from_secs(args.disable_after)),
    );
    outbox.check_schema()?;
    let store = Arc::new(DieselStore::new(pool.clone()));
    let thorn = Thorn::builder(config).shared_store(store).build()?;
    let options = RelayOptions {
        worker: args
            .name
            .unwrap_or_else(thorn_core::integration::default_worker_name),
        concurrency: args.concurrency.max(1),
        lease: Duration::from_secs_f64(args.lease.max(0.1)),
        poll: Duration::from_secs_f64(args.poll.max(0.01)),
        disable_after: (args.disable_after > 0).then(|| Duration::from_secs(args.disable_after)),
        max_per_destination: args.max_per_destination,
        retention: args
            .retention
            .map(|r| parse_duration("--retention", &r))
            .transpose()?,
        retry: match args
            .retry_schedule
            .or_else(|| std::env::var("THORN_RETRY_SCHEDULE").ok())
        {
            Some(text) => Some(RetryPolicy::scheduled(
                thorn::retry::parse_schedule(&text)
                    .map_err(|e| format!("--retry-schedule / THORN_RETRY_SCHEDULE: {e}"))?,
                0.2,
            )),
            None => None,
        },
        ..RelayOptions::default()
    };
    options.check(thorn.config())?;
    let worker_name = options.worker.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let metrics_addr = args.metrics_addr;
    runtime.block_on(async move {
        if let Some(addr) = metrics_addr {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            tracing::info!(%addr, "Prometheus metrics at /metrics");
        }
        let wake = Arc::new(Notify::new());
        let listener = outbox.sql().database().listen(CHANNEL, waking(&wake));
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(RelayCounters::default());
        let relay = tokio::spawn(run_relay(
            thorn,
            Arc::new(outbox.sql().clone()),
            options,
            wake,
            stopped,
            counters.clone(),
        ));
        let progress = std::io::stderr()
            .is_terminal()
            .then(|| tokio::spawn(progress(counters.clone())));
        tracing::info!(worker = %worker_name, "thorn worker started");
        shutdown_signal().await;
        tracing::info!("stopping: no new claims; finishing deliveries in flight");
        let _ = stop.send(true);
        let result = relay.await;
        if let Some(p) = progress {
            p.abort();
        }
        drop(listener);
        let s = counters.snapshot();
        tracing::info!(
            delivered = s.delivered,
            retrying = s.retrying,
            dead = s.dead,
            "thorn worker stopped"
        );
        match result {
            Ok(r) => r.map_err(Failure::from),
            Err(e) => Err(e.into()),
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// One line per 10 s on a terminal: what happened in the interval.
async fn progress(counters: Arc<RelayCounters>) {
    let mut last = counters.snapshot();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = counters.snapshot();
        eprintln!(
            "thorn worker: +{} delivered, +{} retrying, +{} dead (total {} delivered)",
            now.delivered - last.delivered,
            now.retrying - last.retrying,
            now.dead - last.dead,
            now.delivered
        );
        last = now;
    }
}

/// `1 thing`, `2 things`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
