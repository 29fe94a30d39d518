//! Sluicegate: a programmable edge gateway. See `docs/architecture.md` for how the pieces
//! fit: `config` builds a `state::Snapshot`, `server` runs worker threads that hand each
//! request to the `proxy` phase driver, which runs `plugins` and forwards to `upstream`s.

pub mod admin;
pub mod cli;
pub mod code_sources;
pub mod config;
pub mod gateway;
pub mod state;
pub mod supervisor;
