//! The `#[socket_route]` attribute of `switchyard-sdk`.
//!
//! It leaves the user's struct untouched and adds a hidden block that keeps
//! one value of the struct per component instance and implements the
//! generated `Guest` trait by delegating to the user's `Controller` impl.
//! Every path in the output is absolute (`::switchyard_sdk::…`), and the
//! checks that the struct implements `Default` and `Controller` are spanned
//! to the struct's name, so mistakes are reported at the user's code.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{quote, quote_spanned};
use switchyard_grammar::Mode;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, ExprLit, ItemStruct, Lit, LitStr, meta::ParseNestedMeta};

/// See `switchyard_sdk::socket_route`.
#[proc_macro_attribute]
pub fn socket_route(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

#[derive(Default)]
struct RouteArgs {
    route: Option<LitStr>,
    name: Option<LitStr>,
    is_granted: Vec<LitStr>,
    instance: Option<LitStr>,
}

impl RouteArgs {
    fn parse(&mut self, meta: ParseNestedMeta) -> syn::Result<()> {
        if meta.path.is_ident("route") {
            let route: LitStr = meta.value()?.parse()?;
            validate_route(&route)?;
            self.route = Some(route);
        } else if meta.path.is_ident("name") {
            let name: LitStr = meta.value()?.parse()?;
            if name.value().trim().is_empty() {
                return Err(syn::Error::new(
                    name.span(),
                    "the route name must not be empty",
                ));
            }
            self.name = Some(name);
        } else if meta.path.is_ident("is_granted") {
            let value: Expr = meta.value()?.parse()?;
            self.is_granted = roles(&value)?;
        } else if meta.path.is_ident("instance") {
            self.instance = Some(meta.value()?.parse()?);
        } else {
            return Err(meta.error("expected `route`, `name`, `is_granted` or `instance`"));
        }
        Ok(())
    }
}

fn roles(value: &Expr) -> syn::Result<Vec<LitStr>> {
    let single = |expr: &Expr| match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(role),
            ..
        }) if !role.value().is_empty() => Ok(role.clone()),
        other => Err(syn::Error::new(
            other.span(),
            "a role is a non-empty string literal",
        )),
    };
    match value {
        Expr::Array(ExprArray { elems, .. }) => elems.iter().map(single).collect(),
        other => Ok(vec![single(other)?]),
    }
}

