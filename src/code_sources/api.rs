//! The code-API poller: fetches the dynacode-compatible document every interval (with
//! jitter, `ETag`s and the last good document kept on disk), and submits each new one.

use std::path::Path;
use std::sync::Arc;

use sluicegate_code::api::{fetch, jitter, persist, Fetched, Meta};
use sluicegate_code::build::now;
use sluicegate_code::config::ApiSettings;
use sluicegate_code::{document, Change, Source};
use tokio::sync::watch;

use crate::state::Shared;

/// Waits one interval (plus jitter), or less when a reload changes the `code.api` settings.
/// `swapped` was subscribed before `api` was read from the snapshot.
async fn wait(shared: &Shared, api: &ApiSettings, swapped: &mut watch::Receiver<u64>) {
    let deadline = tokio::time::sleep(api.interval + jitter(api.jitter));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = shared.code.poll.now.notified() => return,
            _ = swapped.changed() => {}
        }
        let current = shared.snapshot.load();
        if current.code.as_ref().and_then(|c| c.api.as_ref()) != Some(api) {
            return;
        }
    }
}

#[derive(Default)]
struct PollState {
    url: Option<String>,
    etag: Option<String>,
    applied: Option<String>,
    rejected: Option<(String, String)>,
}

/// Polls the code API for as long as the process runs (a task on the control thread).
pub async fn poll(shared: Arc<Shared>) {
    let mut st = PollState::default();
    // Subscribed before the first look at the snapshot, so no swap goes unnoticed.
    let mut swapped = shared.swapped.subscribe();
    loop {
        let snapshot = shared.snapshot.load_full();
        let Some(api) = snapshot.code.as_ref().and_then(|c| c.api.clone()) else {
            st = PollState::default();
            // No code API: nothing to do until a reload configures one.
            let _ = swapped.changed().await;
            continue;
        };
        let url = api.url.to_string();
        if st.url.as_deref() != Some(url.as_str()) {
            // The first round starts from what start-up loaded (the persisted document and
            // its ETag); a new URL keeps the running document's version (an identical
            // document there is unchanged) but not the ETag, which belongs to the old one.
            let first = st.url.is_none();
            let (etag, version) = shared.code.with_sources(|s| {
                let a = &s[Source::Api.index()];
                (a.etag.clone(), a.document_version.clone())
            });
            st = PollState {
                url: Some(url.clone()),
                etag: etag.filter(|_| first),
                applied: version,
                rejected: None,
            };
            shared.code.with_sources(|s| {
                let a = &mut s[Source::Api.index()];
                a.configured = true;
                a.location = Some(url.clone());
            });
        }
        let signal = &shared.code.poll;
        signal
            .running
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let data_dir = shared.code.data_dir(&snapshot.settings.data_dir);
        poll_once(&shared, &api, &data_dir, &mut st).await;
        signal
            .running
            .store(false, std::sync::atomic::Ordering::SeqCst);
        signal.done.send_modify(|n| *n += 1);
        wait(&shared, &api, &mut swapped).await;
    }
}

async fn poll_once(shared: &Arc<Shared>, api: &ApiSettings, data_dir: &Path, st: &mut PollState) {
    let url = api.url.to_string();
    let metrics = &shared.code.metrics;
    let fetched = fetch(api, st.etag.as_deref()).await;
    let checked = now();
    let record = |result: &str, error: Option<String>, online: bool| {
        shared.code.with_sources(|s| {
            let a = &mut s[Source::Api.index()];
            a.last_check_at = Some(checked.clone());
            a.last_result = Some(result.to_string());
            a.last_error = error;
            if online {
                a.offline = false;
            }
        });
    };
    use std::sync::atomic::Ordering::Relaxed;
    match fetched {
        Err(e) => {
            metrics.fetches_failed.fetch_add(1, Relaxed);
            tracing::warn!(url, error = %e, "Code API poll failed; the running code keeps serving.");
            record("error", Some(e), false);
        }
        Ok(Fetched::NotModified) => {
            metrics.fetches_not_modified.fetch_add(1, Relaxed);
            metrics.api_answered();
            record("not_modified", None, true);
        }
        Ok(Fetched::Document { body, etag }) => {
            metrics.fetches_ok.fetch_add(1, Relaxed);
            metrics.api_answered();
            let version = sluicegate_code::version_of(&body);
            if st.applied.as_deref() == Some(version.as_str()) {
                metrics.unchanged.fetch_add(1, Relaxed);
                st.etag = etag;
                record("unchanged", None, true);
                return;
            }
            if let Some((v, e)) = &st.rejected {
                if *v == version {
                    record("rejected", Some(e.clone()), true);
                    return;
                }
            }
            let doc = match document::parse(&body) {
                Ok(d) => d,
                Err(e) => {
                    metrics.rejected.fetch_add(1, Relaxed);
                    let e = format!("malformed document: {e}");
                    tracing::error!(url, error = %e, "Code API document rejected; the running code keeps serving.");
                    st.rejected = Some((version, e.clone()));
                    record("rejected", Some(e), true);
                    return;
                }
            };
            let Some(outcome) =
                super::submit(shared, Change::Replace(Source::Api, Some(doc)), "api").await
            else {
                record("error", Some("the reloader has stopped".into()), true);
                return;
            };
            if let Some(reason) = outcome.rejected {
                st.rejected = Some((version, reason.clone()));
                record("rejected", Some(reason), true);
                return;
            }
            let meta = Meta {
                url: url.clone(),
                etag: etag.clone(),
                fetched_at: checked.clone(),
            };
            if let Err(e) = persist(data_dir, &body, &meta) {
                tracing::error!(url, error = %e, dir = %data_dir.display(), "Cannot persist the code-API document; a restart while the code API is down would start without it.");
            }
            st.applied = Some(version.clone());
            st.etag = etag.clone();
            let error = (!outcome.errors.is_empty()).then(|| {
                let names: Vec<String> = outcome
                    .errors
                    .iter()
                    .map(|e| format!("{} ({})", e.name, e.message))
                    .collect();
                format!("{} script(s) not loaded: {}", names.len(), names.join("; "))
            });
            record("updated", error, true);
            shared.code.with_sources(|s| {
                let a = &mut s[Source::Api.index()];
                a.document_version = Some(version);
                a.etag = etag;
                a.last_change_at = Some(checked.clone());
            });
        }
    }
}
