use thorn::WebhookModel;

#[derive(WebhookModel)]
#[webhook_model(on_publish(name = "article.published", dispatches_on = change,
                           filter = status.now_eq("PUBLISHED")))]
struct Article {
    state: String,
}

fn main() {}
