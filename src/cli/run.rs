//! `sluicegate run -c FILE`: runs the gateway in the foreground until SIGTERM/SIGINT (or
//! `POST /stop`), reloading on SIGHUP.

use std::path::Path;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::server::Gateway;

/// Runs the gateway; returns the exit code.
pub fn run(config: &Path) -> i32 {
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
    let shared = gateway.shared.clone();
    let outcome = rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut stop = shared.shutdown.subscribe();
        loop {
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
            _ = done_rx => Ok(true),
            _ = term.recv() => Ok(false),
            _ = int.recv() => Ok(false),
        }
    });
    match outcome {
        Ok(true) => {
            tracing::info!("Stopped.");
            EXIT_OK
        }
        Ok(false) => {
            tracing::warn!("Second stop signal: exiting without waiting for the drain.");
            EXIT_FAILURE
        }
        Err(e) => {
            let e: std::io::Error = e;
            eprintln!("sluicegate: cannot install signal handlers: {e}");
            EXIT_FAILURE
        }
    }
}
