//! Sluicegate: a programmable edge gateway. This is the application at the top of the
//! workspace (the crate graph is in `docs/architecture.md`): the CLI, the admin API, the
//! reloader, the code sources, the DNS and health supervisor, and the assembly of a checked
//! configuration file into a running snapshot (`config`), which the `gateway` hands to the
//! server's workers.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod code_sources;
pub mod config;
pub mod descriptors;
pub mod gateway;
pub mod state;
pub mod supervisor;
