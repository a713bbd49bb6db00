//! What the page shows: the layout, the subscriptions, one subscription
//! with its deliveries, one delivery with its attempts.

use axum::http::StatusCode;
use axum::response::Response;
use thorn_core::outbox::DeliveryState;
use thorn_core::{SenderId, Subscriber};
use uuid::Uuid;

use super::html::Html;
use crate::Api;
use crate::error::ApiError;
use crate::types::{Delivery, DeliveryDetail};

/// What a subscription's page was asked to show besides itself.
pub(crate) struct Shown {
    /// The action just done (`?done=`).
    pub(crate) done: Option<String>,
    /// Whether to show the secret (`?secret=show`).
    pub(crate) secret: bool,
    /// Whether this is an older page of deliveries (`?before=`).
    pub(crate) paged: bool,
}

/// The start of a page titled `title`, for `user` when signed in.
pub(crate) fn head(page: &mut Html, api: &Api, title: &str, user: Option<&SenderId>) {
    page.s("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .s("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .s("<title>")
        .t(title)
        .s(" · Webhooks</title><link rel=\"stylesheet\" href=\"")
        .t(api.page_path("/style.css"))
        .s("\"></head><body><header><h1><a href=\"")
        .t(api.page_path("/"))
        .s("\">Webhooks</a></h1>");
    if let Some(user) = user {
        page.s("<span>Signed in as <b id=\"user\">")
            .t(user)
            .s("</b></span>");
    }
    page.s("</header><main>");
}

/// The end of a page.
pub(crate) fn foot(page: &mut Html) {
    page.s("</main></body></html>\n");
}

/// `e`, with each field's messages.
pub(crate) fn error(page: &mut Html, e: &ApiError) {
    page.s("<div class=\"error\" role=\"alert\"><p>")
        .t(&e.body().detail)
        .s("</p>");
    if let Some(fields) = &e.body().fields {
        page.s("<ul>");
        for (field, messages) in fields {
            for message in messages {
                page.s("<li><b>").t(field).s("</b>: ").t(message).s("</li>");
            }
        }
        page.s("</ul>");
    }
    page.s("</div>");
}

/// The sentence for `?done=`; nothing for a value the page never sends.
fn notice(page: &mut Html, done: Option<&str>) {
    let said = match done {
        Some("subscribed") => "Subscribed.",
        Some("unsubscribed") => "Unsubscribed.",
        Some("paused") => "Paused: nothing is delivered until you resume it.",
        Some("resumed") => "Resumed.",
        Some("tested") => "A test event is on its way.",
        Some("redelivered") => "Sent again, with the same Hook-Delivery.",
        _ => return,
    };
    page.s("<p class=\"notice\" role=\"status\">")
        .t(said)
        .s("</p>");
}

/// A button posting the user's token to `action`.
fn button(page: &mut Html, action: &str, token: &str, label: &str, class: &str) {
    form_button(page, action, token, label, class, false);
}

/// A button on the list of subscriptions, which comes back to the list.
fn list_button(page: &mut Html, action: &str, token: &str, label: &str, class: &str) {
    form_button(page, action, token, label, class, true);
}

fn form_button(page: &mut Html, action: &str, token: &str, label: &str, class: &str, list: bool) {
    page.s("<form class=\"inline\" method=\"post\" action=\"")
        .t(action)
        .s("\"><input type=\"hidden\" name=\"csrf\" value=\"")
        .t(token)
        .s("\">");
    if list {
        page.s("<input type=\"hidden\" name=\"from\" value=\"list\">");
    }
    page.s("<button type=\"submit\" class=\"")
        .t(class)
        .s("\">")
        .t(label)
        .s("</button></form> ");
}

/// `2026-12-06T21:03:05.123456Z` as `2026-12-06 21:03:05`.
fn when(time: &str) -> String {
    time.get(..19).unwrap_or(time).replacen('T', " ", 1)
}

/// `active`, `paused` (by its owner), or `disabled: why` (by Thorn).
fn state_of(sub: &Subscriber) -> String {
    match (sub.disabled_reason.as_deref(), sub.is_active()) {
        (_, true) => "active".to_owned(),
        (None | Some(crate::subscriptions::PAUSED), false) => "paused".to_owned(),
        (Some(reason), false) => format!("disabled: {reason}"),
    }
}

fn state_name(d: &Delivery) -> &'static str {
    DeliveryState::from(d.state).as_str()
}

