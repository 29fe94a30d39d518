//! A real `redis-server` (Debian's package), on a free loopback port, without persistence.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Redis server; stopped (and its directory removed) on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl RedisServer {
    /// Starts a server with no password.
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// Starts a server that requires `password` (`requirepass`) when one is given.
    pub fn start_with(password: Option<&str>) -> RedisServer {
        let binary = super::require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            password: password.map(str::to_string),
            dir,
            binary,
        };
        // The port is chosen before the server binds it: try again if another process
        // took it in between.
        for _ in 0..5 {
            server.port = super::free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start; its log: {}", server.log());
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let mut child = cmd.spawn().expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` (with the password when there is one).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (as a crash would: no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs one command and returns its raw reply (read for up to 500 ms).
    pub fn command(&self, args: &[&str]) -> String {
        self.commands(&[args])
    }

    /// Runs commands one after another on one connection (after `AUTH` when the server
    /// has a password) and returns the raw reply of the last.
    pub fn commands(&self, commands: &[&[&str]]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_millis(500))).ok();
        let auth;
        let mut all: Vec<&[&str]> = Vec::new();
        if let Some(p) = &self.password {
            auth = ["AUTH", p.as_str()];
            all.push(&auth);
        }
        all.extend_from_slice(commands);
        let mut reply = String::new();
        for args in all {
            write_command(&mut s, args);
            reply = read_reply(&mut s);
        }
        reply
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(500))).ok();
        write_command(&mut s, &["PING"]);
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok()
            && (line.starts_with("+PONG") || line.starts_with("-NOAUTH"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

/// Reads what arrives until a pause that follows a CRLF.
fn read_reply(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"\r\n") {
                    s.set_read_timeout(Some(Duration::from_millis(20))).ok();
                }
            }
            Err(_) if !out.is_empty() => break,
            Err(_) => {}
        }
    }
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    String::from_utf8_lossy(&out).into_owned()
}

fn write_command(s: &mut TcpStream, args: &[&str]) {
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).expect("write to redis");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
