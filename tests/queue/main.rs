//! End-to-end tests of the durable queue: real sockets, the real gateway (in-process with
//! `Gateway::start`, or the real binary for crash tests), and recording upstreams on
//! `127.0.0.1` (see [`support`]). Run with `cargo test --test queue`; `RUST_LOG=debug`
//! shows the gateway's logs.
//!
//! - [`examples`]: `examples/queue-nats.yaml` and `examples/queue-pubsub.yaml` run as
//!   their comments say.
//! - [`delivery`]: ack, rewrite and headers, retries (connection errors, 500, 429 with
//!   `Retry-After`), dead letters (400, max attempts), FIFO order, plugins before enqueue.
//! - [`durability`]: restart with pending messages, kill -9 of the binary mid-load.
//! - [`limits`]: disk bound → 503 + `Retry-After`, oversized bodies.
//! - [`operations`]: admin API, `/metrics`, replay, purge, `sluicegate wal` on a stopped
//!   gateway and through the admin API, reloads, the Rust API behind Lua's
//!   `sluicegate.queue.enqueue`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod delivery;
mod durability;
mod examples;
mod limits;
mod nats;
mod operations;
mod pubsub;
