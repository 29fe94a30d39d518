//! `sluicegate run -c FILE`: runs the gateway in the foreground until SIGTERM/SIGINT (or
//! `POST /stop`), reloading on SIGHUP.

use std::path::Path;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::gateway::Gateway;

/// Runs the gateway; returns the exit code.
pub fn run(config: &Path) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluicegate: cannot start the signal runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    // Signal handlers first: a SIGHUP or SIGTERM that arrives while the gateway starts is
    // kept and acted on once it runs, instead of killing the process with the default action.
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _runtime = rt.enter();
        (|| {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
            ))
        })()
    };
    let (mut term, mut int, mut hup) = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluicegate: cannot install signal handlers: {e}");
            return EXIT_FAILURE;
        }
    };
    // Before any socket is bound: every connection takes a descriptor.
    crate::descriptors::raise_limit();
    let gateway = match Gateway::start(config) {
        Ok(g) => g,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<crate::config::ConfigError>() {
                eprintln!("{ce}");
                return EXIT_USAGE;
            }
            eprintln!("sluicegate: {e:#}");
            return EXIT_FAILURE;
        }
    };
    let shared = gateway.shared.clone();
    let drained = rt.block_on(async move {
        let mut stop = shared.shutdown.subscribe();
        loop {
            // A stop asked for before this subscription (the admin API answers as soon as
            // the gateway runs) is already the current value, not a change.
            if *stop.borrow_and_update() {
                tracing::info!("Stop requested through the admin API; draining.");
                break;
            }
            tokio::select! {
                _ = term.recv() => { tracing::info!(signal = "SIGTERM", "Draining and stopping."); break; }
                _ = int.recv() => { tracing::info!(signal = "SIGINT", "Draining and stopping."); break; }
                _ = hup.recv() => {
                    let shared = shared.clone();
                    tokio::spawn(async move { let _ = shared.reload("sighup").await; });
                }
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        tracing::info!("Stop requested through the admin API; draining.");
                        break;
                    }
                }
            }
        }
        // Drain on another thread; a second SIGTERM/SIGINT stops at once.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            gateway.shutdown();
            let _ = done_tx.send(());
        });
        tokio::select! {
            _ = done_rx => true,
            _ = term.recv() => false,
            _ = int.recv() => false,
        }
    });
    if drained {
        tracing::info!("Stopped.");
        EXIT_OK
    } else {
        tracing::warn!("Second stop signal: exiting without waiting for the drain.");
        EXIT_FAILURE
    }
}
