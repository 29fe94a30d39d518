//! Turns the node tree into a [`Snapshot`]: deserializes each element on its own (so one
//! bad route does not hide the problems of the next), checks references and values, builds
//! plugins through their factories, and fills in the line of every error from the tree.

use std::collections::{HashMap, HashSet};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{ListenerSettings, Settings};
use crate::state::{Chain, ChainEntry, PathRewrite, Route, Snapshot};
use sluicegate_config::file::{self, defaults};
use sluicegate_core::de::from_node;
use sluicegate_core::diag::{Diag, Diags, Path};
use sluicegate_core::yaml::{Node, NodeKind};
use sluicegate_plugins::{self as plugins, BuildCtx};
use sluicegate_proxy::router::{HeaderPattern, HostPattern, PathPattern, RouteMatch, Router};
use sluicegate_telemetry::{AccessLog, Metrics};
use sluicegate_upstream::{Protocol, Upstream};

const TOP_LEVEL: &[&str] = &[
    "workers",
    "drain_timeout_ms",
    "data_dir",
    "listeners",
    "admin",
    "access_log",
    "upstreams",
    "routes",
    "plugins",
    "lua",
    "code",
    "watch_config",
    "secrets",
    "dns",
    "cluster",
    "consumers",
    "scripts",
    "certificates",
];

/// Validates `root` into a snapshot, or returns every problem (with lines).
pub fn snapshot(
    root: &Node,
    base_dir: &FsPath,
    version: u64,
    workers: usize,
    metrics: &Metrics,
) -> Result<Snapshot, Vec<Diag>> {
    snapshot_and_parts(root, base_dir, version, workers, metrics).map(|(s, _)| s)
}

/// What routes are built with besides the snapshot's own sections: kept from a whole
/// build for later ones that change only routes ([`with_routes`]).
pub struct Parts {
    base_dir: PathBuf,
    secrets: sluicegate_secrets::SecretStore,
    lua_modules: Arc<sluicegate_lua::Modules>,
    consumers: Arc<sluicegate_plugins::consumers::Consumers>,
}

/// [`snapshot`], also returning the [`Parts`] its routes were built with.
pub fn snapshot_and_parts(
    root: &Node,
    base_dir: &FsPath,
    version: u64,
    workers: usize,
    metrics: &Metrics,
) -> Result<(Snapshot, Parts), Vec<Diag>> {
    let mut diags = Diags::default();
    let top = Path::root();
    let secrets = sluicegate_secrets::SecretStore::load(root.get("secrets"), base_dir, &mut diags);
    let lua_modules = lua_modules(root, base_dir, &mut diags);
    let consumers = std::sync::Arc::new(sluicegate_plugins::consumers::Consumers::build(
        root.get("consumers"),
        &top.key("consumers"),
        &secrets,
        &mut diags,
    ));
    let build = BuildCtx {
        base_dir,
        secrets: &secrets,
        route: None,
        lua_modules: &lua_modules,
        consumers: &consumers,
    };
    let result = match &root.kind {
        NodeKind::Map(entries) => {
            for (k, _) in entries {
                if !TOP_LEVEL.contains(&k.as_str()) {
                    diags.push(
                        &top.key(k),
                        format!("unknown key; expected one of: {}", TOP_LEVEL.join(", ")),
                    );
                }
            }
            let snapshot = build_snapshot(root, &build, version, workers, metrics, &mut diags);
            if diags.is_empty() {
                secrets.check_unresolved(root, &mut diags);
            }
            snapshot
        }
        _ => {
            diags.push(
                &top,
                format!(
                    "the configuration must be a mapping, found {}",
                    root.type_name()
                ),
            );
            None
        }
    };
    match result {
        Some(s) if diags.is_empty() => Ok((
            s,
            Parts {
                base_dir: base_dir.to_path_buf(),
                secrets,
                lua_modules,
                consumers,
            },
        )),
        _ => {
            let mut lines = HashMap::new();
            root.index_lines(&Path::root(), &mut lines);
            Err(with_lines(diags.0, &lines))
        }
    }
}

/// Fills in missing lines from the path index (falling back to the nearest parent path).
fn with_lines(mut diags: Vec<Diag>, lines: &HashMap<String, usize>) -> Vec<Diag> {
    for d in &mut diags {
        if d.line.is_some() {
            continue;
        }
        let mut p = d.path.as_str();
        loop {
            if let Some(l) = lines.get(p) {
                d.line = Some(*l);
                break;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => break,
            }
        }
    }
    diags
}

fn field<T: DeserializeOwned>(root: &Node, key: &str, diags: &mut Diags) -> Option<T> {
    let node = root.get(key)?;
    match from_node(node, &Path::root().key(key)) {
        Ok(v) => Some(v),
        Err(d) => {
            diags.0.push(d);
            None
        }
    }
}

/// Deserializes each element of list `key` on its own; returns (index, value) pairs.
fn list<T: DeserializeOwned>(root: &Node, key: &str, diags: &mut Diags) -> Vec<(usize, T)> {
    let path = Path::root().key(key);
    let Some(node) = root.get(key) else {
        return Vec::new();
    };
    match &node.kind {
        NodeKind::Null => Vec::new(),
        NodeKind::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match from_node(item, &path.index(i)) {
                Ok(v) => Some((i, v)),
                Err(d) => {
                    diags.0.push(d);
                    None
                }
            })
            .collect(),
        _ => {
            diags.push(
                &path,
                format!("expected a list, found {}", node.type_name()),
            );
            Vec::new()
        }
    }
}

