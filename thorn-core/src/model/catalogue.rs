//! The events a model declares, as the REST API's catalogue lists them.

use super::{DispatchOn, WebhookModel};
use crate::app::EventType;

impl EventType {
    /// Every event model `M` declares in its `#[webhook_model(...)]`
    /// block, for [`ThornBuilder::event_types`](crate::ThornBuilder::event_types).
    ///
    /// ```
    /// use thorn_core::model::EventType;
    /// use thorn_core::{DispatchOn, ModelEvent, WebhookModel, Webhooks};
    ///
    /// struct Article;
    /// impl WebhookModel for Article {
    ///     fn webhooks() -> &'static Webhooks<Self> {
    ///         static W: std::sync::OnceLock<Webhooks<Article>> = std::sync::OnceLock::new();
    ///         W.get_or_init(|| {
    ///             Webhooks::new("Article", vec![
    ///                 ModelEvent::new("on_create", "article.created", DispatchOn::Create),
    ///             ])
    ///         })
    ///     }
    /// }
    /// let types = EventType::of_model::<Article>();
    /// assert_eq!(types[0].name, "article.created");
    /// assert_eq!(types[0].model.as_deref(), Some("Article"));
    /// assert_eq!(types[0].fires_on, "create");
    /// ```
    pub fn of_model<M: WebhookModel>() -> Vec<EventType> {
        let webhooks = M::webhooks();
        webhooks
            .events()
            .iter()
            .map(|event| EventType {
                name: event.name().to_owned(),
                model: Some(webhooks.model().to_owned()),
                fires_on: fires_on(event.dispatches_on()),
            })
            .collect()
    }
}

/// How `#[webhook_model(...)]` spells `on`.
fn fires_on(on: DispatchOn) -> String {
    match on {
        DispatchOn::Create => "create".into(),
        DispatchOn::Change => "change".into(),
        DispatchOn::Delete => "delete".into(),
        DispatchOn::M2mAdd(r) => format!("m2m_add({r})"),
        DispatchOn::M2mRemove(r) => format!("m2m_remove({r})"),
        DispatchOn::M2mClear(r) => format!("m2m_clear({r})"),
    }
}
