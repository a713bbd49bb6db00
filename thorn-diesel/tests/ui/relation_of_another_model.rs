use diesel::prelude::*;
use thorn::diesel::prelude::*;

diesel::table! {
    articles (id) {
        id -> Integer,
        state -> Text,
    }
}

diesel::table! {
    article_tags (article_id, tag_id) {
        article_id -> Integer,
        tag_id -> Integer,
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

#[derive(thorn::WebhookModel)]
#[webhook_model(on_tag(name = "note.tagged", dispatches_on = m2m_add(tags)))]
struct Note {
    id: i32,
}

// A relation belongs to its model.
fn main() {
    let thorn = thorn::Thorn::new(thorn::Config::default()).unwrap();
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let article = Article { id: 1, state: "DRAFT".into() };
    let _: Vec<i32> = diesel::insert_into(article_tags::table)
        .values((article_tags::article_id.eq(1), article_tags::tag_id.eq(2)))
        .returning(article_tags::tag_id)
        .with_webhooks(&thorn)
        .linking(&article, Note::TAGS)
        .get_results(&mut conn)
        .unwrap();
}
