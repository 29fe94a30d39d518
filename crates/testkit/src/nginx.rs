//! A real `nginx` (Debian's package) as a reverse proxy on a free loopback port: one
//! process (`master_process off`, `daemon off`) run as the current user, with its prefix,
//! pid file, temporary files and logs in a temporary directory.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use super::proc;

/// A running nginx; stopped (and its directory removed) on drop.
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx passing every request to `upstream` over HTTP/1.1, `Host` as the client sent
    /// it, with its defaults otherwise (the request body is read whole before it is sent).
    pub fn proxy_to(upstream: SocketAddr) -> Nginx {
        Self::start(&format!(
            "location / {{\n\
             proxy_pass http://{upstream};\n\
             proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
             proxy_set_header Host $http_host;\n\
             }}"
        ))
    }

    /// nginx with `server` as the body of its one `server` block (after `listen`).
    pub fn start(server: &str) -> Nginx {
        let binary = super::require("nginx", "nginx");
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let log = root.join("error.log");
        let conf = root.join("nginx.conf");
        let (child, addr) = proc::start_on_free_port("nginx", &log, |port| {
            std::fs::write(&conf, config(&root, port, server)).expect("write nginx.conf");
            let mut cmd = Command::new(&binary);
            cmd.arg("-p")
                .arg(&root)
                .arg("-c")
                .arg(&conf)
                // The log for errors before the configuration is read (the package's
                // default is under /var/log).
                .arg("-e")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        });
        Nginx { child, addr, dir }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// The whole configuration: every path nginx writes is under `root` (the package's
/// defaults for temporary files are under /var/lib/nginx).
fn config(root: &std::path::Path, port: u16, server: &str) -> String {
    let r = root.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {r}/nginx.pid;\n\
         error_log {r}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {r}/client_body;\n\
         proxy_temp_path {r}/proxy;\n\
         fastcgi_temp_path {r}/fastcgi;\n\
         uwsgi_temp_path {r}/uwsgi;\n\
         scgi_temp_path {r}/scgi;\n\
         client_header_timeout 2s;\n\
         client_body_timeout 2s;\n\
         server {{\n\
         listen 127.0.0.1:{port};\n\
         {server}\n\
         }}\n\
         }}\n"
    )
}

impl Drop for Nginx {
    fn drop(&mut self) {
        proc::stop(&mut self.child);
    }
}
