//! thorn-diesel's writes on SQLite and PostgreSQL: transitions compare
//! against the stored old row, fetched once and only when needed (counted
//! with Diesel's instrumentation); bulk statements send one event per row;
//! many-to-many helpers; composite, non-integer primary keys.

use std::sync::{Arc, Mutex};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use serde::Serialize;
use thorn::diesel::prelude::*;
use thorn::subscriber::MemoryStore;
use thorn::{Config, Subscriber, Thorn, WebhookModel};

use crate::engine::{WAIT, local_config};
use crate::receiver::{Received, Receiver};

diesel::table! {
    stories (id) {
        id -> Integer,
        title -> Text,
        state -> Text,
    }
}

diesel::table! {
    notes (id) {
        id -> Integer,
        body -> Text,
    }
}

diesel::table! {
    revisions (doc, version) {
        doc -> Text,
        version -> Integer,
        state -> Text,
    }
}

diesel::table! {
    story_tags (story_id, tag_id) {
        story_id -> Integer,
        tag_id -> Integer,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, WebhookModel, Serialize)]
#[diesel(table_name = stories)]
#[webhook_model(
    payload = Self::clone,
    on_create = "story.created",
    on_change = "story.changed",
    on_delete = "story.removed",
    on_publish(name = "story.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")),
    on_tagged(name = "story.tagged", dispatches_on = m2m_add(tags)),
    on_untagged(name = "story.untagged", dispatches_on = m2m_remove(tags)),
    on_tags_cleared(name = "story.tags_cleared", dispatches_on = m2m_clear(tags)),
)]
struct Story {
    id: i32,
    title: String,
    state: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, WebhookModel, Serialize)]
#[diesel(table_name = notes)]
#[webhook_model(payload = Self::clone, on_change = "note.changed")]
struct Note {
    id: i32,
    body: String,
}

#[derive(Debug, Clone, Queryable, Selectable, WebhookModel, Serialize)]
#[diesel(table_name = revisions, primary_key(doc, version))]
#[webhook_model(
    payload = Self::clone,
    on_approve(name = "revision.approved", dispatches_on = change,
               filter = state.now_eq("APPROVED")),
)]
struct Revision {
    doc: String,
    version: i32,
    state: String,
}

/// Every statement a connection runs, as SQL text.
#[derive(Clone, Default)]
struct Statements(Arc<Mutex<Vec<String>>>);

impl Statements {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }

    fn instrumentation(&self) -> impl Instrumentation {
        let log = self.0.clone();
        move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                log.lock().unwrap().push(query.to_string());
            }
        }
    }
}

fn thorn_for(receiver: &Receiver, config: Config) -> Thorn {
    let store = MemoryStore::new();
    store.add(Subscriber::new("*", &receiver.url).unwrap());
    Thorn::builder(config).store(store).build().unwrap()
}

fn events(received: &[Received]) -> Vec<String> {
    let mut e: Vec<String> = received
        .iter()
        .map(|r| r.header("hook-event").to_owned())
        .collect();
    e.sort();
    e
}

