//! `sluicegate wal`: inspect and repair the durable queues. With the gateway stopped it
//! opens the queue directories under `data_dir/queues/` itself; while the gateway runs
//! (its lock is held) it goes through the admin API instead, found from `-c` or given with
//! `--admin`. Both ways print the same JSON.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::admin_client::Admin;
use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use sluicegate_queue::{inspect, QueueBackend, QueueError, Queues, WalBackend};
use sluicegate_telemetry::Metrics;

/// Arguments of `sluicegate wal`.
#[derive(Debug, Args)]
pub struct WalArgs {
    /// Configuration file (gives the data directory, the admin address and queue limits).
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
    /// Data directory, instead of reading it from the configuration.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Admin address of a running gateway: go through its API.
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// The queue (default: the only one).
    #[arg(short, long, global = true)]
    pub queue: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub action: WalAction,
}

/// `sluicegate wal` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum WalAction {
    /// Depth, oldest message, dead letters and bytes of every queue (or `--queue`).
    Stats,
    /// Pending messages, oldest first (without bodies).
    List {
        /// First id to list.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most messages to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One message (pending or dead) with its headers and body.
    Show {
        /// Message id.
        id: u64,
    },
    /// The dead letters with their last error.
    DeadLetters,
    /// Put a dead letter (or all of them) back in the queue, with a new id.
    Replay {
        /// The dead letter's id.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<u64>,
        /// Replay every dead letter.
        #[arg(long)]
        all_dead: bool,
    },
    /// Delete every dead letter.
    PurgeDead,
}

/// Where the queues are, as far as the command line says.
struct Place {
    data_dir: Option<PathBuf>,
    admin: Option<String>,
    /// The configuration's settings, when `-c` gave one (the admin token).
    settings: Option<sluicegate_proxy::settings::Settings>,
    /// Queue name → `max_bytes`, from the configuration.
    limits: Vec<(String, u64)>,
    /// Queues on another engine than the local log, with its name.
    remote: Vec<(String, &'static str)>,
}

/// Runs `sluicegate wal`; returns the exit code.
pub fn wal(args: WalArgs) -> i32 {
    let place = match locate(&args) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Some(admin) = &args.admin {
        let admin = Admin::new(admin.clone(), place.settings.as_ref());
        return through_admin(&admin, args.queue.as_deref(), &args.action);
    }
    // A queue on a distributed engine has nothing on this disk to open: only the running
    // gateway (its admin API) can act on it.
    let remote = place.remote.iter().find(|(n, _)| {
        args.queue
            .as_deref()
            .map_or(place.limits.len() == 1, |q| q == n)
    });
    if let Some((name, backend)) = remote {
        return match &place.admin {
            Some(admin) => {
                let admin = Admin::new(admin.clone(), place.settings.as_ref());
                through_admin(&admin, Some(name), &args.action)
            }
            None => {
                eprintln!(
                    "queue `{name}`: offline commands are not supported by the {backend} backend \
                     (its messages are not on this disk); give --admin HOST:PORT of a running gateway"
                );
                EXIT_FAILURE
            }
        };
    }
    let Some(data_dir) = place.data_dir.clone() else {
        eprintln!("give -c FILE, --data-dir DIR or --admin HOST:PORT");
        return EXIT_USAGE;
    };
    match locally(&data_dir, &place, args.queue.as_deref(), &args.action) {
        Err(Local::Locked(e)) => match &place.admin {
            Some(admin) => {
                eprintln!("{e}; the gateway is running, asking its admin API at {admin}");
                let admin = Admin::new(admin.clone(), place.settings.as_ref());
                through_admin(&admin, args.queue.as_deref(), &args.action)
            }
            None => {
                eprintln!("{e}");
                EXIT_FAILURE
            }
        },
        Err(Local::Failed(code)) => code,
        Ok(v) => print(&v),
    }
}

fn locate(args: &WalArgs) -> Result<Place, i32> {
    let mut place = Place {
        data_dir: args.data_dir.clone(),
        admin: args.admin.clone(),
        settings: None,
        limits: Vec::new(),
        remote: Vec::new(),
    };
    if let Some(c) = &args.config {
        let snapshot = match crate::config::load_snapshot(c, 1, 1, &Metrics::default()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return Err(EXIT_USAGE);
            }
        };
        place.data_dir = place.data_dir.or(Some(snapshot.settings.data_dir.clone()));
        place.admin = place.admin.or(snapshot.settings.admin_address.clone());
        place.limits = snapshot
            .routes
            .iter()
            .filter_map(|r| r.queue.as_ref())
            .map(|q| (q.name.clone(), q.settings.max_bytes))
            .collect();
        place.remote = snapshot
            .routes
            .iter()
            .filter_map(|r| r.queue.as_ref())
            .filter(|q| !matches!(*q.engine, sluicegate_queue::Engine::Local))
            .map(|q| (q.name.clone(), q.engine.name()))
            .collect();
        place.settings = Some(snapshot.settings.clone());
    }
    Ok(place)
}

