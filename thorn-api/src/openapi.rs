//! The OpenAPI document, generated from the routes' `#[utoipa::path]`
//! attributes and the types of [`crate::types`], then fitted to one
//! [`Api`]: its prefix as the server, its event choices as the `event`
//! values, the routes without their trailing slash.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::Api;
use crate::{deliveries, subscriptions};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Thorn webhook subscriptions",
        description = "Subscribe URLs to events, manage the subscriptions, and see and replay their deliveries.",
        license(name = "BSD-3-Clause"),
    ),
    paths(
        subscriptions::list,
        subscriptions::create,
        subscriptions::show,
        subscriptions::update,
        subscriptions::update_by_post,
        subscriptions::remove,
        deliveries::list,
        deliveries::show,
        deliveries::redeliver,
        deliveries::recover,
        deliveries::test,
        deliveries::event_types,
    ),
    tags(
        (name = "subscriptions", description = "Who gets which events"),
        (name = "deliveries", description = "Each subscription's delivery log"),
    )
)]
struct Doc;

/// The request bodies that name subscription fields.
const REQUEST_SCHEMAS: [&str; 2] = ["SubscriptionChange", "NewSubscription"];

/// The document of `api`.
pub(crate) fn document(api: &Api) -> Value {
    let mut doc = serde_json::to_value(Doc::openapi()).expect("an OpenAPI document is JSON");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let prefix = &api.inner.prefix;
    doc["servers"] = json!([{
        "url": if prefix.is_empty() { "/" } else { prefix.as_str() },
        "description": "Where the application mounted this API",
    }]);
    let schemas = &mut doc["components"]["schemas"];
    // Subscribing is changing every field, with `event` and `url` required.
    let mut new = schemas["SubscriptionChange"].clone();
    new["required"] = json!(["event", "url"]);
    new["description"] = json!("A new subscription: `event` and `url` are required.");
    schemas["NewSubscription"] = new;
    let choices = api.thorn().config().event_choices.clone();
    for name in REQUEST_SCHEMAS {
        let schema = &mut schemas[name];
        // Unknown fields are refused (the read-only ones a subscription is
        // shown with are accepted, and not listed).
        schema["additionalProperties"] = json!(false);
        if let Some(choices) = &choices {
            schema["properties"]["event"]["enum"] = json!(choices);
        }
    }
    doc["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"] =
        json!({"$ref": "#/components/schemas/NewSubscription"});
    // Every route also answers without its trailing slash.
    if let Some(paths) = doc["paths"].as_object_mut() {
        let aliases: Vec<(String, Value)> = paths
            .iter()
            .filter(|(path, _)| path.len() > 1 && path.ends_with('/'))
            .map(|(path, item)| {
                let mut item = item.clone();
                if let Some(ops) = item.as_object_mut() {
                    for op in ops.values_mut() {
                        if let Some(id) = op["operationId"].as_str() {
                            op["operationId"] = json!(format!("{id}_no_slash"));
                        }
                    }
                }
                (path.trim_end_matches('/').to_owned(), item)
            })
            .collect();
        paths.extend(aliases);
    }
    doc
}

/// `GET {prefix}/openapi.json`.
pub(crate) async fn serve(doc: Arc<Value>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}
