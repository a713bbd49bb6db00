use thorn::WebhookModel;

#[derive(WebhookModel)]
#[webhook_model(on_big(name = "article.big", dispatches_on = change, filter = views + 1))]
struct Article {
    views: i32,
}

fn main() {}
