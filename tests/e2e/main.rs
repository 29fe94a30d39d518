//! End-to-end tests of the gateway core: one test binary, real sockets only.
//!
//! # How the harness works
//!
//! - **Upstreams** ([`support::upstream`]) are real servers on `127.0.0.1:0`, each on its
//!   own thread with its own tokio runtime: a recording hyper server (HTTP/1.1 and h2c),
//!   raw TCP servers for misbehaviour (silent, reset mid-body), and a WebSocket echo server.
//!   [`support::h2server`] streams requests to its handler as they arrive (trailers,
//!   bidirectional gRPC) and records each TLS handshake (SNI, client certificate, ALPN);
//!   [`support::pki`] makes a throwaway CA with server and client certificates. The gRPC
//!   tests use tonic on both ends with a hand-written prost message (no `protoc`).
//! - **The gateway** is started in-process with `sluicegate::gateway::Gateway::start` from a
//!   YAML file written into a temporary directory ([`support::gateway::Config`]). Tests write
//!   only the upstreams/routes/plugins they care about; the builder adds one worker (so
//!   round-robin is deterministic), a listener and the admin API on port 0, and fills in
//!   `{{name}}` variables such as upstream addresses. Dropping the handle stops it.
//! - **Clients** ([`support::client`]) are hyper's connection-level HTTP/1.1 and HTTP/2
//!   clients, a rustls client with a chosen ALPN list ([`support::tls`], certificates from
//!   rcgen), tokio-tungstenite for WebSockets, and a raw TCP client for malformed or slow
//!   requests.
//! - **The binary** (`CARGO_BIN_EXE_sluicegate`, [`support::bin`]) is used for the CLI:
//!   `check`, `version`, `--help`, and `run` with SIGTERM; the listening port is read from
//!   the JSON `Listening.` log line on stderr.
//! - **Other proxies**: [`differential`] sends one corpus of malformed requests through the
//!   gateway, a real nginx and a real HAProxy (started by `sluicegate-testkit`) and compares
//!   what each forwarded.
//!
//! Every network step runs under a generous timeout ([`support::STEP`]) so a hang fails
//! instead of blocking the suite; no test asserts a duration as a performance number, only
//! that a timeout (408, 504) happens at all.
//!
//! Run with `cargo test --test e2e`; set `RUST_LOG=debug` to see the gateway's logs.

// A test that cannot set up its sockets should fail loudly, right there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
mod claim_routing;
mod cli;
mod cluster;
mod code;
mod cosockets;
mod differential;
mod dns;
mod edge;
mod envoy;
mod grpc;
mod http1;
mod http2;
mod idle;
mod json_transform;
mod jwt;
mod limits;
mod oidc;
mod plugins;
mod proxy;
mod pubsub_push;
mod rate_limit;
mod resilience;
mod routing;
mod upstream_failures;
mod upstream_framing;
mod upstream_tls;
mod websocket;
