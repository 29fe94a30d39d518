//! Test support shared by the workspace's suites: real servers (Redis, PostgreSQL, nginx,
//! HAProxy, an OpenID provider, the queue engines: a NATS JetStream server or cluster in
//! [`nats`], Google's Pub/Sub emulator in [`pubsub`]), each started on a free loopback
//! port in a temporary directory and stopped when its handle is dropped, and a real
//! browser for the OpenID Connect login.
//!
//! A server that is not installed is a loud failure naming the install step
//! (`scripts/test` installs every one), never a skipped test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod haproxy;
pub mod nats;
pub mod nginx;
pub mod oidc;
pub mod postgres;
mod proc;
pub mod pubsub;
pub mod redis;

use std::path::PathBuf;

/// The path of `program` on `PATH` (or in the usual system directories), or a panic that
/// says how to install it.
pub fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    for d in dirs {
        let candidate = d.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed: run `scripts/test` (it installs Debian's `{package}`), \
         or `apt-get install {package}`"
    );
}

/// A loopback port that was free a moment ago, for servers that cannot bind port 0
/// themselves and report the port they got.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
