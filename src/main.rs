//! The `sluicegate` binary: parses the command line and maps the outcome to an exit code
//! (0 ok, 1 runtime failure, 2 bad usage or bad configuration).

fn main() {
    std::process::exit(sluicegate::cli::main());
}
