use diesel::prelude::*;
use thorn::diesel::prelude::*;

diesel::table! {
    articles (id) {
        id -> Integer,
        state -> Text,
    }
}

#[derive(Queryable, Selectable, Identifiable, thorn::WebhookModel)]
#[diesel(table_name = articles)]
#[webhook_model(
    on_change = "article.changed",
    on_publish(name = "article.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")),
    on_tag(name = "article.tagged", dispatches_on = m2m_add(tags)),
)]
struct Article {
    id: i32,
    state: String,
}

// Diesel's own update does not keep its target, so Thorn cannot load the old row.
fn main() {
    let thorn = thorn::Thorn::new(thorn::Config::default()).unwrap();
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let article = Article { id: 1, state: "DRAFT".into() };
    let _: Article = diesel::update(&article)
        .set(articles::state.eq("PUBLISHED"))
        // (The backend named, so the message is the same with or without `postgres`.)
        .returning(<Article as SelectableHelper<diesel::sqlite::Sqlite>>::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)
        .unwrap();
}