fn print(v: &Value) -> i32 {
    match serde_json::to_string_pretty(v) {
        Ok(text) => {
            println!("{text}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("cannot print the answer: {e}");
            EXIT_FAILURE
        }
    }
}

enum Local {
    /// The gateway holds the queue: ask it instead.
    Locked(QueueError),
    /// Done, with this exit code (the error was printed).
    Failed(i32),
}

/// Queue directories present under `data_dir/queues/`.
fn queue_names(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("queues"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| sluicegate_queue::config::valid_name(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn pick(names: &[String], wanted: Option<&str>, where_: &str) -> Result<String, i32> {
    match wanted {
        Some(q) if names.iter().any(|n| n == q) => Ok(q.to_string()),
        Some(q) => {
            eprintln!("no queue `{q}` in {where_} (queues: {})", names.join(", "));
            Err(EXIT_FAILURE)
        }
        None if names.len() == 1 => Ok(names[0].clone()),
        None if names.is_empty() => {
            eprintln!("no queues in {where_}");
            Err(EXIT_FAILURE)
        }
        None => {
            eprintln!(
                "several queues in {where_}: pick one with --queue ({})",
                names.join(", ")
            );
            Err(EXIT_USAGE)
        }
    }
}

fn locally(
    data_dir: &Path,
    place: &Place,
    queue: Option<&str>,
    action: &WalAction,
) -> Result<Value, Local> {
    let names = queue_names(data_dir);
    let where_ = data_dir.join("queues").display().to_string();
    let open = |name: &str| {
        let max = place
            .limits
            .iter()
            .find(|(n, _)| n == name)
            .map_or(sluicegate_queue::config::DEFAULT_MAX_BYTES, |(_, m)| *m);
        WalBackend::open(name, &Queues::queue_dir(data_dir, name), max).map_err(|e| match e {
            QueueError::Locked { .. } => Local::Locked(e),
            other => {
                eprintln!("{other}");
                Local::Failed(EXIT_FAILURE)
            }
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start a runtime: {e}");
            Local::Failed(EXIT_FAILURE)
        })?;
    if matches!(action, WalAction::Stats) && queue.is_none() {
        let mut all = Vec::new();
        for name in &names {
            let b = open(name)?;
            all.push(inspect::stats(name, &b));
            b.close();
        }
        return Ok(json!({ "queues": all }));
    }
    let name = pick(&names, queue, &where_).map_err(Local::Failed)?;
    let backend = open(&name)?;
    let b: &dyn QueueBackend = &backend;
    let result = rt.block_on(async {
        match action {
            WalAction::Stats => Ok(inspect::stats(&name, b)),
            WalAction::List { from, limit } => inspect::list(b, *from, *limit).await,
            WalAction::Show { id } => inspect::show(&name, b, *id).await,
            WalAction::DeadLetters => inspect::dead_letters(b).await,
            WalAction::Replay { all_dead: true, .. } => inspect::replay_all(b).await,
            WalAction::Replay { id, .. } => inspect::replay(b, id.unwrap_or(0)).await,
            WalAction::PurgeDead => inspect::purge_dead(b).await,
        }
    });
    backend.close();
    result.map_err(|e| {
        eprintln!("{e}");
        Local::Failed(EXIT_FAILURE)
    })
}

fn through_admin(admin: &Admin, queue: Option<&str>, action: &WalAction) -> i32 {
    let call = |method: &str, path: &str| match admin.call(method, path) {
        Ok((status, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| json!({"raw": body}));
            if (200..300).contains(&status) {
                Ok(v)
            } else {
                eprintln!("{}", v["message"].as_str().unwrap_or(&body));
                Err(EXIT_FAILURE)
            }
        }
        Err(e) => {
            eprintln!("cannot reach the admin API at {}: {e}", admin.address);
            Err(EXIT_FAILURE)
        }
    };
    let result = (|| {
        if matches!(action, WalAction::Stats) && queue.is_none() {
            return call("GET", "/queues");
        }
        let listed = call("GET", "/queues")?;
        let names: Vec<String> = listed["queues"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|q| q["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let name = pick(&names, queue, &format!("the gateway at {}", admin.address))?;
        let base = format!("/queues/{name}");
        match action {
            WalAction::Stats => call("GET", &base),
            WalAction::List { from, limit } => {
                call("GET", &format!("{base}/messages?from={from}&limit={limit}"))
            }
            WalAction::Show { id } => call("GET", &format!("{base}/messages/{id}")),
            WalAction::DeadLetters => call("GET", &format!("{base}/dead-letters")),
            WalAction::Replay { all_dead: true, .. } => {
                call("POST", &format!("{base}/dead-letters/replay"))
            }
            WalAction::Replay { id, .. } => call(
                "POST",
                &format!("{base}/dead-letters/{}/replay", id.unwrap_or(0)),
            ),
            WalAction::PurgeDead => call("DELETE", &format!("{base}/dead-letters")),
        }
    })();
    match result {
        Ok(v) => print(&v),
        Err(code) => code,
    }
}
