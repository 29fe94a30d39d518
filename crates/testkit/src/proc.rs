//! Starting a server process that binds a port it was told (not port 0) and cannot report
//! being ready: try a free port, wait until it accepts connections, try another port when
//! the process exits first (another one took the port in between).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a server gets to start accepting connections.
const START: Duration = Duration::from_secs(10);

/// Starts the process `command(port)` makes, on a free loopback port, until one accepts
/// connections; panics with `what` and the log at `log` after a few failed tries.
pub(crate) fn start_on_free_port(
    what: &str,
    log: &Path,
    mut command: impl FnMut(u16) -> Command,
) -> (Child, SocketAddr) {
    for _ in 0..5 {
        let port = super::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = command(port)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        if wait_until_listening(&mut child, addr) {
            return (child, addr);
        }
        stop(&mut child);
    }
    panic!(
        "{what} did not start; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Whether `child` accepts connections on `addr` before it exits or time runs out.
fn wait_until_listening(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + START;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Kills `child` (by its own PID) and reaps it.
pub(crate) fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
