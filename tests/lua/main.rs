//! End-to-end tests of the Lua runtime: the real gateway (in-process, `Gateway::start`) or
//! the real binary, on ephemeral ports, against an in-process upstream and real clients.
//!
//! - `api`: the `ngx` API as HTTP clients see it (exit, redirect, headers, cookies, args,
//!   `ngx.ctx` across phases, non-blocking `sluicegate.http.request`, concurrency).
//! - `budget`: runaway scripts and allocation bombs answer 500 in time while other clients
//!   keep getting 200s; failures are counted in `/metrics` and logged with script and line.
//! - `cli`: syntax errors at `check`/load time, `sluicegate test` on passing and failing
//!   specs (the conformance suite in `tests/lua/specs/`), and the shipped bench and
//!   example configurations.
//!
//! Run with `cargo test --test lua`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod api;
mod budget;
mod cli;