/// The user's subscriptions, the form to subscribe (again with `form`'s
/// values and `failed`'s messages when it was wrong).
pub(crate) async fn index(
    api: &Api,
    user: &SenderId,
    done: Option<&str>,
    failed: Option<&ApiError>,
    form: &[(String, String)],
) -> Response {
    let subs = match api.store().list(user).await {
        Ok(subs) => subs,
        Err(e) => return api.failed(Some(user), &ApiError::store(e)),
    };
    let token = api.token(user);
    let mut page = Html::default();
    head(&mut page, api, "Your webhooks", Some(user));
    notice(&mut page, done);
    page.s("<h2>Subscriptions</h2>");
    if subs.is_empty() {
        page.s("<p id=\"none\">No subscriptions yet.</p>");
    } else {
        page.s("<table id=\"subscriptions\"><thead><tr><th>Event</th><th>URL</th><th>State</th><th>Created</th><th></th></tr></thead><tbody>");
        for sub in &subs {
            let here = api.page_path(&format!("/{}/", sub.uuid));
            page.s("<tr id=\"sub-")
                .t(sub.uuid)
                .s("\"><td><a href=\"")
                .t(&here)
                .s("\">")
                .t(&sub.event)
                .s("</a></td><td class=\"url\">")
                .t(&sub.url)
                .s("</td><td class=\"state\">")
                .t(state_of(sub))
                .s("</td><td>")
                .t(when(&crate::timestamp(sub.created_at)))
                .s("</td><td>");
            if sub.is_active() {
                list_button(&mut page, &format!("{here}pause/"), &token, "Pause", "");
            } else {
                list_button(&mut page, &format!("{here}resume/"), &token, "Resume", "");
            }
            list_button(
                &mut page,
                &format!("{here}delete/"),
                &token,
                "Delete",
                "danger",
            );
            page.s("</td></tr>");
        }
        page.s("</tbody></table>");
    }
    subscribe_form(&mut page, api, &token, failed, form);
    foot(&mut page);
    let status = failed.map_or(StatusCode::OK, ApiError::status);
    page.answer(status)
}

fn subscribe_form(
    page: &mut Html,
    api: &Api,
    token: &str,
    failed: Option<&ApiError>,
    form: &[(String, String)],
) {
    let value = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    page.s("<h2>Subscribe</h2>");
    if let Some(e) = failed {
        error(page, e);
    }
    page.s("<form id=\"subscribe\" method=\"post\" action=\"")
        .t(api.page_path("/"))
        .s("\"><fieldset><input type=\"hidden\" name=\"csrf\" value=\"")
        .t(token)
        .s("\"><label>Event <input type=\"text\" name=\"event\" list=\"events\" required placeholder=\"article.* or article.created\" value=\"")
        .t(value("event"))
        .s("\"></label><datalist id=\"events\">");
    let mut names: Vec<String> = api.catalogue().into_iter().map(|t| t.name).collect();
    names.extend(api.thorn().config().event_choices.iter().flatten().cloned());
    names.sort();
    names.dedup();
    for name in names {
        page.s("<option value=\"").t(name).s("\">");
    }
    page.s("</datalist><label>URL <input type=\"url\" name=\"url\" required placeholder=\"https://example.com/hooks\" value=\"")
        .t(value("url"))
        .s("\"></label><label>Content type <select name=\"content_type\">");
    let chosen = |name: &str, label: &str, first: bool| {
        value(name) == label || (value(name).is_empty() && first)
    };
    for (i, label) in ["application/json", "application/x-www-form-urlencoded"]
        .into_iter()
        .enumerate()
    {
        option(page, label, chosen("content_type", label, i == 0));
    }
    page.s("</select></label><label>Signature <select name=\"hmac_digest\">");
    for (i, label) in ["sha256", "sha512", "sha1"].into_iter().enumerate() {
        option(page, label, chosen("hmac_digest", label, i == 0));
    }
    page.s("</select></label><label>Secret <input type=\"text\" name=\"hmac_secret\" autocomplete=\"off\" placeholder=\"leave empty for a random one\"></label>")
        .s("<button type=\"submit\">Subscribe</button></fieldset></form>");
}

