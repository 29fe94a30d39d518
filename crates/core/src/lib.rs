//! The gateway's vocabulary: the types every other crate speaks and nothing else.
//!
//! - a request in flight: its context ([`context::RequestCtx`]) with the narrow views of
//!   the configuration and worker it runs under, and its body ([`body`]);
//! - the plugin contract: [`phase::Phase`], [`phase::Flow`], [`phase::Plugin`],
//!   [`phase::LocalResponse`];
//! - the error type with its kind and source, and the one place that maps it to an HTTP
//!   status ([`error`]);
//! - configuration diagnostics (a path into the document and its line, [`diag`]) and the
//!   YAML node they are read from ([`yaml`], [`de`]);
//! - the coarse per-worker clock and deadline table, and the executor that keeps hyper's
//!   tasks on a worker's thread.
//!
//! Invariant: this crate builds nothing and runs nothing by itself; it imports no other
//! crate of the workspace but the HTTP/1.1 wire codec.

pub mod body;
pub mod clock;
pub mod context;
pub mod de;
pub mod deadline;
pub mod diag;
pub mod error;
pub mod name;
pub mod pace;
pub mod phase;
pub mod prehashed;
pub mod rewrite;
pub mod yaml;

use std::future::Future;

/// Spawns hyper's background tasks (HTTP/2 streams, connections) on the worker's `LocalSet`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
