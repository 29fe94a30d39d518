//! The `code:` section: where dynamic scripts come from (a code API, a watched directory,
//! admin pushes) and how they are applied. [`CodeConfig`] is the on-disk form
//! (`deny_unknown_fields`); [`validate`] turns it into [`CodeSettings`], reporting every
//! problem with its path.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;

use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::phase::{Phase, PhaseSet};
use sluicegate_core::yaml::{Node, NodeKind};

/// Defaults of the `code:` section.
pub mod defaults {
    /// Seconds between two polls of the code API (lua-resty-dynacode's examples use 15;
    /// a shorter interval makes a change live sooner and, with ETags, costs one 304).
    pub const INTERVAL_SECS: f64 = 10.0;
    /// Time one poll may take, connect to last body byte.
    pub const TIMEOUT_MS: u64 = 5_000;
    /// Largest code-API document accepted (dynacode keeps its document in a 1 MiB shared
    /// dict in its example; 8 MiB leaves room for large script sets).
    pub const MAX_BYTES: usize = 8 * 1024 * 1024;
    /// Priority of the dynamic-code entry in every plugin chain: after `lua` (1000),
    /// before `headers` (800).
    pub const PRIORITY: i32 = 900;
}

/// `code:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeConfig {
    /// A lua-resty-dynacode compatible code API, polled.
    pub api: Option<ApiConfig>,
    /// A directory of `NAME.PHASE.lua` files, watched.
    pub directory: Option<DirectoryConfig>,
    /// Whether `PUT /scripts/{name}` and `DELETE /scripts/{name}` are accepted.
    #[serde(default = "yes")]
    pub admin_scripts: bool,
    /// Phases dynamic scripts may run in (default: all six).
    pub phases: Option<Vec<String>>,
    /// Reject a whole update when one of its scripts fails to compile.
    #[serde(default)]
    pub all_or_nothing: bool,
    /// Where dynamic scripts run among the plugins of a chain (higher runs first).
    pub priority: Option<i32>,
}

/// `code.api` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `http://` or `https://` URL of the JSON document.
    pub url: String,
    /// Seconds between polls (fractions allowed).
    pub interval_secs: Option<f64>,
    /// Up to this many milliseconds are added at random to every wait.
    pub jitter_ms: Option<u64>,
    /// Time one poll may take.
    pub timeout_ms: Option<u64>,
    /// Headers sent with every poll (an `Authorization` header, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Largest document accepted.
    pub max_bytes: Option<usize>,
    /// Verify the server's certificate on `https` (default true).
    pub tls_verify: Option<bool>,
    /// PEM file of CA certificates to trust instead of the built-in web roots.
    pub ca_file: Option<String>,
}

/// `code.directory` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The directory (relative to the configuration file).
    pub path: String,
}

fn yes() -> bool {
    true
}

/// The validated `code:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeSettings {
    /// The code API, if any.
    pub api: Option<ApiSettings>,
    /// The watched directory, if any.
    pub directory: Option<PathBuf>,
    /// Whether admin pushes are accepted.
    pub admin_scripts: bool,
    /// Phases dynamic scripts may run in.
    pub phases: PhaseSet,
    /// Reject a whole update when one of its scripts fails.
    pub all_or_nothing: bool,
    /// Priority of the dynamic-code chain entry.
    pub priority: i32,
    /// The user modules dynamic scripts `require` (`lua.package_path`; set by the
    /// application, which validates that section).
    pub lua_modules: std::sync::Arc<sluicegate_lua::Modules>,
}

/// The validated `code.api`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// The document's URL.
    pub url: Uri,
    /// Time between polls.
    pub interval: Duration,
    /// Largest random addition to each wait.
    pub jitter: Duration,
    /// Time one poll may take.
    pub timeout: Duration,
    /// Headers sent with every poll.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Largest document accepted.
    pub max_bytes: usize,
    /// Verify the certificate on `https`.
    pub tls_verify: bool,
    /// CA certificates to trust instead of the web roots (resolved path).
    pub ca_file: Option<PathBuf>,
}

impl ApiSettings {
    /// The TLS client configuration for an `https` URL.
    pub fn tls(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
        let tls = sluicegate_config::file::UpstreamTlsConfig {
            verify: Some(self.tls_verify),
            ca_file: self.ca_file.as_ref().map(|p| p.display().to_string()),
            ..Default::default()
        };
        sluicegate_upstream::tls::client_config(
            &tls,
            FsPath::new("."),
            sluicegate_upstream::Protocol::Http1,
        )
    }
}

const KEYS: &[&str] = &[
    "api",
    "directory",
    "admin_scripts",
    "phases",
    "all_or_nothing",
    "priority",
];
const API_KEYS: &[&str] = &[
    "url",
    "interval_secs",
    "jitter_ms",
    "timeout_ms",
    "headers",
    "max_bytes",
    "tls_verify",
    "ca_file",
];

/// Reports keys of mapping `node` not in `known` and returns the node without them, so
/// the other problems of the section are reported too.
fn known_only(node: &Node, known: &[&str], path: &Path, diags: &mut Diags) -> Node {
    let mut out = node.clone();
    if let NodeKind::Map(entries) = &mut out.kind {
        entries.retain(|(k, _)| {
            let ok = known.contains(&k.as_str());
            if !ok {
                diags.push(
                    &path.key(k),
                    format!("unknown key; expected one of: {}", known.join(", ")),
                );
            }
            ok
        });
    }
    out
}

