//! Code generation for `#[derive(WebhookModel)]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident};

use crate::attr::AttrParser;
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
    Ok(generate(ident, &model))
}

fn template_closure(ident: &Ident, t: &Template) -> TokenStream {
    let format = &t.format;
    let args = t.args.iter().map(|a| quote_spanned!(t.lit.span()=> m.#a));
    quote!(|m: &#ident| ::std::format!(#format #(, #args)*))
}

fn reverse_closure(ident: &Ident, r: &CheckedReverse) -> TokenStream {
    match r {
        CheckedReverse::Template(t) => template_closure(ident, t),
        CheckedReverse::Func(path) => {
            quote_spanned!(path.span()=> |m: &#ident| ::std::string::ToString::to_string(&#path(m)))
        }
    }
}

fn generate(ident: &Ident, model: &Model) -> TokenStream {
    let events = model.events.iter().map(|e| {
        let key = e.key.to_string();
        let name = &e.name;
        let on = Ident::new(e.on.variant(), Span::call_site());
        let mut chain = quote! {
            ::thorn::ModelEvent::<#ident>::new(#key, #name, ::thorn::DispatchOn::#on)
        };
        if let Some(t) = &e.name_template {
            let f = template_closure(ident, t);
            chain.extend(quote!(.with_name_fn(#f)));
        }
        if let Some(path) = e.payload.as_ref().or(model.payload.as_ref()) {
            chain.extend(quote_spanned! {path.span()=>
                .with_payload(|m: &#ident| ::thorn::__private::serde_json::to_value(#path(m)))
            });
        }
        if let Some(r) = e.reverse.as_ref().or(model.reverse.as_ref()) {
            let f = reverse_closure(ident, r);
            chain.extend(quote!(.with_reverse(#f)));
        }
        if let Some(field) = e.sender_field.as_ref().or(model.sender_field.as_ref()) {
            chain.extend(quote_spanned! {field.span()=>
                .with_sender(|m: &#ident| ::thorn::__private::AsSender::as_sender(&m.#field))
            });
        }
        if let Some(secs) = e.timeout {
            chain.extend(quote!(.with_timeout(::std::time::Duration::from_secs_f64(#secs))));
        }
        chain
    });
    let model_name = ident.to_string();
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
        };
    }
}
