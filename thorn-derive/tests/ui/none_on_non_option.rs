use thorn::WebhookModel;

#[derive(WebhookModel)]
#[webhook_model(on_untitled(name = "article.untitled", dispatches_on = change,
                            filter = title.is(None)))]
struct Article {
    title: String,
}

fn main() {}
