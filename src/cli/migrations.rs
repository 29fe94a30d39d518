//! `sluicegate migrations up|status -c FILE`: the cluster store's schema, for the store the
//! file's `cluster:` section names. `up` is idempotent and safe when several nodes run it
//! at once; `status` lists every step and whether it was applied.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use sluicegate_telemetry::Metrics;

/// What to do with the schema.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Apply every missing step (exit 0 also when there is none).
    Up {
        /// The node's configuration file (its `cluster.store` names the store).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show each step and when it was applied.
    Status {
        /// The node's configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

/// Runs the subcommand; returns the exit code.
pub fn migrations(action: Action) -> i32 {
    let (config, up) = match &action {
        Action::Up { config } => (config.as_path(), true),
        Action::Status { config } => (config.as_path(), false),
    };
    let store = match store_of(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluicegate: cannot start a runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    rt.block_on(async move {
        use sluicegate_cluster::{schema, store};
        let mut client = match store::connect(&store, None).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sluicegate: {e}");
                return EXIT_FAILURE;
            }
        };
        if up {
            match schema::up(&mut client).await {
                Ok(applied) if applied.is_empty() => {
                    println!("schema up to date (version {})", schema::latest());
                    EXIT_OK
                }
                Ok(applied) => {
                    println!(
                        "applied migration(s) {applied:?}; schema at version {}",
                        schema::latest()
                    );
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("sluicegate: {e}");
                    EXIT_FAILURE
                }
            }
        } else {
            match schema::status(&client).await {
                Ok(steps) => {
                    for s in steps {
                        println!(
                            "{:>4}  {:<20}  {}",
                            s.version,
                            s.applied_at.as_deref().unwrap_or("pending"),
                            s.name
                        );
                    }
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("sluicegate: {e}");
                    EXIT_FAILURE
                }
            }
        }
    })
}

/// The store of `config`'s `cluster:` section; a bad file or one without that section is
/// a usage error.
fn store_of(config: &Path) -> Result<sluicegate_cluster::StoreConfig, i32> {
    match crate::config::load_snapshot(config, 1, 1, &Metrics::default()) {
        Ok(s) => match &s.settings.cluster {
            Some(c) => Ok(crate::cluster::store_config(c)),
            None => {
                eprintln!(
                    "{}: no `cluster:` section, so no store to migrate",
                    config.display()
                );
                Err(EXIT_USAGE)
            }
        },
        Err(e) => {
            eprintln!("{e}");
            Err(EXIT_USAGE)
        }
    }
}
