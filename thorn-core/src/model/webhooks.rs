//! [`Webhooks`]: all events of one model, and what a write of its rows
//! sets off.

use std::fmt;

use serde_json::Value;

use super::{DispatchOn, ModelEvent};
use crate::dispatch::SendHandle;
use crate::transaction::{Raised, Route, Scope};
use crate::{Error, Result, Thorn};

/// One event a write set off: which one, and its handle (or why it could
/// not be sent).
#[derive(Debug)]
pub struct SentEvent<'a, M> {
    /// The event.
    pub event: &'a ModelEvent<M>,
    /// The dispatch handle, or the error that stopped sending.
    pub result: Result<SendHandle>,
}

/// All events of model `M`, as declared by `#[webhook_model(...)]`.
pub struct Webhooks<M> {
    model: &'static str,
    events: Vec<ModelEvent<M>>,
}

impl<M> fmt::Debug for Webhooks<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("model", &self.model)
            .field("events", &self.events)
            .finish()
    }
}

impl<M> Webhooks<M> {
    /// The events of the model named `model`.
    pub fn new(model: &'static str, events: Vec<ModelEvent<M>>) -> Self {
        Webhooks { model, events }
    }

    /// The model's name.
    pub fn model(&self) -> &'static str {
        self.model
    }

    /// Every event, in declaration order.
    pub fn events(&self) -> &[ModelEvent<M>] {
        &self.events
    }

    /// The event declared under `key` (`"on_create"`, `"on_publish"`).
    pub fn event(&self, key: &str) -> Option<&ModelEvent<M>> {
        self.events.iter().find(|e| e.key == key)
    }

    /// True when some event fires on `on` (lets integrations skip work).
    pub fn fires_on(&self, on: DispatchOn) -> bool {
        self.events.iter().any(|e| e.dispatches_on == on)
    }

    /// True when some event firing on `on` has a `now_` filter, so the
    /// integration must fetch the old row before writing.
    pub fn needs_old_row(&self, on: DispatchOn) -> bool {
        self.events
            .iter()
            .any(|e| e.dispatches_on == on && e.uses_transitions)
    }

    /// Sends every event that fires on `on` and whose filter passes for
    /// `new` (and `old`, on change). One entry per event sent: an event
    /// whose payload cannot be encoded does not stop the others.
    pub fn dispatch(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        new: &M,
        old: Option<&M>,
    ) -> Vec<SentEvent<'_, M>> {
        self.dispatch_with_context(thorn, on, new, old, None)
    }

    /// [`Webhooks::dispatch`] for a many-to-many change: `related` (the
    /// primary keys linked or unlinked) reaches subscriber callbacks as the
    /// context `{"relation": ..., "related": [...]}`.
    pub fn dispatch_m2m(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        instance: &M,
        related: &[Value],
    ) -> Vec<SentEvent<'_, M>> {
        let context = m2m_context(on, related);
        self.dispatch_with_context(thorn, on, instance, None, Some(context))
    }

    fn raise_rows<'r>(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
        context: Option<Value>,
        scope: Scope,
    ) -> Result<Raised>
    where
        M: 'r,
    {
        let mut raised = Raised::default();
        for (row, old) in rows {
            for event in self.firing(on, row, old) {
                let route = event.route(thorn);
                let placed = event.outgoing(thorn, row, context.clone()).and_then(|o| {
                    crate::transaction::place(thorn, self.model, route, scope, o, &mut raised)
                });
                match placed {
                    Ok(()) => {}
                    Err(
                        error @ (Error::UnmanagedTransaction { .. } | Error::Autocommit { .. }),
                    ) => {
                        return Err(error);
                    }
                    Err(error) if event.propagate_errors() => return Err(error),
                    Err(error) => {
                        tracing::error!(model = self.model, event = event.key(), %error, "webhook not sent");
                    }
                }
            }
        }
        Ok(raised)
    }

    /// The events that fire on `on` and whose filters pass for `new`
    /// (and `old`).
    fn firing<'s, 'r>(
        &'s self,
        on: DispatchOn,
        new: &'r M,
        old: Option<&'r M>,
    ) -> impl Iterator<Item = &'s ModelEvent<M>> + use<'s, 'r, M> {
        self.events
            .iter()
            .filter(move |e| e.dispatches_on == on && e.matches(new, old))
    }

    fn dispatch_with_context(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        new: &M,
        old: Option<&M>,
        context: Option<Value>,
    ) -> Vec<SentEvent<'_, M>> {
        self.firing(on, new, old)
            .map(|e| SentEvent {
                event: e,
                result: e.send_with_context(thorn, new, context.clone()),
            })
            .collect()
    }
}

