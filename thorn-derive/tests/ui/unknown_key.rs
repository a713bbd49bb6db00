use thorn::WebhookModel;

#[derive(WebhookModel)]
#[webhook_model(on_create = "article.created", on_change(name = "article.changed", retries = 3))]
struct Article {
    id: i32,
}

fn main() {}