fn build_snapshot(
    root: &Node,
    build: &BuildCtx<'_>,
    version: u64,
    workers: usize,
    metrics: &Metrics,
    diags: &mut Diags,
) -> Option<Snapshot> {
    let settings = settings(root, build, diags);
    let certificates = certificates(root, build, diags);
    let listeners = listeners(root, build.base_dir, &certificates, diags);
    let access_log = access_log(root, build.base_dir, diags);
    let lua = lua_settings(root, build.lua_modules, diags);
    // Balancers keep one cursor per worker: size them for the workers that will run.
    let worker_count = if workers > 0 {
        workers
    } else {
        settings.worker_count()
    };
    let dns_cfg: sluicegate_upstream::dns::DnsConfig =
        field(root, "dns", diags).unwrap_or_default();
    let dns = sluicegate_upstream::dns::settings(
        dns_cfg,
        build.base_dir,
        &Path::root().key("dns"),
        diags,
    );
    let upstream_runtime = Arc::new(sluicegate_upstream::live::Runtime::new(dns));
    let upstreams = upstreams(root, build.base_dir, worker_count, metrics, diags);
    for u in upstreams.values() {
        upstream_runtime.publish(u);
    }
    let mut global = plugin_chain(
        root.get("plugins"),
        &Path::root().key("plugins"),
        build,
        diags,
    );
    global.extend(script_chain(
        root.get("scripts"),
        &Path::root().key("scripts"),
        build,
        diags,
    ));
    check_upstream_refs(&global, &upstreams, diags);
    let code = code_settings(root, build.base_dir, build.lua_modules, diags);
    if let Some(c) = &code {
        // Dynamic scripts run in every chain (see `sluicegate_code::plugin`).
        global.push(ChainEntry {
            plugin: Arc::new(sluicegate_code::plugin::CodePlugin::new(c.phases)),
            priority: c.priority,
        });
    }
    let watch_config: Option<bool> = field(root, "watch_config", diags);
    let (routes, matches) = routes(root, &upstreams, &global, build, metrics, diags);
    if !diags.is_empty() {
        return None;
    }
    Some(Snapshot {
        version,
        source: Default::default(),
        loaded_at: SystemTime::now(),
        settings,
        listeners,
        router: Router::new(matches),
        routes,
        global: Chain::new(global),
        upstreams,
        access_log: Arc::new(access_log?),
        unmatched: metrics.route("_unmatched"),
        lua: Arc::new(lua),
        queues: Arc::default(),
        code,
        watch_config: watch_config.unwrap_or(false),
        source_digest: [0; 32],
        upstream_runtime,
    })
}

fn code_settings(
    root: &Node,
    base_dir: &FsPath,
    modules: &Arc<sluicegate_lua::Modules>,
    diags: &mut Diags,
) -> Option<Arc<sluicegate_code::CodeSettings>> {
    let node = root.get("code")?;
    let path = Path::root().key("code");
    Some(Arc::new(sluicegate_code::CodeSettings {
        lua_modules: modules.clone(),
        ..sluicegate_code::config::from_node(node, &path, base_dir, diags)
    }))
}

/// Compiles the modules under `lua.package_path`; every problem is recorded at the entry
/// of its directory, with the file and line in the message.
fn lua_modules(root: &Node, base_dir: &FsPath, diags: &mut Diags) -> Arc<sluicegate_lua::Modules> {
    let Some(node) = root.get("lua").and_then(|l| l.get("package_path")) else {
        return sluicegate_lua::Modules::empty();
    };
    let path = Path::root().key("lua").key("package_path");
    let entries: file::OneOrMany = match from_node(node, &path) {
        Ok(e) => e,
        // Reported with the rest of the `lua:` section.
        Err(_) => return sluicegate_lua::Modules::empty(),
    };
    let single = matches!(node.kind, NodeKind::Str(_));
    let mut dirs = Vec::new();
    let mut at = Vec::new();
    for (i, entry) in entries.0.iter().enumerate() {
        let here = if single { path.clone() } else { path.index(i) };
        // OpenResty's `lua_package_path` style is accepted: `dir/?.lua;dir/?/init.lua;;`.
        for part in entry.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let dir = part
                .strip_suffix("/?/init.lua")
                .or_else(|| part.strip_suffix("/?.lua"))
                .unwrap_or(part);
            if dir.contains('?') {
                diags.push(
                    &here,
                    format!(
                        "`{part}`: give a directory; `?.lua` and `?/init.lua` are searched in it"
                    ),
                );
                continue;
            }
            let full = base_dir.join(dir);
            if !full.is_dir() {
                diags.push(&here, format!("`{}` is not a directory", full.display()));
                continue;
            }
            if !dirs.contains(&full) {
                dirs.push(full);
                at.push(here.clone());
            }
        }
    }
    match sluicegate_lua::Modules::load(&dirs) {
        Ok(m) => Arc::new(m),
        Err(errors) => {
            for e in errors {
                let here = at.get(e.dir).cloned().unwrap_or_else(|| path.clone());
                diags.push(
                    &here,
                    format!(
                        "module file `{}`: {}",
                        dirs[e.dir].join(&e.file).display(),
                        e.message
                    ),
                );
            }
            sluicegate_lua::Modules::empty()
        }
    }
}

fn lua_settings(
    root: &Node,
    modules: &Arc<sluicegate_lua::Modules>,
    diags: &mut Diags,
) -> sluicegate_lua::LuaSettings {
    let cfg: file::LuaSectionConfig = field(root, "lua", diags).unwrap_or_default();
    let path = Path::root().key("lua");
    let mut s = sluicegate_lua::LuaSettings {
        modules: modules.clone(),
        ..Default::default()
    };
    if let Some(ms) = cfg.cpu_budget_ms {
        if !(1..=60_000).contains(&ms) {
            diags.push(&path.key("cpu_budget_ms"), "must be between 1 and 60000");
        }
        s.cpu_budget = Duration::from_millis(ms.clamp(1, 60_000));
    }
    if let Some(bytes) = cfg.memory_limit_bytes {
        if bytes < 4 * 1024 * 1024 {
            diags.push(
                &path.key("memory_limit_bytes"),
                "must be at least 4194304 (4 MiB)",
            );
        }
        s.memory_limit = bytes;
    }
    for (name, size) in cfg.shared_dicts {
        if size < 4096 {
            diags.push(
                &path.key("shared_dicts").key(&name),
                "a dictionary needs at least 4096 bytes",
            );
        }
        s.shared_dicts.push((name, size));
    }
    if let Some(n) = cfg.max_pending_timers {
        s.max_pending_timers = n;
    }
    if let Some(n) = cfg.max_running_timers {
        s.max_running_timers = n;
    }
    s
}

