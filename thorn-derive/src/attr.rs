//! Parsing of the `#[webhook_model(...)]` attribute block into plain data.
//! Nothing is checked against the struct here; see `model.rs`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::ParseStream;
use syn::{Expr, ExprPath, Ident, LitBool, LitFloat, LitInt, LitStr, Token, parenthesized};

use crate::ctxt::Ctxt;

/// How `ref` is computed: a URL template or a function of the instance.
pub(crate) enum Reverse {
    Template(LitStr),
    Func(ExprPath),
}

/// When an event fires.
#[derive(Clone)]
pub(crate) enum On {
    Create,
    Change,
    Delete,
    M2mAdd(Ident),
    M2mRemove(Ident),
    M2mClear(Ident),
}

impl On {
    pub(crate) fn describe(&self) -> String {
        match self {
            On::Create => "create".into(),
            On::Change => "change".into(),
            On::Delete => "delete".into(),
            On::M2mAdd(r) => format!("m2m_add({r})"),
            On::M2mRemove(r) => format!("m2m_remove({r})"),
            On::M2mClear(r) => format!("m2m_clear({r})"),
        }
    }

    pub(crate) fn same_as(&self, other: &On) -> bool {
        self.describe() == other.describe()
    }
}

/// One `on_<name>` entry.
pub(crate) struct EventDecl {
    pub(crate) key: Ident,
    pub(crate) name: Option<LitStr>,
    pub(crate) dispatches_on: Option<(Ident, On)>,
    pub(crate) reverse: Option<Reverse>,
    pub(crate) sender_field: Option<Ident>,
    pub(crate) payload: Option<ExprPath>,
    pub(crate) headers: Option<ExprPath>,
    pub(crate) timeout: Option<(f64, Span)>,
    pub(crate) filters: Vec<Expr>,
    pub(crate) retry: Option<bool>,
    pub(crate) retry_max: Option<u32>,
    pub(crate) retry_delay: Option<(f64, Span)>,
    pub(crate) propagate_errors: Option<bool>,
    pub(crate) honors_transaction: Option<bool>,
    pub(crate) keepalive: Option<bool>,
}

/// The whole attribute block.
#[derive(Default)]
pub(crate) struct Attrs {
    pub(crate) sender_field: Option<Ident>,
    pub(crate) reverse: Option<Reverse>,
    pub(crate) payload: Option<ExprPath>,
    pub(crate) headers: Option<ExprPath>,
    pub(crate) events: Vec<EventDecl>,
}

const MODEL_KEYS: &str = "`sender_field`, `reverse`, `payload`, `headers`, or an event `on_<name>`";
const EVENT_KEYS: &str = "`name`, `dispatches_on`, `filter`, `reverse`, `sender_field`, `payload`, \
     `headers`, `timeout`, `retry`, `retry_max`, `retry_delay`, `propagate_errors`, \
     `honors_transaction`, `keepalive`";

fn set_once<T>(ctxt: &Ctxt, slot: &mut Option<T>, key: &Ident, value: T) {
    if slot.is_some() {
        ctxt.error_spanned(
            key,
            format!("duplicate `{key}`: it is already set in this block"),
        );
    } else {
        *slot = Some(value);
    }
}

fn parse_reverse(input: ParseStream) -> syn::Result<Reverse> {
    if input.peek(LitStr) {
        Ok(Reverse::Template(input.parse()?))
    } else {
        Ok(Reverse::Func(input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected a URL template like \"/article/{uuid}/\" or a function path like Self::url",
            )
        })?))
    }
}

fn parse_seconds(input: ParseStream, what: &str) -> syn::Result<(f64, Span)> {
    let lookahead = input.lookahead1();
    if lookahead.peek(LitFloat) {
        let lit: LitFloat = input.parse()?;
        Ok((lit.base10_parse()?, lit.span()))
    } else if lookahead.peek(LitInt) {
        let lit: LitInt = input.parse()?;
        Ok((lit.base10_parse::<u64>()? as f64, lit.span()))
    } else {
        Err(syn::Error::new(
            input.span(),
            format!("expected {what} in seconds, e.g. `5` or `1.5`"),
        ))
    }
}

fn parse_bool(input: ParseStream, key: &Ident) -> syn::Result<bool> {
    let lit: LitBool = input.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected `{key} = true` or `{key} = false`"),
        )
    })?;
    Ok(lit.value)
}

fn parse_on(input: ParseStream) -> syn::Result<(Ident, On)> {
    let ident: Ident = input.call(Ident::parse_any)?;
    let relation = |input: ParseStream| -> syn::Result<Ident> {
        if !input.peek(syn::token::Paren) {
            return Err(syn::Error::new(
                ident.span(),
                format!("`{ident}` needs the relation: `{ident}(tags)`"),
            ));
        }
        let content;
        parenthesized!(content in input);
        content.call(Ident::parse_any)
    };
    let on = match ident.to_string().as_str() {
        "create" => On::Create,
        "change" => On::Change,
        "delete" => On::Delete,
        "m2m_add" => On::M2mAdd(relation(input)?),
        "m2m_remove" => On::M2mRemove(relation(input)?),
        "m2m_clear" => On::M2mClear(relation(input)?),
        other => {
            return Err(syn::Error::new(
                ident.span(),
                format!(
                    "unknown dispatch `{other}`: expected one of `create`, `change`, `delete`, \
                     `m2m_add(relation)`, `m2m_remove(relation)`, `m2m_clear(relation)`"
                ),
            ));
        }
    };
    Ok((ident, on))
}

