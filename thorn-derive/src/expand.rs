//! Code generation for `#[derive(WebhookModel)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident};

use crate::attr::AttrParser;
use crate::attr::On;
use crate::ctxt::Ctxt;
use crate::model::{CheckedReverse, Model, Template};

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let ident = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "WebhookModel cannot be derived for generic structs",
        ));
    }
    let field_names: Vec<Ident> = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => named.named.iter().filter_map(|f| f.ident.clone()).collect(),
            _ => {
                return Err(syn::Error::new_spanned(
                    ident,
                    "WebhookModel needs a struct with named fields (a database row)",
                ));
            }
        },
        _ => {
            return Err(syn::Error::new_spanned(
                ident,
                "WebhookModel can only be derived for structs (a database row)",
            ));
        }
    };

    let ctxt = Ctxt::default();
    let mut attrs = None;
    let mut seen = false;
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("webhook_model"))
    {
        if std::mem::replace(&mut seen, true) {
            ctxt.error_spanned(attr, "only one #[webhook_model(...)] block is allowed");
            continue;
        }
        match attr.parse_args_with(|s: syn::parse::ParseStream| AttrParser(&ctxt).parse(s)) {
            Ok(a) => attrs = Some(a),
            Err(e) => ctxt.push(e),
        }
    }
    let Some(attrs) = attrs else {
        if seen {
            // The block was there but did not parse; its error is in ctxt.
            return Err(ctxt.check().unwrap_err());
        }
        ctxt.push(syn::Error::new_spanned(
            ident,
            "missing #[webhook_model(...)]: declare at least one event, e.g. #[webhook_model(on_create = \"article.created\")]",
        ));
        return Err(ctxt.check().unwrap_err());
    };
    let model = Model::check(&ctxt, ident, &field_names, attrs);
    ctxt.check()?;
    let model = model.expect("checked without errors");
    let mut out = generate(ident, &field_names, &model);
    out.extend(relations(ident, &input.vis, &model));
    out.extend(bulk_changes(ident, &model));
    Ok(out)
}

/// One `Relation` constant per many-to-many relation the events name
/// (`m2m_add(tags)` makes `TAGS`), so a misspelt relation does not compile.
fn relations(ident: &Ident, vis: &syn::Visibility, model: &Model) -> TokenStream {
    let mut seen: Vec<String> = Vec::new();
    let consts = model.events.iter().filter_map(|e| {
        let relation = match &e.on {
            On::M2mAdd(r) | On::M2mRemove(r) | On::M2mClear(r) => r,
            On::Create | On::Change | On::Delete => return None,
        };
        let name = relation.to_string();
        if seen.contains(&name) {
            return None;
        }
        seen.push(name.clone());
        let constant = Ident::new(&name.to_uppercase(), relation.span());
        let doc =
            format!("The `{name}` many-to-many relation, as `#[webhook_model(...)]` declares it.");
        Some(quote! {
            #[doc = #doc]
            #vis const #constant: ::thorn::Relation<#ident> = ::thorn::Relation::__declared(#name);
        })
    });
    let consts: Vec<TokenStream> = consts.collect();
    if consts.is_empty() {
        return TokenStream::new();
    }
    quote! {
        #[automatically_derived]
        impl #ident {
            #(#consts)*
        }
    }
}