fn settings(root: &Node, build: &BuildCtx<'_>, diags: &mut Diags) -> Settings {
    let workers: Option<usize> = field(root, "workers", diags);
    let drain: Option<u64> = field(root, "drain_timeout_ms", diags);
    let data_dir: Option<String> = field(root, "data_dir", diags);
    let admin: file::AdminConfig = field(root, "admin", diags).unwrap_or_default();
    let admin_path = Path::root().key("admin");
    if admin.enabled {
        check_address(&admin.address, &admin_path.key("address"), diags);
    }
    let mut admin_tokens = Vec::new();
    for (i, t) in admin.tokens.iter().enumerate() {
        let at = admin_path.key("tokens").index(i);
        match sluicegate_secrets::SecretRef::parse(t) {
            Ok(r) => {
                if let Some(secret) = build.secrets.resolve(&r, &at, diags) {
                    // Anything reachable from other hosts needs a token that resists
                    // guessing; a loopback-only API may use a short one for local work.
                    let min = if is_loopback(&admin.address) { 1 } else { 16 };
                    if secret.values().any(|v| v.expose().len() < min) {
                        diags.push(
                            &at,
                            format!(
                                "secret `{}`: an admin token on `{}` needs at least {min} bytes",
                                secret.name(),
                                admin.address
                            ),
                        );
                    }
                    admin_tokens.extend(secret.values().cloned());
                }
            }
            Err(e) => diags.push(&at, e),
        }
    }
    if admin.enabled && admin_tokens.is_empty() && !is_loopback(&admin.address) {
        diags.push(
            &admin_path.key("tokens"),
            format!(
                "the admin API on `{}` is reachable from other hosts: give it `tokens` (or bind it to 127.0.0.1)",
                admin.address
            ),
        );
    }
    for (i, p) in admin.public_paths.iter().enumerate() {
        if !p.starts_with('/') {
            diags.push(
                &admin_path.key("public_paths").index(i),
                "a path starts with `/`",
            );
        }
    }
    Settings {
        workers: workers.unwrap_or(0),
        drain_timeout: Duration::from_millis(drain.unwrap_or(defaults::DRAIN_TIMEOUT_MS)),
        admin_address: admin.enabled.then_some(admin.address),
        data_dir: build
            .base_dir
            .join(data_dir.unwrap_or_else(|| "data".to_string())),
        admin_tokens,
        admin_public_paths: admin.public_paths,
        cluster: cluster_settings(root, diags),
    }
}

/// Whether `addr` (`host:port`) only accepts connections from this machine.
fn is_loopback(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs() {
        Ok(mut addrs) => addrs.all(|a| a.ip().is_loopback()),
        Err(_) => true, // reported as a bad address already
    }
}

/// The `cluster:` section, checked.
fn cluster_settings(
    root: &Node,
    diags: &mut Diags,
) -> Option<sluicegate_proxy::settings::ClusterSettings> {
    let cfg: file::ClusterConfig = field(root, "cluster", diags)?;
    let path = Path::root().key("cluster");
    if !(cfg.store.starts_with("postgresql://") || cfg.store.starts_with("postgres://")) {
        diags.push(
            &path.key("store"),
            "expected a PostgreSQL URL (`postgresql://user@host:port/database`)",
        );
    }
    let node_name = match cfg.node_name.filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    };
    if node_name.len() > 200 || node_name.chars().any(|c| c.is_control()) {
        diags.push(&path.key("node_name"), "at most 200 printable characters");
    }
    let ms = |v: Option<u64>, default: u64, key: &str, diags: &mut Diags| {
        let v = v.unwrap_or(default);
        if !(10..=600_000).contains(&v) {
            diags.push(&path.key(key), "must be between 10 and 600000");
        }
        Duration::from_millis(v.clamp(10, 600_000))
    };
    Some(sluicegate_proxy::settings::ClusterSettings {
        store: cfg.store,
        node_name,
        poll_interval: ms(cfg.poll_interval_ms, 1_000, "poll_interval_ms", diags),
        store_timeout: ms(cfg.store_timeout_ms, 3_000, "store_timeout_ms", diags),
    })
}

