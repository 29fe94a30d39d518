//! The command line: one file per subcommand. Exit codes: 0 ok, 1 runtime failure,
//! 2 bad usage or bad configuration. Errors go to stderr, one per line.

pub mod admin_client;
pub mod check;
pub mod check_code;
pub mod migrations;
pub mod reload;
pub mod run;
pub mod test;
pub mod wal;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit code for success.
pub const EXIT_OK: i32 = 0;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for bad usage or a bad configuration.
pub const EXIT_USAGE: i32 = 2;

/// Sluicegate: a programmable edge gateway.
#[derive(Debug, Parser)]
#[command(name = "sluicegate", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in the foreground (SIGTERM/SIGINT drain and stop it, SIGHUP reloads).
    Run {
        /// Configuration file (YAML or JSON).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration: exit 0 if valid, else print every error and exit 2.
    Check {
        /// Configuration file (YAML or JSON).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Ask a running gateway (through its admin API) to reload its configuration.
    Reload {
        /// The configuration file of the running gateway (to find its admin address).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Admin address, instead of reading it from the configuration.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Ask a running gateway (through its admin API) to drain and stop.
    Stop {
        /// The configuration file of the running gateway (to find its admin address).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Admin address, instead of reading it from the configuration.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Run busted-style Lua spec files (`*_spec.lua` under directories) in the real runtime.
    Test {
        /// Print TAP instead of the readable report.
        #[arg(long)]
        tap: bool,
        /// Spec files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Inspect and repair the durable queues (stats, list, show, dead letters, replay, purge).
    Wal(wal::WalArgs),
    /// Create or upgrade the cluster store's schema (`up`), or show it (`status`).
    Migrations {
        /// `up` or `status`.
        #[command(subcommand)]
        action: migrations::Action,
    },
    /// Print the version.
    Version,
    /// Validate dynamic scripts before publishing them: code-API documents (JSON), script
    /// directories or `NAME.PHASE.lua` files. Exit 0 if every script compiles, else print
    /// each error (script name and line) and exit 2.
    CheckCode {
        /// Documents, directories or script files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// Runs the command line and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    init_tracing();
    sluicegate_luacompat::install();
    match cli.command {
        Command::Run { config } => run::run(&config),
        Command::Check { config } => check::check(&config),
        Command::Reload { config, admin } => {
            reload::admin_post(config.as_deref(), admin, "/reload")
        }
        Command::Stop { config, admin } => reload::admin_post(config.as_deref(), admin, "/stop"),
        Command::Test { paths, tap } => test::test(&paths, tap),
        Command::Wal(args) => wal::wal(args),
        Command::CheckCode { paths } => check_code::check_code(&paths),
        Command::Migrations { action } => migrations::migrations(action),
        Command::Version => {
            println!("sluicegate {}", env!("CARGO_PKG_VERSION"));
            EXIT_OK
        }
    }
}

/// Logs go to stderr as JSON lines (`SLUICEGATE_LOG=text` for human-readable lines);
/// `RUST_LOG` sets the level (default `info`).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if std::env::var("SLUICEGATE_LOG").as_deref() == Ok("text") {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
