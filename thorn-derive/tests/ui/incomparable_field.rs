use thorn::WebhookModel;

struct Money(i64);

#[derive(WebhookModel)]
#[webhook_model(on_rich(name = "account.rich", dispatches_on = change,
                        filter = balance.gt(Money(100))))]
struct Account {
    balance: Money,
}

fn main() {}