fn check_address(addr: &str, path: &Path, diags: &mut Diags) {
    use std::net::ToSocketAddrs;
    if let Err(e) = addr.to_socket_addrs() {
        diags.push(path, format!("`{addr}` is not a host:port address ({e})"));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateConfig {
    name: String,
    snis: Vec<String>,
    cert: Option<String>,
    key: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
}

/// The `certificates:` section: certificates TLS listeners serve by SNI. A chain is PEM
/// text (`cert`) or a file (`cert_file`); its key a file (`key_file`), a secret reference
/// (`key: "${secret:NAME}"`), or — for an entity of the cluster store, which holds it — the
/// PEM text itself.
fn certificates(
    root: &Node,
    build: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Vec<sluicegate_server::tls::SniCertificate> {
    let path = Path::root().key("certificates");
    let items = match root.get("certificates").map(|n| &n.kind) {
        None | Some(NodeKind::Null) => return Vec::new(),
        Some(NodeKind::Seq(items)) => items,
        Some(_) => {
            diags.push(&path, "expected a list of certificates");
            return Vec::new();
        }
    };
    let read = |file: &str, p: &Path, diags: &mut Diags| {
        let full = build.base_dir.join(file);
        std::fs::read(&full)
            .map_err(|e| diags.push(p, format!("cannot read `{}`: {e}", full.display())))
            .ok()
    };
    let mut names = HashSet::new();
    let mut sni_at: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        let Ok(c) = from_node::<CertificateConfig>(item, &p).map_err(|d| diags.0.push(d)) else {
            continue;
        };
        if !names.insert(c.name.clone()) {
            diags.push(
                &p.key("name"),
                format!("duplicate certificate name `{}`", c.name),
            );
        }
        if c.snis.is_empty() {
            diags.push(&p.key("snis"), "give the host names it is served for");
        }
        let mut snis = Vec::new();
        for (j, sni) in c.snis.iter().enumerate() {
            let sp = p.key("snis").index(j);
            let name = sni.to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            let valid = !bare.is_empty()
                && bare.len() <= 253
                && bare.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                diags.push(&sp, format!("`{sni}` is not a host name (or `*.` and one)"));
                continue;
            }
            if let Some(first) = sni_at.insert(name.clone(), sp.to_string()) {
                diags.push(&sp, format!("`{name}` is also served by {first}"));
                continue;
            }
            snis.push(name);
        }
        let cert = match (&c.cert, &c.cert_file) {
            (Some(pem), None) => Some(pem.as_bytes().to_vec()),
            (None, Some(file)) => read(file, &p.key("cert_file"), diags),
            _ => {
                diags.push(&p, "give exactly one of `cert` and `cert_file`");
                None
            }
        };
        let key = match (&c.key, &c.key_file) {
            (Some(text), None) => build
                .secrets
                .resolve_material(text, item.line, &p.key("key"), diags)
                .first()
                .map(|v| v.expose().to_vec()),
            (None, Some(file)) => read(file, &p.key("key_file"), diags),
            _ => {
                diags.push(&p, "give exactly one of `key` and `key_file`");
                None
            }
        };
        if let (Some(cert), Some(key)) = (cert, key) {
            match sluicegate_server::tls::certified_key(&cert, &key) {
                Ok(key) => out.push(sluicegate_server::tls::SniCertificate { snis, key }),
                Err(e) => diags.push(&p, e),
            }
        }
    }
    out
}

fn listeners(
    root: &Node,
    base_dir: &FsPath,
    certificates: &[sluicegate_server::tls::SniCertificate],
    diags: &mut Diags,
) -> Vec<Arc<ListenerSettings>> {
    let path = Path::root().key("listeners");
    let empty = match root.get("listeners").map(|n| &n.kind) {
        None | Some(NodeKind::Null) => true,
        Some(NodeKind::Seq(items)) => items.is_empty(),
        Some(_) => false,
    };
    if empty {
        diags.push(&path, "at least one listener is required");
    }
    let mut out = Vec::new();
    for (i, l) in list::<file::ListenerConfig>(root, "listeners", diags) {
        let p = path.index(i);
        check_address(&l.address, &p.key("address"), diags);
        let tls = l.tls.as_ref().and_then(|t| {
            // Without a certificate of its own or any by SNI, a TLS listener serves no one:
            // an error, except in cluster mode, where certificates come from the store.
            if t.cert_file.is_none()
                && t.key_file.is_none()
                && certificates.is_empty()
                && root.get("cluster").is_none()
            {
                diags.push(
                    &p.key("tls"),
                    "give `cert_file` and `key_file`, or `certificates:` served by SNI",
                );
                return None;
            }
            match sluicegate_server::tls::server_config(t, base_dir, l.http2, certificates) {
                Ok(c) => Some(c),
                Err(e) => {
                    diags.push(&p.key("tls"), e);
                    None
                }
            }
        });
        let max_header_bytes = l.max_header_bytes.unwrap_or(defaults::MAX_HEADER_BYTES);
        if !(1024..=1024 * 1024).contains(&max_header_bytes) {
            diags.push(
                &p.key("max_header_bytes"),
                "must be between 1024 and 1048576",
            );
        }
        check_timeouts(
            &p,
            &[
                ("client_header_timeout_ms", l.client_header_timeout_ms),
                ("client_body_timeout_ms", l.client_body_timeout_ms),
                ("client_send_timeout_ms", l.client_send_timeout_ms),
            ],
            diags,
        );
        out.push(Arc::new(ListenerSettings {
            name: l.name.clone().unwrap_or_else(|| l.address.clone()),
            address: l.address,
            tls,
            http2: l.http2,
            trust_request_id: l.trust_request_id,
            max_header_bytes,
            max_body_bytes: l.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
            header_timeout: ms(l.client_header_timeout_ms, defaults::CLIENT_TIMEOUT_MS),
            body_timeout: ms(l.client_body_timeout_ms, defaults::CLIENT_TIMEOUT_MS),
            send_timeout: ms(l.client_send_timeout_ms, defaults::CLIENT_TIMEOUT_MS),
        }));
    }
    out
}

fn access_log(root: &Node, base_dir: &FsPath, diags: &mut Diags) -> Option<AccessLog> {
    let cfg: file::AccessLogConfig = field(root, "access_log", diags).unwrap_or_default();
    let path = Path::root().key("access_log");
    match cfg.target.as_str() {
        "off" | "stdout" | "stderr" => {}
        "file" => {
            if cfg.path.is_none() {
                diags.push(&path.key("path"), "required when target is `file`");
                return None;
            }
        }
        other => {
            diags.push(
                &path.key("target"),
                format!("unknown target `{other}`; expected stdout, stderr, file or off"),
            );
            return None;
        }
    }
    let file_path = cfg.path.map(|p| base_dir.join(p).display().to_string());
    match AccessLog::open(&cfg.target, file_path.as_deref()) {
        Ok(log) => Some(log),
        Err(e) => {
            diags.push(&path, format!("cannot open the access log: {e}"));
            None
        }
    }
}

fn upstreams(
    root: &Node,
    base_dir: &FsPath,
    workers: usize,
    metrics: &Metrics,
    diags: &mut Diags,
) -> HashMap<String, Arc<Upstream>> {
    let path = Path::root().key("upstreams");
    let mut out = HashMap::new();
    let tls_loader = sluicegate_upstream::tls::Loader::new(base_dir);
    for (i, u) in list::<file::UpstreamConfig>(root, "upstreams", diags) {
        let p = path.index(i);
        if out.contains_key(&u.name) {
            diags.push(
                &p.key("name"),
                format!("duplicate upstream name `{}`", u.name),
            );
        }
        if u.targets.is_empty() {
            diags.push(&p.key("targets"), "at least one target is required");
        }
        let protocol = match u.protocol.as_str() {
            "http1" => Protocol::Http1,
            "http2" => Protocol::Http2,
            other => {
                diags.push(
                    &p.key("protocol"),
                    format!("unknown protocol `{other}`; expected http1 or http2"),
                );
                Protocol::Http1
            }
        };
        let policy = sluicegate_upstream::config::policy(&u.balance, u.hash_on.clone(), &p, diags);
        let health = sluicegate_upstream::config::health(u.health.clone(), &p.key("health"), diags);
        let circuit = sluicegate_upstream::config::circuit(
            u.circuit_breaker.clone(),
            &p.key("circuit_breaker"),
            diags,
        );
        let mut tls_fingerprint = 0;
        let tls = match u.scheme.as_str() {
            "http" => {
                if sluicegate_upstream::tls::is_set(&u.tls) {
                    diags.push(&p.key("tls"), "TLS settings need `scheme: https`");
                }
                None
            }
            "https" => match tls_loader.load(&u.name, &u.tls, protocol) {
                Ok(loaded) => {
                    tls_fingerprint = loaded.fingerprint;
                    Some(loaded.tls)
                }
                Err(errors) => {
                    for (key, e) in errors {
                        diags.push(&p.key("tls").key(key), e);
                    }
                    None
                }
            },
            other => {
                diags.push(
                    &p.key("scheme"),
                    format!("unknown scheme `{other}`; expected http or https"),
                );
                None
            }
        };
        let specs = sluicegate_upstream::config::target_specs(&u.targets, &p.key("targets"), diags);
        check_timeouts(
            &p,
            &[
                ("connect_timeout_ms", u.connect_timeout_ms),
                ("read_timeout_ms", u.read_timeout_ms),
                ("write_timeout_ms", u.write_timeout_ms),
            ],
            diags,
        );
        check_timeouts(
            &p.key("pool"),
            &[("idle_timeout_ms", u.pool.idle_timeout_ms)],
            diags,
        );
        let upstream = Upstream {
            live: Arc::new(sluicegate_upstream::live::LiveTargets::new(
                sluicegate_upstream::live::TargetSet::new(Vec::new(), workers, &policy, false),
            )),
            pool_seed: pool_key("", u.scheme.as_str(), protocol, tls_fingerprint),
            workers,
            policy,
            health,
            circuit,
            metrics: metrics.upstream(&u.name),
            name: u.name.clone(),
            specs,
            protocol,
            tls,
            connect_timeout: ms(u.connect_timeout_ms, defaults::CONNECT_TIMEOUT_MS),
            read_timeout: ms(u.read_timeout_ms, defaults::UPSTREAM_IO_TIMEOUT_MS),
            write_timeout: ms(u.write_timeout_ms, defaults::UPSTREAM_IO_TIMEOUT_MS),
            max_idle: u
                .pool
                .max_idle_per_target
                .unwrap_or(defaults::POOL_MAX_IDLE),
            idle_timeout: ms(u.pool.idle_timeout_ms, defaults::POOL_IDLE_TIMEOUT_MS),
        };
        out.insert(u.name, Arc::new(upstream));
    }
    out
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

/// Timeouts must be positive: a zero would fail every request (or never wait).
fn check_timeouts(path: &Path, values: &[(&str, Option<u64>)], diags: &mut Diags) {
    for (key, v) in values {
        if *v == Some(0) {
            diags.push(&path.key(key), "must be at least 1 ms");
        }
    }
}

/// `tls_fingerprint` covers the TLS settings and the contents of their files, so a reload
/// that changes a certificate gets new connections.
fn pool_key(address: &str, scheme: &str, protocol: Protocol, tls_fingerprint: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (address, scheme, protocol, tls_fingerprint).hash(&mut h);
    h.finish()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginEntry {
    name: String,
    priority: Option<i32>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

/// Builds the plugin entries of list `node` at `path`.
fn plugin_chain(
    node: Option<&Node>,
    path: &Path,
    build: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Vec<ChainEntry> {
    let Some(node) = node else { return Vec::new() };
    let items = match &node.kind {
        NodeKind::Seq(items) => items,
        NodeKind::Null => return Vec::new(),
        _ => {
            diags.push(
                path,
                format!("expected a list of plugins, found {}", node.type_name()),
            );
            return Vec::new();
        }
    };
    let null = Node {
        kind: NodeKind::Null,
        line: node.line,
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        let mut head = item.clone();
        let config = head.take("config").unwrap_or_else(|| null.clone());
        let entry: PluginEntry = match from_node(&head, &p) {
            Ok(e) => e,
            Err(d) => {
                diags.0.push(d);
                continue;
            }
        };
        let Some(builtin) = plugins::builtin(&entry.name) else {
            let known: Vec<&str> = plugins::BUILTIN.iter().map(|b| b.name).collect();
            diags.push(
                &p.key("name"),
                format!(
                    "unknown plugin `{}`; known plugins: {}",
                    entry.name,
                    known.join(", ")
                ),
            );
            continue;
        };
        if let Some(plugin) = (builtin.build)(&config, &p.key("config"), build, diags) {
            if entry.enabled {
                out.push(ChainEntry {
                    plugin,
                    priority: entry.priority.unwrap_or(builtin.priority),
                });
            }
        }
    }
    out
}

/// The `scripts:` section: named Lua scripts that run on every route, each entry what a
/// global `lua` plugin's `config` holds (`name`, `phase`, `hosts`, `code` or `file`). In
/// cluster mode they are entities of the store, like the scripts `PUT /scripts` pushes to
/// one node.
fn script_chain(
    node: Option<&Node>,
    path: &Path,
    build: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Vec<ChainEntry> {
    let items = match node.map(|n| &n.kind) {
        None | Some(NodeKind::Null) => return Vec::new(),
        Some(NodeKind::Seq(items)) => items,
        Some(_) => {
            diags.push(path, "expected a list of scripts");
            return Vec::new();
        }
    };
    let Some(lua) = plugins::builtin("lua") else {
        return Vec::new();
    };
    let mut names = HashMap::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        match item.get("name").map(|n| &n.kind) {
            Some(NodeKind::Str(name)) => {
                if let Some(first) = names.insert(name.clone(), i) {
                    diags.push(
                        &p.key("name"),
                        format!("script `{name}` is also {}", path.index(first)),
                    );
                    continue;
                }
            }
            _ => {
                diags.push(&p.key("name"), "a script needs a `name`");
                continue;
            }
        }
        if let Some(plugin) = (lua.build)(item, &p, build, diags) {
            out.push(ChainEntry {
                plugin,
                priority: lua.priority,
            });
        }
    }
    out
}

/// Reports the upstream names plugins refer to that the configuration does not define.
fn check_upstream_refs(
    entries: &[ChainEntry],
    upstreams: &HashMap<String, Arc<Upstream>>,
    diags: &mut Diags,
) {
    for entry in entries {
        for (path, name) in entry.plugin.upstream_refs() {
            if !upstreams.contains_key(&name) {
                diags.push(&path, format!("unknown upstream `{name}`"));
            }
        }
    }
}

/// The names the routes built so far took: each route's, each queue's.
#[derive(Default)]
struct Taken {
    routes: HashSet<String>,
    queues: HashSet<String>,
}

fn routes(
    root: &Node,
    upstreams: &HashMap<String, Arc<Upstream>>,
    global: &[ChainEntry],
    build: &BuildCtx<'_>,
    metrics: &Metrics,
    diags: &mut Diags,
) -> (Vec<Arc<Route>>, Vec<RouteMatch>) {
    let path = Path::root().key("routes");
    let items: &[Node] = match root.get("routes").map(|n| &n.kind) {
        Some(NodeKind::Seq(items)) => items,
        None | Some(NodeKind::Null) => &[],
        Some(_) => {
            diags.push(&path, "expected a list of routes");
            &[]
        }
    };
    let mut taken = Taken::default();
    let ctx = RouteCtx {
        upstreams,
        global,
        build,
        metrics,
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| route(i, item, &ctx, &mut taken, diags))
        .unzip()
}

/// What every route of one build is built against.
struct RouteCtx<'a> {
    upstreams: &'a HashMap<String, Arc<Upstream>>,
    global: &'a [ChainEntry],
    build: &'a BuildCtx<'a>,
    metrics: &'a Metrics,
}

/// Route `i` of the `routes:` section, and its conditions.
fn route(
    i: usize,
    item: &Node,
    ctx: &RouteCtx<'_>,
    taken: &mut Taken,
    diags: &mut Diags,
) -> Option<(Arc<Route>, RouteMatch)> {
    // One route is the unit of a build's pacing (a reload or a cluster change).
    sluicegate_core::pace::point();
    let RouteCtx {
        upstreams,
        global,
        build,
        metrics,
    } = *ctx;
    let p = Path::root().key("routes").index(i);
    let plugin_node = item.get("plugins");
    let metadata_node = item.get("metadata");
    let rc: file::RouteConfig = match from_node(item, &p) {
        Ok(r) => r,
        Err(d) => {
            diags.0.push(d);
            return None;
        }
    };
    let name = rc.name.clone().unwrap_or_else(|| format!("route-{i}"));
    if !taken.routes.insert(name.clone()) {
        diags.push(&p.key("name"), format!("duplicate route name `{name}`"));
    }
    let upstream = rc.upstream.as_ref().and_then(|u| match upstreams.get(u) {
        Some(up) => Some(up.clone()),
        None => {
            diags.push(&p.key("upstream"), format!("unknown upstream `{u}`"));
            None
        }
    });
    let route_build = BuildCtx {
        route: Some(&name),
        ..*build
    };
    let own = plugin_chain(plugin_node, &p.key("plugins"), &route_build, diags);
    check_upstream_refs(&own, upstreams, diags);
    let cluster_header = rc.cluster_header.as_ref().and_then(|h| {
        if rc.upstream.is_some() {
            diags.push(
                &p.key("cluster_header"),
                "give either `upstream` or `cluster_header`, not both",
            );
        }
        if rc.queue.is_some() {
            diags.push(
                &p.key("cluster_header"),
                "a queued route delivers to its `upstream`; `cluster_header` cannot choose one",
            );
        }
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                diags.push(
                    &p.key("cluster_header"),
                    format!("invalid header name `{h}`"),
                );
                None
            }
        }
    });
    let metadata = metadata_node.and_then(|node| {
        match from_node::<serde_json::Value>(node, &p.key("metadata")) {
            Ok(serde_json::Value::Object(map)) => {
                Some(sluicegate_core::context::RouteMetadata(Arc::new(map)))
            }
            Ok(_) => {
                diags.push(&p.key("metadata"), "expected a mapping");
                None
            }
            Err(d) => {
                diags.0.push(d);
                None
            }
        }
    });
    if rc.upstream.is_none()
        && rc.cluster_header.is_none()
        && !own.iter().chain(global.iter()).any(|e| e.plugin.answers())
    {
        diags.push(
            &p,
            "a route needs an `upstream`, a `cluster_header` or a plugin that answers requests",
        );
    }
    let queue = rc.queue.and_then(|q| {
        let content = own
            .iter()
            .any(|e| e.plugin.phases().contains(plugins::Phase::Content));
        let ctx = sluicegate_queue::config::RouteCtx {
            route: &name,
            has_upstream: rc.upstream.is_some(),
            has_content_plugin: content,
        };
        sluicegate_queue::config::validate_route(q, &ctx, &p.key("queue"), &mut taken.queues, diags)
    });
    let retry = rc
        .retry
        .map(|r| Arc::new(sluicegate_proxy::retry::policy(r, &p.key("retry"), diags)));
    let mut entries = global.to_vec();
    entries.extend(own);
    let matcher = route_match(&rc.matcher, &p.key("match"), diags);
    let route = Arc::new(Route {
        metrics: metrics.route(&name),
        name,
        upstream,
        rewrite: rc.rewrite.map(|r| rewrite(r, &p.key("rewrite"), diags)),
        chain: Chain::new(entries),
        queue,
        retry,
        metadata,
        cluster_header,
    });
    Some((route, matcher))
}

/// Where route `i` of a build that changes only routes comes from.
pub enum RouteSource {
    /// The running snapshot's route at this index, unchanged.
    Keep(usize),
    /// A new or changed route's entry.
    Build(Node),
}

/// The running snapshot `current` with its routes replaced by `routes` and every other
/// section as it was, built with the [`Parts`] of the whole build it came from. Each route
/// to build is validated as [`snapshot`] would; the checks across routes (names, queue
/// names) see every route. `None` on any problem: the caller then builds the whole
/// configuration, which reports each with its path and line.
pub fn with_routes(
    current: &Snapshot,
    parts: &Parts,
    routes: Vec<RouteSource>,
    version: u64,
    metrics: &Metrics,
) -> Option<Snapshot> {
    let build = BuildCtx {
        base_dir: &parts.base_dir,
        secrets: &parts.secrets,
        route: None,
        lua_modules: &parts.lua_modules,
        consumers: &parts.consumers,
    };
    let ctx = RouteCtx {
        upstreams: &current.upstreams,
        global: &current.global.entries,
        build: &build,
        metrics,
    };
    // The routes kept were valid together: each route built is checked against them and
    // against the other routes built, as a whole build checks it.
    let kept = |source: &RouteSource| match source {
        RouteSource::Keep(j) => current.routes.get(*j),
        RouteSource::Build(_) => None,
    };
    let mut taken = Taken {
        routes: HashSet::new(),
        queues: routes
            .iter()
            .filter_map(kept)
            .filter_map(|r| Some(r.queue.as_ref()?.name.clone()))
            .collect(),
    };
    // Routes changed in place (every kept route at its index): the routing table is the
    // running one with the changed routes' entries replaced.
    let in_place = routes.len() == current.routes.len()
        && routes.iter().enumerate().all(|(i, source)| match source {
            RouteSource::Keep(j) => *j == i,
            RouteSource::Build(_) => true,
        });
    let changed: Vec<usize> = routes
        .iter()
        .enumerate()
        .filter(|(_, source)| matches!(source, RouteSource::Build(_)))
        .map(|(i, _)| i)
        .collect();
    let mut diags = Diags::default();
    let mut built = Vec::with_capacity(routes.len());
    let mut matches = Vec::with_capacity(routes.len());
    let current_matches = current.router.matches();
    for (i, source) in routes.iter().enumerate() {
        match source {
            RouteSource::Keep(j) => {
                sluicegate_core::pace::point();
                built.push(current.routes.get(*j)?.clone());
                matches.push(current_matches.get(*j)?.clone());
            }
            RouteSource::Build(item) => {
                let (route, matcher) = route(i, item, &ctx, &mut taken, &mut diags)?;
                built.push(route);
                matches.push(Arc::new(matcher));
            }
        }
    }
    // A few built names are compared with each kept route's (cheaper, over every route,
    // than hashing each kept name).
    let clash = |name: &str| {
        if taken.routes.len() <= 8 {
            taken.routes.iter().any(|t| t == name)
        } else {
            taken.routes.contains(name)
        }
    };
    if !taken.routes.is_empty() && routes.iter().filter_map(kept).any(|r| clash(&r.name)) {
        return None;
    }
    if !diags.is_empty() {
        return None;
    }
    Some(Snapshot {
        version,
        source: current.source.clone(),
        loaded_at: SystemTime::now(),
        settings: current.settings.clone(),
        listeners: current.listeners.clone(),
        router: if in_place {
            current.router.with_changed(matches, &changed)
        } else {
            Router::of_shared(matches)
        },
        routes: built,
        global: current.global.clone(),
        upstreams: current.upstreams.clone(),
        access_log: current.access_log.clone(),
        unmatched: current.unmatched.clone(),
        lua: current.lua.clone(),
        queues: current.queues.clone(),
        code: current.code.clone(),
        watch_config: current.watch_config,
        source_digest: current.source_digest,
        upstream_runtime: current.upstream_runtime.clone(),
    })
}

fn rewrite(r: file::RewriteConfig, path: &Path, diags: &mut Diags) -> PathRewrite {
    for (key, v) in [
        ("strip_prefix", &r.strip_prefix),
        ("add_prefix", &r.add_prefix),
    ] {
        if let Some(v) = v {
            if !v.starts_with('/') {
                diags.push(&path.key(key), "must start with `/`");
            }
        }
    }
    let regex = r.regex.and_then(|x| match regex::Regex::new(&x.pattern) {
        Ok(re) => Some((re, x.replacement)),
        Err(e) => {
            diags.push(
                &path.key("regex").key("pattern"),
                format!("invalid regex: {e}"),
            );
            None
        }
    });
    PathRewrite {
        strip_prefix: r.strip_prefix,
        add_prefix: r.add_prefix,
        regex,
    }
}

fn compile(re: &str, path: &Path, diags: &mut Diags) -> Option<regex::Regex> {
    match regex::Regex::new(re.trim()) {
        Ok(r) => Some(r),
        Err(e) => {
            diags.push(path, format!("invalid regex: {e}"));
            None
        }
    }
}

fn route_match(m: &file::MatchConfig, path: &Path, diags: &mut Diags) -> RouteMatch {
    let mut out = RouteMatch::default();
    for (i, h) in m.hosts.0.iter().enumerate() {
        let p = path.key("hosts").index(i);
        let pattern = if let Some(re) = h.strip_prefix('~') {
            compile(re, &p, diags).map(HostPattern::Regex)
        } else if let Some(suffix) = h.strip_prefix("*.") {
            Some(HostPattern::Wildcard(
                format!(".{}", suffix.to_ascii_lowercase()).into(),
            ))
        } else if h.contains('*') {
            diags.push(
                &p,
                "a wildcard is only allowed as the first label (`*.example.com`)",
            );
            None
        } else {
            Some(HostPattern::Exact(h.to_ascii_lowercase().into()))
        };
        out.hosts.extend(pattern);
    }
    for (i, s) in m.paths.0.iter().enumerate() {
        let p = path.key("paths").index(i);
        let pattern = if let Some(re) = s.strip_prefix('~') {
            compile(re, &p, diags).map(PathPattern::Regex)
        } else if let Some(exact) = s.strip_prefix('=') {
            Some(PathPattern::Exact(exact.trim().into()))
        } else if s.starts_with('/') {
            Some(PathPattern::Prefix(s.as_str().into()))
        } else {
            diags.push(
                &p,
                "a path must start with `/` (prefix), `= /` (exact) or `~` (regex)",
            );
            None
        };
        out.paths.extend(pattern);
    }
    for (i, meth) in m.methods.0.iter().enumerate() {
        match http::Method::from_bytes(meth.to_ascii_uppercase().as_bytes()) {
            Ok(mm) => out.methods.push(mm),
            Err(_) => diags.push(
                &path.key("methods").index(i),
                format!("invalid method `{meth}`"),
            ),
        }
    }
    for (name, value) in &m.headers {
        let p = path.key("headers").key(name);
        let Ok(hn) = http::HeaderName::from_bytes(name.as_bytes()) else {
            diags.push(&p, "invalid header name");
            continue;
        };
        let pattern = match value.strip_prefix('~') {
            Some(re) => compile(re, &p, diags).map(HeaderPattern::Regex),
            None => Some(HeaderPattern::Exact(value.clone())),
        };
        if let Some(pattern) = pattern {
            out.headers.push((hn, pattern));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_core::yaml::parse;

    fn check(text: &str) -> Result<Snapshot, Vec<Diag>> {
        let root = parse(text, &HashMap::new())?;
        snapshot(&root, FsPath::new("."), 1, 1, &Metrics::default())
    }

    #[test]
    fn reports_every_error_with_path_and_line() {
        let errs = check(
            "listeners:\n  - address: 127.0.0.1:0\n    colour: blue\nupstreams:\n  - name: app\n    targets: [\"nope\"]\nroutes:\n  - upstream: missing\n  - match: {paths: [\"~(\"]}\n    upstream: app\nbogus: 1\n",
        )
        .err()
        .unwrap();
        let found: Vec<(String, Option<usize>)> =
            errs.iter().map(|d| (d.path.clone(), d.line)).collect();
        assert!(
            found.contains(&("listeners[0].colour".into(), Some(3))),
            "{found:?}"
        );
        assert!(
            found.contains(&("upstreams[0].targets[0]".into(), Some(6))),
            "{found:?}"
        );
        assert!(
            found.contains(&("routes[0].upstream".into(), Some(8))),
            "{found:?}"
        );
        assert!(
            found.contains(&("routes[1].match.paths[0]".into(), Some(9))),
            "{found:?}"
        );
        assert!(found.contains(&("bogus".into(), Some(11))), "{found:?}");
    }

    #[test]
    fn module_files_with_syntax_errors_are_configuration_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lua/resty")).unwrap();
        std::fs::write(dir.path().join("lua/resty/ok.lua"), "return {}").unwrap();
        std::fs::write(
            dir.path().join("lua/resty/bad.lua"),
            "local M = {}\nfunction M.f(\nreturn M\n",
        )
        .unwrap();
        let text = "lua:\n  package_path:\n    - missing\n    - lua\nroutes:\n  - plugins:\n      - name: request_termination\n";
        let root = parse(text, &HashMap::new()).unwrap();
        let errs = snapshot(&root, dir.path(), 1, 1, &Metrics::default())
            .err()
            .unwrap();
        let found: Vec<(String, Option<usize>, String)> = errs
            .iter()
            .map(|d| (d.path.clone(), d.line, d.message.clone()))
            .collect();
        assert!(
            found.iter().any(|(p, l, m)| p == "lua.package_path[0]"
                && *l == Some(3)
                && m.contains("is not a directory")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|(p, l, m)| p == "lua.package_path[1]"
                && *l == Some(4)
                && m.contains("bad.lua")
                && m.contains("syntax error at resty/bad.lua:3")),
            "{found:?}"
        );
        std::fs::remove_file(dir.path().join("lua/resty/bad.lua")).unwrap();
        let text = "listeners:\n  - address: 127.0.0.1:0\nlua:\n  package_path: 'lua/?.lua;lua/?/init.lua;;'\nroutes:\n  - plugins:\n      - name: request_termination\n";
        let root = parse(text, &HashMap::new()).unwrap();
        let snap = snapshot(&root, dir.path(), 1, 1, &Metrics::default())
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert!(snap.lua.modules.get("resty.ok").is_some());
    }

    #[test]
    fn rejects_unknown_plugins_and_bad_plugin_config() {
        let errs = check(
            "listeners: [{address: '127.0.0.1:0'}]\nroutes:\n  - plugins:\n      - name: nope\n      - name: request_termination\n        config: {status: 99}\n",
        )
        .err()
        .unwrap();
        let paths: Vec<&str> = errs.iter().map(|d| d.path.as_str()).collect();
        assert!(paths.contains(&"routes[0].plugins[0].name"), "{paths:?}");
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with("routes[0].plugins[1].config")),
            "{paths:?}"
        );
    }

    #[test]
    fn a_route_without_upstream_needs_a_plugin_that_answers() {
        let headers_only = "listeners: [{address: '127.0.0.1:0'}]\nroutes:\n  - plugins:\n      - name: headers\n        config: {request: {set: {x-a: b}}}\n";
        let errs = check(headers_only).err().unwrap();
        assert!(
            errs.iter()
                .any(|d| d.path == "routes[0]" && d.message.contains("upstream")),
            "{errs:?}"
        );
        let answering = "listeners: [{address: '127.0.0.1:0'}]\nplugins:\n  - name: request_termination\nroutes:\n  - name: r\n";
        assert!(check(answering).is_ok());
    }

    #[test]
    fn strips_and_adds_prefixes() {
        let r = PathRewrite {
            strip_prefix: Some("/wal".into()),
            add_prefix: Some("/v2/".into()),
            regex: None,
        };
        assert_eq!(r.apply("/wal/x"), "/v2/x");
        assert_eq!(r.apply("/wal"), "/v2/");
        assert_eq!(r.apply("/other"), "/v2/other");
        assert_eq!(r.apply("/walrus"), "/v2/walrus");
        let slash = PathRewrite {
            strip_prefix: Some("/app/".into()),
            add_prefix: None,
            regex: None,
        };
        assert_eq!(slash.apply("/app/x"), "/x");
        assert_eq!(slash.apply("/application"), "/application");
    }

    #[test]
    fn loading_reports_unknown_fallback_and_constant_upstreams_with_lines() {
        let text = "listeners: [{address: '127.0.0.1:0'}]\nadmin: {enabled: false}\nupstreams: [{name: home, targets: ['127.0.0.1:1']}]\nroutes:\n  - name: r\n    plugins:\n      - name: claim_routing\n        config:\n          rules: [{upstream: nowhere}]\n          fallback: gone\n";
        let err = super::super::load_snapshot_from_str(
            text,
            "<test>",
            std::path::Path::new("."),
            1,
            1,
            &sluicegate_telemetry::Metrics::default(),
        )
        .err()
        .unwrap();
        let found: Vec<(String, Option<usize>)> =
            err.diags.iter().map(|d| (d.path.clone(), d.line)).collect();
        assert!(
            found.contains(&(
                "routes[0].plugins[0].config.rules[0].upstream".into(),
                Some(9)
            )),
            "{found:?}"
        );
        assert!(
            found.contains(&("routes[0].plugins[0].config.fallback".into(), Some(10))),
            "{found:?}"
        );
        // A route with claim routing needs no upstream of its own.
        let ok = text.replace("nowhere", "home").replace("gone", "home");
        assert!(super::super::load_snapshot_from_str(
            &ok,
            "<test>",
            std::path::Path::new("."),
            1,
            1,
            &sluicegate_telemetry::Metrics::default(),
        )
        .is_ok());
    }
}
