use diesel::{ExpressionMethods, SelectableHelper};
use thorn::diesel::asynchronous::prelude::*;

diesel::table! {
    articles (id) {
        id -> Integer,
        state -> Text,
    }
}

#[derive(diesel::Queryable, diesel::Selectable, diesel::Identifiable, thorn::WebhookModel)]
#[diesel(table_name = articles)]
#[webhook_model(
    on_change = "article.changed",
    on_publish(name = "article.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")),
)]
struct Article {
    id: i32,
    state: String,
}

// On diesel-async too, a bulk update cannot load each row as it was.
async fn run(thorn: &thorn::Thorn, conn: &mut diesel_async::AsyncPgConnection) {
    let _: Vec<Article> = thorn::diesel::update(articles::table)
        .set(articles::state.eq("PUBLISHED"))
        .returning(<Article as SelectableHelper<diesel::pg::Pg>>::as_returning())
        .with_webhooks(thorn)
        .get_results(conn)
        .await
        .unwrap();
}

fn main() {}
