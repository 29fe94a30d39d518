//! A real PostgreSQL server (Debian's package), in a throw-away cluster in a temporary
//! directory, on a free loopback port, without durability (`fsync=off`), with a database
//! named `sluicegate`.
//!
//! `initdb` and `postgres` refuse to run as root: when the tests run as root, they run as
//! the package's `postgres` system user, which then owns the temporary directory.

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::proc;

/// How long a server gets to become ready for queries.
const START: Duration = Duration::from_secs(30);

/// The install step named when PostgreSQL (or its `postgres` user) is missing.
const INSTALL: &str =
    "run `scripts/test` (it installs Debian's `postgresql`), or `apt-get install postgresql`";

/// The database [`PostgresServer::start`] creates, and [`PostgresServer::url`] names.
const DATABASE: &str = "sluicegate";

/// A running PostgreSQL server; stopped (and its cluster removed) on drop.
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    /// The directory of `initdb`, `postgres`, `pg_ctl`, `pg_isready`, `psql`, `createdb`.
    bin: PathBuf,
    /// The user (uid, gid) `initdb`, `postgres` and `pg_ctl` run as, when not the current one.
    user: Option<(u32, u32)>,
    /// Holds `data/` (the cluster), `postgres.log` and the server's Unix socket.
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Creates a cluster (superuser `postgres`, `trust` authentication, UTF-8), starts
    /// its server on a free loopback port, waits until it is ready for queries and creates
    /// the database `sluicegate`.
    pub fn start() -> PostgresServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        let user = server_user(dir.path());
        let mut server = PostgresServer {
            child: None,
            port: 0,
            bin,
            user,
            dir,
        };
        server.initdb();
        // The port is chosen before the server binds it: try again if another process
        // took it in between.
        for _ in 0..5 {
            server.port = super::free_port();
            if server.spawn() {
                server.create_database(DATABASE);
                return server;
            }
        }
        panic!("postgres did not start; its log:\n{}", server.log());
    }

    /// The server's port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://postgres@127.0.0.1:PORT/sluicegate`.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// `postgresql://postgres@127.0.0.1:PORT/DB` (`db` percent-encoded).
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{}",
            self.port,
            percent_encode(db)
        )
    }

    /// Creates the database `name` (`createdb`); panics when it cannot.
    pub fn create_database(&self, name: &str) {
        let out = self
            .client("createdb")
            .args(["-U", "postgres", "--"])
            .arg(name)
            .output()
            .expect("run createdb");
        check(&out, &format!("createdb {name}"));
    }

    /// Drops the database `name`, closing its connections (`WITH (FORCE)`); panics when it
    /// cannot (it does not exist, say).
    pub fn drop_database(&self, name: &str) {
        let ident = format!("\"{}\"", name.replace('"', "\"\""));
        self.sql("postgres", &format!("DROP DATABASE {ident} WITH (FORCE)"));
    }

    /// Runs `statement` (one or more SQL statements) in the database `db` with `psql`, as
    /// the superuser, and returns what it printed: unaligned, tuples only (`-Atq`), one
    /// row a line, columns separated by `|`, without the final newline. Panics with
    /// `psql`'s errors when a statement fails.
    pub fn sql(&self, db: &str, statement: &str) -> String {
        let out = self
            .client("psql")
            .args(["-X", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-d", db])
            .arg("-Atqc")
            .arg(statement)
            .output()
            .expect("run psql");
        check(&out, &format!("psql -d {db} -c {statement:?}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.trim_end_matches('\n').to_string()
    }

    /// Stops the server (`pg_ctl stop -m fast`: connections are closed, then a
    /// checkpoint), keeping its data for [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        self.shut_down("fast");
    }

    /// Starts the server again, on the same port and with the same data, after
    /// [`stop`](Self::stop); waits until it is ready for queries.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let deadline = Instant::now() + START;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "postgres did not start again on port {}; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the server is running (started, not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// `program` from the server's directory, run as the server's user.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// The client `program` (from the server's directory, else `PATH`), connecting to
    /// the server over TCP.
    fn client(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let path = if path.is_file() {
            path
        } else {
            super::require(program, "postgresql")
        };
        let mut cmd = Command::new(path);
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null());
        cmd
    }

    fn initdb(&self) {
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .unwrap_or_else(|e| panic!("run initdb: {e}"));
        if !out.status.success() {
            panic!(
                "initdb failed ({}) in {}{}:\n{}{}",
                out.status,
                self.dir.path().display(),
                if self.user.is_some() {
                    " (the `postgres` user must be able to reach it)"
                } else {
                    ""
                },
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Starts `postgres` on `self.port`; whether it became ready for queries (it exited,
    /// or did not in time, otherwise).
    fn spawn(&mut self) -> bool {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("open postgres.log");
        let err = out.try_clone().expect("clone postgres.log");
        let mut child = self
            .server_command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn postgres: {e}"));
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.ready() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        proc::stop(&mut child);
        false
    }

    /// Whether this server accepts queries (not "the database system is starting up").
    /// Asked on its Unix socket in its own directory, so that another server that took the
    /// port cannot answer; it creates that socket after its TCP one.
    fn ready(&self) -> bool {
        let path = self.bin.join("pg_isready");
        let path = if path.is_file() {
            path
        } else {
            super::require("pg_isready", "postgresql")
        };
        Command::new(path)
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-t", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the server with `pg_ctl stop -m MODE` (which signals the server's own PID,
    /// from its `postmaster.pid`) and reaps it; kills it when that fails.
    fn shut_down(&mut self, mode: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let stopped = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if stopped {
            let _ = child.wait();
        } else {
            proc::stop(&mut child);
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // The data is thrown away: no checkpoint.
        self.shut_down("immediate");
    }
}

/// The directory of Debian's PostgreSQL binaries (`/usr/lib/postgresql/<major>/bin`, the
/// highest major), else of `initdb` on `PATH`; panics naming the install step.
fn bin_dir() -> PathBuf {
    let mut found: Option<(Vec<u32>, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let bin = entry.path().join("bin");
            let Some(version) = entry.file_name().to_str().and_then(parse_version) else {
                continue;
            };
            let newer = found.as_ref().is_none_or(|(v, _)| version > *v);
            if newer && bin.join("initdb").is_file() && bin.join("postgres").is_file() {
                found = Some((version, bin));
            }
        }
    }
    if let Some((_, bin)) = found {
        return bin;
    }
    let initdb = super::require("initdb", "postgresql");
    initdb.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `15` → `[15]`, `9.6` → `[9, 6]`; `None` for a name that is not a version.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|p| p.parse().ok()).collect()
}

/// The user (uid, gid) to run the server as: `None` (the current user) unless this
/// process is root (it owns `dir`, which it just created), the `postgres` system user
/// otherwise, which then gets `dir`.
fn server_user(dir: &Path) -> Option<(u32, u32)> {
    let meta = std::fs::metadata(dir).expect("stat temp dir");
    if meta.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let (uid, gid) = passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .unwrap_or_else(|| {
            panic!(
                "the tests run as root, and PostgreSQL does not: there is no `postgres` user \
                 to run it as; {INSTALL}"
            )
        });
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown temp dir to postgres");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod temp dir");
    Some((uid, gid))
}

/// Panics with what the command printed when it failed.
fn check(out: &Output, what: &str) {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `s` with every byte but unreserved URL characters as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_keeps_its_data_across_a_restart() {
        let mut pg = PostgresServer::start();
        assert!(pg.is_running());
        assert_eq!(pg.sql("sluicegate", "select 1"), "1");
        pg.sql(
            "sluicegate",
            "create table kept (id int primary key, name text); \
             insert into kept values (7, 'seven')",
        );
        let port = pg.port();

        pg.stop();
        assert!(!pg.is_running());
        pg.start_again();
        assert!(pg.is_running());
        assert_eq!(pg.port(), port);
        assert_eq!(pg.sql("sluicegate", "select 2"), "2");
        assert_eq!(pg.sql("sluicegate", "select id, name from kept"), "7|seven");
    }

    #[test]
    fn creates_and_drops_databases() {
        let pg = PostgresServer::start();
        assert_eq!(
            pg.url(),
            format!("postgresql://postgres@127.0.0.1:{}/sluicegate", pg.port())
        );
        pg.create_database("other");
        assert_eq!(pg.sql("other", "select current_database()"), "other");
        pg.drop_database("other");
        let left = pg.sql(
            "postgres",
            "select count(*) from pg_database where datname = 'other'",
        );
        assert_eq!(left, "0");
    }
}
