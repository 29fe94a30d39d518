//! Where dynamic scripts come from while the gateway runs: the code-API poller ([`api`]),
//! the directory watcher ([`directory`]) and admin pushes, each handing its change to the
//! one reloader ([`submit`]), which applies it to the process's code registry
//! ([`handle`]). The registry and the code sets are the code crate's
//! (`sluicegate_code`); this module is the part that needs the running gateway.

pub mod api;
pub mod directory;

use sluicegate_code::{Change, CodeUpdate, Outcome};
use tokio::sync::oneshot;

use crate::state::{ReloadRequest, Shared};

/// Sends `change` to the reloader and waits for the outcome (`None` once the reloader has
/// stopped).
pub async fn submit(shared: &Shared, change: Change, trigger: &'static str) -> Option<Outcome> {
    let (tx, rx) = oneshot::channel();
    let req = ReloadRequest {
        trigger,
        reply: None,
        code: Some(CodeUpdate {
            change,
            trigger,
            reply: Some(tx),
        }),
    };
    shared.reload_tx.send(req).ok()?;
    rx.await.ok()
}

/// The reloader's handling of a code update: apply it under the running snapshot's
/// settings, persist admin pushes, reply.
pub fn handle(shared: &Shared, update: CodeUpdate) {
    let snapshot = shared.snapshot.load();
    let admin = matches!(update.change, Change::Put(_) | Change::Delete(_));
    let outcome = shared
        .code
        .apply(update.change, update.trigger, snapshot.code.as_deref());
    if admin && outcome.set.is_some() {
        sluicegate_code::persist_admin(
            &shared.code,
            &shared.code.data_dir(&snapshot.settings.data_dir),
        );
    }
    if let Some(reply) = update.reply {
        let _ = reply.send(outcome);
    }
}