/// The `InstanceMode` expression for `instance = "..."`: `"shared"`,
/// `"per-connection"` or `"keyed:<param>"`, where the route must capture
/// `<param>`.
fn instance_mode(
    instance: Option<&LitStr>,
    route: &LitStr,
) -> syn::Result<proc_macro2::TokenStream> {
    let Some(instance) = instance else {
        return Ok(quote!(::switchyard_sdk::InstanceMode::Shared));
    };
    let text = instance.value();
    let error = |reason: String| syn::Error::new(instance.span(), reason);
    let mode = switchyard_grammar::instance_mode(&text).map_err(error)?;
    let route = route.value();
    let segments = switchyard_grammar::route_segments(&route).map_err(error)?;
    switchyard_grammar::check_mode(mode, &segments).map_err(error)?;
    Ok(match mode {
        Mode::Shared => quote!(::switchyard_sdk::InstanceMode::Shared),
        Mode::PerConnection => quote!(::switchyard_sdk::InstanceMode::PerConnection),
        Mode::Keyed(param) => {
            quote!(::switchyard_sdk::InstanceMode::Keyed(::std::string::String::from(#param)))
        }
    })
}

fn validate_route(route: &LitStr) -> syn::Result<()> {
    switchyard_grammar::route_segments(&route.value())
        .map(drop)
        .map_err(|reason| syn::Error::new(route.span(), reason))
}

fn expand(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let mut route_args = RouteArgs::default();
    syn::meta::parser(|meta| route_args.parse(meta)).parse2(args)?;
    let item: ItemStruct = syn::parse2(item).map_err(|err| {
        syn::Error::new(
            err.span(),
            "#[socket_route] goes on the controller's struct",
        )
    })?;
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "a controller struct cannot be generic: the host creates it with `Default`",
        ));
    }
    let Some(route) = route_args.route else {
        return Err(syn::Error::new(
            Span::call_site(),
            "missing `route`, e.g. #[socket_route(route = \"/chat/\", name = \"chat\")]",
        ));
    };
    let name = match route_args.name {
        Some(name) => quote!(#name),
        None => quote!(::core::env!("CARGO_PKG_NAME")),
    };
    let is_granted = route_args.is_granted;
    let instance = instance_mode(route_args.instance.as_ref(), &route)?;
    let ty = &item.ident;
    let span = ty.span();
    let assert_impls = quote_spanned! {span=>
        const _: fn() = || {
            fn controller_must_implement_default_and_controller<
                T: ::core::default::Default + ::switchyard_sdk::Controller,
            >() {}
            controller_must_implement_default_and_controller::<#ty>();
        };
    };

    Ok(quote! {
        #item

        #assert_impls

        // Every name the block uses is absolute or starts with `__switchyard`:
        // an import here would shadow a user type of the same name (a
        // controller called `Connection` or `Message`).
        #[doc(hidden)]
        const _: () = {
            ::std::thread_local! {
                // The component's one value of the controller, created on
                // first use. Components are single-threaded and the host
                // never re-enters an export, so the borrow is never shared.
                static __SWITCHYARD_INSTANCE: ::core::cell::RefCell<::core::option::Option<#ty>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            fn __switchyard_with_instance<R>(f: impl ::core::ops::FnOnce(&mut #ty) -> R) -> R {
                __SWITCHYARD_INSTANCE.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    f(slot.get_or_insert_with(::core::default::Default::default))
                })
            }

            fn __switchyard_with_connection<R>(
                id: u64,
                f: impl ::core::ops::FnOnce(&mut #ty, &::switchyard_sdk::Connection) -> R,
            ) -> R {
                ::switchyard_sdk::__private::with_connection(id, |conn| {
                    __switchyard_with_instance(|c| f(c, conn))
                })
            }

            struct __SwitchyardExport;

            impl ::switchyard_sdk::__private::Guest for __SwitchyardExport {
                fn describe() -> ::switchyard_sdk::RouteInfo {
                    ::switchyard_sdk::RouteInfo {
                        route: ::std::string::String::from(#route),
                        name: ::std::string::String::from(#name),
                        is_granted: ::std::vec![#(::std::string::String::from(#is_granted)),*],
                        instance: #instance,
                    }
                }

                fn on_open(
                    conn: ::switchyard_sdk::Connection,
                ) -> ::core::option::Option<::switchyard_sdk::Message> {
                    let reply = __switchyard_with_instance(|c| {
                        <#ty as ::switchyard_sdk::Controller>::on_open(c, &conn)
                    });
                    ::switchyard_sdk::__private::keep_connection(conn);
                    reply
                }

                fn on_message(
                    conn: u64,
                    msg: ::switchyard_sdk::Message,
                ) -> ::core::option::Option<::switchyard_sdk::Message> {
                    __switchyard_with_connection(conn, |c, conn| {
                        <#ty as ::switchyard_sdk::Controller>::on_message(c, conn, msg)
                    })
                }

                fn on_close(conn: u64, info: ::switchyard_sdk::CloseInfo) {
                    __switchyard_with_connection(conn, |c, conn| {
                        <#ty as ::switchyard_sdk::Controller>::on_close(c, conn, info)
                    });
                    ::switchyard_sdk::__private::forget_connection(conn);
                }

                fn on_error(
                    conn: u64,
                    err: ::switchyard_sdk::ErrorInfo,
                ) -> ::core::option::Option<::switchyard_sdk::Message> {
                    __switchyard_with_connection(conn, |c, conn| {
                        <#ty as ::switchyard_sdk::Controller>::on_error(c, conn, err)
                    })
                }
            }

            ::switchyard_sdk::__private::export!(
                __SwitchyardExport with_types_in ::switchyard_sdk::bindings
            );
        };
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(args: proc_macro2::TokenStream) -> String {
        let item = quote!(
            #[derive(Default)]
            struct Chat;
        );
        expand(args, item).unwrap_err().to_string()
    }

    /// The attribute refuses what the host would refuse at load, with the
    /// host's words (both use `switchyard-grammar`).
    #[test]
    fn routes_and_modes_the_host_refuses_do_not_compile() {
        for (args, reason) in [
            (quote!(route = "/a/{x}/{x}"), "capture `x` appears twice"),
            (quote!(route = "chat"), "a route starts with `/`"),
            (quote!(route = "/chat?x"), "no query or fragment"),
            (quote!(route = "/a/{*rest}/b"), "catch-all must be the last"),
            (
                quote!(route = "/rooms/{room}", instance = "keyed:rooms"),
                "`keyed:rooms` needs the route to capture `{rooms}`",
            ),
            (
                quote!(route = "/rooms/{room}", instance = "keyed"),
                "not an instance mode",
            ),
        ] {
            let err = error(args.clone());
            assert!(err.contains(reason), "{args}: {err}");
        }
    }

    #[test]
    fn a_keyed_route_expands() {
        let item = quote!(
            #[derive(Default)]
            struct Rooms;
        );
        let out = expand(
            quote!(route = "/rooms/{room}", instance = "keyed:room"),
            item,
        )
        .unwrap()
        .to_string();
        assert!(out.contains("Keyed"), "{out}");
    }
}
