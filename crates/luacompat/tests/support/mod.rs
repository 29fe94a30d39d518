//! What the in-process tests share: a single-threaded runtime with a local task set, as a
//! worker runs, and an Envoy filter built from source.

#![allow(clippy::unwrap_used, dead_code)]

use sluicegate_luacompat::envoy::plugin::{EnvoyLua, OnError};

/// Runs `f` to completion on a current-thread runtime inside a `LocalSet`.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// The Envoy filter `code`, named `filter`, failing requests on script errors.
pub fn filter(code: &str) -> EnvoyLua {
    sluicegate_luacompat::install();
    EnvoyLua::new(
        sluicegate_lua::compile("filter", code).unwrap(),
        OnError::Fail,
    )
}
