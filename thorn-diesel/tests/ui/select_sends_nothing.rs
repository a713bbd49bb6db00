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

// A SELECT writes nothing: it has no `with_webhooks`.
fn main() {
    let thorn = thorn::Thorn::new(thorn::Config::default()).unwrap();
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let _: Vec<Article> = articles::table
        .select(Article::as_select())
        .with_webhooks(&thorn)
        .get_results(&mut conn)
        .unwrap();
}
