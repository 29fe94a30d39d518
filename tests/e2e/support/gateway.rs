//! Starting the real gateway in-process from a configuration written to a temporary
//! directory.
//!
//! A test writes only the part of the YAML it cares about (upstreams, routes, plugins);
//! [`Config`] adds one worker, one cleartext listener and the admin listener on port 0, no
//! access log and a short drain timeout, unless the test replaces a section. `{{name}}` in
//! the text is replaced by values given with [`Config::var`] (`{{dir}}` is the temporary
//! directory), so upstream addresses never have to be formatted by hand.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;

use sluicegate::gateway::Gateway;
use tempfile::TempDir;

use super::client::{self, Reply};
use super::init_logs;

/// A configuration under construction.
pub struct Config {
    body: String,
    vars: Vec<(String, String)>,
    listener_extra: Vec<String>,
    listeners: Option<String>,
    access_log: String,
    workers: usize,
    files: Vec<(String, Vec<u8>)>,
}

impl Config {
    /// A configuration whose upstreams, routes and plugins are `body`.
    pub fn new(body: &str) -> Config {
        Config {
            body: body.to_string(),
            vars: Vec::new(),
            listener_extra: Vec::new(),
            listeners: None,
            access_log: "access_log: {target: 'off'}".to_string(),
            workers: 1,
            files: Vec::new(),
        }
    }

    /// The usual proxy setup: upstream `app` with the given target, one route `all` to it.
    pub fn proxy_to(target: impl Display) -> Config {
        Config::new(
            r#"
upstreams:
  - name: app
    targets: ["{{app}}"]
    read_timeout_ms: 10000
routes:
  - name: all
    upstream: app
"#,
        )
        .var("app", target)
    }

    /// Replaces `{{name}}` with `value`.
    pub fn var(mut self, name: &str, value: impl Display) -> Config {
        self.vars.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds `key: value` to the default listener (e.g. `max_body_bytes: 1024`).
    pub fn listener(mut self, setting: &str) -> Config {
        self.listener_extra.push(setting.to_string());
        self
    }

    /// Replaces the whole `listeners:` section (first listener is `TestGateway::addr`).
    pub fn listeners(mut self, section: &str) -> Config {
        self.listeners = Some(section.to_string());
        self
    }

    /// Replaces the `access_log:` section.
    pub fn access_log(mut self, section: &str) -> Config {
        self.access_log = section.to_string();
        self
    }

    /// Sets the worker count (1 by default, so round-robin schedules are deterministic).
    pub fn workers(mut self, n: usize) -> Config {
        self.workers = n;
        self
    }

    /// Writes a file (a secret, a script) next to the configuration before the gateway
    /// starts; relative names in the configuration resolve against that directory.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Config {
        self.files.push((name.to_string(), contents.into()));
        self
    }

    /// The YAML text, with variables replaced; `dir` is the configuration's directory.
    pub fn render(&self, dir: &std::path::Path) -> String {
        let listeners = self.listeners.clone().unwrap_or_else(|| {
            let mut s = "listeners:\n  - address: 127.0.0.1:0\n".to_string();
            for extra in &self.listener_extra {
                s.push_str(&format!("    {extra}\n"));
            }
            s
        });
        let mut text = format!(
            "workers: {}\ndrain_timeout_ms: 2000\n{listeners}\nadmin:\n  address: 127.0.0.1:0\n{}\n{}\n",
            self.workers, self.access_log, self.body
        );
        text = text.replace("{{dir}}", &dir.display().to_string());
        for (name, value) in &self.vars {
            text = text.replace(&format!("{{{{{name}}}}}"), value);
        }
        assert!(!text.contains("{{"), "unreplaced variable in:\n{text}");
        text
    }

    /// Writes the file and starts the gateway (fails the test when it does not start).
    pub fn start(self) -> TestGateway {
        match self.try_start() {
            Ok(g) => g,
            Err(e) => panic!("gateway did not start: {e:#}"),
        }
    }

    /// Writes the file and starts the gateway.
    pub fn try_start(self) -> anyhow::Result<TestGateway> {
        init_logs();
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sluicegate.yaml");
        for (name, contents) in &self.files {
            std::fs::write(dir.path().join(name), contents)?;
        }
        std::fs::write(&path, self.render(dir.path()))?;
        let gateway = Gateway::start(&path)?;
        Ok(TestGateway {
            addr: gateway.listeners[0],
            admin: gateway.admin.expect("the admin listener is on"),
            _gateway: gateway,
            config_path: path,
            dir,
        })
    }
}

/// A running gateway, stopped when dropped.
pub struct TestGateway {
    /// The first listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The gateway itself; dropping it drains and stops it (before `dir` goes away).
    _gateway: Gateway,
    /// Where the configuration file is.
    pub config_path: PathBuf,
    /// The temporary directory holding the configuration (and any other files).
    pub dir: TempDir,
}

impl TestGateway {
    /// `GET path` on the first listener.
    pub async fn get(&self, path: &str) -> Reply {
        client::get(self.addr, path).await
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        client::get(self.admin, path).await
    }

    /// `POST path` (empty body) on the admin listener.
    pub async fn admin_post(&self, path: &str) -> Reply {
        let req = client::request("POST", path)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        client::send(self.admin, req).await
    }

    /// Overwrites the configuration file with `config` rendered (variables included).
    pub fn rewrite_config(&self, config: &Config) {
        std::fs::write(&self.config_path, config.render(self.dir.path())).unwrap();
    }

    /// Overwrites the configuration file with `text` as is.
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }
}