/// Reads and validates the `code:` node at `path`. Every problem goes to `diags`; the
/// settings returned then stand in for the section (so that, say, routes answered by
/// dynamic scripts are not reported as lacking an upstream too).
pub fn from_node(node: &Node, path: &Path, base_dir: &FsPath, diags: &mut Diags) -> CodeSettings {
    let mut node = known_only(node, KEYS, path, diags);
    if let Some(api) = node.take("api") {
        let api = known_only(&api, API_KEYS, &path.key("api"), diags);
        if let NodeKind::Map(entries) = &mut node.kind {
            entries.push(("api".to_string(), api));
        }
    }
    let null = matches!(node.kind, NodeKind::Null);
    let parsed = if null {
        sluicegate_core::de::from_node(
            &Node {
                kind: NodeKind::Map(Vec::new()),
                line: node.line,
            },
            path,
        )
    } else {
        sluicegate_core::de::from_node::<CodeConfig>(&node, path)
    };
    match parsed {
        Ok(cfg) => validate(cfg, path, base_dir, diags),
        Err(d) => {
            diags.0.push(d);
            CodeSettings {
                api: None,
                directory: None,
                admin_scripts: true,
                phases: PhaseSet::of(&Phase::ALL),
                all_or_nothing: false,
                priority: defaults::PRIORITY,
                lua_modules: sluicegate_lua::Modules::empty(),
            }
        }
    }
}

/// Validates `cfg` (found at `path`); relative directories resolve against `base_dir`.
pub fn validate(
    cfg: CodeConfig,
    path: &Path,
    base_dir: &FsPath,
    diags: &mut Diags,
) -> CodeSettings {
    let api = cfg.api.map(|a| api(a, &path.key("api"), base_dir, diags));
    let directory = cfg.directory.map(|d| {
        if d.path.trim().is_empty() {
            diags.push(&path.key("directory").key("path"), "must not be empty");
        }
        base_dir.join(d.path)
    });
    let mut phases = PhaseSet::of(&Phase::ALL);
    if let Some(list) = cfg.phases {
        let mut set = Vec::new();
        for (i, p) in list.iter().enumerate() {
            match Phase::parse(p) {
                Some(phase) => set.push(phase),
                None => diags.push(
                    &path.key("phases").index(i),
                    format!("unknown phase `{p}`; expected rewrite, access, content, header_filter, body_filter or log"),
                ),
            }
        }
        if list.is_empty() {
            diags.push(&path.key("phases"), "list at least one phase");
        }
        phases = PhaseSet::of(&set);
    }
    CodeSettings {
        api,
        directory,
        admin_scripts: cfg.admin_scripts,
        phases,
        all_or_nothing: cfg.all_or_nothing,
        priority: cfg.priority.unwrap_or(defaults::PRIORITY),
        lua_modules: sluicegate_lua::Modules::empty(),
    }
}

fn api(a: ApiConfig, path: &Path, base_dir: &FsPath, diags: &mut Diags) -> ApiSettings {
    let url = match a.url.parse::<Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => u,
        Ok(_) => {
            diags.push(
                &path.key("url"),
                format!("`{}` is not an http:// or https:// URL with a host", a.url),
            );
            Uri::default()
        }
        Err(e) => {
            diags.push(&path.key("url"), format!("`{}` is not a URL: {e}", a.url));
            Uri::default()
        }
    };
    let interval = a.interval_secs.unwrap_or(defaults::INTERVAL_SECS);
    if !(0.05..=86_400.0).contains(&interval) {
        diags.push(
            &path.key("interval_secs"),
            "must be between 0.05 and 86400 seconds",
        );
    }
    let timeout_ms = a.timeout_ms.unwrap_or(defaults::TIMEOUT_MS);
    if !(1..=600_000).contains(&timeout_ms) {
        diags.push(&path.key("timeout_ms"), "must be between 1 and 600000");
    }
    let jitter_ms = a.jitter_ms.unwrap_or(0);
    if jitter_ms > 3_600_000 {
        diags.push(&path.key("jitter_ms"), "must be at most 3600000");
    }
    let max_bytes = a.max_bytes.unwrap_or(defaults::MAX_BYTES);
    if !(1024..=256 * 1024 * 1024).contains(&max_bytes) {
        diags.push(&path.key("max_bytes"), "must be between 1024 and 268435456");
    }
    let mut headers = Vec::new();
    for (name, value) in &a.headers {
        if let Some(pair) =
            sluicegate_core::phase::header_pair(name, value, &path.key("headers").key(name), diags)
        {
            headers.push(pair);
        }
    }
    let settings = ApiSettings {
        url,
        interval: Duration::from_secs_f64(interval.clamp(0.05, 86_400.0)),
        jitter: Duration::from_millis(jitter_ms.min(3_600_000)),
        timeout: Duration::from_millis(timeout_ms.clamp(1, 600_000)),
        headers,
        max_bytes,
        tls_verify: a.tls_verify.unwrap_or(true),
        ca_file: a.ca_file.as_ref().map(|f| base_dir.join(f)),
    };
    if settings.ca_file.is_some() || settings.url.scheme_str() == Some("https") {
        // Read the CA file now, so a bad one is a configuration error with its line.
        if let Err(e) = settings.tls() {
            let key = if a.ca_file.is_some() {
                "ca_file"
            } else {
                "url"
            };
            diags.push(&path.key(key), e);
        }
    }
    settings
}
