use thorn::WebhookModel;

#[derive(WebhookModel)]
#[webhook_model(reverse = "/article/{uuid}/", on_create = "article.{slug}")]
struct Article {
    id: i32,
}

fn main() {}
