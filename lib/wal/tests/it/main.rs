//! Integration tests for the `wal` crate, built as one test binary (faster
//! to link on a small machine). Each module covers one area; `crash`
//! re-executes this binary as a child process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod basic;
mod capacity;
mod common;
mod crash;
mod faults;
mod model;
mod recovery;
