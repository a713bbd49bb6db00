use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
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

// On diesel-async too, a SELECT writes nothing: it has no `with_webhooks`.
async fn run(thorn: &thorn::Thorn, conn: &mut diesel_async::AsyncPgConnection) {
    let _: Vec<Article> = articles::table
        .filter(articles::id.eq(1))
        .select(<Article as SelectableHelper<diesel::pg::Pg>>::as_select())
        .with_webhooks(thorn)
        .get_results(conn)
        .await
        .unwrap();
}

fn main() {}
