//! The real `sluicegate` binary: one-shot commands ([`run_cli`]) and a running gateway
//! process ([`Process`]) whose listening address is read from its JSON log on stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::STEP;

/// A command for the binary under test.
pub fn sluicegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluicegate"))
}

/// What a finished command did.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the binary with `args` and environment `env`, and waits for it.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let out = sluicegate()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the sluicegate binary");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `sluicegate run` process.
pub struct Process {
    child: Child,
    /// The first listener's address, from the `Listening.` log line.
    pub addr: SocketAddr,
    /// Every stderr line so far (the reader thread keeps appending).
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `sluicegate run -c config` and waits for its `Listening.` line.
    pub fn start(config: &Path) -> Process {
        Self::start_with_env(config, &[])
    }

    /// Like [`start`](Self::start), with extra environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut child = sluicegate()
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluicegate run");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_address(&line) {
                    let _ = tx.send(addr);
                }
                keep.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(STEP) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `Listening.` line; stderr: {:#?}", lines.lock().unwrap());
            }
        };
        Process {
            child,
            addr,
            stderr: lines,
        }
    }

    /// Sends `signal` (e.g. `TERM`) to the process with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit (fails the test after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "the process did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `address` of a JSON `Listening.` log line.
fn listening_address(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["message"] != "Listening." {
        return None;
    }
    v["address"].as_str()?.parse().ok()
}