fn option(page: &mut Html, value: &str, selected: bool) {
    page.s("<option value=\"").t(value).s("\"");
    if selected {
        page.s(" selected");
    }
    page.s(">").t(value).s("</option>");
}

/// One subscription and a page of its deliveries (or why there are none).
pub(crate) fn subscription(
    api: &Api,
    user: &SenderId,
    sub: &Subscriber,
    deliveries: Result<Vec<Delivery>, ApiError>,
    shown: &Shown,
) -> Response {
    let token = api.token(user);
    let here = api.page_path(&format!("/{}/", sub.uuid));
    let mut page = Html::default();
    head(&mut page, api, &sub.event, Some(user));
    notice(&mut page, shown.done.as_deref());
    page.s("<h2>")
        .t(&sub.event)
        .s("</h2><dl><dt>Id</dt><dd><code>")
        .t(sub.uuid)
        .s("</code></dd><dt>URL</dt><dd class=\"url\">")
        .t(&sub.url)
        .s("</dd><dt>State</dt><dd id=\"state\">")
        .t(state_of(sub))
        .s("</dd><dt>Content type</dt><dd>")
        .t(sub.content_type.as_str())
        .s("</dd><dt>Signature</dt><dd>HMAC-")
        .t(sub.hmac_digest.as_str())
        .s("</dd><dt>Secret</dt><dd>");
    if shown.secret {
        page.s("<code id=\"secret\">")
            .t(sub.hmac_secret.expose())
            .s("</code> <a href=\"")
            .t(&here)
            .s("\">Hide</a>");
    } else {
        page.s("<a id=\"show-secret\" href=\"")
            .t(&here)
            .s("?secret=show\">Show secret</a>");
    }
    page.s("</dd><dt>Created</dt><dd>")
        .t(when(&crate::timestamp(sub.created_at)))
        .s("</dd></dl><p>");
    if sub.is_active() {
        button(&mut page, &format!("{here}pause/"), &token, "Pause", "");
        if api.thorn().delivery_log().is_some() {
            button(
                &mut page,
                &format!("{here}test/"),
                &token,
                "Send a test event",
                "",
            );
        }
    } else {
        button(&mut page, &format!("{here}resume/"), &token, "Resume", "");
    }
    button(
        &mut page,
        &format!("{here}delete/"),
        &token,
        "Delete",
        "danger",
    );
    page.s("</p><h2>Recent deliveries</h2>");
    match deliveries {
        Err(e) => error(&mut page, &e),
        Ok(deliveries) if deliveries.is_empty() => {
            page.s("<p id=\"no-deliveries\">No deliveries yet.</p>");
        }
        Ok(deliveries) => {
            page.s("<table id=\"deliveries\"><thead><tr><th>Delivery</th><th>Event</th><th>State</th><th>Attempts</th><th>Last answer</th><th>Created</th><th></th></tr></thead><tbody>");
            for d in &deliveries {
                let at = format!("{here}deliveries/{}/", d.id);
                page.s("<tr class=\"delivery\" id=\"delivery-")
                    .t(d.id)
                    .s("\"><td><a href=\"")
                    .t(&at)
                    .s("\"><code>")
                    .t(d.id)
                    .s("</code></a></td><td>")
                    .t(&d.event)
                    .s("</td>");
                delivery_cells(&mut page, d);
                page.s("<td>").t(when(&d.created_at)).s("</td><td>");
                button(
                    &mut page,
                    &format!("{at}redeliver/"),
                    &token,
                    "Redeliver",
                    "",
                );
                page.s("</td></tr>");
            }
            page.s("</tbody></table>");
            if let Some(last) = deliveries
                .last()
                .filter(|_| deliveries.len() == super::RECENT)
            {
                page.s("<p><a id=\"older\" href=\"")
                    .t(&here)
                    .s("?before=")
                    .t(last.id)
                    .s("\">Older deliveries</a></p>");
            }
        }
    }
    if shown.paged {
        page.s("<p><a href=\"")
            .t(&here)
            .s("\">Newest deliveries</a></p>");
    }
    foot(&mut page);
    page.answer(StatusCode::OK)
}

