//! The commands that talk to a running gateway (`reload`, `stop`, `wal` while it runs) go
//! through this one client: a blocking HTTP/1.1 request with `Connection: close` to the
//! admin API, with a bearer token when the API wants one — `SLUICEGATE_ADMIN_TOKEN` when
//! set, else the first of the configuration's `admin.tokens`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sluicegate_proxy::settings::Settings;

/// The environment variable that gives the token (it wins over the configuration's).
pub const TOKEN_ENV: &str = "SLUICEGATE_ADMIN_TOKEN";

/// Where and how to reach the admin API.
pub struct Admin {
    /// `HOST:PORT`.
    pub address: String,
    token: Option<String>,
}

impl Admin {
    /// `address`, with the token from the environment or from `settings`.
    pub fn new(address: String, settings: Option<&Settings>) -> Admin {
        let from_config = settings
            .and_then(|s| s.admin_tokens.first())
            .map(|t| String::from_utf8_lossy(t.expose()).into_owned());
        let token = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .or(from_config);
        Admin { address, token }
    }

    /// Sends `method path` (no body); returns the status and the (de-chunked) body.
    pub fn call(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(&self.address)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.address
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        if status == 401 && self.token.is_none() {
            eprintln!(
                "the admin API wants a token: set {TOKEN_ENV}, or give -c with the file that has `admin.tokens`"
            );
        }
        Ok((status, body))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(after)) = (rest.get(..n), rest.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        s = after.trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
