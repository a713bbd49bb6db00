use thorn::WebhookModel;

#[derive(WebhookModel)]
#[webhook_model(on_popular(name = "article.popular", dispatches_on = change,
                           filter = views.now_gt("a thousand")))]
struct Article {
    views: i32,
}

fn main() {}