/// `thorn::diesel::BulkChange`: models whose change events have no `now_`
/// filters, so their updates need no old row (any Diesel update, bulk
/// ones too); the others update one row at a time through
/// `thorn::diesel::update`, which loads it.
fn bulk_changes(ident: &Ident, model: &Model) -> TokenStream {
    let needs_old = model
        .events
        .iter()
        .any(|e| matches!(e.on, On::Change) && e.filter.as_ref().is_some_and(|f| f.uses_now));
    if needs_old {
        return TokenStream::new();
    }
    quote! {
        ::thorn::__private::diesel_bulk_change!(#ident);
    }
}

fn template_closure(ident: &Ident, t: &Template) -> TokenStream {
    let format = &t.format;
    let args = t.args.iter().map(|a| quote_spanned!(t.lit.span()=> m.#a));
    quote!(|m: &#ident| ::std::format!(#format #(, #args)*))
}

fn reverse_closure(ident: &Ident, r: Option<&CheckedReverse>) -> TokenStream {
    match r {
        Some(CheckedReverse::Template(t)) => {
            let format = &t.format;
            let args = t.args.iter().map(|a| quote_spanned!(t.lit.span()=> m.#a));
            quote!(|m: &#ident| ::std::option::Option::Some(::std::format!(#format #(, #args)*)))
        }
        Some(CheckedReverse::Func(path)) => quote_spanned! {path.span()=>
            |m: &#ident| ::std::option::Option::Some(::std::string::ToString::to_string(&#path(m)))
        },
        // Django's get_absolute_url: the model's `AbsoluteUrl`, if it has one.
        None => quote! {
            |m: &#ident| {
                #[allow(unused_imports)]
                use ::thorn::__private::url_probe::{ViaAbsoluteUrl as _, ViaNoUrl as _};
                (&::thorn::__private::url_probe::UrlProbe(m)).probe_url()
            }
        },
    }
}

fn dispatch_on(on: &On) -> TokenStream {
    match on {
        On::Create => quote!(::thorn::DispatchOn::Create),
        On::Change => quote!(::thorn::DispatchOn::Change),
        On::Delete => quote!(::thorn::DispatchOn::Delete),
        On::M2mAdd(r) => {
            let r = r.to_string();
            quote!(::thorn::DispatchOn::M2mAdd(#r))
        }
        On::M2mRemove(r) => {
            let r = r.to_string();
            quote!(::thorn::DispatchOn::M2mRemove(#r))
        }
        On::M2mClear(r) => {
            let r = r.to_string();
            quote!(::thorn::DispatchOn::M2mClear(#r))
        }
    }
}

fn option<T: quote::ToTokens>(v: Option<T>) -> TokenStream {
    match v {
        Some(v) => quote!(::std::option::Option::Some(#v)),
        None => quote!(::std::option::Option::None),
    }
}

fn generate(ident: &Ident, field_names: &[Ident], model: &Model) -> TokenStream {
    let events = model.events.iter().map(|e| {
        let key = e.key.to_string();
        let name = &e.name;
        let on = dispatch_on(&e.on);
        let mut chain = quote! {
            ::thorn::ModelEvent::<#ident>::new(#key, #name, #on)
        };
        if let Some(t) = &e.name_template {
            let f = template_closure(ident, t);
            chain.extend(quote!(.with_name_fn(#f)));
        }
        if let Some(path) = e.payload.as_ref().or(model.payload.as_ref()) {
            chain.extend(quote_spanned! {path.span()=>
                .with_payload(|m: &#ident| {
                    #[allow(unused_imports)]
                    use ::thorn::__private::payload_probe::ViaSerialize as _;
                    ::thorn::__private::payload_probe::Payload(#path(m)).into_payload()
                })
            });
        }
        if let Some(path) = e.headers.as_ref().or(model.headers.as_ref()) {
            chain.extend(quote_spanned! {path.span()=>
                .with_headers(|m: &#ident| ::thorn::__private::to_headers(#path(m)))
            });
        }
        let reverse = reverse_closure(ident, e.reverse.as_ref().or(model.reverse.as_ref()));
        chain.extend(quote!(.with_reverse(#reverse)));
        if let Some(field) = e.sender_field.as_ref().or(model.sender_field.as_ref()) {
            chain.extend(quote_spanned! {field.span()=>
                .with_sender(|m: &#ident| ::thorn::__private::AsSender::as_sender(&m.#field))
            });
        }
        if let Some(filter) = &e.filter {
            let tokens = &filter.tokens;
            let uses_now = filter.uses_now;
            chain.extend(quote! {
                .with_filter_fn(
                    |new: &#ident, old: ::std::option::Option<&#ident>| -> bool {
                        let _ = &old;
                        #tokens
                    },
                    #uses_now,
                )
            });
        }
        if let Some(secs) = e.timeout {
            chain.extend(quote!(.with_timeout(::std::time::Duration::from_secs_f64(#secs))));
        }
        if e.retry.is_some() || e.retry_max.is_some() || e.retry_delay.is_some() {
            let enabled = option(e.retry);
            let max = option(e.retry_max);
            let delay = option(e.retry_delay.map(|d| quote!(::std::time::Duration::from_secs_f64(#d))));
            chain.extend(quote! {
                .with_retry_patch(::thorn::RetryPatch { enabled: #enabled, max_retries: #max, retry_delay: #delay })
            });
        }
        if let Some(p) = e.propagate_errors {
            chain.extend(quote!(.with_propagate_errors(#p)));
        }
        if let Some(h) = e.honors_transaction {
            chain.extend(quote!(.with_honors_transaction(::std::option::Option::Some(#h))));
        }
        if let Some(k) = e.keepalive {
            chain.extend(quote!(.with_keepalive(#k)));
        }
        chain
    });
    // SeaORM entities are all called `Model`: name them by their module.
    let model_name = if ident == "Model" {
        quote!(::std::concat!(::std::module_path!(), "::Model"))
    } else {
        let name = ident.to_string();
        quote!(#name)
    };
    let field_strs: Vec<String> = field_names.iter().map(|f| f.to_string()).collect();
    quote! {
        const _: () = {
            #[automatically_derived]
            impl ::thorn::WebhookModel for #ident {
                fn webhooks() -> &'static ::thorn::Webhooks<Self> {
                    static WEBHOOKS: ::std::sync::OnceLock<::thorn::Webhooks<#ident>> =
                        ::std::sync::OnceLock::new();
                    WEBHOOKS.get_or_init(|| {
                        ::thorn::Webhooks::new(#model_name, ::std::vec![#(#events),*])
                    })
                }
            }

            #[automatically_derived]
            impl ::thorn::WebhookFields for #ident {
                fn field_value(&self, name: &str) -> ::std::option::Option<::thorn::FieldValue> {
                    #[allow(unused_imports)]
                    use ::thorn::__private::probe::{ViaFallback as _, ViaValue as _};
                    match name {
                        #(#field_strs => ::std::option::Option::Some(
                            (&::thorn::__private::probe::Probe(&self.#field_names)).probe_value()
                        ),)*
                        _ => ::std::option::Option::None,
                    }
                }
            }
        };
    }
}