impl EventDecl {
    fn empty(key: Ident) -> Self {
        EventDecl {
            key,
            name: None,
            dispatches_on: None,
            reverse: None,
            sender_field: None,
            payload: None,
            headers: None,
            timeout: None,
            filters: Vec::new(),
            retry: None,
            retry_max: None,
            retry_delay: None,
            propagate_errors: None,
            honors_transaction: None,
            keepalive: None,
        }
    }

    fn parse_options(key: Ident, input: ParseStream, ctxt: &Ctxt) -> syn::Result<Self> {
        let mut decl = EventDecl::empty(key);
        while !input.is_empty() {
            let opt: Ident = input.call(Ident::parse_any)?;
            input
                .parse::<Token![=]>()
                .map_err(|e| syn::Error::new(e.span(), format!("expected `=` after `{opt}`")))?;
            match opt.to_string().as_str() {
                "name" => {
                    let v = input.parse()?;
                    set_once(ctxt, &mut decl.name, &opt, v);
                }
                "dispatches_on" => {
                    let v = parse_on(input)?;
                    set_once(ctxt, &mut decl.dispatches_on, &opt, v);
                }
                "filter" => decl.filters.push(input.parse()?),
                "reverse" => {
                    let v = parse_reverse(input)?;
                    set_once(ctxt, &mut decl.reverse, &opt, v);
                }
                "sender_field" => {
                    let v = input.call(Ident::parse_any)?;
                    set_once(ctxt, &mut decl.sender_field, &opt, v);
                }
                "payload" => {
                    let v = input.parse()?;
                    set_once(ctxt, &mut decl.payload, &opt, v);
                }
                "headers" => {
                    let v = input.parse()?;
                    set_once(ctxt, &mut decl.headers, &opt, v);
                }
                "timeout" => {
                    let v = parse_seconds(input, "a timeout")?;
                    set_once(ctxt, &mut decl.timeout, &opt, v);
                }
                "retry" => {
                    let v = parse_bool(input, &opt)?;
                    set_once(ctxt, &mut decl.retry, &opt, v);
                }
                "retry_max" => {
                    let lit: LitInt = input.parse()?;
                    let v = lit.base10_parse()?;
                    set_once(ctxt, &mut decl.retry_max, &opt, v);
                }
                "retry_delay" => {
                    let v = parse_seconds(input, "a retry delay")?;
                    set_once(ctxt, &mut decl.retry_delay, &opt, v);
                }
                "propagate_errors" => {
                    let v = parse_bool(input, &opt)?;
                    set_once(ctxt, &mut decl.propagate_errors, &opt, v);
                }
                "honors_transaction" => {
                    let v = parse_bool(input, &opt)?;
                    set_once(ctxt, &mut decl.honors_transaction, &opt, v);
                }
                "keepalive" => {
                    let v = parse_bool(input, &opt)?;
                    set_once(ctxt, &mut decl.keepalive, &opt, v);
                }
                other => {
                    return Err(syn::Error::new(
                        opt.span(),
                        format!("unknown event option `{other}`: expected one of {EVENT_KEYS}"),
                    ));
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(decl)
    }
}

/// Parses the block, reporting problems to `ctxt` (several at once where
/// the parse can go on).
pub(crate) struct AttrParser<'a>(pub(crate) &'a Ctxt);

impl AttrParser<'_> {
    pub(crate) fn parse(&self, input: ParseStream) -> syn::Result<Attrs> {
        let ctxt = self.0;
        let mut attrs = Attrs::default();
        while !input.is_empty() {
            let key: Ident = input.call(Ident::parse_any)?;
            let text = key.to_string();
            if text.starts_with("on_") && text.len() > 3 {
                let decl = if input.peek(Token![=]) {
                    input.parse::<Token![=]>()?;
                    let name: LitStr = input.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            format!("expected the event name, e.g. `{key} = \"article.created\"`"),
                        )
                    })?;
                    let mut decl = EventDecl::empty(key);
                    decl.name = Some(name);
                    decl
                } else if input.peek(syn::token::Paren) {
                    let content;
                    parenthesized!(content in input);
                    EventDecl::parse_options(key, &content, ctxt)?
                } else {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("expected `{key} = \"name\"` or `{key}(name = \"...\", ...)`"),
                    ));
                };
                if let Some(first) = attrs.events.iter().find(|e| e.key == decl.key) {
                    let mut err =
                        syn::Error::new(decl.key.span(), format!("duplicate event `{}`", decl.key));
                    err.combine(syn::Error::new(first.key.span(), "first defined here"));
                    ctxt.push(err);
                } else {
                    attrs.events.push(decl);
                }
            } else {
                input.parse::<Token![=]>().map_err(|e| {
                    syn::Error::new(e.span(), format!("expected `=` after `{key}`"))
                })?;
                match text.as_str() {
                    "sender_field" => {
                        let v = input.call(Ident::parse_any)?;
                        set_once(ctxt, &mut attrs.sender_field, &key, v);
                    }
                    "reverse" => {
                        let v = parse_reverse(input)?;
                        set_once(ctxt, &mut attrs.reverse, &key, v);
                    }
                    "payload" => {
                        let v = input.parse()?;
                        set_once(ctxt, &mut attrs.payload, &key, v);
                    }
                    "headers" => {
                        let v = input.parse()?;
                        set_once(ctxt, &mut attrs.headers, &key, v);
                    }
                    other => {
                        return Err(syn::Error::new(
                            key.span(),
                            format!("unknown key `{other}`: expected one of {MODEL_KEYS}"),
                        ));
                    }
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(attrs)
    }
}
