//! The `sluicegate` binary: parses the command line and maps the outcome to an exit code
//! (0 ok, 1 runtime failure, 2 bad usage or bad configuration).

// glibc malloc showed up at ~6% of proxy CPU; mimalloc's thread-local free lists fit the
// one-runtime-per-thread worker model. Built without transparent huge pages (Cargo.toml):
// zeroing the first 2 MiB page cost ~1 ms of cold start for no gain per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    sluicegate_server::park::set_release(release_memory);
    std::process::exit(sluicegate::cli::main());
}

/// Returns the pages freed by parked connections to the system: mimalloc keeps a freed page
/// until its thread allocates again, and a worker whose connections all idle does not.
#[allow(unsafe_code)]
fn release_memory() {
    // SAFETY: `mi_collect` has no preconditions; it only frees what is unused.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
