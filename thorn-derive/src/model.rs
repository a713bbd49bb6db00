//! The attribute block checked against the struct: every field name,
//! template and dispatch rule is validated here, with errors on the
//! offending tokens.

use syn::{ExprPath, Ident, LitStr};

use crate::attr::{Attrs, EventDecl, On, Reverse};
use crate::ctxt::Ctxt;
use crate::filter::{CompiledFilter, compile};

/// A `{field}` template turned into a `format!` string and its arguments.
pub(crate) struct Template {
    pub(crate) format: String,
    pub(crate) args: Vec<Ident>,
    pub(crate) lit: LitStr,
}

pub(crate) enum CheckedReverse {
    Template(Template),
    Func(ExprPath),
}

pub(crate) struct CheckedEvent {
    pub(crate) key: Ident,
    pub(crate) name: LitStr,
    pub(crate) name_template: Option<Template>,
    pub(crate) on: On,
    pub(crate) reverse: Option<CheckedReverse>,
    pub(crate) sender_field: Option<Ident>,
    pub(crate) payload: Option<ExprPath>,
    pub(crate) headers: Option<ExprPath>,
    pub(crate) timeout: Option<f64>,
    pub(crate) filter: Option<CompiledFilter>,
    pub(crate) retry: Option<bool>,
    pub(crate) retry_max: Option<u32>,
    pub(crate) retry_delay: Option<f64>,
    pub(crate) propagate_errors: Option<bool>,
    pub(crate) honors_transaction: Option<bool>,
    pub(crate) keepalive: Option<bool>,
}

pub(crate) struct Model {
    pub(crate) reverse: Option<CheckedReverse>,
    pub(crate) sender_field: Option<Ident>,
    pub(crate) payload: Option<ExprPath>,
    pub(crate) headers: Option<ExprPath>,
    pub(crate) events: Vec<CheckedEvent>,
}

pub(crate) struct Fields<'a> {
    model: &'a Ident,
    names: &'a [Ident],
}

impl Fields<'_> {
    fn has(&self, name: &str) -> bool {
        self.names.iter().any(|f| f == name)
    }

    fn list(&self) -> String {
        let names: Vec<String> = self.names.iter().map(|f| format!("`{f}`")).collect();
        names.join(", ")
    }

    pub(crate) fn check_ident(&self, ctxt: &Ctxt, field: &Ident, role: &str) -> bool {
        if self.has(&field.to_string()) {
            return true;
        }
        ctxt.error_spanned(
            field,
            format!(
                "unknown field `{field}` in {role}: `{}` has fields {}",
                self.model,
                self.list()
            ),
        );
        false
    }

    /// Parses `"/article/{uuid}/"`. `{.field}` (Thorn's spelling) is accepted too.
    fn template(&self, ctxt: &Ctxt, lit: &LitStr, role: &str) -> Option<Template> {
        let text = lit.value();
        let mut format = String::with_capacity(text.len());
        let mut args = Vec::new();
        let mut chars = text.chars().peekable();
        let mut ok = true;
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    format.push_str("{{");
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    format.push_str("}}");
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    let name = name.trim().trim_start_matches('.').to_owned();
                    if !closed {
                        ctxt.error_spanned(lit, format!("unclosed `{{` in {role} \"{text}\""));
                        return None;
                    }
                    if name.is_empty() {
                        ctxt.error_spanned(
                            lit,
                            format!("empty `{{}}` in {role}: name a field, e.g. {{id}}"),
                        );
                        ok = false;
                        continue;
                    }
                    if !self.has(&name) {
                        ctxt.error_spanned(
                            lit,
                            format!(
                                "unknown field `{name}` in {role} \"{text}\": `{}` has fields {}",
                                self.model,
                                self.list()
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    format.push_str("{}");
                    args.push(Ident::new(&name, lit.span()));
                }
                '}' => {
                    ctxt.error_spanned(
                        lit,
                        format!("unmatched `}}` in {role} \"{text}\" (write `}}}}`)"),
                    );
                    ok = false;
                }
                c => format.push(c),
            }
        }
        ok.then(|| Template {
            format,
            args,
            lit: lit.clone(),
        })
    }

    fn reverse(&self, ctxt: &Ctxt, r: Reverse) -> Option<CheckedReverse> {
        match r {
            Reverse::Template(lit) => self
                .template(ctxt, &lit, "reverse")
                .map(CheckedReverse::Template),
            Reverse::Func(path) => Some(CheckedReverse::Func(path)),
        }
    }
}

