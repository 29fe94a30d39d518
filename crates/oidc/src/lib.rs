//! OpenID Connect relying party, the network-free half of the `oidc` plugin: sealed
//! cookies ([`seal`], [`session`]), PKCE and random tokens ([`pkce`]), cookies read, set in
//! chunks and stripped ([`cookie`]), safe redirects after login ([`redirect`]), the
//! provider's documents and the requests to it ([`provider`]), and single-flight token
//! refresh ([`flight`]). The plugin does the HTTP and the ID token verification
//! (`sluicegate-jwt`); everything here can be tested without a provider.
//!
//! Invariants the plugin relies on:
//! - everything the browser holds for us is sealed (AES-256-GCM, keys derived with HKDF
//!   from secrets of at least 32 bytes, the purpose as associated data): it can be neither
//!   read nor changed, nor moved from one purpose to another;
//! - a login is checked against its own cookie (`state` compared in constant time, one
//!   cookie per login) and carries a PKCE verifier and a nonce;
//! - the browser is only ever sent back to a path on this site or an allowed origin;
//! - our cookies are stripped before the request goes upstream;
//! - one refresh per session at a time, whatever the number of requests waiting for it;
//! - nothing here does I/O; the clock is read only by [`now`] and by [`flight`].
//!
//! Random values come from the operating system; if it cannot provide them, the functions
//! that need them panic rather than continue with guessable ones (see
//! [`pkce::random_token`]).

pub mod cookie;
pub mod flight;
pub mod pkce;
pub mod provider;
pub mod redirect;
pub mod seal;
pub mod session;

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time in seconds since the epoch, as the session's times count it.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
