//! The cluster store: every node that talks to one Redis shares the counts. A check is one
//! round trip: `EVALSHA` of a script that applies GCRA to every limit of the request
//! atomically, on the server's clock (so the nodes' clocks need not agree). The script is
//! sent with `EVAL` only when the server does not know it yet (after a restart).
//!
//! Each worker thread keeps its own idle connections to each server (a worker's
//! connections belong to its event loop). Connecting, authenticating and the round trip
//! share one timeout. After a failure the store is not asked again for `backoff`, so a
//! Redis that is down costs nothing per request beyond the fail policy; the first request
//! after the backoff probes it.

pub mod resp;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::local::{now_ns, MAX_LIMITS};
use super::{Limit, Verdict};
use resp::Reply;

/// The script, run by Redis.
pub const SCRIPT: &str = include_str!("gcra.lua");

/// Idle connections a worker keeps per server.
const MAX_IDLE: usize = 32;

/// Where the Redis server is and how to log in: `redis://[[user]:password@]host[:port][/db]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port (6379 by default).
    pub port: u16,
    /// ACL user name (Redis 6+), with a password.
    pub username: Option<String>,
    /// Password (`AUTH`).
    pub password: Option<String>,
    /// Database number (`SELECT`).
    pub db: u32,
}

impl Endpoint {
    /// Parses a `redis://` URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = match url.split_once("://") {
            Some(("redis", rest)) => rest,
            Some(("rediss", _)) => {
                return Err("TLS to Redis (`rediss://`) is not supported; use `redis://` on a trusted network or a local TLS tunnel".into())
            }
            _ => return Err(format!("`{url}` is not a `redis://host:port` URL")),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (
                    (!user.is_empty()).then(|| percent_decode(user)),
                    Some(percent_decode(pass)),
                ),
                None => (Some(percent_decode(u)), None),
            },
        };
        if username.is_some() && password.is_none() {
            return Err("a Redis user name needs a password (`redis://user:password@host`)".into());
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{hostport}`: an IPv6 address lacks its `]`"))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        let port = match port {
            None | Some("") => 6379,
            Some(p) => p.parse().map_err(|_| format!("`{p}` is not a port"))?,
        };
        let db = match path.trim_end_matches('/') {
            "" => 0,
            d => d
                .parse()
                .map_err(|_| format!("`/{d}` is not a database number"))?,
        };
        Ok(Endpoint {
            host,
            port,
            username,
            password,
            db,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a round trip failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No connection could be made.
    Connect(String),
    /// The whole exchange took longer than the timeout.
    Timeout,
    /// The server broke the protocol or closed the connection.
    Protocol(String),
    /// The server answered with an error (`NOAUTH`, `OOM`, `READONLY`, ...).
    Refused(String),
    /// A recent failure: the store is not asked until its backoff ends.
    Backoff,
}

impl StoreError {
    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Connect(_) => "connect",
            StoreError::Timeout => "timeout",
            StoreError::Protocol(_) => "protocol",
            StoreError::Refused(_) => "refused",
            StoreError::Backoff => "backoff",
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Connect(e) => write!(f, "cannot connect to Redis: {e}"),
            StoreError::Timeout => f.write_str("Redis did not answer in time"),
            StoreError::Protocol(e) => write!(f, "Redis broke the protocol: {e}"),
            StoreError::Refused(e) => write!(f, "Redis refused the script: {e}"),
            StoreError::Backoff => {
                f.write_str("Redis failed recently; not asked until the backoff ends")
            }
        }
    }
}

/// How a [`RedisLimiter`] talks to its server.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The server.
    pub endpoint: Endpoint,
    /// Connect, authenticate and round trip, together.
    pub timeout: Duration,
    /// After a failure, how long the store is not asked (zero: ask every time).
    pub backoff: Duration,
    /// Prepended to every key (`sluicegate:rl` by default).
    pub prefix: String,
}

/// Several limits checked together for one key, in Redis.
#[derive(Debug)]
pub struct RedisLimiter {
    settings: RedisSettings,
    /// Identifies the server in the per-thread connection pools.
    pool_key: Arc<str>,
    limits: Vec<Limit>,
    /// `EVALSHA`'s argument: the script's SHA-1 in hex.
    sha: String,
    /// The per-limit arguments (emission and tolerance in microseconds), ready to send.
    args: Vec<String>,
    /// The key prefix with the scope: `prefix:{scope|`.
    key_head: Vec<u8>,
    /// The per-limit key endings: `}:10/second`.
    key_tails: Vec<String>,
    /// Until when (in [`now_ns`] time) the store is not asked.
    down_until: AtomicU64,
}

impl RedisLimiter {
    /// The limiter of `limits` (1..=[`MAX_LIMITS`]) in `scope`.
    pub fn new(
        scope: &str,
        limits: &[Limit],
        settings: RedisSettings,
    ) -> Result<RedisLimiter, String> {
        if limits.is_empty() || limits.len() > MAX_LIMITS {
            return Err(format!("give 1 to {MAX_LIMITS} limits"));
        }
        let e = &settings.endpoint;
        // Connections are logged in: two configurations share them only with the same
        // server, database, user and password (kept as a digest, not in the clear).
        let password = e
            .password
            .as_deref()
            .map(|p| hex(&Sha1::digest(p.as_bytes())))
            .unwrap_or_default();
        let pool_key = Arc::from(format!(
            "{}@{}:{}/{}#{password}",
            e.username.as_deref().unwrap_or(""),
            e.host,
            e.port,
            e.db,
        ));
        let sha = hex(&Sha1::digest(SCRIPT.as_bytes()));
        let args = limits
            .iter()
            .flat_map(|l| {
                let micros = |ns: u64| format!("{}", ns as f64 / 1000.0);
                [micros(l.emission_ns()), micros(l.tolerance_ns())]
            })
            .collect();
        // A hash tag around scope and key keeps one request's keys in one slot.
        let key_head = format!("{}:{{{scope}|", settings.prefix).into_bytes();
        let key_tails = limits
            .iter()
            .map(|l| format!("}}:{}", l.describe()))
            .collect();
        Ok(RedisLimiter {
            settings,
            pool_key,
            limits: limits.to_vec(),
            sha,
            args,
            key_head,
            key_tails,
            down_until: AtomicU64::new(0),
        })
    }

    /// The limits, in order.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// Decides one request for `key`: one round trip, or an error the caller's fail policy
    /// answers.
    pub async fn check(&self, key: &[u8]) -> Result<Verdict, StoreError> {
        if now_ns() < self.down_until.load(Ordering::Relaxed) {
            return Err(StoreError::Backoff);
        }
        let result = match tokio::time::timeout(self.settings.timeout, self.round_trip(key)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout),
        };
        if result.is_err() && !self.settings.backoff.is_zero() {
            let until = now_ns().saturating_add(self.settings.backoff.as_nanos() as u64);
            self.down_until.store(until, Ordering::Relaxed);
        }
        result
    }

    async fn round_trip(&self, key: &[u8]) -> Result<Verdict, StoreError> {
        let keys: Vec<Vec<u8>> = self
            .key_tails
            .iter()
            .map(|tail| [&self.key_head[..], key, tail.as_bytes()].concat())
            .collect();
        let count = keys.len().to_string();
        let mut cmd = Vec::with_capacity(256);
        let mut argv: Vec<&[u8]> = vec![b"EVALSHA", self.sha.as_bytes(), count.as_bytes()];
        argv.extend(keys.iter().map(Vec::as_slice));
        argv.extend(self.args.iter().map(String::as_bytes));
        resp::encode(&argv, &mut cmd);

        let (mut conn, pooled) = match take_idle(&self.pool_key) {
            Some(c) => (c, true),
            None => (Conn::open(&self.settings.endpoint).await?, false),
        };
        let reply = match conn.call(&cmd).await {
            Ok(r) => r,
            // An idle connection the server closed meanwhile: once more on a new one.
            Err(StoreError::Protocol(_)) if pooled => {
                conn = Conn::open(&self.settings.endpoint).await?;
                conn.call(&cmd).await?
            }
            Err(e) => return Err(e),
        };
        let reply = match reply {
            Reply::Error(e) if e.starts_with("NOSCRIPT") => {
                argv[0] = b"EVAL";
                argv[1] = SCRIPT.as_bytes();
                cmd.clear();
                resp::encode(&argv, &mut cmd);
                conn.call(&cmd).await?
            }
            r => r,
        };
        put_idle(&self.pool_key, conn);
        self.verdict(reply)
    }

    fn verdict(&self, reply: Reply) -> Result<Verdict, StoreError> {
        let items = match reply {
            Reply::Array(Some(items)) if items.len() == 4 * self.limits.len() => items,
            Reply::Error(e) => return Err(StoreError::Refused(e)),
            other => {
                return Err(StoreError::Protocol(format!(
                    "unexpected answer to the script: {other:?}"
                )))
            }
        };
        let mut ints = [0i64; 4 * MAX_LIMITS];
        for (slot, item) in ints.iter_mut().zip(&items) {
            *slot = match item {
                Reply::Int(n) => *n,
                other => {
                    return Err(StoreError::Protocol(format!(
                        "the script answered {other:?} where a number belongs"
                    )))
                }
            };
        }
        let micros = |n: i64| Duration::from_micros(n.max(0) as u64);
        let mut verdicts = [Verdict::UNLIMITED; MAX_LIMITS];
        for (i, l) in self.limits.iter().enumerate() {
            let [admitted, remaining, reset, retry] = [
                ints[4 * i],
                ints[4 * i + 1],
                ints[4 * i + 2],
                ints[4 * i + 3],
            ];
            verdicts[i] = Verdict {
                admitted: admitted == 1,
                limit: l.burst,
                remaining: remaining.max(0) as u64,
                reset: micros(reset),
                retry_after: micros(retry),
            };
        }
        Ok(Verdict::combine(&verdicts[..self.limits.len()]).unwrap_or(Verdict::UNLIMITED))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One connection to a server.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(e: &Endpoint) -> Result<Conn, StoreError> {
        let stream = TcpStream::connect((e.host.as_str(), e.port))
            .await
            .map_err(|err| StoreError::Connect(format!("{}:{}: {err}", e.host, e.port)))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            buf: Vec::with_capacity(512),
        };
        let mut cmd = Vec::new();
        if let Some(pass) = &e.password {
            match &e.username {
                Some(user) => resp::encode(&[b"AUTH", user.as_bytes(), pass.as_bytes()], &mut cmd),
                None => resp::encode(&[b"AUTH", pass.as_bytes()], &mut cmd),
            }
            conn.expect_ok(&cmd, "AUTH").await?;
            cmd.clear();
        }
        if e.db != 0 {
            resp::encode(&[b"SELECT", e.db.to_string().as_bytes()], &mut cmd);
            conn.expect_ok(&cmd, "SELECT").await?;
        }
        Ok(conn)
    }

    async fn expect_ok(&mut self, cmd: &[u8], what: &str) -> Result<(), StoreError> {
        match self.call(cmd).await? {
            Reply::Status(s) if s == "OK" => Ok(()),
            Reply::Error(e) => Err(StoreError::Refused(format!("{what}: {e}"))),
            other => Err(StoreError::Protocol(format!("{what} answered {other:?}"))),
        }
    }

    /// Sends `cmd` and reads its one reply.
    async fn call(&mut self, cmd: &[u8]) -> Result<Reply, StoreError> {
        let io = |e: std::io::Error| StoreError::Protocol(e.to_string());
        self.stream.write_all(cmd).await.map_err(io)?;
        loop {
            if let Some((reply, used)) = resp::parse(&self.buf).map_err(StoreError::Protocol)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let n = self.stream.read_buf(&mut self.buf).await.map_err(io)?;
            if n == 0 {
                return Err(StoreError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
        }
    }
}

thread_local! {
    /// This worker's idle connections, by server.
    static IDLE: RefCell<HashMap<Arc<str>, Vec<Conn>>> = RefCell::new(HashMap::new());
}

fn take_idle(server: &Arc<str>) -> Option<Conn> {
    IDLE.with(|idle| idle.borrow_mut().get_mut(server).and_then(Vec::pop))
}

fn put_idle(server: &Arc<str>, conn: Conn) {
    if !conn.buf.is_empty() {
        return; // Bytes nobody asked for: the connection is out of step.
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(server.clone()).or_default();
        if list.len() < MAX_IDLE {
            list.push(conn);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_urls() {
        let e = Endpoint::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.db), ("127.0.0.1", 6380, 2));
        assert_eq!((e.username, e.password), (None, None));
        let e = Endpoint::parse("redis://:s%40cret@cache").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("cache", 6379));
        assert_eq!(e.password.as_deref(), Some("s@cret"));
        assert_eq!(e.username, None);
        let e = Endpoint::parse("redis://gw:pw@[::1]:7000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 7000));
        assert_eq!(e.username.as_deref(), Some("gw"));
        for bad in [
            "http://x",
            "rediss://x",
            "redis://",
            "redis://h:notaport",
            "redis://h/x",
            "redis://user@h",
            "127.0.0.1:6379",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_script_is_named_by_its_sha1() {
        let l = RedisLimiter::new(
            "s",
            &[Limit::new(10, super::super::Period::Second, None).unwrap()],
            RedisSettings {
                endpoint: Endpoint::parse("redis://127.0.0.1").unwrap(),
                timeout: Duration::from_millis(50),
                backoff: Duration::ZERO,
                prefix: "p".into(),
            },
        )
        .unwrap();
        assert_eq!(l.sha.len(), 40);
        assert_eq!(l.args, ["100000", "1000000"]);
        assert_eq!(l.key_head, b"p:{s|");
        assert_eq!(l.key_tails, ["}:10/second"]);
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_fast_then_backs_off() {
        // A port nobody listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let l = RedisLimiter::new(
            "s",
            &[Limit::new(10, super::super::Period::Second, None).unwrap()],
            RedisSettings {
                endpoint: Endpoint::parse(&format!("redis://127.0.0.1:{port}")).unwrap(),
                timeout: Duration::from_millis(200),
                backoff: Duration::from_secs(60),
                prefix: "p".into(),
            },
        )
        .unwrap();
        assert!(matches!(l.check(b"k").await, Err(StoreError::Connect(_))));
        assert_eq!(l.check(b"k").await, Err(StoreError::Backoff));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (_sock, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let l = RedisLimiter::new(
            "s",
            &[Limit::new(10, super::super::Period::Second, None).unwrap()],
            RedisSettings {
                endpoint: Endpoint::parse(&format!("redis://{addr}")).unwrap(),
                timeout: Duration::from_millis(100),
                backoff: Duration::ZERO,
                prefix: "p".into(),
            },
        )
        .unwrap();
        let started = std::time::Instant::now();
        assert_eq!(l.check(b"k").await, Err(StoreError::Timeout));
        assert!(started.elapsed() < Duration::from_secs(2));
        hold.abort();
    }
}