/// What an ORM integration does with a model's events around a write:
/// check the write can carry them, raise them after it ran. Implemented
/// for every [`Webhooks`]; applications do not call it.
pub trait WebhooksExt<M> {
    /// Checks that `on` is a many-to-many change on a relation some event
    /// of the model declares; the error names the declared relations.
    fn check_m2m(&self, on: DispatchOn) -> Result<()>;
    /// Refuses, before the write runs, a write whose `on` events could not
    /// follow `scope` (see [`Scope`]): an event held until commit inside a
    /// transaction Thorn does not manage, or an outbox or
    /// `propagate_errors` event on a connection that commits on its own.
    /// Call it before running the statement, so an `Err` never leaves a
    /// row written without its events.
    fn admit(&self, thorn: &Thorn, on: DispatchOn, scope: Scope) -> Result<()>;
    /// True when an `on` event could make a write in `scope` fail after
    /// its statement ran — it propagates its errors, or its outbox row is
    /// written right after the statement — so the integration should run
    /// statement and events in a transaction (or savepoint) of their own
    /// for an `Err` to leave nothing behind. In a managed transaction,
    /// outbox rows wait for COMMIT and cannot fail the write.
    fn needs_transaction(&self, thorn: &Thorn, on: DispatchOn, scope: Scope) -> bool;
    /// Raises the events of `on` for each `(row, old row)`, after a write
    /// that ran in `scope`: each event that fires goes where its [`Route`]
    /// and the scope say — to the dispatcher now, into the managed
    /// transaction's frame, or into the returned [`Raised`] (outbox rows
    /// to write through the connection now, events to hand over once the
    /// write committed).
    ///
    /// An event that cannot be prepared (its payload does not encode, say)
    /// is logged and skipped, unless it has `propagate_errors`: then the
    /// error is returned, so the caller's transaction can roll back. An
    /// event the scope cannot carry is always an error.
    fn raise<'r>(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
        context: Option<Value>,
        scope: Scope,
    ) -> Result<Raised>
    where
        M: 'r;
    /// The context a many-to-many change gives subscriber callbacks:
    /// `{"relation": ..., "related": [...]}`.
    fn m2m_context(&self, on: DispatchOn, related: &[Value]) -> Value;
}

impl<M> WebhooksExt<M> for Webhooks<M> {
    fn check_m2m(&self, on: DispatchOn) -> Result<()> {
        let mut declared: Vec<&'static str> = self
            .events
            .iter()
            .filter_map(|e| e.dispatches_on.relation())
            .collect();
        declared.sort_unstable();
        declared.dedup();
        let Some(relation) = on.relation() else {
            return Err(Error::UnknownRelation {
                model: self.model,
                relation: format!("{on:?}"),
                declared,
            });
        };
        if declared.contains(&relation) {
            return Ok(());
        }
        Err(Error::UnknownRelation {
            model: self.model,
            relation: relation.to_owned(),
            declared,
        })
    }

    fn admit(&self, thorn: &Thorn, on: DispatchOn, scope: Scope) -> Result<()> {
        for event in self.events.iter().filter(|e| e.dispatches_on == on) {
            crate::transaction::admit(
                thorn,
                self.model,
                event.name(),
                event.route(thorn),
                event.propagate_errors,
                scope,
            )?;
        }
        Ok(())
    }

    fn needs_transaction(&self, thorn: &Thorn, on: DispatchOn, scope: Scope) -> bool {
        let writes_through = !matches!(scope, Scope::Managed(_));
        self.events.iter().any(|e| {
            e.dispatches_on == on
                && (e.propagate_errors || (writes_through && e.route(thorn) == Route::Outbox))
        })
    }

    fn raise<'r>(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
        context: Option<Value>,
        scope: Scope,
    ) -> Result<Raised>
    where
        M: 'r,
    {
        let raised = self.raise_rows(thorn, on, rows, context, scope);
        if let (Err(error), Scope::Managed(key)) = (&raised, scope) {
            // The statement ran: the transaction must not commit.
            thorn.frames().fail(key, error);
        }
        raised
    }

    fn m2m_context(&self, on: DispatchOn, related: &[Value]) -> Value {
        m2m_context(on, related)
    }
}

/// The context a many-to-many change gives subscriber callbacks:
/// `{"relation": ..., "related": [...]}`.
pub(crate) fn m2m_context(on: DispatchOn, related: &[Value]) -> Value {
    let relation = on.relation().unwrap_or_default();
    serde_json::json!({ "relation": relation, "related": related })
}