fn implied_on(key: &Ident) -> Option<On> {
    match key.to_string().as_str() {
        "on_create" => Some(On::Create),
        "on_change" => Some(On::Change),
        "on_delete" => Some(On::Delete),
        _ => None,
    }
}

fn positive_seconds(ctxt: &Ctxt, v: Option<(f64, proc_macro2::Span)>, what: &str) -> Option<f64> {
    let (secs, span) = v?;
    if !(secs.is_finite() && secs > 0.0) {
        ctxt.push(syn::Error::new(
            span,
            format!("{what} must be a positive number of seconds"),
        ));
    }
    Some(secs)
}

fn check_event(ctxt: &Ctxt, fields: &Fields<'_>, decl: EventDecl) -> Option<CheckedEvent> {
    let key = decl.key;
    let on = match (implied_on(&key), decl.dispatches_on) {
        (Some(implied), Some((ident, given))) if !implied.same_as(&given) => {
            ctxt.error_spanned(
                &ident,
                format!("`{key}` always dispatches on {}", implied.describe()),
            );
            None
        }
        (Some(implied), _) => Some(implied),
        (None, Some((_, given))) => Some(given),
        (None, None) => {
            ctxt.error_spanned(
                &key,
                format!(
                    "custom event `{key}` must say when it dispatches: add `dispatches_on = create`, \
                     `change`, `delete`, `m2m_add(relation)`, `m2m_remove(relation)` or `m2m_clear(relation)`"
                ),
            );
            None
        }
    };
    let Some(name) = decl.name else {
        ctxt.error_spanned(
            &key,
            format!("event `{key}` needs a name: `{key}(name = \"model.event\", ...)`"),
        );
        return None;
    };
    if name.value().trim().is_empty() {
        ctxt.error_spanned(&name, "event names cannot be empty");
    }
    let name_template = if name.value().contains(['{', '}']) {
        Some(fields.template(ctxt, &name, "event name")?)
    } else {
        None
    };
    let reverse = decl.reverse.and_then(|r| fields.reverse(ctxt, r));
    let sender_field = decl
        .sender_field
        .filter(|f| fields.check_ident(ctxt, f, "sender_field"));
    let filter = if decl.filters.is_empty() {
        None
    } else {
        Some(compile(ctxt, fields, &decl.filters)?)
    };
    let timeout = positive_seconds(ctxt, decl.timeout, "timeout");
    let retry_delay = positive_seconds(ctxt, decl.retry_delay, "retry_delay");
    Some(CheckedEvent {
        key,
        name,
        name_template,
        on: on?,
        reverse,
        sender_field,
        payload: decl.payload,
        headers: decl.headers,
        timeout,
        filter,
        retry: decl.retry,
        retry_max: decl.retry_max,
        retry_delay,
        propagate_errors: decl.propagate_errors,
        honors_transaction: decl.honors_transaction,
        keepalive: decl.keepalive,
    })
}

impl Model {
    pub(crate) fn check(
        ctxt: &Ctxt,
        model: &Ident,
        field_names: &[Ident],
        attrs: Attrs,
    ) -> Option<Model> {
        let fields = Fields {
            model,
            names: field_names,
        };
        let reverse = attrs.reverse.and_then(|r| fields.reverse(ctxt, r));
        let sender_field = attrs
            .sender_field
            .filter(|f| fields.check_ident(ctxt, f, "sender_field"));
        let events: Vec<CheckedEvent> = attrs
            .events
            .into_iter()
            .filter_map(|decl| check_event(ctxt, &fields, decl))
            .collect();
        Some(Model {
            reverse,
            sender_field,
            payload: attrs.payload,
            headers: attrs.headers,
            events,
        })
    }
}