/// A delivery's state, attempts and last answer, as table cells.
fn delivery_cells(page: &mut Html, d: &Delivery) {
    let state = state_name(d);
    page.s("<td class=\"state state-")
        .t(state)
        .s("\">")
        .t(state)
        .s("</td><td class=\"attempts\">")
        .t(d.attempts)
        .s("</td><td>");
    match (d.last_status, &d.last_error) {
        (Some(status), _) => {
            page.t(status);
        }
        (None, Some(error)) => {
            page.t(error);
        }
        (None, None) => {
            page.s("—");
        }
    }
    page.s("</td>");
}

/// One delivery and every attempt.
pub(crate) fn delivery(
    api: &Api,
    user: &SenderId,
    subscription: Uuid,
    detail: &DeliveryDetail,
    done: Option<&str>,
) -> Response {
    let d = &detail.delivery;
    let back = api.page_path(&format!("/{subscription}/"));
    let mut page = Html::default();
    head(&mut page, api, "Delivery", Some(user));
    notice(&mut page, done);
    page.s("<p><a href=\"").t(&back).s("\">← The subscription</a></p>")
        .s("<h2>Delivery <code>").t(d.id).s("</code></h2>")
        .s("<table id=\"delivery\"><thead><tr><th>Event</th><th>URL</th><th>State</th><th>Attempts</th><th>Last answer</th><th>Next attempt</th></tr></thead><tbody><tr><td>")
        .t(&d.event)
        .s("</td><td class=\"url\">")
        .t(&d.url)
        .s("</td>");
    delivery_cells(&mut page, d);
    page.s("<td>")
        .t(d.next_attempt_at
            .as_deref()
            .map(when)
            .unwrap_or_else(|| "—".into()))
        .s("</td></tr></tbody></table><p>");
    button(
        &mut page,
        &format!("{back}deliveries/{}/redeliver/", d.id),
        &api.token(user),
        "Redeliver",
        "",
    );
    page.s("</p><h2>Attempts</h2>");
    if detail.history.is_empty() {
        page.s("<p id=\"no-attempts\">Not attempted yet.</p>");
    } else {
        page.s("<table id=\"attempts\"><thead><tr><th>#</th><th>Started</th><th>Status</th><th>Latency</th><th>Error</th><th>Response</th></tr></thead><tbody>");
        for a in &detail.history {
            page.s("<tr class=\"attempt\"><td>")
                .t(a.attempt)
                .s("</td><td>")
                .t(when(&a.started_at))
                .s("</td><td class=\"status\">")
                .t(a.status.map_or_else(|| "—".to_owned(), |s| s.to_string()))
                .s("</td><td>")
                .t(format_args!("{:.1} ms", a.latency_ms))
                .s("</td><td>")
                .t(a.error.as_deref().unwrap_or(""))
                .s("</td><td><pre>")
                .t(a.response.as_deref().unwrap_or(""))
                .s("</pre></td></tr>");
        }
        page.s("</tbody></table>");
    }
    foot(&mut page);
    page.answer(StatusCode::OK)
}
