use thorn::WebhookModel;

#[derive(WebhookModel)]
#[webhook_model(on_create = "article.created", on_publish(name = "article.published"))]
struct Article {
    state: String,
}

fn main() {}
