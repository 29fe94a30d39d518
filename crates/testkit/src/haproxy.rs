//! A real `haproxy` (Debian's package) as an HTTP reverse proxy on a free loopback port,
//! in the foreground (`-db`), with its configuration and log in a temporary directory.

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use super::proc;

/// A running HAProxy; stopped (and its directory removed) on drop.
pub struct HaProxy {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl HaProxy {
    /// HAProxy in `mode http` passing every request to `upstream`, with its defaults
    /// otherwise (keep-alive on both sides).
    pub fn proxy_to(upstream: SocketAddr) -> HaProxy {
        Self::start(&format!("server app {upstream}"))
    }

    /// HAProxy with `backend` as the body of its one backend.
    pub fn start(backend: &str) -> HaProxy {
        let binary = super::require("haproxy", "haproxy");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("haproxy.log");
        let conf = dir.path().join("haproxy.cfg");
        let (child, addr) = proc::start_on_free_port("haproxy", &log, |port| {
            std::fs::write(&conf, config(port, backend)).expect("write haproxy.cfg");
            let out = File::create(&log).expect("create haproxy.log");
            let err = out.try_clone().expect("clone haproxy.log");
            let mut cmd = Command::new(&binary);
            cmd.arg("-db")
                .arg("-f")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            cmd
        });
        HaProxy { child, addr, dir }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it printed so far (warnings, alerts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

fn config(port: u16, backend: &str) -> String {
    format!(
        "global\n\
         \x20 maxconn 256\n\
         defaults\n\
         \x20 mode http\n\
         \x20 timeout connect 2s\n\
         \x20 timeout client 5s\n\
         \x20 timeout server 5s\n\
         \x20 timeout http-request 2s\n\
         frontend front\n\
         \x20 bind 127.0.0.1:{port}\n\
         \x20 default_backend app\n\
         backend app\n\
         \x20 {backend}\n"
    )
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        proc::stop(&mut self.child);
    }
}