macro_rules! writes_suite {
    ($module:ident, $conn:ty, $pool:expr, $schema:expr) => {
        mod $module {
            use super::*;

            type Conn = $conn;

            fn setup() -> Option<(Box<dyn std::any::Any>, Pool<ConnectionManager<Conn>>)> {
                let (guard, pool) = $pool?;
                let mut conn = pool.get().unwrap();
                for sql in $schema {
                    diesel::sql_query(sql).execute(&mut *conn).unwrap();
                }
                Some((Box::new(guard), pool))
            }

            fn new_story(thorn: &Thorn, conn: &mut Conn, title: &str) -> Story {
                diesel::insert_into(stories::table)
                    .values((stories::title.eq(title), stories::state.eq("DRAFT")))
                    .returning(Story::as_returning())
                    .with_webhooks(thorn)
                    .get_result(conn)
                    .unwrap()
            }

            #[test]
            fn the_old_row_is_fetched_once_and_only_when_needed() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let thorn = thorn_for(&receiver, local_config());
                let mut conn = pool.get().unwrap();
                let story = new_story(&thorn, &mut conn, "Hello");
                let note: Note = diesel::insert_into(notes::table)
                    .values(notes::body.eq("n"))
                    .returning(Note::as_returning())
                    .get_result(&mut *conn)
                    .unwrap();
                receiver.expect(1, WAIT);
                let statements = Statements::default();
                conn.set_instrumentation(statements.instrumentation());

                // `story` is stale on purpose (state DRAFT): the filter must
                // read the stored row, not the caller's copy.
                diesel::update(&story)
                    .set(stories::state.eq("REVIEW"))
                    .execute(&mut *conn)
                    .unwrap();
                statements.take();
                let published: Story = thorn::diesel::update(&story)
                    .set(stories::state.eq("PUBLISHED"))
                    .returning(Story::as_returning())
                    .with_webhooks(&thorn)
                    .get_result(&mut *conn)
                    .unwrap();
                assert_eq!(published.state, "PUBLISHED");
                let sql = statements.take();
                let selects: Vec<&String> = sql
                    .iter()
                    .filter(|s| {
                        s.trim_start().to_uppercase().starts_with("SELECT") && s.contains("stories")
                    })
                    .collect();
                assert_eq!(selects.len(), 1, "one fetch of the old row: {sql:#?}");
                if $crate::db::is_postgres::<Conn>() {
                    assert!(
                        selects[0].contains("FOR UPDATE"),
                        "locked on PostgreSQL: {}",
                        selects[0]
                    );
                }
                assert_eq!(
                    events(&receiver.expect(2, WAIT)),
                    ["story.changed", "story.published"]
                );

                // Already PUBLISHED in the database, though the caller's copy
                // still says DRAFT: a change, not a publication.
                let _: Story = thorn::diesel::update(&story)
                    .set(stories::title.eq("Hello again"))
                    .returning(Story::as_returning())
                    .with_webhooks(&thorn)
                    .get_result(&mut *conn)
                    .unwrap();
                assert_eq!(events(&receiver.expect(1, WAIT)), ["story.changed"]);
                statements.take();

                // No `now_` filter: no extra query, exactly what Diesel runs.
                let _: Note = thorn::diesel::update(&note)
                    .set(notes::body.eq("m"))
                    .returning(Note::as_returning())
                    .with_webhooks(&thorn)
                    .get_result(&mut *conn)
                    .unwrap();
                let sql = statements.take();
                assert_eq!(sql.len(), 1, "only the UPDATE: {sql:#?}");
                assert!(sql[0].to_uppercase().starts_with("UPDATE"), "{sql:#?}");
                receiver.expect(1, WAIT);

                // A target matching several rows of a model with
                // transitions is refused before the UPDATE runs.
                new_story(&thorn, &mut conn, "Second");
                receiver.expect(1, WAIT);
                statements.take();
                let err = thorn::diesel::update(stories::table)
                    .set(stories::title.eq("x"))
                    .returning(Story::as_returning())
                    .with_webhooks(&thorn)
                    .get_result::<Story, _>(&mut *conn)
                    .unwrap_err();
                assert!(
                    matches!(
                        err,
                        thorn::diesel::Error::Thorn(thorn::Error::BulkTransitions {
                            model: "Story",
                            ..
                        })
                    ),
                    "{err:?}"
                );
                assert!(err.to_string().contains("more than one row"), "{err}");
                let sql = statements.take();
                assert!(
                    !sql.iter().any(|s| s.to_uppercase().starts_with("UPDATE")),
                    "no UPDATE ran: {sql:#?}"
                );
                let titles: Vec<String> = stories::table
                    .select(stories::title)
                    .order(stories::id)
                    .load(&mut *conn)
                    .unwrap();
                assert_eq!(titles, ["Hello again", "Second"]);
                let _ = published;
            }

            #[test]
            fn composite_text_keys_are_fetched_by_the_whole_key() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let thorn = thorn_for(&receiver, local_config());
                let mut conn = pool.get().unwrap();
                for (doc, version) in [
                    ("a5f0c3e2-0000-4000-8000-000000000001", 1),
                    ("a5f0c3e2-0000-4000-8000-000000000001", 2),
                ] {
                    diesel::insert_into(revisions::table)
                        .values((
                            revisions::doc.eq(doc),
                            revisions::version.eq(version),
                            revisions::state.eq("DRAFT"),
                        ))
                        .execute(&mut *conn)
                        .unwrap();
                }
                let v2 = Revision {
                    doc: "a5f0c3e2-0000-4000-8000-000000000001".into(),
                    version: 2,
                    state: "DRAFT".into(),
                };
                let target = || revisions::table.find((v2.doc.clone(), v2.version));
                let _: Revision = thorn::diesel::update(target())
                    .set(revisions::state.eq("APPROVED"))
                    .returning(Revision::as_returning())
                    .with_webhooks(&thorn)
                    .get_result(&mut *conn)
                    .unwrap();
                let got = receiver.expect(1, WAIT);
                assert_eq!(got[0].header("hook-event"), "revision.approved");
                assert_eq!(got[0].json()["data"]["version"], 2);
                // Approving again is no transition.
                let _: Revision = thorn::diesel::update(target())
                    .set(revisions::state.eq("APPROVED"))
                    .returning(Revision::as_returning())
                    .with_webhooks(&thorn)
                    .get_result(&mut *conn)
                    .unwrap();
                receiver.expect_none(std::time::Duration::from_millis(300));
            }

            #[test]
            fn bulk_statements_send_one_event_per_row() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let thorn = thorn_for(&receiver, local_config());
                let mut conn = pool.get().unwrap();
                for t in ["a", "b", "c"] {
                    new_story(&thorn, &mut conn, t);
                }
                assert_eq!(events(&receiver.expect(3, WAIT)), ["story.created"; 3]);

                // (A bulk update of Story, which has `now_` filters, does
                // not compile: see the BulkChange doc test.)
                let notes: Vec<Note> = diesel::insert_into(notes::table)
                    .values(&vec![
                        notes::body.eq("x"),
                        notes::body.eq("y"),
                        notes::body.eq("z"),
                    ])
                    .returning(Note::as_returning())
                    .with_webhooks(&thorn)
                    .get_results(&mut *conn)
                    .unwrap();
                assert_eq!(notes.len(), 3);
                let changed: Vec<Note> = diesel::update(notes::table.filter(notes::body.ne("z")))
                    .set(notes::body.eq("w"))
                    .returning(Note::as_returning())
                    .with_webhooks(&thorn)
                    .get_results(&mut *conn)
                    .unwrap();
                assert_eq!(changed.len(), 2);
                assert_eq!(events(&receiver.expect(2, WAIT)), ["note.changed"; 2]);

                let removed: Vec<Story> =
                    diesel::delete(stories::table.filter(stories::title.ne("a")))
                        .returning(Story::as_returning())
                        .with_webhooks(&thorn)
                        .get_results(&mut *conn)
                        .unwrap();
                assert_eq!(removed.len(), 2);
                let got = receiver.expect(2, WAIT);
                assert_eq!(events(&got), ["story.removed"; 2]);
                let mut gone: Vec<String> = got
                    .iter()
                    .map(|r| r.json()["data"]["title"].as_str().unwrap().to_owned())
                    .collect();
                gone.sort();
                assert_eq!(gone, ["b", "c"], "delete events carry the full rows");
            }

            #[test]
            fn many_to_many_links_send_their_events() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let thorn = thorn_for(&receiver, local_config());
                let mut conn = pool.get().unwrap();
                let story = new_story(&thorn, &mut conn, "Tagged");
                receiver.expect(1, WAIT);

                let links: Vec<_> = [3, 4, 5]
                    .iter()
                    .map(|t| (story_tags::story_id.eq(story.id), story_tags::tag_id.eq(*t)))
                    .collect();
                let added: Vec<i32> = diesel::insert_into(story_tags::table)
                    .values(&links)
                    .returning(story_tags::tag_id)
                    .with_webhooks(&thorn)
                    .linking(&story, Story::TAGS)
                    .get_results(&mut *conn)
                    .unwrap();
                assert_eq!(added.len(), 3);
                let got = receiver.expect(1, WAIT);
                // A related key that cannot be encoded is an error, and the
                // links written with it are rolled back.
                #[derive(Debug)]
                struct Unencodable;
                impl serde::Serialize for Unencodable {
                    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                        Err(serde::ser::Error::custom("not a key"))
                    }
                }
                let err = thorn::diesel::m2m_changed(
                    &thorn,
                    &mut *conn,
                    &story,
                    Story::TAGS.added(),
                    |conn| {
                        diesel::insert_into(story_tags::table)
                            .values((story_tags::story_id.eq(story.id), story_tags::tag_id.eq(99)))
                            .execute(conn)?;
                        Ok(vec![Unencodable])
                    },
                )
                .unwrap_err();
                assert!(
                    matches!(
                        err,
                        thorn::diesel::Error::Thorn(thorn::Error::Encode { .. })
                    ),
                    "{err:?}"
                );
                let left: i64 = story_tags::table
                    .filter(story_tags::tag_id.eq(99))
                    .count()
                    .get_result(&mut *conn)
                    .unwrap();
                assert_eq!(left, 0, "the failed change's links were rolled back");
                assert_eq!(got[0].header("hook-event"), "story.tagged");
                assert_eq!(got[0].json()["data"]["title"], "Tagged");

                let removed: Vec<i32> =
                    diesel::delete(story_tags::table.filter(story_tags::tag_id.eq(4)))
                        .returning(story_tags::tag_id)
                        .with_webhooks(&thorn)
                        .unlinking(&story, Story::TAGS)
                        .get_results(&mut *conn)
                        .unwrap();
                assert_eq!(removed, [4]);
                assert_eq!(events(&receiver.expect(1, WAIT)), ["story.untagged"]);

                // Removing what is not linked sends nothing.
                let none: Vec<i32> =
                    diesel::delete(story_tags::table.filter(story_tags::tag_id.eq(99)))
                        .returning(story_tags::tag_id)
                        .with_webhooks(&thorn)
                        .unlinking(&story, Story::TAGS)
                        .get_results(&mut *conn)
                        .unwrap();
                assert!(none.is_empty());
                receiver.expect_none(std::time::Duration::from_millis(200));

                let cleared: Vec<i32> =
                    diesel::delete(story_tags::table.filter(story_tags::story_id.eq(story.id)))
                        .returning(story_tags::tag_id)
                        .with_webhooks(&thorn)
                        .clearing(&story, Story::TAGS)
                        .get_results(&mut *conn)
                        .unwrap();
                assert_eq!(cleared.len(), 2);
                assert_eq!(events(&receiver.expect(1, WAIT)), ["story.tags_cleared"]);

                let linked: i64 = story_tags::table.count().get_result(&mut *conn).unwrap();
                assert_eq!(linked, 0);
            }
        }
    };
}

