//! Filter expressions (`state.now_eq("PUBLISHED") & !title.startswith("Draft")`)
//! compiled to Rust: each condition becomes a call to `thorn::filter::ops`
//! on the row's field, so a value of the wrong type is a type error at the
//! value's own tokens.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{BinOp, Expr, ExprMethodCall, Ident, Lit, UnOp};

use crate::ctxt::Ctxt;
use crate::model::Fields;

const OPS: [&str; 13] = [
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "is",
    "is_not",
    "in_",
    "not_in",
    "contains",
    "startswith",
    "endswith",
];

/// A compiled filter: a `bool` expression over `new: &M` and `old: Option<&M>`.
pub(crate) struct CompiledFilter {
    pub(crate) tokens: TokenStream,
    pub(crate) uses_now: bool,
}

pub(crate) fn compile(ctxt: &Ctxt, fields: &Fields<'_>, exprs: &[Expr]) -> Option<CompiledFilter> {
    let mut uses_now = false;
    let mut parts = Vec::with_capacity(exprs.len());
    let mut ok = true;
    for e in exprs {
        match walk(ctxt, fields, e, &mut uses_now) {
            Some(t) => parts.push(t),
            None => ok = false,
        }
    }
    ok.then(|| CompiledFilter {
        tokens: quote!(true #(&& (#parts))*),
        uses_now,
    })
}

fn walk(ctxt: &Ctxt, fields: &Fields<'_>, expr: &Expr, uses_now: &mut bool) -> Option<TokenStream> {
    match expr {
        Expr::Paren(p) => walk(ctxt, fields, &p.expr, uses_now).map(|t| quote!((#t))),
        Expr::Group(g) => walk(ctxt, fields, &g.expr, uses_now),
        Expr::Unary(u) if matches!(u.op, UnOp::Not(_)) => {
            walk(ctxt, fields, &u.expr, uses_now).map(|t| quote!(!(#t)))
        }
        Expr::Binary(b) => {
            let join = match b.op {
                BinOp::BitAnd(_) | BinOp::And(_) => quote!(&&),
                BinOp::BitOr(_) | BinOp::Or(_) => quote!(||),
                _ => {
                    ctxt.error_spanned(
                        b.op,
                        "filters combine conditions with `&`, `|` and `!` only",
                    );
                    return None;
                }
            };
            let l = walk(ctxt, fields, &b.left, uses_now);
            let r = walk(ctxt, fields, &b.right, uses_now);
            Some(quote!((#l) #join (#r)))
        }
        Expr::MethodCall(call) => leaf(ctxt, fields, call, uses_now),
        other => {
            ctxt.error_spanned(
                other,
                "expected a condition like `field.op(value)`, combined with `&`, `|`, `!` and parentheses",
            );
            None
        }
    }
}

fn leaf(
    ctxt: &Ctxt,
    fields: &Fields<'_>,
    call: &ExprMethodCall,
    uses_now: &mut bool,
) -> Option<TokenStream> {
    let field = match &*call.receiver {
        Expr::Path(p) if p.path.get_ident().is_some() && p.qself.is_none() => {
            p.path.get_ident().expect("checked").clone()
        }
        other => {
            ctxt.error_spanned(
                other,
                "expected a field name before the operator, e.g. `state.eq(...)`",
            );
            return None;
        }
    };
    let method = call.method.to_string();
    let (now, op) = match method.strip_prefix("now_") {
        // `now_in` needs no underscore: it is not a keyword.
        Some("in") => (true, "in_"),
        Some(op) => (true, op),
        None => (false, method.as_str()),
    };
    let op_known = OPS.contains(&op);
    if !op_known {
        let hint = if op == "in" {
            " (write `in_`: `in` is a Rust keyword)"
        } else {
            ""
        };
        ctxt.error_spanned(
            &call.method,
            format!(
                "unknown filter operator `{method}`{hint}: expected one of {}, or a `now_` form of one",
                OPS.join(", ")
            ),
        );
    }
    let field_known = fields.check_ident(ctxt, &field, "filter");
    if call.args.len() != 1 {
        ctxt.error_spanned(
            &call.args,
            format!("`{method}` takes exactly one value, e.g. `{field}.{method}(...)`"),
        );
        return None;
    }
    if !(op_known && field_known) {
        return None;
    }
    let value = &call.args[0];
    *uses_now |= now;
    let new_row = quote!(new);
    let op_span = call.method.span();
    let on_new = condition(&new_row, &field, op, op_span, value);
    if now {
        let old_row = quote!(old);
        let on_old = condition(&old_row, &field, op, op_span, value);
        Some(quote!((#on_new) && !old.is_some_and(|old| #on_old)))
    } else {
        Some(on_new)
    }
}

fn bool_literal(e: &Expr) -> Option<bool> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Bool(b) => Some(b.value),
            _ => None,
        },
        _ => None,
    }
}

fn is_none_path(e: &Expr) -> bool {
    matches!(e, Expr::Path(p) if p.path.is_ident("None"))
}

/// One operator on one row (`new` or `old`). The operator's path is spanned
/// at the operator and the call at the value, so an unsupported field type
/// points at the operator and a value of the wrong type at the value.
fn condition(
    row: &TokenStream,
    field: &Ident,
    op: &str,
    op_span: proc_macro2::Span,
    value: &Expr,
) -> TokenStream {
    let ops = quote_spanned!(op_span=> ::thorn::__private::ops);
    let span = value.span();
    // The row's name carries the field's span (same call-site hygiene), so
    // errors about the field's type point at the field.
    let row = syn::Ident::new(&row.to_string(), field.span());
    let f = quote_spanned!(field.span()=> &#row.#field);
    match (op, bool_literal(value), is_none_path(value)) {
        ("eq", Some(true), _) | ("ne", Some(false), _) => quote_spanned!(span=> #ops::truthy(#f)),
        ("eq", Some(false), _) | ("ne", Some(true), _) => quote_spanned!(span=> !#ops::truthy(#f)),
        ("is", _, true) => quote_spanned!(span=> #ops::is_none(#f)),
        ("is_not", _, true) => quote_spanned!(span=> !#ops::is_none(#f)),
        ("eq" | "is", ..) => quote_spanned!(span=> #ops::eq(#f, &(#value))),
        ("ne" | "is_not", ..) => quote_spanned!(span=> #ops::ne(#f, &(#value))),
        ("gt", ..) => quote_spanned!(span=> #ops::gt(#f, &(#value))),
        ("gte", ..) => quote_spanned!(span=> #ops::gte(#f, &(#value))),
        ("lt", ..) => quote_spanned!(span=> #ops::lt(#f, &(#value))),
        ("lte", ..) => quote_spanned!(span=> #ops::lte(#f, &(#value))),
        ("in_", ..) => quote_spanned!(span=> #ops::in_(#f, &(#value)[..])),
        ("not_in", ..) => quote_spanned!(span=> !#ops::in_(#f, &(#value)[..])),
        ("contains", ..) => quote_spanned!(span=> #ops::contains(#f, &(#value))),
        ("startswith", ..) => quote_spanned!(span=> #ops::startswith(#f, &(#value))),
        ("endswith", ..) => quote_spanned!(span=> #ops::endswith(#f, &(#value))),
        _ => unreachable!("operators are checked before"),
    }
}