writes_suite!(
    sqlite,
    diesel::SqliteConnection,
    Some(crate::db::sqlite_pool()),
    [
        "CREATE TABLE stories (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, state TEXT NOT NULL)",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
        "CREATE TABLE revisions (doc TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, PRIMARY KEY (doc, version))",
        "CREATE TABLE story_tags (story_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, PRIMARY KEY (story_id, tag_id))",
    ]
);

const PG_SCHEMA: [&str; 4] = [
    "CREATE TABLE stories (id SERIAL PRIMARY KEY, title TEXT NOT NULL, state TEXT NOT NULL)",
    "CREATE TABLE notes (id SERIAL PRIMARY KEY, body TEXT NOT NULL)",
    "CREATE TABLE revisions (doc TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, PRIMARY KEY (doc, version))",
    "CREATE TABLE story_tags (story_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, PRIMARY KEY (story_id, tag_id))",
];

writes_suite!(
    postgres,
    diesel::PgConnection,
    crate::db::pg_pool(),
    PG_SCHEMA
);

/// PostgreSQL only: Diesel cannot return rows from a batch insert on
/// SQLite (insert per row there).
#[test]
fn postgres_bulk_inserts_write_one_outbox_event_per_row() {
    let Some((_guard, pool)) = crate::db::pg_pool() else {
        return;
    };
    for sql in PG_SCHEMA {
        diesel::sql_query(sql)
            .execute(&mut *pool.get().unwrap())
            .unwrap();
    }
    thorn::diesel::migrate(&mut *pool.get().unwrap()).unwrap();
    let receiver = Receiver::start();
    let thorn = thorn_for(
        &receiver,
        Config {
            outbox: true,
            ..local_config()
        },
    );
    let mut conn = pool.get().unwrap();
    let rows: Vec<_> = (0..250)
        .map(|i| {
            (
                stories::title.eq(format!("t{i}")),
                stories::state.eq("DRAFT"),
            )
        })
        .collect();
    let _ = conn.transaction::<(), diesel::result::Error, _>(|conn| {
        diesel::insert_into(stories::table)
            .values(&rows)
            .returning(Story::as_returning())
            .with_webhooks(&thorn)
            .get_results::<Story, _>(conn)?;
        Err(diesel::result::Error::RollbackTransaction)
    });
    let count = || -> i64 {
        thorn::diesel::outbox::thorn_events::table
            .count()
            .get_result(&mut *pool.get().unwrap())
            .unwrap()
    };
    assert_eq!(count(), 0, "rolled back with the rows");
    diesel::insert_into(stories::table)
        .values(&rows)
        .returning(Story::as_returning())
        .with_webhooks(&thorn)
        .get_results::<Story, _>(&mut *conn)
        .unwrap();
    assert_eq!(count(), 250);
}
